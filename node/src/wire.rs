//! The asking side of Shoal's stream protocols over libp2p: `/shoal/blob/1` block requests,
//! whose answers are verified block by block against the blob id as they are read, and
//! `/shoal/have/1` have-map subscriptions. Each call opens one stream; every step of it has
//! the [`Client`]'s timeout. The answering side is [`crate::serve`].
//!
//! Downloads ([`crate::fetch`]) and frugal seed nodes (reading their peers' have-maps) use
//! it; it knows nothing of either.

use std::{io, time::Duration};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use shoal_protocol::{
    BlobId,
    blob::{BlockIndex, BlockRange, Need, PARENT_LEN, RangeDecoder, VerifyError},
    have::{HAVE_PROTOCOL, HaveMsg, Subscribe},
    wire::{BLOB_PROTOCOL, BlobRequest, ResponseHeader},
};

use crate::buffers;

/// `/shoal/blob/1`.
pub(crate) fn blob_protocol() -> StreamProtocol {
    StreamProtocol::new(BLOB_PROTOCOL)
}

/// `/shoal/have/1`.
pub(crate) fn have_protocol() -> StreamProtocol {
    StreamProtocol::new(HAVE_PROTOCOL)
}

/// One request's failure, classified: a lying peer is banned; a local or transient failure
/// never bans.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("sent data that does not match the blob id ({0})")]
    Lied(String),
    #[error("answered {0:?}")]
    Status(ResponseHeader),
    /// The answer names another blob size than the one the request was made for: the peer
    /// lies, unless the size asked for came from a damaged link (the caller can tell by
    /// verifying the claim).
    #[error("claimed the blob is {claimed} bytes, not {expected}")]
    WrongSize { claimed: u64, expected: u64 },
    /// The stream was reset before the request was written, or ended before the status byte
    /// (a block request) or the first frame (a have-map subscription). libp2p-stream drops
    /// an inbound stream when the node has not yet taken the previous one
    /// (libp2p/rust-libp2p#5651), so a loaded peer does this to some of several streams
    /// opened together.
    #[error(
        "closed the request without answering (a loaded peer drops requests it cannot take yet)"
    )]
    Unanswered,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("stopped")]
    Stopped,
}

/// A parent pair verified on the way to a block, and its position in the outboard.
pub(crate) type Pair = (u64, [u8; PARENT_LEN]);

/// A block that verified against the blob id.
pub(crate) struct Verified {
    pub(crate) index: BlockIndex,
    pub(crate) data: Vec<u8>,
    /// The pairs verified since the previous block of the response: kept (sparse outboard)
    /// so this node can serve the block to others.
    pub(crate) parents: Vec<Pair>,
}

/// Opens streams to peers on a node's connections. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    control: libp2p_stream::Control,
    /// Limit of each step: opening, writing the request, each read of the answer.
    timeout: Duration,
}

impl Client {
    pub(crate) const fn new(control: libp2p_stream::Control, timeout: Duration) -> Self {
        Self { control, timeout }
    }

    /// Opens a stream of `protocol` to `peer` and writes `message` (a request or a
    /// subscription).
    async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        message: &[u8],
    ) -> Result<Stream, RequestError> {
        let mut control = self.control.clone();
        let mut stream = tokio::time::timeout(self.timeout, control.open_stream(peer, protocol))
            .await
            .map_err(|_| RequestError::Timeout)?
            .map_err(|e| RequestError::Io(io::Error::other(e.to_string())))?;
        match tokio::time::timeout(self.timeout, stream.write_all(message)).await {
            Err(_) => Err(RequestError::Timeout),
            // The peer reset the stream before reading it: dropped unanswered.
            Ok(Err(_)) => Err(RequestError::Unanswered),
            Ok(Ok(())) => Ok(stream),
        }
    }

    async fn read_exact(&self, stream: &mut Stream, buf: &mut [u8]) -> Result<(), RequestError> {
        tokio::time::timeout(self.timeout, stream.read_exact(buf))
            .await
            .map_err(|_| RequestError::Timeout)?
            .map_err(RequestError::Io)
    }

    /// Reads the response status; returns the blob size on `Ok`.
    async fn read_status(
        &self,
        stream: &mut Stream,
        expected_len: Option<u64>,
    ) -> Result<u64, RequestError> {
        let mut status = [0u8; 1];
        match self.read_exact(stream, &mut status).await {
            Err(RequestError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(RequestError::Unanswered);
            }
            r => r?,
        }
        let mut trailing = [0u8; 8];
        let trailing = &mut trailing[..ResponseHeader::trailing_len(status[0])];
        self.read_exact(stream, trailing).await?;
        match ResponseHeader::decode(status[0], trailing) {
            Err(e) => Err(RequestError::Lied(e.to_string())),
            Ok(ResponseHeader::Ok { blob_len }) => match expected_len {
                Some(expected) if expected != blob_len => Err(RequestError::WrongSize {
                    claimed: blob_len,
                    expected,
                }),
                _ => Ok(blob_len),
            },
            Ok(other) => Err(RequestError::Status(other)),
        }
    }

    /// Asks `peer` for block 0 of blob `id` and returns the size its answer claims, without
    /// reading the block. The claim is not verified: verify it by fetching the last block
    /// at that size.
    pub(crate) async fn claimed_len(&self, peer: PeerId, id: BlobId) -> Result<u64, RequestError> {
        let req = BlobRequest::new(id, [0]).expect("one range");
        let mut stream = self.open(peer, blob_protocol(), &req.encode()).await?;
        let claimed = self.read_status(&mut stream, None).await?;
        let _ = stream.close().await;
        Ok(claimed)
    }

    /// Sends one request for a blob of `blob_len` bytes and verifies the answer block by
    /// block, handing each verified block to `on_block` before reading the next.
    pub(crate) async fn request<F, Fut>(
        &self,
        peer: PeerId,
        req: &BlobRequest,
        blob_len: u64,
        mut on_block: F,
    ) -> Result<(), RequestError>
    where
        F: FnMut(Verified) -> Fut,
        Fut: Future<Output = Result<(), RequestError>>,
    {
        let mut stream = self.open(peer, blob_protocol(), &req.encode()).await?;
        self.read_status(&mut stream, Some(blob_len)).await?;
        let mut decoder = RangeDecoder::new(req.id, blob_len, &req.ranges);
        let mut parents = Vec::new();
        loop {
            match decoder.need() {
                Need::Done => break,
                Need::Parent => {
                    let mut pair = [0u8; PARENT_LEN];
                    self.read_exact(&mut stream, &mut pair).await?;
                    let position = decoder.parent(&pair).map_err(lied)?;
                    parents.push((position, pair));
                }
                Need::Block { len, .. } => {
                    let mut data = buffers::take(len);
                    self.read_exact(&mut stream, &mut data).await?;
                    let index = decoder.block(&data).map_err(lied)?;
                    let parents = std::mem::take(&mut parents);
                    on_block(Verified {
                        index,
                        data,
                        parents,
                    })
                    .await?;
                }
            }
        }
        let _ = stream.close().await;
        Ok(())
    }

    /// Subscribes to `peer`'s have-map of blob `id` (of `total` blocks) and hands each
    /// frame's ranges to `on_have` until the stream ends (`Ok`), the peer misbehaves, or
    /// `on_have` returns `false` (`Stopped`).
    pub(crate) async fn read_have_map<F, Fut>(
        &self,
        peer: PeerId,
        id: BlobId,
        total: u32,
        mut on_have: F,
    ) -> Result<(), RequestError>
    where
        F: FnMut(Vec<BlockRange>) -> Fut,
        Fut: Future<Output = bool>,
    {
        let subscribe = Subscribe { id }.encode();
        let mut stream = self.open(peer, have_protocol(), &subscribe).await?;
        loop {
            // No timeout between frames: a peer with nothing new says nothing.
            let mut prefix = [0u8; 2];
            match stream.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(RequestError::Io(e)),
            }
            let len = HaveMsg::frame_len(prefix).map_err(|e| RequestError::Lied(e.to_string()))?;
            let mut body = vec![0u8; len];
            self.read_exact(&mut stream, &mut body).await?;
            match HaveMsg::decode(&body).map_err(|e| RequestError::Lied(e.to_string()))? {
                HaveMsg::NotFound => return Err(RequestError::Status(ResponseHeader::NotFound)),
                HaveMsg::Have { total: t, .. } if t != total => {
                    return Err(RequestError::Lied(format!(
                        "have-map for {t} blocks, the blob has {total}"
                    )));
                }
                HaveMsg::Have { ranges, .. } => {
                    if !on_have(ranges).await {
                        return Err(RequestError::Stopped);
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn lied(e: VerifyError) -> RequestError {
    RequestError::Lied(e.to_string())
}
