//! Messages of `/shoal/push/1`: a publisher uploads a blob's ciphertext to a seed node
//! (docs/protocol.md §6.6).
//!
//! One push per stream:
//!
//! ```text
//! publisher → seed node   offer  = 0x01 | blob id (32) | blob size u64
//! seed node → publisher   accept = 0x81 | count u16 | count × (start u32 | end u32)
//!                       | refuse = 0x82 | reason u8 | value u64
//! publisher → seed node   the wanted ranges, encoded as a /shoal/blob/1 range response body
//! seed node → publisher   stored = 0x83
//!                       | failed = 0x84 | reason u8 | value u64
//! ```
//!
//! The offer is fixed-size and holds only public facts (the blob id and size, both in any
//! share link's public part): the protocol has no field that could carry a key. The
//! publisher is authorised by its peer id, which the connection's handshake proved.
//! `accept` lists the blocks the seed node still wants (all of them for a new blob, the
//! rest for a push interrupted earlier, none if the blob is already stored); the seed node
//! verifies every pair and block against the blob id as it arrives.

use crate::blob::{BlobId, BlockRange, block_count};
use crate::format::Layout;

/// Protocol name on libp2p.
pub const PUSH_PROTOCOL: &str = "/shoal/push/1";
/// Length of an offer.
pub const OFFER_LEN: usize = 1 + 32 + 8;
/// Most ranges in an `accept` (a seed node whose wanted set is more fragmented asks for a
/// few blocks it already has: harmless).
pub const MAX_WANT_RANGES: usize = 1024;
/// Longest reply.
pub const MAX_REPLY_LEN: usize = 3 + MAX_WANT_RANGES * 8;

const TAG_OFFER: u8 = 0x01;
const TAG_ACCEPT: u8 = 0x81;
const TAG_REFUSE: u8 = 0x82;
const TAG_STORED: u8 = 0x83;
const TAG_FAILED: u8 = 0x84;

/// A publisher's offer of one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The blob.
    pub id: BlobId,
    /// Its size in bytes (checked against the id by the last block).
    pub blob_len: u64,
}

/// Why a seed node refused a push before any data moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The publisher's peer id is not on the seed node's allow-list.
    NotAllowed,
    /// Storing the blob would exceed the quota; `free` bytes are left.
    Quota {
        /// Bytes of quota left.
        free: u64,
    },
    /// The blob was taken down; the seed node will not store it.
    TakenDown,
    /// Too many pushes at once; try again after `retry_after_secs`.
    Busy {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The size is not a valid blob size, or disagrees with an interrupted push of the same
    /// blob that the seed node holds.
    BadOffer,
}

/// Why a seed node stopped a push it had accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The data did not verify against the blob id at this block (or a parent pair before
    /// it). The blocks before it are kept.
    Corrupt {
        /// The first block that failed.
        block: u32,
    },
    /// The seed node could not write to its disk.
    Disk,
    /// The blob was taken down during the push.
    TakenDown,
}

/// A seed node's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these ranges (sorted, non-empty, disjoint, non-adjacent, within the blob; empty
    /// when the blob is already stored).
    Accept {
        /// The blocks wanted.
        want: Vec<BlockRange>,
    },
    /// Not now or not ever; nothing follows.
    Refuse(Refusal),
    /// Every block arrived, verified and is durably stored; the seed node serves the blob.
    Stored,
    /// The push stopped; nothing follows.
    Failed(Failure),
}

/// Why bytes are not a valid push message. The sender misbehaved (or speaks a newer
/// protocol).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodePushError {
    /// Fewer bytes than the message needs.
    #[error("push message is truncated")]
    Truncated,
    /// More bytes than the message has.
    #[error("push message has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown tag.
    #[error("unknown push message tag {0:#04x}")]
    UnknownTag(u8),
    /// Unknown refusal or failure reason.
    #[error("unknown push reason {0}")]
    UnknownReason(u8),
    /// A reason that carries no value came with a non-zero value (messages are canonical).
    #[error("push reason {0} carries no value, but the value is not zero")]
    NonZeroValue(u8),
    /// Too many ranges.
    #[error("accept has {0} ranges; at most {MAX_WANT_RANGES} are allowed")]
    RangeCount(usize),
    /// Ranges empty, unsorted, overlapping or adjacent.
    #[error("accept ranges must be non-empty, sorted and disjoint")]
    BadRanges,
    /// A range ends past the blob's last block.
    #[error("accepted range {range:?} ends past the blob's {blocks} blocks")]
    OutOfRange {
        /// The offending range.
        range: BlockRange,
        /// Blocks in the blob.
        blocks: u64,
    },
    /// The offered size is not a valid blob size.
    #[error("offered blob size {0} is not valid")]
    BadSize(u64),
}

impl Offer {
    /// Encodes the offer.
    pub fn encode(&self) -> [u8; OFFER_LEN] {
        let mut out = [0u8; OFFER_LEN];
        out[0] = TAG_OFFER;
        out[1..33].copy_from_slice(self.id.as_bytes());
        out[33..].copy_from_slice(&self.blob_len.to_le_bytes());
        out
    }

    /// Decodes an offer and checks its size is a valid blob size.
    ///
    /// # Errors
    /// If the bytes are not one valid offer.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodePushError> {
        let (&tag, rest) = bytes.split_first().ok_or(DecodePushError::Truncated)?;
        if tag != TAG_OFFER {
            return Err(DecodePushError::UnknownTag(tag));
        }
        exact(rest, 40)?;
        let id = BlobId::from_bytes(rest[..32].try_into().expect("length checked"));
        let blob_len = u64::from_le_bytes(rest[32..].try_into().expect("length checked"));
        if !valid_blob_len(blob_len) {
            return Err(DecodePushError::BadSize(blob_len));
        }
        Ok(Self { id, blob_len })
    }

    /// Blocks in the offered blob.
    pub fn blocks(&self) -> u64 {
        block_count(self.blob_len)
    }
}

/// Whether `len` can be the size of a blob (the sealed header and segments of some file of
/// at most `MAX_FILE_LEN` bytes).
pub fn valid_blob_len(len: u64) -> bool {
    Layout::for_blob(len).is_ok()
}

fn exact(body: &[u8], want: usize) -> Result<(), DecodePushError> {
    match body.len().cmp(&want) {
        std::cmp::Ordering::Less => Err(DecodePushError::Truncated),
        std::cmp::Ordering::Greater => Err(DecodePushError::Trailing(body.len() - want)),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl Refusal {
    fn code_value(self) -> (u8, u64) {
        match self {
            Self::NotAllowed => (1, 0),
            Self::Quota { free } => (2, free),
            Self::TakenDown => (3, 0),
            Self::Busy { retry_after_secs } => (4, retry_after_secs),
            Self::BadOffer => (5, 0),
        }
    }

    fn from_code(code: u8, value: u64) -> Result<Self, DecodePushError> {
        if matches!(code, 1 | 3 | 5) && value != 0 {
            return Err(DecodePushError::NonZeroValue(code));
        }
        Ok(match code {
            1 => Self::NotAllowed,
            2 => Self::Quota { free: value },
            3 => Self::TakenDown,
            4 => Self::Busy {
                retry_after_secs: value,
            },
            5 => Self::BadOffer,
            other => return Err(DecodePushError::UnknownReason(other)),
        })
    }
}

impl Failure {
    fn code_value(self) -> (u8, u64) {
        match self {
            Self::Corrupt { block } => (1, u64::from(block)),
            Self::Disk => (2, 0),
            Self::TakenDown => (3, 0),
        }
    }

    fn from_code(code: u8, value: u64) -> Result<Self, DecodePushError> {
        if matches!(code, 2 | 3) && value != 0 {
            return Err(DecodePushError::NonZeroValue(code));
        }
        Ok(match code {
            1 => Self::Corrupt {
                block: u32::try_from(value).map_err(|_| DecodePushError::UnknownReason(code))?,
            },
            2 => Self::Disk,
            3 => Self::TakenDown,
            other => return Err(DecodePushError::UnknownReason(other)),
        })
    }
}

impl Reply {
    /// Encodes the reply.
    ///
    /// # Panics
    /// If an `Accept` has more than [`MAX_WANT_RANGES`] ranges or invalid ranges (build it
    /// with [`want_ranges`]).
    pub fn encode(&self) -> Vec<u8> {
        let coded = |tag: u8, (code, value): (u8, u64)| {
            let mut out = Vec::with_capacity(10);
            out.push(tag);
            out.push(code);
            out.extend_from_slice(&value.to_le_bytes());
            out
        };
        match self {
            Self::Accept { want } => {
                assert!(check_ranges(want).is_ok(), "encoding invalid accept ranges");
                let mut out = Vec::with_capacity(3 + 8 * want.len());
                out.push(TAG_ACCEPT);
                let n = u16::try_from(want.len()).expect("checked: at most MAX_WANT_RANGES");
                out.extend_from_slice(&n.to_le_bytes());
                for r in want {
                    out.extend_from_slice(&r.start.to_le_bytes());
                    out.extend_from_slice(&r.end.to_le_bytes());
                }
                out
            }
            Self::Refuse(r) => coded(TAG_REFUSE, r.code_value()),
            Self::Stored => vec![TAG_STORED],
            Self::Failed(f) => coded(TAG_FAILED, f.code_value()),
        }
    }

    /// How many bytes the reply starting with `prefix` has in all, given at least its first
    /// byte (an `accept` needs its first 3 bytes to tell; with fewer the answer is 3). A
    /// reader reads until it has that many, then calls [`Reply::decode`]. Never more than
    /// [`MAX_REPLY_LEN`].
    ///
    /// # Errors
    /// If the prefix cannot start a valid reply.
    pub fn frame_len(prefix: &[u8]) -> Result<usize, DecodePushError> {
        let &tag = prefix.first().ok_or(DecodePushError::Truncated)?;
        match tag {
            TAG_ACCEPT => {
                if prefix.len() < 3 {
                    return Ok(3);
                }
                let n = usize::from(u16::from_le_bytes([prefix[1], prefix[2]]));
                if n > MAX_WANT_RANGES {
                    return Err(DecodePushError::RangeCount(n));
                }
                Ok(3 + 8 * n)
            }
            TAG_REFUSE | TAG_FAILED => Ok(10),
            TAG_STORED => Ok(1),
            other => Err(DecodePushError::UnknownTag(other)),
        }
    }

    /// Decodes one reply to an offer of a blob of `blocks` blocks.
    ///
    /// # Errors
    /// If the bytes are not exactly one valid reply.
    pub fn decode(bytes: &[u8], blocks: u64) -> Result<Self, DecodePushError> {
        let (&tag, rest) = bytes.split_first().ok_or(DecodePushError::Truncated)?;
        let coded = |rest: &[u8]| -> Result<(u8, u64), DecodePushError> {
            exact(rest, 9)?;
            Ok((
                rest[0],
                u64::from_le_bytes(rest[1..].try_into().expect("length checked")),
            ))
        };
        match tag {
            TAG_ACCEPT => {
                if rest.len() < 2 {
                    return Err(DecodePushError::Truncated);
                }
                let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                if n > MAX_WANT_RANGES {
                    return Err(DecodePushError::RangeCount(n));
                }
                let body = &rest[2..];
                exact(body, n * 8)?;
                let u32_at =
                    |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("in bounds"));
                let want: Vec<BlockRange> = (0..n)
                    .map(|i| BlockRange {
                        start: u32_at(i * 8),
                        end: u32_at(i * 8 + 4),
                    })
                    .collect();
                check_ranges(&want)?;
                if let Some(r) = want.iter().find(|r| u64::from(r.end) > blocks) {
                    return Err(DecodePushError::OutOfRange { range: *r, blocks });
                }
                Ok(Self::Accept { want })
            }
            TAG_REFUSE => {
                let (code, value) = coded(rest)?;
                Ok(Self::Refuse(Refusal::from_code(code, value)?))
            }
            TAG_STORED => {
                exact(rest, 0)?;
                Ok(Self::Stored)
            }
            TAG_FAILED => {
                let (code, value) = coded(rest)?;
                Ok(Self::Failed(Failure::from_code(code, value)?))
            }
            other => Err(DecodePushError::UnknownTag(other)),
        }
    }
}

fn check_ranges(ranges: &[BlockRange]) -> Result<(), DecodePushError> {
    if ranges.len() > MAX_WANT_RANGES {
        return Err(DecodePushError::RangeCount(ranges.len()));
    }
    let sorted = ranges.windows(2).all(|w| w[0].end < w[1].start);
    if !sorted || ranges.iter().any(BlockRange::is_empty) {
        return Err(DecodePushError::BadRanges);
    }
    Ok(())
}

/// The `accept` ranges for a blob of `blocks` blocks of which `missing(b)` says which are
/// still wanted: the missing runs, and when they are more than [`MAX_WANT_RANGES`], the
/// closest runs merged (asking again for a few blocks already held) until they fit.
pub fn want_ranges(blocks: u32, missing: impl Fn(u32) -> bool) -> Vec<BlockRange> {
    let mut runs: Vec<BlockRange> = Vec::new();
    for b in 0..blocks {
        if !missing(b) {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.end == b => r.end = b + 1,
            _ => runs.push(BlockRange {
                start: b,
                end: b + 1,
            }),
        }
    }
    while runs.len() > MAX_WANT_RANGES {
        // Close the smallest gaps first: each pass at least halves the excess.
        let mut gaps: Vec<u32> = runs.windows(2).map(|w| w[1].start - w[0].end).collect();
        gaps.sort_unstable();
        let excess = runs.len() - MAX_WANT_RANGES;
        let limit = gaps[excess - 1];
        let mut merged: Vec<BlockRange> = Vec::with_capacity(runs.len());
        let mut budget = excess;
        for r in runs {
            match merged.last_mut() {
                Some(last) if budget > 0 && r.start - last.end <= limit => {
                    last.end = r.end;
                    budget -= 1;
                }
                _ => merged.push(r),
            }
        }
        runs = merged;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> BlobId {
        BlobId::from_bytes([7; 32])
    }

    #[test]
    fn offer_round_trips_and_has_no_room_for_a_key() {
        let offer = Offer {
            id: id(),
            blob_len: Layout::for_file(1 << 20).unwrap().blob_len(),
        };
        let bytes = offer.encode();
        assert_eq!(bytes.len(), OFFER_LEN);
        assert_eq!(Offer::decode(&bytes), Ok(offer));
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(Offer::decode(&long), Err(DecodePushError::Trailing(1)));
        assert_eq!(Offer::decode(&bytes[..40]), Err(DecodePushError::Truncated));
        let mut bad = bytes;
        bad[33..].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(Offer::decode(&bad), Err(DecodePushError::BadSize(5)));
    }

    #[test]
    fn known_bytes() {
        let reply = Reply::Accept {
            want: vec![
                BlockRange { start: 0, end: 2 },
                BlockRange { start: 5, end: 6 },
            ],
        };
        assert_eq!(
            hex::encode(reply.encode()),
            concat!("81", "0200", "00000000", "02000000", "05000000", "06000000")
        );
        assert_eq!(
            hex::encode(Reply::Refuse(Refusal::Quota { free: 0x0102 }).encode()),
            "82020201000000000000"
        );
        assert_eq!(hex::encode(Reply::Stored.encode()), "83");
        assert_eq!(
            hex::encode(Reply::Failed(Failure::Corrupt { block: 9 }).encode()),
            "84010900000000000000"
        );
    }

    #[test]
    fn replies_reject_bad_ranges_and_reasons() {
        let bytes = |ranges: &[(u32, u32)]| {
            let mut out = vec![TAG_ACCEPT];
            out.extend_from_slice(&u16::try_from(ranges.len()).unwrap().to_le_bytes());
            for &(s, e) in ranges {
                out.extend_from_slice(&s.to_le_bytes());
                out.extend_from_slice(&e.to_le_bytes());
            }
            out
        };
        assert_eq!(
            Reply::decode(&bytes(&[(0, 2), (2, 3)]), 10),
            Err(DecodePushError::BadRanges)
        );
        assert_eq!(
            Reply::decode(&bytes(&[(3, 3)]), 10),
            Err(DecodePushError::BadRanges)
        );
        assert!(matches!(
            Reply::decode(&bytes(&[(0, 11)]), 10),
            Err(DecodePushError::OutOfRange { .. })
        ));
        assert_eq!(
            Reply::decode(&bytes(&[]), 10),
            Ok(Reply::Accept { want: vec![] })
        );
        assert_eq!(
            Reply::decode(&[TAG_REFUSE, 9, 0, 0, 0, 0, 0, 0, 0, 0], 10),
            Err(DecodePushError::UnknownReason(9))
        );
        assert_eq!(
            Reply::decode(&[TAG_REFUSE, 1, 0, 1, 0, 0, 0, 0, 0, 0], 10),
            Err(DecodePushError::NonZeroValue(1)),
            "found by fuzzing: a value on a reason without one is not canonical"
        );
        assert_eq!(
            Reply::decode(&[0x99], 10),
            Err(DecodePushError::UnknownTag(0x99))
        );
        assert_eq!(
            Reply::frame_len(&[TAG_ACCEPT, 0xff, 0xff]),
            Err(DecodePushError::RangeCount(0xffff))
        );
    }

    #[test]
    fn want_ranges_merge_to_fit() {
        // Every other block missing: 3000 runs, merged down to the limit.
        let want = want_ranges(6000, |b| b % 2 == 0);
        assert_eq!(want.len(), MAX_WANT_RANGES);
        check_ranges(&want).unwrap();
        for b in (0..6000).step_by(2) {
            assert!(
                want.iter().any(|r| (r.start..r.end).contains(&b)),
                "{b} lost"
            );
        }
        assert_eq!(want_ranges(5, |_| false), vec![]);
        assert_eq!(
            want_ranges(5, |b| b != 2),
            vec![
                BlockRange { start: 0, end: 2 },
                BlockRange { start: 3, end: 5 }
            ]
        );
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        prop_oneof![
            proptest::collection::btree_set(0u32..5000, 0..300).prop_map(|set| Reply::Accept {
                want: want_ranges(5000, |b| set.contains(&b))
            }),
            any::<u64>().prop_map(|free| Reply::Refuse(Refusal::Quota { free })),
            any::<u64>().prop_map(|s| Reply::Refuse(Refusal::Busy {
                retry_after_secs: s
            })),
            Just(Reply::Refuse(Refusal::NotAllowed)),
            Just(Reply::Refuse(Refusal::TakenDown)),
            Just(Reply::Refuse(Refusal::BadOffer)),
            Just(Reply::Stored),
            any::<u32>().prop_map(|block| Reply::Failed(Failure::Corrupt { block })),
            Just(Reply::Failed(Failure::Disk)),
            Just(Reply::Failed(Failure::TakenDown)),
        ]
    }

    proptest! {
        #[test]
        fn replies_round_trip(reply in reply_strategy()) {
            let bytes = reply.encode();
            prop_assert_eq!(Reply::frame_len(&bytes[..bytes.len().min(3)]).unwrap(), bytes.len());
            prop_assert_eq!(Reply::frame_len(&bytes).unwrap(), bytes.len());
            prop_assert_eq!(Reply::decode(&bytes, 5000), Ok(reply));
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), blocks in any::<u64>()) {
            let _ = Offer::decode(&bytes);
            let _ = Reply::frame_len(&bytes);
            let _ = Reply::decode(&bytes, blocks);
        }
    }
}
