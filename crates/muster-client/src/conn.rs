//! Connections to a cluster: a list of endpoints, one in use at a time.
//!
//! Invariants:
//!
//! - Connections are lazy: [`Client::new`] never blocks or fails on an
//!   unreachable endpoint; the first request does.
//! - A connection attempt never outlasts [`ClientConfig::dial_timeout`] and a
//!   unary request never outlasts [`ClientConfig::request_timeout`].
//! - Every member of a muster cluster serves every request (followers
//!   forward to the leader), so a request that fails because its endpoint is
//!   unreachable moves the client to the next endpoint in the list
//!   ([`Client::failed`]); [`Client::unary`] retries such a request on each
//!   endpoint at most once. A request the server answered with an error is
//!   never retried here.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::Error;

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The members' client URLs (`http://host:port`, or `host:port`).
    pub endpoints: Vec<String>,
    /// Bound on connecting to one endpoint.
    pub dial_timeout: Duration,
    /// Bound on one unary request.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// `endpoints` with a 2 s dial timeout and a 5 s request timeout.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A handle on a cluster, cheap to clone; clones share the endpoint in use.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoints: Vec<Endpoint>,
    /// The endpoint in use (its index) and its channel.
    current: Mutex<(usize, Channel)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.config.endpoints)
            .field("current", &self.endpoint())
            .finish()
    }
}

/// Adds `http://` to an endpoint given as `host:port` (and trims it).
pub fn endpoint_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// A client of the cluster at `config.endpoints` (at least one). Fails
    /// only on an endpoint that is not a URL.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let mut endpoints = Vec::new();
        for raw in config.endpoints.iter().filter(|e| !e.trim().is_empty()) {
            let endpoint = Endpoint::from_shared(endpoint_url(raw))
                .map_err(|e| Error::Config(format!("endpoint {raw:?}: {e}")))?
                .connect_timeout(config.dial_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let channel = endpoints[0].connect_lazy();
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints,
                current: Mutex::new((0, channel)),
            }),
        })
    }

    /// A client of one endpoint with the default timeouts.
    pub fn single(endpoint: &str) -> Result<Client, Error> {
        Client::new(ClientConfig::new([endpoint]))
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The channel to the endpoint in use and that endpoint's index (give
    /// the index to [`Client::failed`] when the channel fails).
    pub fn channel(&self) -> (usize, Channel) {
        let current = self.inner.current.lock().expect("endpoint lock");
        (current.0, current.1.clone())
    }

    /// The URL of the endpoint in use.
    pub fn endpoint(&self) -> String {
        let index = self.inner.current.lock().expect("endpoint lock").0;
        self.inner.endpoints[index].uri().to_string()
    }

    /// Reports that the endpoint at `index` failed: the client moves to the
    /// next one, unless another caller already moved it.
    pub fn failed(&self, index: usize) {
        let mut current = self.inner.current.lock().expect("endpoint lock");
        if current.0 == index {
            let next = (index + 1) % self.inner.endpoints.len();
            *current = (next, self.inner.endpoints[next].connect_lazy());
            tracing::debug!(
                endpoint = %self.inner.endpoints[next].uri(),
                "moving to the next endpoint"
            );
        }
    }

    /// Runs the unary request `call` on the endpoint in use, bounded by the
    /// request timeout; when the endpoint is unreachable, moves on and tries
    /// the next, each endpoint at most once.
    pub async fn unary<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for _ in 0..self.inner.endpoints.len() {
            let (index, channel) = self.channel();
            match tokio::time::timeout(self.inner.config.request_timeout, call(channel)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if unreachable(&status) => {
                    self.failed(index);
                    last = Some(Error::Status(status));
                }
                Ok(Err(status)) => return Err(Error::Status(status)),
                Err(_) => {
                    self.failed(index);
                    last = Some(Error::Timeout);
                }
            }
        }
        Err(last.unwrap_or(Error::Timeout))
    }
}

/// Whether `status` says the endpoint could not be reached or has no
/// working cluster behind it, so that another endpoint may do better.
pub fn unreachable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::DeadlineExceeded => true,
        _ => {
            let m = status.message();
            m.contains("no leader") || m.contains("transport error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_checked_and_rotated() {
        assert!(Client::new(ClientConfig::new(Vec::<String>::new())).is_err());
        assert!(Client::new(ClientConfig::new(["http://a b"])).is_err());
        let client = Client::new(ClientConfig::new(["127.0.0.1:1", "http://127.0.0.1:2"])).unwrap();
        assert_eq!(client.endpoint(), "http://127.0.0.1:1/");
        client.failed(0);
        client.failed(0); // a second report of the same failure is ignored
        assert_eq!(client.endpoint(), "http://127.0.0.1:2/");
        client.failed(1);
        assert_eq!(client.endpoint(), "http://127.0.0.1:1/");
    }
}
