//! A tour of muster-core through a service-registry scenario: instances
//! register under leases, a client lists the prefix and then follows it from
//! the next revision, one service's lease is revoked and its keys vanish at
//! one revision, history is compacted, and a snapshot round-trips.
//!
//! Run: `cargo run -p muster-core --example tour`.

use bytes::Bytes;
use muster_core::{
    Command, DeleteRangeRequest, Event, EventKind, PutRequest, RangeRequest, Response, Store,
};

const PREFIX: &str = "/registry/services/";

fn main() -> Result<(), muster_core::Error> {
    let mut store = Store::new();
    let mut index = 0u64;
    let mut apply = |store: &mut Store, command: Command| {
        index += 1;
        store.apply(index, command)
    };

    // Two services, each instance under its own lease.
    let mut leases = Vec::new();
    for (service, instance, addr) in [
        ("api", "api-1", "10.0.0.1:8080"),
        ("api", "api-2", "10.0.0.2:8080"),
        ("db", "db-1", "10.0.1.1:5432"),
    ] {
        let Response::LeaseGrant { id, .. } =
            apply(&mut store, Command::LeaseGrant { id: 0, ttl: 10 })?.response
        else {
            unreachable!("a grant answers a grant")
        };
        leases.push((instance, id));
        let key = format!("{PREFIX}{service}/{instance}");
        let value = format!(r#"{{"Addr":"{addr}","Metadata":{{"service":"{service}"}}}}"#);
        let put = PutRequest {
            key: key.into(),
            value: value.into(),
            lease: id,
            ..Default::default()
        };
        apply(&mut store, Command::Put(put))?;
    }

    // A client lists the prefix ...
    let list = store.range(&RangeRequest {
        key: Bytes::from_static(PREFIX.as_bytes()),
        range_end: Bytes::from_static(b"/registry/services0"),
        ..Default::default()
    })?;
    println!(
        "list at revision {}: {} instances",
        list.revision, list.count
    );
    for kv in &list.kvs {
        println!(
            "  {} lease={:x}",
            String::from_utf8_lossy(&kv.key),
            kv.lease
        );
    }

    // ... while the registry changes: db-1's lease expires (the leader would
    // propose this revoke), and api-2 deregisters.
    let (_, db_lease) = leases[2];
    let revoke = apply(&mut store, Command::LeaseRevoke { id: db_lease })?;
    println!(
        "lease of db-1 revoked at revision {}",
        revoke.response.revision()
    );
    let del = DeleteRangeRequest {
        key: format!("{PREFIX}api/api-2").into(),
        ..Default::default()
    };
    apply(&mut store, Command::DeleteRange(del))?;

    // The client resumes from list revision + 1 and misses nothing.
    let batch = store.events(
        PREFIX.as_bytes(),
        b"/registry/services0",
        list.revision + 1,
        0,
        0,
    )?;
    println!("watch from revision {}:", list.revision + 1);
    for Event { kind, kv, .. } in &batch.events {
        let kind = if *kind == EventKind::Put {
            "PUT"
        } else {
            "DELETE"
        };
        println!(
            "  {kind} {} at revision {}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision
        );
    }

    // Compaction drops old history; the snapshot round-trips byte for byte.
    let revision = store.revision();
    apply(&mut store, Command::Compact { revision })?;
    let snapshot = store.snapshot();
    let restored = Store::restore(&snapshot[..])?;
    println!(
        "compacted at {revision}; snapshot of {} bytes restores to the same hash: {}",
        snapshot.len(),
        restored.hash_kv(0)? == store.hash_kv(0)?
    );
    Ok(())
}
