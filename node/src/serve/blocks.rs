//! Serving `/shoal/blob/1`: block requests answered with verified ranges, under the
//! upload-slot rule ([`shoal_protocol::slots`]) and the upload cap.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use shoal_protocol::{
    BlockIndex,
    blob::{BlockRange, EncodeItem, PARENT_LEN, RangeEncoder, block_count, block_len},
    format::SEGMENT_LEN,
    slots::{Decision, SlotId, Slots},
    wire::{BlobRequest, MAX_SERVE_BLOCKS, ResponseHeader},
};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

#[cfg(feature = "test-utils")]
use super::count_down;
use super::{Service, next_stream};
use crate::{
    buffers,
    rate::RateLimiter,
    store::{ReadBlockError, Source},
};

/// Encoded chunks buffered between the blocking block reader and the stream writer.
const SERVE_PIPELINE: usize = 4;
/// Bytes of a recycled chunk buffer: a block and the parent pairs sent before it (16 pairs
/// cover a tree of 2^16 blocks, 4 GiB; deeper trees grow the buffer).
const CHUNK_LEN: usize = SEGMENT_LEN + 16 * PARENT_LEN;

/// An upload slot held by a request being served; released however the request ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots<PeerId>>>,
    slot: SlotId,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.handle_done(Instant::now(), self.slot);
        }
    }
}

/// Takes `/shoal/blob/1` requests until the node stops: each one gets an upload slot
/// ([`shoal_protocol::slots`]) and is served on a task of its own, or is answered `busy` at
/// once.
pub(super) async fn serve_loop(inner: Arc<Service>, mut incoming: libp2p_stream::IncomingStreams) {
    let slots = Arc::new(Mutex::new(Slots::new(inner.config.upload_slots())));
    let limiter = inner
        .config
        .upload_cap()
        .map(|r| Arc::new(RateLimiter::new(r)));
    while let Some((peer, mut stream)) = next_stream(&inner, &mut incoming).await {
        let inner = inner.clone();
        let limiter = limiter.clone();
        let decision = slots
            .lock()
            .expect("slot lock poisoned")
            .handle_request(Instant::now(), peer);
        match decision {
            Decision::Serve(slot) => {
                let permit = SlotGuard {
                    slots: slots.clone(),
                    slot,
                };
                tokio::spawn(async move {
                    let res = tokio::select! {
                        () = inner.shutdown.cancelled() => Ok(()),
                        res = serve(&inner, peer, limiter.as_deref(), &mut stream) => res,
                    };
                    if let Err(e) = res {
                        debug!(peer = %peer, error = %e, "request ended early");
                    }
                    drop(permit);
                });
            }
            Decision::Busy => {
                // Every slot (or this peer's share) is busy: say so at once so the peer goes
                // elsewhere rather than queueing behind others.
                inner.stats.busy_answers.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(inner.config.request_timeout, async {
                        stream.write_all(&ResponseHeader::Busy.encode()).await?;
                        stream.close().await
                    })
                    .await;
                });
            }
        }
    }
}

/// Serves one request: reads it, checks it against the store (and a frugal source's
/// reveals), and streams the verified range.
async fn serve(
    inner: &Service,
    peer: PeerId,
    limiter: Option<&RateLimiter>,
    stream: &mut Stream,
) -> std::io::Result<()> {
    let timeout = inner.config.request_timeout;
    let req = tokio::time::timeout(timeout, read_request(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received in time")
        })??;
    let Ok(req) = req else {
        stream
            .write_all(&ResponseHeader::BadRequest.encode())
            .await?;
        return stream.close().await;
    };
    let Some(source) = inner.store.get(&req.id) else {
        stream.write_all(&ResponseHeader::NotFound.encode()).await?;
        return stream.close().await;
    };
    let blob_len = source.blob_len();
    let blocks = block_count(blob_len);
    if req.check_within(blocks).is_err() || req.block_count() > MAX_SERVE_BLOCKS {
        stream
            .write_all(&ResponseHeader::BadRequest.encode())
            .await?;
        return stream.close().await;
    }
    #[cfg(feature = "test-utils")]
    if req.block_count() > 2 && count_down(&inner.config.unanswered_requests) {
        return Ok(()); // dropped unanswered
    }
    let frugal_ok = source
        .super_seed()
        .is_none_or(|mut ss| ss.handle_request(std::time::Instant::now(), &peer, &req.ranges));
    if !source.holds(&req.ranges) || !frugal_ok {
        stream.write_all(&ResponseHeader::Missing.encode()).await?;
        return stream.close().await;
    }
    // A block of ours that failed its check is not served: say which (protocol §6.2).
    if let Some(block) = source.first_bad(&req.ranges) {
        stream
            .write_all(&ResponseHeader::Corrupt { block }.encode())
            .await?;
        return stream.close().await;
    }
    source.note_requester(peer);
    debug!(blob = %req.id, blocks = req.block_count(), "serving");
    let ranges = req.ranges.clone();
    let relayed = inner
        .reach
        .lock()
        .expect("reach lock poisoned")
        .only_relayed(&peer);
    let served = stream_range(inner, source.clone(), req, limiter, relayed, stream).await?;
    if served && let Some(mut ss) = source.super_seed() {
        ss.handle_served(std::time::Instant::now(), &peer, &ranges);
        drop(ss);
        source.notify_served();
    }
    if served {
        inner.stats.requests_served.fetch_add(1, Ordering::Relaxed);
    }
    stream.close().await
}

/// Streams the verified range of `req` from `source`: `Ok(true)` when all of it went out,
/// `Ok(false)` when a stored block failed its check (the answer is then `corrupt`, or, if
/// blocks went out already, the stream ends early after the good ones).
async fn stream_range(
    inner: &Service,
    source: Arc<Source>,
    req: BlobRequest,
    limiter: Option<&RateLimiter>,
    relayed: bool,
    stream: &mut Stream,
) -> std::io::Result<bool> {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(SERVE_PIPELINE);
    #[cfg(feature = "test-utils")]
    let corrupt = inner.config.corrupt_uploads;
    #[cfg(not(feature = "test-utils"))]
    let corrupt = false;
    let header = ResponseHeader::Ok {
        blob_len: source.blob_len(),
    }
    .encode();
    let counted = source.clone();
    let producer =
        tokio::task::spawn_blocking(move || produce(&source, &req.ranges, header, corrupt, &tx));
    let mut sent_any = false;
    while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let Some(&CorruptBlock { block, first }) =
                    e.get_ref().and_then(|i| i.downcast_ref())
                else {
                    return Err(e);
                };
                if first {
                    // Once per blob: an operator must act (a seed node repairs it itself).
                    error!(
                        blob = %counted.id(),
                        block,
                        path = %counted.path().display(),
                        "stored data fails its check against the blob id; not serving the bad block"
                    );
                    inner.stats.corrupt_blobs.fetch_add(1, Ordering::Relaxed);
                }
                if !sent_any {
                    stream
                        .write_all(&ResponseHeader::Corrupt { block }.encode())
                        .await?;
                }
                let _ = producer.await;
                return Ok(false);
            }
        };
        if let Some(l) = limiter {
            l.acquire(chunk.len() as u64).await;
        }
        stream.write_all(&chunk).await?;
        sent_any = true;
        inner
            .stats
            .uploaded_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if relayed {
            inner
                .stats
                .relayed_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        counted.add_uploaded(chunk.len() as u64);
        buffers::put(chunk);
    }
    producer.await.map_err(std::io::Error::other)?;
    Ok(true)
}

/// A stored block that failed its check against the blob id, carried as the inner error of
/// an `io::Error` from [`produce`] to the stream writer. `first`: the source's first bad
/// block (the source was sound until now).
#[derive(Debug, thiserror::Error)]
#[error("stored block {block} fails its check against the blob id")]
pub(crate) struct CorruptBlock {
    pub(crate) block: u32,
    pub(crate) first: bool,
}

/// One step of a range response, planned up front so the outboard lock (a download in
/// progress adds pairs to it) is held only while planning, never across IO.
enum Step {
    Parent([u8; PARENT_LEN]),
    Block(BlockIndex),
}

/// Reads the blocks of `ranges` from storage on a blocking thread, encoded for the wire
/// after `header` (a `/shoal/blob/1` response, or a push's body).
pub(crate) fn produce(
    source: &Source,
    ranges: &[BlockRange],
    header: Vec<u8>,
    corrupt: bool,
    tx: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let file = match source.open() {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %source.path().display(), error = %e, "cannot open shared file");
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let plan: Vec<Step> = RangeEncoder::new(&source.outboard(), ranges)
        .map(|item| match item {
            EncodeItem::Parent(pair) => {
                Step::Parent(pair.try_into().expect("pairs are PARENT_LEN bytes"))
            }
            EncodeItem::Block { index, .. } => Step::Block(index),
        })
        .collect();
    // One buffer per chunk sent: parents, then the block read and sealed in place. The status
    // header goes in front of the first chunk (one frame instead of two). Buffers come from
    // the pool the send loops return them to, so a block is not zero-filled before it is read.
    let mut chunk = buffers::take(CHUNK_LEN);
    chunk[..header.len()].copy_from_slice(&header);
    let mut used = header.len();
    for step in plan {
        match step {
            Step::Parent(pair) => {
                grow(&mut chunk, used + PARENT_LEN);
                chunk[used..used + PARENT_LEN].copy_from_slice(&pair);
                used += PARENT_LEN;
            }
            Step::Block(index) => {
                let len = block_len(source.blob_len(), index);
                grow(&mut chunk, used + len);
                let block = &mut chunk[used..used + len];
                match source.read_block_into(&file, index, block) {
                    Ok(()) => {}
                    Err(ReadBlockError::Changed { .. }) => {
                        // Never sent; from now on requests naming it are answered `corrupt`.
                        let first = source.mark_bad(index.0);
                        let e = CorruptBlock {
                            block: index.0,
                            first,
                        };
                        let _ = tx.blocking_send(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        )));
                        return;
                    }
                    Err(e) => {
                        // Logged here (an operator must act); the peer just sees the stream
                        // end and goes elsewhere.
                        warn!(blob = %source.id(), block = %index, error = %e, "cannot serve block");
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
                if corrupt {
                    block[len / 2] ^= 0x01;
                }
                chunk.truncate(used + len);
                let next = buffers::take(CHUNK_LEN);
                if tx
                    .blocking_send(Ok(std::mem::replace(&mut chunk, next)))
                    .is_err()
                {
                    return; // the requester went away
                }
                used = 0;
            }
        }
    }
    buffers::put(chunk);
}

/// Makes `chunk` at least `len` bytes long (a response's first chunk carries a header and
/// a deep tree more parents than [`CHUNK_LEN`] has room for).
fn grow(chunk: &mut Vec<u8>, len: usize) {
    if chunk.len() < len {
        chunk.resize(len, 0);
    }
}

async fn read_request(
    stream: &mut Stream,
) -> std::io::Result<Result<BlobRequest, shoal_protocol::wire::DecodeRequestError>> {
    let mut prefix = [0u8; 35];
    stream.read_exact(&mut prefix).await?;
    let len = match BlobRequest::encoded_len(&prefix) {
        Ok(len) => len,
        Err(e) => return Ok(Err(e)),
    };
    let mut buf = prefix.to_vec();
    buf.resize(len, 0);
    stream.read_exact(&mut buf[35..]).await?;
    Ok(BlobRequest::decode(&buf))
}
