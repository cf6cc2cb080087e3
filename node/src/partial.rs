//! What a partial blob keeps on disk so it can be resumed: a state file (which blocks are
//! verified and durably written, and the decrypted header record of a download) and a
//! sparse outboard (the parent pairs verified so far). Downloads ([`crate::fetch`]) and
//! seed nodes receiving a push ([`crate::seednode`]) both keep them. Never a key.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
};

use shoal_protocol::{
    BlobId,
    blob::{Outboard, block_count},
    format::{HEADER_LEN, Layout},
};

use crate::store::{read_exact_at, write_atomic};

const STATE_MAGIC: &[u8; 8] = b"SHOALDL1";

/// Persistent have-map and header of a download (and of a push a seed node receives).
pub(crate) struct State {
    path: PathBuf,
    pub(crate) id: BlobId,
    pub(crate) blob_len: u64,
    pub(crate) header: Option<[u8; HEADER_LEN]>,
    have: Vec<u8>,
}

impl State {
    pub(crate) fn new(path: PathBuf, id: BlobId, blob_len: u64) -> Self {
        let blocks = block_count(blob_len);
        Self {
            path,
            id,
            blob_len,
            header: None,
            have: vec![0; usize::try_from(blocks.div_ceil(8)).expect("fits")],
        }
    }

    /// Loads a state file if it belongs to this blob; anything else means "start over".
    pub(crate) fn load(path: PathBuf, id: BlobId, blob_len: Option<u64>) -> Option<Self> {
        let bytes = fs::read(&path).ok()?;
        if bytes.len() < 8 + 32 + 8 + 1 + HEADER_LEN
            || &bytes[..8] != STATE_MAGIC
            || bytes[8..40] != id.as_bytes()[..]
        {
            return None;
        }
        let len = u64::from_le_bytes(bytes[40..48].try_into().ok()?);
        if blob_len.is_some_and(|l| l != len) || Layout::for_blob(len).is_err() {
            return None;
        }
        let header: Option<[u8; HEADER_LEN]> = (bytes[48] == 1).then(|| {
            bytes[49..49 + HEADER_LEN]
                .try_into()
                .expect("length checked")
        });
        let mut state = Self::new(path, id, len);
        state.header = header;
        let bits = &bytes[49 + HEADER_LEN..];
        if bits.len() != state.have.len() {
            return None;
        }
        state.have.copy_from_slice(bits);
        Some(state)
    }

    pub(crate) fn save(&self) -> io::Result<()> {
        let mut out = Vec::with_capacity(49 + HEADER_LEN + self.have.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.blob_len.to_le_bytes());
        out.push(u8::from(self.header.is_some()));
        out.extend_from_slice(&self.header.unwrap_or([0; HEADER_LEN]));
        out.extend_from_slice(&self.have);
        write_atomic(&self.path, &out, true)
    }

    pub(crate) fn has(&self, i: u64) -> bool {
        let i = usize::try_from(i).expect("fits");
        self.have[i / 8] & (1 << (i % 8)) != 0
    }

    pub(crate) fn set(&mut self, i: u64) {
        let i = usize::try_from(i).expect("fits");
        self.have[i / 8] |= 1 << (i % 8);
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn count(&self) -> u64 {
        self.have.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

/// Opens (or creates) the sparse outboard of a download: the pairs of an earlier run if the
/// file has the right size, else all zeros (blocks resumed without their pairs are fetched
/// fine but not served until the download completes). The flag says whether the earlier
/// pairs were kept.
pub(crate) fn open_sparse_outboard(
    path: &Path,
    id: BlobId,
    blob_len: u64,
) -> io::Result<(File, Outboard, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let size = Outboard::size_for(blob_len);
    if file.metadata()?.len() == size {
        let mut pairs = vec![0u8; usize::try_from(size).expect("outboard fits in memory")];
        read_exact_at(&file, &mut pairs, 0)?;
        let outboard = Outboard::from_parts(id, blob_len, pairs).expect("size checked");
        return Ok((file, outboard, true));
    }
    file.set_len(0)?;
    file.set_len(size)?;
    Ok((file, Outboard::partial(id, blob_len), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_other_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlobId::from_bytes([1; 32]);
        let len = Layout::for_file(1_000_000).unwrap().blob_len();
        let path = dir.path().join("s");
        let mut s = State::new(path.clone(), id, len);
        s.header = Some([7; HEADER_LEN]);
        s.set(0);
        s.set(9);
        s.save().unwrap();
        let l = State::load(path.clone(), id, Some(len)).unwrap();
        assert_eq!((l.count(), l.has(9), l.has(8)), (2, true, false));
        assert_eq!(l.header, Some([7; HEADER_LEN]));
        assert!(State::load(path.clone(), BlobId::from_bytes([2; 32]), None).is_none());
        assert!(State::load(path.clone(), id, Some(len + 16)).is_none());
        fs::write(&path, b"SHOALDL1 truncated").unwrap();
        assert!(State::load(path, id, None).is_none());
    }
}
