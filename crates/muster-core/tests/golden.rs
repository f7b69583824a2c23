//! Golden-script tests for muster-core: each file under `testscripts/` is a
//! script of operations with the expected output beside each block
//! (regenerate with `UPDATE_GOLDENFILES=1 cargo test -p muster-core`, then
//! review the diff).
//!
//! The language, one command per line:
//!
//! ```text
//! put KEY [VALUE] [lease=ID] [prev_kv=true] [ignore_value=true] [ignore_lease=true]
//! get KEY [end=END] [rev=N] [limit=N] [order=asc|desc|none]
//!         [target=key|version|create|mod|value] [keys_only=true] [count_only=true]
//!         [min_mod=N] [max_mod=N] [min_create=N] [max_create=N]
//! del KEY [end=END] [prev_kv=true]
//! txn                      opens a txn (nested when one is open); then:
//!   if FIELD KEY OP VALUE [end=END]   FIELD: version|create|mod|value|lease,
//!                                     OP: eq ne gt lt
//!   then | else            following put/get/del/txn lines become ops of that branch
//! end [max_ops=N]          closes the txn; the outermost is validated
//!                          (with max_ops, default 128) and applied
//! compact REV
//! grant TTL [id=ID]        lease grant (ID 0 or absent: derived from the log index)
//! revoke ID
//! checkpoint ID=REMAINING...
//! lease ID                 lease info and keys
//! leases
//! events KEY [end=END] from=N [to=N] [limit=N]
//! hash [rev=N]
//! status                   revision, compaction point, key and lease counts
//! snapshot                 encodes, restores, and checks the copy is identical
//! restore [flip=OFFSET] [truncate=LEN]   restores a damaged snapshot
//! ```
//!
//! Every successful write prints its events, indented.

use std::error::Error as StdError;
use std::fmt::Write as _;

use bytes::Bytes;
use muster_core::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Event, EventKind, KeyValue,
    LeaseCheckpoint, PutRequest, RangeRequest, RangeResponse, RequestOp, Response, ResponseOp,
    SortOrder, SortTarget, Store, TxnRequest, TxnResponse, validate,
};
use test_each_file::test_each_path;

type Failure = Box<dyn StdError>;

test_each_path! { in "crates/muster-core/testscripts" as golden => run_script }

fn run_script(path: &std::path::Path) {
    goldenscript::run(&mut Runner::default(), path).expect("goldenscript failed")
}

/// A txn being written: the request and which branch ops go to.
struct OpenTxn {
    txn: TxnRequest,
    in_failure: bool,
}

#[derive(Default)]
struct Runner {
    store: Store,
    /// The log index of the next applied command.
    index: u64,
    /// Open txns, outermost first.
    open: Vec<OpenTxn>,
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        command: &goldenscript::Command,
        _: &goldenscript::Context,
    ) -> Result<String, Failure> {
        let mut out = String::new();
        let mut args = command.consume_args();
        let name = command.name.as_str();
        // Inside a txn, ops are collected instead of run.
        if let Some(open) = self.open.last_mut() {
            let op = match name {
                "put" => Some(RequestOp::Put(put_request(&mut args)?)),
                "get" => Some(RequestOp::Range(range_request(&mut args)?)),
                "del" => Some(RequestOp::DeleteRange(delete_request(&mut args)?)),
                _ => None,
            };
            if let Some(op) = op {
                args.reject_next()?;
                let branch = if open.in_failure {
                    &mut open.txn.failure
                } else {
                    &mut open.txn.success
                };
                branch.push(op);
                return Ok(out);
            }
            match name {
                "if" => {
                    let compare = compare(&mut args)?;
                    args.reject_next()?;
                    open.txn.compare.push(compare);
                    return Ok(out);
                }
                "then" | "else" => {
                    args.reject_next()?;
                    open.in_failure = name == "else";
                    return Ok(out);
                }
                _ => {}
            }
        }
        match name {
            "put" => {
                let req = put_request(&mut args)?;
                args.reject_next()?;
                validate::check_put(&req)?;
                self.apply(Command::Put(req), &mut out)?;
            }
            "get" => {
                let req = range_request(&mut args)?;
                args.reject_next()?;
                let resp = self.store.range(&req)?;
                print_range(&mut out, "", &resp)?;
            }
            "del" => {
                let req = delete_request(&mut args)?;
                args.reject_next()?;
                validate::check_delete_range(&req)?;
                self.apply(Command::DeleteRange(req), &mut out)?;
            }
            "txn" => {
                args.reject_next()?;
                self.open.push(OpenTxn {
                    txn: TxnRequest::default(),
                    in_failure: false,
                });
            }
            "end" => {
                let max_ops = parse_key(&mut args, "max_ops")?.unwrap_or(128);
                args.reject_next()?;
                let done = self.open.pop().ok_or("end without txn")?;
                if let Some(parent) = self.open.last_mut() {
                    let branch = if parent.in_failure {
                        &mut parent.txn.failure
                    } else {
                        &mut parent.txn.success
                    };
                    branch.push(RequestOp::Txn(done.txn));
                } else {
                    validate::check_txn(&done.txn, max_ops)?;
                    self.apply(Command::Txn(done.txn), &mut out)?;
                }
            }
            "compact" => {
                let revision = parse_pos(&mut args, "revision")?;
                args.reject_next()?;
                self.apply(Command::Compact { revision }, &mut out)?;
            }
            "grant" => {
                let ttl = parse_pos(&mut args, "ttl")?;
                let id = parse_key(&mut args, "id")?.unwrap_or(0);
                args.reject_next()?;
                self.apply(Command::LeaseGrant { id, ttl }, &mut out)?;
            }
            "revoke" => {
                let id = parse_pos(&mut args, "id")?;
                args.reject_next()?;
                self.apply(Command::LeaseRevoke { id }, &mut out)?;
            }
            "checkpoint" => {
                let mut checkpoints = Vec::new();
                while let Some((id, remaining)) = args.next_key() {
                    checkpoints.push(LeaseCheckpoint {
                        id: id.parse()?,
                        remaining_ttl: remaining.parse()?,
                    });
                }
                args.reject_next()?;
                self.apply(Command::LeaseCheckpoint { checkpoints }, &mut out)?;
            }
            "lease" => {
                let id = parse_pos(&mut args, "id")?;
                args.reject_next()?;
                let keys = self.store.lease_keys(id)?;
                let info = self.store.lease(id).ok_or("lease has keys but no info")?;
                let keys: Vec<String> = keys.iter().map(|k| show(k)).collect();
                writeln!(
                    out,
                    "lease {} ttl={} remaining={} keys=[{}]",
                    info.id,
                    info.ttl,
                    info.remaining_ttl,
                    keys.join(" ")
                )?;
            }
            "leases" => {
                args.reject_next()?;
                for info in self.store.leases() {
                    writeln!(
                        out,
                        "lease {} ttl={} remaining={}",
                        info.id, info.ttl, info.remaining_ttl
                    )?;
                }
                writeln!(out, "{} leases", self.store.lease_count())?;
            }
            "events" => {
                let key = Bytes::from(args.next_pos().ok_or("key missing")?.to_string());
                let end = args
                    .take_key("end")
                    .map(|e| Bytes::from(e.to_string()))
                    .unwrap_or_default();
                let from = parse_key(&mut args, "from")?.ok_or("from= missing")?;
                let to = parse_key(&mut args, "to")?.unwrap_or(0);
                let limit = parse_key(&mut args, "limit")?.unwrap_or(0);
                args.reject_next()?;
                let batch = self.store.events(&key, &end, from, to, limit)?;
                for event in &batch.events {
                    print_event(&mut out, "", event)?;
                }
                writeln!(out, "next={}", batch.next_revision)?;
            }
            "hash" => {
                let rev = parse_key(&mut args, "rev")?.unwrap_or(0);
                args.reject_next()?;
                let hash = self.store.hash_kv(rev)?;
                writeln!(
                    out,
                    "hash={:08x} rev={} compact={}",
                    hash.hash, hash.revision, hash.compact_revision
                )?;
            }
            "status" => {
                args.reject_next()?;
                let s = &self.store;
                writeln!(
                    out,
                    "rev={} compact={} keys={} leases={}",
                    s.revision(),
                    s.compact_revision(),
                    s.key_count(),
                    s.lease_count()
                )?;
            }
            "snapshot" => {
                args.reject_next()?;
                let bytes = self.store.snapshot();
                let restored = Store::restore(&bytes[..])?;
                let again = restored.snapshot();
                if again != bytes {
                    return Err("restored store encodes differently".into());
                }
                if restored.hash_kv(0)? != self.store.hash_kv(0)? {
                    return Err("restored store hashes differently".into());
                }
                writeln!(out, "snapshot {} bytes, restored identical", bytes.len())?;
            }
            "restore" => {
                let flip: Option<usize> = parse_key(&mut args, "flip")?;
                let truncate: Option<usize> = parse_key(&mut args, "truncate")?;
                args.reject_next()?;
                let mut bytes = self.store.snapshot();
                if let Some(at) = flip {
                    bytes[at] ^= 0xff;
                }
                if let Some(len) = truncate {
                    bytes.truncate(len);
                }
                self.store = Store::restore(&bytes[..])?;
                writeln!(out, "restored rev={}", self.store.revision())?;
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        Ok(out)
    }

    fn end_script(&mut self) -> Result<(), Failure> {
        if !self.open.is_empty() {
            return Err("script ended inside a txn".into());
        }
        Ok(())
    }
}

impl Runner {
    fn apply(&mut self, command: Command, out: &mut String) -> Result<(), Failure> {
        self.index += 1;
        let applied = self.store.apply(self.index, command)?;
        match &applied.response {
            Response::Put(r) => {
                writeln!(out, "put rev={}", r.revision)?;
                if let Some(prev) = &r.prev_kv {
                    writeln!(out, "  prev {}", show_kv(prev))?;
                }
            }
            Response::DeleteRange(r) => {
                writeln!(out, "del rev={} deleted={}", r.revision, r.deleted)?;
                for prev in &r.prev_kvs {
                    writeln!(out, "  prev {}", show_kv(prev))?;
                }
            }
            Response::Txn(r) => print_txn(out, "", r)?,
            Response::Compact { revision } => writeln!(out, "compact rev={revision}")?,
            Response::LeaseGrant { revision, id, ttl } => {
                writeln!(out, "grant id={id} ttl={ttl} rev={revision}")?
            }
            Response::LeaseRevoke { revision } => writeln!(out, "revoke rev={revision}")?,
            Response::LeaseCheckpoint { revision } => writeln!(out, "checkpoint rev={revision}")?,
            Response::Member { revision } => writeln!(out, "member rev={revision}")?,
            Response::Alarm { revision, changed } => {
                writeln!(out, "alarm rev={revision} changed={changed:?}")?
            }
            // Scripts apply one command per entry; batches are covered by
            // tests/invariants.rs.
            Response::Batch(results) => writeln!(out, "batch {results:?}")?,
        }
        for event in &applied.events {
            print_event(out, "  ", event)?;
        }
        Ok(())
    }
}

fn print_range(out: &mut String, indent: &str, r: &RangeResponse) -> Result<(), Failure> {
    writeln!(
        out,
        "{indent}range rev={} count={} more={}",
        r.revision, r.count, r.more
    )?;
    for kv in &r.kvs {
        writeln!(out, "{indent}  {}", show_kv(kv))?;
    }
    Ok(())
}

fn print_txn(out: &mut String, indent: &str, r: &TxnResponse) -> Result<(), Failure> {
    writeln!(
        out,
        "{indent}txn succeeded={} rev={}",
        r.succeeded, r.revision
    )?;
    let inner = format!("{indent}  ");
    for op in &r.responses {
        match op {
            ResponseOp::Range(range) => print_range(out, &inner, range)?,
            ResponseOp::Put(put) => {
                writeln!(out, "{inner}put rev={}", put.revision)?;
                if let Some(prev) = &put.prev_kv {
                    writeln!(out, "{inner}  prev {}", show_kv(prev))?;
                }
            }
            ResponseOp::DeleteRange(del) => {
                writeln!(
                    out,
                    "{inner}del rev={} deleted={}",
                    del.revision, del.deleted
                )?;
                for prev in &del.prev_kvs {
                    writeln!(out, "{inner}  prev {}", show_kv(prev))?;
                }
            }
            ResponseOp::Txn(txn) => print_txn(out, &inner, txn)?,
        }
    }
    Ok(())
}

fn print_event(out: &mut String, indent: &str, e: &Event) -> Result<(), Failure> {
    match e.kind {
        EventKind::Put => write!(out, "{indent}PUT {}", show_kv(&e.kv))?,
        EventKind::Delete => write!(
            out,
            "{indent}DELETE {} @{}",
            show(&e.kv.key),
            e.kv.mod_revision
        )?,
    }
    match &e.prev_kv {
        Some(prev) => writeln!(out, " (prev {})", show_kv(prev))?,
        None => writeln!(out)?,
    }
    Ok(())
}

/// `key=value @mod create=C ver=V [lease=L]`
fn show_kv(kv: &KeyValue) -> String {
    let mut s = format!(
        "{}={} @{} create={} ver={}",
        show(&kv.key),
        show(&kv.value),
        kv.mod_revision,
        kv.create_revision,
        kv.version
    );
    if kv.lease != 0 {
        write!(s, " lease={}", kv.lease).expect("writing to a String");
    }
    s
}

/// Bytes as plain text when they are simple, else as a quoted escaped string.
fn show(bytes: &[u8]) -> String {
    let simple = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(b));
    if simple {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        format!("\"{}\"", bytes.escape_ascii())
    }
}

fn parse_pos<T: std::str::FromStr>(
    args: &mut goldenscript::ArgumentConsumer<'_>,
    what: &str,
) -> Result<T, Failure>
where
    T::Err: StdError + 'static,
{
    Ok(args.next_pos().ok_or(format!("{what} missing"))?.parse()?)
}

fn parse_key<T: std::str::FromStr>(
    args: &mut goldenscript::ArgumentConsumer<'_>,
    key: &str,
) -> Result<Option<T>, Failure>
where
    T::Err: StdError + 'static,
{
    Ok(args.take_key(key).map(str::parse).transpose()?)
}

fn bytes_key(args: &mut goldenscript::ArgumentConsumer<'_>, key: &str) -> Bytes {
    args.take_key(key)
        .map(|v| Bytes::from(v.to_string()))
        .unwrap_or_default()
}

fn flag(args: &mut goldenscript::ArgumentConsumer<'_>, key: &str) -> Result<bool, Failure> {
    Ok(parse_key(args, key)?.unwrap_or(false))
}

fn put_request(args: &mut goldenscript::ArgumentConsumer<'_>) -> Result<PutRequest, Failure> {
    let key = Bytes::from(args.next_pos().ok_or("key missing")?.to_string());
    let value = args
        .next_pos()
        .map(|v| Bytes::from(v.to_string()))
        .unwrap_or_default();
    Ok(PutRequest {
        key,
        value,
        lease: parse_key(args, "lease")?.unwrap_or(0),
        prev_kv: flag(args, "prev_kv")?,
        ignore_value: flag(args, "ignore_value")?,
        ignore_lease: flag(args, "ignore_lease")?,
    })
}

fn delete_request(
    args: &mut goldenscript::ArgumentConsumer<'_>,
) -> Result<DeleteRangeRequest, Failure> {
    let key = Bytes::from(args.next_pos().ok_or("key missing")?.to_string());
    Ok(DeleteRangeRequest {
        key,
        range_end: bytes_key(args, "end"),
        prev_kv: flag(args, "prev_kv")?,
    })
}

fn range_request(args: &mut goldenscript::ArgumentConsumer<'_>) -> Result<RangeRequest, Failure> {
    let key = Bytes::from(args.next_pos().ok_or("key missing")?.to_string());
    let sort_order = match args.take_key("order") {
        None | Some("none") => SortOrder::None,
        Some("asc") => SortOrder::Ascend,
        Some("desc") => SortOrder::Descend,
        Some(other) => return Err(format!("bad order {other}").into()),
    };
    let sort_target = match args.take_key("target") {
        None | Some("key") => SortTarget::Key,
        Some("version") => SortTarget::Version,
        Some("create") => SortTarget::Create,
        Some("mod") => SortTarget::Mod,
        Some("value") => SortTarget::Value,
        Some(other) => return Err(format!("bad target {other}").into()),
    };
    Ok(RangeRequest {
        key,
        range_end: bytes_key(args, "end"),
        limit: parse_key(args, "limit")?.unwrap_or(0),
        revision: parse_key(args, "rev")?.unwrap_or(0),
        sort_order,
        sort_target,
        keys_only: flag(args, "keys_only")?,
        count_only: flag(args, "count_only")?,
        min_mod_revision: parse_key(args, "min_mod")?.unwrap_or(0),
        max_mod_revision: parse_key(args, "max_mod")?.unwrap_or(0),
        min_create_revision: parse_key(args, "min_create")?.unwrap_or(0),
        max_create_revision: parse_key(args, "max_create")?.unwrap_or(0),
    })
}

fn compare(args: &mut goldenscript::ArgumentConsumer<'_>) -> Result<Compare, Failure> {
    let field = args.next_pos().ok_or("field missing")?;
    let key = Bytes::from(args.next_pos().ok_or("key missing")?.to_string());
    let result = match args.next_pos().ok_or("operator missing")? {
        "eq" => CompareResult::Equal,
        "ne" => CompareResult::NotEqual,
        "gt" => CompareResult::Greater,
        "lt" => CompareResult::Less,
        other => return Err(format!("bad operator {other}").into()),
    };
    let value = args.next_pos().ok_or("value missing")?;
    let target = match field {
        "version" => CompareTarget::Version(value.parse()?),
        "create" => CompareTarget::Create(value.parse()?),
        "mod" => CompareTarget::Mod(value.parse()?),
        "lease" => CompareTarget::Lease(value.parse()?),
        "value" => CompareTarget::Value(Bytes::from(value.to_string())),
        other => return Err(format!("bad field {other}").into()),
    };
    Ok(Compare {
        key,
        range_end: bytes_key(args, "end"),
        result,
        target,
    })
}
