//! openraft's storage conformance suite against the sled log store and the
//! muster state machine, each built in a fresh temporary directory.

use std::sync::mpsc;
use std::time::Duration;

use muster_raft::{LogStore, StateMachine, StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use tempfile::TempDir;

/// Builds a log store and a state machine in a temporary directory; the
/// directory is the guard that keeps them alive until the test ends.
struct TempStores;

fn storage_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::new(&e)),
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        let log = LogStore::open(dir.path().join("log"))
            .await
            .map_err(storage_error)?;
        let state_machine = StateMachine::open(dir.path().join("state"))
            .await
            .map_err(storage_error)?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn the_openraft_storage_suite_passes() {
    // The suite builds its own tokio runtimes, so it runs on a plain thread;
    // the channel bounds the wait.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(Suite::test_all(TempStores).map_err(|e| e.to_string()));
    });
    match finished.recv_timeout(Duration::from_secs(240)) {
        Ok(result) => result.expect("storage suite"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("storage suite did not finish in time"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("storage suite panicked (see above)"),
    }
}
