//! From etcd-client's bytes to muster-core and back: requests built and
//! encoded by the `etcd-client` crate are decoded with muster-proto,
//! converted to core types, validated and applied to a `Store`; the core's
//! responses and events are converted back, encoded, and decoded by
//! etcd-client, and their fields checked against what etcd answers for the
//! same sequence on an empty store. This is the server's request path
//! without the network.

use etcd_client::proto as ec;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use muster_core::{Command, Response, Store, validate};
use muster_proto::convert::ConvertError;
use muster_proto::etcdserverpb as pb;
use muster_proto::mvccpb;
use prost::Message;

/// A store with the server's request path in front of it.
#[derive(Default)]
struct Member {
    store: Store,
    index: u64,
    /// Events of the last write, as they would go to watchers.
    events: Vec<mvccpb::Event>,
}

impl Member {
    fn write(&mut self, command: Command) -> Result<Response, ConvertError> {
        validate::check_command(&command, 128)?;
        self.index += 1;
        let applied = self.store.apply(self.index, command)?;
        self.events = applied.events.into_iter().map(Into::into).collect();
        Ok(applied.response)
    }

    fn put(&mut self, wire: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let req = pb::PutRequest::decode(wire).expect("decode put");
        let Response::Put(resp) = self.write(Command::Put(req.into()))? else {
            panic!("not a put")
        };
        Ok(pb::PutResponse::from(resp).encode_to_vec())
    }

    fn range(&mut self, wire: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let req = pb::RangeRequest::decode(wire).expect("decode range");
        let resp = self.store.range(&req.try_into()?)?;
        Ok(pb::RangeResponse::from(resp).encode_to_vec())
    }

    fn delete(&mut self, wire: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let req = pb::DeleteRangeRequest::decode(wire).expect("decode delete");
        let Response::DeleteRange(resp) = self.write(Command::DeleteRange(req.into()))? else {
            panic!("not a delete")
        };
        Ok(pb::DeleteRangeResponse::from(resp).encode_to_vec())
    }

    fn txn(&mut self, wire: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let req = pb::TxnRequest::decode(wire).expect("decode txn");
        let Response::Txn(resp) = self.write(Command::Txn(req.try_into()?))? else {
            panic!("not a txn")
        };
        Ok(pb::TxnResponse::from(resp).encode_to_vec())
    }
}

fn put_wire(key: &str, value: &str, options: PutOptions) -> Vec<u8> {
    let mut req: ec::PbPutRequest = options.into();
    req.key = key.as_bytes().to_vec();
    req.value = value.as_bytes().to_vec();
    req.encode_to_vec()
}

fn get_wire(key: &str, options: GetOptions) -> Vec<u8> {
    let mut req: ec::PbRangeRequest = options.into();
    req.key = key.as_bytes().to_vec();
    req.encode_to_vec()
}

fn revision(header: Option<ec::PbResponseHeader>) -> i64 {
    header.expect("a header").revision
}

#[test]
fn puts_answer_revisions_and_prev_kv_as_etcd() {
    let mut m = Member::default();
    let first = ec::PbPutResponse::decode(
        &m.put(&put_wire("k", "v1", PutOptions::new().with_prev_key()))
            .unwrap()[..],
    )
    .expect("etcd-client decodes");
    assert_eq!(revision(first.header), 2);
    assert!(first.prev_kv.is_none());
    let second = ec::PbPutResponse::decode(
        &m.put(&put_wire("k", "v2", PutOptions::new().with_prev_key()))
            .unwrap()[..],
    )
    .expect("etcd-client decodes");
    assert_eq!(revision(second.header), 3);
    let prev = second.prev_kv.expect("prev_kv");
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (&b"v1"[..], 2, 1)
    );
}

#[test]
fn ranges_honour_etcd_client_options() {
    let mut m = Member::default();
    for (k, v) in [
        ("/svc/a", "3"),
        ("/svc/b", "1"),
        ("/svc/c", "2"),
        ("/other", "x"),
    ] {
        m.put(&put_wire(k, v, PutOptions::new())).unwrap();
    }
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Value, SortOrder::Descend)
        .with_limit(2);
    let resp = ec::PbRangeResponse::decode(&m.range(&get_wire("/svc/", options)).unwrap()[..])
        .expect("decode");
    let keys: Vec<&[u8]> = resp.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"/svc/a"[..], b"/svc/c"]);
    assert_eq!((resp.count, resp.more, revision(resp.header)), (3, true, 5));

    // etcd-client sends sort (key, ascend) as NONE, as Go's clientv3 does.
    let options = GetOptions::new()
        .with_all_keys()
        .with_sort(SortTarget::Key, SortOrder::Ascend)
        .with_keys_only();
    let resp = ec::PbRangeResponse::decode(&m.range(&get_wire("\0", options)).unwrap()[..])
        .expect("decode");
    assert_eq!(resp.count, 4);
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(resp.kvs[0].key, b"/other");

    let resp = ec::PbRangeResponse::decode(
        &m.range(&get_wire(
            "/svc/",
            GetOptions::new().with_prefix().with_count_only(),
        ))
        .unwrap()[..],
    )
    .expect("decode");
    assert_eq!((resp.count, resp.kvs.len()), (3, 0));
}

#[test]
fn txns_built_by_etcd_client_run_with_etcd_headers() {
    let mut m = Member::default();
    m.put(&put_wire("lock", "owner-1", PutOptions::new()))
        .unwrap();
    let nested = Txn::new()
        .when([Compare::version("missing", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("inner", "x", None)]);
    let txn: ec::PbTxnRequest = Txn::new()
        .when([Compare::value("lock", CompareOp::Equal, "owner-1")])
        .and_then([
            TxnOp::put("lock", "owner-2", Some(PutOptions::new().with_prev_key())),
            TxnOp::txn(nested),
            TxnOp::get("lock", None),
        ])
        .or_else([TxnOp::get("lock", None)])
        .into();
    let resp =
        ec::PbTxnResponse::decode(&m.txn(&txn.encode_to_vec()).unwrap()[..]).expect("decode");
    assert!(resp.succeeded);
    assert_eq!(revision(resp.header), 3);
    assert_eq!(resp.responses.len(), 3);
    let Some(ec::PbTxnOpResponse::ResponsePut(put)) = &resp.responses[0].response else {
        panic!("not a put")
    };
    assert_eq!(
        put.prev_kv.as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"owner-1"[..])
    );
    let Some(ec::PbTxnOpResponse::ResponseTxn(inner)) = &resp.responses[1].response else {
        panic!("not a txn")
    };
    // A nested txn's header is present and zero, as etcd sends it.
    assert_eq!(inner.header.as_ref().map(|h| h.revision), Some(0));
    assert!(inner.succeeded);
    let Some(ec::PbTxnOpResponse::ResponseRange(get)) = &resp.responses[2].response else {
        panic!("not a get")
    };
    assert_eq!(get.kvs[0].value, b"owner-2");
    assert_eq!(revision(get.header), 3);

    // Both puts of the txn are events at one revision, in op order.
    let events: Vec<(i32, &[u8], i64)> = m
        .events
        .iter()
        .map(|e| {
            (
                e.r#type,
                e.kv.as_ref().map_or(&b""[..], |kv| &kv.key[..]),
                e.kv.as_ref().map_or(0, |kv| kv.mod_revision),
            )
        })
        .collect();
    assert_eq!(events, [(0, &b"lock"[..], 3), (0, &b"inner"[..], 3)]);
}

#[test]
fn events_decode_with_etcd_client_types() {
    let mut m = Member::default();
    m.put(&put_wire("k", "v1", PutOptions::new())).unwrap();
    m.delete(&{
        let mut req: ec::PbDeleteRequest = DeleteOptions::new().with_prev_key().into();
        req.key = b"k".to_vec();
        req.encode_to_vec()
    })
    .unwrap();
    let event = ec::PbEvent::decode(&m.events[0].encode_to_vec()[..]).expect("decode event");
    assert_eq!(event.r#type, 1, "a DELETE event");
    let kv = event.kv.expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.mod_revision, kv.version),
        (&b"k"[..], 3, 0)
    );
    assert_eq!(event.prev_kv.map(|p| p.value), Some(b"v1".to_vec()));
}

#[test]
fn bad_requests_get_etcds_errors() {
    let mut m = Member::default();
    let mut bad_sort: ec::PbRangeRequest = GetOptions::new().into();
    bad_sort.key = b"k".to_vec();
    bad_sort.sort_order = 7;
    assert_eq!(
        m.range(&bad_sort.encode_to_vec()).unwrap_err().to_string(),
        "etcdserver: invalid sort option"
    );
    assert_eq!(
        m.put(&put_wire("", "v", PutOptions::new()))
            .unwrap_err()
            .to_string(),
        "etcdserver: key is not provided"
    );
    let empty_op = ec::PbTxnRequest {
        success: vec![ec::PbTxnRequestOp { request: None }],
        ..Default::default()
    };
    assert_eq!(
        m.txn(&empty_op.encode_to_vec()).unwrap_err().to_string(),
        "etcdserver: key not found"
    );
    let dup: ec::PbTxnRequest = Txn::new()
        .and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])
        .into();
    assert_eq!(
        m.txn(&dup.encode_to_vec()).unwrap_err().to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    let leased = put_wire("k", "v", PutOptions::new().with_lease(404));
    assert_eq!(
        m.put(&leased).unwrap_err().to_string(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(m.store.revision(), 1, "nothing was written");
}
