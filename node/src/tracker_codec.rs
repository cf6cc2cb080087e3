//! The `/shoal/tracker/1` codec for libp2p request-response (docs/tracker.md §1.1).
//!
//! One request and one response per stream. Each side reads at most the bound of the
//! message it expects — [`MAX_REQUEST_LEN`] on the tracker, [`MAX_RESPONSE_LEN`] on the
//! peer — plus one byte to tell "too long" from "exactly at the bound", then decodes the
//! whole buffer. Anything that does not decode is an [`io::ErrorKind::InvalidData`] error:
//! request-response then drops the stream (the tracker answers nothing; a peer ignores that
//! tracker's answer). Writers encode with [`Request::encode`] / [`Response::encode`], which
//! panic on a message that breaks a protocol rule: messages are built by our own code, never
//! taken from the network.
//!
//! Used by the tracker service (`shoal-tracker`, [`ProtocolSupport::Inbound`]) and by nodes
//! announcing to trackers ([`ProtocolSupport::Outbound`]):
//!
//! ```
//! use std::time::Duration;
//! use libp2p::request_response::ProtocolSupport;
//!
//! let client = shoal_node::tracker_codec::behaviour(ProtocolSupport::Outbound, Duration::from_secs(20));
//! # drop(client);
//! ```

use std::{io, time::Duration};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{
    StreamProtocol,
    request_response::{self, ProtocolSupport},
};
use shoal_protocol::tracker::{
    MAX_REQUEST_LEN, MAX_RESPONSE_LEN, Request, Response, TRACKER_PROTOCOL,
};

/// Concurrent request-response streams per connection (each side). A peer has at most one
/// announce per swarm in flight, a tracker serves many peers on separate connections: a few
/// streams per connection are plenty, and they bound what one connection can hold open.
pub const MAX_CONCURRENT_STREAMS: usize = 16;

/// The libp2p protocol name, `/shoal/tracker/1`.
pub fn tracker_protocol() -> StreamProtocol {
    StreamProtocol::new(TRACKER_PROTOCOL)
}

/// Reads and writes `/shoal/tracker/1` messages. Stateless: cloning is free.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackerCodec;

/// Reads all of `io` up to `max` bytes. One extra byte is read so that a message longer than
/// `max` reaches the decoder as such (and fails as `TooLong`) instead of being cut to a
/// plausible prefix.
async fn read_bounded<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let limit = u64::try_from(max).map_or(u64::MAX, |m| m.saturating_add(1));
    let mut buf = Vec::new();
    io.take(limit).read_to_end(&mut buf).await?;
    Ok(buf)
}

fn invalid(e: shoal_protocol::tracker::DecodeTrackerError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl request_response::Codec for TrackerCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_bounded(io, MAX_REQUEST_LEN).await?;
        Request::decode(&buf).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_bounded(io, MAX_RESPONSE_LEN).await?;
        Response::decode(&buf).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res.encode()).await
    }
}

/// A request-response behaviour speaking `/shoal/tracker/1`: [`ProtocolSupport::Inbound`]
/// for a tracker, [`ProtocolSupport::Outbound`] for a peer. `timeout` bounds each request
/// from stream open to response; at most [`MAX_CONCURRENT_STREAMS`] run per connection.
pub fn behaviour(
    support: ProtocolSupport,
    timeout: Duration,
) -> request_response::Behaviour<TrackerCodec> {
    request_response::Behaviour::with_codec(
        TrackerCodec,
        [(tracker_protocol(), support)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;
    use shoal_protocol::{
        BlobId,
        tracker::{AnnounceRequest, AnnounceResponse, Event, RefusalReason, Role, ScrapeRequest},
    };

    fn announce() -> Request {
        Request::Announce(AnnounceRequest {
            blob: BlobId::from_bytes([7; 32]),
            role: Role::Leecher,
            blocks_held: 1,
            total_blocks: 4,
            addrs: vec![vec![4, 127, 0, 0, 1, 6, 0x10, 0x92]],
            event: Event::Started,
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trips_both_directions() {
        let p = tracker_protocol();
        let mut codec = TrackerCodec;
        let mut buf = Vec::new();
        block_on(codec.write_request(&p, &mut buf, announce())).unwrap();
        let read = block_on(codec.read_request(&p, &mut buf.as_slice())).unwrap();
        assert_eq!(read, announce());

        let res = Response::Announce(AnnounceResponse::Refused {
            reason: RefusalReason::RateLimited {
                retry_after_secs: 9,
            },
        });
        let mut buf = Vec::new();
        block_on(codec.write_response(&p, &mut buf, res.clone())).unwrap();
        assert_eq!(
            block_on(codec.read_response(&p, &mut buf.as_slice())).unwrap(),
            res
        );
    }

    #[test]
    fn garbage_wrong_direction_and_oversize_are_invalid_data() {
        let p = tracker_protocol();
        let mut codec = TrackerCodec;
        let kind = |r: io::Result<Request>| r.unwrap_err().kind();
        assert_eq!(
            kind(block_on(codec.read_request(&p, &mut &b"\xffgarbage"[..]))),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            kind(block_on(codec.read_request(&p, &mut &b""[..]))),
            io::ErrorKind::InvalidData
        );
        // A response sent as a request is an unknown tag.
        let res = Response::Scrape(shoal_protocol::tracker::ScrapeResponse { swarms: vec![] });
        assert_eq!(
            kind(block_on(
                codec.read_request(&p, &mut res.encode().as_slice())
            )),
            io::ErrorKind::InvalidData
        );
        // Far more than the bound: only MAX_REQUEST_LEN + 1 bytes are read, then TooLong.
        let mut long = Request::Scrape(ScrapeRequest {
            blobs: vec![BlobId::from_bytes([1; 32])],
        })
        .encode();
        long.resize(10 * MAX_REQUEST_LEN, 0);
        let mut reader = long.as_slice();
        let err = block_on(codec.read_request(&p, &mut reader)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("at most"), "{err}");
        assert_eq!(reader.len(), long.len() - MAX_REQUEST_LEN - 1);
    }
}
