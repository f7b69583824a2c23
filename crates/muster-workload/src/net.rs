//! Connections to members, bounded calls, and how an error is classified.
//!
//! Invariants:
//!
//! - Channels connect lazily, with a connect timeout of at most half the
//!   request timeout, so a request to an unreachable member fails with a
//!   connect error (which proves it was never sent) before the request
//!   bound expires.
//! - [`write_outcome`] says `fail` only when the write certainly had no
//!   effect: a connect error in the status's source chain (the request never
//!   left the client), or a server refusal that etcd answers before
//!   anything is applied (`InvalidArgument`, `FailedPrecondition`,
//!   `NotFound`, `ResourceExhausted`). Everything else is `info`.
//! - [`read_outcome`] is always `fail`: a read has no effect.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use muster_check::history::OpKind;
use tonic::transport::{Channel, Endpoint};

use crate::Config;

/// How long HTTP/2 waits between keep-alive pings on a busy connection
/// (etcd refuses pings more often than every 5 s).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// One member of the cluster, as the workload addresses it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    /// Its name in the history.
    pub(crate) name: String,
    endpoint: Endpoint,
}

impl Member {
    /// A member at `url`; the URL must parse.
    pub(crate) fn new(name: &str, url: &str, config: &Config) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("invalid URL {url:?} for member {name}"))?
            .connect_timeout(config.request_timeout / 2)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(config.request_timeout.max(Duration::from_secs(1)))
            .keep_alive_while_idle(false);
        Ok(Member {
            name: name.to_string(),
            endpoint,
        })
    }

    /// A new lazily connecting channel to the member.
    pub(crate) fn channel(&self) -> Channel {
        self.endpoint.connect_lazy()
    }
}

/// One client's channels, one per member, created on first use and dropped
/// after an error so that the next use dials afresh.
pub(crate) struct Channels {
    channels: Vec<Option<Channel>>,
}

impl Channels {
    /// No channels yet, for `n` members.
    pub(crate) fn new(n: usize) -> Self {
        Channels {
            channels: vec![None; n],
        }
    }

    /// The channel to member `i` of `members`.
    pub(crate) fn get(&mut self, members: &[Member], i: usize) -> Channel {
        self.channels[i]
            .get_or_insert_with(|| members[i].channel())
            .clone()
    }

    /// Forgets the channel to member `i`.
    pub(crate) fn reset(&mut self, i: usize) {
        self.channels[i] = None;
    }
}

/// Why a request did not complete.
#[derive(Debug)]
pub enum CallError {
    /// The client's bound on the request expired.
    Timeout(Duration),
    /// The server or the transport answered with an error status.
    Status(tonic::Status),
    /// A stream ended, or could not be written to.
    Closed(String),
}

impl CallError {
    /// Whether the request certainly never reached the server: the channel
    /// could not connect.
    pub fn is_connect_error(&self) -> bool {
        let CallError::Status(status) = self else {
            return false;
        };
        let mut source = status.source();
        while let Some(error) = source {
            if error.is::<tonic::ConnectError>() {
                return true;
            }
            source = error.source();
        }
        false
    }

    /// Whether the server refused the request as etcd does before applying
    /// anything.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CallError::Status(status) if matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound
                    | tonic::Code::ResourceExhausted
            )
        )
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout(bound) => write!(f, "timeout after {bound:?}"),
            CallError::Closed(why) => write!(f, "stream closed: {why}"),
            CallError::Status(status) => {
                write!(f, "{:?}: {}", status.code(), status.message())?;
                let mut source = status.source();
                while let Some(error) = source {
                    let text = error.to_string();
                    if !status.message().contains(&text) {
                        write!(f, ": {text}")?;
                    }
                    source = error.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CallError {}

/// How a failed write completes: `fail` when it certainly had no effect,
/// `info` otherwise.
pub fn write_outcome(error: &CallError) -> OpKind {
    if error.is_connect_error() || error.is_refusal() {
        OpKind::Fail
    } else {
        OpKind::Info
    }
}

/// How a failed read completes: always `fail` (a read has no effect).
pub fn read_outcome(_error: &CallError) -> OpKind {
    OpKind::Fail
}

/// Awaits one unary request, bounded by `bound`.
pub(crate) async fn call<T>(
    bound: Duration,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(bound, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Err(_) => Err(CallError::Timeout(bound)),
    }
}

/// The end of the range of every key starting with `prefix` (etcd's).
pub use muster_proto::prefix_end;
