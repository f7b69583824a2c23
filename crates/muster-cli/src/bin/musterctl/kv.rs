//! Key-value commands: `get`, `put`, `del`, `txn`, `compaction`, `watch`.
//!
//! Invariants: a key range is built as etcdctl builds it — `--prefix` turns
//! `KEY` into `[KEY, prefix_end(KEY))`, `--from-key` into `[KEY, "\0")`, and
//! an empty key with either flag means every key (`["\0", "\0")`). A
//! transaction read from stdin has three sections separated by blank lines
//! (compares, success ops, failure ops); each op line is parsed with the
//! same flags as the command of that name, so `put k v --lease=1f` works in
//! a txn as it does on the command line. `watch` ends only on Ctrl-C, after
//! `--max-events` events, at `--timeout`, or when the server cancels it.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::mvccpb;
use tokio_stream::StreamExt;

use crate::output::{self, WriteOut};
use crate::session::Session;

/// Arguments of `get`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GetArgs {
    /// The key (or the start of the range).
    pub(crate) key: String,
    /// The end of the range [key, range_end).
    pub(crate) range_end: Option<String>,
    /// Get keys with matching prefix.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Get keys that are greater than or equal to the given key.
    #[arg(long)]
    pub(crate) from_key: bool,
    /// Specify the kv revision (0 = latest).
    #[arg(long, default_value_t = 0)]
    pub(crate) rev: i64,
    /// Maximum number of results (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub(crate) limit: i64,
    /// Get only the keys.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    pub(crate) count_only: bool,
    /// Only write values when using the "simple" output format.
    #[arg(long)]
    pub(crate) print_value_only: bool,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s", "L", "S"])]
    pub(crate) consistency: String,
    /// Order of results: ASCEND or DESCEND (ASCEND by default when --sort-by is set).
    #[arg(long, default_value = "", value_parser = parse_order)]
    pub(crate) order: String,
    /// Sort target: CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long, default_value = "", value_parser = parse_sort_target)]
    pub(crate) sort_by: String,
}

fn parse_order(text: &str) -> Result<String, String> {
    match text.to_ascii_uppercase().as_str() {
        order @ ("" | "ASCEND" | "DESCEND") => Ok(order.to_string()),
        _ => Err(format!("bad sort order {text:?}")),
    }
}

fn parse_sort_target(text: &str) -> Result<String, String> {
    match text.to_ascii_uppercase().as_str() {
        target @ ("" | "CREATE" | "KEY" | "MODIFY" | "VALUE" | "VERSION") => Ok(target.to_string()),
        _ => Err(format!("bad sort target {text:?}")),
    }
}

/// Arguments of `put`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PutArgs {
    /// The key.
    pub(crate) key: String,
    /// The value (read from stdin when omitted).
    pub(crate) value: Option<String>,
    /// Lease ID (in hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    pub(crate) lease: String,
    /// Return the previous key-value pair before modification.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long)]
    pub(crate) ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long)]
    pub(crate) ignore_lease: bool,
}

/// Arguments of `del`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DelArgs {
    /// The key (or the start of the range).
    pub(crate) key: String,
    /// The end of the range [key, range_end).
    pub(crate) range_end: Option<String>,
    /// Delete keys with matching prefix.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Delete keys that are greater than or equal to the given key.
    #[arg(long)]
    pub(crate) from_key: bool,
    /// Return deleted key-value pairs.
    #[arg(long)]
    pub(crate) prev_kv: bool,
}

/// Arguments of `txn`.
#[derive(Debug, Clone, Args)]
pub(crate) struct TxnArgs {
    /// Input the transaction in interactive mode (with prompts).
    #[arg(short, long)]
    pub(crate) interactive: bool,
}

/// Arguments of `compaction`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CompactionArgs {
    /// The revision to compact up to.
    pub(crate) revision: i64,
    /// Wait for the compaction to physically remove all old revisions.
    #[arg(long)]
    pub(crate) physical: bool,
}

/// Arguments of `watch`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WatchArgs {
    /// The key (or the start of the range).
    pub(crate) key: String,
    /// The end of the range [key, range_end).
    pub(crate) range_end: Option<String>,
    /// Watch on a prefix.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// Revision to start watching from (0 = the next one).
    #[arg(long, default_value_t = 0)]
    pub(crate) rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long)]
    pub(crate) prev_kv: bool,
    /// Exit after this many events (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_events: u64,
    /// Exit after this long (Go duration; unbounded when omitted).
    #[arg(long, value_parser = crate::parse_duration)]
    pub(crate) timeout: Option<Duration>,
}

/// The end of the range of keys that start with `prefix` (etcd's
/// `GetPrefixRangeEnd`).
pub(crate) use muster_proto::prefix_end;

/// The `(key, range_end)` a command addresses.
fn key_range(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> anyhow::Result<(Bytes, Bytes)> {
    if prefix && from_key {
        bail!("`--prefix` and `--from-key` cannot be set at the same time, choose one");
    }
    if range_end.is_some() && (prefix || from_key) {
        bail!(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
        );
    }
    let key = key.as_bytes();
    if prefix {
        if key.is_empty() {
            return Ok((Bytes::from_static(b"\0"), Bytes::from_static(b"\0")));
        }
        return Ok((Bytes::copy_from_slice(key), prefix_end(key).into()));
    }
    if from_key {
        let key = if key.is_empty() { b"\0" } else { key };
        return Ok((Bytes::copy_from_slice(key), Bytes::from_static(b"\0")));
    }
    Ok((
        Bytes::copy_from_slice(key),
        range_end
            .map(|e| Bytes::copy_from_slice(e.as_bytes()))
            .unwrap_or_default(),
    ))
}

/// Parses a lease ID as etcdctl prints it (hexadecimal).
pub(crate) fn parse_lease_id(text: &str) -> anyhow::Result<i64> {
    let text = text.trim_start_matches("0x");
    u64::from_str_radix(text, 16)
        .map(|id| id as i64)
        .map_err(|e| anyhow!("bad lease ID ({e}), expecting ID in Hex"))
}

fn range_request(args: &GetArgs) -> anyhow::Result<pb::RangeRequest> {
    use pb::range_request::{SortOrder, SortTarget};
    let (key, range_end) = key_range(
        &args.key,
        args.range_end.as_deref(),
        args.prefix,
        args.from_key,
    )?;
    let sort_target = match args.sort_by.as_str() {
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => SortTarget::Key,
    };
    let sort_order = match args.order.as_str() {
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        _ if !args.sort_by.is_empty() => SortOrder::Ascend,
        _ => SortOrder::None,
    };
    Ok(pb::RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev,
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        serializable: args.consistency.eq_ignore_ascii_case("s"),
        keys_only: args.keys_only,
        count_only: args.count_only,
        ..Default::default()
    })
}

fn put_request(args: &PutArgs) -> anyhow::Result<pb::PutRequest> {
    let value = match &args.value {
        Some(value) => value.clone(),
        None if args.ignore_value => String::new(),
        None => {
            let mut value = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut value)
                .context("reading the value from stdin")?;
            value.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    Ok(pb::PutRequest {
        key: Bytes::copy_from_slice(args.key.as_bytes()),
        value: value.into(),
        lease: parse_lease_id(&args.lease)?,
        prev_kv: args.prev_kv,
        ignore_value: args.ignore_value,
        ignore_lease: args.ignore_lease,
    })
}

fn delete_request(args: &DelArgs) -> anyhow::Result<pb::DeleteRangeRequest> {
    let (key, range_end) = key_range(
        &args.key,
        args.range_end.as_deref(),
        args.prefix,
        args.from_key,
    )?;
    Ok(pb::DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    })
}

fn simple_range(buffer: &mut Vec<u8>, response: &pb::RangeResponse, value_only: bool) {
    for kv in &response.kvs {
        output::simple_kv(buffer, kv, value_only);
    }
}

fn simple_put(buffer: &mut Vec<u8>, response: &pb::PutResponse) {
    buffer.extend_from_slice(b"OK\n");
    if let Some(prev) = &response.prev_kv {
        output::simple_kv(buffer, prev, false);
    }
}

fn simple_delete(buffer: &mut Vec<u8>, response: &pb::DeleteRangeResponse) {
    buffer.extend_from_slice(format!("{}\n", response.deleted).as_bytes());
    for kv in &response.prev_kvs {
        output::simple_kv(buffer, kv, false);
    }
}

/// `get`.
pub(crate) async fn get(session: &Session, args: GetArgs) -> anyhow::Result<()> {
    let request = range_request(&args)?;
    let mut kv = KvClient::new(session.channel().await?);
    let response = session.call(kv.range(request)).await?;
    let json = session.write_out == WriteOut::Json;
    if args.count_only && !json {
        output::line(response.count.to_string());
    } else {
        output::response(
            json,
            || output::range(&response),
            |buffer| simple_range(buffer, &response, args.print_value_only),
        );
    }
    Ok(())
}

/// `put`.
pub(crate) async fn put(session: &Session, args: PutArgs) -> anyhow::Result<()> {
    let request = put_request(&args)?;
    let mut kv = KvClient::new(session.channel().await?);
    let response = session.call(kv.put(request)).await?;
    output::response(
        session.write_out == WriteOut::Json,
        || output::put(&response),
        |buffer| simple_put(buffer, &response),
    );
    Ok(())
}

/// `del`.
pub(crate) async fn del(session: &Session, args: DelArgs) -> anyhow::Result<()> {
    let request = delete_request(&args)?;
    let mut kv = KvClient::new(session.channel().await?);
    let response = session.call(kv.delete_range(request)).await?;
    output::response(
        session.write_out == WriteOut::Json,
        || output::delete(&response),
        |buffer| simple_delete(buffer, &response),
    );
    Ok(())
}

/// `compaction`.
pub(crate) async fn compaction(session: &Session, args: CompactionArgs) -> anyhow::Result<()> {
    let mut kv = KvClient::new(session.channel().await?);
    let response = session
        .call(kv.compact(pb::CompactionRequest {
            revision: args.revision,
            physical: args.physical,
        }))
        .await?;
    match session.write_out {
        WriteOut::Json => output::json_line(
            &output::Object::default()
                .value("header", output::header(response.header.as_ref()))
                .build(),
        ),
        _ => output::line(format!("compacted revision {}", args.revision)),
    }
    Ok(())
}

/// One operation of a transaction, parsed with the flags of its command.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct TxnOpLine {
    #[command(subcommand)]
    op: TxnOp,
}

#[derive(Debug, Subcommand)]
enum TxnOp {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

/// Splits a line into words as a shell would (double and single quotes,
/// backslash escapes inside double quotes).
fn split_words(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some(other) => word.push(other),
                            None => bail!("unterminated quote in {line:?}"),
                        },
                        Some(other) => word.push(other),
                        None => bail!("unterminated quote in {line:?}"),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(other) => word.push(other),
                        None => bail!("unterminated quote in {line:?}"),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses one op line of a transaction (`put k v`, `get k --prefix`, ...).
fn parse_op(line: &str) -> anyhow::Result<pb::RequestOp> {
    use pb::request_op::Request;
    let words = split_words(line)?;
    let parsed = TxnOpLine::try_parse_from(&words)
        .map_err(|e| anyhow!("invalid txn request {line:?}: {}", e.kind()))?;
    let request = match parsed.op {
        TxnOp::Get(args) => Request::RequestRange(range_request(&args)?),
        TxnOp::Put(args) => {
            if args.value.is_none() && !args.ignore_value {
                bail!("invalid txn request {line:?}: put needs a key and a value");
            }
            Request::RequestPut(put_request(&args)?)
        }
        TxnOp::Del(args) => Request::RequestDeleteRange(delete_request(&args)?),
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// Parses one compare line as etcdctl does: `TARGET("KEY") OP "VALUE"` with
/// TARGET one of `ver`/`version`, `c`/`create`, `m`/`mod`, `val`/`value`,
/// `lease` (hex), OP one of `=`, `!=`, `<`, `>`.
fn parse_compare(line: &str) -> anyhow::Result<pb::Compare> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let malformed = || anyhow!("malformed comparison: {line}");
    let (target, rest) = line.trim().split_once('(').ok_or_else(malformed)?;
    let (key, rest) = rest.split_once(')').ok_or_else(malformed)?;
    let mut key = split_words(key)?;
    let mut rest = split_words(rest)?;
    if key.len() != 1 || rest.len() != 2 {
        return Err(malformed());
    }
    let value = rest.pop().unwrap_or_default();
    let op = rest.pop().unwrap_or_default();
    let key = key.pop().unwrap_or_default();
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => bail!("malformed comparison: {line}; invalid operator {op:?}"),
    };
    let number = || {
        value
            .parse::<i64>()
            .map_err(|e| anyhow!("malformed comparison: {line}; {e}"))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number()?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number()?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into()),
        ),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(parse_lease_id(&value)?),
        ),
        other => bail!("malformed comparison: {line}; invalid target {other:?}"),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: Bytes::new(),
        target_union: Some(union),
    })
}

/// Reads the three sections of a transaction from `input`.
pub(crate) fn read_txn(
    input: &mut dyn BufRead,
    interactive: bool,
) -> anyhow::Result<pb::TxnRequest> {
    fn section(
        input: &mut dyn BufRead,
        prompt: Option<&str>,
        mut parse: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(prompt) = prompt {
            output::line(prompt);
        }
        let mut line = String::new();
        loop {
            line.clear();
            if input
                .read_line(&mut line)
                .context("reading the transaction")?
                == 0
            {
                return Ok(());
            }
            let text = line.trim_end_matches(['\r', '\n']);
            if text.trim().is_empty() {
                return Ok(());
            }
            parse(text)?;
        }
    }
    let mut request = pb::TxnRequest::default();
    section(input, interactive.then_some("compares:"), |l| {
        request.compare.push(parse_compare(l)?);
        Ok(())
    })?;
    section(
        input,
        interactive.then_some("success requests (get, put, del):"),
        |l| {
            request.success.push(parse_op(l)?);
            Ok(())
        },
    )?;
    section(
        input,
        interactive.then_some("failure requests (get, put, del):"),
        |l| {
            request.failure.push(parse_op(l)?);
            Ok(())
        },
    )?;
    Ok(request)
}

/// `txn`.
pub(crate) async fn txn(session: &Session, args: TxnArgs) -> anyhow::Result<()> {
    let request = read_txn(&mut std::io::stdin().lock(), args.interactive)?;
    let mut kv = KvClient::new(session.channel().await?);
    let response = session.call(kv.txn(request)).await?;
    output::response(
        session.write_out == WriteOut::Json,
        || output::txn(&response),
        |buffer| simple_txn(buffer, &response),
    );
    Ok(())
}

fn simple_txn(buffer: &mut Vec<u8>, response: &pb::TxnResponse) {
    use pb::response_op::Response;
    buffer.extend_from_slice(if response.succeeded {
        b"SUCCESS\n"
    } else {
        b"FAILURE\n"
    });
    for op in &response.responses {
        buffer.push(b'\n');
        match &op.response {
            Some(Response::ResponseRange(r)) => simple_range(buffer, r, false),
            Some(Response::ResponsePut(r)) => simple_put(buffer, r),
            Some(Response::ResponseDeleteRange(r)) => simple_delete(buffer, r),
            Some(Response::ResponseTxn(r)) => simple_txn(buffer, r),
            None => buffer.extend_from_slice(b"unexpected empty response\n"),
        }
    }
}

fn simple_event(buffer: &mut Vec<u8>, event: &mvccpb::Event) {
    let kind = mvccpb::event::EventType::try_from(event.r#type)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    buffer.extend_from_slice(kind.as_bytes());
    buffer.push(b'\n');
    if let Some(prev) = &event.prev_kv {
        output::simple_kv(buffer, prev, false);
    }
    if let Some(kv) = &event.kv {
        output::simple_kv(buffer, kv, false);
    }
}

/// `watch`.
pub(crate) async fn watch(session: &Session, args: WatchArgs) -> anyhow::Result<()> {
    let bound = args.timeout;
    let watching = watch_until_done(session, args);
    match bound {
        // Reaching `--timeout` is a normal end, as `--max-events` is.
        Some(bound) => tokio::time::timeout(bound, watching)
            .await
            .unwrap_or(Ok(())),
        None => watching.await,
    }
}

async fn watch_until_done(session: &Session, args: WatchArgs) -> anyhow::Result<()> {
    use pb::watch_request::RequestUnion;
    let (key, range_end) = key_range(&args.key, args.range_end.as_deref(), args.prefix, false)?;
    let mut client = WatchClient::new(session.channel().await?);
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    requests
        .send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key,
                range_end,
                start_revision: args.rev,
                prev_kv: args.prev_kv,
                ..Default::default()
            })),
        })
        .await
        .map_err(|_| anyhow!("watch request stream closed"))?;
    let mut responses = session
        .call(client.watch(tokio_stream::wrappers::ReceiverStream::new(outgoing)))
        .await?;
    let mut seen = 0u64;
    loop {
        let response = tokio::select! {
            response = responses.next() => response,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let response = match response {
            Some(response) => response?,
            None => bail!("watch stream closed by the server"),
        };
        if response.canceled {
            let reason = if response.compact_revision > 0 {
                format!(
                    "etcdserver: mvcc: required revision has been compacted (compact revision {})",
                    response.compact_revision
                )
            } else if response.cancel_reason.is_empty() {
                "watch canceled".to_string()
            } else {
                response.cancel_reason.clone()
            };
            bail!("watch is canceled by the server: {reason}");
        }
        if response.events.is_empty() {
            continue;
        }
        let events = match args.max_events {
            0 => response.events.len(),
            max => response.events.len().min((max - seen) as usize),
        };
        match session.write_out {
            WriteOut::Json => output::json_line(
                &output::Object::default()
                    .value("Header", output::header(response.header.as_ref()))
                    .always(
                        "Events",
                        serde_json::Value::Array(
                            response.events[..events]
                                .iter()
                                .map(output::event)
                                .collect(),
                        ),
                    )
                    .always("CompactRevision", response.compact_revision.into())
                    .always("Canceled", response.canceled.into())
                    .always("Created", response.created.into())
                    .build(),
            ),
            _ => {
                let mut buffer = Vec::new();
                for event in &response.events[..events] {
                    simple_event(&mut buffer, event);
                }
                output::out(&buffer);
            }
        }
        seen += events as u64;
        // Keep `requests` alive until here: dropping it would end the
        // request stream and with it the watch.
        if args.max_events > 0 && seen >= args.max_events {
            drop(requests);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_increment_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn a_transaction_reads_compares_then_success_then_failure() {
        let text = "mod(\"key1\") > \"0\"\nval(\"key2\") = \"x y\"\n\nput key1 \"overwrote-key1\"\nget k --prefix\n\ndel key2\n";
        let request = read_txn(&mut text.as_bytes(), false).expect("parses");
        assert_eq!(request.compare.len(), 2);
        assert_eq!(request.success.len(), 2);
        assert_eq!(request.failure.len(), 1);
        let Some(pb::request_op::Request::RequestPut(put)) = &request.success[0].request else {
            panic!("a put");
        };
        assert_eq!(&put.value[..], b"overwrote-key1");
        assert_eq!(
            request.compare[1].target_union,
            Some(pb::compare::TargetUnion::Value("x y".into()))
        );
    }

    #[test]
    fn malformed_compares_are_refused() {
        assert!(parse_compare("mod(key1) >").is_err());
        assert!(parse_compare("size(\"k\") = \"1\"").is_err());
        assert!(parse_op("frobnicate k").is_err());
    }
}
