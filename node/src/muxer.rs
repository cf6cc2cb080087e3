//! Yamux for libp2p with 64 KiB data frames.
//!
//! `libp2p::yamux::Config` does not expose yamux's `split_send_size`, so every write is cut
//! into 16 KiB frames, each a separate Noise message and flush. With 64 KiB frames a sealed
//! segment travels as one frame: the team's transport probe measured +25-30 % on loopback
//! (../shared/bench/README.md), and docs/benchmarks.md has Shoal's before/after. The wire
//! protocol is unchanged (`/yamux/1.0.0`): only how big our frames are.
//!
//! Modelled on libp2p-yamux's `Muxer` (MIT), which keeps its constructor private.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, IoSliceMut},
    iter,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, future, ready};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};

/// Bytes per yamux data frame: one sealed segment.
const SPLIT_SEND_SIZE: usize = 64 * 1024;
/// Inbound streams buffered while the node applies backpressure; more are dropped.
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;
/// Concurrent streams per connection.
const MAX_STREAMS: usize = 512;

/// The multiplexer upgrade.
#[derive(Debug, Clone)]
pub(crate) struct Config(yamux::Config);

impl Config {
    pub(crate) fn new() -> Self {
        let mut c = yamux::Config::default();
        c.set_split_send_size(SPLIT_SEND_SIZE);
        c.set_max_num_streams(MAX_STREAMS);
        Self(c)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            io,
            self.0,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            io,
            self.0,
            yamux::Mode::Client,
        ))))
    }
}

/// A yamux connection as a libp2p [`StreamMuxer`].
#[derive(Debug)]
pub(crate) struct Muxer<C> {
    connection: yamux::Connection<C>,
    inbound: VecDeque<Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(connection: yamux::Connection<C>) -> Self {
        Self {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let stream = ready!(self.connection.poll_next_inbound(cx))
            .ok_or(Error(yamux::ConnectionError::Closed))?
            .map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(res) = self.poll_inner(cx) {
            return Poll::Ready(res);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(self.connection.poll_new_outbound(cx)).map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx).map_err(Error)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_inner(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!("dropping an inbound stream: too many are waiting to be accepted");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        // Let other work run before polling the connection again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A yamux substream.
#[derive(Debug)]
pub(crate) struct Stream(yamux::Stream);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A yamux connection error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Error(yamux::ConnectionError);

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err.0 {
            yamux::ConnectionError::Io(e) => e,
            e => Self::other(e),
        }
    }
}
