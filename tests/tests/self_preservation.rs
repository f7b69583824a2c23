//! Self-preservation on an in-process 3-member cluster through
//! `etcd-client`: 30 services registered as lease-attached keys, each kept
//! alive over its own keep-alive stream.
//!
//! - A third of them cut off at once (their keep-alives stop together, as
//!   behind a partition) triggers it: the leader's `Status.errors` shows it
//!   and the `muster_server_self_preservation` gauge is 1; the keys of the
//!   held leases (all but the at most ⌊0.15 × 30⌋ = 4 that expired before
//!   the threshold was crossed) are not deleted while it lasts, a held
//!   lease that renews lives on, and once the bound passes the rest are
//!   revoked.
//! - Renewals of the held leases end it before the bound; the one that did
//!   not renew is then revoked.
//! - Ordinary churn (services stopping one at a time) never triggers it,
//!   and each stopped service's key goes when its lease expires.
//!
//! The lessor runs with a 5 s window and a 100 ms tick. Every wait is
//! bounded by [`WAIT`] or a tighter deadline; the only sleeps are the
//! services' keep-alive cadence and the pauses between polls of state that
//! has no event to await (the self-preservation status).

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use muster_server::lease::LeaseConfig;
use muster_server::metrics::{SELF_PRESERVATION, SELF_PRESERVATION_ENTERED};
use muster_server::preserve::{PreservationConfig, STATUS_PREFIX};
use muster_server::server::ClientApi;
use muster_tests::{TestCluster, Timings, WAIT};
use tokio::task::JoinHandle;

/// Etcd's timings: a 1 s election timeout makes the shortest TTL 2 s.
const TIMINGS: Timings = Timings {
    heartbeat_ms: 100,
    election_timeout_ms: 1000,
};

/// The services' lease TTL, in seconds.
const TTL: i64 = 3;

/// How often a service sends a keep-alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);

/// Services registered by each test.
const SERVICES: usize = 30;

/// The key prefix of the services.
const PREFIX: &str = "/registry/services/sp/";

/// How often a test polls the self-preservation status.
const POLL: Duration = Duration::from_millis(50);

/// Held by each test that enters self-preservation: the gauge is one per
/// process, so two such tests must not overlap.
static PRESERVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lease_config(max: Duration) -> LeaseConfig {
    LeaseConfig {
        tick: Duration::from_millis(100),
        self_preservation: PreservationConfig {
            enabled: true,
            threshold: 0.15,
            window: Duration::from_secs(5),
            max,
            min_leases: 10,
        },
        ..LeaseConfig::for_election_timeout(Duration::from_millis(TIMINGS.election_timeout_ms))
    }
}

/// Self-preservation bounded to 5 s.
const SHORT_BOUND: Duration = Duration::from_secs(5);

fn short_bound(api: ClientApi) -> ClientApi {
    api.with_lease_config(lease_config(SHORT_BOUND))
}

/// Self-preservation bounded to a minute: longer than any test waits.
fn long_bound(api: ClientApi) -> ClientApi {
    api.with_lease_config(lease_config(Duration::from_secs(60)))
}

/// A registered service: its lease, its key and the task keeping the lease
/// alive.
struct Service {
    lease: i64,
    key: String,
    keeper: JoinHandle<Result<(), String>>,
}

impl Service {
    /// Stops keeping the lease alive (the service is cut off or gone).
    fn stop(&self) {
        self.keeper.abort();
    }

    /// Panics if the keep-alive task ended: its lease was lost.
    async fn assert_alive(self) {
        if self.keeper.is_finished() {
            let outcome = self.keeper.await.expect("keeper not aborted");
            panic!("{}: its keep-alive ended: {outcome:?}", self.key);
        }
        self.keeper.abort();
    }
}

/// Keeps lease `id` alive through `client` every [`KEEP_ALIVE_EVERY`]
/// until aborted; an error when the lease is gone or the stream fails.
async fn keep_alive(mut client: Client, id: i64) -> Result<(), String> {
    let (mut keeper, mut responses) = client
        .lease_keep_alive(id)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(WAIT, responses.message())
            .await
            .map_err(|_| "no keep-alive answer in time".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the keep-alive stream ended")?;
        if response.ttl() <= 0 {
            return Err(format!("lease {id:x} is gone (TTL {})", response.ttl()));
        }
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
    }
}

/// Registers [`SERVICES`] services through `client`.
async fn register(client: &mut Client) -> Vec<Service> {
    let mut services = Vec::new();
    for n in 0..SERVICES {
        let lease = client.lease_grant(TTL, None).await.expect("grant").id();
        let key = format!("{PREFIX}{n:02}");
        client
            .put(
                key.as_str(),
                format!("{{\"Addr\":\"10.0.0.{n}:80\"}}"),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put");
        let keeper = tokio::spawn(keep_alive(client.clone(), lease));
        services.push(Service { lease, key, keeper });
    }
    services
}

/// How many service keys exist.
async fn keys(client: &mut Client) -> i64 {
    client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("get")
        .count()
}

/// Whether `key` exists.
async fn exists(client: &mut Client, key: &str) -> bool {
    client
        .get(key, Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .count()
        == 1
}

/// One client per member, for `Status`.
async fn member_clients(cluster: &TestCluster) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..cluster.size() {
        clients.push(cluster.client(i).await);
    }
    clients
}

/// The self-preservation line of the member that reports one (the
/// leader), if any.
async fn self_preservation(members: &mut [Client]) -> Option<String> {
    for client in members {
        let Ok(status) = client.status().await else {
            continue;
        };
        if let Some(line) = status
            .errors()
            .iter()
            .find(|e| e.starts_with(STATUS_PREFIX))
        {
            return Some(line.clone());
        }
    }
    None
}

/// Waits (bounded by [`WAIT`]) until self-preservation is (`true`) or is
/// no longer (`false`) reported; the line last seen.
async fn await_self_preservation(members: &mut [Client], on: bool) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let line = self_preservation(members).await;
        if line.is_some() == on {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "self-preservation still {} after {WAIT:?}",
            if on { "off" } else { "on" }
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded by `within`) until only `expected` service keys remain.
async fn await_keys(client: &mut Client, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = keys(client).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} service keys, not {expected}, after {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Most leases revoked before self-preservation begins: the expiries up to
/// the threshold, ⌊0.15 × 30⌋, are ordinary churn until the next one.
const REVOKED_BEFORE: usize = 4;

/// Cuts off the first ten services at once; waits until self-preservation
/// is reported and answers the services whose leases it holds (those of
/// the ten whose keys are still there: at least ten minus
/// [`REVOKED_BEFORE`]).
async fn cut_off_a_third<'a>(
    client: &mut Client,
    members: &mut [Client],
    services: &'a [Service],
) -> Vec<&'a Service> {
    for service in &services[..10] {
        service.stop();
    }
    let line = await_self_preservation(members, true)
        .await
        .expect("reported");
    assert!(line.contains("held"), "{line}");
    // Nothing is revoked while it lasts, so this is one state.
    let mut held = Vec::new();
    for service in &services[..10] {
        if exists(client, &service.key).await {
            held.push(service);
        }
    }
    assert!(
        held.len() >= 10 - REVOKED_BEFORE,
        "only {} of the 10 were held",
        held.len()
    );
    assert!(self_preservation(members).await.is_some(), "{line}");
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_cut_off_at_once_is_held_until_the_bound() {
    let _alone = PRESERVING.lock().await;
    let cluster = TestCluster::start_configured(3, TIMINGS, short_bound).await;
    let mut client = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    let mut members = member_clients(&cluster).await;
    let services = register(&mut client).await;
    assert_eq!(keys(&mut client).await, 30);
    assert_eq!(self_preservation(&mut members).await, None);
    let entered_before = SELF_PRESERVATION_ENTERED.get();

    let cut_at = Instant::now();
    let held = cut_off_a_third(&mut client, &mut members, &services).await;
    assert_eq!(SELF_PRESERVATION.get(), 1, "the gauge is up");
    assert!(SELF_PRESERVATION_ENTERED.get() > entered_before);
    let kept = i64::try_from(20 + held.len()).expect("small");

    // Two of the held services come back: their leases live again.
    let mut revived = Vec::new();
    for service in &held[..2] {
        let (mut keeper, mut responses) = client
            .lease_keep_alive(service.lease)
            .await
            .expect("a held lease renews");
        keeper.keep_alive().await.expect("send");
        let answer = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("answered in time")
            .expect("stream healthy")
            .expect("a response");
        assert_eq!(answer.ttl(), TTL, "a held lease renews with its TTL");
        revived.push(tokio::spawn(keep_alive(client.clone(), service.lease)));
    }

    // No key is deleted while it lasts (each count is checked only if
    // self-preservation was still reported after it was taken).
    let deadline = Instant::now() + WAIT;
    loop {
        let count = keys(&mut client).await;
        if self_preservation(&mut members).await.is_none() {
            break;
        }
        assert_eq!(count, kept, "a key was deleted during self-preservation");
        assert!(
            Instant::now() < deadline,
            "self-preservation outlived {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        cut_at.elapsed() >= SHORT_BOUND,
        "it ended after {:?}, before its bound",
        cut_at.elapsed()
    );
    assert_eq!(SELF_PRESERVATION.get(), 0, "the gauge is down");
    // Then the held leases that did not renew are revoked; the two that
    // did and the twenty kept alive stay.
    await_keys(&mut client, 22, WAIT).await;
    for service in &held[..2] {
        assert!(exists(&mut client, &service.key).await, "{}", service.key);
    }
    for keeper in revived {
        assert!(!keeper.is_finished(), "a revived lease was lost");
        keeper.abort();
    }
    for service in services.into_iter().skip(10) {
        service.assert_alive().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_the_held_leases_end_it_before_the_bound() {
    let _alone = PRESERVING.lock().await;
    let cluster = TestCluster::start_configured(3, TIMINGS, long_bound).await;
    let mut client = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    let mut members = member_clients(&cluster).await;
    let services = register(&mut client).await;
    let held = cut_off_a_third(&mut client, &mut members, &services).await;
    // The partition heals for all held services but one: they renew.
    let started = Instant::now();
    let (last, back) = held.split_last().expect("held leases");
    let mut revived = Vec::new();
    for service in back {
        revived.push(tokio::spawn(keep_alive(client.clone(), service.lease)));
    }
    await_self_preservation(&mut members, false).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended by the renewals after {:?}, not by the 60 s bound",
        started.elapsed()
    );
    // The one that did not renew is revoked.
    let kept = i64::try_from(20 + back.len()).expect("small");
    await_keys(&mut client, kept, WAIT).await;
    assert!(!exists(&mut client, &last.key).await);
    for keeper in revived {
        assert!(!keeper.is_finished(), "a revived lease was lost");
        keeper.abort();
    }
    for service in services.into_iter().skip(10) {
        service.assert_alive().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_churn_does_not_trigger_it() {
    let cluster = TestCluster::start_configured(3, TIMINGS, long_bound).await;
    let mut client = Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect");
    let mut members = member_clients(&cluster).await;
    let services = register(&mut client).await;
    // Services stop one at a time; each next one once the previous one's
    // key is gone (about a TTL apart: at most 2 expiries in the 5 s window,
    // under 15% of 30). Each key goes within its TTL plus a little, not
    // after the minute self-preservation would hold it.
    let on_time = Duration::from_secs(TTL.unsigned_abs()) + Duration::from_secs(5);
    for (stopped, service) in services[..4].iter().enumerate() {
        service.stop();
        let expected = i64::try_from(SERVICES - stopped - 1).expect("small");
        await_keys(&mut client, expected, on_time).await;
        assert!(!exists(&mut client, &service.key).await, "{}", service.key);
        assert_eq!(
            self_preservation(&mut members).await,
            None,
            "churn triggered self-preservation"
        );
    }
    for service in services.into_iter().skip(4) {
        service.assert_alive().await;
    }
    cluster.shutdown().await;
}
