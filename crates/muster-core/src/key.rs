//! Keys as the key space stores them.
//!
//! A key in the index is compared ~17 times per lookup in a 100k-key store.
//! Stored as `Bytes`, each comparison follows a pointer to a heap copy of the
//! key: a likely cache miss, which made lookups, and so puts, memory-bound.
//! [`StoredKey`] keeps keys of up to [`INLINE`] bytes inside the tree entry
//! itself, so comparing them reads the node already in cache; longer keys
//! stay shared `Bytes`. Short keys also stop costing a heap allocation.
//!
//! Invariant: a key of at most [`INLINE`] bytes is always stored inline, so
//! equal keys have equal representations, and order, equality and hashing
//! are those of the key bytes whatever the representation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;

/// Longest key stored inline (keeps a `StoredKey` at 48 bytes).
pub(crate) const INLINE: usize = 46;

/// A key as stored in the index and the revision log.
#[derive(Clone)]
pub(crate) enum StoredKey {
    /// A key of at most [`INLINE`] bytes, in place.
    Inline {
        /// Number of bytes used.
        len: u8,
        /// The bytes; only `..len` are meaningful (the rest are zero).
        bytes: [u8; INLINE],
    },
    /// A longer key, shared.
    Shared(Bytes),
}

impl StoredKey {
    /// Stores `key`, inline when it fits.
    pub(crate) fn new(key: Bytes) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(&key);
            StoredKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            StoredKey::Shared(key)
        }
    }

    /// The key bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            StoredKey::Inline { len, bytes } => &bytes[..*len as usize],
            StoredKey::Shared(bytes) => bytes,
        }
    }

    /// The key as `Bytes` for a response or event: a copy for an inline key,
    /// a shared reference otherwise.
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            StoredKey::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            StoredKey::Shared(bytes) => bytes.clone(),
        }
    }
}

impl Borrow<[u8]> for StoredKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StoredKey {}

impl PartialOrd for StoredKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoredKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::hash::Hash for StoredKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_slice().escape_ascii().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_shared() {
        assert_eq!(std::mem::size_of::<StoredKey>(), 48);
        let short = StoredKey::new(Bytes::from(vec![7u8; INLINE]));
        assert!(matches!(short, StoredKey::Inline { .. }));
        let long = StoredKey::new(Bytes::from(vec![7u8; INLINE + 1]));
        assert!(matches!(long, StoredKey::Shared(_)));
        assert_eq!(short.as_slice(), &[7u8; INLINE][..]);
        assert_eq!(long.to_bytes().len(), INLINE + 1);
    }

    #[test]
    fn order_is_byte_order_across_representations() {
        let keys = [
            b"".to_vec(),
            b"\0".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            vec![b'a'; INLINE],
            vec![b'a'; INLINE + 1],
            vec![b'a'; INLINE + 5],
            b"b".to_vec(),
            vec![0xff; 3],
        ];
        for x in &keys {
            for y in &keys {
                let (sx, sy) = (
                    StoredKey::new(Bytes::from(x.clone())),
                    StoredKey::new(Bytes::from(y.clone())),
                );
                assert_eq!(sx.cmp(&sy), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(sx == sy, x == y);
            }
        }
    }
}
