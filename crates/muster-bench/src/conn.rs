//! The gRPC connections a run's clients share.
//!
//! Invariants: every connection is established before the measured phase
//! (a dead endpoint fails the run up front, within the request bound);
//! connection `i` goes to endpoint `i % endpoints`; HTTP/2 multiplexes the
//! clients of one connection, each with its own streams.

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};

use crate::Config;

/// The run's connections.
#[derive(Clone, Debug)]
pub struct Pool {
    channels: Vec<Channel>,
}

impl Pool {
    /// Opens `config.conns` connections, round-robin over the endpoints.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(config.conns);
        for i in 0..config.conns {
            let url = &config.endpoints[i % config.endpoints.len()];
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            let endpoint = Endpoint::from_shared(url.clone())
                .with_context(|| format!("invalid endpoint {url:?}"))?
                .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(16 << 20));
            let channel = tokio::time::timeout(config.request_timeout, endpoint.connect())
                .await
                .with_context(|| format!("connecting to {url} timed out"))?
                .with_context(|| format!("cannot connect to {url}"))?;
            channels.push(channel);
        }
        Ok(Pool { channels })
    }

    /// The connection of client (or stream) `i`.
    pub fn get(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether there are none (never, once connected).
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}
