//! Maintenance commands: `endpoint status | health | hashkv`, `alarm list |
//! disarm`, `snapshot save`, `move-leader`.
//!
//! Invariants: `endpoint ...` addresses every endpoint of `--endpoints` (or,
//! with `--cluster`, every client URL in the member list) one at a time,
//! prints one row per endpoint that answered and names on stderr each one
//! that did not; the command fails (exit 1) if any endpoint failed.
//! `snapshot save` writes to `FILE.part` and renames it to `FILE` only once
//! the whole stream has arrived, so `FILE` is never a partial snapshot.
//! `move-leader` sends the request to the current leader, found by asking
//! each endpoint for its status.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use crate::member::parse_member_id;
use crate::output::{self, Object, WriteOut};
use crate::session::{DEADLINE_EXCEEDED, Session, error_message};

/// The `endpoint` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// Prints the status of each endpoint.
    Status(EndpointArgs),
    /// Checks the health of each endpoint (a linearizable read).
    Health(EndpointArgs),
    /// Prints the KV history hash of each endpoint.
    Hashkv(HashKvArgs),
}

/// Arguments shared by the `endpoint` subcommands.
#[derive(Debug, Args)]
pub(crate) struct EndpointArgs {
    /// Use all endpoints from the cluster member list.
    #[arg(long)]
    pub(crate) cluster: bool,
}

/// Arguments of `endpoint hashkv`.
#[derive(Debug, Args)]
pub(crate) struct HashKvArgs {
    /// Use all endpoints from the cluster member list.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Maximum revision to hash (0 = latest).
    #[arg(long, default_value_t = 0)]
    pub(crate) rev: i64,
}

/// The `alarm` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AlarmCommand {
    /// Lists all alarms.
    List,
    /// Disarms all alarms.
    Disarm,
}

/// The `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Stores a snapshot of the first reachable endpoint to a file.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
    },
}

/// Arguments of `move-leader`.
#[derive(Debug, Args)]
pub(crate) struct MoveLeaderArgs {
    /// The member ID (hex) of the new leader.
    pub(crate) target: String,
}

/// The endpoints an `endpoint` command addresses.
async fn endpoints(session: &Session, cluster: bool) -> anyhow::Result<Vec<String>> {
    if !cluster {
        return Ok(session.endpoints.clone());
    }
    let members = crate::member::list(session).await?;
    let mut urls: Vec<String> = members
        .members
        .iter()
        .flat_map(|m| m.client_ur_ls.iter().cloned())
        .collect();
    urls.dedup();
    Ok(urls)
}

/// The status of one endpoint, bounded by the session's timeouts.
async fn status_of(session: &Session, endpoint: &str) -> anyhow::Result<pb::StatusResponse> {
    let mut maintenance = MaintenanceClient::new(session.channel_to(endpoint).await?);
    session.call(maintenance.status(pb::StatusRequest {})).await
}

/// Runs one `endpoint` subcommand.
pub(crate) async fn endpoint(session: &Session, command: EndpointCommand) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Status(args) => status(session, args).await,
        EndpointCommand::Health(args) => health(session, args).await,
        EndpointCommand::Hashkv(args) => hash_kv(session, args).await,
    }
}

async fn status(session: &Session, args: EndpointArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    let mut failed = false;
    for endpoint in endpoints(session, args.cluster).await? {
        match status_of(session, &endpoint).await {
            Ok(status) => {
                let member = status.header.as_ref().map_or(0, |h| h.member_id);
                rows.push(vec![
                    endpoint.clone(),
                    format!("{member:x}"),
                    status.version.clone(),
                    output::human_bytes(status.db_size.max(0) as u64),
                    (member != 0 && status.leader == member).to_string(),
                    status.is_learner.to_string(),
                    status.raft_term.to_string(),
                    status.raft_index.to_string(),
                    status.raft_applied_index.to_string(),
                    status.errors.join(", "),
                ]);
                objects.push(json!({ "Endpoint": endpoint, "Status": output::status(&status) }));
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "Failed to get the status of endpoint {endpoint} ({})",
                    error_message(&e)
                );
            }
        }
    }
    match session.write_out {
        WriteOut::Json => output::json_line(&Value::Array(objects)),
        WriteOut::Table => output::out(
            output::table(
                &[
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "ERRORS",
                ],
                &rows,
            )
            .as_bytes(),
        ),
        WriteOut::Simple => {
            let text: String = rows.iter().map(|r| r.join(", ") + "\n").collect();
            output::out(text.as_bytes());
        }
    }
    if failed {
        bail!("failed to get the status of some endpoints");
    }
    Ok(())
}

async fn health(session: &Session, args: EndpointArgs) -> anyhow::Result<()> {
    struct Health {
        endpoint: String,
        took: std::time::Duration,
        error: Option<String>,
    }
    let mut results = Vec::new();
    for endpoint in endpoints(session, args.cluster).await? {
        let started = Instant::now();
        let checked = async {
            let mut kv = KvClient::new(session.channel_to(&endpoint).await?);
            session
                .call(kv.range(pb::RangeRequest {
                    key: "health".into(),
                    ..Default::default()
                }))
                .await
        }
        .await;
        let error = match checked {
            Ok(_) => None,
            // As etcdctl: a member that refuses the read for lack of
            // permission has still committed it, so it is healthy.
            Err(e)
                if e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::PermissionDenied) =>
            {
                None
            }
            Err(e) => Some(error_message(&e)),
        };
        results.push(Health {
            endpoint,
            took: started.elapsed(),
            error,
        });
    }
    let healthy = results.iter().all(|h| h.error.is_none());
    match session.write_out {
        WriteOut::Json => {
            let objects: Vec<Value> = results
                .iter()
                .map(|h| {
                    Object::default()
                        .always("endpoint", h.endpoint.clone().into())
                        .always("health", h.error.is_none().into())
                        .always("took", format!("{:?}", h.took).into())
                        .text("error", h.error.as_deref().unwrap_or(""))
                        .build()
                })
                .collect();
            output::json_line(&Value::Array(objects));
        }
        WriteOut::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|h| {
                    vec![
                        h.endpoint.clone(),
                        h.error.is_none().to_string(),
                        format!("{:?}", h.took),
                        h.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::out(output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows).as_bytes());
        }
        WriteOut::Simple => {
            for h in &results {
                match &h.error {
                    None => output::line(format!(
                        "{} is healthy: successfully committed proposal: took = {:?}",
                        h.endpoint, h.took
                    )),
                    Some(error) => eprintln!(
                        "{} is unhealthy: failed to commit proposal: {error}",
                        h.endpoint
                    ),
                }
            }
        }
    }
    if !healthy {
        bail!("unhealthy cluster");
    }
    Ok(())
}

async fn hash_kv(session: &Session, args: HashKvArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    let mut failed = false;
    for endpoint in endpoints(session, args.cluster).await? {
        let hashed = async {
            let mut maintenance = MaintenanceClient::new(session.channel_to(&endpoint).await?);
            session
                .call(maintenance.hash_kv(pb::HashKvRequest { revision: args.rev }))
                .await
        }
        .await;
        match hashed {
            Ok(response) => {
                rows.push(vec![endpoint.clone(), response.hash.to_string()]);
                objects.push(json!({
                    "Endpoint": endpoint,
                    "HashKV": Object::default()
                        .value("header", output::header(response.header.as_ref()))
                        .int("hash", response.hash)
                        .int("compact_revision", response.compact_revision)
                        .build(),
                }));
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "Failed to get the hash of endpoint {endpoint} ({})",
                    error_message(&e)
                );
            }
        }
    }
    match session.write_out {
        WriteOut::Json => output::json_line(&Value::Array(objects)),
        WriteOut::Table => output::out(output::table(&["ENDPOINT", "HASH"], &rows).as_bytes()),
        WriteOut::Simple => {
            let text: String = rows.iter().map(|r| r.join(", ") + "\n").collect();
            output::out(text.as_bytes());
        }
    }
    if failed {
        bail!("failed to get the hash of some endpoints");
    }
    Ok(())
}

fn alarm_name(alarm: i32) -> &'static str {
    pb::AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name())
}

/// Runs one `alarm` subcommand.
pub(crate) async fn alarm(session: &Session, command: AlarmCommand) -> anyhow::Result<()> {
    use pb::alarm_request::AlarmAction;
    let mut maintenance = MaintenanceClient::new(session.channel().await?);
    let listed = session
        .call(maintenance.alarm(pb::AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: pb::AlarmType::None as i32,
        }))
        .await?;
    let response = match command {
        AlarmCommand::List => listed,
        AlarmCommand::Disarm => {
            let mut disarmed = pb::AlarmResponse {
                header: listed.header,
                alarms: Vec::new(),
            };
            for alarm in &listed.alarms {
                let response = session
                    .call(maintenance.alarm(pb::AlarmRequest {
                        action: AlarmAction::Deactivate as i32,
                        member_id: alarm.member_id,
                        alarm: alarm.alarm,
                    }))
                    .await?;
                disarmed.header = response.header;
                disarmed.alarms.extend(response.alarms);
            }
            disarmed
        }
    };
    if session.write_out == WriteOut::Json {
        let alarms: Vec<Value> = response
            .alarms
            .iter()
            .map(|a| {
                Object::default()
                    .int("memberID", a.member_id)
                    .int("alarm", a.alarm)
                    .build()
            })
            .collect();
        output::json_line(
            &Object::default()
                .value("header", output::header(response.header.as_ref()))
                .value("alarms", Some(Value::Array(alarms)))
                .build(),
        );
    } else {
        let text: String = response
            .alarms
            .iter()
            .map(|a| format!("memberID:{} alarm:{} \n", a.member_id, alarm_name(a.alarm)))
            .collect();
        output::out(text.as_bytes());
    }
    Ok(())
}

/// Runs one `snapshot` subcommand.
pub(crate) async fn snapshot(session: &Session, command: SnapshotCommand) -> anyhow::Result<()> {
    let SnapshotCommand::Save { file } = command;
    let mut part = file.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut maintenance = MaintenanceClient::new(session.channel().await?);
    let mut stream = session
        .call(maintenance.snapshot(pb::SnapshotRequest {}))
        .await?;
    let mut writer = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("could not open {}", part.display()))?;
    let mut size = 0u64;
    let written: anyhow::Result<()> = async {
        loop {
            let message = tokio::time::timeout(session.command_timeout, stream.next())
                .await
                .map_err(|_| anyhow!(DEADLINE_EXCEEDED))?;
            let Some(message) = message else { break };
            let message = message?;
            size += message.blob.len() as u64;
            writer.write_all(&message.blob).await?;
        }
        writer.sync_all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, &file)
        .await
        .with_context(|| format!("could not rename {} to {}", part.display(), file.display()))?;
    if session.write_out == WriteOut::Json {
        output::json_line(&json!({ "path": file.display().to_string(), "size": size }));
    } else {
        output::line(format!("Snapshot saved at {}", file.display()));
    }
    Ok(())
}

/// `move-leader`: asks the current leader to hand leadership to the target.
pub(crate) async fn move_leader(session: &Session, args: MoveLeaderArgs) -> anyhow::Result<()> {
    let target = parse_member_id(&args.target)?;
    let mut leader = None;
    // As etcdctl: every endpoint's status is needed, the first failure
    // ends the command.
    for endpoint in &session.endpoints {
        let status = status_of(session, endpoint).await?;
        let member = status.header.as_ref().map_or(0, |h| h.member_id);
        if member != 0 && status.leader == member {
            leader = Some((endpoint.clone(), member));
            break;
        }
    }
    let Some((endpoint, leader_id)) = leader else {
        bail!(
            "no leader endpoint given at [{}]",
            session.endpoints.join(" ")
        );
    };
    let mut maintenance = MaintenanceClient::new(session.channel_to(&endpoint).await?);
    let response = session
        .call(maintenance.move_leader(pb::MoveLeaderRequest { target_id: target }))
        .await?;
    if session.write_out == WriteOut::Json {
        output::json_line(
            &Object::default()
                .value("header", output::header(response.header.as_ref()))
                .build(),
        );
    } else {
        output::line(format!(
            "Leadership transferred from {leader_id:x} to {target:x}"
        ));
    }
    Ok(())
}
