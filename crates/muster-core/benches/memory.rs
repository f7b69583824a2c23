//! Memory cost of a key in muster-core, measured: a counting allocator
//! records live heap bytes before and after 100,000 puts of one version
//! each (32-byte keys, 256-byte values), and the overhead per key is what
//! remains beyond the key and value bytes themselves. Resident set size is
//! reported alongside as a cross-check that includes allocator slack.
//!
//! Run: `cargo bench -p muster-core --bench memory`.

#![allow(unsafe_code)] // a global allocator is an unsafe trait; it only counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use muster_core::{Command, PutRequest, Store};

/// Wraps the system allocator and counts live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only
// adds and subtracts the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: usize = 100_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 256;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // Criterion passes `--bench`; this target takes no options.
    let mut store = Store::new();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    for i in 0..KEYS {
        let key = format!("/registry/services/svc-{i:09}");
        assert_eq!(key.len(), KEY_LEN);
        let command = Command::Put(PutRequest {
            key: Bytes::from(key),
            value: Bytes::from(vec![b'v'; VALUE_LEN]),
            ..Default::default()
        });
        store.apply(i as u64 + 1, command).expect("put");
    }
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes().saturating_sub(rss_before);
    let payload = KEYS * (KEY_LEN + VALUE_LEN);
    let per_key = |total: usize| (total as f64 - payload as f64) / KEYS as f64;
    println!("keys: {KEYS}, key {KEY_LEN} B, value {VALUE_LEN} B, one version each");
    println!(
        "live heap: {heap} B total, {:.1} B/key beyond key+value",
        per_key(heap)
    );
    println!(
        "rss delta: {rss} B total, {:.1} B/key beyond key+value",
        per_key(rss)
    );
    println!("snapshot: {} B", store.snapshot().len());
    assert_eq!(store.key_count(), KEYS);
}
