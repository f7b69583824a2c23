//! Registration: one instance, kept registered for as long as its handle
//! lives.
//!
//! ```text
//!   start ─▶ grant lease (TTL) ─▶ put <prefix>/<service>/<id> with it
//!        ─▶ keep-alive stream: a renewal every TTL/3
//!             renewal answered TTL 0 (lease expired or revoked) ──▶ register again
//!             stream broken ──▶ next endpoint, same lease
//!             no renewal answered for a whole TTL ──▶ register again
//!   set_health ─▶ put the new value with the same lease
//!   deregister / drop ─▶ revoke the lease (its key goes with it)
//! ```
//!
//! Invariants:
//!
//! - One background task owns the lease and the key; the handle talks to it
//!   over a channel, so health updates, renewals and deregistration never
//!   race each other.
//! - The instance is validated before anything is written.
//! - Registering again puts the key with a new lease; the value is always
//!   the latest health. A lease that may still exist on the cluster (the
//!   client only lost contact) is left to expire; the key is no longer
//!   attached to it.
//! - Dropping the handle revokes the lease in the background (bounded by the
//!   request timeout) while the runtime lives; if the process dies instead,
//!   the lease expires within its TTL and the key vanishes with it.

use std::time::Duration;

use muster_proto::etcdserverpb::{self as pb, kv_client::KvClient, lease_client::LeaseClient};
use muster_proto::registry::{Health, Instance, validate_prefix};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::{Client, DEFAULT_PREFIX, Error, unreachable};

/// How a registration behaves.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// The key prefix (default `/registry/services`).
    pub prefix: String,
    /// The lease TTL in seconds (default 10). The instance vanishes at most
    /// this long after its registrant stops renewing.
    pub ttl: i64,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            prefix: DEFAULT_PREFIX.to_string(),
            ttl: 10,
        }
    }
}

/// Where a registration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Registered under `lease`; the last write was at `revision`.
    Registered {
        /// The lease the key is attached to.
        lease: i64,
        /// The revision of the last write of the key.
        revision: i64,
    },
    /// Not registered at the moment (the lease was lost or the cluster is
    /// unreachable); registering again. `reason` says why.
    Registering {
        /// Why it is not registered.
        reason: String,
    },
    /// Deregistered: the handle was dropped or deregistered.
    Deregistered,
}

enum Command {
    Health(Health, oneshot::Sender<Result<(), Error>>),
    Deregister(oneshot::Sender<Result<(), Error>>),
}

/// A registered instance, kept alive by a background task until
/// [`Registration::deregister`] or drop.
pub struct Registration {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<RegistrationState>,
    key: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Registration {
    /// Validates `instance`, registers it (grants a lease, puts its key) and
    /// keeps it alive in the background. Returns once it is registered, or
    /// with the error of the first attempt.
    pub async fn start(
        client: Client,
        instance: Instance,
        config: RegistrationConfig,
    ) -> Result<Registration, Error> {
        validate_prefix(&config.prefix)?;
        instance.validate()?;
        if config.ttl <= 0 {
            return Err(Error::Config(format!(
                "ttl {} must be at least 1 second",
                config.ttl
            )));
        }
        let key = instance.key(&config.prefix);
        let mut task = Task {
            client,
            instance,
            key: key.clone(),
            ttl: config.ttl,
            lease: None,
            state: watch::channel(RegistrationState::Registering {
                reason: "starting".into(),
            })
            .0,
        };
        task.register().await?;
        let state = task.state.subscribe();
        let (commands, receiver) = mpsc::channel(16);
        tokio::spawn(task.run(receiver));
        Ok(Registration {
            commands,
            state,
            key,
        })
    }

    /// The instance's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the registration stands now.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of [`Registration::state`].
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// The lease the key is attached to, while registered.
    pub fn lease(&self) -> Option<i64> {
        match *self.state.borrow() {
            RegistrationState::Registered { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// Changes the instance's health. While not registered, the new health
    /// is written when it registers again, and this returns the error that
    /// kept it from writing now.
    pub async fn set_health(&self, health: Health) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Health(health, reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Removes the instance: revokes its lease, which deletes its key.
    pub async fn deregister(self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Deregister(reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// The background task that owns the lease.
struct Task {
    client: Client,
    instance: Instance,
    key: String,
    ttl: i64,
    lease: Option<i64>,
    state: watch::Sender<RegistrationState>,
}

/// What ended a keep-alive session.
enum Ended {
    /// The handle is gone or asked to deregister.
    Stop(Option<oneshot::Sender<Result<(), Error>>>),
    /// The lease is gone: register again.
    LeaseLost(String),
}

impl Task {
    fn renew_every(&self) -> Duration {
        Duration::from_millis((self.ttl as u64 * 1000 / 3).max(100))
    }

    /// Grants a lease and puts the key with it.
    async fn register(&mut self) -> Result<(), Error> {
        let ttl = self.ttl;
        let granted = self
            .client
            .unary(|channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        if !granted.error.is_empty() {
            return Err(Error::Status(tonic::Status::unknown(granted.error)));
        }
        self.lease = Some(granted.id);
        self.instance.registered = muster_proto::registry::now_to_the_second();
        self.write().await
    }

    /// Puts the key with the current lease and value.
    async fn write(&mut self) -> Result<(), Error> {
        let lease = self.lease.ok_or(Error::Closed)?;
        let value = bytes::Bytes::from(self.instance.encode()?);
        let key = bytes::Bytes::from(self.key.clone());
        let put = self
            .client
            .unary(|channel| {
                let request = pb::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease,
                    ..Default::default()
                };
                async move {
                    KvClient::new(channel)
                        .put(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        match put {
            Ok(answer) => {
                let revision = answer.header.map_or(0, |h| h.revision);
                self.state
                    .send_replace(RegistrationState::Registered { lease, revision });
                Ok(())
            }
            Err(e) => {
                if let Error::Status(status) = &e
                    && status.message().contains("requested lease not found")
                {
                    self.lease = None;
                }
                Err(e)
            }
        }
    }

    async fn revoke(&mut self) -> Result<(), Error> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        let revoked = self
            .client
            .unary(|channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(pb::LeaseRevokeRequest { id })
                    .await
            })
            .await;
        match revoked {
            Ok(_) => Ok(()),
            // Already gone: so is the key.
            Err(Error::Status(s)) if s.message().contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.lease.is_none() {
                match self.register().await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, "registering failed; retrying");
                        self.state.send_replace(RegistrationState::Registering {
                            reason: e.to_string(),
                        });
                        // Wait, but keep answering the handle.
                        let until = Instant::now() + backoff;
                        backoff = (backoff * 2).min(self.renew_every());
                        loop {
                            tokio::select! {
                                () = tokio::time::sleep_until(until) => break,
                                command = commands.recv() => match command {
                                    Some(Command::Health(health, reply)) => {
                                        self.instance.health = health;
                                        let _ = reply.send(Err(e.clone()));
                                    }
                                    Some(Command::Deregister(reply)) => {
                                        self.finish(Some(reply)).await;
                                        return;
                                    }
                                    None => {
                                        self.finish(None).await;
                                        return;
                                    }
                                },
                            }
                        }
                        continue;
                    }
                }
            }
            match self.keep_alive(&mut commands).await {
                Ended::Stop(reply) => {
                    self.finish(reply).await;
                    return;
                }
                Ended::LeaseLost(reason) => {
                    tracing::warn!(key = %self.key, %reason, "lease lost; registering again");
                    self.lease = None;
                    self.state
                        .send_replace(RegistrationState::Registering { reason });
                }
            }
        }
    }

    /// Revokes the lease and reports the result.
    async fn finish(&mut self, reply: Option<oneshot::Sender<Result<(), Error>>>) {
        let revoked = self.revoke().await;
        if let Err(e) = &revoked {
            tracing::warn!(key = %self.key, error = %e, "deregistering failed; the lease will expire");
        }
        self.state.send_replace(RegistrationState::Deregistered);
        if let Some(reply) = reply {
            let _ = reply.send(revoked);
        }
    }

    /// Renews the lease every TTL/3 over one stream (reopened on another
    /// endpoint when it breaks) and serves the handle's commands, until the
    /// lease is lost or the handle stops.
    async fn keep_alive(&mut self, commands: &mut mpsc::Receiver<Command>) -> Ended {
        let Some(id) = self.lease else {
            return Ended::LeaseLost("no lease".into());
        };
        let ttl = Duration::from_secs(self.ttl as u64);
        let mut last_renewed = Instant::now();
        let mut tick = tokio::time::interval(self.renew_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // One stream per connection.
            let (index, channel) = self.client.channel();
            let (requests, receiver) = mpsc::channel(4);
            let opened = tokio::time::timeout(
                self.client.config().request_timeout,
                LeaseClient::new(channel)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver)),
            )
            .await;
            let mut responses = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    if unreachable(&status) {
                        self.client.failed(index);
                    }
                    if last_renewed.elapsed() >= ttl {
                        return Ended::LeaseLost(format!(
                            "no renewal for {ttl:?}: {}",
                            status.message()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => {
                    self.client.failed(index);
                    if last_renewed.elapsed() >= ttl {
                        return Ended::LeaseLost(format!("no renewal for {ttl:?}"));
                    }
                    continue;
                }
            };
            // Renewals outstanding on this stream and when the oldest went.
            let mut waiting_since: Option<Instant> = None;
            let broken = loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if last_renewed.elapsed() >= ttl {
                            return Ended::LeaseLost(format!("no renewal answered for {ttl:?}"));
                        }
                        if let Some(since) = waiting_since
                            && since.elapsed() >= self.renew_every() * 2
                        {
                            break "a renewal went unanswered";
                        }
                        if requests.try_send(pb::LeaseKeepAliveRequest { id }).is_err() {
                            break "the stream stopped taking renewals";
                        }
                        waiting_since.get_or_insert_with(Instant::now);
                    }
                    answer = responses.next() => match answer {
                        Some(Ok(answer)) => {
                            if answer.ttl <= 0 {
                                return Ended::LeaseLost(format!("lease {id:x} expired or was revoked"));
                            }
                            last_renewed = Instant::now();
                            waiting_since = None;
                        }
                        Some(Err(status)) => {
                            if status.message().contains("requested lease not found") {
                                return Ended::LeaseLost(status.message().to_string());
                            }
                            break "the stream failed";
                        }
                        None => break "the stream ended",
                    },
                    command = commands.recv() => match command {
                        Some(Command::Health(health, reply)) => {
                            self.instance.health = health;
                            let written = self.write().await;
                            let lost = self.lease.is_none();
                            let _ = reply.send(written);
                            if lost {
                                return Ended::LeaseLost("the lease was gone at a health update".into());
                            }
                        }
                        Some(Command::Deregister(reply)) => return Ended::Stop(Some(reply)),
                        None => return Ended::Stop(None),
                    },
                }
            };
            tracing::debug!(key = %self.key, reason = broken, "keep-alive stream broken; reconnecting");
            self.client.failed(index);
        }
    }
}
