//! The publish pipeline: plaintext file → sealed segments → outboard (and optionally a blob
//! file), in memory bounded by a small batch of segments, using every core.
//!
//! Segments are independent, so a batch is sealed and hashed in parallel (rayon); one thread
//! reads ahead and writes. See docs/benchmarks.md for its speed against a raw seal.

use std::{
    fs::File,
    io::{self, Read, Write},
    path::Path,
};

use rayon::prelude::*;
use shoal_protocol::{
    blob::{BlockIndex, Outboard, OutboardBuilder, block_hash},
    format::{
        ContentKey, ConvergentHasher, FLAG_CONVERGENT, Header, Metadata, SEGMENT_LEN, Sealer,
    },
};

/// Segments sealed per batch: 32 × 64 KiB = 2 MiB of buffers in flight.
const BATCH_SEGMENTS: usize = 32;

/// How the content key is chosen.
#[derive(Clone, Debug, Default)]
pub enum KeyMode {
    /// A fresh random key (the default: links to the same file differ).
    #[default]
    Random,
    /// Derived from the content and metadata (and this secret, possibly empty), so identical
    /// files published with identical names dedupe. Costs one extra read of the file.
    Convergent {
        /// Shared secret limiting dedup (and confirmation attacks) to its holders.
        secret: Vec<u8>,
    },
}

/// Progress callback: called with the number of file bytes processed so far.
pub type ProgressFn<'a> = &'a (dyn Fn(u64) + Sync);

/// What sealing a file produced.
#[derive(Debug)]
pub struct Sealed {
    /// The key (secret).
    pub key: ContentKey,
    /// Header flags.
    pub flags: u16,
    /// The outboard; its id is the blob id.
    pub outboard: Outboard,
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Reading the input failed, or it changed size while being read.
    #[error("reading {path}")]
    Read {
        /// The input file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing the blob failed (disk full, permissions).
    #[error("writing the blob")]
    Write(#[source] io::Error),
    /// The metadata breaks a format rule (name too long, file too large).
    #[error("cannot describe this file in a Shoal header")]
    Metadata(#[from] shoal_protocol::format::MetadataError),
}

/// Seals `path` (whose metadata is `meta`) under a key chosen by `mode`, returning the key
/// and the outboard. If `blob_out` is given, the sealed blob is written to it.
///
/// `os_random` supplies 32 bytes from the OS CSPRNG for [`KeyMode::Random`].
///
/// # Errors
/// If the file cannot be read (or changes size while read), the blob cannot be written, or
/// the metadata is not representable.
pub fn seal_file(
    path: &Path,
    meta: Metadata,
    mode: &KeyMode,
    os_random: [u8; 32],
    mut blob_out: Option<&mut dyn Write>,
    progress: ProgressFn<'_>,
) -> Result<Sealed, SealError> {
    let read_err = |source| SealError::Read {
        path: path.display().to_string(),
        source,
    };
    let (key, flags) = match mode {
        KeyMode::Random => (ContentKey::random_from(os_random), 0),
        KeyMode::Convergent { secret } => {
            let header = Header {
                flags: FLAG_CONVERGENT,
                metadata: meta.clone(),
            }
            .encode_for_convergence()?;
            let mut hasher = ConvergentHasher::new();
            hasher.update(&header);
            let mut file = File::open(path).map_err(read_err)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut seen = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                seen += n as u64;
                hasher.update(&buf[..n]);
            }
            if seen != meta.file_len {
                return Err(read_err(changed_size()));
            }
            (hasher.finalize(secret), FLAG_CONVERGENT)
        }
    };
    let sealer = Sealer::new(&key, flags, meta)?;
    let layout = *sealer.layout();
    let segments = layout.segments();
    let single = segments == 1;
    let mut builder = OutboardBuilder::new(layout.blob_len());
    let mut file = File::open(path).map_err(read_err)?;
    let mut inputs: Vec<Vec<u8>> = (0..BATCH_SEGMENTS)
        .map(|_| Vec::with_capacity(SEGMENT_LEN))
        .collect();
    let mut outputs: Vec<Vec<u8>> = (0..BATCH_SEGMENTS)
        .map(|_| Vec::with_capacity(SEGMENT_LEN))
        .collect();
    let mut hashes = vec![blake3::Hash::from_bytes([0; 32]); BATCH_SEGMENTS];
    let mut done_bytes = 0u64;
    let mut index = 0u64;
    while index < segments {
        let batch = usize::try_from((segments - index).min(BATCH_SEGMENTS as u64))
            .expect("at most BATCH_SEGMENTS");
        for (i, input) in inputs.iter_mut().take(batch).enumerate() {
            let want = sealer.file_bytes_in(index + i as u64);
            input.resize(want, 0);
            file.read_exact(input).map_err(|e| {
                read_err(if e.kind() == io::ErrorKind::UnexpectedEof {
                    changed_size()
                } else {
                    e
                })
            })?;
        }
        inputs[..batch]
            .par_iter()
            .zip(outputs[..batch].par_iter_mut())
            .zip(hashes[..batch].par_iter_mut())
            .enumerate()
            .for_each(|(i, ((input, out), hash))| {
                let seg = index + i as u64;
                sealer.seal_segment(seg, input, out);
                let block =
                    BlockIndex(u32::try_from(seg).expect("MAX_FILE_LEN keeps indices in u32"));
                *hash = block_hash(block, out, single);
            });
        for i in 0..batch {
            builder.push(hashes[i]);
            if let Some(w) = blob_out.as_mut() {
                w.write_all(&outputs[i]).map_err(SealError::Write)?;
            }
            done_bytes += inputs[i].len() as u64;
        }
        progress(done_bytes);
        index += batch as u64;
    }
    // The file must end where its metadata said.
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(read_err)? != 0 {
        return Err(read_err(changed_size()));
    }
    if let Some(w) = blob_out.as_mut() {
        w.flush().map_err(SealError::Write)?;
    }
    Ok(Sealed {
        key,
        flags,
        outboard: builder.finish(),
    })
}

fn changed_size() -> io::Error {
    io::Error::other("the file changed size while it was being read")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::format::{Layout, Opener};

    fn meta(len: u64) -> Metadata {
        Metadata {
            name: "f.bin".into(),
            file_len: len,
            media_type: String::new(),
        }
    }

    #[test]
    fn sealed_blob_matches_outboard_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 64_495, 64_496, 64_497, 300_000] {
            let path = dir.path().join("in");
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let mut blob = Vec::new();
            let s = seal_file(
                &path,
                meta(len as u64),
                &KeyMode::Random,
                [5; 32],
                Some(&mut blob),
                &|_| {},
            )
            .unwrap();
            assert_eq!(s.outboard.id(), shoal_protocol::BlobId::of(&blob));
            assert_eq!(
                blob.len() as u64,
                Layout::for_file(len as u64).unwrap().blob_len()
            );
            let mut seg0 = blob[..blob.len().min(SEGMENT_LEN)].to_vec();
            let (opener, body) = Opener::new(&s.key, blob.len() as u64, &mut seg0).unwrap();
            let mut out = seg0[body].to_vec();
            for (i, seg) in blob.chunks(SEGMENT_LEN).enumerate().skip(1) {
                let mut seg = seg.to_vec();
                let r = opener.open_segment(i as u64, &mut seg).unwrap();
                out.extend_from_slice(&seg[r]);
            }
            assert_eq!(out, data, "len {len}");
        }
    }

    #[test]
    fn convergent_is_deterministic_and_changed_size_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let mode = KeyMode::Convergent { secret: vec![] };
        let a = seal_file(&path, meta(100_000), &mode, [1; 32], None, &|_| {}).unwrap();
        let b = seal_file(&path, meta(100_000), &mode, [2; 32], None, &|_| {}).unwrap();
        assert_eq!(a.outboard.id(), b.outboard.id());
        assert_eq!(a.key, b.key);
        let other = KeyMode::Convergent {
            secret: b"s".to_vec(),
        };
        let c = seal_file(&path, meta(100_000), &other, [1; 32], None, &|_| {}).unwrap();
        assert_ne!(a.outboard.id(), c.outboard.id());
        let err = seal_file(
            &path,
            meta(99_999),
            &KeyMode::Random,
            [1; 32],
            None,
            &|_| {},
        )
        .unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(err)).contains("changed size"));
    }
}
