//! muster-server: one member of a muster cluster.
//!
//! So far: the member's configuration ([`config`]: etcd's flag names,
//! validation, member and cluster IDs) and its identity on disk
//! ([`identity`]: a restart rejoins, another cluster's data dir is refused).
//! The client API, watch hub and lessor come with the API work.

pub mod config;
pub mod identity;
