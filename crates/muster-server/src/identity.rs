//! Which cluster and member a data directory belongs to.
//!
//! The first start writes `<data-dir>/member/identity`; every later start
//! reads it and compares it with what the flags derive. A restart with the
//! same flags rejoins; a data dir of another cluster (or of another member)
//! is refused with an error that says whose it is, so a mistyped
//! `--data-dir` or `--initial-cluster` can never graft one cluster's log onto
//! another.
//!
//! The file is a few lines of text so an operator can read it; its last
//! line is a crc32c of the lines before it. It is written to a temporary
//! file, synced and renamed into place, so it is either whole or absent.
//!
//! ```text
//!   muster-identity 1
//!   cluster_id=6f1d2a0c9b8e7d65
//!   member_id=8e9e05c52164694d
//!   name=infra1
//!   crc32c=1a2b3c4d
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const HEADER: &str = "muster-identity 1";

/// What a data dir belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    /// This member's name.
    pub name: String,
}

/// How the data dir was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// The data dir was new; the identity has been written.
    Fresh,
    /// The data dir belongs to this member of this cluster: a restart.
    Restart,
}

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data dir holds another cluster's state.
    #[error(
        "data dir {dir} belongs to cluster {found:016x}, not to cluster {expected:016x} that the flags describe; \
         use a new --data-dir, or the flags it was created with"
    )]
    OtherCluster {
        /// The data dir.
        dir: PathBuf,
        /// The cluster it belongs to.
        found: u64,
        /// The cluster the flags describe.
        expected: u64,
    },
    /// The data dir holds another member's state.
    #[error(
        "data dir {dir} belongs to member {found_name:?} ({found:016x}), not to {expected_name:?} ({expected:016x}); \
         use that member's --name and peer URLs, or a new --data-dir"
    )]
    OtherMember {
        /// The data dir.
        dir: PathBuf,
        /// The member it belongs to.
        found: u64,
        /// That member's name.
        found_name: String,
        /// The member the flags describe.
        expected: u64,
        /// Its name.
        expected_name: String,
    },
    /// The identity file is damaged.
    #[error("identity file {file} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("identity file {file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The identity file of a data dir.
pub fn identity_file(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("identity")
}

/// The identity a data dir was created with, or `None` for a new data dir
/// (a member joining an existing cluster learns its IDs from the cluster
/// on its first start, and from here afterwards).
pub fn read(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let file = identity_file(data_dir);
    match fs::read_to_string(&file) {
        Ok(text) => parse(&text)
            .map(Some)
            .map_err(|reason| IdentityError::Corrupt { file, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { file, source }),
    }
}

/// Checks the data dir against `expected`, writing the identity on first use.
pub fn check_or_create(data_dir: &Path, expected: &Identity) -> Result<Startup, IdentityError> {
    let file = identity_file(data_dir);
    match fs::read_to_string(&file) {
        Ok(text) => {
            let found = parse(&text).map_err(|reason| IdentityError::Corrupt {
                file: file.clone(),
                reason,
            })?;
            if found.cluster_id != expected.cluster_id {
                return Err(IdentityError::OtherCluster {
                    dir: data_dir.to_path_buf(),
                    found: found.cluster_id,
                    expected: expected.cluster_id,
                });
            }
            if found.member_id != expected.member_id || found.name != expected.name {
                return Err(IdentityError::OtherMember {
                    dir: data_dir.to_path_buf(),
                    found: found.member_id,
                    found_name: found.name,
                    expected: expected.member_id,
                    expected_name: expected.name.clone(),
                });
            }
            Ok(Startup::Restart)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write(&file, expected).map_err(|source| IdentityError::Io { file, source })?;
            Ok(Startup::Fresh)
        }
        Err(source) => Err(IdentityError::Io { file, source }),
    }
}

fn render(identity: &Identity) -> String {
    let body = format!(
        "{HEADER}\ncluster_id={:016x}\nmember_id={:016x}\nname={}\n",
        identity.cluster_id, identity.member_id, identity.name
    );
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}crc32c={crc:08x}\n")
}

fn parse(text: &str) -> Result<Identity, String> {
    let Some((body, last)) = text.trim_end_matches('\n').rsplit_once('\n') else {
        return Err("too short".into());
    };
    let body = format!("{body}\n");
    let stored = last.strip_prefix("crc32c=").ok_or("no checksum line")?;
    let stored = u32::from_str_radix(stored, 16).map_err(|_| "bad checksum line")?;
    if stored != crc32c::crc32c(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("first line is not {HEADER:?}"));
    }
    let mut field = |key: &str| -> Result<String, String> {
        let line = lines.next().ok_or_else(|| format!("{key} missing"))?;
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("expected {key}=, found {line:?}"))
    };
    let hex =
        |s: String, key: &str| u64::from_str_radix(&s, 16).map_err(|_| format!("{key} is not hex"));
    let cluster_id = hex(field("cluster_id")?, "cluster_id")?;
    let member_id = hex(field("member_id")?, "member_id")?;
    let name = field("name")?;
    Ok(Identity {
        cluster_id,
        member_id,
        name,
    })
}

fn write(file: &Path, identity: &Identity) -> io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| io::Error::other("identity file has no directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = file.with_extension("tmp");
    {
        let mut out = fs::File::create(&tmp)?;
        out.write_all(render(identity).as_bytes())?;
        out.sync_all()?;
    }
    fs::rename(&tmp, file)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster_id: u64, member_id: u64, name: &str) -> Identity {
        Identity {
            cluster_id,
            member_id,
            name: name.to_string(),
        }
    }

    #[test]
    fn first_start_writes_and_restart_matches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = identity(0xc1, 0xa1, "infra1");
        assert_eq!(
            check_or_create(dir.path(), &me).expect("fresh"),
            Startup::Fresh
        );
        assert_eq!(
            check_or_create(dir.path(), &me).expect("restart"),
            Startup::Restart
        );
        let text = fs::read_to_string(identity_file(dir.path())).expect("read");
        assert!(text.starts_with("muster-identity 1\ncluster_id=00000000000000c1\n"));
    }

    #[test]
    fn another_clusters_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        check_or_create(dir.path(), &identity(0xc1, 0xa1, "infra1")).expect("fresh");
        let err =
            check_or_create(dir.path(), &identity(0xc2, 0xa1, "infra1")).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("belongs to cluster 00000000000000c1, not to cluster 00000000000000c2"),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()));
    }

    #[test]
    fn another_members_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        check_or_create(dir.path(), &identity(0xc1, 0xa1, "infra1")).expect("fresh");
        let err =
            check_or_create(dir.path(), &identity(0xc1, 0xa2, "infra2")).expect_err("refused");
        assert!(
            err.to_string().contains("belongs to member \"infra1\""),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_identity_file_is_reported_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = identity(0xc1, 0xa1, "infra1");
        check_or_create(dir.path(), &me).expect("fresh");
        let file = identity_file(dir.path());
        let text = fs::read_to_string(&file).expect("read");
        fs::write(&file, text.replace("infra1", "infra9")).expect("damage");
        let err = check_or_create(dir.path(), &me)
            .expect_err("corrupt")
            .to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("identity"),
            "{err}"
        );
        fs::write(&file, "muster-identity 1\n").expect("truncate");
        assert!(matches!(
            check_or_create(dir.path(), &me),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
