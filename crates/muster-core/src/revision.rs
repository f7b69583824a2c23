//! Revisions: the logical clock of the key space.
//!
//! Every change to the key space happens at a [`Revision`] `{main, sub}`.
//! `main` grows by one for each command that changes at least one key (a put,
//! a delete that deleted something, a txn with writes, a revoke of a lease
//! with keys); `sub` numbers the changes inside that command, from 0. An empty
//! store is at main revision 1, so the first write happens at `{2, 0}`, as in
//! etcd.
//!
//! ```text
//!   put a      -> {2,0}
//!   txn(put b, put c) -> {3,0} {3,1}
//!   del x (absent)    -> no new revision, store stays at 3
//! ```
//!
//! Invariant: revisions are never negative, so the big-endian byte encoding
//! of [`Revision::to_bytes`] sorts exactly as the revisions do.

use serde::{Deserialize, Serialize};

/// A point in the history of the key space.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision {
    /// The store revision of the command that made the change.
    pub main: i64,
    /// The position of the change within its command, from 0.
    pub sub: i64,
}

/// Length of [`Revision::to_bytes`]: 8 bytes main, a `_` separator, 8 bytes sub.
pub const REVISION_BYTES: usize = 17;

impl Revision {
    /// A revision from its two parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The order-preserving encoding: `main` big-endian, `_`, `sub` big-endian
    /// (etcd's layout). For non-negative revisions, byte order equals
    /// revision order.
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8] = b'_';
        out[9..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes [`Revision::to_bytes`]; `None` if the input is not exactly one
    /// encoded revision.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REVISION_BYTES || bytes[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        let sub = i64::from_be_bytes(bytes[9..].try_into().ok()?);
        Some(Self { main, sub })
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_round_trips() {
        let rev = Revision::new(42, 7);
        assert_eq!(Revision::from_bytes(&rev.to_bytes()), Some(rev));
        assert_eq!(rev.to_bytes()[8], b'_');
        assert_eq!(Revision::from_bytes(&[0u8; 16]), None);
        let mut bad = rev.to_bytes();
        bad[8] = b'x';
        assert_eq!(Revision::from_bytes(&bad), None);
    }

    proptest! {
        #[test]
        fn encoding_preserves_order(a in 0i64..i64::MAX, b in 0i64..i64::MAX, c in 0i64..1000, d in 0i64..1000) {
            let (x, y) = (Revision::new(a, c), Revision::new(b, d));
            prop_assert_eq!(x.cmp(&y), x.to_bytes().cmp(&y.to_bytes()));
            prop_assert_eq!(Revision::from_bytes(&x.to_bytes()), Some(x));
        }
    }
}
