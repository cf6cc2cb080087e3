//! The files of a download in its output directory, from opening to publishing:
//! - `.shoal-<blob id>.part`: the plaintext being assembled, written at final offsets;
//! - `.shoal-<blob id>.state`: which blocks are verified *and durably written* (the
//!   have-map) plus the decrypted header record ([`State`]). Never the key;
//! - `.shoal-<blob id>.obao`: the parent pairs verified so far (sparse outboard), so the
//!   blocks held can be served to others, also after a resume.
//!
//! [`PartFiles`] opens and locks them (one fetch per blob and directory at a time), loads
//! what an earlier run verified, records what bootstrapping learnt, and finally renames the
//! part file to its final name and removes the rest; a fetch that ends before recording
//! anything removes its empty part file. Writing the blocks in between is
//! [`super::writer`]'s job.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
};

use shoal_protocol::{
    BlobId,
    blob::{Outboard, PARENT_LEN},
    format::{Metadata, Opener, SEGMENT_LEN, SEGMENT_PLAINTEXT_LEN},
};

use super::{error::FetchError, options::Output};
use crate::{
    partial::{State, open_sparse_outboard},
    store::write_all_at,
    wire::Pair,
};

/// `FetchError::Disk` for `path`, as a `map_err` argument.
pub(super) fn disk(path: &Path) -> impl FnOnce(io::Error) -> FetchError + use<> {
    let path = path.to_owned();
    move |source| FetchError::Disk { path, source }
}

/// A download's files in its output directory, the part file open and locked.
pub(super) struct PartFiles {
    /// The output directory.
    dir: PathBuf,
    /// The output path, if the caller chose one (else the header's name in `dir`).
    fixed_name: Option<PathBuf>,
    pub(super) part_path: PathBuf,
    pub(super) state_path: PathBuf,
    pub(super) obao_path: PathBuf,
    /// Declared before `part` so it is dropped first, while the lock is still held.
    clutter: EmptyPart,
    /// The part file, locked for the whole run (the lock is released when the last handle
    /// to it closes, even if the process is killed).
    pub(super) part: File,
}

impl PartFiles {
    /// Opens (creating if needed) and locks the part file of blob `id` for `output`.
    ///
    /// # Errors
    /// [`FetchError::OutputExists`] if the chosen output path exists and `overwrite` is
    /// off, [`FetchError::InUse`] if another fetch holds the lock, [`FetchError::Disk`].
    pub(super) fn open(output: &Output, id: BlobId, overwrite: bool) -> Result<Self, FetchError> {
        let (dir, fixed_name) = match output {
            Output::File(p) => (
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
                Some(p.clone()),
            ),
            Output::Dir(d) => (d.clone(), None),
        };
        if let Some(p) = &fixed_name
            && p.exists()
            && !overwrite
        {
            return Err(FetchError::OutputExists(p.clone()));
        }
        // Before anything is fetched: a missing directory would otherwise only show when the
        // finished file is renamed into it.
        if !dir.is_dir() {
            // As the user would name it: `newdir`, not `newdir/`.
            return Err(FetchError::NoSuchDir(dir.components().collect()));
        }
        let part_path = dir.join(format!(".shoal-{id}.part"));
        let state_path = dir.join(format!(".shoal-{id}.state"));
        let obao_path = dir.join(format!(".shoal-{id}.obao"));
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(disk(&part_path))?;
        if part.try_lock().is_err() {
            return Err(FetchError::InUse(part_path));
        }
        Ok(Self {
            clutter: EmptyPart {
                part: part_path.clone(),
                state: state_path.clone(),
                published: false,
            },
            dir,
            fixed_name,
            part_path,
            state_path,
            obao_path,
            part,
        })
    }

    /// The state an earlier run of this fetch saved, if it belongs to this blob (and to a
    /// blob of `blob_len` bytes, when known).
    pub(super) fn load_state(&self, id: BlobId, blob_len: Option<u64>) -> Option<State> {
        State::load(self.state_path.clone(), id, blob_len)
    }

    /// A fresh state for a blob of `blob_len` bytes.
    pub(super) fn new_state(&self, id: BlobId, blob_len: u64) -> State {
        State::new(self.state_path.clone(), id, blob_len)
    }

    /// Where the finished file goes: the chosen path, or the header's name in the output
    /// directory.
    ///
    /// # Errors
    /// [`FetchError::OutputExists`] if that exists and `overwrite` is off.
    pub(super) fn final_path(
        &self,
        metadata: &Metadata,
        id: BlobId,
        overwrite: bool,
    ) -> Result<PathBuf, FetchError> {
        let path = self
            .fixed_name
            .clone()
            .unwrap_or_else(|| self.dir.join(default_name(metadata, id)));
        if path.exists() && !overwrite {
            return Err(FetchError::OutputExists(path));
        }
        Ok(path)
    }

    /// Checks that the output directory has room for what is left: the file's bytes not
    /// yet written (all but `resumed` of `total` blocks) and the resume data.
    ///
    /// # Errors
    /// [`FetchError::NoSpace`] when it has not.
    pub(super) fn check_space(
        &self,
        file_len: u64,
        resumed: u64,
        total: u64,
    ) -> Result<(), FetchError> {
        let left = file_len.saturating_sub(resumed * SEGMENT_PLAINTEXT_LEN as u64);
        let needed = left + Outboard::size_for(total * SEGMENT_LEN as u64) + total.div_ceil(8);
        let Some(available) = available_space(&self.dir) else {
            return Ok(()); // unknown here: a full disk still shows as a write error
        };
        if needed > available {
            return Err(FetchError::NoSpace {
                dir: self.dir.clone(),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Records what bootstrapping learnt, durably: the parent pairs verified on the way
    /// (into the sparse outboard, opened here), block 0's plaintext (`body0`) and the last
    /// block (sealed) unless `state` has them. Returns the sparse outboard's file and
    /// contents.
    ///
    /// The last block is written only if it can be now: it lies at the end of the file,
    /// and a file size limit or a full disk should stop the download where the data is,
    /// not here. (The file is not preallocated: it grows as blocks land, so a full disk
    /// shows up as a write error mid-run, verified blocks so far are kept, and
    /// sparse-hostile filesystems cope.) Having both lets this node bootstrap others (they
    /// ask for blocks 0 and last first).
    ///
    /// # Errors
    /// [`FetchError::Disk`].
    pub(super) fn record_boot(
        &self,
        state: &mut State,
        opener: &Opener,
        parents: &[Pair],
        body0: Option<Vec<u8>>,
        last: Option<(u64, Vec<u8>)>,
    ) -> Result<(File, Outboard), FetchError> {
        let (obao, mut outboard, _) =
            open_sparse_outboard(&self.obao_path, state.id, state.blob_len)
                .map_err(disk(&self.obao_path))?;
        for (position, pair) in parents {
            outboard.set_pair(*position, pair);
            write_all_at(&obao, pair, position * PARENT_LEN as u64)
                .map_err(disk(&self.obao_path))?;
        }
        let mut last_written = None;
        if let Some((index, mut data)) = last
            && !state.has(index)
            && let Ok(range) = opener.open_segment(index, &mut data)
        {
            let (file_off, _) = opener.layout().file_offset(index);
            if write_all_at(&self.part, &data[range], file_off).is_ok() {
                last_written = Some(index);
            }
        }
        let mut first_written = false;
        if let Some(body) = body0
            && !state.has(0)
        {
            write_all_at(&self.part, &body, 0).map_err(disk(&self.part_path))?;
            first_written = true;
        }
        // Durable before the state claims them.
        if first_written || last_written.is_some() || !parents.is_empty() {
            self.part.sync_data().map_err(disk(&self.part_path))?;
            obao.sync_data().map_err(disk(&self.obao_path))?;
        }
        if first_written {
            state.set(0);
        }
        if let Some(index) = last_written {
            state.set(index);
        }
        state.save().map_err(disk(&self.state_path))?;
        Ok((obao, outboard))
    }

    /// Publishes the complete part file under `final_path` (cut to `file_len` bytes) and
    /// removes the state and sparse outboard.
    ///
    /// # Errors
    /// [`FetchError::OutputExists`] if `final_path` appeared meanwhile and `overwrite` is
    /// off, [`FetchError::Disk`].
    pub(super) fn publish(
        &mut self,
        final_path: &Path,
        file_len: u64,
        overwrite: bool,
    ) -> Result<(), FetchError> {
        if final_path.exists() && !overwrite {
            return Err(FetchError::OutputExists(final_path.to_owned()));
        }
        let part = OpenOptions::new()
            .write(true)
            .open(&self.part_path)
            .map_err(disk(&self.part_path))?;
        if part.metadata().map_err(disk(&self.part_path))?.len() != file_len {
            // Only an empty file (no block carries file bytes) or a stale longer part.
            part.set_len(file_len).map_err(disk(&self.part_path))?;
            part.sync_all().map_err(disk(&self.part_path))?;
        }
        drop(part);
        fs::rename(&self.part_path, final_path).map_err(disk(final_path))?;
        self.clutter.published = true;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let _ = fs::remove_file(&self.state_path);
        let _ = fs::remove_file(&self.obao_path);
        Ok(())
    }
}

/// Removes the part file of a fetch that ends before it recorded anything (no state file: no
/// peer answered, the key was wrong, the file was taken down): running again starts afresh
/// anyway, so an empty `.shoal-<id>.part` would only be clutter in the output directory.
/// Anything with a state file next to it is resume data and stays.
struct EmptyPart {
    part: PathBuf,
    state: PathBuf,
    /// The part file became the output: nothing to clean.
    published: bool,
}

impl Drop for EmptyPart {
    fn drop(&mut self) {
        if !self.published
            && !self.state.exists()
            && fs::metadata(&self.part).is_ok_and(|m| m.len() == 0)
        {
            let _ = fs::remove_file(&self.part);
        }
    }
}

/// Bytes available to this process in the filesystem holding `dir`, if the platform says.
#[cfg(unix)]
fn available_space(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn available_space(_dir: &Path) -> Option<u64> {
    None
}

fn default_name(meta: &Metadata, id: BlobId) -> String {
    // The protocol already rejects separators, control characters, "." and "..".
    if meta.name.is_empty() || meta.name.starts_with('.') {
        format!("{id}.bin")
    } else {
        meta.name.clone()
    }
}
