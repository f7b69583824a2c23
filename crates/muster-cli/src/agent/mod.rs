//! `muster agent --config <file>`: a sidecar that registers one service
//! instance, runs its health checks and writes their verdict into the
//! registry.
//!
//! ```text
//!   check tasks (http / tcp / grpc / command: one probe per interval;
//!                ttl: the service reports through the local API)
//!        │ results
//!        ▼
//!   aggregator: per-check thresholds → instance health = the worst check
//!        │ only transitions
//!        ▼
//!   Registration (muster-client): lease kept alive, health written,
//!   removed after `deregister_critical_after` of critical
//! ```
//!
//! Invariants:
//!
//! - The instance registers as critical when it has checks, so it gets no
//!   traffic before they pass.
//! - A check changes state only after `successes_before_passing`
//!   consecutive passes or `failures_before_critical` consecutive failures;
//!   a warning result (HTTP 429, exit code 1, `warn` through the API) takes
//!   effect at once. Each probe is bounded by the check's timeout, so a hung
//!   service (connections accepted, nothing answered) turns critical within
//!   failures × interval + timeout.
//! - Only health transitions are written, never every probe.
//! - An instance critical for `deregister_critical_after` is deregistered;
//!   the agent goes on checking and registers it again once it is no
//!   longer critical.
//! - SIGTERM or Ctrl-C deregisters the instance, then the agent exits 0.

mod checks;
pub(crate) mod config;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use muster_client::{Client, ClientConfig, Health, Registration, RegistrationConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::checks::TtlBoard;
use self::config::{Agent, Check, Kind};

/// `muster agent`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "muster agent",
    about = "Registers a service instance in muster, runs its health checks and keeps its health current."
)]
pub(crate) struct AgentArgs {
    /// The agent's TOML file: endpoints, the `[service]` to register and
    /// its `[[check]]` tables (see the README's "Service discovery").
    #[arg(long, env = "MUSTER_AGENT_CONFIG")]
    config: PathBuf,
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub(crate) async fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    // The first argument is `agent`; usage lines say `muster agent`.
    let args =
        std::iter::once(std::ffi::OsString::from("muster agent")).chain(args.into_iter().skip(1));
    let args = AgentArgs::try_parse_from(args).unwrap_or_else(|e| e.exit());
    // A bad file stops the agent before it registers anything, as a bad
    // flag does: the message alone, exit code 2.
    let agent = config::load(&args.config).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(2)
    });
    let shutdown = crate::Shutdown::install().context("installing signal handlers")?;
    run(agent, shutdown.wait()).await
}

/// Where one check stands.
#[derive(Debug)]
struct State {
    health: Health,
    successes: u32,
    failures: u32,
}

impl State {
    /// Counts one probe's result against `check`'s thresholds.
    fn record(&mut self, check: &Check, result: Health) {
        match result {
            Health::Passing => {
                self.successes += 1;
                self.failures = 0;
                if self.successes >= check.successes_before_passing {
                    self.health = Health::Passing;
                }
            }
            Health::Warning => {
                self.successes = 0;
                self.failures = 0;
                self.health = Health::Warning;
            }
            Health::Critical => {
                self.failures += 1;
                self.successes = 0;
                if self.failures >= check.failures_before_critical {
                    self.health = Health::Critical;
                }
            }
        }
    }
}

/// Runs `agent` until `stop` completes.
pub(crate) async fn run(
    agent: Agent,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut client_config = ClientConfig::new(agent.endpoints.clone());
    client_config.request_timeout = Duration::from_secs(5);
    let client = Client::new(client_config)?;
    let registration_config = RegistrationConfig {
        prefix: agent.prefix.clone(),
        ttl: agent.ttl,
    };

    let board: TtlBoard = Arc::new(Mutex::new(HashMap::new()));
    if let Some(api) = &agent.api {
        let listener = tokio::net::TcpListener::bind(api)
            .await
            .with_context(|| format!("api: cannot listen on {api}"))?;
        let ttl_checks: Vec<String> = agent
            .checks
            .iter()
            .filter(|c| matches!(c.kind, Kind::Ttl(_)))
            .map(|c| c.name.clone())
            .collect();
        tracing::info!(%api, "agent API listening");
        tokio::spawn(checks::serve_api(listener, Arc::clone(&board), ttl_checks));
    }

    let (results, mut incoming) = mpsc::channel::<(usize, Health, String)>(64);
    for (index, check) in agent.checks.iter().enumerate() {
        tokio::spawn(checks::run(
            index,
            check.clone(),
            Arc::clone(&board),
            results.clone(),
        ));
    }
    drop(results);

    let mut states: Vec<State> = agent
        .checks
        .iter()
        .map(|_| State {
            health: Health::Critical,
            successes: 0,
            failures: 0,
        })
        .collect();
    let mut instance = agent.instance.clone();
    let mut registration: Option<Registration> = None;
    let mut critical_since = (instance.health == Health::Critical).then(Instant::now);
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            result = incoming.recv() => {
                let Some((index, result, output)) = result else { break };
                let check = &agent.checks[index];
                let before = states[index].health;
                states[index].record(check, result);
                let after = states[index].health;
                if before != after {
                    tracing::info!(check = %check.name, from = %before, to = %after, %output, "check changed");
                }
                let health = states.iter().map(|s| s.health).max().unwrap_or(Health::Passing);
                if health != instance.health {
                    tracing::warn!(
                        service = %instance.service, id = %instance.id,
                        from = %instance.health, to = %health, "instance health changed"
                    );
                    instance.health = health;
                    critical_since = (health == Health::Critical).then(Instant::now);
                    if let Some(r) = &registration
                        && let Err(e) = r.set_health(health).await
                    {
                        tracing::warn!(error = %e, "writing the health failed; it is written when the instance registers again");
                    }
                }
            }
            _ = retry.tick() => {}
        }
        // Deregister after a long enough critical spell; register when
        // there is no registration and the instance is not (or not yet
        // long enough) critical.
        let expired = match (agent.deregister_critical_after, critical_since) {
            (Some(after), Some(since)) => since.elapsed() >= after,
            _ => false,
        };
        if expired {
            if let Some(r) = registration.take() {
                tracing::warn!(
                    service = %instance.service, id = %instance.id,
                    after = ?agent.deregister_critical_after,
                    "critical too long: deregistering"
                );
                if let Err(e) = r.deregister().await {
                    tracing::warn!(error = %e, "deregistering failed; the lease will expire");
                }
            }
        } else if registration.is_none() {
            match Registration::start(
                client.clone(),
                instance.clone(),
                registration_config.clone(),
            )
            .await
            {
                Ok(r) => {
                    tracing::info!(key = %r.key(), health = %instance.health, "registered");
                    registration = Some(r);
                }
                Err(e) => tracing::warn!(error = %e, "registering failed; retrying"),
            }
        }
    }
    if let Some(r) = registration.take() {
        r.deregister().await.context("deregistering")?;
        tracing::info!("deregistered");
    }
    Ok(())
}
