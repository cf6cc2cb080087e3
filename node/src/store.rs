//! The node's store: the blobs it can serve and where their bytes come from.
//!
//! A link holder serves from the **plaintext file + key**: each requested segment is
//! re-sealed on demand (encryption is deterministic given the key and index) and checked
//! against the outboard before it is sent, so a file edited after sharing is never served
//! as the old blob. A node without the key serves from a **ciphertext file**.
//!
//! Shares are remembered in the data directory (`shares/<blob id>/`: `record.json`,
//! `outboard`, and `key`, mode 0600, on the link holder's own machine only), so sharing the
//! same unchanged file again gives the same link without re-reading it.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::UNIX_EPOCH,
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_protocol::{
    BlobId, ContentKey, Link,
    blob::{BlockIndex, BlockRange, Outboard, PARENT_LEN, block_count, block_hash, block_len},
    format::{Metadata, Sealer},
    have::BlockSet,
    superseed::SuperSeed,
};

use tokio::sync::watch;

use crate::seal::{KeyMode, ProgressFn, SealError, seal_file};

/// Where a served blob's bytes come from.
#[derive(Debug)]
enum Origin {
    /// Plaintext file re-sealed on demand. `file` is an open handle for a download in
    /// progress (it survives the rename into place); shares open `path` per request.
    Plain {
        path: PathBuf,
        sealer: Box<Sealer>,
        file: Option<File>,
    },
    /// Ciphertext blob file.
    Cipher { path: PathBuf },
}

/// The blocks of a blob this node holds while it is still downloading it, and a signal each
/// time that grows (the have-protocol server pushes the news to subscribed peers).
#[derive(Debug)]
pub struct Held {
    set: Mutex<BlockSet>,
    changed: watch::Sender<u32>,
}

impl Held {
    /// Starting from `set`.
    pub fn new(set: BlockSet) -> Self {
        let (changed, _) = watch::channel(set.len());
        Self {
            set: Mutex::new(set),
            changed,
        }
    }

    /// Adds block `b` (written to disk, so it can be read back and served).
    pub fn insert(&self, b: u32) {
        let count = {
            let mut set = self.set.lock().expect("held lock poisoned");
            if !set.insert(b) {
                return;
            }
            set.len()
        };
        self.changed.send_replace(count);
    }

    /// A copy of the set.
    pub fn snapshot(&self) -> BlockSet {
        self.set.lock().expect("held lock poisoned").clone()
    }

    /// Whether every block of `ranges` is held.
    pub fn contains_all(&self, ranges: &[BlockRange]) -> bool {
        let set = self.set.lock().expect("held lock poisoned");
        ranges.iter().all(|r| set.contains_range(*r))
    }

    /// Wakes each time blocks are added (the value is the count held).
    pub fn subscribe(&self) -> watch::Receiver<u32> {
        self.changed.subscribe()
    }
}

/// One blob this node can serve: in full (shares, seeded blobs) or the blocks verified so
/// far (a download in progress).
#[derive(Debug)]
pub struct Source {
    id: BlobId,
    blob_len: u64,
    /// Complete for full sources; filled in as blocks verify for a download in progress.
    /// Locked only to look up pairs, never across IO.
    outboard: RwLock<Outboard>,
    /// `None`: every block.
    held: Option<Arc<Held>>,
    origin: Origin,
    /// Blob bytes sent to peers from this source.
    uploaded: AtomicU64,
    /// Frugal serving (seed nodes): who is shown and served which blocks.
    super_seed: Option<Mutex<SuperSeed<PeerId>>>,
    /// Woken when a frugal source served blocks (their peers may be shown more).
    served: tokio::sync::Notify,
    /// Blocks whose stored copy failed its check against the blob id: not served (requests
    /// naming them are answered `corrupt`) until repaired. The count is published.
    bad: Mutex<std::collections::BTreeSet<u32>>,
    corruption: watch::Sender<usize>,
    /// The last peers that asked for blocks (downloaders, likely holding some): a seed node
    /// fetches a bad block back from them.
    requesters: Mutex<std::collections::VecDeque<PeerId>>,
}

/// Peers remembered per source as recent requesters.
const REQUESTERS_KEPT: usize = 16;

/// Why a block could not be produced for serving. Never the requester's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadBlockError {
    /// Reading the backing file failed.
    #[error("reading {path}")]
    Io {
        /// The backing file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The backing file no longer produces the blob (edited or truncated after sharing).
    #[error("{path} changed since it was shared: block {block} no longer matches blob {blob}")]
    Changed {
        /// The backing file.
        path: String,
        /// The blob.
        blob: BlobId,
        /// The block that did not match.
        block: BlockIndex,
    },
    /// The block is past the end of the blob.
    #[error("block {0} is out of range")]
    OutOfRange(BlockIndex),
}

impl Source {
    /// A source serving from a plaintext file with its key.
    ///
    /// # Errors
    /// If the metadata is invalid.
    pub fn plain(
        path: PathBuf,
        key: &ContentKey,
        flags: u16,
        meta: Metadata,
        outboard: Outboard,
    ) -> Result<Self, shoal_protocol::format::MetadataError> {
        Ok(Self {
            id: outboard.id(),
            blob_len: outboard.blob_len(),
            outboard: RwLock::new(outboard),
            held: None,
            origin: Origin::Plain {
                path,
                sealer: Box::new(Sealer::new(key, flags, meta)?),
                file: None,
            },
            uploaded: AtomicU64::new(0),
            super_seed: None,
            served: tokio::sync::Notify::new(),
            bad: Mutex::default(),
            corruption: watch::channel(0).0,
            requesters: Mutex::default(),
        })
    }

    /// A source serving the blocks in `held` of a download in progress, from its open part
    /// file (plaintext at file offsets) and an outboard holding the pairs verified so far.
    ///
    /// # Errors
    /// If the metadata is invalid.
    pub fn downloading(
        file: File,
        path: PathBuf,
        key: &ContentKey,
        flags: u16,
        meta: Metadata,
        outboard: Outboard,
        held: Arc<Held>,
    ) -> Result<Self, shoal_protocol::format::MetadataError> {
        Ok(Self {
            id: outboard.id(),
            blob_len: outboard.blob_len(),
            outboard: RwLock::new(outboard),
            held: Some(held),
            origin: Origin::Plain {
                path,
                sealer: Box::new(Sealer::new(key, flags, meta)?),
                file: Some(file),
            },
            uploaded: AtomicU64::new(0),
            super_seed: None,
            served: tokio::sync::Notify::new(),
            bad: Mutex::default(),
            corruption: watch::channel(0).0,
            requesters: Mutex::default(),
        })
    }

    /// A source serving from a ciphertext blob file.
    pub fn cipher(path: PathBuf, outboard: Outboard) -> Self {
        Self {
            id: outboard.id(),
            blob_len: outboard.blob_len(),
            outboard: RwLock::new(outboard),
            held: None,
            origin: Origin::Cipher { path },
            uploaded: AtomicU64::new(0),
            super_seed: None,
            served: tokio::sync::Notify::new(),
            bad: Mutex::default(),
            corruption: watch::channel(0).0,
            requesters: Mutex::default(),
        }
    }

    /// Serves this (complete) source frugally: each block the swarm lacks goes to one peer
    /// ([`shoal_protocol::superseed`]), revealing at most `window` blocks to a peer at a time.
    #[must_use]
    pub fn frugal(mut self, window: u32) -> Self {
        let total = u32::try_from(block_count(self.blob_len)).expect("MAX_FILE_LEN bounds blocks");
        self.super_seed = Some(Mutex::new(SuperSeed::new(total, window)));
        self
    }

    /// The frugal-serving state, if this source is served frugally.
    pub fn super_seed(&self) -> Option<std::sync::MutexGuard<'_, SuperSeed<PeerId>>> {
        self.super_seed
            .as_ref()
            .map(|m| m.lock().expect("super-seed lock poisoned"))
    }

    /// Marks `block` as failing its check against the blob id: it is no longer served.
    /// Returns whether the source was sound until now (the first bad block: log it, count
    /// it, act on it once).
    pub fn mark_bad(&self, block: u32) -> bool {
        let mut bad = self.bad.lock().expect("bad-block lock poisoned");
        let first = bad.is_empty();
        if bad.insert(block) {
            let n = bad.len();
            drop(bad);
            self.corruption.send_replace(n);
        }
        first
    }

    /// `block` was repaired (fetched again and verified): it is served again.
    pub fn mark_repaired(&self, block: u32) {
        let mut bad = self.bad.lock().expect("bad-block lock poisoned");
        if bad.remove(&block) {
            let n = bad.len();
            drop(bad);
            self.corruption.send_replace(n);
        }
    }

    /// The blocks whose stored copy failed its check, in order.
    pub fn bad_blocks(&self) -> Vec<u32> {
        self.bad
            .lock()
            .expect("bad-block lock poisoned")
            .iter()
            .copied()
            .collect()
    }

    /// The first bad block among `ranges`, if any.
    pub fn first_bad(&self, ranges: &[BlockRange]) -> Option<u32> {
        let bad = self.bad.lock().expect("bad-block lock poisoned");
        ranges
            .iter()
            .find_map(|r| bad.range(r.start..r.end).next().copied())
    }

    /// How many blocks are bad, as it changes.
    pub fn corruption(&self) -> watch::Receiver<usize> {
        self.corruption.subscribe()
    }

    /// Remembers that `peer` asked for blocks of this blob (the last few are kept).
    pub fn note_requester(&self, peer: PeerId) {
        let mut r = self.requesters.lock().expect("requester lock poisoned");
        r.retain(|p| *p != peer);
        if r.len() == REQUESTERS_KEPT {
            r.pop_front();
        }
        r.push_back(peer);
    }

    /// The last peers that asked for blocks, most recent first.
    pub fn requesters(&self) -> Vec<PeerId> {
        let r = self.requesters.lock().expect("requester lock poisoned");
        r.iter().rev().copied().collect()
    }

    /// Wakes the have-map servers of a frugal source after it served blocks.
    pub fn notify_served(&self) {
        self.served.notify_waiters();
    }

    /// Resolves at the next [`Source::notify_served`].
    pub async fn served(&self) {
        self.served.notified().await;
    }

    /// Whether this source is served frugally.
    pub fn is_frugal(&self) -> bool {
        self.super_seed.is_some()
    }

    /// The blob id.
    pub const fn id(&self) -> BlobId {
        self.id
    }

    /// The blob size in bytes.
    pub const fn blob_len(&self) -> u64 {
        self.blob_len
    }

    /// The outboard (read-locked: do not hold the guard across IO).
    pub fn outboard(&self) -> RwLockReadGuard<'_, Outboard> {
        self.outboard.read().expect("outboard lock poisoned")
    }

    /// Stores verified parent pairs `(position, pair)` (a download in progress).
    pub fn set_pairs(&self, pairs: &[(u64, [u8; PARENT_LEN])]) {
        let mut outboard = self.outboard.write().expect("outboard lock poisoned");
        for (position, pair) in pairs {
            outboard.set_pair(*position, pair);
        }
    }

    /// Blob bytes sent to peers from this source so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more sent from this source.
    pub fn add_uploaded(&self, bytes: u64) {
        self.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The blocks held, for a download in progress; `None` when every block is.
    pub fn held(&self) -> Option<&Arc<Held>> {
        self.held.as_ref()
    }

    /// Whether every block of `ranges` can be served.
    pub fn holds(&self, ranges: &[BlockRange]) -> bool {
        self.held.as_ref().is_none_or(|h| h.contains_all(ranges))
    }

    /// Opens the backing file for reading.
    ///
    /// # Errors
    /// If it cannot be opened.
    pub fn open(&self) -> io::Result<File> {
        match &self.origin {
            Origin::Plain {
                file: Some(file), ..
            } => file.try_clone(),
            _ => File::open(self.path()),
        }
    }

    /// Appends block `index` to `out` (which may already hold parent hashes to send before
    /// it), verified against the outboard. Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// If the backing file cannot be read or no longer matches the blob; `out` is then as it
    /// was.
    pub fn read_block(
        &self,
        file: &File,
        index: BlockIndex,
        out: &mut Vec<u8>,
    ) -> Result<(), ReadBlockError> {
        let start = out.len();
        out.resize(start + block_len(self.blob_len, index), 0);
        let read = self.read_block_into(file, index, &mut out[start..]);
        if read.is_err() {
            out.truncate(start);
        }
        read
    }

    /// Reads block `index` into `block`, which must be exactly the block's length (its earlier
    /// contents do not matter), sealing it in place for a plaintext source, and verifies it
    /// against the outboard. No intermediate copies. Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// If `index` is past the end or `block` has the wrong length, or the backing file cannot
    /// be read or no longer matches the blob. `block` then holds unspecified bytes.
    pub fn read_block_into(
        &self,
        file: &File,
        index: BlockIndex,
        block: &mut [u8],
    ) -> Result<(), ReadBlockError> {
        let blob_len = self.blob_len;
        let len = block_len(blob_len, index);
        if len == 0 || block.len() != len {
            return Err(ReadBlockError::OutOfRange(index));
        }
        let path = self.path();
        let io_err = |source| ReadBlockError::Io {
            path: path.display().to_string(),
            source,
        };
        match &self.origin {
            Origin::Cipher { .. } => read_exact_at(file, block, index.offset()).map_err(io_err)?,
            Origin::Plain { sealer, .. } => {
                let seg = u64::from(index.0);
                let (file_off, _) = sealer.layout().file_offset(seg);
                read_exact_at(file, &mut block[sealer.file_range_in(seg)], file_off).map_err(
                    |e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            self.changed(index)
                        } else {
                            io_err(e)
                        }
                    },
                )?;
                sealer.seal_in_place(seg, block);
            }
        }
        let single = block_count(blob_len) == 1;
        let expected = self.outboard().expected_block_hash(index);
        if expected != Some(block_hash(index, block, single)) {
            return Err(self.changed(index));
        }
        Ok(())
    }

    fn changed(&self, block: BlockIndex) -> ReadBlockError {
        ReadBlockError::Changed {
            path: self.path().display().to_string(),
            blob: self.id(),
            block,
        }
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        match &self.origin {
            Origin::Plain { path, .. } | Origin::Cipher { path } => path,
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving a cursor.
///
/// # Errors
/// `UnexpectedEof` if the file is shorter; other IO errors as they come.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Writes all of `buf` at `offset` without moving a cursor.
///
/// # Errors
/// IO errors as they come (e.g. `StorageFull`).
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            done += std::os::windows::fs::FileExt::seek_write(
                file,
                &buf[done..],
                offset + done as u64,
            )?;
        }
        Ok(())
    }
}

/// The blobs a node serves, shared between its serving tasks.
#[derive(Debug, Default)]
pub struct Store {
    data_dir: Option<PathBuf>,
    sources: RwLock<HashMap<BlobId, Arc<Source>>>,
}

/// What a share produced.
#[derive(Debug)]
pub struct Shared {
    /// The link (secret: it carries the key).
    pub link: Link,
    /// The metadata in the header.
    pub metadata: Metadata,
    /// True if an earlier identical share was reused without re-reading the file.
    pub reused: bool,
}

/// Why sharing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The path is not a readable regular file.
    #[error("{path} is not a readable file")]
    NotAFile {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Persisting the share record in the data directory failed.
    #[error("saving the share in {dir}")]
    Persist {
        /// The directory.
        dir: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Record {
    path: PathBuf,
    file_len: u64,
    mtime_ns: u128,
    flags: u16,
    name: String,
    media_type: String,
    blob_len: u64,
}

impl Store {
    /// A store that remembers shares under `data_dir`.
    pub fn open(data_dir: &Path) -> Self {
        Self {
            data_dir: Some(data_dir.to_owned()),
            sources: RwLock::default(),
        }
    }

    /// A store that remembers nothing (tests, demo).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The source for `id`, if this node serves it.
    pub fn get(&self, id: &BlobId) -> Option<Arc<Source>> {
        self.sources
            .read()
            .expect("store lock poisoned")
            .get(id)
            .cloned()
    }

    /// Stops serving `id`; returns the source if there was one.
    pub fn remove(&self, id: &BlobId) -> Option<Arc<Source>> {
        self.sources
            .write()
            .expect("store lock poisoned")
            .remove(id)
    }

    /// Adds a source (replacing any earlier one for the same blob).
    pub fn insert(&self, source: Source) -> Arc<Source> {
        self.insert_arc(Arc::new(source))
    }

    /// Adds a shared source (replacing any earlier one for the same blob).
    pub fn insert_arc(&self, source: Arc<Source>) -> Arc<Source> {
        self.sources
            .write()
            .expect("store lock poisoned")
            .insert(source.id(), source.clone());
        source
    }

    /// Every source served, in no particular order.
    pub fn sources(&self) -> Vec<Arc<Source>> {
        self.sources
            .read()
            .expect("store lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Number of blobs served.
    pub fn len(&self) -> usize {
        self.sources.read().expect("store lock poisoned").len()
    }

    /// Whether the store serves nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shares a plaintext file: seals it (or reuses an identical earlier share of the same
    /// unchanged file), starts serving it, and returns its link. Blocking.
    ///
    /// # Errors
    /// If the file cannot be read, its name cannot be represented, or the share cannot be
    /// saved.
    pub fn share_file(
        &self,
        path: &Path,
        media_type: &str,
        mode: &KeyMode,
        os_random: [u8; 32],
        progress: ProgressFn<'_>,
    ) -> Result<Shared, ShareError> {
        let not_file = |source| ShareError::NotAFile {
            path: path.display().to_string(),
            source,
        };
        let path = fs::canonicalize(path).map_err(not_file)?;
        let md = fs::metadata(&path).map_err(not_file)?;
        if !md.is_file() {
            return Err(not_file(io::Error::other("not a regular file")));
        }
        let mtime_ns = mtime_ns(&md);
        let metadata = Metadata {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file_len: md.len(),
            media_type: media_type.to_owned(),
        };
        if matches!(mode, KeyMode::Random)
            && let Some(found) = self.find_share(&path, md.len(), mtime_ns, &metadata)
        {
            return Ok(found);
        }
        let sealed = seal_file(&path, metadata.clone(), mode, os_random, None, progress)?;
        let source = Source::plain(
            path.clone(),
            &sealed.key,
            sealed.flags,
            metadata.clone(),
            sealed.outboard.clone(),
        )
        .map_err(SealError::from)?;
        let mut link = Link::new(source.id(), sealed.key.clone());
        link.blob_len = Some(sealed.outboard.blob_len());
        self.remember(
            path,
            mtime_ns,
            sealed.flags,
            &metadata,
            &sealed.key,
            &sealed.outboard,
        )?;
        self.insert(source);
        Ok(Shared {
            link,
            metadata,
            reused: false,
        })
    }

    /// Serves a complete, verified file that was downloaded (plaintext at `path`, opened with
    /// `key`), and remembers it in the data directory like a share so a later `shoal seed`
    /// serves it too. Replaces a download-in-progress source for the same blob.
    ///
    /// # Errors
    /// If the file cannot be read or the record cannot be saved.
    pub fn add_downloaded(
        &self,
        path: &Path,
        key: &ContentKey,
        flags: u16,
        metadata: Metadata,
        outboard: Outboard,
    ) -> Result<Arc<Source>, ShareError> {
        let not_file = |source| ShareError::NotAFile {
            path: path.display().to_string(),
            source,
        };
        let path = fs::canonicalize(path).map_err(not_file)?;
        let md = fs::metadata(&path).map_err(not_file)?;
        let mtime_ns = mtime_ns(&md);
        self.remember(path.clone(), mtime_ns, flags, &metadata, key, &outboard)?;
        let source =
            Source::plain(path, key, flags, metadata, outboard).map_err(SealError::from)?;
        Ok(self.insert(source))
    }

    /// Saves the share record, key and outboard in the data directory (if there is one), so
    /// the blob is served again after a restart.
    fn remember(
        &self,
        path: PathBuf,
        mtime_ns: u128,
        flags: u16,
        metadata: &Metadata,
        key: &ContentKey,
        outboard: &Outboard,
    ) -> Result<(), ShareError> {
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        let record = Record {
            path,
            file_len: metadata.file_len,
            mtime_ns,
            flags,
            name: metadata.name.clone(),
            media_type: metadata.media_type.clone(),
            blob_len: outboard.blob_len(),
        };
        save_share(dir, &record, key, outboard).map_err(|source| ShareError::Persist {
            dir: dir.display().to_string(),
            source,
        })
    }

    fn find_share(&self, path: &Path, len: u64, mtime_ns: u128, meta: &Metadata) -> Option<Shared> {
        let dir = self.data_dir.as_ref()?.join("shares");
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let Ok(saved) = SavedShare::load(&entry.path()) else {
                continue;
            };
            let r = &saved.record;
            if r.path != path
                || r.file_len != len
                || r.mtime_ns != mtime_ns
                || r.media_type != meta.media_type
            {
                continue;
            }
            let Ok(source) = Source::plain(
                path.to_owned(),
                &saved.key,
                r.flags,
                meta.clone(),
                saved.outboard,
            ) else {
                continue;
            };
            // The outboard is checked against the id block by block when serving; a stale
            // record (file edited within the same mtime) is caught there.
            let mut link = Link::new(saved.id, saved.key);
            link.blob_len = Some(r.blob_len);
            self.insert(source);
            return Some(Shared {
                link,
                metadata: meta.clone(),
                reused: true,
            });
        }
        None
    }

    /// Serves every blob remembered in the data directory (shares and downloads kept with
    /// `get --seed`) whose file is unchanged since (same size and modification time).
    /// Returns what is served and what was skipped, with the reason.
    pub fn load_saved(&self) -> Loaded {
        let mut loaded = Loaded::default();
        let Some(dir) = self.data_dir.as_ref().map(|d| d.join("shares")) else {
            return loaded;
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return loaded;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let saved = match SavedShare::load(&path) {
                Ok(s) => s,
                Err(why) => {
                    loaded.skipped.push((path, why));
                    continue;
                }
            };
            let r = &saved.record;
            let current = fs::metadata(&r.path)
                .ok()
                .map(|md| (md.len(), mtime_ns(&md)));
            if current != Some((r.file_len, r.mtime_ns)) {
                loaded.skipped.push((
                    r.path.clone(),
                    "missing or changed since it was shared; share it again".into(),
                ));
                continue;
            }
            let meta = Metadata {
                name: r.name.clone(),
                file_len: r.file_len,
                media_type: r.media_type.clone(),
            };
            match Source::plain(r.path.clone(), &saved.key, r.flags, meta, saved.outboard) {
                Ok(source) => {
                    let source = self.insert(source);
                    loaded.served.push(Served {
                        id: source.id(),
                        path: r.path.clone(),
                        name: r.name.clone(),
                        blob_len: r.blob_len,
                    });
                }
                Err(e) => loaded.skipped.push((r.path.clone(), e.to_string())),
            }
        }
        loaded.served.sort_by(|a, b| a.path.cmp(&b.path));
        loaded
    }
}

/// What [`Store::load_saved`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Blobs now served.
    pub served: Vec<Served>,
    /// Records or files skipped, and why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A blob served from a remembered file.
#[derive(Debug, Clone)]
pub struct Served {
    /// The blob.
    pub id: BlobId,
    /// The plaintext file.
    pub path: PathBuf,
    /// The name in its header.
    pub name: String,
    /// Blob size in bytes.
    pub blob_len: u64,
}

/// A share record with its key and outboard, read back from `shares/<id>/`.
struct SavedShare {
    id: BlobId,
    record: Record,
    key: ContentKey,
    outboard: Outboard,
}

impl SavedShare {
    fn load(dir: &Path) -> Result<Self, String> {
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<BlobId>().ok())
            .ok_or("not a share directory")?;
        let record = fs::read(dir.join("record.json")).map_err(|e| e.to_string())?;
        let record: Record =
            serde_json::from_slice(&record).map_err(|e| format!("bad record.json: {e}"))?;
        let key = fs::read(dir.join("key")).map_err(|e| e.to_string())?;
        let key = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| "bad key file")?;
        let pairs = fs::read(dir.join("outboard")).map_err(|e| e.to_string())?;
        let outboard =
            Outboard::from_parts(id, record.blob_len, pairs).map_err(|e| e.to_string())?;
        Ok(Self {
            id,
            record,
            key: ContentKey::from_bytes(key),
            outboard,
        })
    }
}

/// A file's modification time in nanoseconds since the epoch (0 if unknown): with the size,
/// how a remembered share tells that its file is unchanged.
fn mtime_ns(md: &fs::Metadata) -> u128 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn save_share(
    data_dir: &Path,
    record: &Record,
    key: &ContentKey,
    outboard: &Outboard,
) -> io::Result<()> {
    let dir = data_dir.join("shares").join(outboard.id().to_string());
    fs::create_dir_all(&dir)?;
    write_atomic(&dir.join("outboard"), outboard.as_bytes(), false)?;
    write_atomic(&dir.join("key"), key.as_bytes(), true)?;
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    // The record goes last: it is what makes the share visible to `find_share`.
    write_atomic(&dir.join("record.json"), &json, false)
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename, so a crash leaves either
/// the old or the new content. `private` files get mode 0600 on Unix.
///
/// # Errors
/// IO errors as they come.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use io::Write;
    // A unique temporary name: two writers of the same file must not share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        // A full disk fails every try: leave no `.tmp` file per try behind.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        // Make the rename durable; not supported on every platform, so best effort.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod write_atomic_tests {
    use super::*;

    /// Issue 11: on a full disk every failed try left `<name>.<pid>.<n>.tmp` behind.
    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a directory that is not empty.
        let target = dir.path().join("state");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(write_atomic(&target, b"data", true).is_err());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("state")]);
        // And a write that works leaves only the file.
        let ok = dir.path().join("ok");
        write_atomic(&ok, b"data", false).unwrap();
        assert_eq!(fs::read(&ok).unwrap(), b"data");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_source_serves_verified_blocks_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("movie.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let store = Store::open(&dir.path().join("data"));
        let shared = store
            .share_file(&path, "", &KeyMode::Random, [3; 32], &|_| {})
            .unwrap();
        assert!(!shared.reused);
        let src = store.get(&shared.link.id).unwrap();
        let f = File::open(&path).unwrap();
        let mut out = Vec::new();
        for i in 0..block_count(src.outboard().blob_len()) as u32 {
            out.clear();
            src.read_block(&f, BlockIndex(i), &mut out).unwrap();
            // A recycled buffer's old bytes do not leak into the block (every byte of the
            // segment is written: header part, file bytes, tag).
            let mut dirty = vec![0xA5; out.len()];
            src.read_block_into(&f, BlockIndex(i), &mut dirty).unwrap();
            assert_eq!(dirty, out, "block {i}");
            let mut wrong = vec![0; out.len() + 1];
            assert!(matches!(
                src.read_block_into(&f, BlockIndex(i), &mut wrong),
                Err(ReadBlockError::OutOfRange(_))
            ));
        }
        // Same file, unchanged: the share (and link) is reused without re-sealing.
        let again = Store::open(&dir.path().join("data"));
        let shared2 = again
            .share_file(&path, "", &KeyMode::Random, [4; 32], &|_| {})
            .unwrap();
        assert!(shared2.reused);
        assert_eq!(shared2.link, shared.link);
        // Edit the file in place: serving refuses the changed block.
        let mut edited = data.clone();
        edited[100_000] ^= 1;
        fs::write(&path, &edited).unwrap();
        let f = File::open(&path).unwrap();
        out.clear();
        let err = src.read_block(&f, BlockIndex(1), &mut out).unwrap_err();
        assert!(matches!(err, ReadBlockError::Changed { .. }), "{err}");
        assert!(out.is_empty(), "a refused block leaves nothing behind");
        src.read_block(&f, BlockIndex(0), &mut out).unwrap();
    }
}
