//! Content format v1: keys, the sealed header record, segments and the blob layout.
//!
//! The normative description, byte for byte, is `docs/protocol.md`. In short:
//!
//! ```text
//! plaintext stream S = header record (1024 bytes) || file bytes
//! S is cut into 65,520-byte segments; segment i is sealed with XChaCha20-Poly1305 under
//! the segment subkey with nonce = i (u64 LE) || final flag (1 byte) || 15 zero bytes,
//! giving ciphertext || 16-byte tag = 65,536 bytes (the last segment may be shorter).
//! blob = sealed segment 0 || sealed segment 1 || ...
//! ```

use chacha20poly1305::{
    AeadInOut, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Tag, array::Array},
};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of plaintext in every segment but the last.
pub const SEGMENT_PLAINTEXT_LEN: usize = 65_520;
/// Bytes of the Poly1305 tag appended to each sealed segment.
pub const TAG_LEN: usize = 16;
/// Bytes of a full sealed segment; equal to one bao block.
pub const SEGMENT_LEN: usize = SEGMENT_PLAINTEXT_LEN + TAG_LEN;
/// Bytes of the header record at the start of the plaintext stream.
pub const HEADER_LEN: usize = 1024;
/// The header record's first eight bytes.
pub const MAGIC: [u8; 8] = *b"SHOALHDR";
/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Longest file name, in UTF-8 bytes.
pub const MAX_NAME_LEN: usize = 768;
/// Longest media type, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;
/// Largest file the format describes: 2^32 − 1 segments of plaintext, minus the header, so
/// that every block index and every range end fits a `u32` on the wire.
pub const MAX_FILE_LEN: u64 = ((1u64 << 32) - 1) * SEGMENT_PLAINTEXT_LEN as u64 - HEADER_LEN as u64;

/// Header flag: the key was derived convergently from the content.
pub const FLAG_CONVERGENT: u16 = 0x0001;

// Offsets inside the header record (see docs/protocol.md §3.2).
const OFF_VERSION: usize = 8;
const OFF_FLAGS: usize = 10;
const OFF_COMMITMENT: usize = 12;
const OFF_FILE_LEN: usize = 44;
const OFF_NAME_LEN: usize = 52;
const OFF_MEDIA_LEN: usize = 54;
const OFF_RESERVED: usize = 55;
const OFF_STRINGS: usize = 56;

// blake3::derive_key contexts: hard-coded, globally unique, never reused.
const CTX_SEGMENT_KEY: &str = "shoal 2026-11 v1 segment key";
const CTX_COMMITMENT: &str = "shoal 2026-11 v1 key commitment";
const CTX_CONVERGENT: &str = "shoal 2026-11 v1 convergent key";

/// The secret 32-byte content key `K` of one blob. It travels only in a link's fragment.
///
/// `Debug` is redacted, there is no `Display`, and the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// Wraps raw key bytes (from a link, or from a CSPRNG: see [`ContentKey::random_from`]).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Builds a random key from 32 bytes that the caller drew from the OS CSPRNG.
    ///
    /// `protocol` does no IO and reads no OS randomness, so the caller supplies the bytes.
    pub const fn random_from(os_random: [u8; 32]) -> Self {
        Self(os_random)
    }

    /// Derives the convergent key for a plaintext stream.
    ///
    /// `stream_hash` is the BLAKE3 hash of the plaintext stream with the header's key
    /// commitment field zeroed (see [`ConvergentHasher`]). `secret` may be empty; publishers
    /// who share a secret dedupe only with each other.
    pub fn convergent(stream_hash: &blake3::Hash, secret: &[u8]) -> Self {
        let mut material = Vec::with_capacity(32 + secret.len());
        material.extend_from_slice(stream_hash.as_bytes());
        material.extend_from_slice(secret);
        let key = blake3::derive_key(CTX_CONVERGENT, &material);
        material.zeroize();
        Self(key)
    }

    /// The raw key bytes. Handle with care: this is the secret.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key commitment stored in the header: `derive_key("… key commitment", K)`.
    pub fn commitment(&self) -> [u8; 32] {
        blake3::derive_key(CTX_COMMITMENT, &self.0)
    }

    fn segment_cipher(&self) -> XChaCha20Poly1305 {
        let mut sub = blake3::derive_key(CTX_SEGMENT_KEY, &self.0);
        let cipher = XChaCha20Poly1305::new(&Array::from(sub));
        sub.zeroize();
        cipher
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// What the header record says about the file. Only link holders ever see it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Metadata {
    /// File name (a base name, no directories). May be empty.
    pub name: String,
    /// Length of the file in bytes.
    pub file_len: u64,
    /// Media type such as `video/mp4`. May be empty.
    pub media_type: String,
}

/// Why metadata cannot be written into a header record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("file name is {len} bytes; the format allows at most {MAX_NAME_LEN}")]
    NameTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The name is not a plain base name.
    #[error("file name {name:?} is not a plain file name ({why})")]
    BadName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The media type is too long or not printable ASCII (space allowed).
    #[error("media type {0:?} must be at most {MAX_MEDIA_TYPE_LEN} bytes of printable ASCII")]
    BadMediaType(String),
    /// The file is larger than the format can describe.
    #[error("file is {0} bytes; the format allows at most {MAX_FILE_LEN}")]
    FileTooLarge(u64),
    /// Header flags this version does not define (a reader would reject the blob).
    #[error("header flags {0:#06x} are not defined in format v1")]
    UnknownFlags(u16),
}

impl Metadata {
    /// Checks the rules the header enforces (also applied when reading a header).
    ///
    /// # Errors
    /// Returns which rule the metadata breaks.
    pub fn validate(&self) -> Result<(), MetadataError> {
        validate_name(&self.name)?;
        if self.media_type.len() > MAX_MEDIA_TYPE_LEN
            || !self.media_type.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(MetadataError::BadMediaType(self.media_type.clone()));
        }
        if self.file_len > MAX_FILE_LEN {
            return Err(MetadataError::FileTooLarge(self.file_len));
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), MetadataError> {
    let bad = |why| {
        Err(MetadataError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return Err(MetadataError::NameTooLong { len: name.len() });
    }
    if name == "." || name == ".." {
        return bad("it names a directory");
    }
    if name.contains(['/', '\\']) {
        return bad("it contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    Ok(())
}

/// The decoded header record of a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header flags ([`FLAG_CONVERGENT`] or 0).
    pub flags: u16,
    /// The file's metadata.
    pub metadata: Metadata,
}

/// Why a decrypted header record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first bytes are not the magic: not a Shoal blob, or a different key format.
    #[error("header magic is wrong: this is not a Shoal v1 blob")]
    BadMagic,
    /// A version this code does not read.
    #[error("blob uses format version {0}; this program reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u16),
    /// Flags with unknown bits set.
    #[error("header has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The key commitment does not match the key: the blob was crafted to open under two
    /// keys, or the key is wrong.
    #[error("key commitment does not match the key")]
    CommitmentMismatch,
    /// The header is malformed (lengths, padding or text).
    #[error("header is malformed: {0}")]
    Malformed(&'static str),
    /// The metadata breaks a rule.
    #[error("header metadata is invalid")]
    Metadata(#[from] MetadataError),
}

impl Header {
    /// Encodes the header record for `key`.
    ///
    /// # Errors
    /// Returns an error if the metadata breaks a rule of [`Metadata::validate`].
    pub fn encode(&self, key: &ContentKey) -> Result<[u8; HEADER_LEN], MetadataError> {
        self.encode_with_commitment(key.commitment())
    }

    /// Encodes the header with the commitment field zeroed: the input of the convergent key.
    ///
    /// # Errors
    /// As [`Header::encode`].
    pub fn encode_for_convergence(&self) -> Result<[u8; HEADER_LEN], MetadataError> {
        self.encode_with_commitment([0; 32])
    }

    fn encode_with_commitment(
        &self,
        commitment: [u8; 32],
    ) -> Result<[u8; HEADER_LEN], MetadataError> {
        if self.flags & !FLAG_CONVERGENT != 0 {
            return Err(MetadataError::UnknownFlags(self.flags));
        }
        self.metadata.validate()?;
        let m = &self.metadata;
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.to_le_bytes());
        out[OFF_COMMITMENT..OFF_COMMITMENT + 32].copy_from_slice(&commitment);
        out[OFF_FILE_LEN..OFF_FILE_LEN + 8].copy_from_slice(&m.file_len.to_le_bytes());
        let name_len = u16::try_from(m.name.len()).expect("validated: at most 768");
        out[OFF_NAME_LEN..OFF_NAME_LEN + 2].copy_from_slice(&name_len.to_le_bytes());
        out[OFF_MEDIA_LEN] = u8::try_from(m.media_type.len()).expect("validated: at most 127");
        let name_end = OFF_STRINGS + m.name.len();
        out[OFF_STRINGS..name_end].copy_from_slice(m.name.as_bytes());
        out[name_end..name_end + m.media_type.len()].copy_from_slice(m.media_type.as_bytes());
        Ok(out)
    }

    /// Decodes a header record and checks it against `key`'s commitment.
    ///
    /// # Errors
    /// Returns which check failed. Every field is checked, including zero padding.
    pub fn decode(bytes: &[u8; HEADER_LEN], key: &ContentKey) -> Result<Self, HeaderError> {
        if bytes[..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[OFF_VERSION], bytes[OFF_VERSION + 1]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([bytes[OFF_FLAGS], bytes[OFF_FLAGS + 1]]);
        if flags & !FLAG_CONVERGENT != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        // Constant-time enough: the commitment is public to anyone holding the ciphertext
        // and the key; comparing it leaks nothing an attacker lacks.
        if bytes[OFF_COMMITMENT..OFF_COMMITMENT + 32] != key.commitment() {
            return Err(HeaderError::CommitmentMismatch);
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[OFF_FILE_LEN..OFF_FILE_LEN + 8]);
        let file_len = u64::from_le_bytes(len8);
        let name_len = usize::from(u16::from_le_bytes([
            bytes[OFF_NAME_LEN],
            bytes[OFF_NAME_LEN + 1],
        ]));
        let media_len = usize::from(bytes[OFF_MEDIA_LEN]);
        if bytes[OFF_RESERVED] != 0 {
            return Err(HeaderError::Malformed("reserved byte is not zero"));
        }
        if name_len > MAX_NAME_LEN || media_len > MAX_MEDIA_TYPE_LEN {
            return Err(HeaderError::Malformed("string length out of range"));
        }
        let name_end = OFF_STRINGS + name_len;
        let media_end = name_end + media_len;
        if bytes[media_end..].iter().any(|&b| b != 0) {
            return Err(HeaderError::Malformed("padding is not zero"));
        }
        let name = std::str::from_utf8(&bytes[OFF_STRINGS..name_end])
            .map_err(|_| HeaderError::Malformed("file name is not UTF-8"))?
            .to_owned();
        let media_type = std::str::from_utf8(&bytes[name_end..media_end])
            .map_err(|_| HeaderError::Malformed("media type is not ASCII"))?
            .to_owned();
        let metadata = Metadata {
            name,
            file_len,
            media_type,
        };
        metadata.validate()?;
        Ok(Self { flags, metadata })
    }
}

/// Geometry of a blob: how a file length maps to segments and blob bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    file_len: u64,
}

/// A blob size that no file length produces.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} bytes is not a valid Shoal v1 blob size")]
pub struct BadBlobSize(pub u64);

impl Layout {
    /// Layout for a file of `file_len` bytes.
    ///
    /// # Errors
    /// Returns an error if the file exceeds [`MAX_FILE_LEN`].
    pub const fn for_file(file_len: u64) -> Result<Self, MetadataError> {
        if file_len > MAX_FILE_LEN {
            return Err(MetadataError::FileTooLarge(file_len));
        }
        Ok(Self { file_len })
    }

    /// Layout for a blob of `blob_len` bytes, if that is a size some file produces.
    ///
    /// # Errors
    /// Returns [`BadBlobSize`] if no file length produces this blob size.
    pub fn for_blob(blob_len: u64) -> Result<Self, BadBlobSize> {
        let segments = blob_len.div_ceil(SEGMENT_LEN as u64);
        let overhead = segments * TAG_LEN as u64 + HEADER_LEN as u64;
        let last = blob_len - (segments.max(1) - 1) * SEGMENT_LEN as u64;
        if segments == 0 || last <= TAG_LEN as u64 || blob_len < overhead {
            return Err(BadBlobSize(blob_len));
        }
        let layout = Self {
            file_len: blob_len - overhead,
        };
        if layout.file_len > MAX_FILE_LEN || layout.blob_len() != blob_len {
            return Err(BadBlobSize(blob_len));
        }
        Ok(layout)
    }

    /// The file's length in bytes.
    pub const fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Length of the plaintext stream (header record + file).
    pub const fn stream_len(&self) -> u64 {
        HEADER_LEN as u64 + self.file_len
    }

    /// Number of segments (= bao blocks); at least 1.
    pub const fn segments(&self) -> u64 {
        self.stream_len().div_ceil(SEGMENT_PLAINTEXT_LEN as u64)
    }

    /// Length of the blob in bytes.
    pub const fn blob_len(&self) -> u64 {
        self.stream_len() + self.segments() * TAG_LEN as u64
    }

    /// Plaintext bytes in segment `index`.
    pub const fn segment_plaintext_len(&self, index: u64) -> usize {
        let start = index * SEGMENT_PLAINTEXT_LEN as u64;
        let end = self.stream_len();
        if start >= end {
            0
        } else if end - start >= SEGMENT_PLAINTEXT_LEN as u64 {
            SEGMENT_PLAINTEXT_LEN
        } else {
            (end - start) as usize
        }
    }

    /// Sealed bytes in segment `index`.
    pub const fn segment_len(&self, index: u64) -> usize {
        match self.segment_plaintext_len(index) {
            0 => 0,
            n => n + TAG_LEN,
        }
    }

    /// Whether `index` is the last segment.
    pub const fn is_final(&self, index: u64) -> bool {
        index + 1 == self.segments()
    }

    /// Offset in the *file* of the first file byte in segment `index`, and how many bytes of
    /// the segment's plaintext precede it (header bytes; non-zero only for segment 0).
    pub const fn file_offset(&self, index: u64) -> (u64, usize) {
        let stream = index * SEGMENT_PLAINTEXT_LEN as u64;
        if stream < HEADER_LEN as u64 {
            (0, HEADER_LEN - stream as usize)
        } else {
            (stream - HEADER_LEN as u64, 0)
        }
    }
}

/// Why a sealed segment did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenSegmentError {
    /// The segment's length is impossible for its position.
    #[error("segment {index} is {len} bytes; expected {expected}")]
    BadLength {
        /// Segment index.
        index: u64,
        /// Bytes given.
        len: usize,
        /// Bytes the layout requires.
        expected: usize,
    },
    /// Authentication failed: wrong key, or the bytes were altered.
    #[error("segment {index} failed authentication (wrong key or altered data)")]
    Authentication {
        /// Segment index.
        index: u64,
    },
}

/// Seals and opens segments for one key. Cheap to clone; holds the derived subkey.
#[derive(Clone)]
pub struct SegmentCipher {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentCipher(<redacted>)")
    }
}

/// The nonce of segment `index`: index (u64 LE) || final flag || 15 zero bytes.
pub fn segment_nonce(index: u64, is_final: bool) -> [u8; 24] {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(&index.to_le_bytes());
    nonce[8] = u8::from(is_final);
    nonce
}

impl SegmentCipher {
    /// Derives the segment subkey of `key`.
    pub fn new(key: &ContentKey) -> Self {
        Self {
            cipher: key.segment_cipher(),
        }
    }

    /// Seals `buf[..buf.len() - TAG_LEN]` in place and writes the tag into the last
    /// [`TAG_LEN`] bytes.
    ///
    /// # Panics
    /// If `buf` is shorter than [`TAG_LEN`] + 1 or longer than [`SEGMENT_LEN`]: a caller bug.
    pub fn seal_in_place(&self, index: u64, is_final: bool, buf: &mut [u8]) {
        assert!(
            buf.len() > TAG_LEN && buf.len() <= SEGMENT_LEN,
            "segment buffer length out of range"
        );
        let nonce = XNonce::from(segment_nonce(index, is_final));
        let split = buf.len() - TAG_LEN;
        let (body, tag_out) = buf.split_at_mut(split);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, &[], body.into())
            .expect("a segment is far below XChaCha20-Poly1305's length limit");
        tag_out.copy_from_slice(&tag);
    }

    /// Opens the sealed segment in `buf` in place; on success the plaintext is
    /// `buf[..buf.len() - TAG_LEN]`. On failure `buf` holds garbage.
    ///
    /// # Errors
    /// [`OpenSegmentError::Authentication`] if the tag does not verify.
    pub fn open_in_place(
        &self,
        index: u64,
        is_final: bool,
        buf: &mut [u8],
    ) -> Result<(), OpenSegmentError> {
        if buf.len() <= TAG_LEN || buf.len() > SEGMENT_LEN {
            return Err(OpenSegmentError::BadLength {
                index,
                len: buf.len(),
                expected: SEGMENT_LEN,
            });
        }
        let nonce = XNonce::from(segment_nonce(index, is_final));
        let split = buf.len() - TAG_LEN;
        let (body, tag) = buf.split_at_mut(split);
        let tag = Tag::<XChaCha20Poly1305>::try_from(&tag[..]).expect("tag slice is TAG_LEN bytes");
        self.cipher
            .decrypt_inout_detached(&nonce, &[], body.into(), &tag)
            .map_err(|_| OpenSegmentError::Authentication { index })
    }
}

/// Hashes a plaintext stream for convergent key derivation, streaming.
///
/// Feed the header from [`Header::encode_for_convergence`] and then the file bytes.
#[derive(Debug, Default, Clone)]
pub struct ConvergentHasher(blake3::Hasher);

impl ConvergentHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The key for this stream and `secret`.
    pub fn finalize(&self, secret: &[u8]) -> ContentKey {
        ContentKey::convergent(&self.0.finalize(), secret)
    }
}

/// Turns a plaintext stream into sealed segments, one segment at a time, in memory no larger
/// than one segment. Used by publishers and by link holders regenerating segments.
#[derive(Debug)]
pub struct Sealer {
    cipher: SegmentCipher,
    layout: Layout,
    header: [u8; HEADER_LEN],
}

impl Sealer {
    /// A sealer for `metadata` under `key` with header `flags`.
    ///
    /// # Errors
    /// Returns an error if the metadata breaks a rule.
    pub fn new(key: &ContentKey, flags: u16, metadata: Metadata) -> Result<Self, MetadataError> {
        let layout = Layout::for_file(metadata.file_len)?;
        let header = Header { flags, metadata }.encode(key)?;
        Ok(Self {
            cipher: SegmentCipher::new(key),
            layout,
            header,
        })
    }

    /// The blob geometry.
    pub const fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The encoded header record (contains the file name: never store it on a seed node).
    pub const fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Seals segment `index` into `out` (cleared first) from the file bytes that belong to it.
    ///
    /// `file_part` must be exactly the file bytes of this segment: see
    /// [`Layout::file_offset`] and [`Sealer::file_bytes_in`].
    ///
    /// # Panics
    /// If `file_part` has the wrong length or `index` is past the end: a caller bug.
    pub fn seal_segment(&self, index: u64, file_part: &[u8], out: &mut Vec<u8>) {
        let (_, header_bytes) = self.layout.file_offset(index);
        assert_eq!(
            file_part.len(),
            self.file_bytes_in(index),
            "wrong file slice for segment"
        );
        out.clear();
        if header_bytes > 0 {
            out.extend_from_slice(&self.header[HEADER_LEN - header_bytes..]);
        }
        out.extend_from_slice(file_part);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        self.cipher
            .seal_in_place(index, self.layout.is_final(index), out);
    }

    /// Seals segment `index` in place, for callers that read the file bytes straight into
    /// their own buffer (no copy). `buf` must be exactly `layout().segment_len(index)` bytes
    /// with the file bytes at [`Sealer::file_range_in`]; this fills in the header part
    /// (segment 0 only), encrypts, and writes the tag.
    ///
    /// # Panics
    /// If `buf` has the wrong length for the segment: a caller bug.
    pub fn seal_in_place(&self, index: u64, buf: &mut [u8]) {
        assert_eq!(
            buf.len(),
            self.layout.segment_len(index),
            "wrong buffer for segment"
        );
        let (_, header_bytes) = self.layout.file_offset(index);
        buf[..header_bytes].copy_from_slice(&self.header[HEADER_LEN - header_bytes..]);
        self.cipher
            .seal_in_place(index, self.layout.is_final(index), buf);
    }

    /// Where the file bytes go in a segment buffer for [`Sealer::seal_in_place`].
    pub const fn file_range_in(&self, index: u64) -> std::ops::Range<usize> {
        let (_, header_bytes) = self.layout.file_offset(index);
        header_bytes..header_bytes + self.file_bytes_in(index)
    }

    /// How many file bytes segment `index` carries.
    pub const fn file_bytes_in(&self, index: u64) -> usize {
        let (_, header_bytes) = self.layout.file_offset(index);
        self.layout.segment_plaintext_len(index) - header_bytes
    }
}

/// Opens a blob's segments. Created from segment 0, which proves the key is right.
#[derive(Debug)]
pub struct Opener {
    cipher: SegmentCipher,
    layout: Layout,
    header: Header,
}

/// Why a blob could not be opened with a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenBlobError {
    /// The blob's size is impossible.
    #[error(transparent)]
    BadSize(#[from] BadBlobSize),
    /// Segment 0 did not authenticate under the key: the key is wrong (or, if the bytes
    /// were not verified against the blob id, they are corrupt).
    #[error("the key in the link does not open this blob (wrong key)")]
    WrongKey,
    /// The header decrypted but is invalid.
    #[error("blob header is invalid")]
    Header(#[from] HeaderError),
    /// The header's file length disagrees with the blob's size.
    #[error("header says {header} file bytes but the blob size implies {layout}")]
    LengthMismatch {
        /// Length in the header.
        header: u64,
        /// Length implied by the blob size.
        layout: u64,
    },
}

impl Opener {
    /// Opens segment 0 of a blob of `blob_len` bytes and checks the header and commitment.
    /// Returns the opener and the file bytes carried by segment 0.
    ///
    /// # Errors
    /// [`OpenBlobError::WrongKey`] if the key does not open segment 0; other variants if
    /// the header is invalid or inconsistent with `blob_len`.
    pub fn new(
        key: &ContentKey,
        blob_len: u64,
        segment0: &mut [u8],
    ) -> Result<(Self, std::ops::Range<usize>), OpenBlobError> {
        let layout = Layout::for_blob(blob_len)?;
        let cipher = SegmentCipher::new(key);
        if segment0.len() != layout.segment_len(0) {
            return Err(OpenBlobError::BadSize(BadBlobSize(blob_len)));
        }
        cipher
            .open_in_place(0, layout.is_final(0), segment0)
            .map_err(|_| OpenBlobError::WrongKey)?;
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(&segment0[..HEADER_LEN]);
        let header = Header::decode(&header_bytes, key)?;
        if header.metadata.file_len != layout.file_len() {
            return Err(OpenBlobError::LengthMismatch {
                header: header.metadata.file_len,
                layout: layout.file_len(),
            });
        }
        let end = layout.segment_plaintext_len(0);
        Ok((
            Self {
                cipher,
                layout,
                header,
            },
            HEADER_LEN..end,
        ))
    }

    /// Rebuilds an opener from a header record saved by an earlier run (a resumed download
    /// that already holds segment 0), re-checking the key commitment and the size.
    ///
    /// # Errors
    /// As [`Opener::new`], except that a wrong key shows as
    /// [`HeaderError::CommitmentMismatch`].
    pub fn from_header(
        key: &ContentKey,
        blob_len: u64,
        header: &[u8; HEADER_LEN],
    ) -> Result<Self, OpenBlobError> {
        let layout = Layout::for_blob(blob_len)?;
        let header = Header::decode(header, key)?;
        if header.metadata.file_len != layout.file_len() {
            return Err(OpenBlobError::LengthMismatch {
                header: header.metadata.file_len,
                layout: layout.file_len(),
            });
        }
        Ok(Self {
            cipher: SegmentCipher::new(key),
            layout,
            header,
        })
    }

    /// The decoded header.
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// The blob geometry.
    pub const fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Opens sealed segment `index` (> 0) in place and returns the range of `buf` holding
    /// file bytes. Segment 0 is opened by [`Opener::new`].
    ///
    /// # Errors
    /// If the length is wrong for the index, or authentication fails.
    pub fn open_segment(
        &self,
        index: u64,
        buf: &mut [u8],
    ) -> Result<std::ops::Range<usize>, OpenSegmentError> {
        let expected = self.layout.segment_len(index);
        if buf.len() != expected || expected == 0 {
            return Err(OpenSegmentError::BadLength {
                index,
                len: buf.len(),
                expected,
            });
        }
        self.cipher
            .open_in_place(index, self.layout.is_final(index), buf)?;
        let (_, skip) = self.layout.file_offset(index);
        Ok(skip..buf.len() - TAG_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> ContentKey {
        ContentKey::from_bytes([b; 32])
    }

    #[test]
    fn layout_edges() {
        for (file_len, segments) in [
            (0u64, 1u64),
            (1, 1),
            ((SEGMENT_PLAINTEXT_LEN - HEADER_LEN) as u64, 1),
            ((SEGMENT_PLAINTEXT_LEN - HEADER_LEN) as u64 + 1, 2),
        ] {
            let l = Layout::for_file(file_len).unwrap();
            assert_eq!(l.segments(), segments, "file_len {file_len}");
            assert_eq!(Layout::for_blob(l.blob_len()).unwrap(), l);
        }
        // A blob whose last segment would carry no plaintext does not exist.
        assert!(Layout::for_blob(SEGMENT_LEN as u64 + TAG_LEN as u64).is_err());
        assert!(Layout::for_blob(0).is_err());
        assert!(Layout::for_blob(100).is_err());
        assert!(Layout::for_file(MAX_FILE_LEN + 1).is_err());
    }

    proptest! {
        #[test]
        fn layout_blob_len_inverts(file_len in 0u64..(1 << 40)) {
            let l = Layout::for_file(file_len).unwrap();
            prop_assert_eq!(Layout::for_blob(l.blob_len()).unwrap(), l);
            let sum: u64 = (0..l.segments().min(3)).map(|i| l.segment_len(i) as u64).sum();
            prop_assert!(sum <= l.blob_len());
        }

        #[test]
        fn for_blob_never_panics(blob_len in any::<u64>()) {
            if let Ok(l) = Layout::for_blob(blob_len) {
                prop_assert_eq!(l.blob_len(), blob_len);
            }
        }

        #[test]
        fn header_round_trip(name in "[a-zA-Z0-9 ._-]{0,100}", media in "[a-z/+.-]{0,60}", len in 0..MAX_FILE_LEN, flags in 0u16..2) {
            prop_assume!(name != "." && name != "..");
            let h = Header { flags, metadata: Metadata { name, file_len: len, media_type: media } };
            let bytes = h.encode(&key(1)).unwrap();
            prop_assert_eq!(Header::decode(&bytes, &key(1)).unwrap(), h.clone());
            prop_assert_eq!(Header::decode(&bytes, &key(2)), Err(HeaderError::CommitmentMismatch));
        }

        #[test]
        fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let arr: [u8; HEADER_LEN] = bytes.try_into().unwrap();
            let _ = Header::decode(&arr, &key(1));
        }

        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 1..=SEGMENT_PLAINTEXT_LEN), index in any::<u64>(), fin in any::<bool>()) {
            let c = SegmentCipher::new(&key(7));
            let mut buf = data.clone();
            buf.extend_from_slice(&[0; TAG_LEN]);
            c.seal_in_place(index, fin, &mut buf);
            let mut wrong_flag = buf.clone();
            prop_assert!(c.open_in_place(index, !fin, &mut wrong_flag).is_err());
            let mut wrong_index = buf.clone();
            prop_assert!(c.open_in_place(index.wrapping_add(1), fin, &mut wrong_index).is_err());
            c.open_in_place(index, fin, &mut buf).unwrap();
            prop_assert_eq!(&buf[..data.len()], &data[..]);
        }
    }

    #[test]
    fn names_are_checked() {
        for bad in ["a/b", "..", ".", "a\\b", "a\nb"] {
            let m = Metadata {
                name: bad.into(),
                ..Metadata::default()
            };
            assert!(m.validate().is_err(), "{bad:?} accepted");
        }
        let long = Metadata {
            name: "x".repeat(MAX_NAME_LEN + 1),
            ..Metadata::default()
        };
        assert_eq!(
            long.validate(),
            Err(MetadataError::NameTooLong {
                len: MAX_NAME_LEN + 1
            })
        );
    }

    #[test]
    fn header_rejects_bad_padding_and_flags() {
        let k = key(3);
        let h = Header {
            flags: 0,
            metadata: Metadata {
                name: "a.txt".into(),
                file_len: 5,
                media_type: "text/plain".into(),
            },
        };
        let good = h.encode(&k).unwrap();
        let mut b = good;
        b[HEADER_LEN - 1] = 1;
        assert_eq!(
            Header::decode(&b, &k),
            Err(HeaderError::Malformed("padding is not zero"))
        );
        let mut b = good;
        b[OFF_FLAGS] = 0x02;
        assert_eq!(Header::decode(&b, &k), Err(HeaderError::UnknownFlags(2)));
        let unknown = Header {
            flags: 0x8000,
            ..h.clone()
        };
        assert_eq!(unknown.encode(&k), Err(MetadataError::UnknownFlags(0x8000)));
        let spaced = Metadata {
            media_type: "text/plain; charset=utf-8".into(),
            ..h.metadata.clone()
        };
        assert_eq!(spaced.validate(), Ok(()));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Header::decode(&b, &k), Err(HeaderError::BadMagic));
        let mut b = good;
        b[OFF_VERSION] = 2;
        assert_eq!(
            Header::decode(&b, &k),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn seal_in_place_matches_seal_segment() {
        let meta = Metadata {
            name: "x".into(),
            file_len: 200_000,
            media_type: String::new(),
        };
        let sealer = Sealer::new(&key(4), 0, meta).unwrap();
        let file: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut off = 0;
        for i in 0..sealer.layout().segments() {
            let n = sealer.file_bytes_in(i);
            let mut a = Vec::new();
            sealer.seal_segment(i, &file[off..off + n], &mut a);
            let mut b = vec![0u8; sealer.layout().segment_len(i)];
            b[sealer.file_range_in(i)].copy_from_slice(&file[off..off + n]);
            sealer.seal_in_place(i, &mut b);
            assert_eq!(a, b, "segment {i}");
            off += n;
        }
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = key(0xab);
        assert_eq!(format!("{k:?}"), "ContentKey(<redacted>)");
        assert!(!format!("{:?}", SegmentCipher::new(&k)).contains("ab"));
    }
}
