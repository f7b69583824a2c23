//! Invariants of muster-core that golden scripts state less directly:
//! atomic failure, snapshot isolation, determinism across replicas, corrupt
//! snapshots detected anywhere, watch batches that never split a revision.

use bytes::Bytes;
use muster_core::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Error, EventKind,
    LeaseCheckpoint, PutRequest, RangeRequest, RequestOp, Response, Store, TxnRequest, validate,
};
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
}

fn put_leased(key: &str, lease: i64) -> Command {
    Command::Put(PutRequest {
        key: b(key),
        value: b("v"),
        lease,
        ..Default::default()
    })
}

fn all() -> RangeRequest {
    RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..Default::default()
    }
}

/// Applies commands at consecutive log indexes from 1, expecting success.
fn build(commands: impl IntoIterator<Item = Command>) -> Store {
    let mut store = Store::new();
    for (i, command) in commands.into_iter().enumerate() {
        store.apply(i as u64 + 1, command).expect("setup command");
    }
    store
}

/// A store with history, deletions, leases and a compaction point.
fn busy_store() -> Store {
    build([
        Command::LeaseGrant { id: 7, ttl: 30 },
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        put_leased("svc/x", 7),
        put_leased("svc/y", 7),
        Command::DeleteRange(DeleteRangeRequest {
            key: b("b"),
            ..Default::default()
        }),
        put("c", "1"),
        Command::Compact { revision: 4 },
        put("a", "3"),
        Command::LeaseCheckpoint {
            checkpoints: vec![LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            }],
        },
    ])
}

#[test]
fn failed_commands_leave_the_store_byte_identical() {
    let mut store = busy_store();
    let before = store.snapshot();
    let failing = [
        Command::Put(PutRequest {
            key: b("k"),
            lease: 404,
            ..Default::default()
        }),
        Command::Put(PutRequest {
            key: b("nope"),
            ignore_value: true,
            ..Default::default()
        }),
        Command::Put(PutRequest {
            key: Bytes::new(),
            ..Default::default()
        }),
        Command::Compact { revision: 2 },
        Command::Compact { revision: 99 },
        Command::LeaseGrant { id: 7, ttl: 5 },
        Command::LeaseGrant {
            id: 8,
            ttl: muster_core::MAX_LEASE_TTL + 1,
        },
        Command::LeaseRevoke { id: 404 },
        // A txn whose second op fails its check: the first must not happen.
        Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b("first"),
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    key: b("second"),
                    lease: 404,
                    ..Default::default()
                }),
            ],
            failure: vec![],
        }),
        Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b("z"),
                    ..Default::default()
                }),
                RequestOp::Range(RangeRequest {
                    key: b("a"),
                    revision: 2,
                    ..Default::default()
                }),
            ],
            failure: vec![],
        }),
    ];
    for (i, command) in failing.into_iter().enumerate() {
        assert!(
            store.apply(100 + i as u64, command.clone()).is_err(),
            "{command:?} should fail"
        );
        assert_eq!(store.snapshot(), before, "{command:?} changed the store");
    }
}

#[test]
fn a_clone_is_isolated_from_later_writes() {
    let mut store = busy_store();
    let frozen = store.clone();
    let frozen_bytes = frozen.snapshot();
    store.apply(100, put("a", "changed")).expect("put");
    store
        .apply(101, Command::LeaseRevoke { id: 7 })
        .expect("revoke");
    store
        .apply(
            102,
            Command::Compact {
                revision: store.revision(),
            },
        )
        .expect("compact");
    assert_eq!(frozen.snapshot(), frozen_bytes);
    assert_eq!(frozen.lease_keys(7).expect("lease").len(), 2);
    assert!(store.lease(7).is_none());
}

#[test]
fn replicas_applying_the_same_log_are_byte_identical() {
    let (one, two) = (busy_store(), busy_store());
    assert_eq!(one.snapshot(), two.snapshot());
    assert_eq!(one.hash_kv(0), two.hash_kv(0));
    // And a diverging write is visible in the hash.
    let mut three = busy_store();
    three.apply(100, put("a", "other")).expect("put");
    let mut four = busy_store();
    four.apply(100, put("a", "another")).expect("put");
    assert_ne!(
        three.hash_kv(0).expect("hash").hash,
        four.hash_kv(0).expect("hash").hash
    );
}

#[test]
fn hash_at_a_past_revision_ignores_later_writes() {
    let mut store = busy_store();
    let at = store.revision();
    let before = store.hash_kv(at).expect("hash");
    store.apply(100, put("d", "1")).expect("put");
    assert_eq!(store.hash_kv(at).expect("hash"), before);
    assert_ne!(store.hash_kv(0).expect("hash").hash, before.hash);
}

#[test]
fn restore_rebuilds_history_and_leases() {
    let store = busy_store();
    let restored = Store::restore(&store.snapshot()[..]).expect("restore");
    assert_eq!(restored.range(&all()), store.range(&all()));
    let (from, to) = (store.compact_revision(), store.revision());
    assert_eq!(
        restored.events(b"\0", b"\0", from, to, 0),
        store.events(b"\0", b"\0", from, to, 0)
    );
    assert_eq!(
        restored.leases().collect::<Vec<_>>(),
        store.leases().collect::<Vec<_>>()
    );
    assert_eq!(restored.lease_keys(7), store.lease_keys(7));
    assert_eq!(restored.lease(7).map(|l| l.remaining_ttl), Some(12));
    assert_eq!(restored.compact_revision(), 4);
}

#[test]
fn restored_store_continues_like_the_original() {
    let mut original = busy_store();
    let mut restored = Store::restore(&original.snapshot()[..]).expect("restore");
    for (i, command) in [
        put("e", "1"),
        Command::LeaseRevoke { id: 7 },
        Command::Compact { revision: 9 },
    ]
    .into_iter()
    .enumerate()
    {
        let index = 200 + i as u64;
        assert_eq!(
            original.apply(index, command.clone()),
            restored.apply(index, command)
        );
    }
    assert_eq!(original.snapshot(), restored.snapshot());
}

#[test]
fn every_single_byte_corruption_of_a_snapshot_is_detected() {
    let bytes = busy_store().snapshot();
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            match Store::restore(&damaged[..]) {
                Err(Error::CorruptSnapshot(_)) => {}
                other => panic!("flip {flip:#x} at byte {at} gave {other:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_of_a_snapshot_is_detected() {
    let bytes = busy_store().snapshot();
    for len in 0..bytes.len() {
        assert!(
            matches!(
                Store::restore(&bytes[..len]),
                Err(Error::CorruptSnapshot(_))
            ),
            "truncation to {len} bytes was accepted"
        );
    }
}

#[test]
fn derived_lease_ids_are_deterministic_positive_and_unique() {
    let grants = || (1..=500u64).map(|_| Command::LeaseGrant { id: 0, ttl: 10 });
    let (one, two) = (build(grants()), build(grants()));
    let ids: Vec<i64> = one.leases().map(|l| l.id).collect();
    assert_eq!(ids.len(), 500);
    assert!(ids.iter().all(|&id| id > 0));
    assert_eq!(ids, two.leases().map(|l| l.id).collect::<Vec<_>>());
}

#[test]
fn a_derived_lease_id_skips_ids_in_use() {
    // Find the ID index 2 would derive, take it first, and grant again.
    let probe = build([put("x", "1"), Command::LeaseGrant { id: 0, ttl: 5 }]);
    let taken = probe.leases().next().expect("a lease").id;
    let mut store = build([Command::LeaseGrant { id: taken, ttl: 5 }]);
    let applied = store
        .apply(2, Command::LeaseGrant { id: 0, ttl: 5 })
        .expect("grant");
    let Response::LeaseGrant { id, .. } = applied.response else {
        panic!("not a grant")
    };
    assert_ne!(id, taken);
    assert_eq!(store.lease_count(), 2);
}

#[test]
fn read_txn_never_changes_the_store() {
    let store = busy_store();
    let before = store.snapshot();
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b("a"),
            range_end: Bytes::new(),
            result: CompareResult::Equal,
            target: CompareTarget::Value(b("3")),
        }],
        success: vec![RequestOp::Range(RangeRequest {
            key: b("a"),
            ..Default::default()
        })],
        failure: vec![],
    };
    assert!(validate::is_read_only(&txn));
    let response = store.read_txn(&txn).expect("read txn");
    assert!(response.succeeded);
    assert_eq!(response.revision, store.revision());
    assert_eq!(store.snapshot(), before);
}

#[test]
fn read_only_detection_looks_into_nested_txns() {
    let nested_write = TxnRequest {
        compare: vec![],
        success: vec![],
        failure: vec![RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: b("x"),
                ..Default::default()
            })],
            failure: vec![],
        })],
    };
    assert!(!validate::is_read_only(&nested_write));
    assert!(validate::is_read_only(&TxnRequest::default()));
}

#[test]
fn revoke_deletes_all_keys_at_one_revision_in_key_order() {
    let mut store = build([
        Command::LeaseGrant { id: 1, ttl: 10 },
        put_leased("z", 1),
        put_leased("a", 1),
        put_leased("m", 1),
        put("other", "x"),
    ]);
    let applied = store
        .apply(10, Command::LeaseRevoke { id: 1 })
        .expect("revoke");
    let keys: Vec<&[u8]> = applied.events.iter().map(|e| &e.kv.key[..]).collect();
    assert_eq!(keys, [&b"a"[..], b"m", b"z"]);
    assert!(
        applied
            .events
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 6)
    );
    assert!(
        applied
            .events
            .iter()
            .all(|e| e.prev_kv.as_ref().is_some_and(|p| p.lease == 1))
    );
    assert_eq!(store.range(&all()).expect("range").count, 1);
}

#[test]
fn event_batches_never_split_a_revision() {
    let mut store = Store::new();
    for i in 0..20u64 {
        // Each txn writes three keys at one revision.
        let ops = (0..3)
            .map(|k| {
                RequestOp::Put(PutRequest {
                    key: b(&format!("k{i}-{k}")),
                    ..Default::default()
                })
            })
            .collect();
        store
            .apply(
                i + 1,
                Command::Txn(TxnRequest {
                    compare: vec![],
                    success: ops,
                    failure: vec![],
                }),
            )
            .expect("txn");
    }
    for limit in 1..8 {
        let mut from = 1;
        let mut seen = 0;
        while from <= store.revision() {
            let batch = store.events(b"\0", b"\0", from, 0, limit).expect("events");
            assert!(batch.next_revision > from, "no progress from {from}");
            assert_eq!(batch.events.len() % 3, 0, "limit {limit} split a revision");
            seen += batch.events.len();
            from = batch.next_revision;
        }
        assert_eq!(seen, 60);
    }
}

#[test]
fn history_queries_respect_the_compaction_point() {
    let store = busy_store();
    assert_eq!(
        store.events(b"a", b"", 3, 0, 0).map(|b| b.events.len()),
        Err(Error::Compacted)
    );
    let from_compaction = store.events(b"a", b"", 4, 0, 0).expect("events");
    // a=2 was written at 4, the compaction point itself, and a=3 at 9.
    let revisions: Vec<i64> = from_compaction
        .events
        .iter()
        .map(|e| e.kv.mod_revision)
        .collect();
    assert_eq!(revisions, [4, 9]);
    assert_eq!(
        store
            .events(b"a", b"", 1, store.revision() + 1, 0)
            .map(|_| ()),
        Err(Error::FutureRevision)
    );
}

#[test]
fn compaction_keeps_reads_at_the_compaction_point_exact() {
    let commands: Vec<Command> = (0..30)
        .map(|i| put(&format!("k{}", i % 5), &i.to_string()))
        .collect();
    let full = build(commands.clone());
    for at in 2..=full.revision() {
        let mut compacted = build(commands.clone());
        compacted
            .apply(1000, Command::Compact { revision: at })
            .expect("compact");
        for rev in at..=full.revision() {
            let req = RangeRequest {
                revision: rev,
                ..all()
            };
            assert_eq!(
                compacted.range(&req),
                full.range(&req),
                "compacted at {at}, read at {rev}"
            );
        }
        let below = RangeRequest {
            revision: at - 1,
            ..all()
        };
        assert_eq!(compacted.range(&below), Err(Error::Compacted));
    }
}

#[test]
fn puts_report_prev_kv_only_when_asked_but_events_always_carry_it() {
    let mut store = build([put("k", "1")]);
    let plain = store.apply(2, put("k", "2")).expect("put");
    let Response::Put(response) = &plain.response else {
        panic!("not a put")
    };
    assert!(response.prev_kv.is_none());
    assert_eq!(
        plain.events[0].prev_kv.as_ref().map(|p| &p.value[..]),
        Some(&b"1"[..])
    );
}

proptest! {
    /// Any interleaving of compactions with writes agrees with a store that
    /// was never compacted, at every readable revision.
    #[test]
    fn compaction_never_changes_what_is_readable(
        writes in prop::collection::vec((0u8..4, any::<bool>()), 1..40),
        compact_every in 2usize..8,
    ) {
        let mut full = Store::new();
        let mut compacted = Store::new();
        for (i, (key, delete)) in writes.iter().enumerate() {
            let key = format!("k{key}");
            let command = if *delete {
                Command::DeleteRange(DeleteRangeRequest { key: b(&key), ..Default::default() })
            } else {
                put(&key, &i.to_string())
            };
            let index = i as u64 + 1;
            prop_assert_eq!(full.apply(index, command.clone()), compacted.apply(index, command));
            if i % compact_every == 0 {
                let _ = compacted.apply(index, Command::Compact { revision: compacted.revision() - 1 });
            }
        }
        let floor = compacted.compact_revision().max(1);
        for rev in floor..=full.revision() {
            let req = RangeRequest { revision: rev, ..all() };
            prop_assert_eq!(compacted.range(&req), full.range(&req));
        }
        // Events after the compaction point are whole, prev_kv included (an
        // event exactly at it may have lost its prev_kv, as in etcd).
        prop_assert_eq!(
            compacted.events(b"\0", b"\0", floor + 1, 0, 0).expect("events"),
            full.events(b"\0", b"\0", floor + 1, 0, 0).expect("events")
        );
    }
}

#[test]
fn a_batch_applies_like_one_entry_per_command() {
    let commands = vec![
        put("a", "3"),
        // Refused (unknown lease): the others still apply.
        put_leased("c", 99),
        Command::DeleteRange(DeleteRangeRequest {
            key: b("svc/x"),
            ..Default::default()
        }),
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                key: b("a"),
                range_end: Bytes::new(),
                result: CompareResult::Equal,
                target: CompareTarget::Value(b("3")),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: b("t"),
                value: b("yes"),
                ..Default::default()
            })],
            failure: vec![],
        }),
    ];
    let mut one_by_one = busy_store();
    let mut expected = Vec::new();
    let mut expected_events = Vec::new();
    for command in commands.clone() {
        let result = one_by_one.apply(100, command).map(|applied| {
            expected_events.extend(applied.events);
            applied.response
        });
        expected.push(result);
    }
    assert_eq!(expected[1], Err(Error::LeaseNotFound));

    let mut batched = busy_store();
    let applied = batched.apply(100, Command::Batch(commands)).expect("batch");
    assert_eq!(applied.response, Response::Batch(expected));
    assert_eq!(applied.events, expected_events);
    assert_eq!(batched.snapshot(), one_by_one.snapshot());
    assert_eq!(
        applied.response.revision(),
        batched.revision(),
        "a batch answers with its last command's revision"
    );
    // Three commands changed keys: three revisions, one per command.
    assert_eq!(batched.revision(), busy_store().revision() + 3);
}

#[test]
fn lease_grants_in_one_batch_get_distinct_derived_ids() {
    let mut store = Store::new();
    let grant = Command::LeaseGrant { id: 0, ttl: 10 };
    let applied = store
        .apply(5, Command::Batch(vec![grant.clone(), grant.clone(), grant]))
        .expect("batch");
    let Response::Batch(results) = applied.response else {
        panic!("a batch answers with a batch");
    };
    let ids: Vec<i64> = results
        .into_iter()
        .map(|result| match result {
            Ok(Response::LeaseGrant { id, .. }) => id,
            other => panic!("grant: {other:?}"),
        })
        .collect();
    assert!(ids.iter().all(|&id| id > 0 && store.lease(id).is_some()));
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
}

#[test]
fn a_watch_from_the_compaction_point_sees_only_what_etcd_keeps_there() {
    // Revisions: a=2, b=3, delete a=4, b again=5, c=6.
    let mut store = build([
        put("a", "1"),
        put("b", "1"),
        Command::DeleteRange(DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        }),
        put("b", "2"),
        put("c", "1"),
    ]);
    let from = |store: &Store, rev: i64| -> Vec<(String, i64, EventKind)> {
        store
            .events(b"\0", b"\0", rev, 0, 0)
            .expect("events")
            .events
            .into_iter()
            .map(|e| {
                let key = String::from_utf8(e.kv.key.to_vec()).expect("utf-8");
                (key, e.kv.mod_revision, e.kind)
            })
            .collect()
    };
    // Compacted at the delete (4): etcd drops the tombstone at 4.
    let mut at_delete = store.clone();
    at_delete
        .apply(10, Command::Compact { revision: 4 })
        .expect("compact");
    assert_eq!(
        from(&at_delete, 4),
        vec![
            ("b".into(), 5, EventKind::Put),
            ("c".into(), 6, EventKind::Put)
        ]
    );
    // Compacted at a put (5) later overwritten or not: the put at 5 is the
    // newest version of b at or below 5 and live, so etcd keeps it.
    store
        .apply(10, Command::Compact { revision: 5 })
        .expect("compact");
    assert_eq!(
        from(&store, 5),
        vec![
            ("b".into(), 5, EventKind::Put),
            ("c".into(), 6, EventKind::Put)
        ]
    );
}
