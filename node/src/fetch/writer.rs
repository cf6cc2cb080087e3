//! The writer of a download: decrypts verified blocks, writes them at their file offsets in
//! the part file, keeps the pairs that make them servable, and checkpoints. Runs on a
//! blocking thread, fed by the download loop through a bounded queue.
//!
//! Order of writes: block bytes → `fdatasync(part)` → state file written atomically. So the
//! state never claims a block that is not on disk. The sync runs on a helper thread while
//! writing continues; a checkpoint records only the blocks written before its sync began.
//! After a crash, at most the blocks of the last two checkpoint intervals
//! ([`CHECKPOINT_BLOCKS`] blocks or [`CHECKPOINT_INTERVAL`] each) are fetched again.

use std::{
    fs::File,
    io,
    path::Path,
    time::{Duration, Instant},
};

use shoal_protocol::{blob::PARENT_LEN, format::Opener};
use tokio::sync::{mpsc, watch};

use super::{
    error::FetchError,
    options::Progress,
    part::{PartFiles, disk},
    serving::Serving,
};
use crate::{
    buffers,
    partial::State,
    store::{Held, Source, write_all_at},
    wire::Verified,
};

/// Blocks written between durable checkpoints of the have-map.
pub const CHECKPOINT_BLOCKS: u64 = 256;
/// Longest time between checkpoints while blocks arrive.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Progress is published every this many blocks (1 MiB).
const PROGRESS_EVERY: u64 = 16;
/// Verified blocks queued for the writer (64 KiB each): bounds memory.
const WRITE_QUEUE: usize = 32;

/// The running writer; it ends with the state as last saved, or the first error.
pub(super) type Writer = tokio::task::JoinHandle<Result<State, FetchError>>;

/// Starts the writer on a blocking thread: it writes into the part file of `files` (through
/// a handle of its own), keeps pairs in `obao` (the sparse outboard file) and in `serving`'s source,
/// marks written blocks in `serving`'s have-map, and checkpoints `state`. Returns the queue
/// to send it verified blocks on; it ends when the queue closes, with the state as last
/// saved.
///
/// # Errors
/// [`FetchError::Disk`] if the part file cannot be opened again.
pub(super) fn spawn(
    opener: Opener,
    files: &PartFiles,
    obao: File,
    serving: &Serving,
    state: State,
    progress: &watch::Sender<Progress>,
) -> Result<(mpsc::Sender<Verified>, Writer), FetchError> {
    let part = files.part.try_clone().map_err(disk(&files.part_path))?;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let part_path = files.part_path.clone();
    let state_path = files.state_path.clone();
    let obao_path = files.obao_path.clone();
    let progress = progress.clone();
    let held = serving.held.clone();
    let source = serving.source.clone();
    let handle = tokio::task::spawn_blocking(move || {
        write_blocks(
            rx,
            &opener,
            &part,
            &part_path,
            Sparse {
                file: &obao,
                path: &obao_path,
                source: &source,
                held: &held,
            },
            &state_path,
            state,
            &progress,
        )
    });
    Ok((tx, handle))
}

/// Where the writer keeps what makes blocks servable to others: the sparse outboard file and
/// in-memory outboard (pairs), and the have-map that peers subscribe to.
struct Sparse<'a> {
    file: &'a File,
    path: &'a Path,
    source: &'a Source,
    held: &'a Held,
}

impl Sparse<'_> {
    /// Writes the pairs at `dirty` positions from memory to the sparse outboard file, in
    /// runs (positions less than 64 pairs apart go in one write: memory holds every pair the
    /// file does, so the pairs in between are rewritten unchanged), and clears `dirty`.
    fn flush_pairs(&self, dirty: &mut Vec<u64>) -> io::Result<()> {
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_unstable();
        dirty.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &p in dirty.iter() {
            match runs.last_mut() {
                Some((_, end)) if p < *end + 64 => *end = p + 1,
                _ => runs.push((p, p + 1)),
            }
        }
        dirty.clear();
        let pair = PARENT_LEN as u64;
        for (start, end) in runs {
            let bytes = {
                let outboard = self.source.outboard();
                let from = usize::try_from(start * pair).expect("outboard fits in memory");
                let to = usize::try_from(end * pair).expect("outboard fits in memory");
                outboard.as_bytes()[from..to].to_vec()
            };
            write_all_at(self.file, &bytes, start * pair)?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)] // one call site; grouping would only rename them
/// The writer: decrypts verified blocks, writes them at their file offsets, and checkpoints
/// (sync data, then save the have-map). Runs on a blocking thread.
fn write_blocks(
    mut rx: mpsc::Receiver<Verified>,
    opener: &Opener,
    part: &File,
    part_path: &Path,
    sparse: Sparse<'_>,
    state_path: &Path,
    mut state: State,
    progress: &watch::Sender<Progress>,
) -> Result<State, FetchError> {
    // Blocks written since the last checkpoint: durable only after the next sync.
    let mut pending: Vec<u64> = Vec::new();
    // A sync running on a helper thread, and the blocks written before it began: they are
    // recorded once it completes. Writing goes on meanwhile, so the pipeline never stalls
    // on `fdatasync`, and the state still only claims blocks that a finished sync covered.
    let mut syncing: Option<(std::thread::JoinHandle<io::Result<()>>, Vec<u64>)> = None;
    let mut last_checkpoint = Instant::now();
    let finish_sync =
        |state: &mut State,
         syncing: &mut Option<(std::thread::JoinHandle<io::Result<()>>, Vec<u64>)>|
         -> Result<(), FetchError> {
            let Some((handle, blocks)) = syncing.take() else {
                return Ok(());
            };
            handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
                .map_err(disk(part_path))?;
            for p in blocks {
                state.set(p);
            }
            state.save().map_err(disk(state_path))
        };
    let checkpoint = |state: &mut State, pending: &mut Vec<u64>| -> Result<(), FetchError> {
        part.sync_data().map_err(disk(part_path))?;
        sparse.file.sync_data().map_err(disk(sparse.path))?;
        for p in pending.drain(..) {
            state.set(p);
        }
        state.save().map_err(disk(state_path))
    };
    let mut result = Ok(());
    let mut unpublished = 0u64;
    // Positions of pairs learnt since the last flush to the sparse outboard file.
    let mut dirty: Vec<u64> = Vec::new();
    while let Some(Verified {
        index,
        mut data,
        parents,
    }) = rx.blocking_recv()
    {
        let i = u64::from(index.0);
        if state.has(i)
            || pending.contains(&i)
            || syncing.as_ref().is_some_and(|(_, b)| b.contains(&i))
        {
            continue;
        }
        // The pairs above the block first: it is announced as held only once it can be
        // served. They reach the sparse outboard file before the next sync (`flush_pairs`).
        if !parents.is_empty() {
            sparse.source.set_pairs(&parents);
            dirty.extend(parents.iter().map(|(position, _)| *position));
        }
        let Ok(range) = opener.open_segment(i, &mut data) else {
            result = Err(FetchError::Undecryptable {
                id: state.id,
                block: index,
            });
            break;
        };
        let (file_off, _) = opener.layout().file_offset(i);
        let written = write_all_at(part, &data[range], file_off);
        buffers::put(data);
        if let Err(e) = written {
            result = Err(disk(part_path)(e));
            break;
        }
        pending.push(i);
        sparse.held.insert(index.0);
        if pending.len() as u64 >= CHECKPOINT_BLOCKS
            || last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            // The previous sync had a whole interval to finish; record it, start the next.
            if let Err(e) = finish_sync(&mut state, &mut syncing) {
                result = Err(e);
                break;
            }
            if let Err(e) = sparse.flush_pairs(&mut dirty) {
                result = Err(disk(sparse.path)(e));
                break;
            }
            match (part.try_clone(), sparse.file.try_clone()) {
                (Ok(f), Ok(ob)) => {
                    syncing = Some((
                        std::thread::spawn(move || {
                            f.sync_data()?;
                            ob.sync_data()
                        }),
                        std::mem::take(&mut pending),
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    result = Err(disk(part_path)(e));
                    break;
                }
            }
            last_checkpoint = Instant::now();
        }
        // Publish every PROGRESS_EVERY blocks, not every block: each update wakes the
        // watcher on the network thread.
        unpublished += 1;
        if unpublished == PROGRESS_EVERY {
            progress.send_modify(|p| p.done_blocks += unpublished);
            unpublished = 0;
        }
    }
    progress.send_modify(|p| p.done_blocks += unpublished);
    // Keep every block that was written before a failure: nothing verified is lost. If this
    // checkpoint fails too (the disk is really full), the first error is the one to report.
    let saved = finish_sync(&mut state, &mut syncing)
        .and_then(|()| sparse.flush_pairs(&mut dirty).map_err(disk(sparse.path)))
        .and_then(|()| checkpoint(&mut state, &mut pending));
    result?;
    saved?;
    Ok(state)
}
