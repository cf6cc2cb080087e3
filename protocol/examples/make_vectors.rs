//! Writes the content format v1 test vectors (`docs/test-vectors/`, see docs/protocol.md §9).
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo run -p shoal-protocol --example make_vectors -- docs/test-vectors
//! ```
//!
//! The output is deterministic: fixed keys stand in for CSPRNG output (bytes 0x00..=0x1f for
//! the random-key cases), file bytes follow [`FILE_RULE`], names and media types are fixed.
//! Running it twice gives identical files, and `protocol/tests/vectors.rs` fails if the files
//! in the repository differ from what this program writes, so regenerate only when the
//! format changes on purpose (and then the format version must change too, see §8).
//!
//! `protocol/tests/vectors.rs` includes this file as a module (for [`render_all`]), so the
//! items it needs are `pub(crate)`.

use std::{error::Error, fmt::Write as _, path::Path};

use shoal_protocol::{
    BlobId, ContentKey, Link,
    blob::{BlockIndex, BlockRange, EncodeItem, OutboardBuilder, RangeEncoder, block_hash},
    format::{
        ConvergentHasher, FLAG_CONVERGENT, HEADER_LEN, Header, Layout, Metadata, OpenBlobError,
        Opener, SEGMENT_LEN, Sealer, SegmentCipher, TAG_LEN, segment_nonce,
    },
    wire::{BlobRequest, ResponseHeader},
};

/// How the file bytes of every vector are generated; recorded verbatim in each vector.
pub(crate) const FILE_RULE: &str = "byte[i] = (i * 7 + 3) mod 256";
/// The stand-in for 32 bytes of OS CSPRNG output used as the key of random-key cases.
pub(crate) const RANDOM_KEY: [u8; 32] = counting_bytes(0x00);
/// A second key: the wrong key of `v1-wrong-key`, the committed key of `v1-bad-commitment`.
pub(crate) const OTHER_KEY: [u8; 32] = counting_bytes(0x20);
/// Blobs up to this size are recorded in full (hex); larger ones by hashes and excerpts.
pub(crate) const FULL_BLOB_MAX: usize = 2048;
/// Bytes shown from the start and the end of each sealed segment of a large blob.
pub(crate) const EXCERPT_LEN: usize = 64;
/// Hex digits per line in wrapped values.
const HEX_PER_LINE: usize = 64;

/// The hinted link of the multi-segment case: these hints are recorded and parsed back.
pub(crate) const HINT_PEER: &str =
    "/ip4/192.0.2.7/udp/4001/quic-v1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
/// A tracker hint (documentation address, RFC 5737).
pub(crate) const HINT_TRACKER: &str = "/ip4/198.51.100.1/tcp/4001";
/// A hint this version does not know; links must carry it through unchanged.
pub(crate) const HINT_UNKNOWN: (&str, &str) = ("x-future", "abc");

const fn counting_bytes(first: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = first + i as u8;
        i += 1;
    }
    out
}

/// The file bytes of every vector: [`FILE_RULE`].
pub(crate) fn file_bytes(len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7).wrapping_add(3) % 256) as u8)
        .collect()
}

/// Where the content key comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeySource {
    /// 32 bytes that stand in for OS CSPRNG output.
    Random([u8; 32]),
    /// Convergent: derived from the plaintext stream and this secret (may be empty).
    Convergent(&'static [u8]),
}

/// What the vector demonstrates beyond the encryption itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// The blob opens and yields the file.
    Opens,
    /// Opening with this other key fails with `WrongKey`.
    WrongKey([u8; 32]),
    /// The header carries this other key's commitment; opening fails with
    /// `Header(CommitmentMismatch)`.
    BadCommitment([u8; 32]),
    /// The blob is cut to this many bytes; opening fails.
    Truncated(u64),
}

/// One vector file `v1-<id>.txt`.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// File name without `v1-` and `.txt`.
    pub(crate) id: &'static str,
    /// What the case is about (one paragraph, wrapped into comments).
    pub(crate) about: &'static str,
    /// The key.
    pub(crate) key: KeySource,
    /// File name in the header.
    pub(crate) name: String,
    /// Media type in the header.
    pub(crate) media_type: String,
    /// File length in bytes.
    pub(crate) file_len: u64,
    /// The expected outcome.
    pub(crate) outcome: Outcome,
    /// Range requests to record (`/shoal/blob/1` request and response), each a list of ranges.
    pub(crate) requests: &'static [&'static [(u32, u32)]],
}

fn case(
    id: &'static str,
    about: &'static str,
    file_len: u64,
    name: &str,
    media_type: &str,
) -> Case {
    Case {
        id,
        about,
        key: KeySource::Random(RANDOM_KEY),
        name: name.to_owned(),
        media_type: media_type.to_owned(),
        file_len,
        outcome: Outcome::Opens,
        requests: &[],
    }
}

// Long on purpose: a table of cases, one literal each.
/// Every content vector, in file-name order of no importance.
pub(crate) fn cases() -> Vec<Case> {
    let max_name = format!("{}.bin", "n".repeat(764));
    let max_media = format!("application/vnd.shoal.{}", "x".repeat(127 - 22));
    vec![
        case(
            "file-0",
            "An empty file: the blob is the sealed header record alone (1,040 bytes).",
            0,
            "empty.bin",
            "application/octet-stream",
        ),
        case(
            "file-1",
            "A one-byte file.",
            1,
            "one.bin",
            "application/octet-stream",
        ),
        case(
            "file-64495",
            "The plaintext stream ends one byte before the first segment boundary (1,024 + 64,495 = 65,519). \
             The name is non-ASCII UTF-8 with spaces; the media type has a parameter.",
            64_495,
            "Grüße, 世界 (draft 2).txt",
            "text/plain;charset=utf-8",
        ),
        case(
            "file-64496",
            "The plaintext stream is exactly one segment (65,520 bytes); the blob is exactly one 65,536-byte block.",
            64_496,
            "exactly-one-segment.bin",
            "application/octet-stream",
        ),
        case(
            "file-64497",
            "The plaintext stream is one byte into segment 1: the final segment seals a single byte (17 bytes).",
            64_497,
            "two-segments.bin",
            "application/octet-stream",
        ),
        case(
            "file-65519",
            "A file of 65,519 bytes (segment length - 1).",
            65_519,
            "a.dat",
            "application/octet-stream",
        ),
        case(
            "file-65520",
            "A file of 65,520 bytes (one segment's plaintext). Empty file name and empty media type.",
            65_520,
            "",
            "",
        ),
        case(
            "file-65521",
            "A file of 65,521 bytes (segment length + 1). The longest name (768 bytes) and media type (127 bytes): \
             the header padding is at its minimum, 73 bytes.",
            65_521,
            &max_name,
            &max_media,
        ),
        Case {
            requests: &[&[(1, 2), (3, 4)], &[(3, 4)], &[(0, 4)]],
            ..case(
                "file-200000",
                "A multi-segment file (four segments, the last one partial). Also records /shoal/blob/1 requests \
                 and their range responses, and a link carrying every kind of hint.",
                200_000,
                "film.mp4",
                "video/mp4",
            )
        },
        Case {
            key: KeySource::Convergent(b""),
            ..case(
                "convergent",
                "Convergent key with an empty secret: anyone with the same file, name and media type derives the same key and blob.",
                100,
                "notes.txt",
                "text/plain",
            )
        },
        Case {
            key: KeySource::Convergent(b"our group's convergence secret"),
            ..case(
                "convergent-secret",
                "Convergent key with a secret: only publishers who share the secret derive the same key.",
                70_000,
                "report.pdf",
                "application/pdf",
            )
        },
        Case {
            outcome: Outcome::WrongKey(OTHER_KEY),
            ..case(
                "wrong-key",
                "Opening a blob with a key other than its own fails: segment 0 does not authenticate (WrongKey).",
                16,
                "secret.txt",
                "text/plain",
            )
        },
        Case {
            outcome: Outcome::BadCommitment(OTHER_KEY),
            ..case(
                "bad-commitment",
                "Segment 0 authenticates under the key, but the header holds another key's commitment: \
                 a decryptor must reject it (Header(CommitmentMismatch)). Built by sealing a header encoded \
                 for the other key under this key.",
                16,
                "salamander.txt",
                "text/plain",
            )
        },
        Case {
            outcome: Outcome::Truncated(201_087),
            ..case(
                "truncated-last-byte",
                "The 200,000-byte file's blob without its last byte. 201,087 is still a valid blob size, so the \
                 header's file length (200,000) disagrees with the size (199,999); the shortened final segment \
                 also fails authentication.",
                200_000,
                "film.mp4",
                "video/mp4",
            )
        },
        Case {
            outcome: Outcome::Truncated(3 * SEGMENT_LEN as u64),
            ..case(
                "truncated-last-segment",
                "The 200,000-byte file's blob without its last segment. The header's file length disagrees with \
                 the size, and segment 2 does not open as the final segment (it was sealed as non-final).",
                200_000,
                "film.mp4",
                "video/mp4",
            )
        },
        Case {
            outcome: Outcome::Truncated(SEGMENT_LEN as u64),
            ..case(
                "truncated-to-one-segment",
                "The two-segment blob of a 64,497-byte file cut to its first segment: 65,536 bytes is a valid \
                 one-segment blob, so segment 0 is opened as the final segment and fails authentication. \
                 Without the final flag this truncation would go unnoticed.",
                64_497,
                "two-segments.bin",
                "application/octet-stream",
            )
        },
    ]
}

/// A key and blob built from a case.
#[derive(Debug)]
pub(crate) struct Built {
    /// The content key.
    pub(crate) key: ContentKey,
    /// Header flags.
    pub(crate) flags: u16,
    /// The file.
    pub(crate) file: Vec<u8>,
    /// The header record as sealed in segment 0.
    pub(crate) header: [u8; HEADER_LEN],
    /// The blob.
    pub(crate) blob: Vec<u8>,
    /// BLAKE3 of the header with a zero commitment followed by the file (convergent cases).
    pub(crate) stream_hash: Option<blake3::Hash>,
}

/// Encrypts a case with the public API.
///
/// # Errors
/// If the case's metadata is invalid.
pub(crate) fn build(case: &Case) -> Result<Built, Box<dyn Error>> {
    let file = file_bytes(case.file_len);
    let metadata = Metadata {
        name: case.name.clone(),
        file_len: case.file_len,
        media_type: case.media_type.clone(),
    };
    let (key, flags, stream_hash) = match case.key {
        KeySource::Random(bytes) => (ContentKey::random_from(bytes), 0, None),
        KeySource::Convergent(secret) => {
            let zeroed = Header {
                flags: FLAG_CONVERGENT,
                metadata: metadata.clone(),
            }
            .encode_for_convergence()?;
            let mut hasher = ConvergentHasher::new();
            hasher.update(&zeroed);
            hasher.update(&file);
            let mut plain = blake3::Hasher::new();
            plain.update(&zeroed);
            plain.update(&file);
            (
                hasher.finalize(secret),
                FLAG_CONVERGENT,
                Some(plain.finalize()),
            )
        }
    };
    let sealer = Sealer::new(&key, flags, metadata.clone())?;
    let layout = *sealer.layout();
    let mut blob = Vec::new();
    let mut segment = Vec::new();
    if let Outcome::BadCommitment(other) = case.outcome {
        // Sealer always writes the right commitment; build this one by hand.
        let header = Header { flags, metadata }.encode(&ContentKey::from_bytes(other))?;
        let mut stream = header.to_vec();
        stream.extend_from_slice(&file);
        let cipher = SegmentCipher::new(&key);
        for (i, part) in stream.chunks(SEGMENT_LEN - TAG_LEN).enumerate() {
            let index = i as u64;
            segment.clear();
            segment.extend_from_slice(part);
            segment.extend_from_slice(&[0; TAG_LEN]);
            cipher.seal_in_place(index, layout.is_final(index), &mut segment);
            blob.extend_from_slice(&segment);
        }
        return Ok(Built {
            key,
            flags,
            file,
            header,
            blob,
            stream_hash,
        });
    }
    for index in 0..layout.segments() {
        let (offset, _) = layout.file_offset(index);
        let start = usize::try_from(offset)?;
        let part = &file[start..start + sealer.file_bytes_in(index)];
        sealer.seal_segment(index, part, &mut segment);
        blob.extend_from_slice(&segment);
    }
    Ok(Built {
        key,
        flags,
        file,
        header: *sealer.header(),
        blob,
        stream_hash,
    })
}

/// The bao outboard of a blob, built from per-block chaining values.
pub(crate) fn outboard_of(blob: &[u8]) -> shoal_protocol::blob::Outboard {
    let blocks = blob.len().div_ceil(SEGMENT_LEN);
    let mut builder = OutboardBuilder::new(blob.len() as u64);
    for (i, block) in blob.chunks(SEGMENT_LEN).enumerate() {
        let index = BlockIndex(u32::try_from(i).expect("vector blobs have few blocks"));
        builder.push(block_hash(index, block, blocks == 1));
    }
    builder.finish()
}

/// Renders every vector file (`README.md` included) as (file name, contents).
///
/// # Errors
/// If a case cannot be built.
pub(crate) fn render_all() -> Result<Vec<(String, String)>, Box<dyn Error>> {
    let cases = cases();
    let mut out = Vec::new();
    for c in &cases {
        out.push((format!("v1-{}.txt", c.id), render_case(c)?));
    }
    out.push(("v1-wire.txt".to_owned(), render_wire()?));
    out.push(("README.md".to_owned(), render_readme(&cases)));
    Ok(out)
}

/// Accumulates `name: value` lines and comments.
struct Doc(String);

impl Doc {
    fn comment(&mut self, text: &str) {
        for line in wrap(text, 90) {
            if line.is_empty() {
                self.0.push_str("#\n");
            } else {
                let _ = writeln!(self.0, "# {line}");
            }
        }
    }
    fn blank(&mut self) {
        self.0.push('\n');
    }
    fn field(&mut self, name: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        if value.is_empty() {
            let _ = writeln!(self.0, "{name}:");
        } else {
            let _ = writeln!(self.0, "{name}: {value}");
        }
    }
    /// A hex value; long ones continue on indented lines.
    fn hex(&mut self, name: &str, bytes: &[u8]) {
        let h = hex::encode(bytes);
        if h.len() <= HEX_PER_LINE {
            self.field(name, h);
            return;
        }
        let _ = writeln!(self.0, "{name}:");
        for line in h.as_bytes().chunks(HEX_PER_LINE) {
            let _ = writeln!(self.0, "  {}", String::from_utf8_lossy(line));
        }
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn json(s: &str) -> Result<String, Box<dyn Error>> {
    Ok(serde_json::to_string(s)?)
}

fn preamble(doc: &mut Doc, title: &str) {
    doc.comment(&format!(
        "Shoal content format v1 test vector: {title}\n\
         Normative description: docs/protocol.md. Format of this file: docs/test-vectors/README.md.\n\
         Generated by `cargo run -p shoal-protocol --example make_vectors -- docs/test-vectors`; \
         checked by protocol/tests/vectors.rs. Do not edit by hand."
    ));
}

// Long on purpose: it writes the vector file top to bottom, one annotated field after another,
// so the code reads in the same order as the file it produces.
fn render_case(c: &Case) -> Result<String, Box<dyn Error>> {
    let built = build(c)?;
    let blob = &built.blob;
    let key = &built.key;
    let layout = Layout::for_file(c.file_len)?;
    let segments = layout.segments();
    let mut d = Doc(String::new());
    preamble(&mut d, &format!("v1-{}", c.id));
    d.comment("");
    d.comment(c.about);
    d.blank();
    d.field("vector", format!("v1-{}", c.id));
    d.field(
        "expect",
        match c.outcome {
            Outcome::Opens => "opens",
            Outcome::WrongKey(_) => "wrong-key",
            Outcome::BadCommitment(_) => "bad-commitment",
            Outcome::Truncated(_) => "truncated",
        },
    );

    d.blank();
    d.comment("== Inputs");
    match c.key {
        KeySource::Random(_) => {
            d.comment("key-source random: K stands in for 32 bytes of OS CSPRNG output.");
            d.field("key-source", "random");
        }
        KeySource::Convergent(secret) => {
            d.comment(
                "key-source convergent: K = derive_key(\"shoal 2026-11 v1 convergent key\", H || secret), where \
                 H = BLAKE3(header record with a zero commitment || file bytes), given below as \
                 convergent-stream-hash. The secret is hex (empty here means no secret).",
            );
            d.field("key-source", "convergent");
            d.hex("convergent-secret", secret);
            let h = built
                .stream_hash
                .ok_or("convergent case without a stream hash")?;
            d.hex("convergent-stream-hash", h.as_bytes());
        }
    }
    d.hex("key", key.as_bytes());
    d.field("flags", format!("{:#06x}", built.flags));
    d.comment("name and media-type are JSON strings.");
    d.field("name", json(&c.name)?);
    d.field("media-type", json(&c.media_type)?);
    d.field("file-len", c.file_len);
    d.field("file-rule", FILE_RULE);
    d.hex("file-blake3", blake3::hash(&built.file).as_bytes());

    d.blank();
    d.comment("== Subkeys");
    d.comment("segment-key = derive_key(\"shoal 2026-11 v1 segment key\", K): the XChaCha20-Poly1305 key.");
    d.hex(
        "segment-key",
        &blake3::derive_key("shoal 2026-11 v1 segment key", key.as_bytes()),
    );
    d.comment("commitment = derive_key(\"shoal 2026-11 v1 key commitment\", K).");
    d.hex("commitment", &key.commitment());

    d.blank();
    d.comment("== Header record: plaintext bytes 0..1024 of segment 0; integers are little-endian");
    let h = &built.header;
    let name_len = usize::from(u16::from_le_bytes([h[52], h[53]]));
    let media_len = usize::from(h[54]);
    let strings_end = 56 + name_len + media_len;
    if let Outcome::BadCommitment(other) = c.outcome {
        d.comment("This header holds the commitment of header-commitment-key, not of key.");
        d.hex("header-commitment-key", &other);
    }
    d.comment("offset 0, 8 bytes: magic \"SHOALHDR\"");
    d.hex("header.magic", &h[0..8]);
    d.comment("offset 8, u16: format version (1)");
    d.hex("header.version", &h[8..10]);
    d.comment("offset 10, u16: flags (bit 0 = convergent)");
    d.hex("header.flags", &h[10..12]);
    d.comment("offset 12, 32 bytes: key commitment");
    d.hex("header.commitment", &h[12..44]);
    d.comment(&format!("offset 44, u64: file length ({})", c.file_len));
    d.hex("header.file-len", &h[44..52]);
    d.comment(&format!("offset 52, u16: name length ({name_len})"));
    d.hex("header.name-len", &h[52..54]);
    d.comment(&format!("offset 54, u8: media type length ({media_len})"));
    d.hex("header.media-type-len", &h[54..55]);
    d.comment("offset 55, u8: reserved (0)");
    d.hex("header.reserved", &h[55..56]);
    d.comment(&format!("offset 56, {name_len} bytes: name (UTF-8)"));
    d.hex("header.name", &h[56..56 + name_len]);
    d.comment(&format!(
        "offset {}, {media_len} bytes: media type (ASCII)",
        56 + name_len
    ));
    d.hex("header.media-type", &h[56 + name_len..strings_end]);
    d.comment(&format!(
        "offset {strings_end}, {} bytes: zero padding to 1024 (count given in decimal)",
        HEADER_LEN - strings_end
    ));
    d.field("header.padding-len", HEADER_LEN - strings_end);

    d.blank();
    d.comment("== Layout");
    d.field("stream-len", layout.stream_len());
    d.field("segments", segments);
    d.field("blob-len", layout.blob_len());

    d.blank();
    d.comment(
        "== Sealed segments. nonce = index (u64 LE) || final flag (1 byte) || 15 zero bytes. \
         chaining-value is the block's bao leaf value (for a one-block blob: the blob id).",
    );
    let full = blob.len() <= FULL_BLOB_MAX;
    for (i, sealed) in blob.chunks(SEGMENT_LEN).enumerate() {
        let index = i as u64;
        let p = format!("segment.{i}");
        d.field(
            &format!("{p}.plaintext-len"),
            layout.segment_plaintext_len(index),
        );
        d.field(&format!("{p}.file-bytes"), {
            let (off, skip) = layout.file_offset(index);
            let n = layout.segment_plaintext_len(index) - skip;
            format!("{off}..{}", off + n as u64)
        });
        d.hex(
            &format!("{p}.nonce"),
            &segment_nonce(index, layout.is_final(index)),
        );
        d.field(&format!("{p}.sealed-len"), sealed.len());
        if full {
            // The whole blob is recorded below.
        } else if sealed.len() <= 2 * EXCERPT_LEN {
            d.hex(&format!("{p}.sealed"), sealed);
        } else {
            d.hex(&format!("{p}.sealed-first64"), &sealed[..EXCERPT_LEN]);
            d.hex(
                &format!("{p}.sealed-last64"),
                &sealed[sealed.len() - EXCERPT_LEN..],
            );
        }
        d.hex(&format!("{p}.tag"), &sealed[sealed.len() - TAG_LEN..]);
        d.hex(
            &format!("{p}.sealed-blake3"),
            blake3::hash(sealed).as_bytes(),
        );
        let block = BlockIndex(u32::try_from(i)?);
        d.hex(
            &format!("{p}.chaining-value"),
            block_hash(block, sealed, segments == 1).as_bytes(),
        );
    }

    d.blank();
    d.comment("== Blob");
    if full {
        d.comment(&format!(
            "The whole blob: sealed segment 0 = ciphertext (bytes 0..{}) || tag (bytes {}..{}).",
            blob.len() - TAG_LEN,
            blob.len() - TAG_LEN,
            blob.len()
        ));
        d.hex("blob", blob);
    }
    let id = BlobId::of(blob);
    d.comment("blob-id = BLAKE3(blob) = bao root; blob-id-base32 is its text form in links.");
    d.hex("blob-id", id.as_bytes());
    d.field("blob-id-base32", id);
    let outboard = outboard_of(blob);
    d.comment(&format!(
        "Pre-order outboard: {} parent pair(s) of 64 bytes (left || right chaining value).",
        outboard.as_bytes().len() / 64
    ));
    d.hex("outboard", outboard.as_bytes());
    let mut link = Link::new(id, key.clone());
    link.blob_len = Some(blob.len() as u64);
    d.field("link", link.to_secret_string());
    if !c.requests.is_empty() {
        link.peers.push(HINT_PEER.to_owned());
        link.trackers.push(HINT_TRACKER.to_owned());
        link.other
            .push((HINT_UNKNOWN.0.to_owned(), HINT_UNKNOWN.1.to_owned()));
        d.comment(
            "The same link with a peer, a tracker and an unknown hint (kept and re-emitted as is).",
        );
        d.field("link-with-hints", link.to_secret_string());
    }

    render_outcome(&mut d, c, &built)?;
    render_requests(&mut d, c, id, blob, &outboard)?;
    Ok(d.0)
}

fn render_outcome(d: &mut Doc, c: &Case, built: &Built) -> Result<(), Box<dyn Error>> {
    let blob = &built.blob;
    let len = blob.len() as u64;
    let seg0_len = blob.len().min(SEGMENT_LEN);
    match c.outcome {
        Outcome::Opens => {
            let mut seg0 = blob[..seg0_len].to_vec();
            Opener::new(&built.key, len, &mut seg0).map_err(|e| format!("{}: {e}", c.id))?;
        }
        Outcome::WrongKey(other) => {
            let mut seg0 = blob[..seg0_len].to_vec();
            let err = Opener::new(&ContentKey::from_bytes(other), len, &mut seg0)
                .err()
                .ok_or("the wrong key opened the blob")?;
            d.blank();
            d.comment("== Expected failure: opening the blob with open-key.");
            d.hex("open-key", &other);
            d.field("open-error", format!("{err:?}"));
        }
        Outcome::BadCommitment(_) => {
            let mut seg0 = blob[..seg0_len].to_vec();
            let err = Opener::new(&built.key, len, &mut seg0)
                .err()
                .ok_or("a bad commitment was accepted")?;
            d.blank();
            d.comment("== Expected failure: opening the blob with key.");
            d.field("open-error", format!("{err:?}"));
        }
        Outcome::Truncated(new_len) => {
            let cut = &blob[..usize::try_from(new_len)?];
            let layout = Layout::for_blob(new_len)?;
            let mut seg0 = cut[..layout.segment_len(0)].to_vec();
            let err: OpenBlobError = Opener::new(&built.key, new_len, &mut seg0)
                .err()
                .ok_or("the truncated blob opened")?;
            let last = layout.segments() - 1;
            let start = usize::try_from(last)? * SEGMENT_LEN;
            let mut last_seg = cut[start..].to_vec();
            let last_err = SegmentCipher::new(&built.key)
                .open_in_place(last, true, &mut last_seg)
                .err()
                .ok_or("the truncated final segment opened")?;
            d.blank();
            d.comment(
                "== Expected failure: the blob cut to truncated.blob-len bytes, opened with key. \
                 truncated.last-segment-error is the result of opening its last segment as the final one.",
            );
            d.field("truncated.blob-len", new_len);
            d.field("truncated.segments", layout.segments());
            d.hex("truncated.blob-id", BlobId::of(cut).as_bytes());
            d.field("truncated.open-error", format!("{err:?}"));
            d.field("truncated.last-segment-error", format!("{last_err:?}"));
        }
    }
    Ok(())
}

fn render_requests(
    d: &mut Doc,
    c: &Case,
    id: BlobId,
    blob: &[u8],
    outboard: &shoal_protocol::blob::Outboard,
) -> Result<(), Box<dyn Error>> {
    for (n, ranges) in c.requests.iter().enumerate() {
        let ranges: Vec<BlockRange> = ranges
            .iter()
            .map(|&(start, end)| BlockRange { start, end })
            .collect();
        let req = BlobRequest { id, ranges };
        req.validate()?;
        let p = format!("request.{n}");
        d.blank();
        if n == 0 {
            d.comment(
                "== /shoal/blob/1 requests for this blob. ranges: half-open block ranges start..end. \
                 response-header: status 0 (ok) || blob size (u64 LE). item.N: the range response in order, \
                 `parent <64 bytes>` or `block <index> <length>` (the bytes blob[index * 65536 ..][..length]). \
                 response-len and response-blake3 cover the range response after the header.",
            );
        }
        d.comment(&format!("== Request {n}"));
        let text: Vec<String> = req
            .ranges
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect();
        d.field(&format!("{p}.ranges"), text.join(" "));
        d.hex(&format!("{p}.bytes"), &req.encode());
        d.hex(
            &format!("{p}.response-header"),
            &ResponseHeader::Ok {
                blob_len: blob.len() as u64,
            }
            .encode(),
        );
        let mut response = Vec::new();
        for (k, item) in RangeEncoder::new(outboard, &req.ranges).enumerate() {
            match item {
                EncodeItem::Parent(pair) => {
                    d.field(
                        &format!("{p}.item.{k}"),
                        format!("parent {}", hex::encode(pair)),
                    );
                    response.extend_from_slice(pair);
                }
                EncodeItem::Block { index, len } => {
                    d.field(&format!("{p}.item.{k}"), format!("block {index} {len}"));
                    let start = usize::try_from(index.offset())?;
                    response.extend_from_slice(&blob[start..start + len]);
                }
            }
        }
        d.field(&format!("{p}.response-len"), response.len());
        d.hex(
            &format!("{p}.response-blake3"),
            blake3::hash(&response).as_bytes(),
        );
    }
    Ok(())
}

/// Invalid requests recorded in `v1-wire.txt`: (label, bytes).
pub(crate) fn invalid_requests() -> Vec<(&'static str, Vec<u8>)> {
    let id = [0xab; 32];
    let request = |tag: u8, count: u16, ranges: &[(u32, u32)], extra: &[u8]| {
        let mut v = vec![tag];
        v.extend_from_slice(&id);
        v.extend_from_slice(&count.to_le_bytes());
        for &(s, e) in ranges {
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&e.to_le_bytes());
        }
        v.extend_from_slice(extra);
        v
    };
    vec![
        ("unknown-tag", request(0x02, 1, &[(0, 1)], &[])),
        ("no-ranges", request(0x01, 0, &[], &[])),
        ("too-many-ranges", request(0x01, 257, &[], &[])),
        ("truncated", request(0x01, 2, &[(0, 1)], &[])),
        ("trailing-byte", request(0x01, 1, &[(0, 1)], &[0])),
        ("empty-range", request(0x01, 1, &[(3, 3)], &[])),
        ("adjacent-ranges", request(0x01, 2, &[(0, 1), (1, 2)], &[])),
        ("unsorted-ranges", request(0x01, 2, &[(4, 5), (0, 1)], &[])),
    ]
}

fn render_wire() -> Result<String, Box<dyn Error>> {
    let mut d = Doc(String::new());
    preamble(&mut d, "v1-wire");
    d.comment("");
    d.comment(
        "Messages of /shoal/blob/1 (docs/protocol.md §6). Valid requests with their range responses are in \
         v1-file-200000.txt. Integers are little-endian.",
    );
    d.blank();
    d.field("vector", "v1-wire");
    d.blank();
    d.comment(
        "== Response headers: status byte; status 0 (ok) is followed by the blob size (u64 LE), \
         status 5 (corrupt) by the block index (u32 LE).",
    );
    d.hex(
        "response.ok",
        &ResponseHeader::Ok { blob_len: 201_088 }.encode(),
    );
    d.field("response.ok.blob-len", 201_088);
    d.hex("response.not-found", &ResponseHeader::NotFound.encode());
    d.hex("response.busy", &ResponseHeader::Busy.encode());
    d.hex("response.missing", &ResponseHeader::Missing.encode());
    d.hex("response.bad-request", &ResponseHeader::BadRequest.encode());
    d.hex(
        "response.corrupt",
        &ResponseHeader::Corrupt { block: 7 }.encode(),
    );
    d.field("response.corrupt.block", 7);
    d.blank();
    d.comment(
        "== Invalid requests (blob id ab..ab) and the error a decoder reports. A server answers each with \
         status 4 (bad request).",
    );
    for (label, bytes) in invalid_requests() {
        let err = BlobRequest::decode(&bytes)
            .err()
            .ok_or("an invalid request decoded")?;
        d.hex(&format!("invalid-request.{label}"), &bytes);
        d.field(
            &format!("invalid-request.{label}.error"),
            format!("{err:?}"),
        );
    }
    Ok(d.0)
}

fn render_readme(cases: &[Case]) -> String {
    let mut s = String::new();
    s.push_str(
        "# Shoal content format v1 test vectors\n\n\
         Normative description: [`docs/protocol.md`](../protocol.md) (§9 lists these files).\n\n\
         Regenerate (from the workspace root; the output is deterministic):\n\n\
         ```text\n\
         cargo run -p shoal-protocol --example make_vectors -- docs/test-vectors\n\
         ```\n\n\
         `protocol/tests/vectors.rs` checks every file in both directions (encrypting the inputs \
         reproduces the recorded bytes; decrypting the blob recovers the inputs or fails as recorded), \
         checks that the files are byte for byte what the generator writes, and that this directory \
         holds exactly these files. Do not edit them by hand.\n\n\
         ## File format\n\n\
         - Lines starting with `#` are comments; blank lines separate sections.\n\
         - `name: value` lines. A value may continue on following lines indented by two spaces \
         (long hex strings, 32 bytes per line); the pieces are concatenated.\n\
         - Byte strings are lowercase hex, integers decimal unless noted (`flags` is hex), \
         `name` and `media-type` are JSON strings.\n\
         - File bytes are not stored: `file-rule` gives them (`byte[i] = (i * 7 + 3) mod 256`), \
         `file-blake3` checks them.\n\
         - Blobs up to 2,048 bytes are stored in full (`blob`). For larger blobs each sealed segment \
         is given by its first and last 64 bytes (or in full if at most 128 bytes), its tag and its \
         BLAKE3 hash.\n\
         - `expect` is `opens`, `wrong-key`, `bad-commitment` or `truncated`; the error fields \
         use the names of `shoal_protocol`'s error types.\n\n\
         ## Files\n\n",
    );
    for c in cases {
        let _ = writeln!(s, "- `v1-{}.txt`: {}", c.id, c.about);
    }
    s.push_str("- `v1-wire.txt`: `/shoal/blob/1` response headers and invalid requests.\n");
    s
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: cargo run -p shoal-protocol --example make_vectors -- <output directory>")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    let files = render_all()?;
    for (name, text) in &files {
        std::fs::write(dir.join(name), text)?;
    }
    let mut total = 0;
    for (name, text) in &files {
        total += text.len();
        println!("wrote {} ({} bytes)", dir.join(name).display(), text.len());
    }
    println!("{} files, {total} bytes", files.len());
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !files.iter().any(|(n, _)| *n == name) {
            eprintln!(
                "warning: {name} is not a vector this program writes; delete it if it is stale"
            );
        }
    }
    Ok(())
}
