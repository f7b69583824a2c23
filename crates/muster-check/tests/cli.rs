//! The `muster-check` binary: exit status 0 on a valid history, 1 on one
//! with anomalies (naming their kind), 2 on input it cannot read.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use muster_check::history::{FaultRecord, Op, OpKind, OpRecord, OpResult, Record, StartRecord};

const WALL0: u64 = 1_795_530_000_000_000_000;

fn start() -> Record {
    Record::Start(StartRecord {
        t: 0,
        wall_ns: WALL0,
        prefix: "/fault/".into(),
        members: [("m1".to_string(), "http://127.0.0.1:2379".to_string())].into(),
        election_timeout_ms: 1000,
        lease_ttl: 5,
    })
}

fn op(t: u64, process: u32, id: u64, kind: OpKind, op: Op, result: Option<OpResult>) -> Record {
    Record::Op(OpRecord {
        t,
        process,
        id,
        kind,
        member: "m1".into(),
        op,
        result,
        error: None,
    })
}

fn put(value: &str) -> Op {
    Op::Put {
        key: "/fault/k1".into(),
        value: value.into(),
        lease: None,
    }
}

fn get() -> Op {
    Op::Get {
        key: "/fault/k1".into(),
        serializable: false,
    }
}

/// Two puts, then a read of `read` (with its mod_revision) at `header`.
fn history(read: &str, mod_revision: i64, header: i64) -> Vec<Record> {
    let rev = |revision| OpResult {
        revision,
        ..OpResult::default()
    };
    vec![
        start(),
        op(1_000, 1, 1, OpKind::Invoke, put("1-1"), None),
        op(2_000, 1, 1, OpKind::Ok, put("1-1"), Some(rev(2))),
        op(3_000, 1, 2, OpKind::Invoke, put("1-2"), None),
        op(4_000, 1, 2, OpKind::Ok, put("1-2"), Some(rev(3))),
        op(5_000, 2, 3, OpKind::Invoke, get(), None),
        op(
            6_000,
            2,
            3,
            OpKind::Ok,
            get(),
            Some(OpResult {
                revision: header,
                value: Some(read.into()),
                mod_revision: Some(mod_revision),
                ..OpResult::default()
            }),
        ),
    ]
}

fn write_history(path: &Path, records: &[Record]) {
    let mut file = std::fs::File::create(path).expect("create the history");
    for r in records {
        writeln!(file, "{}", serde_json::to_string(r).expect("encode")).expect("write");
    }
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-check"))
        .args(args)
        .output()
        .expect("run muster-check");
    eprintln!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_history_with_a_stale_read_exits_1_and_names_the_anomaly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    write_history(&path, &history("1-1", 2, 2));
    let out = run(&[path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NotLinearizable"), "{stdout}");
    assert!(stdout.contains("RevisionOrder"), "{stdout}");
    assert!(stdout.contains("op 3"), "{stdout}");
}

#[test]
fn a_valid_history_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    write_history(&path, &history("1-2", 3, 3));
    let out = run(&[path.as_os_str()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 operations"), "{stdout}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn faults_from_a_separate_file_are_merged_and_print_limits_the_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    write_history(&path, &history("1-1", 2, 2));
    let faults = dir.path().join("faults.jsonl");
    let fault = |wall_ns, phase: &str| FaultRecord {
        wall_ns,
        fault: "isolate-leader".into(),
        phase: phase.into(),
        detail: Some("m1".into()),
    };
    // One line tagged as a history record, one bare fault record.
    std::fs::write(
        &faults,
        format!(
            "{}\n{}\n",
            serde_json::to_string(&Record::Fault(fault(WALL0 + 1_000, "start"))).expect("encode"),
            serde_json::to_string(&fault(WALL0 + 9_000, "heal")).expect("encode"),
        ),
    )
    .expect("write faults");
    let out = run(&[
        path.as_os_str(),
        "--faults".as_ref(),
        faults.as_os_str(),
        "--print".as_ref(),
        "1".as_ref(),
        "--lease-slack-ms".as_ref(),
        "500".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 faults"), "{stdout}");
    assert!(stdout.contains("[1] "), "{stdout}");
    assert!(!stdout.contains("[2] "), "{stdout}");
}

#[test]
fn an_unreadable_history_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.jsonl");
    assert_eq!(run(&[missing.as_os_str()]).status.code(), Some(2));
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"record\":\"start\"\nnot json\n").expect("write");
    let out = run(&[garbage.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
