//! Yamux for libp2p with data frames of a whole sealed segment, over a connection that sends
//! a frame's header together with its body.
//!
//! `libp2p::yamux::Config` does not expose yamux's `split_send_size`, so every write is cut
//! into 16 KiB frames, each a separate Noise message and flush. With 68 KiB frames a sealed
//! segment travels as one frame: the team's transport probe measured +25-30 % on loopback
//! (../shared/bench/README.md), and docs/benchmarks.md has Shoal's before/after. The wire
//! protocol is unchanged (`/yamux/1.0.0`): only how big our frames are.
//!
//! Modelled on libp2p-yamux's `Muxer` (MIT), which keeps its constructor private.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, IoSlice, IoSliceMut},
    iter,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, future, ready};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};

/// Bytes per yamux data frame: one sealed segment and the tree nodes sent in front of it
/// (a served chunk is a block plus up to a few 64-byte parent pairs; at exactly 64 KiB those
/// pairs went out as a second, tiny frame). yamux accepts frames up to 1 MiB.
const SPLIT_SEND_SIZE: usize = 68 * 1024;
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
    type Output = Muxer<Coalesce<C>>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            Coalesce::new(io),
            self.0,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<Coalesce<C>>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            Coalesce::new(io),
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
    closed: Arc<Closed>,
}

/// Whether the connection is closing, and the streams waiting on it.
///
/// yamux's `poll_close` moves the connection to closing without waking its streams: a
/// stream waiting to read (a have-map subscription, which has no timeout between frames)
/// then waits forever. So the muxer says so itself: closing sets the flag and wakes every
/// stream that is waiting, and a waiting stream that finds the flag set ends with
/// `ConnectionAborted`.
#[derive(Debug, Default)]
struct Closed {
    closed: AtomicBool,
    next_id: AtomicU64,
    /// The waker of each stream waiting now, by stream (bounded by the open streams: a
    /// stream takes its entry out when dropped).
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Closed {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock().expect("waker lock poisoned"));
        for w in waiting.into_values() {
            w.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A stream's `Pending`: remember its waker, unless the connection closed meanwhile
    /// (then the stream ends).
    fn pending<T>(&self, stream: u64, cx: &Context<'_>) -> Poll<io::Result<T>> {
        {
            let mut waiting = self.waiting.lock().expect("waker lock poisoned");
            match waiting.get_mut(&stream) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => w.clone_from(cx.waker()),
                None => {
                    waiting.insert(stream, cx.waker().clone());
                }
            }
        }
        if self.is_closed() {
            self.forget(stream);
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Poll::Pending
    }

    fn forget(&self, stream: u64) {
        self.waiting
            .lock()
            .expect("waker lock poisoned")
            .remove(&stream);
    }
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
            closed: Arc::default(),
        }
    }

    /// Wraps a new yamux stream so that closing this connection ends it.
    fn stream(&self, inner: yamux::Stream) -> Stream {
        Stream {
            inner,
            id: self.closed.next_id.fetch_add(1, Ordering::Relaxed),
            closed: self.closed.clone(),
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let stream = ready!(self.connection.poll_next_inbound(cx))
            .ok_or(Error(yamux::ConnectionError::Closed))?
            .map_err(Error)?;
        Poll::Ready(Ok(self.stream(stream)))
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
        Poll::Ready(Ok(self.stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.closed.close();
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

/// The connection under yamux, holding back a short write (a frame's 12-byte header) until
/// the next write or flush.
///
/// yamux writes each frame's header and body separately. Under TLS every write becomes its
/// own record and, with `TCP_NODELAY`, its own TCP segment and wake-up at the receiver: per
/// 64 KiB frame a 34-byte record and a second syscall on both sides. Held back, the header
/// goes out with the body in one vectored write (rustls packs both into the same records).
/// Noise buffers until a flush by itself; this does not change what it sends.
#[derive(Debug)]
pub(crate) struct Coalesce<C> {
    io: C,
    held: [u8; HELD],
    held_len: usize,
}

/// The longest write held back: one yamux frame header.
const HELD: usize = 12;

impl<C> Coalesce<C> {
    fn new(io: C) -> Self {
        Self {
            io,
            held: [0; HELD],
            held_len: 0,
        }
    }

    /// Marks `n` held bytes as written.
    fn consume_held(&mut self, n: usize) {
        self.held.copy_within(n..self.held_len, 0);
        self.held_len -= n;
    }
}

impl<C: AsyncWrite + Unpin> Coalesce<C> {
    /// Writes out what is held back.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held_len > 0 {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[..self.held_len]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume_held(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Coalesce<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read_vectored(cx, bufs)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Coalesce<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.held_len == 0 && buf.len() <= HELD {
            this.held[..buf.len()].copy_from_slice(buf);
            this.held_len = buf.len();
            return Poll::Ready(Ok(buf.len()));
        }
        while this.held_len > 0 {
            let bufs = [IoSlice::new(&this.held[..this.held_len]), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n <= this.held_len {
                this.consume_held(n);
            } else {
                let from_buf = n - this.held_len;
                this.held_len = 0;
                return Poll::Ready(Ok(from_buf));
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

impl<C> Drop for Muxer<C> {
    fn drop(&mut self) {
        // Dropped without a graceful close (an error): yamux wakes its streams itself then,
        // but a stream polled after that must not wait either.
        self.closed.close();
    }
}

/// A yamux substream that ends when its connection closes (see [`Closed`]).
#[derive(Debug)]
pub(crate) struct Stream {
    inner: yamux::Stream,
    id: u64,
    closed: Arc<Closed>,
}

impl Stream {
    /// `poll` on the inner stream; a `Pending` is registered with the connection's
    /// [`Closed`], so closing the connection ends it.
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut yamux::Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Pending => self.closed.pending(self.id, cx),
            ready => ready,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.closed.forget(self.id);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s, cx| s.poll_read(cx, buf))
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s, cx| s.poll_read_vectored(cx, bufs))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_with(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_with(cx, |s, cx| s.poll_close(cx))
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

#[cfg(test)]
mod tests {
    use futures::{AsyncWriteExt, executor::block_on};
    use proptest::prelude::*;

    use super::*;

    /// A connection that takes at most `cap` bytes per write, answers `Pending` (waking at
    /// once) on the calls whose bit is set in `pending`, and records what each write took.
    struct Recorder {
        out: Vec<u8>,
        writes: Vec<usize>,
        cap: usize,
        pending: u64,
        calls: u32,
    }

    impl Recorder {
        fn new(cap: usize, pending: u64) -> Self {
            Self {
                out: Vec::new(),
                writes: Vec::new(),
                cap,
                pending,
                calls: 0,
            }
        }

        fn stalls(&mut self, cx: &Context<'_>) -> bool {
            let stall = self.pending >> (self.calls % 64) & 1 == 1;
            self.calls += 1;
            if stall {
                cx.waker().wake_by_ref();
            }
            stall
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stalls(cx) {
                return Poll::Pending;
            }
            let mut taken = 0;
            for b in bufs {
                let n = b.len().min(this.cap - taken);
                this.out.extend_from_slice(&b[..n]);
                taken += n;
            }
            this.writes.push(taken);
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.get_mut().stalls(cx) {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[test]
    fn a_frame_header_goes_out_with_its_body() {
        let mut c = Coalesce::new(Recorder::new(usize::MAX, 0));
        let body = vec![7u8; 64 * 1024];
        block_on(async {
            c.write_all(&[1; 12]).await.unwrap();
            c.write_all(&body).await.unwrap();
        });
        assert_eq!(c.io.writes, [12 + body.len()], "one write for both");
        assert_eq!(&c.io.out[..12], &[1; 12]);
        assert_eq!(&c.io.out[12..], &body[..]);
    }

    #[test]
    fn a_held_header_goes_out_on_flush_and_close() {
        let mut c = Coalesce::new(Recorder::new(usize::MAX, 0));
        block_on(c.write_all(b"window-updat")).unwrap();
        assert!(c.io.out.is_empty(), "held back until something follows");
        block_on(c.flush()).unwrap();
        assert_eq!(c.io.out, b"window-updat");
        block_on(c.write_all(b"go-away")).unwrap();
        block_on(c.close()).unwrap();
        assert_eq!(c.io.out, b"window-updatgo-away");
    }

    proptest! {
        /// Whatever the sizes of the writes and however the connection takes them, the bytes
        /// arrive in order, and each flush leaves nothing held back.
        #[test]
        fn bytes_arrive_in_order_and_flush_holds_nothing(
            writes in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..40), any::<bool>()),
                0..40,
            ),
            cap in 1usize..64,
            pending in any::<u64>(),
        ) {
            // A connection that stalls on every call would never finish.
            let pending = pending & !1;
            let mut c = Coalesce::new(Recorder::new(cap, pending));
            let mut sent = Vec::new();
            for (bytes, flush) in &writes {
                block_on(c.write_all(bytes)).unwrap();
                sent.extend_from_slice(bytes);
                if *flush {
                    block_on(c.flush()).unwrap();
                    prop_assert_eq!(&c.io.out, &sent);
                }
            }
            block_on(c.flush()).unwrap();
            prop_assert_eq!(&c.io.out, &sent);
        }
    }
}
