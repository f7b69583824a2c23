//! The service registry's data model: how a service instance is stored in
//! the key-value store.
//!
//! An instance is the key `<prefix>/<service>/<instance-id>` (default prefix
//! [`DEFAULT_PREFIX`], `/registry/services`), attached to the lease its
//! registrant keeps alive. Its value is the JSON that gRPC's etcd resolver
//! (`go.etcd.io/etcd/client/v3/naming`) reads, an `endpoints.Endpoint`,
//! with this project's fields inside `Metadata`:
//!
//! ```json
//! {"Addr":"10.0.0.1:8080",
//!  "Metadata":{"version":1,"service":"api","id":"api-1","tags":["v2"],
//!              "meta":{"commit":"4f2a"},"weight":1,"zone":"eu-1a",
//!              "health":"passing","registered":"2026-11-25T10:00:00Z"}}
//! ```
//!
//! Invariants:
//!
//! - [`Instance::validate`] is the one set of rules every writer of this
//!   project (client library, agent, `musterctl`, registry service) checks
//!   before it writes; an encoded instance always decodes back to itself.
//! - Decoding is lenient where writing is strict, so the registry lists what
//!   other tools wrote: the service and ID come from the key (the key wins
//!   over `Metadata`); a value without our `Metadata` (etcdctl's
//!   `{"Addr":"host:port"}`) is a passing instance of weight 1; unknown
//!   fields are ignored, and a newer `version` is read for the fields this
//!   version knows. A value that is not JSON or has no valid `Addr` is an
//!   error the caller reports and skips, never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The key prefix instances live under unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/registry/services";

/// The version of the value format this code writes (`Metadata.version`).
pub const FORMAT_VERSION: u32 = 1;

/// Most tags one instance may carry.
pub const MAX_TAGS: usize = 64;
/// Most `meta` entries one instance may carry.
pub const MAX_META: usize = 64;
/// Longest `meta` value, in bytes.
pub const MAX_META_VALUE: usize = 512;
/// Longest instance ID, in bytes.
pub const MAX_ID: usize = 128;

/// An instance's health, as its checks last found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving; gets traffic.
    Passing,
    /// Degraded; gets traffic only when no instance is passing.
    Warning,
    /// Failing; gets no traffic.
    Critical,
}

impl Health {
    /// `passing`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Health {
    type Err = InvalidInstance;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passing" => Ok(Health::Passing),
            "warning" => Ok(Health::Warning),
            "critical" => Ok(Health::Critical),
            _ => Err(InvalidInstance(format!(
                "health {s:?} is not one of passing, warning, critical"
            ))),
        }
    }
}

/// Why an instance, a prefix or a stored value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance: {0}")]
pub struct InvalidInstance(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, InvalidInstance> {
    Err(InvalidInstance(message.into()))
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The service's name: a DNS label (`[a-z0-9-]`, 1 to 63 bytes, no
    /// leading or trailing `-`).
    pub service: String,
    /// The instance's ID, unique within its service: 1 to 128 bytes of
    /// `[A-Za-z0-9._:-]`.
    pub id: String,
    /// Where it serves: `host:port`, the host an IP address (IPv6 in
    /// brackets) or a DNS name.
    pub addr: String,
    /// Tags, each a DNS label (so `<tag>.<service>.service.<domain>` can
    /// filter by it); at most [`MAX_TAGS`], no duplicates.
    pub tags: Vec<String>,
    /// Free-form key/value metadata; at most [`MAX_META`] entries, keys
    /// `[A-Za-z0-9_.-]` up to 128 bytes, values up to [`MAX_META_VALUE`].
    pub meta: BTreeMap<String, String>,
    /// Its share of traffic for weighted balancing and DNS SRV (0 to 65535;
    /// 0 takes traffic only when every instance has weight 0).
    pub weight: u16,
    /// Its zone, for zone-preferring balancing; empty for none.
    pub zone: String,
    /// Its health.
    pub health: Health,
    /// When it registered, to the second.
    pub registered: SystemTime,
}

/// The stored JSON: etcd's `endpoints.Endpoint`.
#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Value>,
}

/// The stored JSON as written, with `Metadata` in its field order.
#[derive(Serialize)]
struct EndpointOut<'a> {
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: Metadata,
}

/// This project's part of the value, inside `Metadata`.
#[derive(Serialize, Deserialize)]
struct Metadata {
    version: u32,
    service: String,
    id: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default = "one")]
    weight: u16,
    #[serde(default)]
    zone: String,
    #[serde(default = "passing")]
    health: Health,
    #[serde(default)]
    registered: Option<String>,
}

fn one() -> u16 {
    1
}

fn passing() -> Health {
    Health::Passing
}

impl Instance {
    /// A passing instance of weight 1 with no tags, meta or zone,
    /// registered now. Not validated: see [`Instance::validate`].
    pub fn new(service: impl Into<String>, id: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            service: service.into(),
            id: id.into(),
            addr: addr.into(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: 1,
            zone: String::new(),
            health: Health::Passing,
            registered: now_to_the_second(),
        }
    }

    /// Checks every field against the rules on [`Instance`]'s fields.
    pub fn validate(&self) -> Result<(), InvalidInstance> {
        validate_service(&self.service)?;
        validate_id(&self.id)?;
        parse_addr(&self.addr)?;
        if self.tags.len() > MAX_TAGS {
            return invalid(format!(
                "{} tags, at most {MAX_TAGS} allowed",
                self.tags.len()
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            validate_label("tag", tag)?;
            if self.tags[..i].contains(tag) {
                return invalid(format!("tag {tag:?} given twice"));
            }
        }
        if self.meta.len() > MAX_META {
            return invalid(format!(
                "{} meta entries, at most {MAX_META} allowed",
                self.meta.len()
            ));
        }
        for (key, value) in &self.meta {
            if key.is_empty()
                || key.len() > 128
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return invalid(format!(
                    "meta key {key:?} must be 1 to 128 characters of [A-Za-z0-9_.-]"
                ));
            }
            if value.len() > MAX_META_VALUE {
                return invalid(format!(
                    "meta value of {key:?} is {} bytes, at most {MAX_META_VALUE} allowed",
                    value.len()
                ));
            }
        }
        if !self.zone.is_empty() {
            validate_label("zone", &self.zone)?;
        }
        Ok(())
    }

    /// The instance's key under `prefix`: `<prefix>/<service>/<id>`.
    pub fn key(&self, prefix: &str) -> String {
        format!("{}{}", service_prefix(prefix, &self.service), self.id)
    }

    /// The stored value (JSON), after [`Instance::validate`].
    pub fn encode(&self) -> Result<Vec<u8>, InvalidInstance> {
        self.validate()?;
        let metadata = Metadata {
            version: FORMAT_VERSION,
            service: self.service.clone(),
            id: self.id.clone(),
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            weight: self.weight,
            zone: self.zone.clone(),
            health: self.health,
            registered: Some(format_rfc3339(self.registered)),
        };
        let endpoint = EndpointOut {
            addr: &self.addr,
            metadata,
        };
        Ok(serde_json::to_vec(&endpoint).expect("an endpoint is plain data"))
    }

    /// Decodes the instance stored at `key` under `prefix`. The service and
    /// ID come from the key; see the module's rules for what else is
    /// accepted.
    pub fn decode(prefix: &str, key: &[u8], value: &[u8]) -> Result<Instance, InvalidInstance> {
        let Some((service, id)) = parse_key(prefix, key) else {
            return invalid(format!(
                "key {:?} is not <prefix>/<service>/<id> under {prefix:?}",
                String::from_utf8_lossy(key)
            ));
        };
        let endpoint: Endpoint = serde_json::from_slice(value).map_err(|e| {
            InvalidInstance(format!(
                "value of {:?} is not an endpoint ({{\"Addr\": ...}}): {e}",
                String::from_utf8_lossy(key)
            ))
        })?;
        parse_addr(&endpoint.addr)?;
        let mut instance = Instance {
            service,
            id,
            addr: endpoint.addr,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: 1,
            zone: String::new(),
            health: Health::Passing,
            registered: UNIX_EPOCH,
        };
        // Metadata another tool wrote (any JSON) is not ours: defaults.
        if let Some(value) = endpoint.metadata
            && let Ok(metadata) = serde_json::from_value::<Metadata>(value)
        {
            instance.tags = metadata.tags;
            instance.meta = metadata.meta;
            instance.weight = metadata.weight;
            instance.zone = metadata.zone;
            instance.health = metadata.health;
            instance.registered = metadata
                .registered
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or(UNIX_EPOCH);
        }
        Ok(instance)
    }

    /// The address parsed: an IP address and port, or a host name and port.
    pub fn socket(&self) -> Result<Addr, InvalidInstance> {
        parse_addr(&self.addr)
    }

    /// Whether it carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A parsed `Addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A DNS name and port.
    Name(String, u16),
}

impl Addr {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Addr::Ip(a) => a.port(),
            Addr::Name(_, p) => *p,
        }
    }
}

/// Parses `host:port` as [`Instance::addr`] allows it.
pub fn parse_addr(addr: &str) -> Result<Addr, InvalidInstance> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return invalid(format!("addr {addr:?} has port 0"));
        }
        return Ok(Addr::Ip(socket));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return invalid(format!("addr {addr:?} is not host:port"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return invalid(format!("addr {addr:?} has no port in 1..=65535")),
    };
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return invalid(format!(
            "addr {addr:?}: an IPv6 address goes in brackets, [::1]:80"
        ));
    }
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !labels_ok {
        return invalid(format!(
            "addr {addr:?}: {host:?} is not an IP address or a DNS name"
        ));
    }
    Ok(Addr::Name(host.to_string(), port))
}

fn validate_label(what: &str, label: &str) -> Result<(), InvalidInstance> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{what} {label:?} must be a DNS label: 1 to 63 characters of [a-z0-9-], not starting or ending with '-'"
        ))
    }
}

/// Checks a tag (a DNS label).
pub fn validate_tag(tag: &str) -> Result<(), InvalidInstance> {
    validate_label("tag", tag)
}

/// Checks a service name (a DNS label).
pub fn validate_service(service: &str) -> Result<(), InvalidInstance> {
    validate_label("service", service)
}

/// Checks an instance ID.
pub fn validate_id(id: &str) -> Result<(), InvalidInstance> {
    if id.is_empty()
        || id.len() > MAX_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return invalid(format!(
            "id {id:?} must be 1 to {MAX_ID} characters of [A-Za-z0-9._:-]"
        ));
    }
    Ok(())
}

/// Checks a key prefix: non-empty, printable ASCII, no trailing `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidInstance> {
    if prefix.is_empty() || prefix.ends_with('/') || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid(format!(
            "prefix {prefix:?} must be non-empty printable ASCII without a trailing '/'"
        ));
    }
    Ok(())
}

/// The prefix of every instance of `service`: `<prefix>/<service>/`.
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{prefix}/{service}/")
}

/// The prefix of every instance of every service: `<prefix>/`.
pub fn registry_prefix(prefix: &str) -> String {
    format!("{prefix}/")
}

/// Splits `<prefix>/<service>/<id>` into service and ID; `None` for a key
/// that is not one instance's under `prefix`.
pub fn parse_key(prefix: &str, key: &[u8]) -> Option<(String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (service, id) = rest.split_once('/')?;
    if validate_service(service).is_err() || validate_id(id).is_err() {
        return None;
    }
    Some((service.to_string(), id.to_string()))
}

/// Now, truncated to the second (the precision stored).
pub fn now_to_the_second() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `time` as RFC 3339 in UTC to the second: `2026-11-25T10:00:00Z`.
pub fn format_rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses what [`format_rfc3339`] writes (also with fractional seconds or a
/// numeric offset); `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Instance {
        let mut i = Instance::new("api", "api-1", "10.0.0.1:8080");
        i.tags = vec!["v2".into(), "canary".into()];
        i.meta.insert("commit".into(), "4f2a".into());
        i.weight = 5;
        i.zone = "eu-1a".into();
        i.health = Health::Warning;
        i.registered = parse_rfc3339("2026-11-25T10:00:00Z").unwrap();
        i
    }

    #[test]
    fn an_encoded_instance_decodes_to_itself() {
        let i = sample();
        let value = i.encode().unwrap();
        let text = String::from_utf8(value.clone()).unwrap();
        assert!(text.starts_with(r#"{"Addr":"10.0.0.1:8080","Metadata":{"version":1,"#));
        assert!(text.contains(r#""registered":"2026-11-25T10:00:00Z""#));
        assert_eq!(i.key(DEFAULT_PREFIX), "/registry/services/api/api-1");
        let back = Instance::decode(DEFAULT_PREFIX, i.key(DEFAULT_PREFIX).as_bytes(), &value);
        assert_eq!(back, Ok(i));
    }

    #[test]
    fn values_other_tools_wrote_decode_with_defaults() {
        let key = b"/registry/services/api/1";
        for value in [
            &br#"{"Addr":"10.0.0.1:8080"}"#[..],
            br#"{"Addr":"10.0.0.1:8080","Metadata":null}"#,
            br#"{"Op":0,"Addr":"10.0.0.1:8080","Metadata":"anything"}"#,
        ] {
            let i = Instance::decode(DEFAULT_PREFIX, key, value).unwrap();
            assert_eq!((i.service.as_str(), i.id.as_str()), ("api", "1"));
            assert_eq!((i.health, i.weight), (Health::Passing, 1));
        }
        // The key wins over Metadata; a newer version's known fields are read.
        let value = br#"{"Addr":"h.example:80","Metadata":{"version":9,"service":"x","id":"y","health":"critical","new":true}}"#;
        let i = Instance::decode(DEFAULT_PREFIX, key, value).unwrap();
        assert_eq!((i.service.as_str(), i.health), ("api", Health::Critical));
        assert_eq!(i.socket().unwrap(), Addr::Name("h.example".into(), 80));
    }

    #[test]
    fn bad_values_and_keys_are_errors() {
        let key = b"/registry/services/api/1";
        for value in [
            &b"10.0.0.1:8080"[..],
            br#"{"Addr":"10.0.0.1"}"#,
            br#"{"Addr":"::1:80"}"#,
            br#"{"Addr":"a b:80"}"#,
            br#"{}"#,
        ] {
            assert!(Instance::decode(DEFAULT_PREFIX, key, value).is_err());
        }
        let good = br#"{"Addr":"10.0.0.1:8080"}"#;
        for key in [
            &b"/registry/services/api"[..],
            b"/registry/services/API/1",
            b"/registry/servicesx/api/1",
            b"/registry/services/api/1/2",
            b"/other/api/1",
        ] {
            assert!(
                Instance::decode(DEFAULT_PREFIX, key, good).is_err(),
                "{key:?}"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        type Case = (fn(&mut Instance), &'static str);
        let cases: [Case; 9] = [
            (|i| i.service = "Api".into(), "service"),
            (|i| i.service = "-api".into(), "service"),
            (|i| i.id = "a/b".into(), "id"),
            (|i| i.id = String::new(), "id"),
            (|i| i.addr = "10.0.0.1:0".into(), "port 0"),
            (|i| i.tags = vec!["a".into(), "a".into()], "twice"),
            (|i| i.tags = vec!["a.b".into()], "tag"),
            (|i| i.zone = "EU".into(), "zone"),
            (
                |i| {
                    i.meta.insert("k".into(), "x".repeat(513));
                },
                "meta value",
            ),
        ];
        for (change, word) in cases {
            let mut i = sample();
            change(&mut i);
            let e = i.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e} should name {word}");
        }
        assert!(Instance::new("a", "b", "[::1]:80").validate().is_ok());
        assert!(validate_prefix("/registry/services/").is_err());
        assert!(validate_prefix("").is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-11-25T10:00:00Z",
            "2000-02-29T23:59:59Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(text).unwrap()), text);
        }
        assert_eq!(
            parse_rfc3339("2026-11-25T11:00:00.5+01:00"),
            parse_rfc3339("2026-11-25T10:00:00Z")
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
