//! The DNS interface (`muster_server::dns`) against in-process clusters,
//! queried with hickory's resolver (UDP, falling back to TCP as real
//! clients do) and, for the TC bit, with raw UDP messages.
//!
//! Instances are written with `etcd-client` as `Instance::encode()` values
//! under leases; DNS is served by one member on 127.0.0.1 port 0. Every
//! wait is bounded by [`WAIT`]: a change is awaited by polling the answer
//! until it shows, never slept for.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use muster_proto::registry::{DEFAULT_PREFIX, Health, Instance};
use muster_raft::RaftNode;
use muster_server::dns::{self, DnsConfig, DnsListener};
use muster_tests::{TestCluster, WAIT};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A DNS server on one member, and a resolver pointed at it.
struct Dns {
    addr: SocketAddr,
    resolver: TokioResolver,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl Dns {
    /// Serves DNS from `node` on 127.0.0.1, port 0.
    async fn start(node: Arc<RaftNode>, config: DnsConfig) -> Dns {
        let listener = DnsListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind DNS");
        let addr = listener.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(dns::serve(listener, node, config, async {
            let _ = stopped.await;
        }));
        Dns {
            addr,
            resolver: resolver(addr),
            stop,
            serving,
        }
    }

    /// The answer records to `name` `qtype`, or the error, uncached.
    async fn lookup(&self, name: &str, qtype: RecordType) -> Result<Vec<Record>, NetError> {
        Ok(self.lookup_full(name, qtype).await?.answers().to_vec())
    }

    /// The whole lookup (answers and additionals), uncached.
    async fn lookup_full(
        &self,
        name: &str,
        qtype: RecordType,
    ) -> Result<hickory_resolver::lookup::Lookup, NetError> {
        self.resolver.clear_cache();
        tokio::time::timeout(WAIT, self.resolver.lookup(name, qtype))
            .await
            .expect("a DNS answer in time")
    }

    /// Asks `name` `qtype` until `done` holds for the answer, within
    /// [`WAIT`]; the last answer.
    async fn until(
        &self,
        name: &str,
        qtype: RecordType,
        done: impl Fn(&Result<Vec<Record>, NetError>) -> bool,
    ) -> Result<Vec<Record>, NetError> {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.lookup(name, qtype).await;
            if done(&answer) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "{name} {qtype} did not change as expected within {WAIT:?}; last: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and checks that it returns in time, cleanly.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.serving)
            .await
            .expect("DNS stops in time")
            .expect("DNS task")
            .expect("DNS stops without error");
    }
}

/// A resolver asking only `addr`, over UDP and (for truncated answers)
/// TCP, without search domains.
fn resolver(addr: SocketAddr) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(2);
    options.attempts = 3;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .expect("resolver")
}

/// The records' data as text, sorted.
fn sorted(records: &[Record]) -> Vec<String> {
    let mut data: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    data
}

/// The response code and SOA minimum of a negative answer.
fn negative(answer: &Result<Vec<Record>, NetError>) -> Option<(ResponseCode, Option<u32>)> {
    match answer {
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Some((
            none.response_code,
            none.soa.as_ref().map(|soa| soa.data.minimum),
        )),
        _ => None,
    }
}

/// Puts `instance` under a new lease of `ttl` seconds; the lease.
async fn register(client: &mut Client, instance: &Instance, ttl: i64) -> i64 {
    let lease = client.lease_grant(ttl, None).await.expect("grant").id();
    client
        .put(
            instance.key(DEFAULT_PREFIX),
            instance.encode().expect("a valid instance"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
    lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_dns_answers_passing_instances_srv_tags_and_nxdomain() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    // Served by a follower: the answers come from its own applied state.
    let follower = cluster.follower().await;
    let config = DnsConfig {
        ttl: 7,
        negative_ttl: 11,
        ..DnsConfig::default()
    };
    let dns = Dns::start(cluster.node(follower), config).await;
    let mut client = cluster.client(leader).await;

    let a = Instance {
        tags: vec!["v2".to_string()],
        weight: 3,
        ..Instance::new("api", "a", "10.0.0.1:8080")
    };
    let b = Instance {
        health: Health::Critical,
        tags: vec!["v2".to_string()],
        ..Instance::new("api", "b", "10.0.0.2:8080")
    };
    let c = Instance {
        weight: 5,
        ..Instance::new("api", "c", "[fd00::3]:9090")
    };
    let d = Instance {
        health: Health::Warning,
        ..Instance::new("api", "d", "10.0.0.4:8080")
    };
    let lease_a = register(&mut client, &a, 60).await;
    for instance in [&b, &c, &d] {
        register(&mut client, instance, 60).await;
    }

    // A: only the passing IPv4 instance (b is critical, d warning).
    let answer = dns
        .until("api.service.muster.", RecordType::A, |answer| {
            answer.as_ref().is_ok_and(|records| !records.is_empty())
        })
        .await
        .expect("A answer");
    assert_eq!(sorted(&answer), ["10.0.0.1"]);
    assert_eq!(answer[0].ttl, 7, "--dns-ttl");
    // Case does not matter.
    let answer = dns.lookup("API.Service.MUSTER.", RecordType::A).await;
    assert_eq!(sorted(&answer.expect("A answer")), ["10.0.0.1"]);
    let answer = dns.lookup("api.service.muster.", RecordType::AAAA).await;
    assert_eq!(sorted(&answer.expect("AAAA answer")), ["fd00::3"]);

    // SRV: one per passing instance, with the targets' addresses in the
    // additional section; the targets answer A/AAAA themselves.
    let srv = dns
        .lookup_full("_api._tcp.service.muster.", RecordType::SRV)
        .await
        .expect("SRV answer");
    assert_eq!(
        sorted(srv.answers()),
        [
            "1 3 8080 0a000001.addr.muster.",
            "1 5 9090 fd000000000000000000000000000003.addr.muster.",
        ]
    );
    let additional: BTreeSet<(String, String)> = srv
        .additionals()
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .map(|r| (r.name.to_string(), r.data.to_string()))
        .collect();
    assert_eq!(
        additional,
        BTreeSet::from([
            ("0a000001.addr.muster.".to_string(), "10.0.0.1".to_string()),
            (
                "fd000000000000000000000000000003.addr.muster.".to_string(),
                "fd00::3".to_string()
            ),
        ])
    );
    for record in srv.answers() {
        let RData::SRV(srv) = &record.data else {
            panic!("not an SRV record: {record:?}")
        };
        let target = srv.target.to_string();
        let qtype = if target.starts_with("fd") {
            RecordType::AAAA
        } else {
            RecordType::A
        };
        let address = dns
            .lookup(&target, qtype)
            .await
            .expect("the target answers");
        assert_eq!(address.len(), 1, "{target}");
    }

    // Tags filter: b carries v2 but is critical.
    let answer = dns.lookup("v2.api.service.muster.", RecordType::A).await;
    assert_eq!(sorted(&answer.expect("tagged A answer")), ["10.0.0.1"]);
    let answer = dns
        .lookup("_api._v2.service.muster.", RecordType::SRV)
        .await;
    assert_eq!(
        sorted(&answer.expect("tagged SRV answer")),
        ["1 3 8080 0a000001.addr.muster."]
    );
    let untagged = dns.lookup("v9.api.service.muster.", RecordType::A).await;
    assert_eq!(
        negative(&untagged),
        Some((ResponseCode::NXDomain, Some(11))),
        "{untagged:?}"
    );

    // An unknown service: NXDOMAIN with the SOA minimum (--dns-negative-ttl).
    let unknown = dns.lookup("db.service.muster.", RecordType::A).await;
    assert_eq!(
        negative(&unknown),
        Some((ResponseCode::NXDomain, Some(11))),
        "{unknown:?}"
    );
    // A known service without a record of the type: NODATA.
    let nodata = dns.lookup("api.service.muster.", RecordType::TXT).await;
    assert_eq!(
        negative(&nodata),
        Some((ResponseCode::NoError, Some(11))),
        "{nodata:?}"
    );
    // Outside the domain: refused.
    let outside = dns.lookup("example.com.", RecordType::A).await;
    assert!(
        matches!(
            &outside,
            Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)))
        ),
        "{outside:?}"
    );

    // Answers rotate: three passing instances, three queries, three
    // different first answers.
    let e = Instance::new("api", "e", "10.0.0.5:8080");
    let f = Instance::new("api", "f", "10.0.0.6:8080");
    register(&mut client, &e, 60).await;
    register(&mut client, &f, 60).await;
    dns.until("api.service.muster.", RecordType::A, |answer| {
        answer.as_ref().is_ok_and(|records| records.len() == 3)
    })
    .await
    .expect("three addresses");
    // (Raw queries: each is exactly one query to the server, where a
    // resolver may send one over UDP and TCP at once.)
    let mut query = Message::query();
    let name = Name::from_ascii("api.service.muster.").expect("name");
    query.add_query(Query::query(name, RecordType::A));
    let mut firsts = BTreeSet::new();
    for _ in 0..3 {
        let response = udp_query(dns.addr, &query).await;
        assert_eq!(response.answers.len(), 3);
        firsts.insert(response.answers[0].data.to_string());
    }
    assert_eq!(firsts.len(), 3, "the first answer rotates: {firsts:?}");

    // A revoked lease takes its instance out of the answers.
    client.lease_revoke(lease_a).await.expect("revoke");
    let answer = dns
        .until("api.service.muster.", RecordType::A, |answer| {
            answer
                .as_ref()
                .is_ok_and(|records| !sorted(records).contains(&"10.0.0.1".to_string()))
        })
        .await
        .expect("A answer");
    assert_eq!(sorted(&answer), ["10.0.0.5", "10.0.0.6"]);
    let srv = dns
        .lookup("_api._tcp.service.muster.", RecordType::SRV)
        .await;
    assert!(
        !sorted(&srv.expect("SRV answer"))
            .iter()
            .any(|s| s.contains("0a000001")),
        "a's SRV record is gone"
    );
    // With a gone, no instance carries v2 but the critical b: NODATA.
    let tagged = dns.lookup("v2.api.service.muster.", RecordType::A).await;
    assert_eq!(
        negative(&tagged),
        Some((ResponseCode::NoError, Some(11))),
        "{tagged:?}"
    );

    dns.stop().await;
    cluster.shutdown().await;
}

/// Sends `query` to `addr` over UDP; the response.
async fn udp_query(addr: SocketAddr, query: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket
        .send_to(&query.to_vec().expect("encode"), addr)
        .await
        .expect("send");
    let mut buffer = vec![0; 65535];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("a response in time")
        .expect("receive");
    Message::from_vec(&buffer[..n]).expect("a DNS message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let cluster = TestCluster::start(1).await;
    let dns = Dns::start(cluster.node(0), DnsConfig::default()).await;
    let mut client = cluster.client(0).await;
    // 100 instances in one txn: about 1.7 KB of A records.
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let puts: Vec<TxnOp> = (1..=100)
        .map(|i| {
            let instance = Instance::new("big", format!("i{i}"), format!("10.1.0.{i}:80"));
            TxnOp::put(
                instance.key(DEFAULT_PREFIX),
                instance.encode().expect("valid"),
                Some(PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    client
        .txn(Txn::new().and_then(puts))
        .await
        .expect("register 100 instances");

    let name = Name::from_ascii("big.service.muster.").expect("name");
    // Without EDNS a UDP answer is at most 512 bytes: cut, with TC set.
    let mut query = Message::query();
    query.add_query(Query::query(name.clone(), RecordType::A));
    query.metadata.recursion_desired = true;
    let response = udp_query(dns.addr, &query).await;
    assert!(response.metadata.truncation, "TC is set");
    assert!(response.answers.len() < 100, "{}", response.answers.len());
    // With an EDNS buffer of 4096 bytes it fits whole.
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    query.set_edns(edns);
    let response = udp_query(dns.addr, &query).await;
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 100);
    assert!(response.edns.is_some(), "EDNS is answered with EDNS");

    // The resolver (EDNS 1232 bytes) sees TC and asks again over TCP.
    let answer = dns.lookup("big.service.muster.", RecordType::A).await;
    let addresses: BTreeSet<IpAddr> = answer
        .expect("A answer")
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(addresses.len(), 100);

    dns.stop().await;
    cluster.shutdown().await;
}
