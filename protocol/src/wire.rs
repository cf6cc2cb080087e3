//! Messages of `/shoal/blob/1` (docs/protocol.md §6).
//!
//! One request per stream. The client writes a [`BlobRequest`]; the server answers with a
//! [`ResponseHeader`] and, if the status is `Ok`, the range response encoded as
//! [`crate::blob::RangeEncoder`] walks it. All integers are little-endian.
//!
//! ```text
//! request  = tag 0x01 | blob id (32) | count u16 | count × (start u32 | end u32)
//! response = status u8 | if ok: blob size u64 | encoded ranges
//! ```

use crate::blob::{BlobId, BlockRange};

/// Protocol name on libp2p.
pub const BLOB_PROTOCOL: &str = "/shoal/blob/1";
/// Most ranges in one request.
pub const MAX_RANGES: usize = 256;
/// Largest encoded request: a reader must stop reading past this.
pub const MAX_REQUEST_LEN: usize = 1 + 32 + 2 + MAX_RANGES * 8;
/// Most blocks a server must serve for one request (64 MiB): it may answer larger requests
/// with `BadRequest`. Bounds a server's work per stream; clients ask for far less.
pub const MAX_SERVE_BLOCKS: u64 = 1024;
/// Length of an `Ok` response header; other statuses are one byte.
pub const RESPONSE_HEADER_LEN: usize = 9;
const TAG_REQUEST_V1: u8 = 0x01;

/// A request for some blocks of a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRequest {
    /// The blob.
    pub id: BlobId,
    /// Sorted, non-empty, non-overlapping, non-adjacent block ranges.
    pub ranges: Vec<BlockRange>,
}

/// Why bytes are not a valid request. The sender misbehaved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeRequestError {
    /// Fewer bytes than the header says.
    #[error("request is truncated")]
    Truncated,
    /// More bytes than the header says.
    #[error("request has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown message tag (a newer or foreign protocol).
    #[error("unknown request tag {0:#04x}")]
    UnknownTag(u8),
    /// Zero or too many ranges.
    #[error("request has {0} ranges; 1 to {MAX_RANGES} are allowed")]
    RangeCount(usize),
    /// Ranges empty, unsorted, overlapping or adjacent.
    #[error("request ranges must be non-empty, sorted and disjoint")]
    BadRanges,
    /// A range ends past the blob's last block.
    #[error("range {range:?} ends past the blob's {blocks} blocks")]
    OutOfRange {
        /// The offending range.
        range: BlockRange,
        /// Blocks in the blob.
        blocks: u64,
    },
}

impl BlobRequest {
    /// Checks the range rules ([`BlobRequest::ranges`]).
    ///
    /// # Errors
    /// Which rule is broken.
    pub fn validate(&self) -> Result<(), DecodeRequestError> {
        if self.ranges.is_empty() || self.ranges.len() > MAX_RANGES {
            return Err(DecodeRequestError::RangeCount(self.ranges.len()));
        }
        let sorted = self.ranges.windows(2).all(|w| w[0].end < w[1].start);
        if !sorted || self.ranges.iter().any(BlockRange::is_empty) {
            return Err(DecodeRequestError::BadRanges);
        }
        Ok(())
    }

    /// Encodes the request.
    ///
    /// # Panics
    /// If the request breaks [`BlobRequest::validate`]: build requests with
    /// [`BlobRequest::new`].
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.validate().is_ok(), "encoding an invalid request");
        let mut out = Vec::with_capacity(35 + 8 * self.ranges.len());
        out.push(TAG_REQUEST_V1);
        out.extend_from_slice(self.id.as_bytes());
        let n = u16::try_from(self.ranges.len()).expect("validated: at most MAX_RANGES");
        out.extend_from_slice(&n.to_le_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
        }
        out
    }

    /// A request for a set of blocks, normalised into sorted disjoint ranges.
    ///
    /// # Errors
    /// If the blocks make more than [`MAX_RANGES`] ranges, or none.
    pub fn new(
        id: BlobId,
        blocks: impl IntoIterator<Item = u32>,
    ) -> Result<Self, DecodeRequestError> {
        let mut blocks: Vec<u32> = blocks.into_iter().collect();
        blocks.sort_unstable();
        blocks.dedup();
        let mut ranges: Vec<BlockRange> = Vec::new();
        for b in blocks {
            // u32::MAX is never a block: MAX_FILE_LEN keeps indices below it.
            let end = b.checked_add(1).ok_or(DecodeRequestError::BadRanges)?;
            match ranges.last_mut() {
                Some(r) if r.end == b => r.end = end,
                _ => ranges.push(BlockRange { start: b, end }),
            }
        }
        let req = Self { id, ranges };
        req.validate()?;
        Ok(req)
    }

    /// Checks that every range lies within a blob of `blocks` blocks. A server answers
    /// [`ResponseHeader::BadRequest`] otherwise.
    ///
    /// # Errors
    /// [`DecodeRequestError::OutOfRange`] naming the first range past the end.
    pub fn check_within(&self, blocks: u64) -> Result<(), DecodeRequestError> {
        match self.ranges.iter().find(|r| u64::from(r.end) > blocks) {
            Some(r) => Err(DecodeRequestError::OutOfRange { range: *r, blocks }),
            None => Ok(()),
        }
    }

    /// Total blocks requested.
    pub fn block_count(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.len())).sum()
    }

    /// Decodes a request.
    ///
    /// # Errors
    /// If the bytes are not exactly one valid request.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeRequestError> {
        let (&tag, rest) = bytes.split_first().ok_or(DecodeRequestError::Truncated)?;
        if tag != TAG_REQUEST_V1 {
            return Err(DecodeRequestError::UnknownTag(tag));
        }
        if rest.len() < 34 {
            return Err(DecodeRequestError::Truncated);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&rest[..32]);
        let n = usize::from(u16::from_le_bytes([rest[32], rest[33]]));
        if n == 0 || n > MAX_RANGES {
            return Err(DecodeRequestError::RangeCount(n));
        }
        let body = &rest[34..];
        match body.len().cmp(&(n * 8)) {
            std::cmp::Ordering::Less => return Err(DecodeRequestError::Truncated),
            std::cmp::Ordering::Greater => {
                return Err(DecodeRequestError::Trailing(body.len() - n * 8));
            }
            std::cmp::Ordering::Equal => {}
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        let ranges = (0..n)
            .map(|i| BlockRange {
                start: u32_at(i * 8),
                end: u32_at(i * 8 + 4),
            })
            .collect();
        let req = Self {
            id: BlobId::from_bytes(id),
            ranges,
        };
        req.validate()?;
        Ok(req)
    }

    /// Length of the encoded request given its first 35 bytes, so a reader knows how much
    /// more to read (never more than [`MAX_REQUEST_LEN`]).
    ///
    /// # Errors
    /// If the prefix is not a valid request start.
    pub fn encoded_len(prefix: &[u8; 35]) -> Result<usize, DecodeRequestError> {
        if prefix[0] != TAG_REQUEST_V1 {
            return Err(DecodeRequestError::UnknownTag(prefix[0]));
        }
        let n = usize::from(u16::from_le_bytes([prefix[33], prefix[34]]));
        if n == 0 || n > MAX_RANGES {
            return Err(DecodeRequestError::RangeCount(n));
        }
        Ok(35 + n * 8)
    }
}

/// The server's answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseHeader {
    /// The encoded ranges follow; the blob is `blob_len` bytes.
    Ok {
        /// Blob size in bytes (verified by the client with the last block, or the link).
        blob_len: u64,
    },
    /// The server does not have this blob.
    NotFound,
    /// The server is at its upload limit; try later or elsewhere.
    Busy,
    /// The server has the blob but not every requested block.
    Missing,
    /// The request was malformed or out of range.
    BadRequest,
    /// The server's stored copy of block `block` (one the request names) failed its own
    /// check against the blob id: it does not serve that block, only the others (a seed node
    /// fetches it again from peers). Not the asker's fault, and no proof of lying.
    Corrupt {
        /// The block.
        block: u32,
    },
}

/// An unknown status byte.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown response status {0:#04x}")]
pub struct UnknownStatus(pub u8);

impl ResponseHeader {
    const OK: u8 = 0;
    const NOT_FOUND: u8 = 1;
    const BUSY: u8 = 2;
    const MISSING: u8 = 3;
    const BAD_REQUEST: u8 = 4;
    const CORRUPT: u8 = 5;

    /// Encodes the header (9 bytes for `Ok`, 5 for `Corrupt`, else 1).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Self::Ok { blob_len } => {
                let mut v = vec![Self::OK];
                v.extend_from_slice(&blob_len.to_le_bytes());
                v
            }
            Self::NotFound => vec![Self::NOT_FOUND],
            Self::Busy => vec![Self::BUSY],
            Self::Missing => vec![Self::MISSING],
            Self::BadRequest => vec![Self::BAD_REQUEST],
            Self::Corrupt { block } => {
                let mut v = vec![Self::CORRUPT];
                v.extend_from_slice(&block.to_le_bytes());
                v
            }
        }
    }

    /// Bytes that follow status byte `status` in the header: 8 for `Ok` (the blob size),
    /// 4 for `Corrupt` (the block), 0 for the others and for unknown bytes.
    pub const fn trailing_len(status: u8) -> usize {
        match status {
            Self::OK => 8,
            Self::CORRUPT => 4,
            _ => 0,
        }
    }

    /// Decodes a whole header: the status byte and the [`ResponseHeader::trailing_len`]
    /// bytes after it.
    ///
    /// # Errors
    /// An unknown status byte, or `trailing` of another length than the status takes.
    pub fn decode(status: u8, trailing: &[u8]) -> Result<Self, UnknownStatus> {
        if trailing.len() != Self::trailing_len(status) {
            return Err(UnknownStatus(status));
        }
        Ok(match Self::decode_status(status)? {
            Some(header) => header,
            None if status == Self::CORRUPT => Self::Corrupt {
                block: u32::from_le_bytes(trailing.try_into().expect("length checked")),
            },
            None => Self::ok_with_len(trailing.try_into().expect("length checked")),
        })
    }

    /// Decodes the status byte. `None`: more bytes follow ([`ResponseHeader::trailing_len`]:
    /// 8 bytes of size for `Ok`, status 0; 4 bytes of block index for `Corrupt`, status 5);
    /// decode the whole header with [`ResponseHeader::decode`].
    ///
    /// # Errors
    /// An unknown status byte.
    pub const fn decode_status(status: u8) -> Result<Option<Self>, UnknownStatus> {
        match status {
            Self::NOT_FOUND => Ok(Some(Self::NotFound)),
            Self::BUSY => Ok(Some(Self::Busy)),
            Self::MISSING => Ok(Some(Self::Missing)),
            Self::BAD_REQUEST => Ok(Some(Self::BadRequest)),
            Self::OK | Self::CORRUPT => Ok(None),
            other => Err(UnknownStatus(other)),
        }
    }

    /// An `Ok` header from its 8 size bytes.
    pub const fn ok_with_len(len: [u8; 8]) -> Self {
        Self::Ok {
            blob_len: u64::from_le_bytes(len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_round_trip(id in any::<[u8; 32]>(), blocks in proptest::collection::btree_set(0u32..5000, 1..100)) {
            let req = BlobRequest::new(BlobId::from_bytes(id), blocks.iter().copied()).unwrap();
            prop_assert_eq!(req.block_count(), blocks.len() as u64);
            let bytes = req.encode();
            prop_assert!(bytes.len() <= MAX_REQUEST_LEN);
            let prefix: [u8; 35] = bytes[..35].try_into().unwrap();
            prop_assert_eq!(BlobRequest::encoded_len(&prefix).unwrap(), bytes.len());
            prop_assert_eq!(BlobRequest::decode(&bytes).unwrap(), req);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BlobRequest::decode(&bytes);
        }

        #[test]
        fn status_round_trip(len in any::<u64>(), s in 0u8..=255) {
            let h = ResponseHeader::Ok { blob_len: len };
            let b = h.encode();
            prop_assert_eq!(ResponseHeader::decode_status(b[0]), Ok(None));
            prop_assert_eq!(ResponseHeader::ok_with_len(b[1..9].try_into().unwrap()), h);
            let _ = ResponseHeader::decode_status(s);
        }

        /// Every header decodes from its own bytes; any status byte with any trailing bytes
        /// decodes or errs, never panics.
        #[test]
        fn header_round_trip(len in any::<u64>(), block in any::<u32>(), s in 0u8..=255, tail in proptest::collection::vec(any::<u8>(), 0..10)) {
            for h in [
                ResponseHeader::Ok { blob_len: len },
                ResponseHeader::NotFound,
                ResponseHeader::Busy,
                ResponseHeader::Missing,
                ResponseHeader::BadRequest,
                ResponseHeader::Corrupt { block },
            ] {
                let b = h.encode();
                prop_assert_eq!(b.len(), 1 + ResponseHeader::trailing_len(b[0]));
                prop_assert_eq!(ResponseHeader::decode(b[0], &b[1..]), Ok(h));
            }
            let _ = ResponseHeader::decode(s, &tail);
        }
    }

    #[test]
    fn rejects_bad_ranges() {
        let id = BlobId::from_bytes([1; 32]);
        let mut bytes = BlobRequest::new(id, [1, 2, 5]).unwrap().encode();
        // Make the second range start inside the first: [1,3) then [2,6).
        bytes[35 + 8..35 + 12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            BlobRequest::decode(&bytes),
            Err(DecodeRequestError::BadRanges)
        );
        assert_eq!(
            BlobRequest::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeRequestError::Truncated)
        );
        assert_eq!(
            BlobRequest::decode(&[9]),
            Err(DecodeRequestError::UnknownTag(9))
        );
        assert!(BlobRequest::new(id, 0..(2 * MAX_RANGES as u32 + 2)).is_ok());
        assert_eq!(
            BlobRequest::new(id, [u32::MAX]),
            Err(DecodeRequestError::BadRanges)
        );
        let req = BlobRequest::new(id, [3, 4]).unwrap();
        assert_eq!(req.check_within(5), Ok(()));
        assert!(matches!(
            req.check_within(4),
            Err(DecodeRequestError::OutOfRange { .. })
        ));
        assert_eq!(
            BlobRequest::new(id, (0..(MAX_RANGES as u32 + 1)).map(|i| i * 2)),
            Err(DecodeRequestError::RangeCount(MAX_RANGES + 1))
        );
    }
}
