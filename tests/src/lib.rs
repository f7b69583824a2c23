//! Cross-crate and compatibility tests for muster.
//!
//! The tests live in `tests/tests/`; for example `proto_interop.rs` checks
//! that `muster-proto`'s etcd v3.5 messages are wire-compatible with the
//! `etcd-client` crate's. Shared test-harness code (cluster setup, clients,
//! fixtures) will be added to this library as it is needed.
