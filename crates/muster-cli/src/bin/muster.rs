//! `muster`: one member of a muster cluster.
//!
//! Start-up order, each step refusing with a clear message before anything
//! is written if it cannot go on: validate the flags (the message names the
//! setting), check the data dir's identity (a restart rejoins; another
//! cluster's data dir is refused), bind the peer, metrics, client and DNS
//! (`--listen-dns`, UDP and TCP) sockets, start the Raft node, and on the
//! first start of a new cluster bootstrap it with the `--initial-cluster`
//! members (every member does this with the same membership, which
//! openraft accepts). SIGTERM or Ctrl-C shuts the member down cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use muster_raft::{RaftNode, RaftNodeConfig};
use muster_server::cluster::MemberAttributes;
use muster_server::config::{ClusterState, LogFormat, Member, MemberConfig};
use muster_server::dns::{self, DnsConfig, DnsListener};
use muster_server::identity::{self, Identity, Startup};
use muster_server::lease::LeaseConfig;
use muster_server::server::ClientApi;
use openraft::BasicNode;
use tokio::net::TcpListener;

#[path = "../agent/mod.rs"]
mod agent;
#[path = "../shutdown.rs"]
mod shutdown;

use shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `muster agent --config <file>`: the health-checking sidecar.
    if std::env::args_os().nth(1).is_some_and(|a| a == "agent") {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        if let Err(e) = agent::main(std::env::args_os().skip(1)).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let config = MemberConfig::load().unwrap_or_else(|e| e.exit());
    // `RUST_LOG`, when set, is a full filter; otherwise `--log-level`
    // chooses one (see `LogLevel::filter`).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_level.filter()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    // Refused settings exit as clap's do: the message alone, code 2.
    let member = config.validate().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    run(member).await
}

async fn run(member: Member) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("installing signal handlers")?;
    let own_peer_urls: Vec<String> = member
        .initial_members
        .values()
        .find(|m| m.name == member.name)
        .map(|m| m.peer_urls.iter().map(|u| u.url.clone()).collect())
        .unwrap_or_default();
    let identity = match member.cluster_state {
        ClusterState::New => Identity {
            cluster_id: member.cluster_id,
            member_id: member.id,
            name: member.name.clone(),
        },
        ClusterState::Existing => match identity::read(&member.data_dir)? {
            Some(found) => found,
            None => join(&member, &own_peer_urls).await?,
        },
    };
    let startup = identity::check_or_create(&member.data_dir, &identity)?;
    let (member_id, cluster_id) = (identity.member_id, identity.cluster_id);

    let peer_url = &member.listen_peer_urls[0];
    let listener = TcpListener::bind(&peer_url.authority)
        .await
        .with_context(|| format!("--listen-peer-urls: cannot listen on {}", peer_url.url))?;
    let mut metrics_listeners = Vec::new();
    for url in &member.listen_metrics_urls {
        let listener = TcpListener::bind(&url.authority)
            .await
            .with_context(|| format!("--listen-metrics-urls: cannot listen on {}", url.url))?;
        metrics_listeners.push(listener);
    }
    let client_url = &member.listen_client_urls[0];
    let client_listener = TcpListener::bind(&client_url.authority)
        .await
        .with_context(|| format!("--listen-client-urls: cannot listen on {}", client_url.url))?;
    let dns_listener = match member.listen_dns {
        Some(addr) => Some(
            DnsListener::bind(addr)
                .await
                .with_context(|| format!("--listen-dns: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let node = RaftNode::start(
        RaftNodeConfig {
            id: member_id,
            data_dir: member.data_dir.clone(),
            heartbeat_ms: member.heartbeat_ms,
            election_timeout_ms: member.election_timeout_ms,
            snapshot_logs: member.snapshot_count,
            cluster_id,
        },
        listener,
    )
    .await
    .context("starting the Raft node")?;
    let node = Arc::new(node);

    if startup == Startup::Fresh && member.cluster_state == ClusterState::New {
        let members: BTreeMap<u64, BasicNode> = member
            .initial_members
            .iter()
            .map(|(&id, m)| {
                (
                    id,
                    BasicNode {
                        addr: m.peer_urls[0].authority.clone(),
                    },
                )
            })
            .collect();
        bootstrap(&node, members, member.election_timeout_ms).await?;
    }
    tracing::info!(
        name = %member.name,
        member = format_args!("{member_id:016x}"),
        cluster = format_args!("{cluster_id:016x}"),
        peers = %peer_url.url,
        clients = %client_url.url,
        data_dir = %member.data_dir.display(),
        restart = startup == Startup::Restart,
        "member started"
    );

    let leader_log = tokio::spawn(log_leader_changes(node.raft().metrics(), member_id));
    let (stop_metrics, metrics_stopping) = tokio::sync::watch::channel(false);
    muster_server::metrics::register();
    for listener in metrics_listeners {
        tokio::spawn(muster_server::metrics::serve(
            listener,
            Arc::clone(&node),
            metrics_stopping.clone(),
        ));
    }
    let (stop_clients, clients_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut client_urls: Vec<String> = member
        .advertise_client_urls
        .iter()
        .map(|u| u.url.clone())
        .collect();
    client_urls.sort();
    client_urls.dedup();
    let attributes = MemberAttributes {
        name: member.name.clone(),
        peer_urls: own_peer_urls,
        client_urls,
    };
    let election_timeout = std::time::Duration::from_millis(member.election_timeout_ms);
    let lease = LeaseConfig {
        self_preservation: member.self_preservation,
        ..LeaseConfig::for_election_timeout(election_timeout)
    };
    let api = ClientApi::new(Arc::clone(&node), cluster_id, member.limits)
        .with_member_attributes(attributes)
        .with_election_timeout(election_timeout)
        .with_lease_config(lease)
        .with_quota(member.quota_backend_bytes)
        .with_registry_prefix(member.registry_prefix.clone());
    #[cfg(feature = "fault-injection")]
    let api = {
        let stale = std::env::var_os("MUSTER_FAULT_STALE_FOLLOWER_READS").is_some_and(|v| v == "1");
        if stale {
            tracing::warn!(
                "MUSTER_FAULT_STALE_FOLLOWER_READS=1: followers answer linearizable reads \
                 without the read barrier (a test build breaking a guarantee on purpose)"
            );
        }
        api.with_stale_follower_reads(stale)
    };
    let client_api = tokio::spawn(api.serve(client_listener, async {
        let _ = clients_stopped.await;
    }));
    let (stop_dns, dns_stopped) = tokio::sync::oneshot::channel::<()>();
    let dns = dns_listener.map(|listener| {
        let serving = dns::serve(
            listener,
            Arc::clone(&node),
            DnsConfig::from_member(&member),
            async {
                let _ = dns_stopped.await;
            },
        );
        // A socket that fails is reported when it fails, not at shutdown.
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "DNS stopped serving");
            }
        })
    });

    shutdown.wait().await;
    leader_log.abort();
    stop_metrics.send_replace(true);
    let _ = stop_clients.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), client_api).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client API stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "client API task failed"),
        Err(_) => tracing::warn!("client API did not stop within 5 s"),
    }
    let _ = stop_dns.send(());
    if let Some(dns) = dns {
        match tokio::time::timeout(std::time::Duration::from_secs(5), dns).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "DNS task failed"),
            Err(_) => tracing::warn!("DNS did not stop within 5 s"),
        }
    }
    let within = std::time::Duration::from_millis(member.election_timeout_ms.saturating_mul(3));
    match node.hand_over(within).await {
        Ok(Some(successor)) => tracing::info!(
            successor = format_args!("{successor:016x}"),
            "leadership handed over"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "handing leadership over failed"),
    }
    tracing::info!("shutting down");
    node.shutdown().await.context("shutting down")?;
    Ok(())
}

/// How long a member joining an existing cluster keeps asking the other
/// `--initial-cluster` members for the member list.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The identity of a member joining an existing cluster on its first
/// start: the cluster's ID, and the ID `member add` gave the member with
/// these peer URLs, from the first other `--initial-cluster` member that
/// answers.
async fn join(member: &Member, own_peer_urls: &[String]) -> anyhow::Result<Identity> {
    let peers: Vec<&str> = member
        .initial_members
        .values()
        .filter(|m| m.name != member.name)
        .flat_map(|m| m.peer_urls.iter().map(|u| u.authority.as_str()))
        .collect();
    anyhow::ensure!(
        !peers.is_empty(),
        "--initial-cluster-state existing: --initial-cluster names no other member to join"
    );
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        for addr in &peers {
            let directory =
                match muster_raft::fetch_directory(addr, std::time::Duration::from_secs(2)).await {
                    Ok(directory) => directory,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
            let Some(entry) = directory
                .members
                .iter()
                .find(|m| m.peer_urls == own_peer_urls)
            else {
                anyhow::bail!(
                    "--initial-cluster-state existing: the cluster (asked at {addr}) has no member with peer URLs {own_peer_urls:?}; \
                     add this member first: etcdctl member add {} --peer-urls={}",
                    member.name,
                    own_peer_urls.join(",")
                );
            };
            anyhow::ensure!(
                directory.cluster_id != 0,
                "--initial-cluster-state existing: the member at {addr} does not know its cluster's ID"
            );
            tracing::info!(
                member = format_args!("{:016x}", entry.id),
                cluster = format_args!("{:016x}", directory.cluster_id),
                via = %addr,
                "joining an existing cluster"
            );
            return Ok(Identity {
                cluster_id: directory.cluster_id,
                member_id: entry.id,
                name: member.name.clone(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "--initial-cluster-state existing: no other --initial-cluster member answered within {JOIN_TIMEOUT:?} (last error: {last_error})"
    )
}

/// Bootstraps a new cluster of `members` from this fresh member.
///
/// Every member of a new cluster may bootstrap it, and bootstrapping starts
/// a campaign at once; if all do so together they duel for the first term
/// and the cluster can take seconds to settle. So the member with the
/// lowest ID bootstraps at once, and the others only if they have heard of
/// no cluster within two election timeouts (the lowest is down or slow).
/// Bootstrapping a member that already received the cluster's log does
/// nothing.
async fn bootstrap(
    node: &RaftNode,
    members: BTreeMap<u64, BasicNode>,
    election_timeout_ms: u64,
) -> anyhow::Result<()> {
    let first = members.keys().next().copied();
    if first != Some(node.id()) {
        let wait = std::time::Duration::from_millis(election_timeout_ms.saturating_mul(2));
        let joined = node
            .raft()
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some() || m.last_log_index.is_some(),
                "the cluster was bootstrapped by another member",
            )
            .await;
        if joined.is_ok() {
            return Ok(());
        }
    }
    node.initialize(members)
        .await
        .context("bootstrapping the cluster")
}

/// Logs every change of leader or term this member observes, so operators
/// (and the process tests) can see elections happen.
async fn log_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    me: u64,
) {
    let mut last = None;
    loop {
        let (term, leader) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader)
        };
        if last != Some((term, leader)) {
            last = Some((term, leader));
            if let Some(leader) = leader {
                tracing::info!(
                    term,
                    leader = format_args!("{leader:016x}"),
                    this_member = leader == me,
                    "leader elected"
                );
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
