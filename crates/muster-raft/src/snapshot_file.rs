//! The snapshot file: a muster-core snapshot wrapped with Raft metadata.
//!
//! ```text
//!   "MUSTRAFT"                 magic, 8 bytes
//!   u32 format = 1             little-endian
//!   u32 header length
//!   header                     bincode of SnapshotMeta (last applied log id,
//!                              membership, snapshot id)
//!   muster-core snapshot       self-delimiting, carries its own crc32c
//!   u32 crc32c                 of every byte before it
//! ```
//!
//! The same bytes are the file on disk and what a leader sends a follower,
//! so a follower verifies exactly what will be written. Decoding checks the
//! outer checksum first, then the header, then restores the store (which
//! checks its own checksum and invariants), and finally that nothing
//! follows the core snapshot: a snapshot is either exactly what was written
//! or an error saying what is wrong.
//!
//! Files are written to a temporary name, fsynced, renamed over the final
//! name and the directory fsynced, so a crash leaves either the old file or
//! the new one, never a torn file under a `.snap` name.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use muster_core::Store;
use openraft::{BasicNode, SnapshotMeta};

use crate::error::Error;
use crate::record::bincode_config;
use crate::types::NodeId;

const MAGIC: &[u8; 8] = b"MUSTRAFT";
const FORMAT: u32 = 1;
/// Largest header accepted; guards the allocation on decode.
const MAX_HEADER: u32 = 16 << 20;
/// The extension of finished snapshot files.
pub(crate) const EXTENSION: &str = "snap";
/// The extension of a snapshot file being written.
pub(crate) const TEMP_EXTENSION: &str = "tmp";

/// Raft's metadata of a snapshot.
pub(crate) type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The whole snapshot as bytes.
pub(crate) fn encode(meta: &Meta, store: &Store) -> Result<Vec<u8>, Error> {
    let header =
        bincode::serde::encode_to_vec(meta, bincode_config()).map_err(|source| Error::Encode {
            what: "snapshot header",
            source,
        })?;
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|len| *len <= MAX_HEADER)
        .ok_or_else(|| {
            let too_large = std::io::Error::other(format!("{} bytes", header.len()));
            Error::io("<snapshot header>", too_large)
        })?;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    store
        .write_snapshot(&mut out)
        .map_err(|e| Error::io("<snapshot buffer>", e))?;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks the outer checksum only (cheap); the error says what is wrong.
pub(crate) fn check_checksum(bytes: &[u8]) -> Result<(), String> {
    let Some((body, trailer)) = bytes.split_last_chunk::<4>() else {
        return Err(format!("{} bytes is too short", bytes.len()));
    };
    let stored = u32::from_le_bytes(*trailer);
    let computed = crc32c::crc32c(body);
    if stored == computed {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        ))
    }
}

/// Decodes and fully verifies a snapshot; the error says what is wrong.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Meta, Store), String> {
    check_checksum(bytes)?;
    let body = &bytes[..bytes.len() - 4];
    let Some((magic, rest)) = body.split_first_chunk::<8>() else {
        return Err("truncated before the magic".to_string());
    };
    if magic != MAGIC {
        return Err("not a muster raft snapshot (bad magic)".to_string());
    }
    let (format, rest) = split_u32(rest)?;
    if format != FORMAT {
        return Err(format!("unsupported format {format}"));
    }
    let (header_len, rest) = split_u32(rest)?;
    if header_len > MAX_HEADER || header_len as usize > rest.len() {
        return Err(format!("header length {header_len} out of bounds"));
    }
    let (header, mut core) = rest.split_at(header_len as usize);
    let (meta, read): (Meta, usize) = bincode::serde::decode_from_slice(header, bincode_config())
        .map_err(|e| format!("undecodable header: {e}"))?;
    if read != header.len() {
        return Err("header longer than its contents".to_string());
    }
    let store = Store::restore(&mut core).map_err(|e| e.to_string())?;
    if !core.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the store snapshot",
            core.len()
        ));
    }
    Ok((meta, store))
}

fn split_u32(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    let (n, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "truncated header".to_string())?;
    Ok((u32::from_le_bytes(*n), rest))
}

/// The file name of the snapshot with `id`: the id with anything but
/// `[A-Za-z0-9._-]` replaced, plus `.snap`.
pub(crate) fn file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{EXTENSION}")
}

/// Writes `bytes` as `<dir>/<file_name(id)>` atomically and durably;
/// returns the path.
pub(crate) fn write(dir: &Path, id: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    let path = dir.join(file_name(id));
    let temp = path.with_extension(format!("{EXTENSION}.{TEMP_EXTENSION}"));
    let mut file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&temp, e))?;
    file.sync_all().map_err(|e| Error::io(&temp, e))?;
    drop(file);
    fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Reads a snapshot file and checks its outer checksum.
pub(crate) fn read_checked(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    check_checksum(&bytes).map_err(|reason| Error::CorruptSnapshot {
        file: path.to_path_buf(),
        reason,
    })?;
    Ok(bytes)
}

/// fsyncs a directory so a rename or removal in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::{Command, PutRequest};

    fn meta() -> Meta {
        Meta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "0-0-1".to_string(),
        }
    }

    fn store() -> Store {
        let mut store = Store::new();
        let put = PutRequest {
            key: "a".into(),
            value: "1".into(),
            ..Default::default()
        };
        store.apply(1, Command::Put(put)).expect("put");
        store
    }

    #[test]
    fn a_snapshot_round_trips() {
        let bytes = encode(&meta(), &store()).expect("encode");
        let (decoded, restored) = decode(&bytes).expect("decode");
        assert_eq!(decoded, meta());
        assert_eq!(restored.hash_kv(0), store().hash_kv(0));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&meta(), &store()).expect("encode");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn file_names_are_sanitised() {
        assert_eq!(file_name("1-2-3"), "1-2-3.snap");
        assert_eq!(file_name("../x y"), ".._x_y.snap");
    }
}
