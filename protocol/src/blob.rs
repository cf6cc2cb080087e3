//! Blob ids, blocks, outboards and verified streaming of block ranges (sans-IO).
//!
//! A blob id is the BLAKE3 hash of the blob. With 64 KiB chunk groups
//! (`BlockSize::from_chunk_log(6)`) the bao tree's leaves are exactly the sealed segments, so
//! "block" and "segment" are the same unit everywhere: requests, have-maps and storage.
//!
//! The encoded form of a range request is bao-tree's pre-order response: for each node
//! the iterator visits, either a 64-byte parent (left hash || right hash) or the leaf bytes.
//! [`RangeEncoder`] tells a server what to write next; [`RangeDecoder`] verifies what a
//! client reads, item by item, before the bytes are used.

use std::fmt;

use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges, iter::BaoChunk, iter::ResponseIter};
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::format::SEGMENT_LEN;

/// The bao block size: 2^6 chunks of 1 KiB = 64 KiB = one sealed segment.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(BLOCK_CHUNK_LOG);
const BLOCK_CHUNK_LOG: u8 = 6;
const CHUNKS_PER_BLOCK: u64 = 1 << BLOCK_CHUNK_LOG;
/// Bytes of one parent record in an encoded stream and in an outboard.
pub const PARENT_LEN: usize = 64;

const _: () = assert!(BLOCK_SIZE.bytes() == SEGMENT_LEN);

/// The id of a blob: the BLAKE3 hash (bao root) of its bytes. Displays as 52 lowercase
/// base32 characters, and parses back from them with `str::parse` (the `FromStr` impl lives
/// with the link parser, whose `BadBlobId` error it returns).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The blob id of a whole blob in memory (tests, vectors, small blobs).
    pub fn of(blob: &[u8]) -> Self {
        Self(*blake3::hash(blob).as_bytes())
    }
    fn hash(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::base32::encode(&self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// Index of a 64 KiB block (= sealed segment) in a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockIndex(pub u32);

impl BlockIndex {
    /// Byte offset of this block in the blob.
    pub const fn offset(self) -> u64 {
        self.0 as u64 * SEGMENT_LEN as u64
    }
}

impl fmt::Display for BlockIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Number of blocks in a blob of `blob_len` bytes (0 for an empty blob).
pub fn block_count(blob_len: u64) -> u64 {
    blob_len.div_ceil(SEGMENT_LEN as u64)
}

/// Length in bytes of block `index` in a blob of `blob_len` bytes (0 past the end).
pub fn block_len(blob_len: u64, index: BlockIndex) -> usize {
    let start = index.offset();
    if start >= blob_len {
        0
    } else {
        // At most SEGMENT_LEN, which fits usize.
        usize::try_from((blob_len - start).min(SEGMENT_LEN as u64)).unwrap_or(SEGMENT_LEN)
    }
}

fn tree(blob_len: u64) -> BaoTree {
    BaoTree::new(blob_len, BLOCK_SIZE)
}

/// The chaining value of one block as a leaf of the bao tree (`is_root` only for a blob of
/// exactly one block, whose id is then the plain BLAKE3 hash of the block).
pub fn block_hash(index: BlockIndex, data: &[u8], is_root: bool) -> blake3::Hash {
    if is_root {
        blake3::hash(data)
    } else {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(index.offset());
        hasher.update(data);
        let cv: ChainingValue = hasher.finalize_non_root();
        blake3::Hash::from(cv)
    }
}

fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    let (l, r): (ChainingValue, ChainingValue) = (*left.as_bytes(), *right.as_bytes());
    if is_root {
        merge_subtrees_root(&l, &r, Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
}

/// A blob's outboard: every parent hash pair above block level, in bao-tree's pre-order
/// layout (64 bytes per parent; about 0.1 % of the blob).
#[derive(Clone, PartialEq, Eq)]
pub struct Outboard {
    blob_len: u64,
    id: BlobId,
    pairs: Vec<u8>,
}

impl fmt::Debug for Outboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outboard")
            .field("id", &self.id)
            .field("blob_len", &self.blob_len)
            .field("bytes", &self.pairs.len())
            .finish()
    }
}

/// An outboard's bytes do not match its declared size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("outboard is {got} bytes; a blob of {blob_len} bytes needs {expected}")]
pub struct OutboardSizeError {
    /// Declared blob size.
    pub blob_len: u64,
    /// Bytes given.
    pub got: usize,
    /// Bytes required.
    pub expected: u64,
}

impl Outboard {
    /// Size in bytes of the outboard of a blob of `blob_len` bytes.
    pub fn size_for(blob_len: u64) -> u64 {
        tree(blob_len).outboard_size()
    }

    /// Rebuilds an outboard from stored bytes. Nothing is verified here: the pairs are
    /// checked against the id whenever a range is encoded and decoded.
    ///
    /// # Errors
    /// If `pairs` has the wrong length for `blob_len`.
    pub fn from_parts(
        id: BlobId,
        blob_len: u64,
        pairs: Vec<u8>,
    ) -> Result<Self, OutboardSizeError> {
        let expected = Self::size_for(blob_len);
        if pairs.len() as u64 != expected {
            return Err(OutboardSizeError {
                blob_len,
                got: pairs.len(),
                expected,
            });
        }
        Ok(Self {
            blob_len,
            id,
            pairs,
        })
    }

    /// The blob id (root hash).
    pub const fn id(&self) -> BlobId {
        self.id
    }
    /// The blob size in bytes.
    pub const fn blob_len(&self) -> u64 {
        self.blob_len
    }
    /// The raw pre-order pairs.
    pub fn as_bytes(&self) -> &[u8] {
        &self.pairs
    }

    /// An outboard to be filled in as blocks are verified (a downloader's): all pairs zero.
    /// Only the pairs above blocks it has verified are meaningful, so only those blocks may
    /// be served from it.
    pub fn partial(id: BlobId, blob_len: u64) -> Self {
        let size = usize::try_from(Self::size_for(blob_len)).expect("outboard fits in memory");
        Self {
            blob_len,
            id,
            pairs: vec![0; size],
        }
    }

    /// Stores a verified pair at `position` (as returned by [`RangeDecoder::parent`]).
    /// Positions past the end are ignored.
    pub fn set_pair(&mut self, position: u64, pair: &[u8; PARENT_LEN]) {
        let Ok(start) = usize::try_from(position.saturating_mul(PARENT_LEN as u64)) else {
            return;
        };
        if let Some(slot) = start
            .checked_add(PARENT_LEN)
            .and_then(|end| self.pairs.get_mut(start..end))
        {
            slot.copy_from_slice(pair);
        }
    }

    fn pair(&self, node: bao_tree::TreeNode) -> Option<&[u8]> {
        let off = tree(self.blob_len).pre_order_offset(node)?;
        let start = usize::try_from(off).ok()? * PARENT_LEN;
        self.pairs.get(start..start + PARENT_LEN)
    }

    /// The expected chaining value of block `index`, derived from the outboard and the root.
    /// Lets a holder of the plaintext check a regenerated segment before serving it.
    pub fn expected_block_hash(&self, index: BlockIndex) -> Option<blake3::Hash> {
        let blocks = block_count(self.blob_len);
        if u64::from(index.0) >= blocks {
            return None;
        }
        if blocks == 1 {
            return Some(self.id.hash());
        }
        // Walk down from the root, verifying each pair against its parent.
        let ranges = block_ranges_to_chunks(
            &[BlockRange {
                start: index.0,
                end: index.0 + 1,
            }],
            self.blob_len,
        );
        let mut stack = vec![self.id.hash()];
        for item in ResponseIter::new(tree(self.blob_len), ranges) {
            match item {
                BaoChunk::Parent {
                    node,
                    is_root,
                    left,
                    right,
                    ..
                } => {
                    let pair = self.pair(node)?;
                    let (l, r) = split_pair(pair);
                    let expected = stack.pop()?;
                    if parent_cv(&l, &r, is_root) != expected {
                        return None;
                    }
                    if right {
                        stack.push(r);
                    }
                    if left {
                        stack.push(l);
                    }
                }
                BaoChunk::Leaf { .. } => return stack.pop(),
            }
        }
        None
    }
}

fn split_pair(pair: &[u8]) -> (blake3::Hash, blake3::Hash) {
    let mut l = [0u8; 32];
    let mut r = [0u8; 32];
    l.copy_from_slice(&pair[..32]);
    r.copy_from_slice(&pair[32..64]);
    (blake3::Hash::from_bytes(l), blake3::Hash::from_bytes(r))
}

/// Builds an outboard from block hashes fed in order, in memory proportional to the
/// outboard (never the blob). Hashing blocks can run on other threads; feeding is cheap.
#[derive(Debug)]
pub struct OutboardBuilder {
    blob_len: u64,
    next_block: u64,
    blocks: u64,
    stack: Vec<blake3::Hash>,
    pairs: Vec<u8>,
    post: std::iter::Peekable<bao_tree::iter::PostOrderChunkIter>,
}

impl OutboardBuilder {
    /// A builder for a blob of `blob_len` bytes.
    pub fn new(blob_len: u64) -> Self {
        let t = tree(blob_len);
        Self {
            blob_len,
            next_block: 0,
            blocks: block_count(blob_len),
            stack: Vec::new(),
            pairs: vec![0; usize::try_from(t.outboard_size()).expect("outboard fits in memory")],
            post: bao_tree::iter::PostOrderChunkIter::new(t).peekable(),
        }
    }

    /// Whether every block has been fed.
    pub const fn is_complete(&self) -> bool {
        self.next_block == self.blocks
    }

    /// Feeds the hash of the next block, as computed by [`block_hash`] (with
    /// `is_root = (blocks == 1)`).
    ///
    /// # Panics
    /// If more blocks are fed than the blob has: a caller bug.
    pub fn push(&mut self, hash: blake3::Hash) {
        assert!(
            self.next_block < self.blocks,
            "more blocks than the blob has"
        );
        self.next_block += 1;
        let t = tree(self.blob_len);
        match self.post.next() {
            Some(BaoChunk::Leaf { .. }) => self.stack.push(hash),
            other => unreachable!("post-order iterator yielded {other:?} where a leaf was due"),
        }
        while let Some(BaoChunk::Parent { node, is_root, .. }) = self.post.peek().copied() {
            self.post.next();
            let r = self.stack.pop().expect("a parent follows two children");
            let l = self.stack.pop().expect("a parent follows two children");
            if let Some(off) = t.pre_order_offset(node) {
                let start = usize::try_from(off).expect("fits") * PARENT_LEN;
                self.pairs[start..start + 32].copy_from_slice(l.as_bytes());
                self.pairs[start + 32..start + 64].copy_from_slice(r.as_bytes());
            }
            self.stack.push(parent_cv(&l, &r, is_root));
        }
    }

    /// The finished outboard.
    ///
    /// # Panics
    /// If not every block was fed: a caller bug.
    pub fn finish(self) -> Outboard {
        assert!(
            self.is_complete(),
            "outboard finished before every block was fed"
        );
        let id = match self.stack.as_slice() {
            [root] => BlobId(*root.as_bytes()),
            // An empty blob: the hash of no bytes. Shoal blobs are never empty.
            [] => BlobId(*blake3::hash(&[]).as_bytes()),
            _ => unreachable!("post-order traversal leaves exactly one root"),
        };
        Outboard {
            blob_len: self.blob_len,
            id,
            pairs: self.pairs,
        }
    }
}

/// A half-open range of blocks `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRange {
    /// First block.
    pub start: u32,
    /// One past the last block.
    pub end: u32,
}

impl BlockRange {
    /// Number of blocks in the range.
    pub const fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }
    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// The blocks in the range.
    pub fn iter(&self) -> impl Iterator<Item = BlockIndex> + use<> {
        (self.start..self.end).map(BlockIndex)
    }
}

/// Block ranges as bao chunk ranges, clamped to the blob's blocks (a range past the end
/// selects nothing; bao-tree would otherwise pick the tail chunk and descend into the last
/// block), with a range that reaches the last block open-ended so that the whole (possibly
/// partial) last block is selected.
fn block_ranges_to_chunks(ranges: &[BlockRange], blob_len: u64) -> ChunkRanges {
    let blocks = block_count(blob_len);
    let mut out = ChunkRanges::empty();
    for r in ranges {
        if u64::from(r.start) >= blocks || r.is_empty() {
            continue;
        }
        let start = ChunkNum(u64::from(r.start) * CHUNKS_PER_BLOCK);
        out |= if u64::from(r.end) >= blocks {
            ChunkRanges::from(start..)
        } else {
            ChunkRanges::from(start..ChunkNum(u64::from(r.end) * CHUNKS_PER_BLOCK))
        };
    }
    out
}

/// What the encoder of a range response writes next.
#[derive(Debug, PartialEq, Eq)]
pub enum EncodeItem<'a> {
    /// Write these 64 bytes (a parent pair from the outboard).
    Parent(&'a [u8]),
    /// Write block `index` (`len` bytes) of the blob, read from storage.
    Block {
        /// The block to write.
        index: BlockIndex,
        /// Its length.
        len: usize,
    },
}

/// Walks a range response on the serving side: which parent pairs and blocks to write, in
/// order. The serving shell reads blocks from storage; for plaintext sources it checks each
/// regenerated block against [`Outboard::expected_block_hash`] before writing it.
#[derive(Debug)]
pub struct RangeEncoder<'a> {
    outboard: &'a Outboard,
    iter: ResponseIter,
}

impl<'a> RangeEncoder<'a> {
    /// An encoder of `ranges` (already validated, see [`crate::wire::BlobRequest`]).
    pub fn new(outboard: &'a Outboard, ranges: &[BlockRange]) -> Self {
        Self {
            outboard,
            iter: ResponseIter::new(
                tree(outboard.blob_len),
                block_ranges_to_chunks(ranges, outboard.blob_len),
            ),
        }
    }
}

impl<'a> Iterator for RangeEncoder<'a> {
    type Item = EncodeItem<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let outboard = self.outboard;
        loop {
            match self.iter.next()? {
                BaoChunk::Parent { node, .. } => {
                    if let Some(pair) = outboard.pair(node) {
                        return Some(EncodeItem::Parent(pair));
                    }
                    // Nodes below block level are never stored nor sent with 64 KiB groups.
                }
                BaoChunk::Leaf {
                    start_chunk, size, ..
                } => {
                    let index = BlockIndex(
                        u32::try_from(start_chunk.0 / CHUNKS_PER_BLOCK)
                            .expect("block index fits u32 by MAX_FILE_LEN"),
                    );
                    return Some(EncodeItem::Block { index, len: size });
                }
            }
        }
    }
}

/// What the decoder needs next from the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read [`PARENT_LEN`] bytes and pass them to [`RangeDecoder::parent`].
    Parent,
    /// Read `len` bytes of block `index` and pass them to [`RangeDecoder::block`].
    Block {
        /// The block that comes next.
        index: BlockIndex,
        /// Its length in bytes.
        len: usize,
    },
    /// The response is complete.
    Done,
}

/// The stream did not verify against the blob id: the peer lied or corrupted data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A parent pair does not hash to its parent.
    #[error("parent hash mismatch in blob {blob}")]
    Parent {
        /// The blob.
        blob: BlobId,
    },
    /// A block does not hash to its leaf.
    #[error("block {block} of blob {blob} does not match its hash")]
    Block {
        /// The blob.
        blob: BlobId,
        /// The block.
        block: BlockIndex,
    },
    /// The caller passed bytes that do not match what [`RangeDecoder::need`] asked for.
    #[error("decoder fed out of order")]
    OutOfOrder,
}

/// Verifies a range response incrementally: nothing is accepted until it hashes up to the
/// blob id. Sans-IO: the shell reads exactly what [`RangeDecoder::need`] asks for.
///
/// Call order: `need()`, then `parent()` or `block()` as asked, repeat until `Need::Done`.
/// After an error the decoder is finished and the peer must be treated as lying.
#[derive(Debug)]
pub struct RangeDecoder {
    id: BlobId,
    blob_len: u64,
    iter: ResponseIter,
    stack: Vec<blake3::Hash>,
    pending: Option<BaoChunk>,
    failed: bool,
}

impl RangeDecoder {
    /// A decoder for a response to `ranges` of blob `id` whose size is `blob_len`.
    ///
    /// The size is authenticated only by verifying the last block; callers that do not take
    /// the size from a trusted link must include the last block in their first request.
    pub fn new(id: BlobId, blob_len: u64, ranges: &[BlockRange]) -> Self {
        let mut this = Self {
            id,
            blob_len,
            iter: ResponseIter::new(tree(blob_len), block_ranges_to_chunks(ranges, blob_len)),
            stack: vec![id.hash()],
            pending: None,
            failed: false,
        };
        this.advance();
        this
    }

    fn advance(&mut self) {
        let t = tree(self.blob_len);
        self.pending = match self.iter.next() {
            Some(BaoChunk::Parent { node, .. }) if t.pre_order_offset(node).is_none() => {
                // Never on the wire with 64 KiB groups and clamped ranges (see
                // `block_ranges_to_chunks`); fail closed rather than mis-parse.
                self.failed = true;
                None
            }
            other => other,
        };
    }

    /// What to read next.
    pub fn need(&self) -> Need {
        if self.failed {
            return Need::Done;
        }
        match self.pending {
            None => Need::Done,
            Some(BaoChunk::Parent { .. }) => Need::Parent,
            Some(BaoChunk::Leaf {
                start_chunk, size, ..
            }) => Need::Block {
                index: BlockIndex(
                    u32::try_from(start_chunk.0 / CHUNKS_PER_BLOCK).unwrap_or(u32::MAX),
                ),
                len: size,
            },
        }
    }

    /// Feeds a parent pair. On success returns its position in the outboard (in pairs: it
    /// belongs at byte `position * PARENT_LEN`), so a downloader can keep the pairs it
    /// verified and serve the blocks under them to others ([`Outboard::set_pair`]).
    ///
    /// # Errors
    /// [`VerifyError::Parent`] if it does not verify (the peer lied).
    pub fn parent(&mut self, pair: &[u8; PARENT_LEN]) -> Result<u64, VerifyError> {
        let Some(BaoChunk::Parent {
            is_root,
            left,
            right,
            node,
            ..
        }) = self.pending
        else {
            self.failed = true;
            return Err(VerifyError::OutOfOrder);
        };
        let (l, r) = split_pair(pair);
        let expected = self.stack.pop();
        if expected != Some(parent_cv(&l, &r, is_root)) {
            self.failed = true;
            return Err(VerifyError::Parent { blob: self.id });
        }
        if right {
            self.stack.push(r);
        }
        if left {
            self.stack.push(l);
        }
        self.advance();
        // `advance` fails closed on parents without a position, so this one has one.
        Ok(tree(self.blob_len).pre_order_offset(node).unwrap_or(0))
    }

    /// Feeds a block's bytes; on success they are verified and may be stored or decrypted.
    ///
    /// # Errors
    /// [`VerifyError::Block`] if they do not verify (the peer lied).
    pub fn block(&mut self, data: &[u8]) -> Result<BlockIndex, VerifyError> {
        let Some(BaoChunk::Leaf {
            start_chunk,
            size,
            is_root,
            ..
        }) = self.pending
        else {
            self.failed = true;
            return Err(VerifyError::OutOfOrder);
        };
        let index = BlockIndex(u32::try_from(start_chunk.0 / CHUNKS_PER_BLOCK).unwrap_or(u32::MAX));
        if data.len() != size {
            self.failed = true;
            return Err(VerifyError::OutOfOrder);
        }
        let expected = self.stack.pop();
        if expected != Some(block_hash(index, data, is_root)) {
            self.failed = true;
            return Err(VerifyError::Block {
                blob: self.id,
                block: index,
            });
        }
        self.advance();
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outboard_of(blob: &[u8]) -> Outboard {
        let n = block_count(blob.len() as u64);
        let mut b = OutboardBuilder::new(blob.len() as u64);
        for (i, chunk) in blob.chunks(SEGMENT_LEN).enumerate() {
            b.push(block_hash(BlockIndex(i as u32), chunk, n == 1));
        }
        b.finish()
    }

    fn encode(ob: &Outboard, blob: &[u8], ranges: &[BlockRange]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in RangeEncoder::new(ob, ranges) {
            match item {
                EncodeItem::Parent(p) => out.extend_from_slice(p),
                EncodeItem::Block { index, len } => {
                    let start = index.offset() as usize;
                    out.extend_from_slice(&blob[start..start + len]);
                }
            }
        }
        out
    }

    fn decode(
        id: BlobId,
        len: u64,
        ranges: &[BlockRange],
        mut wire: &[u8],
    ) -> Result<Vec<BlockIndex>, VerifyError> {
        let mut d = RangeDecoder::new(id, len, ranges);
        let mut got = vec![];
        loop {
            match d.need() {
                Need::Done => return Ok(got),
                // A short stream is a truncated response: the peer failed.
                Need::Parent if wire.len() < 64 => return Err(VerifyError::OutOfOrder),
                Need::Block { len, .. } if wire.len() < len => return Err(VerifyError::OutOfOrder),
                Need::Parent => {
                    let p: [u8; 64] = wire[..64].try_into().unwrap();
                    wire = &wire[64..];
                    d.parent(&p)?;
                }
                Need::Block { len, .. } => {
                    got.push(d.block(&wire[..len])?);
                    wire = &wire[len..];
                }
            }
        }
    }

    fn blob_of(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn id_matches_blake3_and_bao_tree() {
        for len in [
            1usize,
            1000,
            SEGMENT_LEN - 1,
            SEGMENT_LEN,
            SEGMENT_LEN + 1,
            5 * SEGMENT_LEN + 17,
        ] {
            let blob = blob_of(len);
            let ob = outboard_of(&blob);
            assert_eq!(ob.id(), BlobId::of(&blob), "len {len}");
            // Cross-check the outboard bytes against bao-tree's own pre-order outboard.
            let reference = bao_tree::io::outboard::PreOrderMemOutboard::create(&blob, BLOCK_SIZE);
            assert_eq!(ob.as_bytes(), &reference.data[..], "len {len}");
        }
    }

    proptest! {
        #[test]
        fn range_round_trip(blocks in 1u32..12, tail in 1usize..=SEGMENT_LEN, a in 0u32..12, b in 0u32..12) {
            let len = (blocks as usize - 1) * SEGMENT_LEN + tail;
            let blob = blob_of(len);
            let ob = outboard_of(&blob);
            let (s, e) = (a.min(b) % blocks, (a.max(b) % blocks) + 1);
            let ranges = [BlockRange { start: s, end: e }];
            let wire = encode(&ob, &blob, &ranges);
            let got = decode(ob.id(), len as u64, &ranges, &wire).unwrap();
            prop_assert_eq!(got, (s..e).map(BlockIndex).collect::<Vec<_>>());
            for i in 0..blocks {
                let idx = BlockIndex(i);
                let data = &blob[idx.offset() as usize..][..block_len(len as u64, idx)];
                prop_assert_eq!(ob.expected_block_hash(idx), Some(block_hash(idx, data, blocks == 1)));
            }
        }

        /// A downloader that keeps the pairs it verified (`Outboard::partial` + `set_pair`)
        /// can serve any block it received, byte for byte as the full outboard would.
        #[test]
        fn partial_outboard_serves_what_was_received(
            blocks in 2u32..40,
            tail in 1usize..=SEGMENT_LEN,
            picks in proptest::collection::vec((0u32..40, 1u32..5), 1..6),
        ) {
            let len = (blocks as usize - 1) * SEGMENT_LEN + tail;
            let blob = blob_of(len);
            let full = outboard_of(&blob);
            let mut partial = Outboard::partial(full.id(), len as u64);
            let mut received = Vec::new();
            for (start, n) in picks {
                let start = start % blocks;
                let range = [BlockRange { start, end: (start + n).min(blocks) }];
                let wire = encode(&full, &blob, &range);
                let mut d = RangeDecoder::new(full.id(), len as u64, &range);
                let mut at = 0;
                loop {
                    match d.need() {
                        Need::Done => break,
                        Need::Parent => {
                            let p: [u8; 64] = wire[at..at + 64].try_into().unwrap();
                            at += 64;
                            let pos = d.parent(&p).unwrap();
                            partial.set_pair(pos, &p);
                        }
                        Need::Block { len, .. } => {
                            received.push(d.block(&wire[at..at + len]).unwrap());
                            at += len;
                        }
                    }
                }
            }
            for idx in received {
                let one = [BlockRange { start: idx.0, end: idx.0 + 1 }];
                prop_assert_eq!(encode(&partial, &blob, &one), encode(&full, &blob, &one));
                prop_assert_eq!(partial.expected_block_hash(idx), full.expected_block_hash(idx));
            }
        }

        #[test]
        fn any_flipped_byte_is_caught(blocks in 1u32..6, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let len = blocks as usize * SEGMENT_LEN - 100;
            let blob = blob_of(len);
            let ob = outboard_of(&blob);
            let ranges = [BlockRange { start: 0, end: blocks }];
            let mut wire = encode(&ob, &blob, &ranges);
            let i = pos.index(wire.len());
            wire[i] ^= 1 << bit;
            prop_assert!(decode(ob.id(), len as u64, &ranges, &wire).is_err());
        }
    }

    /// Found by fuzzing (fuzz/corpus/range_decoder/past-end-regression): a range past the
    /// end of a one-block blob made bao-tree descend into the block and the decoder panic.
    #[test]
    fn ranges_past_the_end_select_nothing() {
        let blob = blob_of(1056);
        let ob = outboard_of(&blob);
        let past = [BlockRange { start: 1, end: 2 }];
        assert_eq!(RangeEncoder::new(&ob, &past).count(), 0);
        let d = RangeDecoder::new(ob.id(), 1056, &past);
        assert_eq!(d.need(), Need::Done);
        let mixed = [
            BlockRange { start: 0, end: 1 },
            BlockRange { start: 5, end: 9 },
        ];
        let wire = encode(&ob, &blob, &mixed);
        assert_eq!(
            decode(ob.id(), 1056, &mixed, &wire).unwrap(),
            vec![BlockIndex(0)]
        );
    }

    #[test]
    fn wrong_size_is_caught_at_last_block() {
        let len = 3 * SEGMENT_LEN + 10;
        let blob = blob_of(len);
        let ob = outboard_of(&blob);
        let last = [BlockRange { start: 3, end: 4 }];
        let wire = encode(&ob, &blob, &last);
        // A liar claiming a larger size cannot make the last block verify.
        assert!(decode(ob.id(), len as u64 + 5, &last, &wire).is_err());
        assert!(decode(ob.id(), len as u64 - 5, &last, &wire).is_err());
        let mut longer = blob.clone();
        longer.extend_from_slice(&[0; 5]);
        let liar = encode(&outboard_of(&longer), &longer, &last);
        assert!(decode(ob.id(), len as u64 + 5, &last, &liar).is_err());
        assert!(decode(ob.id(), len as u64, &last, &wire).is_ok());
    }
}
