//! Checks the content format v1 test vectors in `docs/test-vectors/` in both directions.
//!
//! For every vector:
//! - encrypting the described input with this crate reproduces the recorded bytes, hashes, blob
//!   id, outboard, link and range responses;
//! - a reference built here from the spec alone (BLAKE3 `derive_key`, XChaCha20-Poly1305,
//!   bao-tree's own encoder) agrees with the recorded values;
//! - decrypting the recorded blob (small cases) or the regenerated one recovers the file and its
//!   metadata, or fails exactly as recorded (wrong key, bad commitment, truncation);
//! - every field of the file is checked (an unknown or unchecked field fails the test).
//!
//! The checked-in files must also be byte for byte what `examples/make_vectors.rs` writes, and
//! the directory must hold exactly the expected files, so an edited, stale or deleted vector is
//! caught. Run: `cargo test -p shoal-protocol --test vectors`. To regenerate the vectors (only
//! when the format changes on purpose): `cargo run -p shoal-protocol --example make_vectors --
//! docs/test-vectors`.

// The generator is shared so that the files can be compared byte for byte with its output;
// its `main` and its file writing are not used here.
#[allow(dead_code)]
#[path = "../examples/make_vectors.rs"]
mod make_vectors;

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use bao_tree::{
    BaoTree, ChunkNum, ChunkRanges, io::outboard::PreOrderMemOutboard,
    io::outboard::PreOrderOutboard,
};
use blake3::hazmat::HasherExt;
use chacha20poly1305::{
    AeadInOut, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Tag, array::Array},
};
use shoal_protocol::{
    BlobId, ContentKey, Link,
    blob::{
        BLOCK_SIZE, BlockIndex, BlockRange, EncodeItem, Need, Outboard, RangeDecoder, RangeEncoder,
    },
    format::{
        ConvergentHasher, Header, HeaderError, Layout, Metadata, OpenBlobError, OpenSegmentError,
        Opener, Sealer, SegmentCipher, segment_nonce,
    },
    wire::{BlobRequest, ResponseHeader},
};

/// Every file the vector directory must hold, no more, no fewer.
const EXPECTED_FILES: &[&str] = &[
    "README.md",
    "v1-bad-commitment.txt",
    "v1-convergent-secret.txt",
    "v1-convergent.txt",
    "v1-file-0.txt",
    "v1-file-1.txt",
    "v1-file-200000.txt",
    "v1-file-64495.txt",
    "v1-file-64496.txt",
    "v1-file-64497.txt",
    "v1-file-65519.txt",
    "v1-file-65520.txt",
    "v1-file-65521.txt",
    "v1-truncated-last-byte.txt",
    "v1-truncated-last-segment.txt",
    "v1-truncated-to-one-segment.txt",
    "v1-wire.txt",
    "v1-wrong-key.txt",
];

// The spec's constants, written out again here so that the code cannot drift from them.
const CTX_SEGMENT_KEY: &str = "shoal 2026-11 v1 segment key";
const CTX_COMMITMENT: &str = "shoal 2026-11 v1 key commitment";
const CTX_CONVERGENT: &str = "shoal 2026-11 v1 convergent key";
const SEGMENT_PLAINTEXT: usize = 65_520;
const SEALED_SEGMENT: usize = 65_536;
const TAG: usize = 16;
const HEADER: usize = 1024;
const STRINGS_AT: usize = 56;

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors")
}

fn read_vector(name: &str) -> String {
    let path = vector_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A parsed vector file: `name: value` fields; every field must be read by the checks.
struct Vector {
    file: String,
    fields: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
}

impl Vector {
    fn parse(file: &str, text: &str) -> Self {
        let mut fields = BTreeMap::new();
        let mut last: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let at = || format!("{file}:{}", n + 1);
            if line.starts_with('#') || line.trim().is_empty() {
                last = None;
                continue;
            }
            if let Some(more) = line.strip_prefix("  ") {
                let name = last
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: continuation without a field", at()));
                let value: &mut String = fields.get_mut(name).expect("the field was inserted");
                value.push_str(more.trim());
                continue;
            }
            let (name, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|n| (n, "")))
                .unwrap_or_else(|| panic!("{}: expected `name: value`, got {line:?}", at()));
            assert!(
                !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"-.".contains(&b)),
                "{}: bad field name {name:?}",
                at()
            );
            let previous = fields.insert(name.to_owned(), value.to_owned());
            assert!(previous.is_none(), "{}: field {name} given twice", at());
            last = Some(name.to_owned());
        }
        Self {
            file: file.to_owned(),
            fields,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    fn opt(&self, name: &str) -> Option<&str> {
        let value = self.fields.get(name)?;
        self.used.borrow_mut().insert(name.to_owned());
        Some(value)
    }

    fn get(&self, name: &str) -> &str {
        self.opt(name)
            .unwrap_or_else(|| panic!("{}: field {name} is missing", self.file))
    }

    fn hex(&self, name: &str) -> Vec<u8> {
        hex::decode(self.get(name))
            .unwrap_or_else(|e| panic!("{}: field {name} is not hex: {e}", self.file))
    }

    fn arr<const N: usize>(&self, name: &str) -> [u8; N] {
        self.hex(name).try_into().unwrap_or_else(|v: Vec<u8>| {
            panic!("{}: field {name} is {} bytes, not {N}", self.file, v.len())
        })
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> T {
        self.get(name)
            .parse()
            .unwrap_or_else(|_| panic!("{}: field {name} is not a number", self.file))
    }

    fn json(&self, name: &str) -> String {
        serde_json::from_str(self.get(name))
            .unwrap_or_else(|e| panic!("{}: field {name} is not a JSON string: {e}", self.file))
    }

    /// Fails if some field was never read: nothing in a vector goes unchecked.
    fn finish(&self) {
        let used = self.used.borrow();
        let unchecked: Vec<&String> = self.fields.keys().filter(|k| !used.contains(*k)).collect();
        assert!(
            unchecked.is_empty(),
            "{}: fields not checked: {unchecked:?}",
            self.file
        );
    }
}

// ---- A reference implementation of the spec, independent of the crate's format code ----

fn ref_file(len: u64) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

fn ref_nonce(index: u64, is_final: bool) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8] = u8::from(is_final);
    n
}

fn ref_cipher(segment_key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Array::from(*segment_key))
}

fn ref_seal(cipher: &XChaCha20Poly1305, nonce: &[u8; 24], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(*nonce), &[], buf.as_mut_slice().into())
        .expect("a segment is within XChaCha20-Poly1305's limits");
    buf.extend_from_slice(&tag);
    buf
}

fn ref_open(cipher: &XChaCha20Poly1305, nonce: &[u8; 24], sealed: &[u8]) -> Option<Vec<u8>> {
    let (body, tag) = sealed.split_at(sealed.len().checked_sub(TAG)?);
    let tag = Tag::<XChaCha20Poly1305>::try_from(tag).expect("16 bytes");
    let mut buf = body.to_vec();
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), &[], buf.as_mut_slice().into(), &tag)
        .ok()?;
    Some(buf)
}

/// The bao leaf chaining value of block `index` (the BLAKE3 subtree of its 64 chunks).
fn ref_leaf_cv(index: u64, block: &[u8], is_root: bool) -> [u8; 32] {
    if is_root {
        *blake3::hash(block).as_bytes()
    } else {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(index * SEALED_SEGMENT as u64);
        h.update(block);
        h.finalize_non_root()
    }
}

fn ref_base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

/// Block ranges as bao chunk ranges: a range reaching the last block runs to the end.
fn ref_chunk_ranges(ranges: &[BlockRange], blocks: u64) -> ChunkRanges {
    let mut out = ChunkRanges::empty();
    for r in ranges {
        let start = ChunkNum(u64::from(r.start) * 64);
        out |= if u64::from(r.end) >= blocks {
            ChunkRanges::from(start..)
        } else {
            ChunkRanges::from(start..ChunkNum(u64::from(r.end) * 64))
        };
    }
    out
}

/// Assembles the header record from its recorded fields, checking each against the spec.
fn check_header(
    v: &Vector,
    committed_key: &[u8; 32],
    flags: u16,
    name: &str,
    media_type: &str,
    file_len: u64,
) -> [u8; HEADER] {
    let mut h = Vec::with_capacity(HEADER);
    let mut field = |field: &str, expected: &[u8]| {
        let got = v.hex(field);
        assert_eq!(
            hex::encode(&got),
            hex::encode(expected),
            "{}: {field}",
            v.file
        );
        h.extend_from_slice(&got);
    };
    field("header.magic", b"SHOALHDR");
    field("header.version", &1u16.to_le_bytes());
    field("header.flags", &flags.to_le_bytes());
    field(
        "header.commitment",
        &blake3::derive_key(CTX_COMMITMENT, committed_key),
    );
    field("header.file-len", &file_len.to_le_bytes());
    field(
        "header.name-len",
        &u16::try_from(name.len()).expect("short name").to_le_bytes(),
    );
    field(
        "header.media-type-len",
        &[u8::try_from(media_type.len()).expect("short media type")],
    );
    field("header.reserved", &[0]);
    field("header.name", name.as_bytes());
    field("header.media-type", media_type.as_bytes());
    let padding: usize = v.num("header.padding-len");
    assert_eq!(
        padding,
        HEADER - STRINGS_AT - name.len() - media_type.len(),
        "{}",
        v.file
    );
    h.resize(h.len() + padding, 0);
    h.try_into()
        .unwrap_or_else(|h: Vec<u8>| panic!("{}: header is {} bytes", v.file, h.len()))
}

/// Opens a whole blob with the crate and returns the header and the file.
fn open_with_crate(key: &ContentKey, blob: &[u8]) -> Result<(Header, Vec<u8>), OpenBlobError> {
    let len = blob.len() as u64;
    let layout = Layout::for_blob(len)?;
    let mut seg0 = blob[..layout.segment_len(0)].to_vec();
    let (opener, body) = Opener::new(key, len, &mut seg0)?;
    let mut file = seg0[body].to_vec();
    let mut offset = layout.segment_len(0);
    for index in 1..layout.segments() {
        let mut seg = blob[offset..offset + layout.segment_len(index)].to_vec();
        offset += seg.len();
        let range = opener
            .open_segment(index, &mut seg)
            .expect("segments of a valid blob open");
        file.extend_from_slice(&seg[range]);
    }
    assert_eq!(offset, blob.len());
    Ok((opener.header().clone(), file))
}

// Long on purpose: one straight check per field of the vector format, in the order the
// vector files list them (docs/test-vectors/README.md), so a reader can follow both side by side.
fn check_content(v: &Vector) {
    let stem = v.file.strip_suffix(".txt").expect("a .txt vector");
    assert_eq!(v.get("vector"), stem);
    let expect = v.get("expect");

    // Inputs.
    let key: [u8; 32] = v.arr("key");
    let flags =
        u16::from_str_radix(v.get("flags").trim_start_matches("0x"), 16).expect("hex flags");
    let name = v.json("name");
    let media_type = v.json("media-type");
    let file_len: u64 = v.num("file-len");
    assert_eq!(v.get("file-rule"), "byte[i] = (i * 7 + 3) mod 256");
    let file = ref_file(file_len);
    assert_eq!(
        v.hex("file-blake3"),
        blake3::hash(&file).as_bytes(),
        "{}",
        v.file
    );
    let metadata = Metadata {
        name: name.clone(),
        file_len,
        media_type: media_type.clone(),
    };

    // Subkeys.
    let segment_key: [u8; 32] = v.arr("segment-key");
    assert_eq!(
        segment_key,
        blake3::derive_key(CTX_SEGMENT_KEY, &key),
        "{}",
        v.file
    );
    assert_eq!(
        v.arr::<32>("commitment"),
        blake3::derive_key(CTX_COMMITMENT, &key)
    );
    assert_eq!(
        ContentKey::from_bytes(key).commitment(),
        blake3::derive_key(CTX_COMMITMENT, &key)
    );

    // Header record.
    let committed_key: [u8; 32] = if expect == "bad-commitment" {
        let other = v.arr("header-commitment-key");
        assert_ne!(other, key);
        other
    } else {
        key
    };
    let header = check_header(v, &committed_key, flags, &name, &media_type, file_len);

    // Key derivation.
    match v.get("key-source") {
        "random" => assert_eq!(flags, 0, "{}", v.file),
        "convergent" => {
            assert_eq!(flags, 1, "{}", v.file);
            let secret = v.hex("convergent-secret");
            let mut zeroed = header;
            zeroed[12..44].fill(0);
            let mut stream = zeroed.to_vec();
            stream.extend_from_slice(&file);
            let h = blake3::hash(&stream);
            assert_eq!(v.hex("convergent-stream-hash"), h.as_bytes(), "{}", v.file);
            let mut material = h.as_bytes().to_vec();
            material.extend_from_slice(&secret);
            assert_eq!(
                key,
                blake3::derive_key(CTX_CONVERGENT, &material),
                "{}",
                v.file
            );
            // The crate agrees.
            let api_zeroed = Header {
                flags,
                metadata: metadata.clone(),
            }
            .encode_for_convergence()
            .expect("valid metadata");
            assert_eq!(api_zeroed, zeroed);
            let mut hasher = ConvergentHasher::new();
            hasher.update(&api_zeroed);
            hasher.update(&file);
            assert_eq!(hasher.finalize(&secret).as_bytes(), &key);
            assert_eq!(ContentKey::convergent(&h, &secret).as_bytes(), &key);
        }
        other => panic!("{}: unknown key-source {other}", v.file),
    }
    let content_key = ContentKey::from_bytes(key);

    // Layout.
    let stream_len = HEADER as u64 + file_len;
    let segments = stream_len.div_ceil(SEGMENT_PLAINTEXT as u64);
    let blob_len = stream_len + TAG as u64 * segments;
    assert_eq!(v.num::<u64>("stream-len"), stream_len);
    assert_eq!(v.num::<u64>("segments"), segments);
    assert_eq!(v.num::<u64>("blob-len"), blob_len);
    let layout = Layout::for_file(file_len).expect("valid length");
    assert_eq!(
        (layout.stream_len(), layout.segments(), layout.blob_len()),
        (stream_len, segments, blob_len)
    );
    assert_eq!(Layout::for_blob(blob_len), Ok(layout));

    // Reference encryption, checked against every recorded segment field.
    let mut stream = header.to_vec();
    stream.extend_from_slice(&file);
    let cipher = ref_cipher(&segment_key);
    let mut blob = Vec::new();
    for (i, plain) in stream.chunks(SEGMENT_PLAINTEXT).enumerate() {
        let index = i as u64;
        let is_final = index + 1 == segments;
        let p = format!("segment.{i}");
        let nonce = ref_nonce(index, is_final);
        assert_eq!(v.arr::<24>(&format!("{p}.nonce")), nonce, "{}: {p}", v.file);
        assert_eq!(segment_nonce(index, is_final), nonce);
        assert_eq!(v.num::<usize>(&format!("{p}.plaintext-len")), plain.len());
        let first_file_byte = (index * SEGMENT_PLAINTEXT as u64).saturating_sub(HEADER as u64);
        let file_end = ((index + 1) * SEGMENT_PLAINTEXT as u64 - HEADER as u64).min(file_len);
        assert_eq!(
            v.get(&format!("{p}.file-bytes")),
            format!("{first_file_byte}..{file_end}")
        );
        let sealed = ref_seal(&cipher, &nonce, plain);
        assert_eq!(v.num::<usize>(&format!("{p}.sealed-len")), sealed.len());
        assert_eq!(
            v.hex(&format!("{p}.tag")),
            &sealed[sealed.len() - TAG..],
            "{}: {p}",
            v.file
        );
        assert_eq!(
            v.hex(&format!("{p}.sealed-blake3")),
            blake3::hash(&sealed).as_bytes(),
            "{}: {p}",
            v.file
        );
        if let Some(full) = v.opt(&format!("{p}.sealed")) {
            assert_eq!(full, hex::encode(&sealed), "{}: {p}", v.file);
        }
        if let Some(first) = v.opt(&format!("{p}.sealed-first64")) {
            assert_eq!(first, hex::encode(&sealed[..64]), "{}: {p}", v.file);
            let last = v.get(&format!("{p}.sealed-last64"));
            assert_eq!(
                last,
                hex::encode(&sealed[sealed.len() - 64..]),
                "{}: {p}",
                v.file
            );
        }
        let cv = ref_leaf_cv(index, &sealed, segments == 1);
        assert_eq!(
            v.arr::<32>(&format!("{p}.chaining-value")),
            cv,
            "{}: {p}",
            v.file
        );
        blob.extend_from_slice(&sealed);
    }
    assert_eq!(blob.len() as u64, blob_len);
    assert!(
        v.opt(&format!("segment.{segments}.nonce")).is_none(),
        "{}: more segments recorded than the layout has",
        v.file
    );

    // The crate's encryption gives the same blob.
    let api_blob = if expect == "bad-commitment" {
        let api_header = Header {
            flags,
            metadata: metadata.clone(),
        }
        .encode(&ContentKey::from_bytes(committed_key))
        .expect("valid metadata");
        assert_eq!(api_header, header);
        let c = SegmentCipher::new(&content_key);
        let mut out = Vec::new();
        for (i, plain) in stream.chunks(SEGMENT_PLAINTEXT).enumerate() {
            let mut seg = plain.to_vec();
            seg.extend_from_slice(&[0; TAG]);
            c.seal_in_place(i as u64, i as u64 + 1 == segments, &mut seg);
            out.extend_from_slice(&seg);
        }
        out
    } else {
        let sealer = Sealer::new(&content_key, flags, metadata.clone()).expect("valid metadata");
        assert_eq!(sealer.header(), &header, "{}", v.file);
        let mut out = Vec::new();
        let mut seg = Vec::new();
        for index in 0..segments {
            let start = usize::try_from(layout.file_offset(index).0).expect("small");
            sealer.seal_segment(
                index,
                &file[start..start + sealer.file_bytes_in(index)],
                &mut seg,
            );
            out.extend_from_slice(&seg);
        }
        out
    };
    assert!(
        api_blob == blob,
        "{}: the crate's blob differs from the reference",
        v.file
    );

    // The recorded blob, for small cases.
    match v.opt("blob") {
        Some(recorded) => {
            assert!(blob.len() <= 2048);
            assert_eq!(recorded, hex::encode(&blob), "{}: blob", v.file);
        }
        None => assert!(
            blob.len() > 2048,
            "{}: a small blob must be recorded in full",
            v.file
        ),
    }

    // Blob id and outboard.
    let id = BlobId::of(&blob);
    assert_eq!(id.as_bytes(), blake3::hash(&blob).as_bytes());
    assert_eq!(v.arr::<32>("blob-id"), *id.as_bytes(), "{}", v.file);
    let id_text = v.get("blob-id-base32");
    assert_eq!(id_text, ref_base32(id.as_bytes()));
    assert_eq!(id_text, id.to_string());
    assert_eq!(id_text.parse::<BlobId>(), Ok(id));
    let outboard = v.hex("outboard");
    let reference = PreOrderMemOutboard::create(&blob, BLOCK_SIZE);
    assert_eq!(reference.root.as_bytes(), id.as_bytes());
    assert_eq!(
        hex::encode(&outboard),
        hex::encode(&reference.data),
        "{}: outboard",
        v.file
    );
    assert_eq!(outboard.len() as u64, 64 * (segments - 1));
    assert_eq!(make_vectors::outboard_of(&blob).as_bytes(), &outboard[..]);
    let outboard = Outboard::from_parts(id, blob_len, outboard).expect("right size");
    for (i, block) in blob.chunks(SEALED_SEGMENT).enumerate() {
        let expected =
            outboard.expected_block_hash(BlockIndex(u32::try_from(i).expect("few blocks")));
        assert_eq!(
            expected.map(|h| *h.as_bytes()),
            Some(ref_leaf_cv(i as u64, block, segments == 1))
        );
    }

    // Links.
    let link_text = v.get("link");
    let key_text = ref_base32(&key);
    assert_eq!(
        link_text,
        format!("shoal:{id_text}?sz={blob_len}#{key_text}")
    );
    let link = Link::parse(link_text).expect("the recorded link parses");
    assert_eq!(
        (link.id, link.key.as_bytes(), link.blob_len),
        (id, &key, Some(blob_len))
    );
    assert_eq!(link.to_secret_string(), link_text);
    if let Some(text) = v.opt("link-with-hints") {
        let link = Link::parse(text).expect("the recorded link parses");
        assert_eq!(
            (link.id, link.key.as_bytes(), link.blob_len),
            (id, &key, Some(blob_len))
        );
        assert_eq!(link.peers, [make_vectors::HINT_PEER]);
        assert_eq!(link.trackers, [make_vectors::HINT_TRACKER]);
        let (n, value) = make_vectors::HINT_UNKNOWN;
        assert_eq!(link.other, [(n.to_owned(), value.to_owned())]);
        assert_eq!(link.to_secret_string(), text);
        assert!(!link.public_part().contains(&key_text));
    }

    // Decryption: the recorded blob if there is one, else the regenerated one.
    let opened = open_with_crate(&content_key, &blob);
    let mut plain = Vec::new();
    for (i, sealed) in blob.chunks(SEALED_SEGMENT).enumerate() {
        let nonce = ref_nonce(i as u64, i as u64 + 1 == segments);
        plain.extend(ref_open(&cipher, &nonce, sealed).expect("the reference opens every segment"));
    }
    assert!(plain == stream, "{}: reference decryption", v.file);
    match expect {
        "opens" | "wrong-key" | "truncated" => {
            let (h, got) = opened.unwrap_or_else(|e| panic!("{}: {e}", v.file));
            assert_eq!(h, Header { flags, metadata });
            assert!(got == file, "{}: decrypted file differs", v.file);
        }
        "bad-commitment" => {
            let err = opened.expect_err("a bad commitment is rejected");
            assert_eq!(err, OpenBlobError::Header(HeaderError::CommitmentMismatch));
            assert_eq!(v.get("open-error"), format!("{err:?}"));
        }
        other => panic!("{}: unknown expect {other}", v.file),
    }
    match expect {
        "wrong-key" => {
            let other = ContentKey::from_bytes(v.arr("open-key"));
            let err = open_with_crate(&other, &blob).expect_err("the wrong key is rejected");
            assert_eq!(err, OpenBlobError::WrongKey);
            assert_eq!(v.get("open-error"), format!("{err:?}"));
            let wrong_cipher = ref_cipher(&blake3::derive_key(CTX_SEGMENT_KEY, other.as_bytes()));
            assert!(
                ref_open(
                    &wrong_cipher,
                    &ref_nonce(0, segments == 1),
                    &blob[..blob.len().min(SEALED_SEGMENT)]
                )
                .is_none()
            );
        }
        "truncated" => check_truncated(v, &content_key, &cipher, &blob),
        _ => {}
    }

    check_requests(v, id, &blob, &outboard);
    v.finish();
}

fn check_truncated(v: &Vector, key: &ContentKey, cipher: &XChaCha20Poly1305, blob: &[u8]) {
    let len: u64 = v.num("truncated.blob-len");
    assert!(len < blob.len() as u64);
    let cut = &blob[..usize::try_from(len).expect("small")];
    assert_eq!(
        v.arr::<32>("truncated.blob-id"),
        *blake3::hash(cut).as_bytes(),
        "{}",
        v.file
    );
    let segments = len.div_ceil(SEALED_SEGMENT as u64);
    assert_eq!(v.num::<u64>("truncated.segments"), segments);
    let err = open_with_crate(key, cut).expect_err("a truncated blob does not open");
    assert_eq!(
        v.get("truncated.open-error"),
        format!("{err:?}"),
        "{}",
        v.file
    );
    assert!(matches!(
        err,
        OpenBlobError::LengthMismatch { .. } | OpenBlobError::WrongKey
    ));
    // Opening the cut blob's last segment as the final one fails, in the crate and the reference.
    let last = segments - 1;
    let start = usize::try_from(last).expect("small") * SEALED_SEGMENT;
    let mut seg = cut[start..].to_vec();
    let err = SegmentCipher::new(key)
        .open_in_place(last, true, &mut seg)
        .expect_err("a cut final segment does not open");
    assert_eq!(err, OpenSegmentError::Authentication { index: last });
    assert_eq!(v.get("truncated.last-segment-error"), format!("{err:?}"));
    assert!(ref_open(cipher, &ref_nonce(last, true), &cut[start..]).is_none());
}

fn check_requests(v: &Vector, id: BlobId, blob: &[u8], outboard: &Outboard) {
    let blob_len = blob.len() as u64;
    let blocks = blob_len.div_ceil(SEALED_SEGMENT as u64);
    let bao_outboard = PreOrderOutboard {
        root: blake3::Hash::from_bytes(*id.as_bytes()),
        tree: BaoTree::new(blob_len, BLOCK_SIZE),
        data: outboard.as_bytes().to_vec(),
    };
    for n in 0.. {
        let p = format!("request.{n}");
        let Some(text) = v.opt(&format!("{p}.ranges")) else {
            break;
        };
        let ranges: Vec<BlockRange> = text
            .split(' ')
            .map(|r| {
                let (s, e) = r.split_once("..").expect("start..end");
                BlockRange {
                    start: s.parse().expect("number"),
                    end: e.parse().expect("number"),
                }
            })
            .collect();

        // Request bytes: tag 1, blob id, count (u16 LE), ranges (u32 LE pairs).
        let bytes = v.hex(&format!("{p}.bytes"));
        let mut reference = vec![1u8];
        reference.extend_from_slice(id.as_bytes());
        reference.extend_from_slice(&u16::try_from(ranges.len()).expect("few").to_le_bytes());
        for r in &ranges {
            reference.extend_from_slice(&r.start.to_le_bytes());
            reference.extend_from_slice(&r.end.to_le_bytes());
        }
        assert_eq!(bytes, reference, "{}: {p}", v.file);
        let request = BlobRequest {
            id,
            ranges: ranges.clone(),
        };
        assert_eq!(request.encode(), bytes);
        assert_eq!(BlobRequest::decode(&bytes), Ok(request));
        let mut header = vec![0u8];
        header.extend_from_slice(&blob_len.to_le_bytes());
        assert_eq!(v.hex(&format!("{p}.response-header")), header);
        assert_eq!(ResponseHeader::Ok { blob_len }.encode(), header);

        // Items and bytes of the range response.
        let mut response = Vec::new();
        let mut k = 0;
        for item in RangeEncoder::new(outboard, &ranges) {
            let recorded = v.get(&format!("{p}.item.{k}"));
            match item {
                EncodeItem::Parent(pair) => {
                    assert_eq!(
                        recorded,
                        format!("parent {}", hex::encode(pair)),
                        "{}: {p}.item.{k}",
                        v.file
                    );
                    response.extend_from_slice(pair);
                }
                EncodeItem::Block { index, len } => {
                    assert_eq!(
                        recorded,
                        format!("block {index} {len}"),
                        "{}: {p}.item.{k}",
                        v.file
                    );
                    let start = usize::try_from(index.offset()).expect("small");
                    response.extend_from_slice(&blob[start..start + len]);
                }
            }
            k += 1;
        }
        assert!(
            v.opt(&format!("{p}.item.{k}")).is_none(),
            "{}: extra {p}.item.{k}",
            v.file
        );
        assert_eq!(v.num::<usize>(&format!("{p}.response-len")), response.len());
        assert_eq!(
            v.hex(&format!("{p}.response-blake3")),
            blake3::hash(&response).as_bytes()
        );

        // bao-tree's own encoder produces the same bytes.
        let mut bao = Vec::new();
        bao_tree::io::sync::encode_ranges(
            blob,
            &bao_outboard,
            &ref_chunk_ranges(&ranges, blocks),
            &mut bao,
        )
        .expect("bao-tree encodes");
        assert!(
            bao == response,
            "{}: {p} differs from bao-tree's encoding",
            v.file
        );

        // And the response verifies, block by block.
        let mut decoder = RangeDecoder::new(id, blob_len, &ranges);
        let mut rest = &response[..];
        let mut got = Vec::new();
        loop {
            match decoder.need() {
                Need::Done => break,
                Need::Parent => {
                    let (pair, tail) = rest.split_at(64);
                    decoder
                        .parent(pair.try_into().expect("64 bytes"))
                        .expect("parent verifies");
                    rest = tail;
                }
                Need::Block { len, .. } => {
                    let (data, tail) = rest.split_at(len);
                    got.push(decoder.block(data).expect("block verifies").0);
                    rest = tail;
                }
            }
        }
        assert!(rest.is_empty(), "{}: {p} has bytes left over", v.file);
        let wanted: Vec<u32> = ranges.iter().flat_map(|r| r.start..r.end).collect();
        assert_eq!(got, wanted);
    }
}

#[test]
fn directory_holds_exactly_the_expected_files() {
    let mut found: Vec<String> = std::fs::read_dir(vector_dir())
        .expect("docs/test-vectors exists")
        .map(|e| {
            e.expect("readable directory")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut expected: Vec<&str> = EXPECTED_FILES.to_vec();
    expected.sort_unstable();
    assert_eq!(found, expected);
}

#[test]
fn files_are_what_the_generator_writes() {
    let generated = make_vectors::render_all().expect("the generator runs");
    let mut names: Vec<&str> = generated.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = EXPECTED_FILES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for (name, text) in &generated {
        assert!(
            read_vector(name) == *text,
            "docs/test-vectors/{name} differs from what the generator writes; if the format changed on \
             purpose, regenerate with `cargo run -p shoal-protocol --example make_vectors -- docs/test-vectors`"
        );
    }
}

#[test]
fn content_vectors_check_both_ways() {
    let mut checked = 0;
    for name in EXPECTED_FILES {
        if name.starts_with("v1-") && *name != "v1-wire.txt" {
            check_content(&Vector::parse(name, &read_vector(name)));
            checked += 1;
        }
    }
    assert_eq!(checked, EXPECTED_FILES.len() - 2);
}

#[test]
fn wire_vector_checks_both_ways() {
    let v = Vector::parse("v1-wire.txt", &read_vector("v1-wire.txt"));
    assert_eq!(v.get("vector"), "v1-wire");
    let blob_len: u64 = v.num("response.ok.blob-len");
    let ok = v.hex("response.ok");
    let mut reference = vec![0u8];
    reference.extend_from_slice(&blob_len.to_le_bytes());
    assert_eq!(ok, reference);
    assert_eq!(ResponseHeader::Ok { blob_len }.encode(), ok);
    assert_eq!(ResponseHeader::decode_status(ok[0]), Ok(None));
    assert_eq!(
        ResponseHeader::ok_with_len(ok[1..9].try_into().expect("8 bytes")),
        ResponseHeader::Ok { blob_len }
    );
    for (field, status, header) in [
        ("response.not-found", 1u8, ResponseHeader::NotFound),
        ("response.busy", 2, ResponseHeader::Busy),
        ("response.missing", 3, ResponseHeader::Missing),
        ("response.bad-request", 4, ResponseHeader::BadRequest),
    ] {
        assert_eq!(v.hex(field), [status], "{field}");
        assert_eq!(header.encode(), [status]);
        assert_eq!(ResponseHeader::decode_status(status), Ok(Some(header)));
    }
    let corrupt = v.hex("response.corrupt");
    let block: u32 = v.num("response.corrupt.block");
    let mut reference = vec![5u8];
    reference.extend_from_slice(&block.to_le_bytes());
    assert_eq!(corrupt, reference);
    assert_eq!(ResponseHeader::Corrupt { block }.encode(), corrupt);
    assert_eq!(ResponseHeader::decode_status(5), Ok(None));
    assert_eq!(ResponseHeader::trailing_len(5), 4);
    assert_eq!(
        ResponseHeader::decode(5, &corrupt[1..]),
        Ok(ResponseHeader::Corrupt { block })
    );
    assert_eq!(
        ResponseHeader::decode(0, &ok[1..]),
        Ok(ResponseHeader::Ok { blob_len })
    );
    assert!(ResponseHeader::decode(5, &corrupt[1..4]).is_err(), "short");
    assert!(ResponseHeader::decode_status(6).is_err());
    let mut seen = 0;
    for (label, _) in make_vectors::invalid_requests() {
        let bytes = v.hex(&format!("invalid-request.{label}"));
        let err = BlobRequest::decode(&bytes).expect_err("an invalid request is rejected");
        assert_eq!(
            v.get(&format!("invalid-request.{label}.error")),
            format!("{err:?}"),
            "{label}"
        );
        seen += 1;
    }
    assert!(seen >= 8);
    v.finish();
}
