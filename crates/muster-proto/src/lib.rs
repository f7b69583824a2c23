//! etcd v3.5 wire types and gRPC service definitions for muster.
//!
//! muster speaks the etcd v3 gRPC API, so that existing etcd clients (etcdctl,
//! `go.etcd.io/etcd/client/v3`, `etcd-client`, ...) can talk to it unchanged.
//! This crate holds the protobuf messages and the tonic client and server
//! stubs for that API. They are generated at build time from the `.proto`
//! files in the workspace's `proto/` directory, which mirror etcd v3.5's
//! `api/mvccpb/kv.proto`, `api/authpb/auth.proto` and
//! `api/etcdserverpb/rpc.proto` field for field (minus the gogoproto and
//! grpc-gateway options, which do not affect the wire format).
//!
//! The protos are compiled with [protox](https://docs.rs/protox), a pure-Rust
//! protobuf compiler, so building this crate needs no system `protoc`.
//!
//! All `bytes` fields (keys, values, range ends, ...) are [`bytes::Bytes`].
//!
//! Modules, one per protobuf package:
//!
//! - [`mvccpb`]: `KeyValue` and watch `Event`.
//! - [`authpb`]: users, roles and permissions as stored by the auth store.
//! - [`etcdserverpb`]: every request and response message, plus the `KV`,
//!   `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth` services (as
//!   `*_client` and `*_server` modules).
//!
//! - [`registrypb`]: muster's own `Registry` service
//!   (`muster.registry.v1`).
//!
//! [`registry`] is the service registry's data model (an instance's key and
//! JSON value). [`convert`] turns requests into muster-core's types and core responses
//! and events back into wire types.

/// Package `mvccpb`: MVCC key-value pairs and watch events.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Package `authpb`: users, roles and permissions.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// Package `etcdserverpb`: the etcd v3 request/response messages and the
/// `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth` gRPC services.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Package `muster.registry.v1`: the service registry API for programs
/// that do not speak etcd's (`Registry` service).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod registrypb {
    tonic::include_proto!("muster.registry.v1");
}

pub mod convert;
pub mod registry;

/// The end of the range of every key starting with `prefix`, as etcd's
/// `GetPrefixRangeEnd` computes it: the prefix with its last byte below
/// 0xff incremented and what follows dropped; `[0]` (every key) when there
/// is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod prefix_tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
