//! muster-server: one member of a muster cluster.
//!
//! So far: the member's configuration ([`config`]: etcd's flag names,
//! validation, member and cluster IDs), its identity on disk ([`identity`]:
//! a restart rejoins, another cluster's data dir is refused), the etcd
//! `KV` service ([`kv`]) with etcd's errors ([`status`]), the `Watch`
//! service ([`watch`]), leases ([`lease`], with self-preservation in
//! [`preserve`]), the `Cluster` service
//! ([`cluster`]), the `Maintenance` service ([`maintenance`]), the `Auth`
//! service answering unimplemented ([`auth`]) and the gRPC health service
//! ([`health`]) and muster's own registry service ([`registry`]), all of
//! it served together by [`server::ClientApi`]; and
//! the DNS interface ([`dns`]), answering for the registry's services.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod duration;
pub mod health;
pub mod identity;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod preserve;
pub mod registry;
pub mod server;
pub mod status;
pub mod watch;
