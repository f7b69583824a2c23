//! Member configuration: etcd's flag names, validated before anything starts.
//!
//! Every setting is a command-line flag with etcd's name and default where
//! etcd has one, and also reads from a `MUSTER_*` environment variable and
//! from an optional TOML config file (`--config`) whose keys are the flag
//! names: a flag wins over its variable, the variable over the file, the
//! file over the default ([`MemberConfig::load_from`]). The file is checked
//! as strictly as the flags: an unknown key, a value of the wrong type or
//! a value the flag would refuse stops the start with a message naming the
//! file and the key. [`MemberConfig::validate`] turns the raw settings into a
//! [`Member`] plan: this member's ID, the cluster's ID and its initial
//! members, or an error that names the setting at fault.
//!
//! IDs are derived as etcd derives them, so a cluster started twice with the
//! same flags gets the same IDs:
//!
//! ```text
//!   member ID  = first 8 bytes (big-endian) of
//!                sha1(sorted peer URLs joined ++ cluster token ++ name)
//!   cluster ID = first 8 bytes (big-endian) of
//!                sha1(the member IDs, sorted, each as 8 big-endian bytes)
//! ```
//!
//! (etcd hashes the peer URLs and token only; muster adds the name, so two
//! members that share URLs across restarts under different names are never
//! mistaken for one another.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use sha1::{Digest, Sha1};

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Every member of `--initial-cluster` starts together.
    New,
    /// This member joins a running cluster that already lists it.
    Existing,
}

/// The settings of one member, as flags and `MUSTER_*` environment variables.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "A strongly consistent service registry speaking the etcd v3 API.",
    after_help = "`muster agent --config FILE` runs the health-checking agent instead \
                  (`muster agent --help`)."
)]
pub struct MemberConfig {
    /// A TOML file of settings, keyed by flag name without the dashes
    /// (`listen-client-urls = ["http://0.0.0.0:2379"]`); flags and
    /// `MUSTER_*` variables override it. See `docs/muster.toml`.
    #[arg(long, env = "MUSTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, env = "MUSTER_NAME", default_value = "default")]
    pub name: String,

    /// Directory for the Raft log, snapshots and the member's identity.
    /// Default: `<name>.muster` in the working directory.
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for traffic from other members (comma-separated).
    #[arg(
        long,
        env = "MUSTER_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// This member's peer URLs as the other members reach them.
    #[arg(
        long,
        env = "MUSTER_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "MUSTER_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// This member's client URLs as clients reach them.
    #[arg(
        long,
        env = "MUSTER_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,

    /// The initial members, `name=peer-url,...` (a name may repeat to give
    /// a member several URLs). Default: this member alone, at its
    /// advertised peer URLs.
    #[arg(long, env = "MUSTER_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(
        long,
        env = "MUSTER_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new"
    )]
    pub initial_cluster_state: ClusterState,

    /// A token that tells clusters with the same member URLs apart.
    #[arg(
        long,
        env = "MUSTER_INITIAL_CLUSTER_TOKEN",
        default_value = "muster-cluster"
    )]
    pub initial_cluster_token: String,

    /// Milliseconds between leader heartbeats.
    #[arg(long, env = "MUSTER_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Milliseconds a follower waits without a heartbeat before it stands
    /// for election (at least 5 × the heartbeat interval, at most 50000).
    #[arg(long, env = "MUSTER_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Applied entries between snapshots (the log is purged behind them).
    #[arg(long, env = "MUSTER_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Bytes the key history may take before writes that add data are
    /// refused and the NOSPACE alarm is raised, as etcd's flag: 0 is etcd's
    /// default (2 GiB), a negative value disables the quota. muster measures
    /// the snapshot-encoded size of the history kept (compaction frees it),
    /// not a database file.
    #[arg(
        long,
        env = "MUSTER_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// URLs to serve `/metrics` (Prometheus), `/health` and `/readyz` on
    /// (comma-separated; empty for none).
    #[arg(
        long,
        env = "MUSTER_LISTEN_METRICS_URLS",
        default_value = "http://127.0.0.1:2381",
        value_delimiter = ','
    )]
    pub listen_metrics_urls: Vec<String>,

    /// Largest client request accepted, in bytes (etcd's default: 1.5 MiB).
    #[arg(long, env = "MUSTER_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u64,

    /// Most operations in each branch of a txn (etcd's default: 128).
    #[arg(long, env = "MUSTER_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u64,

    /// Least severe log level written: error, warn, info, debug or trace
    /// (`RUST_LOG`, when set, overrides it with a full filter).
    #[arg(long, env = "MUSTER_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// Log line format: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(long, env = "MUSTER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The key prefix service instances live under
    /// (`<prefix>/<service>/<id>`), for the registry service and DNS.
    #[arg(
        long,
        env = "MUSTER_REGISTRY_PREFIX",
        default_value = muster_proto::registry::DEFAULT_PREFIX
    )]
    pub registry_prefix: String,

    /// Where to serve DNS, over UDP and TCP on the same `ip:port` (empty
    /// for nowhere).
    #[arg(long, env = "MUSTER_LISTEN_DNS", default_value = crate::dns::DEFAULT_LISTEN)]
    pub listen_dns: String,

    /// The DNS domain answered for: `<service>.service.<domain>`.
    #[arg(long, env = "MUSTER_DNS_DOMAIN", default_value = crate::dns::DEFAULT_DOMAIN)]
    pub dns_domain: String,

    /// Seconds resolvers may cache a DNS answer (the TTL of its A, AAAA and
    /// SRV records).
    #[arg(long, env = "MUSTER_DNS_TTL", default_value_t = crate::dns::DEFAULT_TTL)]
    pub dns_ttl: u32,

    /// Seconds resolvers may cache that a DNS name or record does not
    /// exist (the SOA minimum sent with NXDOMAIN and empty answers).
    #[arg(
        long,
        env = "MUSTER_DNS_NEGATIVE_TTL",
        default_value_t = crate::dns::DEFAULT_NEGATIVE_TTL
    )]
    pub dns_negative_ttl: u32,

    /// Self-preservation: while lease expirations within
    /// --self-preservation-window exceed --self-preservation-threshold of
    /// the live leases, the leader holds expired leases instead of revoking
    /// them, for at most --self-preservation-max (a partition between many
    /// clients and the cluster must not delete services that are alive).
    /// `false` turns it off.
    #[arg(
        long,
        env = "MUSTER_SELF_PRESERVATION",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub self_preservation: bool,

    /// The share of live leases (above 0, at most 1) whose expiry within
    /// --self-preservation-window triggers self-preservation.
    #[arg(
        long,
        env = "MUSTER_SELF_PRESERVATION_THRESHOLD",
        default_value_t = crate::preserve::DEFAULT_THRESHOLD
    )]
    pub self_preservation_threshold: f64,

    /// How far back lease expirations count (`60s`, `2m`; at least 1s, at
    /// most 1h).
    #[arg(
        long,
        env = "MUSTER_SELF_PRESERVATION_WINDOW",
        default_value = "60s",
        value_parser = crate::duration::parse
    )]
    pub self_preservation_window: std::time::Duration,

    /// The longest self-preservation lasts once it began (`5m`; at least
    /// 1s, at most 24h); expired leases still held then are revoked.
    #[arg(
        long,
        env = "MUSTER_SELF_PRESERVATION_MAX",
        default_value = "5m",
        value_parser = crate::duration::parse
    )]
    pub self_preservation_max: std::time::Duration,

    /// The fewest live leases with which self-preservation can trigger, so
    /// that one of a handful of leases expiring never does.
    #[arg(
        long,
        env = "MUSTER_SELF_PRESERVATION_MIN_LEASES",
        default_value_t = 10
    )]
    pub self_preservation_min_leases: u64,
}

impl MemberConfig {
    /// Reads the settings from the process's arguments, `MUSTER_*`
    /// variables and the `--config` file; see [`MemberConfig::load_from`].
    pub fn load() -> Result<Self, clap::Error> {
        Self::load_from(std::env::args_os())
    }

    /// Reads the settings from `args` (the program name first), the
    /// `MUSTER_*` variables and the `--config` file (named by the flag or
    /// by `MUSTER_CONFIG`): flag > variable > file > default. The file's
    /// values become the flags' defaults, so clap's own precedence and
    /// value checks apply to them; each is also checked alone first, so
    /// that a bad one is reported with the file and key it came from.
    pub fn load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Self::command();
        // A first pass only to find --config; errors (and --help) surface
        // in the full parse below.
        let path = Self::command()
            .ignore_errors(true)
            .try_get_matches_from(&args)
            .ok()
            .and_then(|m| m.get_one::<PathBuf>("config").cloned());
        if let Some(path) = path {
            for (id, values) in file_settings(&path)? {
                command = command.mut_arg(id, |arg| arg.default_values(values));
            }
        }
        let matches = command.try_get_matches_from_mut(&args)?;
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

/// The settings in the TOML file at `path`, each as the ID of the flag it
/// sets and its values, every one checked as that flag would check it.
fn file_settings(path: &std::path::Path) -> Result<Vec<(String, Vec<String>)>, clap::Error> {
    use clap::CommandFactory;
    let fail = |message: String| {
        clap::Error::raw(
            clap::error::ErrorKind::InvalidValue,
            format!("--config {}: {message}\n", path.display()),
        )
        .with_cmd(&MemberConfig::command())
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(format!("not TOML: {}", e.message())))?;
    let command = MemberConfig::command();
    let mut settings = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|a| !matches!(a.get_long(), Some("config" | "help" | "version")))
            .ok_or_else(|| {
                fail(format!(
                    "unknown setting `{key}` (the keys are muster's flag names without the \
                     dashes, as listed by `muster --help`)"
                ))
            })?;
        let many = arg.get_value_delimiter().is_some();
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            _ => None,
        };
        let values: Vec<String> = match &value {
            toml::Value::Array(items) if many => items
                .iter()
                .map(|v| scalar(v).filter(|_| !v.is_array()))
                .collect::<Option<_>>()
                .ok_or_else(|| fail(format!("`{key}` must be a list of strings")))?,
            toml::Value::Array(_) => {
                return Err(fail(format!("`{key}` takes one value, not a list")));
            }
            other => match scalar(other) {
                // A comma-separated string, as on the command line.
                Some(s) if many => s.split(',').map(str::to_owned).collect(),
                Some(s) => vec![s],
                None => {
                    return Err(fail(format!(
                        "`{key}` must be a string or a number, not {}",
                        other.type_str()
                    )));
                }
            },
        };
        // Check the value as the flag would, with no variable in the way.
        let mut check = MemberConfig::command();
        for other in command.get_arguments() {
            check = check.mut_arg(other.get_id().clone(), |a| a.env(None::<&str>));
        }
        let flag = format!("--{key}={}", values.join(","));
        if let Err(e) = check.try_get_matches_from_mut(["muster", flag.as_str()]) {
            let reason = e.to_string();
            let reason = reason
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            return Err(fail(format!("`{key}`: {reason}")));
        }
        settings.push((arg.get_id().to_string(), values));
    }
    Ok(settings)
}

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// What an operator follows: elections, membership, start and stop.
    Info,
    /// Details for debugging muster (openraft and the transport at info).
    Debug,
    /// Everything, from every library.
    Trace,
}

impl LogLevel {
    /// The tracing filter for this level. openraft logs every failed send
    /// to a member that is down (a warning, and in replication an error,
    /// twice a second per peer); the peer transport logs a member going
    /// down and coming back once each instead, so below `debug` openraft
    /// is kept to errors and its replication module quiet. hickory's DNS
    /// server logs every query at info: only from `debug` on.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error,openraft::replication=off",
            LogLevel::Warn => "warn,openraft=error,openraft::replication=off,sled=warn",
            LogLevel::Info => {
                "info,openraft=error,openraft::replication=off,sled=warn,hickory_server=warn"
            }
            LogLevel::Debug => {
                "debug,openraft=info,sled=info,h2=info,hyper=info,tower=info,\
                 hickory_server=info,hickory_net=info,hickory_proto=info"
            }
            LogLevel::Trace => "trace",
        }
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The largest `--max-request-bytes` accepted: well above any sane request
/// and below what a single gRPC message may carry.
pub const MAX_REQUEST_BYTES_LIMIT: u64 = 1 << 30;

/// A configuration that does not make sense; the text names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn invalid(what: impl Into<String>) -> ConfigError {
    ConfigError(what.into())
}

/// A validated URL of the form `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerUrl {
    /// The URL as given, normalised (`http://host:port`, no trailing slash).
    pub url: String,
    /// `host:port`, for dialing.
    pub authority: String,
}

impl PeerUrl {
    /// Parses `http://host:port`; `setting` names the flag for errors.
    pub fn parse(raw: &str, setting: &str) -> Result<Self, ConfigError> {
        let url = url::Url::parse(raw.trim())
            .map_err(|e| invalid(format!("{setting}: {raw:?} is not a URL ({e})")))?;
        if url.scheme() != "http" {
            return Err(invalid(format!(
                "{setting}: {raw:?} must use http:// (TLS is not supported yet)"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| invalid(format!("{setting}: {raw:?} has no host")))?;
        let port = url
            .port()
            .ok_or_else(|| invalid(format!("{setting}: {raw:?} has no port")))?;
        if url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            return Err(invalid(format!(
                "{setting}: {raw:?} must be just scheme, host and port"
            )));
        }
        let authority = format!("{host}:{port}");
        Ok(PeerUrl {
            url: format!("http://{authority}"),
            authority,
        })
    }

    /// The address to bind, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.authority.parse().ok()
    }
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its name.
    pub name: String,
    /// Its ID, derived from name, URLs and token.
    pub id: u64,
    /// Its peer URLs, sorted.
    pub peer_urls: Vec<PeerUrl>,
}

/// A validated plan for starting this member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// This member's name.
    pub name: String,
    /// This member's ID.
    pub id: u64,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where to listen for peers.
    pub listen_peer_urls: Vec<PeerUrl>,
    /// Where to listen for clients.
    pub listen_client_urls: Vec<PeerUrl>,
    /// The client URLs to advertise.
    pub advertise_client_urls: Vec<PeerUrl>,
    /// Every initial member by ID, this one included.
    pub initial_members: BTreeMap<u64, InitialMember>,
    /// Whether to bootstrap or join.
    pub cluster_state: ClusterState,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout in milliseconds.
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// The space quota in bytes; `None`: no quota.
    pub quota_backend_bytes: Option<u64>,
    /// Request size and txn limits checked at the edge.
    pub limits: crate::kv::Limits,
    /// Where to serve metrics and health; empty for nowhere.
    pub listen_metrics_urls: Vec<PeerUrl>,
    /// The key prefix of service instances (`--registry-prefix`).
    pub registry_prefix: String,
    /// Where to serve DNS (UDP and TCP); `None` for nowhere.
    pub listen_dns: Option<SocketAddr>,
    /// The DNS domain, lowercase, without the trailing dot.
    pub dns_domain: String,
    /// TTL of DNS answers, in seconds.
    pub dns_ttl: u32,
    /// TTL of negative DNS answers (the SOA minimum), in seconds.
    pub dns_negative_ttl: u32,
    /// When the leader stops revoking expired leases
    /// (`--self-preservation*`).
    pub self_preservation: crate::preserve::PreservationConfig,
}

/// The longest election timeout accepted, as etcd's limit.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// The smallest positive `--quota-backend-bytes` accepted. Every put costs
/// 256 bytes besides its key and value, so a smaller quota would hold a
/// handful of tiny keys at most: a typo rather than a plan.
pub const MIN_QUOTA_BACKEND_BYTES: u64 = 1024;

/// The space quota `--quota-backend-bytes` asks for, as etcd reads it: 0 is
/// the default ([`crate::kv::DEFAULT_QUOTA_BYTES`]), a negative value
/// disables it (`None`), a positive value of at least
/// [`MIN_QUOTA_BACKEND_BYTES`] is the quota.
pub fn quota_backend_bytes(raw: i64) -> Result<Option<u64>, ConfigError> {
    match u64::try_from(raw) {
        Err(_) => Ok(None),
        Ok(0) => Ok(Some(crate::kv::DEFAULT_QUOTA_BYTES)),
        Ok(bytes) if bytes < MIN_QUOTA_BACKEND_BYTES => Err(invalid(format!(
            "--quota-backend-bytes ({bytes}) must be at least {MIN_QUOTA_BACKEND_BYTES} bytes, \
             0 for etcd's default of 2 GiB, or negative for no quota"
        ))),
        Ok(bytes) => Ok(Some(bytes)),
    }
}

impl MemberConfig {
    /// Checks every setting and derives the IDs; the error names the first
    /// setting at fault.
    pub fn validate(&self) -> Result<Member, ConfigError> {
        if self.name.is_empty()
            || self.name.contains([',', '='])
            || self.name.chars().any(char::is_whitespace)
        {
            return Err(invalid(format!(
                "--name: {:?} must be non-empty, without ',', '=' or spaces",
                self.name
            )));
        }
        if self.heartbeat_interval == 0 {
            return Err(invalid("--heartbeat-interval must be at least 1 ms"));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(invalid(format!(
                "--election-timeout ({} ms) must be at least 5 times --heartbeat-interval ({} ms)",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.election_timeout > MAX_ELECTION_TIMEOUT_MS {
            return Err(invalid(format!(
                "--election-timeout ({} ms) must be at most {MAX_ELECTION_TIMEOUT_MS} ms",
                self.election_timeout
            )));
        }
        if self.snapshot_count == 0 {
            return Err(invalid("--snapshot-count must be at least 1"));
        }
        if self.initial_cluster_token.is_empty() {
            return Err(invalid("--initial-cluster-token must not be empty"));
        }
        let quota_backend_bytes = quota_backend_bytes(self.quota_backend_bytes)?;
        if self.max_request_bytes == 0 || self.max_request_bytes > MAX_REQUEST_BYTES_LIMIT {
            return Err(invalid(format!(
                "--max-request-bytes ({}) must be between 1 and {MAX_REQUEST_BYTES_LIMIT}",
                self.max_request_bytes
            )));
        }
        if self.max_txn_ops == 0 {
            return Err(invalid("--max-txn-ops must be at least 1"));
        }
        let limits = crate::kv::Limits {
            max_request_bytes: usize::try_from(self.max_request_bytes)
                .map_err(|_| invalid("--max-request-bytes does not fit this machine"))?,
            max_txn_ops: usize::try_from(self.max_txn_ops)
                .map_err(|_| invalid("--max-txn-ops does not fit this machine"))?,
        };
        let urls = |raw: &[String], setting: &str| -> Result<Vec<PeerUrl>, ConfigError> {
            if raw.iter().all(|u| u.trim().is_empty()) {
                return Err(invalid(format!("{setting} must list at least one URL")));
            }
            raw.iter().map(|u| PeerUrl::parse(u, setting)).collect()
        };
        let listen_peer_urls = urls(&self.listen_peer_urls, "--listen-peer-urls")?;
        let mut advertised = urls(
            &self.initial_advertise_peer_urls,
            "--initial-advertise-peer-urls",
        )?;
        advertised.sort();
        advertised.dedup();
        let listen_client_urls = urls(&self.listen_client_urls, "--listen-client-urls")?;
        let listen_metrics_urls = self
            .listen_metrics_urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| PeerUrl::parse(u, "--listen-metrics-urls"))
            .collect::<Result<Vec<_>, _>>()?;
        let advertise_client_urls = urls(&self.advertise_client_urls, "--advertise-client-urls")?;
        muster_proto::registry::validate_prefix(&self.registry_prefix)
            .map_err(|e| invalid(format!("--registry-prefix: {}", e.0)))?;
        let listen_dns = match self.listen_dns.trim() {
            "" => None,
            raw => Some(raw.parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "--listen-dns: {raw:?} is not ip:port (such as 127.0.0.1:8600); \
                     empty to serve no DNS"
                ))
            })?),
        };
        let dns_domain = crate::dns::normalize_domain(&self.dns_domain)
            .map_err(|e| invalid(format!("--dns-domain: {e}")))?;
        for (flag, ttl) in [
            ("--dns-ttl", self.dns_ttl),
            ("--dns-negative-ttl", self.dns_negative_ttl),
        ] {
            if ttl > crate::dns::MAX_TTL {
                return Err(invalid(format!(
                    "{flag} ({ttl}) must be at most {} seconds",
                    crate::dns::MAX_TTL
                )));
            }
        }

        let self_preservation = self.self_preservation()?;

        let initial_cluster = match &self.initial_cluster {
            Some(raw) => parse_initial_cluster(raw)?,
            None => BTreeMap::from([(self.name.clone(), advertised.clone())]),
        };
        let Some(own_urls) = initial_cluster.get(&self.name) else {
            return Err(invalid(format!(
                "--initial-cluster does not list this member's --name {:?}",
                self.name
            )));
        };
        if *own_urls != advertised {
            return Err(invalid(format!(
                "--initial-cluster gives {:?} the peer URLs {:?} but --initial-advertise-peer-urls says {:?}",
                self.name,
                own_urls.iter().map(|u| &u.url).collect::<Vec<_>>(),
                advertised.iter().map(|u| &u.url).collect::<Vec<_>>()
            )));
        }
        let mut initial_members = BTreeMap::new();
        let mut owner_of_url: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, peer_urls) in &initial_cluster {
            for url in peer_urls {
                if let Some(other) = owner_of_url.insert(&url.url, name) {
                    return Err(invalid(format!(
                        "--initial-cluster gives the peer URL {} to both {other:?} and {name:?}",
                        url.url
                    )));
                }
            }
            let id = member_id(name, peer_urls, &self.initial_cluster_token);
            let member = InitialMember {
                name: name.clone(),
                id,
                peer_urls: peer_urls.clone(),
            };
            if initial_members.insert(id, member).is_some() {
                return Err(invalid(
                    "--initial-cluster: two members derive the same ID".to_string(),
                ));
            }
        }
        let id = member_id(&self.name, &advertised, &self.initial_cluster_token);
        let cluster_id = cluster_id(initial_members.keys().copied());
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.muster", self.name)));
        Ok(Member {
            name: self.name.clone(),
            id,
            cluster_id,
            data_dir,
            listen_peer_urls,
            listen_client_urls,
            advertise_client_urls,
            initial_members,
            cluster_state: self.initial_cluster_state,
            heartbeat_ms: self.heartbeat_interval,
            election_timeout_ms: self.election_timeout,
            snapshot_count: self.snapshot_count,
            quota_backend_bytes,
            limits,
            listen_metrics_urls,
            registry_prefix: self.registry_prefix.clone(),
            listen_dns,
            dns_domain,
            dns_ttl: self.dns_ttl,
            dns_negative_ttl: self.dns_negative_ttl,
            self_preservation,
        })
    }
}

/// The longest `--self-preservation-window` accepted.
pub const MAX_SELF_PRESERVATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The longest `--self-preservation-max` accepted.
pub const MAX_SELF_PRESERVATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl MemberConfig {
    /// The `--self-preservation*` settings, checked.
    fn self_preservation(&self) -> Result<crate::preserve::PreservationConfig, ConfigError> {
        let threshold = self.self_preservation_threshold;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(invalid(format!(
                "--self-preservation-threshold ({threshold}) must be a fraction above 0 and at \
                 most 1 (0.15: 15% of the live leases)"
            )));
        }
        let second = std::time::Duration::from_secs(1);
        for (flag, value, most) in [
            (
                "--self-preservation-window",
                self.self_preservation_window,
                MAX_SELF_PRESERVATION_WINDOW,
            ),
            (
                "--self-preservation-max",
                self.self_preservation_max,
                MAX_SELF_PRESERVATION,
            ),
        ] {
            if value < second || value > most {
                return Err(invalid(format!(
                    "{flag} ({value:?}) must be at least 1s and at most {most:?}"
                )));
            }
        }
        if self.self_preservation_min_leases == 0 {
            return Err(invalid("--self-preservation-min-leases must be at least 1"));
        }
        Ok(crate::preserve::PreservationConfig {
            enabled: self.self_preservation,
            threshold,
            window: self.self_preservation_window,
            max: self.self_preservation_max,
            min_leases: usize::try_from(self.self_preservation_min_leases).unwrap_or(usize::MAX),
        })
    }
}

/// Parses `name=url,name=url,...` into each name's sorted, deduplicated URLs.
pub fn parse_initial_cluster(raw: &str) -> Result<BTreeMap<String, Vec<PeerUrl>>, ConfigError> {
    let mut cluster: BTreeMap<String, Vec<PeerUrl>> = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(invalid(format!(
                "--initial-cluster: {part:?} is not name=url"
            )));
        };
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(invalid(format!("--initial-cluster: {part:?} has no name")));
        }
        cluster
            .entry(name.to_string())
            .or_default()
            .push(PeerUrl::parse(url, "--initial-cluster")?);
    }
    if cluster.is_empty() {
        return Err(invalid("--initial-cluster lists no member"));
    }
    for urls in cluster.values_mut() {
        urls.sort();
        urls.dedup();
    }
    Ok(cluster)
}

/// A member's ID from its name, sorted peer URLs and the cluster token.
pub fn member_id(name: &str, sorted_peer_urls: &[PeerUrl], token: &str) -> u64 {
    let mut hasher = Sha1::new();
    for url in sorted_peer_urls {
        hasher.update(url.url.as_bytes());
    }
    hasher.update(token.as_bytes());
    hasher.update(name.as_bytes());
    first_u64(&hasher.finalize())
}

/// The cluster's ID from its initial members' IDs.
pub fn cluster_id(member_ids: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = member_ids.into_iter().collect();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> MemberConfig {
        let mut argv = vec!["muster"];
        argv.extend_from_slice(args);
        MemberConfig::try_parse_from(argv).expect("flags parse")
    }

    fn error(args: &[&str]) -> String {
        config(args)
            .validate()
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn no_flags_is_one_member_on_loopback() {
        let member = config(&[]).validate().expect("defaults are valid");
        assert_eq!(member.name, "default");
        assert_eq!(member.data_dir, PathBuf::from("default.muster"));
        assert_eq!(
            member.listen_peer_urls[0].socket_addr(),
            Some("127.0.0.1:2380".parse().unwrap())
        );
        assert_eq!(member.listen_client_urls[0].authority, "127.0.0.1:2379");
        assert_eq!(member.initial_members.len(), 1);
        assert!(member.initial_members.contains_key(&member.id));
        assert_eq!(
            (member.heartbeat_ms, member.election_timeout_ms),
            (100, 1000)
        );
        assert_eq!(member.quota_backend_bytes, Some(2 * 1024 * 1024 * 1024));
    }

    #[test]
    fn quota_backend_bytes_reads_as_etcds_flag() {
        let quota = |args: &[&str]| config(args).validate().expect("valid").quota_backend_bytes;
        assert_eq!(
            quota(&["--quota-backend-bytes", "0"]),
            Some(crate::kv::DEFAULT_QUOTA_BYTES)
        );
        assert_eq!(quota(&["--quota-backend-bytes", "-1"]), None);
        assert_eq!(quota(&["--quota-backend-bytes=-5000"]), None);
        assert_eq!(quota(&["--quota-backend-bytes", "65536"]), Some(65536));
        assert_eq!(
            quota(&["--quota-backend-bytes", "8589934592"]),
            Some(8 * 1024 * 1024 * 1024)
        );
        assert_eq!(
            error(&["--quota-backend-bytes", "100"]),
            "invalid configuration: --quota-backend-bytes (100) must be at least 1024 bytes, \
             0 for etcd's default of 2 GiB, or negative for no quota"
        );
        let garbage = MemberConfig::try_parse_from(["muster", "--quota-backend-bytes", "2GB"])
            .expect_err("not a number")
            .to_string();
        assert!(garbage.contains("--quota-backend-bytes"), "{garbage}");
    }

    #[test]
    fn three_members_derive_the_same_cluster_id_from_each_side() {
        let cluster = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380";
        let plans: Vec<Member> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let url = format!("http://10.0.0.{}:2380", i + 1);
                config(&[
                    "--name",
                    name,
                    "--initial-advertise-peer-urls",
                    &url,
                    "--initial-cluster",
                    cluster,
                ])
                .validate()
                .expect("valid")
            })
            .collect();
        assert!(plans.windows(2).all(|w| w[0].cluster_id == w[1].cluster_id));
        let ids: Vec<u64> = plans.iter().map(|p| p.id).collect();
        assert_eq!(
            plans[0].initial_members.keys().copied().collect::<Vec<_>>(),
            {
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                sorted
            }
        );
        // A different token is a different cluster with different members.
        let other = config(&[
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            "http://10.0.0.1:2380",
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            "other",
        ])
        .validate()
        .expect("valid");
        assert_ne!(other.cluster_id, plans[0].cluster_id);
        assert_ne!(other.id, plans[0].id);
    }

    #[test]
    fn ids_are_stable_across_url_order_and_spelling() {
        let one = config(&[
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380,http://127.0.0.2:2380",
            "--initial-cluster",
            "default=http://127.0.0.2:2380,default=http://127.0.0.1:2380/",
        ])
        .validate()
        .expect("valid");
        let two = config(&[
            "--initial-advertise-peer-urls",
            "http://127.0.0.2:2380,http://127.0.0.1:2380",
        ])
        .validate()
        .expect("valid");
        assert_eq!((one.id, one.cluster_id), (two.id, two.cluster_id));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        assert!(
            error(&["--election-timeout", "400"])
                .contains("--election-timeout (400 ms) must be at least 5 times")
        );
        assert!(error(&["--election-timeout", "60000"]).contains("at most 50000"));
        assert!(error(&["--heartbeat-interval", "0"]).contains("--heartbeat-interval"));
        assert!(error(&["--snapshot-count", "0"]).contains("--snapshot-count"));
        assert!(error(&["--listen-peer-urls", "localhost:2380"]).contains("--listen-peer-urls"));
        assert!(
            error(&["--listen-client-urls", "https://127.0.0.1:2379"]).contains("must use http://")
        );
        assert!(
            error(&["--initial-advertise-peer-urls", "http://127.0.0.1"]).contains("has no port")
        );
        assert!(
            error(&["--initial-cluster", "other=http://127.0.0.1:2380"])
                .contains("does not list this member")
        );
        assert!(
            error(&["--initial-cluster", "default=http://127.0.0.9:2380"])
                .contains("--initial-advertise-peer-urls says")
        );
        assert!(error(&["--initial-cluster", "default"]).contains("is not name=url"));
        assert!(error(&["--name", "a b"]).contains("--name"));
        assert!(
            error(&[
                "--initial-cluster",
                "default=http://127.0.0.1:2380,x=http://127.0.0.1:2380"
            ])
            .contains("to both")
        );
        assert!(error(&["--max-request-bytes", "0"]).contains("--max-request-bytes (0)"));
        assert!(error(&["--max-txn-ops", "0"]).contains("--max-txn-ops"));
        assert!(error(&["--listen-metrics-urls", "localhost"]).contains("--listen-metrics-urls"));
    }

    #[test]
    fn limits_and_logging_settings_are_read() {
        let member = config(&["--max-request-bytes", "4096", "--max-txn-ops", "16"])
            .validate()
            .expect("valid");
        assert_eq!(member.limits.max_request_bytes, 4096);
        assert_eq!(member.limits.max_txn_ops, 16);
        let defaults = config(&[]).validate().expect("valid");
        assert_eq!(defaults.limits.max_request_bytes, 3 * 512 * 1024);
        assert_eq!(defaults.limits.max_txn_ops, 128);
        let logging = config(&["--log-level", "debug", "--log-format", "json"]);
        assert_eq!(logging.log_level, LogLevel::Debug);
        assert_eq!(logging.log_format, LogFormat::Json);
        for level in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_levels_known(level.filter());
        }
    }

    #[test]
    fn dns_settings_are_read_and_checked() {
        let defaults = config(&[]).validate().expect("valid");
        assert_eq!(defaults.listen_dns, Some("127.0.0.1:8600".parse().unwrap()));
        assert_eq!(defaults.dns_domain, "muster");
        assert_eq!((defaults.dns_ttl, defaults.dns_negative_ttl), (5, 30));
        let member = config(&[
            "--listen-dns",
            "[::1]:5353",
            "--dns-domain",
            "Registry.Example.",
            "--dns-ttl",
            "0",
            "--dns-negative-ttl",
            "600",
        ])
        .validate()
        .expect("valid");
        assert_eq!(member.listen_dns, Some("[::1]:5353".parse().unwrap()));
        assert_eq!(member.dns_domain, "registry.example");
        assert_eq!((member.dns_ttl, member.dns_negative_ttl), (0, 600));
        let dns = crate::dns::DnsConfig::from_member(&member);
        assert_eq!(dns.domain, "registry.example");
        assert_eq!(dns.registry_prefix, "/registry/services");
        let off = config(&["--listen-dns", ""]).validate().expect("valid");
        assert_eq!(off.listen_dns, None, "empty disables DNS");
        assert!(
            error(&["--listen-dns", "localhost:8600"]).contains("--listen-dns: \"localhost:8600\"")
        );
        assert!(error(&["--listen-dns", "127.0.0.1"]).contains("is not ip:port"));
        assert!(error(&["--dns-domain", "my_domain"]).contains("--dns-domain: \"my_domain\""));
        assert!(error(&["--dns-domain", ""]).contains("--dns-domain"));
        assert!(
            error(&["--dns-ttl", "2147483648"])
                .contains("--dns-ttl (2147483648) must be at most 2147483647 seconds")
        );
        assert!(error(&["--dns-negative-ttl", "4294967295"]).contains("--dns-negative-ttl"));
        let garbage = MemberConfig::try_parse_from(["muster", "--dns-ttl=-1"])
            .expect_err("not a u32")
            .to_string();
        assert!(garbage.contains("--dns-ttl"), "{garbage}");
    }

    #[test]
    fn self_preservation_settings_are_read_and_checked() {
        use crate::preserve::PreservationConfig;
        use std::time::Duration;
        let defaults = config(&[]).validate().expect("valid");
        assert_eq!(defaults.self_preservation, PreservationConfig::default());
        assert!(defaults.self_preservation.enabled);
        let member = config(&[
            "--self-preservation=false",
            "--self-preservation-threshold",
            "0.3",
            "--self-preservation-window",
            "2m",
            "--self-preservation-max",
            "1m30s",
            "--self-preservation-min-leases",
            "50",
        ])
        .validate()
        .expect("valid");
        assert_eq!(
            member.self_preservation,
            PreservationConfig {
                enabled: false,
                threshold: 0.3,
                window: Duration::from_secs(120),
                max: Duration::from_secs(90),
                min_leases: 50,
            }
        );
        assert!(!config(&["--self-preservation", "false"]).self_preservation);
        assert!(config(&["--self-preservation"]).self_preservation);
        for (args, expected) in [
            (
                &["--self-preservation-threshold", "0"][..],
                "--self-preservation-threshold (0) must be a fraction above 0",
            ),
            (
                &["--self-preservation-threshold", "1.5"][..],
                "--self-preservation-threshold (1.5)",
            ),
            (
                &["--self-preservation-threshold", "NaN"][..],
                "--self-preservation-threshold (NaN)",
            ),
            (
                &["--self-preservation-window", "500ms"][..],
                "--self-preservation-window (500ms) must be at least 1s",
            ),
            (
                &["--self-preservation-window", "2h"][..],
                "--self-preservation-window (7200s) must be at least 1s and at most 3600s",
            ),
            (
                &["--self-preservation-max", "0s"][..],
                "--self-preservation-max (0ns) must be at least 1s",
            ),
            (
                &["--self-preservation-min-leases", "0"][..],
                "--self-preservation-min-leases must be at least 1",
            ),
        ] {
            let error = error(args);
            assert!(error.contains(expected), "{args:?}: {error}");
        }
        let garbage =
            MemberConfig::try_parse_from(["muster", "--self-preservation-window", "soon"])
                .expect_err("not a duration")
                .to_string();
        assert!(garbage.contains("--self-preservation-window"), "{garbage}");
        // In the config file, as TOML's own types.
        let from_file = load(
            "self-preservation = false\n\
             self-preservation-threshold = 0.25\n\
             self-preservation-window = \"30s\"\n",
            &[],
        )
        .expect("loads");
        assert!(!from_file.self_preservation);
        assert_eq!(from_file.self_preservation_threshold, 0.25);
        assert_eq!(from_file.self_preservation_window, Duration::from_secs(30));
    }

    /// Every directive of a filter names a level tracing knows.
    fn assert_levels_known(filter: &str) {
        for directive in filter.split(',') {
            let level = directive.rsplit('=').next().unwrap_or_default();
            assert!(
                ["error", "warn", "info", "debug", "trace", "off"].contains(&level),
                "{filter}: {directive}"
            );
        }
    }

    /// Loads `args` with a config file holding `toml`.
    fn load(toml: &str, args: &[&str]) -> Result<MemberConfig, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, toml).expect("write config");
        let path = path.display().to_string();
        let mut argv = vec!["muster", "--config", &path];
        argv.extend_from_slice(args);
        MemberConfig::load_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn the_config_file_sits_between_the_flags_and_the_defaults() {
        let config = load(
            "name = \"a\"\n\
             heartbeat-interval = 50\n\
             election-timeout = 500\n\
             listen-client-urls = [\"http://127.0.0.1:3001\", \"http://127.0.0.2:3001\"]\n\
             listen-metrics-urls = \"\"\n\
             quota-backend-bytes = -1\n\
             log-format = \"json\"\n",
            &["--heartbeat-interval", "20"],
        )
        .expect("loads");
        assert_eq!(config.name, "a");
        assert_eq!(config.heartbeat_interval, 20, "the flag wins over the file");
        assert_eq!(config.election_timeout, 500);
        assert_eq!(
            config.listen_client_urls,
            ["http://127.0.0.1:3001", "http://127.0.0.2:3001"]
        );
        assert_eq!(config.quota_backend_bytes, -1);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(
            config.snapshot_count, 100_000,
            "unset keys keep the default"
        );
        let member = config.validate().expect("valid");
        assert!(member.listen_metrics_urls.is_empty());
        assert_eq!(member.quota_backend_bytes, None);
        // A comma-separated string reads as on the command line.
        let config = load(
            "listen-client-urls = \"http://127.0.0.1:3001,http://127.0.0.2:3001\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(config.listen_client_urls.len(), 2);
    }

    #[test]
    fn a_bad_config_file_is_refused_naming_the_file_and_key() {
        let refused = |toml: &str, expected: &str| {
            let error = load(toml, &[]).expect_err(toml);
            assert!(
                error.contains("--config ") && error.contains("muster.toml"),
                "{error}"
            );
            assert!(error.contains(expected), "{toml}: {error}");
        };
        refused("nmae = \"a\"\n", "unknown setting `nmae`");
        refused("config = \"other.toml\"\n", "unknown setting `config`");
        refused("name = [\"a\"]\n", "`name` takes one value, not a list");
        refused(
            "heartbeat-interval = \"fast\"\n",
            "`heartbeat-interval`: invalid value 'fast'",
        );
        refused(
            "log-format = \"yaml\"\n",
            "`log-format`: invalid value 'yaml'",
        );
        refused(
            "election-timeout = 1.5\n",
            "`election-timeout`: invalid value '1.5'",
        );
        refused(
            "listen-client-urls = [[\"http://127.0.0.1:1\"]]\n",
            "`listen-client-urls` must be a list of strings",
        );
        refused("name = \n", "not TOML");
        let missing = MemberConfig::load_from(["muster", "--config", "/nonexistent/muster.toml"])
            .expect_err("no file")
            .to_string();
        assert!(missing.contains("cannot read it"), "{missing}");
        // A value each flag accepts alone may still clash with another:
        // validate() names both settings, as for flags.
        let config = load("heartbeat-interval = 500\n", &[]).expect("loads");
        assert!(
            config
                .validate()
                .expect_err("clash")
                .to_string()
                .contains("--election-timeout (1000 ms) must be at least 5 times")
        );
    }

    #[test]
    fn the_sample_config_sets_every_setting_to_its_default() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/muster.toml");
        let text = std::fs::read_to_string(sample).expect("docs/muster.toml");
        // Uncomment every `# key = value` line: the defaults, spelled out.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        let from_file = load(&uncommented, &[]).expect("the sample's defaults load");
        let defaults = config(&[]);
        assert_eq!(
            format!(
                "{:?}",
                MemberConfig {
                    config: None,
                    ..from_file
                }
            ),
            format!("{defaults:?}"),
            "docs/muster.toml's commented values are the defaults"
        );
        let cmd = <MemberConfig as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help", "version"].contains(&long) {
                continue;
            }
            assert!(
                text.lines().any(|l| l
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{long} ="))),
                "docs/muster.toml documents `{long}`"
            );
        }
    }

    #[test]
    fn every_flag_reads_a_muster_environment_variable() {
        // clap reads MUSTER_* when a flag is absent. Rather than mutate the
        // process environment (other tests run in parallel), check that every
        // flag is wired to its variable.
        let cmd = <MemberConfig as clap::CommandFactory>::command();
        let flags: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .collect();
        assert_eq!(flags.len(), 29, "every setting is a flag");
        for flag in flags {
            let long = flag.get_long().unwrap_or_default();
            let expected = format!("MUSTER_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                flag.get_env().map(|e| e.to_os_string()),
                Some(expected.into()),
                "--{long}"
            );
        }
    }
}
