//! Endpoints, connections and the bounds on every request.
//!
//! Invariants: a connection attempt never outlasts `--dial-timeout`; a unary
//! request never outlasts `--command-timeout` (a timed-out request is
//! reported as etcdctl reports it, `context deadline exceeded`). Commands that
//! address "the cluster" use the first endpoint that accepts a connection, in
//! the order given; `endpoint ...` commands address each endpoint in turn.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};

use crate::output::WriteOut;

/// The message etcdctl prints when a bound is reached.
pub(crate) const DEADLINE_EXCEEDED: &str = "context deadline exceeded";

/// What every command needs: where to connect, how long to wait, how to print.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Endpoints as given (shown so in output; `http://` is added when
    /// connecting if missing).
    pub(crate) endpoints: Vec<String>,
    /// Bound on connecting to one endpoint.
    pub(crate) dial_timeout: Duration,
    /// Bound on one request.
    pub(crate) command_timeout: Duration,
    /// The output format.
    pub(crate) write_out: WriteOut,
}

pub(crate) use muster_client::endpoint_url;

impl Session {
    /// A session over `endpoints` (empty entries dropped).
    pub(crate) fn new(
        endpoints: &[String],
        dial_timeout: Duration,
        command_timeout: Duration,
        write_out: WriteOut,
    ) -> Self {
        Session {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            dial_timeout,
            command_timeout,
            write_out,
        }
    }

    /// A connection to the first endpoint that accepts one.
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        let mut last = anyhow!("no endpoints given");
        for endpoint in &self.endpoints {
            match self.channel_to(endpoint).await {
                Ok(channel) => return Ok(channel),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A connection to `endpoint`, bounded by the dial timeout.
    pub(crate) async fn channel_to(&self, endpoint: &str) -> anyhow::Result<Channel> {
        let target = Endpoint::from_shared(endpoint_url(endpoint))
            .with_context(|| format!("invalid endpoint {endpoint:?}"))?
            .connect_timeout(self.dial_timeout)
            .tcp_nodelay(true);
        match tokio::time::timeout(self.dial_timeout, target.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(_)) | Err(_) => Err(anyhow!(DEADLINE_EXCEEDED)),
        }
    }

    /// Awaits one unary request, bounded by the command timeout.
    pub(crate) async fn call<T>(
        &self,
        request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.command_timeout, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.into()),
            Err(_) => Err(anyhow!(DEADLINE_EXCEEDED)),
        }
    }
}

/// The text after `Error: ` for a failed command: a gRPC status's message as
/// the server worded it, anything else as it displays.
pub(crate) fn error_message(error: &anyhow::Error) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) if status.code() == tonic::Code::DeadlineExceeded => {
            DEADLINE_EXCEEDED.to_string()
        }
        Some(status) if status.message().is_empty() => status.code().description().to_string(),
        Some(status) => status.message().to_string(),
        None => format!("{error:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_when_missing() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("http://10.0.0.1:2379"), "http://10.0.0.1:2379");
        assert_eq!(endpoint_url("https://a:1"), "https://a:1");
    }
}
