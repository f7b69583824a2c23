//! Key-values and events as the core hands them out.
//!
//! A [`KeyValue`] is one version of one key, exactly as etcd's
//! `mvccpb.KeyValue`: `create_revision` is the main revision of the put that
//! started the key's current generation, `mod_revision` the main revision of
//! the change that produced this version, `version` counts the puts within
//! the generation from 1. A delete ends the generation; the next put starts a
//! new one with version 1.
//!
//! An [`Event`] is one change. A delete event's `kv` holds only the key and
//! the deleting revision in `mod_revision` (all other fields zero), as etcd
//! sends it. `prev_kv` is the version the change replaced, when history still
//! holds it.
//!
//! One difference from etcd: when a single txn writes a key twice (possible
//! through a `"\0"`-ended delete or sibling nested txns), the second event's
//! `prev_kv` is the version the first change made, the one it really
//! replaced. etcd's watch looks `prev_kv` up at the revision before the txn
//! and so reports the pre-txn version for both.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One version of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key. Never empty.
    pub key: Bytes,
    /// Main revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Main revision of the change that produced this version.
    pub mod_revision: i64,
    /// Number of puts in this generation, from 1; 0 for a deletion.
    pub version: i64,
    /// The value (empty for `keys_only` ranges and deletions).
    pub value: Bytes,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// What kind of change an [`Event`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A key was created or overwritten.
    Put,
    /// A key was deleted (directly, by a range delete, or by a lease revoke).
    Delete,
}

/// One change to one key, at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new version (put) or the key with the deleting revision (delete).
    pub kv: KeyValue,
    /// The version this change replaced, when one existed and history holds it.
    pub prev_kv: Option<KeyValue>,
}
