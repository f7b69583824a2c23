//! The workload's pure parts: duration and endpoint parsing, the prefix
//! end, how errors are classified, and the defaults of `Config`.
//!
//! Invariants checked: a write is `fail` only when it certainly had no
//! effect (a connect error, or a refusal etcd answers before applying);
//! every read error is `fail`; everything else is `info`.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_check::history::OpKind;
use muster_workload::{
    CallError, Config, parse_duration, parse_endpoints, prefix_end, read_outcome, write_outcome,
};

#[test]
fn durations_parse_as_go_durations() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration(" 10us "), Ok(Duration::from_micros(10)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5x").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn endpoints_parse_named_or_bare() {
    let named = parse_endpoints("m1=http://127.0.0.1:23791, m2=127.0.0.1:23792").unwrap();
    assert_eq!(
        named,
        BTreeMap::from([
            ("m1".to_string(), "http://127.0.0.1:23791".to_string()),
            ("m2".to_string(), "http://127.0.0.1:23792".to_string()),
        ])
    );
    let bare = parse_endpoints("http://a:1,b:2,,https://c:3").unwrap();
    assert_eq!(
        bare,
        BTreeMap::from([
            ("m1".to_string(), "http://a:1".to_string()),
            ("m2".to_string(), "http://b:2".to_string()),
            ("m3".to_string(), "https://c:3".to_string()),
        ])
    );
    // A URL with a query string is still a bare URL.
    let query = parse_endpoints("http://a:1/?x=y").unwrap();
    assert_eq!(query["m1"], "http://a:1/?x=y");
    assert!(parse_endpoints("").is_err());
    assert!(parse_endpoints(" , ").is_err());
    assert!(parse_endpoints("a=http://x:1,a=http://y:2").is_err());
    assert!(parse_endpoints("=http://x:1").is_err());
    assert!(parse_endpoints("a=").is_err());
}

#[test]
fn prefix_end_is_etcds() {
    assert_eq!(prefix_end(b"/fault/"), b"/fault0".to_vec());
    assert_eq!(prefix_end(b"a"), b"b".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    assert_eq!(prefix_end(b""), vec![0]);
}

fn status(code: tonic::Code) -> CallError {
    CallError::Status(tonic::Status::new(code, "from the server"))
}

#[test]
fn only_certain_no_effect_writes_fail() {
    for code in [
        tonic::Code::InvalidArgument,
        tonic::Code::FailedPrecondition,
        tonic::Code::NotFound,
        tonic::Code::ResourceExhausted,
    ] {
        assert_eq!(write_outcome(&status(code)), OpKind::Fail, "{code:?}");
    }
    for code in [
        tonic::Code::Unavailable,
        tonic::Code::Unknown,
        tonic::Code::Internal,
        tonic::Code::Cancelled,
        tonic::Code::DeadlineExceeded,
        tonic::Code::Aborted,
    ] {
        assert_eq!(write_outcome(&status(code)), OpKind::Info, "{code:?}");
    }
    assert_eq!(
        write_outcome(&CallError::Timeout(Duration::from_secs(2))),
        OpKind::Info
    );
    assert_eq!(
        write_outcome(&CallError::Closed("stream ended".into())),
        OpKind::Info
    );
}

#[test]
fn a_connect_error_fails_a_write_and_a_broken_connection_does_not() {
    // What tonic's channel answers when it cannot connect: Unavailable with
    // the connector's error in the source chain.
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
    assert_eq!(connect.code(), tonic::Code::Unavailable);
    let connect = CallError::Status(connect);
    assert!(connect.is_connect_error());
    assert_eq!(write_outcome(&connect), OpKind::Fail);
    assert!(connect.to_string().contains("refused"), "{connect}");

    // The same code without a connect error (e.g. the connection broke
    // after sending): unknown.
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    let broken = CallError::Status(tonic::Status::from_error(Box::new(reset)));
    assert!(!broken.is_connect_error());
    assert_eq!(write_outcome(&broken), OpKind::Info);
    let unavailable = status(tonic::Code::Unavailable);
    assert!(!unavailable.is_connect_error());
    assert_eq!(write_outcome(&unavailable), OpKind::Info);
}

#[test]
fn every_read_error_fails() {
    assert_eq!(
        read_outcome(&status(tonic::Code::Unavailable)),
        OpKind::Fail
    );
    assert_eq!(
        read_outcome(&CallError::Timeout(Duration::from_secs(1))),
        OpKind::Fail
    );
    assert_eq!(read_outcome(&CallError::Closed("x".into())), OpKind::Fail);
}

#[test]
fn config_defaults() {
    let members = BTreeMap::from([("m1".to_string(), "http://127.0.0.1:2379".to_string())]);
    let config = Config::new(members, "/tmp/h.jsonl");
    assert_eq!(config.duration, Duration::from_secs(30));
    assert_eq!(config.clients, 8);
    assert_eq!(config.keys, 10);
    assert_eq!(config.prefix, "/fault/");
    assert_eq!(config.watchers, 3);
    assert_eq!(config.registrants, 2);
    assert_eq!(config.lease_ttl, 5);
    assert_eq!(config.election_timeout_ms, 1000);
    assert_eq!(config.request_timeout, Duration::from_secs(2));
    assert_eq!(config.final_timeout, Duration::from_secs(60));
    assert_eq!(config.seed, 1);
}

#[tokio::test]
async fn run_fails_when_no_member_answers() {
    // A port just freed: nothing listens there, so the workload cannot
    // start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("muster-workload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("h.jsonl");
    let members = BTreeMap::from([("m1".to_string(), format!("http://127.0.0.1:{port}"))]);
    let mut config = Config::new(members, &history);
    config.final_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_millis(200);
    let error = muster_workload::run(config).await.unwrap_err();
    assert!(
        error.to_string().contains("no member answered"),
        "{error:#}"
    );
    // The start record was written nonetheless.
    let records = muster_check::history::read(&history).unwrap();
    assert_eq!(records.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
