//! Compact storage of a peer's listen addresses.

use std::fmt;
use std::sync::Arc;

use shoal_protocol::tracker::{MAX_ADDR_LEN, MAX_ADDRS};

/// A peer's listen addresses (opaque binary multiaddrs), stored as one shared allocation of
/// length-prefixed byte strings: `len u8 | bytes` repeated. An empty list allocates
/// nothing; cloning is a reference-count increment, so answers share the table's bytes
/// instead of copying them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AddrList(Option<Arc<[u8]>>);

impl AddrList {
    /// Packs addresses. Addresses that break the protocol bounds (empty, longer than
    /// [`MAX_ADDR_LEN`], or past the first [`MAX_ADDRS`]) are skipped: the table only
    /// stores what a valid announce can carry.
    pub fn new(addrs: &[Vec<u8>]) -> Self {
        let valid = || {
            addrs
                .iter()
                .filter(|a| !a.is_empty() && a.len() <= MAX_ADDR_LEN)
                .take(MAX_ADDRS)
        };
        let len: usize = valid().map(|a| 1 + a.len()).sum();
        if len == 0 {
            return Self(None);
        }
        let mut packed = Vec::with_capacity(len);
        for a in valid() {
            packed.push(u8::try_from(a.len()).expect("filtered: at most MAX_ADDR_LEN"));
            packed.extend_from_slice(a);
        }
        Self(Some(packed.into()))
    }

    /// The addresses, in announce order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest: &[u8] = self.0.as_deref().unwrap_or_default();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (addr, tail) = tail.split_at(usize::from(len));
            rest = tail;
            Some(addr)
        })
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The addresses as owned byte vectors (for [`shoal_protocol::tracker::PeerEntry`]).
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Whether this holds exactly `addrs` (after the filtering [`AddrList::new`] does), so
    /// a re-announce with unchanged addresses allocates nothing.
    pub(crate) fn same_as(&self, addrs: &[Vec<u8>]) -> bool {
        let mut mine = self.iter();
        for a in addrs
            .iter()
            .filter(|a| !a.is_empty() && a.len() <= MAX_ADDR_LEN)
            .take(MAX_ADDRS)
        {
            if mine.next() != Some(a.as_slice()) {
                return false;
            }
        }
        mine.next().is_none()
    }

    /// Heap bytes this list owns (shared lists are counted by each holder).
    pub(crate) fn heap_bytes(&self) -> usize {
        // An `Arc<[u8]>` allocation holds two reference counts before the bytes.
        self.0
            .as_ref()
            .map_or(0, |a| 2 * size_of::<usize>() + a.len())
    }
}

impl fmt::Debug for AddrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hex<'a>(&'a [u8]);
        impl fmt::Debug for Hex<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        f.debug_list().entries(self.iter().map(Hex)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(addrs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12)) {
            let list = AddrList::new(&addrs);
            let kept: Vec<Vec<u8>> = addrs
                .iter()
                .filter(|a| !a.is_empty() && a.len() <= MAX_ADDR_LEN)
                .take(MAX_ADDRS)
                .cloned()
                .collect();
            prop_assert_eq!(list.to_vecs(), kept.clone());
            prop_assert_eq!(list.len(), kept.len());
            prop_assert_eq!(list.is_empty(), kept.is_empty());
            prop_assert!(list.same_as(&addrs));
            prop_assert!(list.same_as(&kept));
            let mut other = kept.clone();
            other.push(vec![1, 2, 3]);
            prop_assert_eq!(list.same_as(&other), kept.len() == MAX_ADDRS);
        }
    }

    #[test]
    fn debug_is_hex() {
        let list = AddrList::new(&[vec![0xab, 1], vec![2]]);
        assert_eq!(format!("{list:?}"), "[ab01, 02]");
        assert_eq!(format!("{:?}", AddrList::default()), "[]");
    }
}
