//! Apply and read throughput of muster-core on a store of 100,000 keys
//! (32-byte keys, 256-byte values).
//!
//! Run: `cargo bench -p muster-core --bench apply`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use muster_core::{Command, PutRequest, RangeRequest, Store};

const KEYS: usize = 100_000;

/// A 32-byte key under a shared prefix.
fn key(i: usize) -> Bytes {
    Bytes::from(format!("/registry/services/svc-{i:09}"))
}

fn value(i: usize) -> Bytes {
    let mut v = vec![b'v'; 256];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(v)
}

fn put(i: usize) -> Command {
    Command::Put(PutRequest {
        key: key(i),
        value: value(i),
        ..Default::default()
    })
}

fn populated() -> (Store, u64) {
    let mut store = Store::new();
    for i in 0..KEYS {
        store.apply(i as u64 + 1, put(i)).expect("put");
    }
    (store, KEYS as u64 + 1)
}

/// Benchmarks one put per iteration, the command made by `next` outside
/// the timed part.
fn bench_puts(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    store: &mut Store,
    index: &mut u64,
    mut next: impl FnMut() -> Command,
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            &mut next,
            |command| {
                *index += 1;
                black_box(store.apply(*index, command).expect("put"));
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench_put(c: &mut Criterion) {
    let (mut store, mut index) = populated();
    let mut group = c.benchmark_group("apply");
    // Overwrites of existing keys, spread over the key space.
    let mut n = 0usize;
    let mut spread = move || {
        n = (n + 7919) % KEYS;
        put(n)
    };
    bench_puts(
        &mut group,
        "put_overwrite_100k",
        &mut store,
        &mut index,
        &mut spread,
    );
    // New keys into a store that already holds 100k.
    let mut next = KEYS;
    let new_keys = move || {
        next += 1;
        put(next)
    };
    bench_puts(
        &mut group,
        "put_new_key_100k",
        &mut store,
        &mut index,
        new_keys,
    );
    // Steady state: overwrites with history compacted every 1,000 puts, the
    // compactions timed too. Commands are built before the clock starts.
    group.bench_function("put_overwrite_100k_compacting", |b| {
        b.iter_custom(|iters| {
            let commands: Vec<Command> = (0..iters).map(|_| spread()).collect();
            let start = std::time::Instant::now();
            for command in commands {
                index += 1;
                black_box(store.apply(index, command).expect("put"));
                if index % 1000 == 0 {
                    let revision = store.revision();
                    store
                        .apply(index, Command::Compact { revision })
                        .expect("compact");
                }
            }
            start.elapsed()
        })
    });
    // Overwrites while a snapshot clone holds the old tree (copy-on-write).
    let snapshot = store.clone();
    bench_puts(
        &mut group,
        "put_overwrite_100k_during_snapshot",
        &mut store,
        &mut index,
        spread,
    );
    drop(snapshot);
    group.finish();
}

fn bench_range(c: &mut Criterion) {
    let (store, _) = populated();
    let mut group = c.benchmark_group("range");
    group.sample_size(20);
    let prefix = |limit, count_only| RangeRequest {
        key: Bytes::from_static(b"/registry/services/"),
        range_end: Bytes::from_static(b"/registry/services0"),
        limit,
        count_only,
        ..Default::default()
    };
    let all = prefix(0, false);
    group.bench_function("prefix_all_100k", |b| {
        b.iter(|| black_box(store.range(&all).expect("range")))
    });
    let counted = prefix(0, true);
    group.bench_function("prefix_count_100k", |b| {
        b.iter(|| black_box(store.range(&counted).expect("range")))
    });
    let limited = prefix(100, false);
    group.bench_function("prefix_limit100_of_100k", |b| {
        b.iter(|| black_box(store.range(&limited).expect("range")))
    });
    let single = RangeRequest {
        key: key(4242),
        ..Default::default()
    };
    group.bench_function("single_key_100k", |b| {
        b.iter(|| black_box(store.range(&single).expect("range")))
    });
    group.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let (store, _) = populated();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.bench_function("clone_100k", |b| b.iter(|| black_box(store.clone())));
    group.bench_function("encode_100k", |b| {
        b.iter(|| black_box(store.snapshot().len()))
    });
    let bytes = store.snapshot();
    group.bench_function("restore_100k", |b| {
        b.iter(|| black_box(Store::restore(&bytes[..]).expect("restore")))
    });
    group.finish();
}

criterion_group!(benches, bench_put, bench_range, bench_snapshot);
criterion_main!(benches);
