//! The checksummed record format shared by every persisted value.
//!
//! ```text
//!   u32 crc32c (little-endian) of the payload ++ payload (bincode 2, standard config)
//! ```
//!
//! Decoding verifies the checksum first, then that bincode consumed the
//! whole payload: a record is either exactly what was written or an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The bincode configuration of every record and snapshot header.
pub(crate) fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// `value` as a checksummed record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())?;
    let mut record = Vec::with_capacity(4 + payload.len());
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

/// Decodes a record written by [`encode`]; the error says what is wrong.
pub(crate) fn decode<T: DeserializeOwned>(record: &[u8]) -> Result<T, String> {
    let Some((stored, payload)) = record.split_first_chunk::<4>() else {
        return Err(format!(
            "record of {} bytes is shorter than its checksum",
            record.len()
        ));
    };
    let stored = u32::from_le_bytes(*stored);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    let (value, read) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| format!("undecodable payload: {e}"))?;
    if read != payload.len() {
        return Err(format!(
            "{} trailing bytes after the payload",
            payload.len() - read
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let record = encode(&(7u64, "seven".to_string())).expect("encode");
        assert_eq!(
            decode::<(u64, String)>(&record),
            Ok((7, "seven".to_string()))
        );
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut record = encode(&42u64).expect("encode");
        let last = record.len() - 1;
        record[last] ^= 1;
        let err = decode::<u64>(&record).expect_err("corrupt");
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_short_record_is_an_error() {
        assert!(decode::<u64>(&[1, 2]).is_err());
    }
}
