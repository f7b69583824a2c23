//! Service discovery over muster, or over any etcd v3 endpoint.
//!
//! - [`Registration`]: registers one instance of a service as a key attached
//!   to a lease, keeps the lease alive over one stream, registers again by
//!   itself when the lease is lost, updates the instance's health, and
//!   deregisters on [`Registration::deregister`] or drop.
//! - [`Discovery`]: lists a service, then watches it from the list's
//!   revision + 1, so it never misses or repeats a change; keeps serving the
//!   last-known-good list while the cluster is unreachable (and says so);
//!   optionally persists it to a file so a restarting client starts warm.
//! - [`balance`]: round-robin, weighted random, power-of-two-choices over
//!   outstanding requests, and zone preference, over the healthy instances.
//!
//! Instances follow the data model of [`muster_proto::registry`]: the key
//! `<prefix>/<service>/<id>` (default prefix `/registry/services`) with the
//! JSON value gRPC's etcd resolver reads.
//!
//! ```no_run
//! # async fn example() -> Result<(), muster_client::Error> {
//! use muster_client::{Client, ClientConfig, Discovery, Instance, Registration};
//! use muster_client::balance::RoundRobin;
//!
//! let client = Client::new(ClientConfig::new(["http://127.0.0.1:2379"]))?;
//! let me = Instance::new("api", "api-1", "10.0.0.1:8080");
//! let registration = Registration::start(client.clone(), me, Default::default()).await?;
//!
//! let api = Discovery::start(client, "api", Default::default()).await?;
//! let balancer = RoundRobin::default();
//! if let Some(pick) = api.pick(&balancer) {
//!     println!("calling {}", pick.instance().addr);
//! }
//! registration.deregister().await?;
//! # Ok(())
//! # }
//! ```

pub mod balance;
mod conn;
mod discovery;
mod registration;

pub use conn::{Client, ClientConfig, endpoint_url, unreachable};
pub use discovery::{Discovery, DiscoveryConfig, Freshness, View};
pub use muster_proto::registry::{DEFAULT_PREFIX, Health, Instance, InvalidInstance};
pub use registration::{Registration, RegistrationConfig, RegistrationState};

/// What can go wrong.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The instance (or prefix, or service name) breaks the data model.
    #[error(transparent)]
    Invalid(#[from] InvalidInstance),
    /// The client was configured wrongly.
    #[error("client configuration: {0}")]
    Config(String),
    /// The cluster answered with an error.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// No answer within the bound.
    #[error("context deadline exceeded")]
    Timeout,
    /// The background task this handle drives has stopped.
    #[error("the registration or discovery task has stopped")]
    Closed,
    /// A local file (the discovery cache) could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// The instances worth sending traffic to: the passing ones, or when none
/// is passing, the ones in warning; never the critical ones.
pub fn healthy(instances: &[Instance]) -> Vec<Instance> {
    let passing: Vec<Instance> = instances
        .iter()
        .filter(|i| i.health == Health::Passing)
        .cloned()
        .collect();
    if !passing.is_empty() {
        return passing;
    }
    instances
        .iter()
        .filter(|i| i.health == Health::Warning)
        .cloned()
        .collect()
}
