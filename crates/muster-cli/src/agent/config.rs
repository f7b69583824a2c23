//! The agent's configuration file (TOML), checked strictly: an unknown key,
//! a bad duration or a check with no kind (or two) is an error naming the
//! file and the check before anything is registered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use muster_client::{Health, Instance};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// The cluster's client URLs.
    #[serde(default = "default_endpoints")]
    pub(crate) endpoints: Vec<String>,
    /// The key prefix.
    #[serde(default = "default_prefix")]
    pub(crate) prefix: String,
    /// Lease TTL in seconds.
    #[serde(default = "default_ttl")]
    pub(crate) ttl: i64,
    /// Where the agent's local API listens (TTL checks are refreshed
    /// there); empty for nowhere.
    #[serde(default = "default_api")]
    pub(crate) api: String,
    /// The service instance to register.
    pub(crate) service: Service,
    /// Its checks.
    #[serde(default, rename = "check")]
    pub(crate) checks: Vec<CheckFile>,
}

/// `[service]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) addr: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub(crate) weight: u16,
    #[serde(default)]
    pub(crate) zone: String,
    /// Remove the instance once it has been critical this long (Go
    /// duration); unset: never.
    #[serde(default)]
    pub(crate) deregister_critical_after: Option<String>,
}

/// One `[[check]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    grpc: Option<String>,
    #[serde(default)]
    grpc_service: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    successes_before_passing: Option<u32>,
    #[serde(default)]
    failures_before_critical: Option<u32>,
}

fn default_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".into()]
}
fn default_prefix() -> String {
    muster_client::DEFAULT_PREFIX.into()
}
fn default_ttl() -> i64 {
    10
}
fn default_api() -> String {
    "127.0.0.1:8686".into()
}
fn one() -> u16 {
    1
}

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET` the URL: 2xx passing, 429 warning, anything else critical.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// Connect: passing if it connects.
    Tcp(String),
    /// `grpc.health.v1.Health/Check`: SERVING passing, else critical.
    Grpc { addr: String, service: String },
    /// Run: exit 0 passing, 1 warning, anything else critical.
    Command(Vec<String>),
    /// The service reports itself through the agent's API at least every
    /// `ttl`; silence is critical.
    Ttl(Duration),
}

/// One checked check.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) successes_before_passing: u32,
    pub(crate) failures_before_critical: u32,
}

/// The checked configuration.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) ttl: i64,
    pub(crate) api: Option<String>,
    pub(crate) instance: Instance,
    pub(crate) deregister_critical_after: Option<Duration>,
    pub(crate) checks: Vec<Check>,
}

fn duration(text: &str, what: &str) -> anyhow::Result<Duration> {
    muster_server::duration::parse(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Reads and checks the file at `path`.
pub(crate) fn load(path: &Path) -> anyhow::Result<Agent> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    parse(&text).with_context(|| format!("--config {}", path.display()))
}

/// Checks the file's text.
pub(crate) fn parse(text: &str) -> anyhow::Result<Agent> {
    let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    muster_proto::registry::validate_prefix(&file.prefix)?;
    if file.ttl <= 0 {
        bail!("ttl ({}) must be at least 1 second", file.ttl);
    }
    if file.endpoints.is_empty() {
        bail!("endpoints is empty");
    }
    let service = file.service;
    let mut instance = Instance::new(&service.name, &service.id, &service.addr);
    instance.tags = service.tags;
    instance.meta = service.meta;
    instance.weight = service.weight;
    instance.zone = service.zone;
    // No traffic before the checks pass once.
    instance.health = if file.checks.is_empty() {
        Health::Passing
    } else {
        Health::Critical
    };
    instance.validate()?;
    let deregister_critical_after = service
        .deregister_critical_after
        .as_deref()
        .map(|d| duration(d, "service.deregister_critical_after"))
        .transpose()?;
    let mut checks = Vec::new();
    for (n, raw) in file.checks.into_iter().enumerate() {
        let name = raw
            .name
            .clone()
            .unwrap_or_else(|| format!("check-{}", n + 1));
        let check = check(raw, &name).with_context(|| format!("check {name:?}"))?;
        if checks.iter().any(|c: &Check| c.name == check.name) {
            bail!("two checks are named {name:?}");
        }
        checks.push(check);
    }
    Ok(Agent {
        endpoints: file.endpoints,
        prefix: file.prefix,
        ttl: file.ttl,
        api: Some(file.api).filter(|a| !a.is_empty()),
        instance,
        deregister_critical_after,
        checks,
    })
}

fn check(raw: CheckFile, name: &str) -> anyhow::Result<Check> {
    let mut kinds = Vec::new();
    if let Some(url) = &raw.http {
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                bail!("https checks are not supported; check the plain-HTTP port or use tcp")
            }
            None => bail!("http {url:?} must start with http://"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("http {url:?}: bad port"))?,
            ),
            None => (authority.to_string(), 80),
        };
        if host.is_empty() {
            bail!("http {url:?} has no host");
        }
        kinds.push(Kind::Http {
            host,
            port,
            path: path.to_string(),
        });
    }
    if let Some(addr) = &raw.tcp {
        if addr.rsplit_once(':').is_none() {
            bail!("tcp {addr:?} is not host:port");
        }
        kinds.push(Kind::Tcp(addr.clone()));
    }
    if let Some(addr) = &raw.grpc {
        kinds.push(Kind::Grpc {
            addr: addr.clone(),
            service: raw.grpc_service.clone().unwrap_or_default(),
        });
    }
    if let Some(command) = &raw.command {
        if command.is_empty() {
            bail!("command is empty");
        }
        kinds.push(Kind::Command(command.clone()));
    }
    if let Some(ttl) = &raw.ttl {
        kinds.push(Kind::Ttl(duration(ttl, "ttl")?));
    }
    let kind = match kinds.len() {
        1 => kinds.remove(0),
        0 => bail!("give one of http, tcp, grpc, command or ttl"),
        _ => bail!("give only one of http, tcp, grpc, command or ttl"),
    };
    let interval = duration(raw.interval.as_deref().unwrap_or("10s"), "interval")?;
    let timeout = duration(raw.timeout.as_deref().unwrap_or("5s"), "timeout")?;
    if interval.is_zero() || timeout.is_zero() {
        bail!("interval and timeout must be above 0");
    }
    let successes_before_passing = raw.successes_before_passing.unwrap_or(1);
    let failures_before_critical = raw.failures_before_critical.unwrap_or(1);
    if successes_before_passing == 0 || failures_before_critical == 0 {
        bail!("successes_before_passing and failures_before_critical must be at least 1");
    }
    Ok(Check {
        name: name.to_string(),
        kind,
        interval,
        timeout,
        successes_before_passing,
        failures_before_critical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
endpoints = ["http://127.0.0.1:2379"]
ttl = 5

[service]
name = "web"
id = "web-1"
addr = "127.0.0.1:8080"
tags = ["v1"]
deregister_critical_after = "1m"

[[check]]
name = "http"
http = "http://127.0.0.1:8080/health"
interval = "2s"
timeout = "1s"
failures_before_critical = 3

[[check]]
tcp = "127.0.0.1:8080"

[[check]]
ttl = "30s"
"#;

    #[test]
    fn the_sample_parses() {
        let agent = parse(SAMPLE).unwrap();
        assert_eq!(
            agent.instance.key(&agent.prefix),
            "/registry/services/web/web-1"
        );
        assert_eq!(agent.instance.health, Health::Critical);
        assert_eq!(
            agent.deregister_critical_after,
            Some(Duration::from_secs(60))
        );
        assert_eq!(agent.checks.len(), 3);
        assert_eq!(
            agent.checks[0].kind,
            Kind::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health".into()
            }
        );
        assert_eq!(agent.checks[0].failures_before_critical, 3);
        assert_eq!(agent.checks[1].name, "check-2");
        assert_eq!(agent.checks[2].kind, Kind::Ttl(Duration::from_secs(30)));
        assert_eq!(agent.api.as_deref(), Some("127.0.0.1:8686"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (SAMPLE.replace("ttl = 5", "ttl = 0"), "ttl"),
            (
                SAMPLE.replace("name = \"web\"", "name = \"Web\""),
                "service \"Web\"",
            ),
            (
                SAMPLE.replace("interval = \"2s\"", "interval = \"soon\""),
                "interval",
            ),
            (SAMPLE.replace("tcp = ", "tcpp = "), "unknown field"),
            (
                SAMPLE.replace("http = \"http://", "http = \"https://"),
                "https checks are not supported",
            ),
            (
                SAMPLE.replace("tcp = \"127.0.0.1:8080\"", "tcp = \"x:1\"\nttl = \"1s\""),
                "only one of",
            ),
        ];
        for (text, word) in cases {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(word), "{e} should mention {word}");
        }
    }
}
