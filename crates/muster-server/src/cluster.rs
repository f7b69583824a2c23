//! The etcd `Cluster` service: MemberList, MemberAdd, MemberRemove,
//! MemberUpdate, MemberPromote; and the publishing of this member's
//! attributes.
//!
//! Who votes is Raft's membership (openraft's configuration, changed on
//! the leader through [`RaftNode::change_members`]); what the cluster knows
//! about each member (name, peer URLs, client URLs) is replicated in the
//! store's member table. A member is "started" once it has published its
//! name and client URLs there: every member does so when its client API
//! starts (and again only when they changed), as etcd's members publish
//! their attributes through Raft.
//!
//! Invariants:
//! - Requests are checked before anything is proposed, with etcd's codes
//!   and messages: URLs must be `http://host:port`; peer URLs may not be
//!   another member's; an unknown ID is "member not found"; a voter is
//!   added only if the started voters remain a quorum (etcd's strict
//!   reconfiguration check).
//! - A member's peer URLs are recorded in the table before Raft's
//!   membership names it, so a listed member always shows the URLs it was
//!   added with; a member left out of Raft's membership is never listed,
//!   whatever the table still holds.
//! - Lists are in ID order (as etcd's) and reflect this member's applied
//!   state; after a change, this member first waits until its own
//!   configuration shows it, so the answer includes the change.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_core::Command;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use muster_raft::{MAX_LEARNERS, MembershipOp, NodeId, REQUEST_TIMEOUT, RaftNode, Refusal};
use openraft::{BasicNode, Membership};
use sha1::{Digest, Sha1};
use tonic::{Request, Response, Status};

use crate::config::PeerUrl;
use crate::server::propose;
use crate::status::{TIMEOUT, raft_status};

/// etcd's error for peer URLs that another member has.
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
/// etcd's error for URLs that do not parse.
pub const BAD_URLS: &str = "etcdserver: given member URLs are invalid";
/// etcd's error for an unknown member ID.
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
/// etcd's error for a change that would leave too few started voters.
pub const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";

/// What a member publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberAttributes {
    /// Its `--name`.
    pub name: String,
    /// Its advertised peer URLs, sorted (recorded only when the cluster
    /// knows none for it: a member of the initial cluster).
    pub peer_urls: Vec<String>,
    /// Its advertised client URLs, sorted.
    pub client_urls: Vec<String>,
}

/// The status for a refused membership change (etcd's).
pub fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Exists => Status::failed_precondition("etcdserver: member ID already exist"),
        Refusal::NotFound => Status::not_found(MEMBER_NOT_FOUND),
        Refusal::NotLearner => {
            Status::failed_precondition("etcdserver: can only promote a learner member")
        }
        Refusal::LearnerNotReady => Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        Refusal::TooManyLearners => {
            Status::failed_precondition("etcdserver: too many learner members in cluster")
        }
    }
}

/// The members as `node` sees them, in ID order: Raft's voters and
/// learners, with what the member table knows of each.
pub fn member_list(node: &RaftNode) -> Vec<pb::Member> {
    let members = node.members();
    let store = node.state_machine().store();
    let entry = |id: u64, addr: &str, is_learner: bool| {
        let info = store.member(id).cloned().unwrap_or_default();
        let peer_ur_ls = if info.peer_urls.is_empty() {
            vec![format!("http://{addr}")]
        } else {
            info.peer_urls
        };
        pb::Member {
            id,
            name: info.name,
            peer_ur_ls,
            client_ur_ls: info.client_urls,
            is_learner,
        }
    };
    let mut list: Vec<pb::Member> = members
        .voters
        .iter()
        .map(|(id, addr)| entry(*id, addr, false))
        .chain(
            members
                .learners
                .iter()
                .map(|(id, addr)| entry(*id, addr, true)),
        )
        .collect();
    list.sort_by_key(|m| m.id);
    list
}

/// Parses and sorts peer URLs, refusing what etcd refuses.
fn parse_urls(raw: &[String]) -> Result<Vec<PeerUrl>, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(BAD_URLS));
    }
    let mut urls = raw
        .iter()
        .map(|u| PeerUrl::parse(u, "peer URL").map_err(|_| Status::invalid_argument(BAD_URLS)))
        .collect::<Result<Vec<_>, _>>()?;
    urls.sort();
    urls.dedup();
    Ok(urls)
}

/// A new member's ID, as etcd derives it for `MemberAdd`: the first 8
/// bytes (big-endian) of sha1(the sorted peer URLs joined ++ the time in
/// whole seconds). Adding the same URLs twice within a second gives the
/// same ID, which is then refused as existing, as etcd refuses it.
fn new_member_id(urls: &[PeerUrl]) -> u64 {
    let mut hasher = Sha1::new();
    for url in urls {
        hasher.update(url.url.as_bytes());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    hasher.update(now.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 0 means "no member" on the wire.
    u64::from_be_bytes(first).max(1)
}

/// The etcd `Cluster` service of one member.
#[derive(Clone)]
pub struct ClusterService {
    node: Arc<RaftNode>,
    cluster_id: u64,
}

impl std::fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterService")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ClusterService {
    /// The service of `node`, a member of cluster `cluster_id`.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64) -> Self {
        ClusterService { node, cluster_id }
    }

    /// This service as a tonic service.
    pub fn into_server(self) -> ClusterServer<ClusterService> {
        ClusterServer::new(self)
    }

    /// etcd's cluster header: no revision.
    fn header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision: 0,
            raft_term: self.node.raft().metrics().borrow().current_term,
        }
    }

    /// Refuses `urls` if a member of `list` other than `except` has one of
    /// them.
    fn check_urls_free(
        list: &[pb::Member],
        urls: &[PeerUrl],
        except: Option<u64>,
    ) -> Result<(), Status> {
        let taken = list
            .iter()
            .filter(|m| Some(m.id) != except)
            .flat_map(|m| &m.peer_ur_ls)
            .any(|taken| urls.iter().any(|u| u.url == *taken));
        if taken {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        Ok(())
    }

    /// Refuses an unknown member.
    fn check_known(&self, id: u64) -> Result<pb::Member, Status> {
        member_list(&self.node)
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))
    }

    /// Runs `op` on the leader, mapping its refusal.
    async fn change(&self, op: MembershipOp) -> Result<(), Status> {
        match self.node.change_members(op).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(refusal_status(refusal)),
            Err(e) => {
                tracing::warn!(error = %e, "membership change failed");
                Err(raft_status(&e))
            }
        }
    }

    /// The member list once this member's own configuration shows the
    /// change the leader made (`done`), within the request timeout. Not a
    /// read barrier: right after a voter joins a single-voter cluster no
    /// quorum can confirm a read until the new member has started.
    async fn members_after_change(
        &self,
        done: impl Fn(&Membership<NodeId, BasicNode>) -> bool + Send + Sync,
    ) -> Result<Vec<pb::Member>, Status> {
        self.node
            .raft()
            .wait(Some(REQUEST_TIMEOUT))
            .metrics(
                |m| done(m.membership_config.membership()),
                "this member sees the membership change",
            )
            .await
            .map_err(|_| Status::unavailable(TIMEOUT))?;
        Ok(member_list(&self.node))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let urls = parse_urls(&request.peer_ur_ls)?;
        // etcd checks the ID before the URLs.
        let id = new_member_id(&urls);
        let list = member_list(&self.node);
        if list.iter().any(|m| m.id == id) {
            return Err(refusal_status(Refusal::Exists));
        }
        Self::check_urls_free(&list, &urls, None)?;
        // Checked here so nothing is proposed; the leader checks again.
        let learners = list.iter().filter(|m| m.is_learner).count();
        if request.is_learner && learners >= MAX_LEARNERS {
            return Err(refusal_status(Refusal::TooManyLearners));
        }
        if !request.is_learner {
            // etcd's IsReadyToAddVotingMember: the started voters must be
            // a quorum of the voters after the change (a single started
            // member may add a second one).
            let voters = list.iter().filter(|m| !m.is_learner).count() + 1;
            let started = list
                .iter()
                .filter(|m| !m.is_learner && !m.name.is_empty())
                .count();
            if !(started == 1 && voters == 2) && started < voters / 2 + 1 {
                return Err(Status::failed_precondition(NOT_ENOUGH_STARTED));
            }
        }
        let peer_urls: Vec<String> = urls.iter().map(|u| u.url.clone()).collect();
        propose(
            &self.node,
            Command::MemberPeerUrls {
                id,
                peer_urls: peer_urls.clone(),
            },
        )
        .await?;
        self.change(MembershipOp::Add {
            id,
            addr: urls[0].authority.clone(),
            learner: request.is_learner,
        })
        .await?;
        let members = self
            .members_after_change(|m| m.get_node(&id).is_some())
            .await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner: request.is_learner,
            }),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.check_known(id)?;
        self.change(MembershipOp::Remove { id }).await?;
        // Forget its attributes; a failure leaves an entry no list shows.
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            if let Err(e) = node.submit(Command::MemberForget { id }).await {
                tracing::debug!(member = format_args!("{id:016x}"), error = %e, "forgetting a removed member failed");
            }
        });
        let members = if id == self.node.id() {
            // This member left: it has no leader to catch up with.
            member_list(&self.node)
                .into_iter()
                .filter(|m| m.id != id)
                .collect()
        } else {
            self.members_after_change(|m| m.get_node(&id).is_none())
                .await?
        };
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let id = request.id;
        let list = member_list(&self.node);
        if !list.iter().any(|m| m.id == id) {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        let urls = parse_urls(&request.peer_ur_ls)?;
        Self::check_urls_free(&list, &urls, Some(id))?;
        let peer_urls = urls.iter().map(|u| u.url.clone()).collect();
        propose(&self.node, Command::MemberPeerUrls { id, peer_urls }).await?;
        let addr = urls[0].authority.clone();
        self.change(MembershipOp::SetAddr {
            id,
            addr: addr.clone(),
        })
        .await?;
        let members = self
            .members_after_change(|m| m.get_node(&id).is_some_and(|node| node.addr == addr))
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.header()),
            members,
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node
                .read_barrier()
                .await
                .map_err(|e| raft_status(&e))?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: member_list(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.check_known(id)?;
        self.change(MembershipOp::Promote { id }).await?;
        let members = self
            .members_after_change(|m| m.voter_ids().any(|voter| voter == id))
            .await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members,
        }))
    }
}

/// Longest pause between two attempts to publish.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(2);

/// Publishes `attributes` for `node` through Raft, once this member is in
/// the cluster's membership and a leader is known, retrying until it is
/// recorded or `stopping` turns true. Does nothing when the member table
/// already holds them (a restart with the same flags).
pub async fn publish(
    node: Arc<RaftNode>,
    attributes: MemberAttributes,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let id = node.id();
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stopping.borrow() {
            return;
        }
        let store = node.state_machine().store();
        let recorded = store.member(id).is_some_and(|m| {
            m.name == attributes.name
                && m.client_urls == attributes.client_urls
                && !m.peer_urls.is_empty()
        });
        if recorded {
            return;
        }
        let ready =
            node.members().contains(id) && node.raft().metrics().borrow().current_leader.is_some();
        if ready {
            let command = Command::MemberPublish {
                id,
                name: attributes.name.clone(),
                client_urls: attributes.client_urls.clone(),
                peer_urls: attributes.peer_urls.clone(),
            };
            match node.submit(command).await {
                Ok(_) => {
                    tracing::info!(name = %attributes.name, "published member attributes");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing member attributes failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopping.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_PUBLISH_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_sorted() {
        let raw = |urls: &[&str]| urls.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        let parsed = parse_urls(&raw(&["http://b:2", "http://a:1", "http://b:2"])).expect("valid");
        let urls: Vec<&str> = parsed.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        for bad in [&[][..], &["a:1"], &["http://a"], &["ftp://a:1"]] {
            let status = parse_urls(&raw(bad)).expect_err("invalid");
            assert_eq!(status.message(), BAD_URLS);
        }
    }
}
