//! Output: etcdctl's simple text, JSON and bordered tables.
//!
//! Invariants: keys and values are written as raw bytes in simple output
//! (never lossily re-encoded); in JSON they are base64, as Go's
//! `encoding/json` writes `[]byte`. JSON objects use etcdctl's field names
//! (`header.cluster_id`, `kvs[].create_revision`, `members[].peerURLs`, ...)
//! and omit zero-valued fields, as the `omitempty` tags of etcd's Go types do.
//! Each response is one line of JSON.

use std::io::Write;

use base64::Engine;
use muster_proto::etcdserverpb as pb;
use muster_proto::mvccpb;
use serde_json::{Map, Value, json};

/// The `-w/--write-out` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WriteOut {
    /// etcdctl's plain text.
    Simple,
    /// One JSON object per response.
    Json,
    /// Bordered tables (list-like commands; others print simple output).
    Table,
}

/// Writes `bytes` to stdout (a closed pipe is not an error worth reporting).
pub(crate) fn out(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

/// Writes `line` and a newline to stdout.
pub(crate) fn line(line: impl AsRef<[u8]>) {
    let mut buffer = line.as_ref().to_vec();
    buffer.push(b'\n');
    out(&buffer);
}

/// Writes `value` as one line of JSON.
pub(crate) fn json_line(value: &Value) {
    line(value.to_string());
}

/// Writes a response as `-w json` (`json` builds the object) or in the
/// simple format (`simple` appends it to a buffer written at once).
pub(crate) fn response(
    json_wanted: bool,
    json: impl FnOnce() -> Value,
    simple: impl FnOnce(&mut Vec<u8>),
) {
    if json_wanted {
        json_line(&json());
    } else {
        let mut buffer = Vec::new();
        simple(&mut buffer);
        out(&buffer);
    }
}

/// Appends a key-value pair as etcdctl's `printKV` does: the key (unless
/// only values are wanted), then the value, each on its own line.
pub(crate) fn simple_kv(buffer: &mut Vec<u8>, kv: &mvccpb::KeyValue, value_only: bool) {
    if !value_only {
        buffer.extend_from_slice(&kv.key);
        buffer.push(b'\n');
    }
    buffer.extend_from_slice(&kv.value);
    buffer.push(b'\n');
}

/// Bytes as Go's `encoding/json` writes `[]byte`: standard base64.
pub(crate) fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// An object builder that leaves out zero values (Go's `omitempty`).
#[derive(Default)]
pub(crate) struct Object(Map<String, Value>);

impl Object {
    /// Adds an integer unless it is zero.
    pub(crate) fn int(mut self, name: &str, value: impl Into<i128>) -> Self {
        let value = value.into();
        if value != 0 {
            let value = if value < 0 {
                json!(value as i64)
            } else {
                json!(value as u64)
            };
            self.0.insert(name.into(), value);
        }
        self
    }
    /// Adds a boolean unless it is false.
    pub(crate) fn flag(mut self, name: &str, value: bool) -> Self {
        if value {
            self.0.insert(name.into(), Value::Bool(true));
        }
        self
    }
    /// Adds bytes as base64 unless empty.
    pub(crate) fn bytes(mut self, name: &str, value: &[u8]) -> Self {
        if !value.is_empty() {
            self.0.insert(name.into(), base64(value));
        }
        self
    }
    /// Adds a string unless empty.
    pub(crate) fn text(mut self, name: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(name.into(), Value::String(value.into()));
        }
        self
    }
    /// Adds a value unless it is `None`, null or an empty array.
    pub(crate) fn value(mut self, name: &str, value: Option<Value>) -> Self {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.is_empty() => {}
            Some(value) => {
                self.0.insert(name.into(), value);
            }
        }
        self
    }
    /// Adds a value as is (no omission).
    pub(crate) fn always(mut self, name: &str, value: Value) -> Self {
        self.0.insert(name.into(), value);
        self
    }
    /// Adds every field of another object (Go's embedded structs).
    pub(crate) fn embed(mut self, other: Value) -> Self {
        if let Value::Object(fields) = other {
            self.0.extend(fields);
        }
        self
    }
    /// The finished object.
    pub(crate) fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// `pb.ResponseHeader` as JSON.
pub(crate) fn header(header: Option<&pb::ResponseHeader>) -> Option<Value> {
    let header = header?;
    Some(
        Object::default()
            .int("cluster_id", header.cluster_id)
            .int("member_id", header.member_id)
            .int("revision", header.revision)
            .int("raft_term", header.raft_term)
            .build(),
    )
}

/// `mvccpb.KeyValue` as JSON.
pub(crate) fn key_value(kv: &mvccpb::KeyValue) -> Value {
    Object::default()
        .bytes("key", &kv.key)
        .int("create_revision", kv.create_revision)
        .int("mod_revision", kv.mod_revision)
        .int("version", kv.version)
        .bytes("value", &kv.value)
        .int("lease", kv.lease)
        .build()
}

fn key_values(kvs: &[mvccpb::KeyValue]) -> Option<Value> {
    Some(Value::Array(kvs.iter().map(key_value).collect()))
}

/// `RangeResponse` as JSON.
pub(crate) fn range(response: &pb::RangeResponse) -> Value {
    Object::default()
        .value("header", header(response.header.as_ref()))
        .value("kvs", key_values(&response.kvs))
        .flag("more", response.more)
        .int("count", response.count)
        .build()
}

/// `PutResponse` as JSON.
pub(crate) fn put(response: &pb::PutResponse) -> Value {
    Object::default()
        .value("header", header(response.header.as_ref()))
        .value("prev_kv", response.prev_kv.as_ref().map(key_value))
        .build()
}

/// `DeleteRangeResponse` as JSON.
pub(crate) fn delete(response: &pb::DeleteRangeResponse) -> Value {
    Object::default()
        .value("header", header(response.header.as_ref()))
        .int("deleted", response.deleted)
        .value("prev_kvs", key_values(&response.prev_kvs))
        .build()
}

/// `TxnResponse` as JSON (each response wrapped as Go wraps a oneof:
/// `{"Response":{"response_put":{...}}}`).
pub(crate) fn txn(response: &pb::TxnResponse) -> Value {
    use pb::response_op::Response;
    let responses = response
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(Response::ResponseRange(r)) => json!({ "response_range": range(r) }),
                Some(Response::ResponsePut(r)) => json!({ "response_put": put(r) }),
                Some(Response::ResponseDeleteRange(r)) => {
                    json!({ "response_delete_range": delete(r) })
                }
                Some(Response::ResponseTxn(r)) => json!({ "response_txn": txn(r) }),
                None => Value::Null,
            };
            json!({ "Response": inner })
        })
        .collect();
    Object::default()
        .value("header", header(response.header.as_ref()))
        .flag("succeeded", response.succeeded)
        .value("responses", Some(Value::Array(responses)))
        .build()
}

/// `mvccpb.Event` as JSON (`type` omitted for PUT, which is zero).
pub(crate) fn event(event: &mvccpb::Event) -> Value {
    Object::default()
        .int("type", event.r#type)
        .value("kv", event.kv.as_ref().map(key_value))
        .value("prev_kv", event.prev_kv.as_ref().map(key_value))
        .build()
}

/// `Member` as JSON (etcd's field names: `ID`, `peerURLs`, ...).
pub(crate) fn member(member: &pb::Member) -> Value {
    Object::default()
        .int("ID", member.id)
        .text("name", &member.name)
        .value("peerURLs", Some(json!(member.peer_ur_ls)))
        .value("clientURLs", Some(json!(member.client_ur_ls)))
        .flag("isLearner", member.is_learner)
        .build()
}

/// A list of members as JSON.
pub(crate) fn members(members: &[pb::Member]) -> Option<Value> {
    Some(Value::Array(members.iter().map(member).collect()))
}

/// `StatusResponse` as JSON.
pub(crate) fn status(response: &pb::StatusResponse) -> Value {
    Object::default()
        .value("header", header(response.header.as_ref()))
        .text("version", &response.version)
        .int("dbSize", response.db_size)
        .int("leader", response.leader)
        .int("raftIndex", response.raft_index)
        .int("raftTerm", response.raft_term)
        .int("raftAppliedIndex", response.raft_applied_index)
        .value("errors", Some(json!(response.errors)))
        .int("dbSizeInUse", response.db_size_in_use)
        .flag("isLearner", response.is_learner)
        .build()
}

/// Bytes as go-humanize's `Bytes` prints them (SI units: `20 kB`, `1.2 MB`).
pub(crate) fn human_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let exponent = ((size as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = (size as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// A bordered table as etcdctl's tablewriter draws it: centred headers,
/// right-aligned cells.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut text = border.clone();
    for (header, width) in headers.iter().zip(&widths) {
        let pad = width - header.chars().count();
        let left = pad / 2;
        text += &format!(
            "| {}{}{} ",
            " ".repeat(left),
            header,
            " ".repeat(pad - left)
        );
    }
    text += "|\n";
    text += &border;
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            text += &format!("| {cell:>width$} ");
        }
        text += "|\n";
    }
    text += &border;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_go_humanize_prints_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(82), "82 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
    }

    #[test]
    fn zero_fields_are_omitted_and_the_order_is_etcds() {
        let kv = mvccpb::KeyValue {
            key: "a".into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: "".into(),
            lease: 0,
        };
        assert_eq!(
            key_value(&kv).to_string(),
            r#"{"key":"YQ==","create_revision":2,"mod_revision":2,"version":1}"#
        );
    }

    #[test]
    fn tables_centre_headers_and_right_align_cells() {
        let text = table(&["ENDPOINT", "ID"], &[vec!["a:1".into(), "abc".into()]]);
        assert_eq!(
            text,
            "+----------+-----+\n\
             | ENDPOINT | ID  |\n\
             +----------+-----+\n\
             |      a:1 | abc |\n\
             +----------+-----+\n"
        );
    }
}
