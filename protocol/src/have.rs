//! Have-maps: which blocks of a blob a peer holds, and `/shoal/have/1`, the protocol that
//! tells peers (docs/protocol.md §7).
//!
//! A downloader opens one stream per peer and blob and sends a [`Subscribe`]. The peer answers
//! with frames: first its whole have-map (as many [`HaveMsg::Have`] frames as it takes), then
//! one more frame each time it verifies new blocks, until it holds the whole blob (then it
//! closes the stream) or the subscriber closes it. A peer that does not serve the blob answers
//! [`HaveMsg::NotFound`]. So a partial downloader serves what it has at once, and everyone
//! learns which peer has what without asking block by block.
//!
//! ```text
//! subscribe = tag 0x01 | blob id (32)
//! frame     = length u16 | message            (length of message, at most MAX_FRAME_LEN)
//! message   = 0x81 have | 0x82 not found
//! have      = total blocks u32 | count u16 | count × (start u32 | end u32)
//! ```
//!
//! Ranges in one `have` are sorted, non-empty and disjoint, and end at most at `total`;
//! `have` frames only add blocks (a peer never "un-has" a block it announced).

use crate::blob::{BlobId, BlockRange};

/// Protocol name on libp2p.
pub const HAVE_PROTOCOL: &str = "/shoal/have/1";
/// Length of a [`Subscribe`].
pub const SUBSCRIBE_LEN: usize = 33;
/// Most ranges in one `have` frame (a bigger have-map takes several frames).
pub const MAX_HAVE_RANGES: usize = 1024;
/// Longest message in a frame.
pub const MAX_FRAME_LEN: usize = 1 + 4 + 2 + MAX_HAVE_RANGES * 8;

const TAG_SUBSCRIBE: u8 = 0x01;
const TAG_HAVE: u8 = 0x81;
const TAG_NOT_FOUND: u8 = 0x82;

/// "Tell me which blocks of this blob you have, and keep telling me."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The blob.
    pub id: BlobId,
}

/// A message from the serving side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaveMsg {
    /// The sender holds these blocks (in addition to those of earlier frames).
    Have {
        /// Blocks in the blob, as the sender knows it: must match the receiver's.
        total: u32,
        /// Sorted, non-empty, disjoint ranges ending at most at `total`.
        ranges: Vec<BlockRange>,
    },
    /// The sender does not serve this blob.
    NotFound,
}

/// Bytes that are not a valid have-protocol message: the sender misbehaved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeHaveError {
    /// Fewer bytes than the message needs.
    #[error("have message is truncated")]
    Truncated,
    /// More bytes than the message needs.
    #[error("have message has {0} trailing bytes")]
    Trailing(usize),
    /// A frame longer than [`MAX_FRAME_LEN`] or empty.
    #[error("have frame of {0} bytes; 1 to {MAX_FRAME_LEN} are allowed")]
    FrameLen(usize),
    /// Unknown tag.
    #[error("unknown have message tag {0:#04x}")]
    UnknownTag(u8),
    /// Too many ranges for one frame.
    #[error("have message with {0} ranges; at most {MAX_HAVE_RANGES} are allowed")]
    RangeCount(usize),
    /// Ranges empty, unsorted, overlapping or past `total`.
    #[error("have ranges must be non-empty, sorted, disjoint and within the blob")]
    BadRanges,
}

impl Subscribe {
    /// Encodes the subscription.
    pub fn encode(&self) -> [u8; SUBSCRIBE_LEN] {
        let mut out = [0u8; SUBSCRIBE_LEN];
        out[0] = TAG_SUBSCRIBE;
        out[1..].copy_from_slice(self.id.as_bytes());
        out
    }

    /// Decodes a subscription.
    ///
    /// # Errors
    /// An unknown tag.
    pub fn decode(bytes: &[u8; SUBSCRIBE_LEN]) -> Result<Self, DecodeHaveError> {
        if bytes[0] != TAG_SUBSCRIBE {
            return Err(DecodeHaveError::UnknownTag(bytes[0]));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[1..]);
        Ok(Self {
            id: BlobId::from_bytes(id),
        })
    }
}

fn check_ranges(total: u32, ranges: &[BlockRange]) -> Result<(), DecodeHaveError> {
    if ranges.len() > MAX_HAVE_RANGES {
        return Err(DecodeHaveError::RangeCount(ranges.len()));
    }
    let ordered = ranges.windows(2).all(|w| w[0].end < w[1].start);
    let inside = ranges.iter().all(|r| !r.is_empty() && r.end <= total);
    if ordered && inside {
        Ok(())
    } else {
        Err(DecodeHaveError::BadRanges)
    }
}

impl HaveMsg {
    /// Encodes the message as one frame (length prefix included).
    ///
    /// # Panics
    /// If the ranges break the rules of [`HaveMsg::Have`] (a caller bug; [`frames`] splits a
    /// have-map correctly).
    pub fn encode_frame(&self) -> Vec<u8> {
        let mut out = vec![0, 0];
        match self {
            Self::NotFound => out.push(TAG_NOT_FOUND),
            Self::Have { total, ranges } => {
                check_ranges(*total, ranges).expect("valid have ranges");
                out.push(TAG_HAVE);
                out.extend_from_slice(&total.to_le_bytes());
                let count = u16::try_from(ranges.len()).expect("at most MAX_HAVE_RANGES");
                out.extend_from_slice(&count.to_le_bytes());
                for r in ranges {
                    out.extend_from_slice(&r.start.to_le_bytes());
                    out.extend_from_slice(&r.end.to_le_bytes());
                }
            }
        }
        let len = u16::try_from(out.len() - 2).expect("MAX_FRAME_LEN fits u16");
        out[..2].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// The message length announced by a frame's 2-byte prefix.
    ///
    /// # Errors
    /// [`DecodeHaveError::FrameLen`] if it is 0 or more than [`MAX_FRAME_LEN`]: stop reading.
    pub fn frame_len(prefix: [u8; 2]) -> Result<usize, DecodeHaveError> {
        let len = usize::from(u16::from_le_bytes(prefix));
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(DecodeHaveError::FrameLen(len));
        }
        Ok(len)
    }

    /// Decodes a message (a frame without its length prefix).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeHaveError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(DecodeHaveError::FrameLen(bytes.len()));
        }
        let (&tag, rest) = bytes.split_first().ok_or(DecodeHaveError::Truncated)?;
        match tag {
            TAG_NOT_FOUND if rest.is_empty() => Ok(Self::NotFound),
            TAG_NOT_FOUND => Err(DecodeHaveError::Trailing(rest.len())),
            TAG_HAVE => {
                if rest.len() < 6 {
                    return Err(DecodeHaveError::Truncated);
                }
                let total = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                let count = usize::from(u16::from_le_bytes(rest[4..6].try_into().expect("2")));
                if count > MAX_HAVE_RANGES {
                    return Err(DecodeHaveError::RangeCount(count));
                }
                let body = &rest[6..];
                match body.len().cmp(&(count * 8)) {
                    std::cmp::Ordering::Less => return Err(DecodeHaveError::Truncated),
                    std::cmp::Ordering::Greater => {
                        return Err(DecodeHaveError::Trailing(body.len() - count * 8));
                    }
                    std::cmp::Ordering::Equal => {}
                }
                let ranges: Vec<BlockRange> = body
                    .chunks_exact(8)
                    .map(|c| BlockRange {
                        start: u32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                        end: u32::from_le_bytes(c[4..].try_into().expect("4 bytes")),
                    })
                    .collect();
                check_ranges(total, &ranges)?;
                Ok(Self::Have { total, ranges })
            }
            other => Err(DecodeHaveError::UnknownTag(other)),
        }
    }
}

/// Splits ranges into `have` frames of at most [`MAX_HAVE_RANGES`] ranges each.
pub fn frames(total: u32, ranges: &[BlockRange]) -> impl Iterator<Item = HaveMsg> + '_ {
    ranges.chunks(MAX_HAVE_RANGES).map(move |c| HaveMsg::Have {
        total,
        ranges: c.to_vec(),
    })
}

/// A set of blocks as a bitmap: what a peer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSet {
    words: Vec<u64>,
    total: u32,
    count: u32,
}

impl BlockSet {
    /// An empty set for a blob of `total` blocks.
    pub fn new(total: u32) -> Self {
        Self {
            words: vec![0; (total as usize).div_ceil(64)],
            total,
            count: 0,
        }
    }

    /// The set of all `total` blocks.
    pub fn full(total: u32) -> Self {
        let mut s = Self::new(total);
        s.insert_range(BlockRange {
            start: 0,
            end: total,
        });
        s
    }

    /// Blocks in the blob.
    pub const fn total(&self) -> u32 {
        self.total
    }

    /// Blocks in the set.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether the set is empty.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the set holds every block.
    pub const fn is_full(&self) -> bool {
        self.count == self.total
    }

    /// Whether `b` is in the set (false past the end).
    pub fn contains(&self, b: u32) -> bool {
        b < self.total && self.words[b as usize / 64] & (1 << (b % 64)) != 0
    }

    /// Whether every block of `r` is in the set.
    pub fn contains_range(&self, r: BlockRange) -> bool {
        (r.start..r.end).all(|b| self.contains(b))
    }

    /// Adds `b`; returns whether it was new. Blocks past the end are ignored.
    pub fn insert(&mut self, b: u32) -> bool {
        if b >= self.total {
            return false;
        }
        let w = &mut self.words[b as usize / 64];
        let new = *w & (1 << (b % 64)) == 0;
        *w |= 1 << (b % 64);
        self.count += u32::from(new);
        new
    }

    /// Adds every block of `r` (clamped to the blob).
    pub fn insert_range(&mut self, r: BlockRange) {
        for b in r.start..r.end.min(self.total) {
            self.insert(b);
        }
    }

    /// The blocks, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = u32::try_from(i * 64).expect("total is a u32");
            BitIter(w).map(move |bit| base + bit)
        })
    }

    /// The set as sorted, disjoint, non-adjacent ranges.
    pub fn ranges(&self) -> Vec<BlockRange> {
        self.ranges_not_in(None)
    }

    /// The blocks in `self` but not in `other`, as ranges (what to tell a peer that was told
    /// `other` already).
    ///
    /// # Panics
    /// If the two sets are for blobs of different sizes.
    pub fn difference_ranges(&self, other: &Self) -> Vec<BlockRange> {
        assert_eq!(self.total, other.total, "sets of the same blob");
        self.ranges_not_in(Some(other))
    }

    fn ranges_not_in(&self, other: Option<&Self>) -> Vec<BlockRange> {
        let mut out: Vec<BlockRange> = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let w = w & !other.map_or(0, |o| o.words[i]);
            if w == 0 {
                continue;
            }
            let base = u32::try_from(i * 64).expect("total is a u32");
            for bit in BitIter(w) {
                let b = base + bit;
                match out.last_mut() {
                    Some(r) if r.end == b => r.end = b + 1,
                    _ => out.push(BlockRange {
                        start: b,
                        end: b + 1,
                    }),
                }
            }
        }
        out
    }
}

struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        let id = BlobId::from_bytes([7; 32]);
        let sub = Subscribe { id }.encode();
        assert_eq!(sub[0], 0x01);
        assert_eq!(Subscribe::decode(&sub), Ok(Subscribe { id }));
        let f = HaveMsg::Have {
            total: 10,
            ranges: vec![
                BlockRange { start: 0, end: 2 },
                BlockRange { start: 9, end: 10 },
            ],
        }
        .encode_frame();
        assert_eq!(
            f,
            [
                23, 0, 0x81, 10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0
            ]
        );
        assert_eq!(HaveMsg::NotFound.encode_frame(), [1, 0, 0x82]);
    }

    #[test]
    fn rejects_bad_messages() {
        let have = |total, ranges: &[(u32, u32)]| {
            let mut m = vec![0x81];
            m.extend_from_slice(&u32::to_le_bytes(total));
            m.extend_from_slice(&u16::try_from(ranges.len()).unwrap().to_le_bytes());
            for (s, e) in ranges {
                m.extend_from_slice(&s.to_le_bytes());
                m.extend_from_slice(&e.to_le_bytes());
            }
            HaveMsg::decode(&m)
        };
        assert!(have(10, &[(0, 10)]).is_ok());
        assert_eq!(have(10, &[(0, 11)]), Err(DecodeHaveError::BadRanges));
        assert_eq!(have(10, &[(3, 3)]), Err(DecodeHaveError::BadRanges));
        assert_eq!(have(10, &[(5, 6), (1, 2)]), Err(DecodeHaveError::BadRanges));
        assert_eq!(have(10, &[(1, 5), (5, 6)]), Err(DecodeHaveError::BadRanges));
        assert_eq!(HaveMsg::decode(&[]), Err(DecodeHaveError::Truncated));
        assert_eq!(
            HaveMsg::decode(&[0x82, 0]),
            Err(DecodeHaveError::Trailing(1))
        );
        assert_eq!(
            HaveMsg::decode(&[0x01]),
            Err(DecodeHaveError::UnknownTag(1))
        );
        assert_eq!(
            HaveMsg::decode(&[0x81, 1, 0, 0, 0, 1, 0, 0]),
            Err(DecodeHaveError::Truncated)
        );
        assert_eq!(
            HaveMsg::decode(&[0x81, 1, 0, 0, 0, 0xff, 0xff]),
            Err(DecodeHaveError::RangeCount(0xffff))
        );
        assert_eq!(
            HaveMsg::frame_len([0, 0]),
            Err(DecodeHaveError::FrameLen(0))
        );
        assert_eq!(
            HaveMsg::frame_len(u16::try_from(MAX_FRAME_LEN + 1).unwrap().to_le_bytes()),
            Err(DecodeHaveError::FrameLen(MAX_FRAME_LEN + 1))
        );
        let mut bad = [0u8; SUBSCRIBE_LEN];
        bad[0] = 0x02;
        assert_eq!(Subscribe::decode(&bad), Err(DecodeHaveError::UnknownTag(2)));
    }

    proptest! {
        /// A set survives ranges → frames → bytes → decode → set, and differences carry
        /// exactly the new blocks.
        #[test]
        fn sets_round_trip_through_frames(
            total in 1u32..5000,
            blocks in proptest::collection::vec(any::<u32>(), 0..3000),
            more in proptest::collection::vec(any::<u32>(), 0..500),
        ) {
            let mut set = BlockSet::new(total);
            for b in &blocks {
                set.insert(b % total);
            }
            let mut got = BlockSet::new(total);
            for msg in frames(total, &set.ranges()) {
                let frame = msg.encode_frame();
                let len = HaveMsg::frame_len([frame[0], frame[1]]).unwrap();
                prop_assert_eq!(len, frame.len() - 2);
                match HaveMsg::decode(&frame[2..]).unwrap() {
                    HaveMsg::Have { total: t, ranges } => {
                        prop_assert_eq!(t, total);
                        for r in ranges { got.insert_range(r); }
                    }
                    HaveMsg::NotFound => prop_assert!(false),
                }
            }
            prop_assert_eq!(&got, &set);
            prop_assert_eq!(set.iter().count() as u32, set.len());
            let before = set.clone();
            for b in &more {
                set.insert(b % total);
            }
            let mut merged = before.clone();
            for r in set.difference_ranges(&before) {
                prop_assert!(!(r.start..r.end).any(|b| before.contains(b)));
                merged.insert_range(r);
            }
            prop_assert_eq!(merged, set);
        }

        /// Decoding arbitrary bytes never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = HaveMsg::decode(&bytes);
        }
    }
}
