//! Discovery: a cached, always-current list of one service's instances.
//!
//! ```text
//!   (cache file ─▶ view, stale)
//!   list <prefix>/<service>/ at revision R ─▶ view (live)
//!   watch from R+1 ─▶ apply each revision's events ─▶ view (live)
//!     stream broken / no answer to a progress probe ─▶ view kept (stale),
//!                      next endpoint, watch again from last revision + 1
//!     start revision compacted ─▶ list again
//! ```
//!
//! Invariants:
//!
//! - The view is only ever replaced whole (readers never see half of a
//!   revision), and its revision only grows.
//! - No change is missed or applied twice: the watch resumes at the last
//!   applied revision + 1, and events at or below the applied revision are
//!   skipped. A compacted resume point makes it list again, which replaces
//!   the view at once.
//! - The watch asks for `hasleader`, so a member cut off from its cluster
//!   ends the stream instead of going quiet; a progress request every
//!   [`DiscoveryConfig::probe_interval`] that gets no answer within another
//!   interval counts as a broken stream too (a partition between the client
//!   and the member).
//! - While the cluster cannot be reached the last-known-good view keeps
//!   being served with [`Freshness::Stale`]; it is never emptied for that.
//! - Values that do not decode as instances are skipped (and logged), never
//!   fatal.
//! - With a cache file, the view is written to it (atomically: a temporary
//!   file renamed over it) at most once per second while it changes, and
//!   read at start so a restarting client serves at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use muster_proto::etcdserverpb::{
    self as pb, kv_client::KvClient, watch_client::WatchClient, watch_request,
};
use muster_proto::mvccpb::event::EventType;
use muster_proto::registry::{Instance, service_prefix, validate_prefix, validate_service};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::balance::{Balancer, Pick};
use crate::{Client, DEFAULT_PREFIX, Error, unreachable};

/// How discovery behaves.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The key prefix (default `/registry/services`).
    pub prefix: String,
    /// Where to persist the last-known-good view; `None` for nowhere.
    pub cache_file: Option<PathBuf>,
    /// How often an idle watch is probed with a progress request (default
    /// 5 s); an unanswered probe counts as a broken stream after one more
    /// interval.
    pub probe_interval: Duration,
    /// How long [`Discovery::start`] waits for a first list when there is
    /// no cache file to start from (default 10 s).
    pub start_timeout: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            prefix: DEFAULT_PREFIX.to_string(),
            cache_file: None,
            probe_interval: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// How current a view is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Following the cluster.
    Live,
    /// The cluster could not be reached since `since`: this is the last
    /// known good view (possibly read from the cache file).
    Stale {
        /// When it stopped being live (or when the cache file was read).
        since: SystemTime,
        /// Why.
        reason: String,
    },
}

/// One consistent view of a service's instances.
#[derive(Clone, Debug)]
pub struct View {
    /// The instances by ID.
    pub instances: BTreeMap<String, Instance>,
    /// The revision the view is current to.
    pub revision: i64,
    /// Whether it is live or the last known good.
    pub freshness: Freshness,
}

impl View {
    /// The instances to send traffic to (see [`crate::healthy`]).
    pub fn healthy(&self) -> Vec<Instance> {
        crate::healthy(&self.instances.values().cloned().collect::<Vec<_>>())
    }
}

/// The cache file's contents.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    service: String,
    prefix: String,
    revision: i64,
    /// Each instance's stored value, by ID.
    instances: BTreeMap<String, String>,
}

/// A service's instances, followed in the background until dropped.
pub struct Discovery {
    service: String,
    view: Arc<RwLock<Arc<View>>>,
    updates: watch::Receiver<u64>,
    _stop: mpsc::Sender<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.view();
        f.debug_struct("Discovery")
            .field("service", &self.service)
            .field("instances", &view.instances.len())
            .field("revision", &view.revision)
            .field("freshness", &view.freshness)
            .finish()
    }
}

impl Discovery {
    /// Starts following `service`. Returns once there is a view: the first
    /// list, or the cache file's contents (stale) while the cluster cannot
    /// be reached. Without a cache file, fails after
    /// [`DiscoveryConfig::start_timeout`] if no list succeeded.
    pub async fn start(
        client: Client,
        service: &str,
        config: DiscoveryConfig,
    ) -> Result<Discovery, Error> {
        validate_prefix(&config.prefix)?;
        validate_service(service)?;
        let cached = match &config.cache_file {
            Some(path) => read_cache(path, &config.prefix, service)?,
            None => None,
        };
        let mut task = Task {
            client,
            service: service.to_string(),
            prefix: config.prefix.clone(),
            key_prefix: service_prefix(&config.prefix, service),
            config,
            instances: BTreeMap::new(),
            values: BTreeMap::new(),
            revision: 0,
            view: Arc::new(RwLock::new(Arc::new(View {
                instances: BTreeMap::new(),
                revision: 0,
                freshness: Freshness::Stale {
                    since: SystemTime::now(),
                    reason: "not listed yet".into(),
                },
            }))),
            updates: watch::channel(0).0,
            cache_dirty: false,
        };
        let from_cache = cached.is_some();
        if let Some(cache) = cached {
            task.load(cache);
        }
        let first = tokio::time::timeout(task.config.start_timeout, task.list()).await;
        match first {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !from_cache => return Err(e),
            Err(_) if !from_cache => return Err(Error::Timeout),
            Ok(Err(e)) => task.stale(e.to_string()),
            Err(_) => task.stale("listing timed out".into()),
        }
        let view = Arc::clone(&task.view);
        let updates = task.updates.subscribe();
        let (stop, stopped) = mpsc::channel(1);
        tokio::spawn(task.run(stopped));
        Ok(Discovery {
            service: service.to_string(),
            view,
            updates,
            _stop: stop,
        })
    }

    /// The service followed.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().expect("view lock"))
    }

    /// The instances to send traffic to now.
    pub fn healthy(&self) -> Vec<Instance> {
        self.view().healthy()
    }

    /// One instance chosen by `balancer` among [`Discovery::healthy`].
    pub fn pick(&self, balancer: &dyn Balancer) -> Option<Pick> {
        balancer.pick(&self.healthy())
    }

    /// A receiver that changes whenever the view does (its value counts
    /// the changes).
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.updates.clone()
    }

    /// Waits until `ready` holds for the view, at most `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        mut ready: impl FnMut(&View) -> bool,
    ) -> Result<Arc<View>, Error> {
        let mut updates = self.updates();
        tokio::time::timeout(within, async {
            loop {
                let view = self.view();
                if ready(&view) {
                    return Ok(view);
                }
                if updates.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }
}

fn read_cache(path: &Path, prefix: &str, service: &str) -> Result<Option<CacheFile>, Error> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io(format!("cache file {}: {e}", path.display()))),
    };
    match serde_json::from_slice::<CacheFile>(&text) {
        Ok(cache) if cache.prefix == prefix && cache.service == service => Ok(Some(cache)),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the cache file is another service's; ignored");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the cache file is unreadable; ignored");
            Ok(None)
        }
    }
}

fn write_cache(path: &Path, cache: &CacheFile) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec(cache).expect("the cache is plain data"),
    )?;
    std::fs::rename(&temporary, path)
}

struct Task {
    client: Client,
    config: DiscoveryConfig,
    service: String,
    prefix: String,
    key_prefix: String,
    /// The view being built: instances and their raw values, by ID.
    instances: BTreeMap<String, Instance>,
    values: BTreeMap<String, String>,
    /// The last revision applied.
    revision: i64,
    view: Arc<RwLock<Arc<View>>>,
    updates: watch::Sender<u64>,
    cache_dirty: bool,
}

/// Why a watch session ended.
enum Ended {
    /// The handle was dropped.
    Stop,
    /// The resume point was compacted: list again.
    Compacted,
    /// The stream broke; resume from the last revision.
    Broken(String),
}

impl Task {
    fn load(&mut self, cache: CacheFile) {
        for (id, value) in &cache.instances {
            let key = format!("{}{id}", self.key_prefix);
            if let Ok(instance) = Instance::decode(&self.prefix, key.as_bytes(), value.as_bytes()) {
                self.instances.insert(id.clone(), instance);
                self.values.insert(id.clone(), value.clone());
            }
        }
        self.revision = cache.revision;
        self.publish(Freshness::Stale {
            since: SystemTime::now(),
            reason: "started from the cache file".into(),
        });
    }

    fn publish(&mut self, freshness: Freshness) {
        let view = Arc::new(View {
            instances: self.instances.clone(),
            revision: self.revision,
            freshness,
        });
        *self.view.write().expect("view lock") = view;
        self.updates.send_modify(|n| *n += 1);
        self.cache_dirty = true;
    }

    fn stale(&mut self, reason: String) {
        let current = self.view.read().expect("view lock").freshness.clone();
        if let Freshness::Stale { since, .. } = current {
            // Keep the time it first went stale.
            self.publish(Freshness::Stale { since, reason });
        } else {
            tracing::warn!(service = %self.key_prefix, %reason, "discovery is serving the last known good list");
            self.publish(Freshness::Stale {
                since: SystemTime::now(),
                reason,
            });
        }
    }

    fn save_cache(&mut self) {
        let Some(path) = self.config.cache_file.clone() else {
            return;
        };
        if !self.cache_dirty {
            return;
        }
        self.cache_dirty = false;
        let cache = CacheFile {
            service: self.service.clone(),
            prefix: self.prefix.clone(),
            revision: self.revision,
            instances: self.values.clone(),
        };
        if let Err(e) = write_cache(&path, &cache) {
            tracing::warn!(path = %path.display(), error = %e, "writing the cache file failed");
        }
    }

    /// Lists the service and replaces the view with what it finds.
    async fn list(&mut self) -> Result<(), Error> {
        let key = bytes::Bytes::from(self.key_prefix.clone());
        let end = bytes::Bytes::from(muster_proto::prefix_end(self.key_prefix.as_bytes()));
        let listed = self
            .client
            .unary(|channel| {
                let request = pb::RangeRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    ..Default::default()
                };
                async move {
                    KvClient::new(channel)
                        .range(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        self.instances.clear();
        self.values.clear();
        for kv in &listed.kvs {
            self.put(&kv.key, &kv.value);
        }
        self.revision = listed.header.map_or(0, |h| h.revision);
        self.publish(Freshness::Live);
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        match Instance::decode(&self.prefix, key, value) {
            Ok(instance) => {
                self.values.insert(
                    instance.id.clone(),
                    String::from_utf8_lossy(value).into_owned(),
                );
                self.instances.insert(instance.id.clone(), instance);
            }
            Err(e) => {
                tracing::debug!(error = %e, "skipping a value that is not an instance");
                // A key that held an instance and now holds garbage: gone.
                if let Some((_, id)) = muster_proto::registry::parse_key(&self.prefix, key) {
                    self.instances.remove(&id);
                    self.values.remove(&id);
                }
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(id) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(&self.key_prefix))
        {
            self.instances.remove(id);
            self.values.remove(id);
        }
    }

    async fn run(mut self, mut stop: mpsc::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        let mut cache_tick = tokio::time::interval(Duration::from_secs(1));
        cache_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listed = matches!(
            self.view.read().expect("view lock").freshness,
            Freshness::Live
        );
        loop {
            if !listed {
                let attempt = tokio::select! {
                    attempt = self.list() => attempt,
                    _ = stop.recv() => break,
                };
                match attempt {
                    Ok(()) => listed = true,
                    Err(e) => {
                        self.stale(e.to_string());
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stop.recv() => break,
                        }
                        backoff = (backoff * 2).min(self.config.probe_interval);
                        continue;
                    }
                }
            }
            match self.watch(&mut stop, &mut cache_tick).await {
                Ended::Stop => break,
                Ended::Compacted => listed = false,
                Ended::Broken(reason) => {
                    self.stale(reason);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.recv() => break,
                    }
                    backoff = (backoff * 2).min(self.config.probe_interval);
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
        }
        self.save_cache();
    }

    /// Watches from the last revision + 1 until the stream ends.
    async fn watch(
        &mut self,
        stop: &mut mpsc::Receiver<()>,
        cache_tick: &mut tokio::time::Interval,
    ) -> Ended {
        let (index, channel) = self.client.channel();
        let (requests, receiver) = mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: bytes::Bytes::from(self.key_prefix.clone()),
                    range_end: bytes::Bytes::from(muster_proto::prefix_end(
                        self.key_prefix.as_bytes(),
                    )),
                    start_revision: self.revision + 1,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        requests.try_send(create).expect("a fresh channel has room");
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let opened = tokio::time::timeout(
            self.client.config().request_timeout,
            WatchClient::new(channel).watch(request),
        )
        .await;
        let mut responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                if unreachable(&status) {
                    self.client.failed(index);
                }
                return Ended::Broken(status.message().to_string());
            }
            Err(_) => {
                self.client.failed(index);
                return Ended::Broken("opening the watch timed out".into());
            }
        };
        let probe_every = self.config.probe_interval;
        let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the oldest unanswered probe went out.
        let mut probing_since: Option<Instant> = None;
        let mut created = false;
        loop {
            tokio::select! {
                _ = stop.recv() => return Ended::Stop,
                _ = cache_tick.tick() => self.save_cache(),
                _ = probe.tick() => {
                    if let Some(since) = probing_since
                        && since.elapsed() >= probe_every
                    {
                        self.client.failed(index);
                        return Ended::Broken("the watch stopped answering".into());
                    }
                    let progress = pb::WatchRequest {
                        request_union: Some(watch_request::RequestUnion::ProgressRequest(
                            pb::WatchProgressRequest {},
                        )),
                    };
                    if requests.try_send(progress).is_ok() {
                        probing_since.get_or_insert_with(Instant::now);
                    }
                }
                answer = responses.next() => {
                    let answer = match answer {
                        Some(Ok(answer)) => answer,
                        Some(Err(status)) => {
                            self.client.failed(index);
                            return Ended::Broken(status.message().to_string());
                        }
                        None => {
                            self.client.failed(index);
                            return Ended::Broken("the watch stream ended".into());
                        }
                    };
                    probing_since = None;
                    if answer.compact_revision > 0 {
                        tracing::info!(
                            service = %self.key_prefix,
                            compacted = answer.compact_revision,
                            "resume point compacted; listing again"
                        );
                        return Ended::Compacted;
                    }
                    if answer.canceled {
                        return Ended::Broken(format!("watch canceled: {}", answer.cancel_reason));
                    }
                    if answer.created {
                        created = true;
                        // Live again once the watch is in place.
                        if self.view.read().expect("view lock").freshness != Freshness::Live {
                            self.publish(Freshness::Live);
                        }
                        continue;
                    }
                    if !created {
                        continue;
                    }
                    let mut changed = false;
                    for event in &answer.events {
                        let Some(kv) = &event.kv else { continue };
                        if kv.mod_revision <= self.revision {
                            continue;
                        }
                        match event.r#type() {
                            EventType::Put => self.put(&kv.key, &kv.value),
                            EventType::Delete => self.delete(&kv.key),
                        }
                        changed = true;
                    }
                    let mut revision = self.revision;
                    if let Some(last) = answer.events.last().and_then(|e| e.kv.as_ref()) {
                        revision = revision.max(last.mod_revision);
                    } else if answer.events.is_empty() && !answer.fragment {
                        // A progress notification: everything up to the
                        // header's revision has been delivered.
                        revision = revision.max(answer.header.map_or(0, |h| h.revision));
                    }
                    if changed || revision != self.revision {
                        self.revision = revision;
                        self.publish(Freshness::Live);
                    }
                }
            }
        }
    }
}
