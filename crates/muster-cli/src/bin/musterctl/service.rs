//! `musterctl service ...`: the service registry through muster-client.
//!
//! Invariants: instances are validated by the data model
//! (`muster_proto::registry`) before anything is written, so a bad name,
//! address or tag is a usage error naming the field; `register` holds its
//! instance only while it runs (until Ctrl-C or SIGTERM, or `--for`), then
//! deregisters; if killed, the instance vanishes when its lease expires.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use muster_client::{
    Client, ClientConfig, Discovery, DiscoveryConfig, Health, Instance, Registration,
    RegistrationConfig, RegistrationState, balance,
};
use muster_proto::etcdserverpb::{
    self as pb, kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient,
    watch_request,
};
use muster_proto::mvccpb::event::EventType;
use muster_proto::registry::{self, format_rfc3339};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::output::{self, WriteOut};
use crate::session::Session;
use crate::shutdown::Shutdown;

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Registers an instance and keeps it alive until interrupted.
    Register(RegisterArgs),
    /// Removes an instance (revoking its lease).
    Deregister(DeregisterArgs),
    /// Lists instances with their health.
    List(ListArgs),
    /// Prints every change to a service's instances.
    Watch(WatchArgs),
    /// Picks one healthy instance through a load balancer.
    Resolve(ResolveArgs),
}

/// The key prefix, shared by every `service` command.
#[derive(Debug, Args)]
pub(crate) struct PrefixArg {
    /// The key prefix instances live under.
    #[arg(long, default_value = registry::DEFAULT_PREFIX)]
    prefix: String,
}

/// Arguments of `service register`.
#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The service's name (a DNS label).
    service: String,
    /// The instance's ID, unique within the service.
    id: String,
    /// Where it serves, `host:port`.
    addr: String,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Metadata as `key=value` (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Share of traffic (0 to 65535).
    #[arg(long, default_value_t = 1)]
    weight: u16,
    /// The instance's zone.
    #[arg(long, default_value = "")]
    zone: String,
    /// Initial health.
    #[arg(long, default_value = "passing", value_parser = parse_health)]
    health: Health,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Deregister after this long (Go duration) instead of at Ctrl-C.
    #[arg(long = "for", value_parser = crate::parse_duration)]
    hold_for: Option<Duration>,
    #[command(flatten)]
    prefix: PrefixArg,
}

/// Arguments of `service deregister`.
#[derive(Debug, Args)]
pub(crate) struct DeregisterArgs {
    /// The service.
    service: String,
    /// The instance's ID.
    id: String,
    #[command(flatten)]
    prefix: PrefixArg,
}

/// Arguments of `service list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this service (default: every service).
    service: Option<String>,
    /// Only instances with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only instances in this state (passing, warning, critical).
    #[arg(long, value_parser = parse_health)]
    health: Option<Health>,
    #[command(flatten)]
    prefix: PrefixArg,
}

/// Arguments of `service watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The service (default: every service).
    service: Option<String>,
    /// Stop after this many changes.
    #[arg(long)]
    max_events: Option<u64>,
    #[command(flatten)]
    prefix: PrefixArg,
}

/// Arguments of `service resolve`.
#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    /// The service.
    service: String,
    /// round-robin, weighted or least-outstanding.
    #[arg(long, default_value = "weighted", value_parser = balance::NAMES)]
    balancer: String,
    /// Prefer instances in this zone.
    #[arg(long)]
    zone: Option<String>,
    /// Only instances with this tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[command(flatten)]
    prefix: PrefixArg,
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

fn parse_health(text: &str) -> Result<Health, String> {
    text.parse().map_err(|e: registry::InvalidInstance| e.0)
}

fn client(session: &Session) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(session.endpoints.clone());
    config.dial_timeout = session.dial_timeout;
    config.request_timeout = session.command_timeout;
    Ok(Client::new(config)?)
}

/// Runs one `service` command.
pub(crate) async fn run(session: &Session, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Register(args) => register(session, args).await,
        ServiceCommand::Deregister(args) => deregister(session, args).await,
        ServiceCommand::List(args) => list(session, args).await,
        ServiceCommand::Watch(args) => watch(session, args).await,
        ServiceCommand::Resolve(args) => resolve(session, args).await,
    }
}

async fn register(session: &Session, args: RegisterArgs) -> anyhow::Result<()> {
    let mut instance = Instance::new(&args.service, &args.id, &args.addr);
    instance.tags = args.tags;
    instance.meta = args.meta.into_iter().collect::<BTreeMap<_, _>>();
    instance.weight = args.weight;
    instance.zone = args.zone;
    instance.health = args.health;
    instance.validate()?;
    let config = RegistrationConfig {
        prefix: args.prefix.prefix,
        ttl: args.ttl,
    };
    let registration = Registration::start(client(session)?, instance, config).await?;
    let lease = registration.lease().unwrap_or_default();
    output::line(format!(
        "registered {} with lease {lease:x} (TTL {}s)",
        registration.key(),
        args.ttl
    ));
    let mut states = registration.subscribe();
    let shutdown = Shutdown::install().context("installing signal handlers")?;
    let stop = async {
        match args.hold_for {
            Some(d) => tokio::time::sleep(d).await,
            None => shutdown.wait().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            changed = states.changed() => {
                if changed.is_err() {
                    bail!("the registration stopped");
                }
                let state = states.borrow_and_update().clone();
                match state {
                    RegistrationState::Registered { lease: now, .. } if now != lease => {
                        output::line(format!("registered again with lease {now:x}"));
                    }
                    RegistrationState::Registering { reason } => {
                        eprintln!("not registered: {reason}; retrying");
                    }
                    _ => {}
                }
            }
        }
    }
    registration.deregister().await?;
    output::line("deregistered");
    Ok(())
}

async fn deregister(session: &Session, args: DeregisterArgs) -> anyhow::Result<()> {
    registry::validate_prefix(&args.prefix.prefix)?;
    registry::validate_service(&args.service)?;
    registry::validate_id(&args.id)?;
    let key = format!(
        "{}{}",
        registry::service_prefix(&args.prefix.prefix, &args.service),
        args.id
    );
    let channel = session.channel().await?;
    let mut kv = KvClient::new(channel.clone());
    let found = session
        .call(kv.range(pb::RangeRequest {
            key: key.clone().into(),
            ..Default::default()
        }))
        .await?;
    let Some(existing) = found.kvs.first() else {
        bail!("instance {key} not found");
    };
    // Revoking the lease deletes the key and tells its registrant.
    if existing.lease != 0 {
        let revoked = session
            .call(
                LeaseClient::new(channel.clone())
                    .lease_revoke(pb::LeaseRevokeRequest { id: existing.lease }),
            )
            .await;
        match revoked {
            Ok(_) => {}
            Err(e) if e.to_string().contains("requested lease not found") => {}
            Err(e) => return Err(e),
        }
    }
    session
        .call(kv.delete_range(pb::DeleteRangeRequest {
            key: key.clone().into(),
            ..Default::default()
        }))
        .await?;
    output::line(format!("deregistered {key}"));
    Ok(())
}

/// Reads the instances under `prefix` (of one service or all), with the
/// revision read at; values that are not instances are skipped.
async fn read(
    session: &Session,
    prefix: &str,
    service: Option<&str>,
) -> anyhow::Result<(Vec<(Instance, i64)>, i64)> {
    registry::validate_prefix(prefix)?;
    let key = match service {
        Some(service) => {
            registry::validate_service(service)?;
            registry::service_prefix(prefix, service)
        }
        None => registry::registry_prefix(prefix),
    };
    let mut kv = KvClient::new(session.channel().await?);
    let answer = session
        .call(kv.range(pb::RangeRequest {
            range_end: muster_proto::prefix_end(key.as_bytes()).into(),
            key: key.into(),
            ..Default::default()
        }))
        .await?;
    let instances = answer
        .kvs
        .iter()
        .filter_map(|kv| {
            Instance::decode(prefix, &kv.key, &kv.value)
                .ok()
                .map(|i| (i, kv.lease))
        })
        .collect();
    Ok((instances, answer.header.map_or(0, |h| h.revision)))
}

fn instance_json(instance: &Instance, lease: i64) -> Value {
    json!({
        "service": instance.service,
        "id": instance.id,
        "addr": instance.addr,
        "health": instance.health.as_str(),
        "weight": instance.weight,
        "zone": instance.zone,
        "tags": instance.tags,
        "meta": instance.meta,
        "registered": format_rfc3339(instance.registered),
        "lease": format!("{lease:x}"),
    })
}

async fn list(session: &Session, args: ListArgs) -> anyhow::Result<()> {
    for tag in &args.tags {
        registry::validate_tag(tag)?;
    }
    let (instances, revision) = read(session, &args.prefix.prefix, args.service.as_deref()).await?;
    let chosen: Vec<(Instance, i64)> = instances
        .into_iter()
        .filter(|(i, _)| args.tags.iter().all(|t| i.has_tag(t)))
        .filter(|(i, _)| args.health.is_none_or(|h| i.health == h))
        .collect();
    match session.write_out {
        WriteOut::Json => output::json_line(&json!({
            "revision": revision,
            "instances": chosen.iter().map(|(i, l)| instance_json(i, *l)).collect::<Vec<_>>(),
        })),
        format => {
            let headers = [
                "SERVICE", "ID", "ADDRESS", "HEALTH", "WEIGHT", "ZONE", "TAGS",
            ];
            let rows: Vec<Vec<String>> = chosen
                .iter()
                .map(|(i, _)| {
                    vec![
                        i.service.clone(),
                        i.id.clone(),
                        i.addr.clone(),
                        i.health.to_string(),
                        i.weight.to_string(),
                        i.zone.clone(),
                        i.tags.join(","),
                    ]
                })
                .collect();
            if format == WriteOut::Table {
                output::out(output::table(&headers, &rows).as_bytes());
            } else {
                output::out(aligned(&headers, &rows).as_bytes());
            }
        }
    }
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart.
fn aligned(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    let mut write = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    };
    write(headers.to_vec());
    for row in rows {
        write(row.iter().map(String::as_str).collect());
    }
    text
}

async fn watch(session: &Session, args: WatchArgs) -> anyhow::Result<()> {
    let prefix = &args.prefix.prefix;
    let (instances, revision) = read(session, prefix, args.service.as_deref()).await?;
    let key = match &args.service {
        Some(service) => registry::service_prefix(prefix, service),
        None => registry::registry_prefix(prefix),
    };
    for (i, lease) in &instances {
        print_change("PUT", i, *lease, revision, session.write_out);
    }
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    requests
        .send(pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    range_end: muster_proto::prefix_end(key.as_bytes()).into(),
                    key: key.clone().into(),
                    start_revision: revision + 1,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .map_err(|_| anyhow!("watch closed"))?;
    let mut stream = session
        .call(
            WatchClient::new(session.channel().await?)
                .watch(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        )
        .await?;
    let mut seen = 0u64;
    loop {
        let answer = tokio::select! {
            answer = stream.next() => answer,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let answer = match answer {
            Some(answer) => answer?,
            None => bail!("the watch ended"),
        };
        if answer.compact_revision > 0 {
            bail!("etcdserver: mvcc: required revision has been compacted");
        }
        for event in &answer.events {
            let Some(kv) = &event.kv else { continue };
            let (kind, instance) = match event.r#type() {
                EventType::Put => ("PUT", Instance::decode(prefix, &kv.key, &kv.value)),
                EventType::Delete => (
                    "DELETE",
                    match &event.prev_kv {
                        Some(prev) => Instance::decode(prefix, &prev.key, &prev.value),
                        None => Err(registry::InvalidInstance("no previous value".into())),
                    },
                ),
            };
            match instance {
                Ok(instance) => print_change(
                    kind,
                    &instance,
                    kv.lease,
                    kv.mod_revision,
                    session.write_out,
                ),
                Err(_) => {
                    // Not an instance (or deleted without its value): the key alone.
                    if let Some((service, id)) = registry::parse_key(prefix, &kv.key) {
                        output::line(format!("{kind} {service}/{id}"));
                    } else {
                        continue;
                    }
                }
            }
            seen += 1;
            if args.max_events.is_some_and(|max| seen >= max) {
                return Ok(());
            }
        }
    }
}

fn print_change(kind: &str, i: &Instance, lease: i64, revision: i64, format: WriteOut) {
    match format {
        WriteOut::Json => output::json_line(&json!({
            "type": kind,
            "revision": revision,
            "instance": instance_json(i, lease),
        })),
        _ if kind == "DELETE" => output::line(format!("{kind} {}/{}", i.service, i.id)),
        _ => output::line(format!(
            "{kind} {}/{} {} {}",
            i.service, i.id, i.addr, i.health
        )),
    }
}

async fn resolve(session: &Session, args: ResolveArgs) -> anyhow::Result<()> {
    let balancer = balance::by_name(&args.balancer, args.zone.as_deref())
        .with_context(|| format!("unknown balancer {:?}", args.balancer))?;
    let config = DiscoveryConfig {
        prefix: args.prefix.prefix,
        start_timeout: session.command_timeout,
        ..Default::default()
    };
    let discovery = Discovery::start(client(session)?, &args.service, config).await?;
    let candidates: Vec<Instance> = discovery
        .healthy()
        .into_iter()
        .filter(|i| args.tags.iter().all(|t| i.has_tag(t)))
        .collect();
    let Some(pick) = balancer.pick(&candidates) else {
        bail!("no healthy instance of service {:?}", args.service);
    };
    match session.write_out {
        WriteOut::Json => output::json_line(&instance_json(pick.instance(), 0)),
        _ => output::line(&pick.instance().addr),
    }
    Ok(())
}
