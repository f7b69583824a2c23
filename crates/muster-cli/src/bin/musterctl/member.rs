//! Membership commands: `member list | add | remove | promote | update`.
//!
//! Invariants: member IDs are read and printed in hexadecimal as etcdctl
//! prints them. `member add` prints the environment a new member needs,
//! both etcd's `ETCD_*` names and muster's `MUSTER_*` names, with the
//! initial cluster built from the response's member list (the new member,
//! which has no name yet, under the name given on the command line).

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_client::ClusterClient;

use crate::output::{self, Object, WriteOut};
use crate::session::Session;

/// The `member` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// Lists all members in the cluster.
    List,
    /// Adds a member into the cluster.
    Add(AddArgs),
    /// Removes a member from the cluster.
    Remove {
        /// Member ID in hex.
        id: String,
    },
    /// Promotes a non-voting (learner) member to a voting one.
    Promote {
        /// Member ID in hex.
        id: String,
    },
    /// Updates a member's peer URLs.
    Update(UpdateArgs),
}

/// Arguments of `member add`.
#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The new member's name.
    pub(crate) name: String,
    /// Comma-separated peer URLs of the new member.
    #[arg(long, required = true)]
    pub(crate) peer_urls: String,
    /// Add as a learner (non-voting) member.
    #[arg(long)]
    pub(crate) learner: bool,
}

/// Arguments of `member update`.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Member ID in hex.
    pub(crate) id: String,
    /// Comma-separated new peer URLs of the member.
    #[arg(long, required = true)]
    pub(crate) peer_urls: String,
}

/// Parses a member ID as etcdctl prints it (hexadecimal).
pub(crate) fn parse_member_id(text: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| anyhow!("bad member ID arg ({e}), expecting ID in Hex"))
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// One member as etcdctl's simple and table output show it.
pub(crate) fn member_row(member: &pb::Member) -> Vec<String> {
    let status = if member.name.is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        format!("{:x}", member.id),
        status.to_string(),
        member.name.clone(),
        member.peer_ur_ls.join(","),
        member.client_ur_ls.join(","),
        member.is_learner.to_string(),
    ]
}

fn members_json(header: Option<&pb::ResponseHeader>, members: &[pb::Member]) -> serde_json::Value {
    Object::default()
        .value("header", output::header(header))
        .value("members", output::members(members))
        .build()
}

/// Lists the cluster's members through `session`'s first reachable endpoint.
pub(crate) async fn list(session: &Session) -> anyhow::Result<pb::MemberListResponse> {
    let mut cluster = ClusterClient::new(session.channel().await?);
    session
        .call(cluster.member_list(pb::MemberListRequest { linearizable: true }))
        .await
}

/// Runs one `member` subcommand.
pub(crate) async fn run(session: &Session, command: MemberCommand) -> anyhow::Result<()> {
    let mut cluster = ClusterClient::new(session.channel().await?);
    let json = session.write_out == WriteOut::Json;
    let cluster_id = |h: &Option<pb::ResponseHeader>| h.as_ref().map_or(0, |h| h.cluster_id);
    match command {
        MemberCommand::List => {
            let response = session
                .call(cluster.member_list(pb::MemberListRequest { linearizable: true }))
                .await?;
            let rows: Vec<Vec<String>> = response.members.iter().map(member_row).collect();
            match session.write_out {
                WriteOut::Json => {
                    output::json_line(&members_json(response.header.as_ref(), &response.members))
                }
                WriteOut::Table => output::out(
                    output::table(
                        &[
                            "ID",
                            "STATUS",
                            "NAME",
                            "PEER ADDRS",
                            "CLIENT ADDRS",
                            "IS LEARNER",
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
        }
        MemberCommand::Add(args) => {
            let peer_urls = split_urls(&args.peer_urls);
            if peer_urls.is_empty() {
                bail!("member peer urls not provided");
            }
            let response = session
                .call(cluster.member_add(pb::MemberAddRequest {
                    peer_ur_ls: peer_urls.clone(),
                    is_learner: args.learner,
                }))
                .await?;
            if json {
                output::json_line(
                    &Object::default()
                        .value("header", output::header(response.header.as_ref()))
                        .value("member", response.member.as_ref().map(output::member))
                        .value("members", output::members(&response.members))
                        .build(),
                );
                return Ok(());
            }
            let new_id = response.member.as_ref().map_or(0, |m| m.id);
            let mut text = format!(
                "Member {new_id:16x} added to cluster {:16x}\n",
                cluster_id(&response.header)
            );
            let mut initial_cluster = Vec::new();
            for member in &response.members {
                let name = if member.id == new_id {
                    args.name.as_str()
                } else {
                    member.name.as_str()
                };
                for url in &member.peer_ur_ls {
                    initial_cluster.push(format!("{name}={url}"));
                }
            }
            let initial_cluster = initial_cluster.join(",");
            let advertise = peer_urls.join(",");
            for prefix in ["ETCD", "MUSTER"] {
                text += &format!(
                    "\n{prefix}_NAME=\"{}\"\n{prefix}_INITIAL_CLUSTER=\"{initial_cluster}\"\n\
                     {prefix}_INITIAL_ADVERTISE_PEER_URLS=\"{advertise}\"\n\
                     {prefix}_INITIAL_CLUSTER_STATE=\"existing\"\n",
                    args.name
                );
            }
            output::out(text.as_bytes());
        }
        MemberCommand::Remove { id } => {
            let id = parse_member_id(&id)?;
            let response = session
                .call(cluster.member_remove(pb::MemberRemoveRequest { id }))
                .await?;
            if json {
                output::json_line(&members_json(response.header.as_ref(), &response.members));
            } else {
                output::line(format!(
                    "Member {id:16x} removed from cluster {:16x}",
                    cluster_id(&response.header)
                ));
            }
        }
        MemberCommand::Promote { id } => {
            let id = parse_member_id(&id)?;
            let response = session
                .call(cluster.member_promote(pb::MemberPromoteRequest { id }))
                .await?;
            if json {
                output::json_line(&members_json(response.header.as_ref(), &response.members));
            } else {
                output::line(format!(
                    "Member {id:16x} promoted in cluster {:16x}",
                    cluster_id(&response.header)
                ));
            }
        }
        MemberCommand::Update(args) => {
            let id = parse_member_id(&args.id)?;
            let peer_urls = split_urls(&args.peer_urls);
            if peer_urls.is_empty() {
                bail!("member peer urls not provided");
            }
            let response = session
                .call(cluster.member_update(pb::MemberUpdateRequest {
                    id,
                    peer_ur_ls: peer_urls,
                }))
                .await?;
            if json {
                output::json_line(&members_json(response.header.as_ref(), &response.members));
            } else {
                output::line(format!(
                    "Member {id:16x} updated in cluster {:16x}",
                    cluster_id(&response.header)
                ));
            }
        }
    }
    Ok(())
}
