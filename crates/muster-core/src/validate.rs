//! Request validation, exactly as etcd's gRPC edge does it.
//!
//! The server calls these before proposing anything, so bad input is
//! rejected with etcd's error and never reaches the log. [`crate::Store::apply`]
//! runs the same structural checks again (everything except the op-count
//! limit, which is member configuration and so must not decide apply), so
//! a command that slipped through fails identically on every replica.
//!
//! Order matters, because clients see only the first error: a txn is checked
//! for its op count, then its compares' keys, then each op in order, then
//! for puts that collide (etcd's `checkIntervals`).

use crate::command::{
    Command, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::error::{Error, Result};

/// Checks a range request: the key must be set.
pub fn check_range(req: &RangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a put: key set; no value with `ignore_value`; no lease with
/// `ignore_lease`.
pub fn check_put(req: &PutRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// Checks a delete: the key must be set.
pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a txn with at most `max_ops` compares, success ops and failure ops
/// (each counted separately; nested txns get what the parent leaves), then
/// rejects puts that collide with another put or a delete on the same path.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(req, max_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// Checks any command with the given op-count limit for txns.
pub fn check_command(command: &Command, max_txn_ops: usize) -> Result<()> {
    match command {
        Command::Put(req) => check_put(req),
        Command::DeleteRange(req) => check_delete_range(req),
        Command::Txn(req) => check_txn(req, max_txn_ops),
        Command::Compact { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseCheckpoint { .. }
        | Command::MemberPeerUrls { .. }
        | Command::MemberPublish { .. }
        | Command::MemberForget { .. }
        | Command::Alarm { .. } => Ok(()),
        // Each command of a batch is checked, and refused, on its own when
        // the batch is applied.
        Command::Batch(_) => Ok(()),
    }
}

/// Whether a txn (both branches, recursively) holds no write.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match op {
        RequestOp::Range(_) => true,
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        RequestOp::Txn(txn) => is_read_only(txn),
    })
}

fn check_txn_ops(req: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(r) => check_put(r)?,
            RequestOp::DeleteRange(r) => check_delete_range(r)?,
            RequestOp::Txn(r) => check_txn_ops(r, max_ops - ops)?,
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`, or one key when `end` is empty.
struct Deleted<'a> {
    start: &'a [u8],
    end: &'a [u8],
}

impl Deleted<'_> {
    /// etcd compares these as plain byte intervals: a `"\0"` range end makes
    /// an interval that holds no key, so it never collides (etcd does the same).
    fn covers(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.start
        } else {
            self.start <= key && key < self.end
        }
    }
}

/// etcd's `checkIntervals`: within one list of ops (and the txns nested in
/// it), a key may be put at most once and not inside a range deleted at the
/// same or an outer level. Puts in the success and failure branch of one
/// nested txn may repeat each other (only one branch runs). Returns the keys
/// put and the intervals deleted, for the level above.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<&[u8]>, Vec<Deleted<'_>>)> {
    let mut deleted: Vec<Deleted<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Deleted {
                start: &d.key,
                end: &d.range_end,
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    let collides = |puts: &[&[u8]], deleted: &[Deleted<'_>], key: &[u8]| {
        puts.contains(&key) || deleted.iter().any(|d| d.covers(key))
    };
    for op in ops {
        let RequestOp::Txn(txn) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&txn.success)?;
        let (puts_else, dels_else) = check_intervals(&txn.failure)?;
        for key in &puts_then {
            if collides(&puts, &deleted, key) {
                return Err(Error::DuplicateKey);
            }
            puts.push(key);
        }
        for key in &puts_else {
            let from_then = puts_then.contains(key);
            if (puts.contains(key) && !from_then) || deleted.iter().any(|d| d.covers(key)) {
                return Err(Error::DuplicateKey);
            }
            if !from_then {
                puts.push(key);
            }
        }
        deleted.extend(dels_then);
        deleted.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(put) = op else { continue };
        if collides(&puts, &deleted, &put.key) {
            return Err(Error::DuplicateKey);
        }
        puts.push(&put.key);
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn put(key: &'static str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: Bytes::from_static(key.as_bytes()),
            ..Default::default()
        })
    }
    fn del(key: &'static str, end: &'static str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(key.as_bytes()),
            range_end: Bytes::from_static(end.as_bytes()),
            prev_kv: false,
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_are_rejected() {
        let t = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(check_txn(&t, 128), Err(Error::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
    }

    #[test]
    fn puts_inside_deleted_ranges_are_rejected() {
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("b"), del("b", "")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128),
            Ok(())
        );
        // etcd treats "\0" as an ordinary end byte here: no collision.
        assert_eq!(
            check_txn(&txn(vec![del("a", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_branches_may_repeat_each_other_but_not_the_parent() {
        let nested = RequestOp::Txn(txn(vec![put("k")], vec![put("k")]));
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested.clone(), put("k")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        let under_delete = RequestOp::Txn(txn(vec![], vec![put("k")]));
        assert_eq!(
            check_txn(&txn(vec![del("a", "z"), under_delete], vec![]), 128),
            Err(Error::DuplicateKey)
        );
    }

    #[test]
    fn op_counts_are_limited_per_level() {
        let many = txn((0..4).map(|_| put("x")).collect(), vec![]);
        assert_eq!(check_txn(&many, 3), Err(Error::TooManyOps));
        let nested = txn(
            vec![RequestOp::Txn(txn(vec![put("a"), put("b")], vec![]))],
            vec![],
        );
        assert_eq!(check_txn_ops(&nested, 2), Err(Error::TooManyOps));
        assert_eq!(check_txn_ops(&nested, 3), Ok(()));
    }

    #[test]
    fn put_flags_are_checked() {
        let mut p = PutRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        p.ignore_value = true;
        p.value = Bytes::from_static(b"v");
        assert_eq!(check_put(&p), Err(Error::ValueProvided));
        p.value = Bytes::new();
        p.ignore_lease = true;
        p.lease = 7;
        assert_eq!(check_put(&p), Err(Error::LeaseProvided));
        p.key = Bytes::new();
        assert_eq!(check_put(&p), Err(Error::EmptyKey));
    }
}
