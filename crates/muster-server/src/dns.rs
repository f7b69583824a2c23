//! The DNS interface (`--listen-dns`, UDP and TCP on one address): every
//! member answers for the registry's services from its own applied state.
//!
//! The names, under `--dns-domain` (default `muster`):
//!
//! ```text
//!   <service>.service.<domain>          A, AAAA  the passing instances' addresses
//!   <tag>.<service>.service.<domain>    A, AAAA  ... of those carrying <tag>
//!   _<service>._tcp.service.<domain>    SRV      one per passing instance: priority 1,
//!                                                its weight, its port, a target
//!   _<service>._<tag>.service.<domain>  SRV      ... of those carrying <tag>
//!   <service>.service.<domain>          SRV      as _<service>._tcp (Consul answers both)
//!   <hex>.addr.<domain>                 A, AAAA  the address the label spells: 8 hex
//!                                                digits an IPv4 address, 32 an IPv6 one
//!                                                (Consul's SRV target names)
//!   <domain>                            SOA
//! ```
//!
//! Worked example, domain `muster`, prefix `/registry/services`:
//!
//! ```text
//!   /registry/services/api/a  {"Addr":"10.0.0.1:8080",   ... "tags":["v2"]}
//!   /registry/services/api/b  {"Addr":"10.0.0.2:8080",   ... "health":"critical"}
//!   /registry/services/api/c  {"Addr":"[fd00::3]:9090", ... "weight":5}
//!   /registry/services/web/d  {"Addr":"web.example.com:80"}
//!
//!   api.service.muster A          10.0.0.1                    (b is critical)
//!   api.service.muster AAAA       fd00::3
//!   v2.api.service.muster A       10.0.0.1
//!   v3.api.service.muster A       NXDOMAIN                    (no instance carries v3)
//!   _api._tcp.service.muster SRV  1 1 8080 0a000001.addr.muster.
//!                                 1 5 9090 fd000000000000000000000000000003.addr.muster.
//!                                 additional: 0a000001.addr.muster. A 10.0.0.1,
//!                                 fd00...0003.addr.muster. AAAA fd00::3
//!   _web._tcp.service.muster SRV  1 1 80 web.example.com.     (no additional record)
//!   web.service.muster A          NODATA                      (no IP address to give)
//!   db.service.muster A           NXDOMAIN                    (no key under .../db/)
//!   example.com A                 REFUSED
//! ```
//!
//! Invariants:
//!
//! - Every answer is read from this member's applied store, one snapshot
//!   per query, as a serializable range is: no Raft round trip, so a member
//!   cut off from the leader still answers, as stale as its applied state.
//! - Only passing instances are answered (Consul also gives warning ones
//!   unless `only_passing` is set; muster gives what its balancers prefer).
//! - A name exists when some instance key makes it, whatever that
//!   instance's health: a service name when the service's prefix holds a
//!   key, a tag name when an instance of the service carries the tag, an
//!   addr name whenever its label is 8 or 32 hex digits. A name that exists
//!   but has no record of the type asked (no passing instance, only
//!   instances addressed by DNS name for A/AAAA, a type not listed above)
//!   is answered NODATA: NOERROR without answers. Any other name under the
//!   domain is NXDOMAIN, except the empty non-terminals `service.<domain>`,
//!   `addr.<domain>` and `_<service>.service.<domain>` of a known service,
//!   which are NODATA: an NXDOMAIN would deny every name below them
//!   (RFC 8020).
//! - Every negative answer (NXDOMAIN, NODATA) carries the domain's SOA in
//!   the authority section, with TTL and minimum `--dns-negative-ttl` (how
//!   long resolvers cache the absence, RFC 2308) and the store revision
//!   (mod 2^32) as serial. Every other record has TTL `--dns-ttl`.
//! - Names outside the domain are REFUSED, as Consul refuses them without
//!   recursors: a member is no recursive resolver. A query of a class
//!   other than IN (or ANY) is REFUSED, an opcode other than QUERY is
//!   NOTIMP, a message without exactly one question is FORMERR, an EDNS
//!   version above 0 is BADVERS.
//! - Names match case-insensitively (tags too); answers carry the name as
//!   the question spelled it.
//! - Answers rotate: the records are built in the instances' key order
//!   and the n-th query this member answers starts at record n mod count,
//!   so successive clients start at different instances. Duplicate
//!   addresses are answered once.
//! - An instance whose `Addr` is a DNS name is left out of A/AAAA answers
//!   (a CNAME cannot stand beside other records at one name) and appears
//!   in SRV answers with its name as the target, without additional record.
//! - A UDP answer larger than the client's buffer (512 bytes without EDNS,
//!   its EDNS size, at most 4096, with it) is cut short with the TC bit
//!   set, so the client asks again over TCP, where up to 65535 bytes fit.
//!   hickory's encoder does the cutting.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use muster_core::{RangeRequest, Store};
use muster_proto::registry::{self, Addr, Health, Instance};
use muster_raft::RaftNode;
use tokio::net::{TcpListener, UdpSocket};

/// `--listen-dns`'s default: loopback, Consul's DNS port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8600";

/// `--dns-domain`'s default.
pub const DEFAULT_DOMAIN: &str = "muster";

/// `--dns-ttl`'s default, in seconds: long enough to spare the member a
/// query per connection, short enough that a deregistered instance stops
/// being handed out within seconds. (Consul's default is 0: no caching.)
pub const DEFAULT_TTL: u32 = 5;

/// `--dns-negative-ttl`'s default, in seconds: how long a resolver may
/// remember that a name or record does not exist (the SOA minimum).
pub const DEFAULT_NEGATIVE_TTL: u32 = 30;

/// The largest TTL DNS allows (RFC 2181, section 8): 2^31 - 1 seconds.
pub const MAX_TTL: u32 = i32::MAX as u32;

/// The longest `--dns-domain`, in characters, so that every name muster
/// builds under it (`<32 hex digits>.addr.<domain>.`) stays within DNS's
/// 255-byte limit.
pub const MAX_DOMAIN_LEN: usize = 200;

/// The largest UDP answer sent, whatever buffer a client advertises: big
/// answers go over TCP rather than as fragmented datagrams.
const MAX_UDP_PAYLOAD: u16 = 4096;

/// How long a TCP connection may stay idle before it is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Tries to find one port free for both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 16;

/// What the DNS interface answers for, and how long answers may be cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The domain answered for, without the trailing dot (`muster`,
    /// `registry.example.internal`); see [`normalize_domain`].
    pub domain: String,
    /// TTL of every positive record, in seconds (`--dns-ttl`).
    pub ttl: u32,
    /// TTL and minimum of the SOA sent with negative answers, in seconds
    /// (`--dns-negative-ttl`).
    pub negative_ttl: u32,
    /// The key prefix instances live under (`--registry-prefix`).
    pub registry_prefix: String,
}

impl Default for DnsConfig {
    /// The flags' defaults.
    fn default() -> Self {
        DnsConfig {
            domain: DEFAULT_DOMAIN.to_string(),
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            registry_prefix: registry::DEFAULT_PREFIX.to_string(),
        }
    }
}

impl DnsConfig {
    /// The DNS settings of a validated member plan.
    pub fn from_member(member: &crate::config::Member) -> Self {
        DnsConfig {
            domain: member.dns_domain.clone(),
            ttl: member.dns_ttl,
            negative_ttl: member.dns_negative_ttl,
            registry_prefix: member.registry_prefix.clone(),
        }
    }
}

/// Checks a domain and spells it as muster does: lowercase, without the
/// trailing dot. Every label is 1 to 63 characters of `[a-z0-9-]` (any
/// case), not starting or ending with `-`; the whole at most
/// [`MAX_DOMAIN_LEN`] characters. The error says what is wrong.
pub fn normalize_domain(raw: &str) -> Result<String, String> {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Err(format!("{raw:?} is empty"));
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(format!(
            "{raw:?} is longer than {MAX_DOMAIN_LEN} characters"
        ));
    }
    for label in domain.split('.') {
        if registry::validate_service(label).is_err() {
            return Err(format!(
                "{raw:?}: label {label:?} must be 1 to 63 characters of [a-z0-9-], \
                 not starting or ending with '-'"
            ));
        }
    }
    Ok(domain)
}

/// The DNS interface's sockets: a UDP socket and a TCP listener bound to
/// the same address, bound before the member starts so that a port in use
/// stops the start with a clear error.
#[derive(Debug)]
pub struct DnsListener {
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddr,
}

impl DnsListener {
    /// Binds UDP and TCP on `addr`. With port 0, one port free for both is
    /// chosen. The error names the protocol that could not bind.
    pub async fn bind(addr: SocketAddr) -> io::Result<DnsListener> {
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("UDP {addr}: {e}")))?;
            let bound = udp.local_addr()?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    return Ok(DnsListener {
                        udp,
                        tcp,
                        addr: bound,
                    });
                }
                // Port 0 gave a port whose TCP side is taken: try another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => {
                    last = Some(e);
                }
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("TCP {bound}: {e}")));
                }
            }
        }
        let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse));
        Err(io::Error::new(
            e.kind(),
            format!("no port free for both UDP and TCP on {addr} in {attempts} tries: {e}"),
        ))
    }

    /// The address bound (both protocols).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serves DNS on `listener` from `node`'s applied state until `shutdown`
/// resolves (then stops accepting, drops open TCP connections and
/// returns). An error is a domain [`normalize_domain`] refuses or a socket
/// that failed.
pub async fn serve(
    listener: DnsListener,
    node: Arc<RaftNode>,
    config: DnsConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let zone = Zone::new(config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--dns-domain: {e}")))?;
    tracing::info!(
        addr = %listener.addr,
        domain = %zone.origin,
        ttl = zone.config.ttl,
        negative_ttl = zone.config.negative_ttl,
        "serving DNS (UDP and TCP)"
    );
    let mut server = Server::new(Handler {
        zone,
        node,
        queries: AtomicUsize::new(0),
    });
    server.register_socket(listener.udp);
    server.register_listener(listener.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let stop = server.shutdown_token().clone();
    let done = server.block_until_done();
    tokio::pin!(done);
    tokio::select! {
        result = &mut done => return result.map_err(io::Error::other),
        () = shutdown => {}
    }
    stop.cancel();
    done.await.map_err(io::Error::other)
}

/// The request handler hickory's server calls for every message.
struct Handler {
    zone: Zone,
    node: Arc<RaftNode>,
    /// Queries answered so far: the rotation of the next answer.
    queries: AtomicUsize,
}

impl Handler {
    /// The answer to `request` and the query type to count it under.
    fn answer(&self, request: &Request) -> (&'static str, Answer) {
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return ("other", Answer::error(ResponseCode::BADVERS));
        }
        if request.metadata.op_code != OpCode::Query {
            return ("other", Answer::error(ResponseCode::NotImp));
        }
        let Ok(info) = request.request_info() else {
            return ("other", Answer::error(ResponseCode::FormErr));
        };
        let query = info.query;
        let qtype = query.query_type();
        let label = type_label(qtype);
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return (label, Answer::error(ResponseCode::Refused));
        }
        let store = self.node.state_machine().store();
        let prefix = &self.zone.config.registry_prefix;
        let lookup = |service: &str| read_service(&store, prefix, service);
        let turn = self.queries.fetch_add(1, Ordering::Relaxed);
        let answer = self.zone.answer(
            query.name(),
            query.original().name(),
            qtype,
            &lookup,
            store.revision() as u32,
            turn,
        );
        (label, answer)
    }
}

#[tonic::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (qtype, answer) = self.answer(request);
        crate::metrics::DNS_QUERIES
            .with_label_values(&[qtype, rcode_label(answer.code)])
            .inc();
        // A client that speaks EDNS gets EDNS back, with the buffer size it
        // offered (at least 512, at most MAX_UDP_PAYLOAD): the UDP limit.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.code;
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending a DNS answer failed");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The instances stored under `<prefix>/<service>/`, in key order: `None`
/// when there is no key at all. A value that does not decode is skipped
/// (its key still makes the service known).
fn read_service(
    store: &Store,
    prefix: &str,
    service: &str,
) -> Result<Option<Vec<Instance>>, String> {
    let key = registry::service_prefix(prefix, service);
    let range = RangeRequest {
        range_end: Bytes::from(muster_proto::prefix_end(key.as_bytes())),
        key: Bytes::from(key),
        ..RangeRequest::default()
    };
    let response = store.range(&range).map_err(|e| e.to_string())?;
    if response.kvs.is_empty() {
        return Ok(None);
    }
    let instances = response
        .kvs
        .iter()
        .filter_map(|kv| match Instance::decode(prefix, &kv.key, &kv.value) {
            Ok(instance) => Some(instance),
            Err(error) => {
                tracing::debug!(%error, "DNS skips a value that is not an instance");
                None
            }
        })
        .collect();
    Ok(Some(instances))
}

/// What the registry holds for a service: `Ok(None)` when the service has
/// no key, an error when the store could not be read.
type Lookup<'a> = &'a dyn Fn(&str) -> Result<Option<Vec<Instance>>, String>;

/// The domain answered for and the records it makes: everything but I/O.
#[derive(Debug)]
struct Zone {
    config: DnsConfig,
    /// `<domain>.`, lowercase.
    origin: Name,
    /// The same, for matching questions.
    lower_origin: LowerName,
    /// Its label count.
    origin_labels: usize,
    /// The SOA's primary name server, `ns.<domain>.` (as Consul's).
    mname: Name,
    /// The SOA's mailbox, `hostmaster.<domain>.`.
    rname: Name,
}

/// What a name under the domain designates.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `<domain>`.
    Apex,
    /// `service.<domain>`, `addr.<domain>`: names with children only.
    Empty,
    /// `_<service>.service.<domain>`: the parent of the SRV names.
    ServiceEmpty(String),
    /// `[<tag>.]<service>.service.<domain>`.
    Service {
        /// The service.
        service: String,
        /// The tag filter.
        tag: Option<String>,
    },
    /// `_<service>._<tag or tcp>.service.<domain>`.
    Srv {
        /// The service.
        service: String,
        /// The tag filter (`None` for `_tcp`).
        tag: Option<String>,
    },
    /// `<hex>.addr.<domain>`.
    Addr(IpAddr),
    /// Anything else under the domain.
    Unknown,
}

/// A response's code and sections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    /// An error without records, not authoritative.
    fn error(code: ResponseCode) -> Self {
        Answer {
            code,
            ..Answer::default()
        }
    }
}

impl Zone {
    /// The zone of `config`, its domain normalized.
    fn new(mut config: DnsConfig) -> Result<Zone, String> {
        config.domain = normalize_domain(&config.domain)?;
        let name = |text: &str| Name::from_ascii(text).map_err(|e| format!("{text:?}: {e}"));
        let origin = name(&format!("{}.", config.domain))?;
        Ok(Zone {
            lower_origin: LowerName::new(&origin),
            origin_labels: origin.iter().count(),
            mname: name(&format!("ns.{}.", config.domain))?,
            rname: name(&format!("hostmaster.{}.", config.domain))?,
            origin,
            config,
        })
    }

    /// What `name` designates; `None` outside the domain.
    fn parse(&self, name: &LowerName) -> Option<Target> {
        if !self.lower_origin.zone_of(name) {
            return None;
        }
        let labels: Vec<&[u8]> = name.iter().collect();
        let below = labels.len().checked_sub(self.origin_labels)?;
        let Ok(labels) = labels[..below]
            .iter()
            .map(|l| std::str::from_utf8(l))
            .collect::<Result<Vec<&str>, _>>()
        else {
            return Some(Target::Unknown);
        };
        let label_ok = |l: &str| registry::validate_service(l).is_ok();
        let target = match labels.as_slice() {
            [] => Target::Apex,
            ["service" | "addr"] => Target::Empty,
            [service, "service"] if label_ok(service) => Target::Service {
                service: service.to_string(),
                tag: None,
            },
            [service, "service"] => match service.strip_prefix('_') {
                Some(service) if label_ok(service) => Target::ServiceEmpty(service.to_string()),
                _ => Target::Unknown,
            },
            [tag, service, "service"] if label_ok(tag) && label_ok(service) => Target::Service {
                service: service.to_string(),
                tag: Some(tag.to_string()),
            },
            [service, tag, "service"] => {
                match (service.strip_prefix('_'), tag.strip_prefix('_')) {
                    (Some(service), Some(tag)) if label_ok(service) && label_ok(tag) => {
                        Target::Srv {
                            service: service.to_string(),
                            // RFC 2782's protocol label: no filter (as Consul).
                            tag: (tag != "tcp").then(|| tag.to_string()),
                        }
                    }
                    _ => Target::Unknown,
                }
            }
            [hex, "addr"] => parse_addr_label(hex).map_or(Target::Unknown, Target::Addr),
            _ => Target::Unknown,
        };
        Some(target)
    }

    /// The answer to a question for `name` (as asked: `asked`) of type
    /// `qtype`, given the registry (`lookup`), the store revision
    /// (`serial`) and the rotation (`turn`).
    fn answer(
        &self,
        name: &LowerName,
        asked: &Name,
        qtype: RecordType,
        lookup: Lookup<'_>,
        serial: u32,
        turn: usize,
    ) -> Answer {
        let Some(target) = self.parse(name) else {
            return Answer::error(ResponseCode::Refused);
        };
        // `Some((answers, additionals))` when the name exists.
        let found = match target {
            Target::Apex => match qtype {
                RecordType::SOA | RecordType::ANY => Ok(Some((vec![self.soa(serial)], vec![]))),
                _ => Ok(Some((vec![], vec![]))),
            },
            Target::Empty => Ok(Some((vec![], vec![]))),
            Target::ServiceEmpty(service) => {
                lookup(&service).map(|found| found.map(|_| (vec![], vec![])))
            }
            Target::Addr(ip) => {
                let wanted = match qtype {
                    RecordType::A => ip.is_ipv4(),
                    RecordType::AAAA => ip.is_ipv6(),
                    RecordType::ANY => true,
                    _ => false,
                };
                let records = if wanted {
                    vec![self.address(asked.clone(), ip)]
                } else {
                    vec![]
                };
                Ok(Some((records, vec![])))
            }
            Target::Service { service, tag } => lookup(&service).map(|found| {
                let instances = found?;
                let chosen = choose(&instances, tag.as_deref())?;
                Some(match qtype {
                    RecordType::A => (self.addresses(asked, &chosen, true, false), vec![]),
                    RecordType::AAAA => (self.addresses(asked, &chosen, false, true), vec![]),
                    RecordType::ANY => (self.addresses(asked, &chosen, true, true), vec![]),
                    RecordType::SRV => self.services(asked, &chosen),
                    _ => (vec![], vec![]),
                })
            }),
            Target::Srv { service, tag } => lookup(&service).map(|found| {
                let instances = found?;
                let chosen = choose(&instances, tag.as_deref())?;
                Some(match qtype {
                    RecordType::SRV | RecordType::ANY => self.services(asked, &chosen),
                    _ => (vec![], vec![]),
                })
            }),
            Target::Unknown => Ok(None),
        };
        match found {
            Err(error) => {
                tracing::warn!(%error, "DNS could not read the registry");
                Answer::error(ResponseCode::ServFail)
            }
            Ok(None) => self.negative(ResponseCode::NXDomain, serial),
            Ok(Some((answers, _))) if answers.is_empty() => {
                self.negative(ResponseCode::NoError, serial)
            }
            Ok(Some((mut answers, additionals))) => {
                // Rotate what is answered, not the instances: for A, the
                // IPv6 and DNS-named instances would repeat a first answer.
                let by = turn % answers.len();
                answers.rotate_left(by);
                Answer {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers,
                    authorities: vec![],
                    additionals,
                }
            }
        }
    }

    /// NXDOMAIN or NODATA, with the SOA in the authority section.
    fn negative(&self, code: ResponseCode, serial: u32) -> Answer {
        Answer {
            code,
            authoritative: true,
            authorities: vec![self.soa(serial)],
            ..Answer::default()
        }
    }

    /// The domain's SOA: TTL and minimum the negative TTL.
    fn soa(&self, serial: u32) -> Record {
        let negative_ttl = self.config.negative_ttl;
        let soa = SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            serial,
            3600,
            600,
            86400,
            negative_ttl,
        );
        Record::from_rdata(self.origin.clone(), negative_ttl, RData::SOA(soa))
    }

    /// An A or AAAA record of `ip` at `owner`.
    fn address(&self, owner: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner, self.config.ttl, data)
    }

    /// The A (`v4`) and/or AAAA (`v6`) records of `instances` at `owner`,
    /// each address once; DNS-named instances have none.
    fn addresses(&self, owner: &Name, instances: &[&Instance], v4: bool, v6: bool) -> Vec<Record> {
        let mut seen = BTreeSet::new();
        instances
            .iter()
            .filter_map(|instance| match instance.socket() {
                Ok(Addr::Ip(socket)) => Some(socket.ip().to_canonical()),
                _ => None,
            })
            .filter(|ip| if ip.is_ipv4() { v4 } else { v6 })
            .filter(|ip| seen.insert(*ip))
            .map(|ip| self.address(owner.clone(), ip))
            .collect()
    }

    /// The SRV records of `instances` at `owner`, and the addresses of
    /// their targets (each once) for the additional section.
    fn services(&self, owner: &Name, instances: &[&Instance]) -> (Vec<Record>, Vec<Record>) {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut seen = BTreeSet::new();
        for instance in instances {
            let (target, port) = match instance.socket() {
                Ok(Addr::Ip(socket)) => {
                    let ip = socket.ip().to_canonical();
                    let target = self.addr_name(ip);
                    if seen.insert(ip) {
                        additionals.push(self.address(target.clone(), ip));
                    }
                    (target, socket.port())
                }
                Ok(Addr::Name(host, port)) => match Name::from_ascii(format!("{host}.")) {
                    Ok(target) => (target, port),
                    Err(_) => continue,
                },
                Err(_) => continue,
            };
            let srv = SRV::new(1, instance.weight, port, target);
            answers.push(Record::from_rdata(
                owner.clone(),
                self.config.ttl,
                RData::SRV(srv),
            ));
        }
        (answers, additionals)
    }

    /// `<hex>.addr.<domain>.`: the name that answers `ip`.
    fn addr_name(&self, ip: IpAddr) -> Name {
        let hex = match ip {
            IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
            IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
        };
        Name::from_ascii(format!("{hex}.addr.{}.", self.config.domain))
            .expect("a hex label under a valid domain of at most 200 characters is a name")
    }
}

/// `instances` that are passing and carry `tag` (if any), in key order;
/// `None` when a tag is asked that no instance carries, whatever its
/// health (the name does not exist).
fn choose<'a>(instances: &'a [Instance], tag: Option<&str>) -> Option<Vec<&'a Instance>> {
    let carries = |instance: &Instance| {
        tag.is_none_or(|tag| instance.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
    };
    if tag.is_some() && !instances.iter().any(carries) {
        return None;
    }
    let chosen = instances
        .iter()
        .filter(|i| i.health == Health::Passing && carries(i))
        .collect();
    Some(chosen)
}

/// The address an `addr` label spells: 8 hex digits IPv4, 32 IPv6.
fn parse_addr_label(label: &str) -> Option<IpAddr> {
    if !label.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match label.len() {
        8 => u32::from_str_radix(label, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(label, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The metric label of a query type (a fixed set).
fn type_label(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// The metric label of a response code (a fixed set).
fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn zone() -> Zone {
        Zone::new(DnsConfig::default()).expect("the defaults are valid")
    }

    /// `text` as a name from the wire, whose labels may hold any byte.
    fn name(text: &str) -> Name {
        let labels = text.split('.').filter(|l| !l.is_empty()).map(str::as_bytes);
        let mut name = Name::from_labels(labels).expect("a name");
        name.set_fqdn(true);
        name
    }

    fn parse(text: &str) -> Option<Target> {
        zone().parse(&LowerName::new(&name(text)))
    }

    fn service(service: &str, tag: Option<&str>) -> Option<Target> {
        Some(Target::Service {
            service: service.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    fn srv(service: &str, tag: Option<&str>) -> Option<Target> {
        Some(Target::Srv {
            service: service.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    #[test]
    fn names_parse_case_insensitively_into_what_they_designate() {
        assert_eq!(parse("muster."), Some(Target::Apex));
        assert_eq!(parse("MUSTER."), Some(Target::Apex));
        assert_eq!(parse("service.muster."), Some(Target::Empty));
        assert_eq!(parse("addr.muster."), Some(Target::Empty));
        assert_eq!(parse("api.service.muster."), service("api", None));
        assert_eq!(parse("Api.SERVICE.Muster."), service("api", None));
        assert_eq!(parse("v2.api.service.muster."), service("api", Some("v2")));
        assert_eq!(parse("_api._tcp.service.muster."), srv("api", None));
        assert_eq!(parse("_API._TCP.service.muster."), srv("api", None));
        assert_eq!(parse("_api._v2.service.muster."), srv("api", Some("v2")));
        assert_eq!(
            parse("_api.service.muster."),
            Some(Target::ServiceEmpty("api".to_string()))
        );
        assert_eq!(
            parse("0a000001.addr.muster."),
            Some(Target::Addr("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            parse("FD000000000000000000000000000003.addr.muster."),
            Some(Target::Addr("fd00::3".parse().unwrap()))
        );
    }

    #[test]
    fn names_outside_the_schema_are_unknown_and_outside_the_domain_none() {
        for unknown in [
            "node.muster.",
            "api.muster.",
            "x.v2.api.service.muster.",
            "-api.service.muster.",
            "api_x.service.muster.",
            "_api._tcp.x.service.muster.",
            "api._tcp.service.muster.",
            "_api.tcp.service.muster.",
            "__api._tcp.service.muster.",
            "0a00001.addr.muster.",
            "0a00000g.addr.muster.",
            "+a000001.addr.muster.",
            "x.0a000001.addr.muster.",
            "*.service.muster.",
        ] {
            assert_eq!(parse(unknown), Some(Target::Unknown), "{unknown}");
        }
        for outside in ["example.com.", "muster.example.com.", "xmuster.", "."] {
            assert_eq!(parse(outside), None, "{outside}");
        }
        // A domain of several labels.
        let zone = Zone::new(DnsConfig {
            domain: "Registry.Example.".to_string(),
            ..DnsConfig::default()
        })
        .expect("valid");
        assert_eq!(zone.origin, name("registry.example."));
        assert_eq!(
            zone.parse(&LowerName::new(&name("api.service.registry.example."))),
            service("api", None)
        );
        assert_eq!(
            zone.parse(&LowerName::new(&name("api.service.muster."))),
            None
        );
    }

    #[test]
    fn domains_are_checked_and_normalized() {
        assert_eq!(normalize_domain("muster").as_deref(), Ok("muster"));
        assert_eq!(
            normalize_domain("Muster.Local.").as_deref(),
            Ok("muster.local")
        );
        for bad in ["", ".", "a..b", "-x", "x-", "a_b", "a b", &"x".repeat(64)] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
        let long = vec!["abcdefghij"; 19].join(".");
        assert!(long.len() > MAX_DOMAIN_LEN);
        assert!(
            normalize_domain(&long)
                .unwrap_err()
                .contains("longer than 200")
        );
    }

    fn instance(id: &str, addr: &str) -> Instance {
        Instance::new("api", id, addr)
    }

    /// A registry of `services`, each its instances in key order.
    fn registry(
        services: Vec<(&str, Vec<Instance>)>,
    ) -> impl Fn(&str) -> Result<Option<Vec<Instance>>, String> {
        let map: BTreeMap<String, Vec<Instance>> = services
            .into_iter()
            .map(|(s, i)| (s.to_string(), i))
            .collect();
        move |service: &str| Ok(map.get(service).cloned())
    }

    fn example() -> impl Fn(&str) -> Result<Option<Vec<Instance>>, String> {
        let a = Instance {
            tags: vec!["v2".to_string()],
            ..instance("a", "10.0.0.1:8080")
        };
        let b = Instance {
            health: Health::Critical,
            tags: vec!["old".to_string()],
            ..instance("b", "10.0.0.2:8080")
        };
        let c = Instance {
            weight: 5,
            ..instance("c", "[fd00::3]:9090")
        };
        let d = Instance {
            weight: 2,
            ..instance("d", "web.example.com:80")
        };
        let e = Instance {
            health: Health::Warning,
            ..instance("e", "10.0.0.5:8080")
        };
        registry(vec![
            ("api", vec![a, b, c, d, e]),
            ("empty", vec![]),
            (
                "down",
                vec![Instance {
                    health: Health::Critical,
                    ..instance("x", "10.0.0.9:1")
                }],
            ),
        ])
    }

    fn ask(text: &str, qtype: RecordType, turn: usize) -> Answer {
        let lookup = example();
        let asked = name(text);
        zone().answer(&LowerName::new(&asked), &asked, qtype, &lookup, 42, turn)
    }

    fn rdata(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_and_aaaa_answer_the_passing_instances_addresses() {
        let answer = ask("api.service.muster.", RecordType::A, 0);
        assert_eq!(answer.code, ResponseCode::NoError);
        assert!(answer.authoritative);
        assert_eq!(
            rdata(&answer.answers),
            ["10.0.0.1"],
            "b is critical, e warning"
        );
        assert_eq!(answer.answers[0].ttl, DEFAULT_TTL);
        assert!(answer.authorities.is_empty() && answer.additionals.is_empty());
        let answer = ask("API.service.muster.", RecordType::AAAA, 0);
        assert_eq!(rdata(&answer.answers), ["fd00::3"]);
        assert_eq!(
            answer.answers[0].name,
            name("API.service.muster."),
            "as asked"
        );
        let any = ask("api.service.muster.", RecordType::ANY, 0);
        assert_eq!(rdata(&any.answers), ["10.0.0.1", "fd00::3"]);
    }

    #[test]
    fn srv_answers_weights_ports_and_targets_with_their_addresses() {
        for owner in ["_api._tcp.service.muster.", "api.service.muster."] {
            let answer = ask(owner, RecordType::SRV, 0);
            assert_eq!(answer.code, ResponseCode::NoError);
            assert_eq!(
                rdata(&answer.answers),
                [
                    "1 1 8080 0a000001.addr.muster.",
                    "1 5 9090 fd000000000000000000000000000003.addr.muster.",
                    "1 2 80 web.example.com.",
                ],
                "{owner}"
            );
            let additional: Vec<(String, String)> = answer
                .additionals
                .iter()
                .map(|r| (r.name.to_string(), r.data.to_string()))
                .collect();
            assert_eq!(
                additional,
                [
                    ("0a000001.addr.muster.".to_string(), "10.0.0.1".to_string()),
                    (
                        "fd000000000000000000000000000003.addr.muster.".to_string(),
                        "fd00::3".to_string()
                    ),
                ]
            );
        }
        // The targets answer A/AAAA themselves.
        let target = ask("0A000001.addr.muster.", RecordType::A, 0);
        assert_eq!(rdata(&target.answers), ["10.0.0.1"]);
        let target = ask(
            "fd000000000000000000000000000003.addr.muster.",
            RecordType::AAAA,
            0,
        );
        assert_eq!(rdata(&target.answers), ["fd00::3"]);
        let wrong_family = ask("0a000001.addr.muster.", RecordType::AAAA, 0);
        assert_eq!(wrong_family.code, ResponseCode::NoError);
        assert!(wrong_family.answers.is_empty());
        assert_eq!(wrong_family.authorities.len(), 1, "NODATA with the SOA");
    }

    #[test]
    fn tags_filter_and_a_tag_nobody_carries_does_not_exist() {
        let answer = ask("v2.api.service.muster.", RecordType::A, 0);
        assert_eq!(rdata(&answer.answers), ["10.0.0.1"]);
        let answer = ask("V2.api.service.muster.", RecordType::SRV, 0);
        assert_eq!(rdata(&answer.answers), ["1 1 8080 0a000001.addr.muster."]);
        let answer = ask("_api._v2.service.muster.", RecordType::SRV, 0);
        assert_eq!(rdata(&answer.answers), ["1 1 8080 0a000001.addr.muster."]);
        // Only a critical instance carries `old`: the name exists, no data.
        let answer = ask("old.api.service.muster.", RecordType::A, 0);
        assert_eq!(
            (answer.code, answer.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let answer = ask("v3.api.service.muster.", RecordType::A, 0);
        assert_eq!(answer.code, ResponseCode::NXDomain);
        let answer = ask("_api._v3.service.muster.", RecordType::SRV, 0);
        assert_eq!(answer.code, ResponseCode::NXDomain);
    }

    #[test]
    fn answers_rotate_with_each_query() {
        let lookup = registry(vec![(
            "api",
            (1..=3)
                .map(|i| instance(&format!("i{i}"), &format!("10.0.0.{i}:80")))
                .collect(),
        )]);
        let asked = name("api.service.muster.");
        let firsts: Vec<String> = (0..4)
            .map(|turn| {
                let answer = zone().answer(
                    &LowerName::new(&asked),
                    &asked,
                    RecordType::A,
                    &lookup,
                    1,
                    turn,
                );
                assert_eq!(answer.answers.len(), 3);
                answer.answers[0].data.to_string()
            })
            .collect();
        assert_eq!(firsts, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1"]);
    }

    #[test]
    fn rotation_turns_over_the_records_answered_not_the_instances() {
        let lookup = registry(vec![(
            "api",
            vec![
                instance("a", "10.0.0.1:80"),
                instance("b", "[fd00::2]:80"),
                instance("c", "host.example:80"),
                instance("d", "10.0.0.4:80"),
            ],
        )]);
        let asked = name("api.service.muster.");
        let zone = zone();
        let first = |qtype, turn| {
            let answer = zone.answer(&LowerName::new(&asked), &asked, qtype, &lookup, 1, turn);
            answer.answers[0].data.to_string()
        };
        let firsts: Vec<String> = (0..2).map(|turn| first(RecordType::A, turn)).collect();
        assert_eq!(firsts, ["10.0.0.1", "10.0.0.4"]);
        let firsts: BTreeSet<String> = (0..3).map(|turn| first(RecordType::SRV, turn)).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn duplicate_addresses_are_answered_once() {
        let lookup = registry(vec![(
            "api",
            vec![
                instance("a", "10.0.0.1:80"),
                instance("b", "10.0.0.1:81"),
                instance("c", "[::ffff:10.0.0.1]:82"),
            ],
        )]);
        let asked = name("api.service.muster.");
        let zone = zone();
        let a = zone.answer(
            &LowerName::new(&asked),
            &asked,
            RecordType::A,
            &lookup,
            1,
            0,
        );
        assert_eq!(rdata(&a.answers), ["10.0.0.1"]);
        let srv = zone.answer(
            &LowerName::new(&asked),
            &asked,
            RecordType::SRV,
            &lookup,
            1,
            0,
        );
        assert_eq!(srv.answers.len(), 3, "one SRV per instance");
        assert_eq!(srv.additionals.len(), 1, "one address per target");
    }

    #[test]
    fn negative_answers_carry_the_soa_with_the_negative_ttl() {
        let zone = Zone::new(DnsConfig {
            negative_ttl: 17,
            ttl: 3,
            ..DnsConfig::default()
        })
        .expect("valid");
        let lookup = example();
        let ask = |text: &str, qtype| {
            let asked = name(text);
            zone.answer(&LowerName::new(&asked), &asked, qtype, &lookup, 42, 0)
        };
        let nxdomain = [
            "db.service.muster.",
            "node.muster.",
            "x.y.api.service.muster.",
            "_db._tcp.service.muster.",
            "_db.service.muster.",
        ];
        let nodata = [
            ("down.service.muster.", RecordType::A),
            ("empty.service.muster.", RecordType::A),
            ("api.service.muster.", RecordType::TXT),
            ("_api._tcp.service.muster.", RecordType::A),
            ("_api.service.muster.", RecordType::SRV),
            ("service.muster.", RecordType::A),
            ("addr.muster.", RecordType::A),
            ("muster.", RecordType::A),
        ];
        let cases = nxdomain
            .iter()
            .map(|n| (*n, RecordType::A, ResponseCode::NXDomain))
            .chain(nodata.iter().map(|(n, t)| (*n, *t, ResponseCode::NoError)));
        for (text, qtype, code) in cases {
            let answer = ask(text, qtype);
            assert_eq!(answer.code, code, "{text} {qtype}");
            assert!(answer.authoritative);
            assert!(answer.answers.is_empty(), "{text} {qtype}");
            assert_eq!(answer.authorities.len(), 1, "{text} {qtype}");
            let soa = &answer.authorities[0];
            assert_eq!(soa.name, name("muster."));
            assert_eq!(soa.ttl, 17);
            let RData::SOA(soa) = &soa.data else {
                panic!("{text}: not an SOA: {soa:?}")
            };
            assert_eq!((soa.minimum, soa.serial), (17, 42));
            assert_eq!(soa.mname, name("ns.muster."));
        }
        // The apex answers its SOA.
        let apex = ask("muster.", RecordType::SOA);
        assert_eq!(apex.answers.len(), 1);
        assert!(apex.authorities.is_empty());
        // With the positive TTL on records.
        assert_eq!(ask("api.service.muster.", RecordType::A).answers[0].ttl, 3);
    }

    #[test]
    fn names_outside_the_domain_are_refused_and_failures_are_servfail() {
        let answer = ask("example.com.", RecordType::A, 0);
        assert_eq!(answer, Answer::error(ResponseCode::Refused));
        assert!(!answer.authoritative);
        let broken = |_: &str| Err("the store is gone".to_string());
        let asked = name("api.service.muster.");
        let answer = zone().answer(
            &LowerName::new(&asked),
            &asked,
            RecordType::A,
            &broken,
            1,
            0,
        );
        assert_eq!(answer.code, ResponseCode::ServFail);
    }

    #[test]
    fn the_registry_is_read_from_the_store_in_key_order() {
        use muster_core::{Command, PutRequest};
        let mut store = Store::new();
        let prefix = registry::DEFAULT_PREFIX;
        let put = |store: &mut Store, index: u64, key: String, value: Vec<u8>| {
            store
                .apply(
                    index,
                    Command::Put(PutRequest {
                        key: Bytes::from(key),
                        value: Bytes::from(value),
                        ..PutRequest::default()
                    }),
                )
                .expect("put");
        };
        let b = instance("b", "10.0.0.2:80");
        let a = instance("a", "10.0.0.1:80");
        put(&mut store, 1, b.key(prefix), b.encode().unwrap());
        put(&mut store, 2, a.key(prefix), a.encode().unwrap());
        put(
            &mut store,
            3,
            format!("{prefix}/api/broken"),
            b"not json".to_vec(),
        );
        put(&mut store, 4, format!("{prefix}/apiary/x"), b"{}".to_vec());
        let found = read_service(&store, prefix, "api")
            .expect("read")
            .expect("known");
        let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "key order; the broken value skipped");
        assert_eq!(read_service(&store, prefix, "db"), Ok(None));
        // A service whose only key does not decode is still known.
        put(&mut store, 5, format!("{prefix}/db/x"), b"garbage".to_vec());
        assert_eq!(read_service(&store, prefix, "db"), Ok(Some(vec![])));
    }

    #[test]
    fn addr_labels_round_trip() {
        let zone = zone();
        for ip in [
            "10.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::3",
            "2001:db8::1:0",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = zone.addr_name(ip);
            let label = std::str::from_utf8(name.iter().next().unwrap()).unwrap();
            assert_eq!(parse_addr_label(label), Some(ip));
        }
    }
}
