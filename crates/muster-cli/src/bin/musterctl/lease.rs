//! Lease commands: `lease grant | revoke | timetolive | list | keep-alive`.
//!
//! Invariants: lease IDs are read and printed in hexadecimal, 16 digits, as
//! etcdctl prints them. `keep-alive` sends a keep-alive every third of the
//! lease's TTL (at least every 500 ms) and stops on Ctrl-C, on `--once` after
//! the first answer, or when the lease is gone (TTL <= 0); each answer must
//! arrive within `--command-timeout`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::kv::parse_lease_id;
use crate::output::{self, Object, WriteOut};
use crate::session::{DEADLINE_EXCEEDED, Session};

/// The `lease` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCommand {
    /// Creates a lease with the given TTL (seconds).
    Grant {
        /// Time to live in seconds.
        ttl: i64,
    },
    /// Revokes a lease (and deletes its keys).
    Revoke {
        /// Lease ID in hex.
        id: String,
    },
    /// Gets the lease's remaining and granted TTL.
    Timetolive(TimeToLiveArgs),
    /// Lists all active leases.
    List,
    /// Keeps a lease alive (renews it) until interrupted.
    KeepAlive(KeepAliveArgs),
}

/// Arguments of `lease timetolive`.
#[derive(Debug, Args)]
pub(crate) struct TimeToLiveArgs {
    /// Lease ID in hex.
    pub(crate) id: String,
    /// Get keys attached to this lease.
    #[arg(long)]
    pub(crate) keys: bool,
}

/// Arguments of `lease keep-alive`.
#[derive(Debug, Args)]
pub(crate) struct KeepAliveArgs {
    /// Lease ID in hex.
    pub(crate) id: String,
    /// Renew the lease once and exit.
    #[arg(long)]
    pub(crate) once: bool,
}

fn header_fields(header: Option<&pb::ResponseHeader>) -> serde_json::Value {
    output::header(header).unwrap_or_else(|| json!({}))
}

/// Runs one `lease` subcommand.
pub(crate) async fn run(session: &Session, command: LeaseCommand) -> anyhow::Result<()> {
    let mut lease = LeaseClient::new(session.channel().await?);
    let json = session.write_out == WriteOut::Json;
    match command {
        LeaseCommand::Grant { ttl } => {
            let response = session
                .call(lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }))
                .await?;
            if !response.error.is_empty() {
                bail!("{}", response.error);
            }
            if json {
                output::json_line(
                    &Object::default()
                        .embed(header_fields(response.header.as_ref()))
                        .always("ID", response.id.into())
                        .always("TTL", response.ttl.into())
                        .always("Error", "".into())
                        .build(),
                );
            } else {
                output::line(format!(
                    "lease {:016x} granted with TTL({}s)",
                    response.id, response.ttl
                ));
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease_id(&id)?;
            let response = session
                .call(lease.lease_revoke(pb::LeaseRevokeRequest { id }))
                .await?;
            if json {
                output::json_line(
                    &Object::default()
                        .value("header", output::header(response.header.as_ref()))
                        .build(),
                );
            } else {
                output::line(format!("lease {id:016x} revoked"));
            }
        }
        LeaseCommand::Timetolive(args) => {
            let id = parse_lease_id(&args.id)?;
            let response = session
                .call(lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
                    id,
                    keys: args.keys,
                }))
                .await?;
            if json {
                let keys: Vec<serde_json::Value> =
                    response.keys.iter().map(|k| output::base64(k)).collect();
                output::json_line(
                    &Object::default()
                        .embed(header_fields(response.header.as_ref()))
                        .always("id", response.id.into())
                        .always("ttl", response.ttl.into())
                        .always("granted-ttl", response.granted_ttl.into())
                        .always("keys", keys.into())
                        .build(),
                );
            } else if response.ttl == -1 {
                output::line(format!("lease {id:016x} already expired"));
            } else {
                let mut text = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    response.granted_ttl, response.ttl
                );
                if args.keys {
                    let keys: Vec<String> = response
                        .keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    text += &format!(", attached keys([{}])", keys.join(" "));
                }
                output::line(text);
            }
        }
        LeaseCommand::List => {
            let response = session
                .call(lease.lease_leases(pb::LeaseLeasesRequest {}))
                .await?;
            if json {
                let leases: Vec<serde_json::Value> = response
                    .leases
                    .iter()
                    .map(|l| json!({ "id": l.id }))
                    .collect();
                output::json_line(
                    &Object::default()
                        .embed(header_fields(response.header.as_ref()))
                        .always("leases", leases.into())
                        .build(),
                );
            } else {
                let mut text = format!("found {} leases\n", response.leases.len());
                for status in &response.leases {
                    text += &format!("{:016x}\n", status.id);
                }
                output::out(text.as_bytes());
            }
        }
        LeaseCommand::KeepAlive(args) => keep_alive(session, &mut lease, args).await?,
    }
    Ok(())
}

async fn keep_alive(
    session: &Session,
    lease: &mut LeaseClient<tonic::transport::Channel>,
    args: KeepAliveArgs,
) -> anyhow::Result<()> {
    let id = parse_lease_id(&args.id)?;
    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    requests
        .send(pb::LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| anyhow!("keep-alive stream closed"))?;
    let mut responses = session
        .call(lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing)))
        .await?;
    loop {
        let response = tokio::select! {
            response = tokio::time::timeout(session.command_timeout, responses.next()) => response,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let response = match response {
            Err(_) => bail!(DEADLINE_EXCEEDED),
            Ok(None) => bail!("keep-alive stream closed by the server"),
            Ok(Some(response)) => response?,
        };
        if response.ttl <= 0 {
            // As etcdctl: a single keep-alive of a missing lease is an
            // error; the keep-alive loop reports the lease gone and stops.
            if args.once {
                bail!("etcdserver: requested lease not found");
            }
            output::line(format!("lease {id:016x} expired or revoked."));
            return Ok(());
        }
        if session.write_out == WriteOut::Json {
            output::json_line(
                &Object::default()
                    .embed(header_fields(response.header.as_ref()))
                    .always("ID", response.id.into())
                    .always("TTL", response.ttl.into())
                    .build(),
            );
        } else {
            output::line(format!(
                "lease {id:016x} keepalived with TTL({})",
                response.ttl
            ));
        }
        if args.once {
            return Ok(());
        }
        let pause = Duration::from_millis((response.ttl as u64 * 1000 / 3).max(500));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| anyhow!("keep-alive stream closed"))?;
    }
}
