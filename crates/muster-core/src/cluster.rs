//! Cluster metadata every replica agrees on: member attributes and alarms.
//!
//! Which members vote is Raft's business (its membership configuration);
//! what the cluster knows *about* each member is replicated here, as etcd
//! replicates it in its members bucket: the name and client URLs a member
//! publishes when it starts, and the peer URLs given when it was added (or
//! published by a member of the initial cluster). Alarms (etcd's NOSPACE
//! and CORRUPT) are raised and cleared per member through the log too, so
//! every replica rejects the same writes at the same index.
//!
//! Invariants:
//! - Nothing here changes the key space: these commands never advance the
//!   revision and never produce events, and [`crate::Store::hash_kv`] does
//!   not see them (etcd's HashKV covers keys only).
//! - A member's peer URLs, once known, change only through
//!   [`crate::Command::MemberPeerUrls`] (etcd's MemberUpdate): a restarted
//!   member that publishes the URLs of its old flags does not overwrite
//!   them.
//! - Forgetting a member also clears its alarms.

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

/// What the cluster knows about one member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The name it published; empty until it has started (etcd's
    /// "unstarted").
    pub name: String,
    /// The URLs its peers reach it on, sorted.
    pub peer_urls: Vec<String>,
    /// The URLs clients reach it on, sorted; empty until it has started.
    pub client_urls: Vec<String>,
}

/// A kind of alarm, numbered as etcd's `AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// The store has outgrown its quota: writes that add data are refused.
    NoSpace,
    /// A member's data disagrees with the others'.
    Corrupt,
}

impl AlarmType {
    /// etcd's number for this alarm.
    pub fn number(self) -> i32 {
        match self {
            AlarmType::NoSpace => 1,
            AlarmType::Corrupt => 2,
        }
    }

    /// The alarm with etcd's number `n` (0, NONE, is not an alarm).
    pub fn from_number(n: i32) -> Option<AlarmType> {
        match n {
            1 => Some(AlarmType::NoSpace),
            2 => Some(AlarmType::Corrupt),
            _ => None,
        }
    }
}

/// One raised alarm: which member raised which alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member_id: u64,
    /// The alarm.
    pub alarm: AlarmType,
}

/// Member attributes and raised alarms, in ID order.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterTable {
    pub(crate) members: OrdMap<u64, MemberInfo>,
    pub(crate) alarms: OrdSet<AlarmMember>,
}

impl ClusterTable {
    /// Records a member's peer URLs (added or updated).
    pub(crate) fn set_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        self.members.entry(id).or_default().peer_urls = peer_urls;
    }

    /// Records what a starting member publishes; its peer URLs only if the
    /// cluster knows none yet.
    pub(crate) fn publish(
        &mut self,
        id: u64,
        name: String,
        client_urls: Vec<String>,
        peer_urls: Vec<String>,
    ) {
        let member = self.members.entry(id).or_default();
        member.name = name;
        member.client_urls = client_urls;
        if member.peer_urls.is_empty() {
            member.peer_urls = peer_urls;
        }
    }

    /// Drops a member and its alarms.
    pub(crate) fn forget(&mut self, id: u64) {
        self.members.remove(&id);
        self.alarms = self
            .alarms
            .iter()
            .filter(|a| a.member_id != id)
            .copied()
            .collect();
    }

    /// Raises an alarm; true if it was not raised already.
    pub(crate) fn activate(&mut self, alarm: AlarmMember) -> bool {
        self.alarms.insert(alarm).is_none()
    }

    /// Clears an alarm; true if it was raised.
    pub(crate) fn deactivate(&mut self, alarm: AlarmMember) -> bool {
        self.alarms.remove(&alarm).is_some()
    }

    /// Whether any member has raised `alarm`.
    pub(crate) fn raised(&self, alarm: AlarmType) -> bool {
        self.alarms.iter().any(|a| a.alarm == alarm)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::{Command, Error, PutRequest, RequestOp, Response, Store, TxnRequest};

    use super::*;

    fn put(key: &str) -> PutRequest {
        PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        }
    }

    fn alarm(activate: bool) -> Command {
        Command::Alarm {
            activate,
            member_id: 5,
            alarm: AlarmType::NoSpace,
        }
    }

    #[test]
    fn nospace_refuses_what_adds_data_until_cleared() {
        let mut store = Store::new();
        store.apply(1, Command::Put(put("a"))).expect("put");
        let raised = store.apply(2, alarm(true)).expect("raise");
        assert_eq!(
            raised.response,
            Response::Alarm {
                revision: 2,
                changed: vec![AlarmMember {
                    member_id: 5,
                    alarm: AlarmType::NoSpace
                }],
            }
        );
        let again = store.apply(3, alarm(true)).expect("raise again");
        assert!(matches!(again.response, Response::Alarm { changed, .. } if changed.is_empty()));

        let refused = [
            Command::Put(put("b")),
            Command::LeaseGrant { id: 1, ttl: 10 },
            Command::Txn(TxnRequest {
                failure: vec![RequestOp::Put(put("b"))],
                ..Default::default()
            }),
        ];
        for command in refused {
            assert_eq!(store.apply(4, command).map(drop), Err(Error::NoSpace));
        }
        let allowed = [
            Command::Txn(TxnRequest {
                success: vec![RequestOp::DeleteRange(crate::DeleteRangeRequest {
                    key: Bytes::from_static(b"a"),
                    ..Default::default()
                })],
                ..Default::default()
            }),
            Command::Compact { revision: 3 },
        ];
        for command in allowed {
            store.apply(5, command).expect("frees space");
        }
        store.apply(6, alarm(false)).expect("clear");
        store
            .apply(7, Command::Put(put("b")))
            .expect("put after disarm");
    }

    #[test]
    fn publish_keeps_known_peer_urls_and_forget_clears_alarms() {
        let mut store = Store::new();
        let urls = |u: &str| vec![u.to_string()];
        let commands = [
            Command::MemberPeerUrls {
                id: 5,
                peer_urls: urls("http://new:2380"),
            },
            Command::MemberPublish {
                id: 5,
                name: "m".into(),
                client_urls: urls("http://m:2379"),
                peer_urls: urls("http://old:2380"),
            },
            alarm(true),
        ];
        for (i, command) in commands.into_iter().enumerate() {
            let applied = store.apply(i as u64 + 1, command).expect("apply");
            assert_eq!(applied.response.revision(), 1, "no revision for metadata");
        }
        let member = store.member(5).expect("member 5");
        assert_eq!(member.peer_urls, urls("http://new:2380"));
        assert_eq!(member.name, "m");
        store
            .apply(9, Command::MemberForget { id: 5 })
            .expect("forget");
        assert!(store.member(5).is_none());
        assert_eq!(store.alarms().count(), 0);
    }
}
