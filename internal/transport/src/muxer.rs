//! Yamux (`/yamux/1.0.0`) as the swarm's stream muxer, with larger data frames than `libp2p-yamux` allows.
//!
//! `libp2p-yamux` keeps yamux's default of splitting writes into 16 KiB frames and does not let callers change
//! it, and yamux flushes the connection after every frame. A 1 GiB transfer was thus 65,536 frames, each one
//! encryption call and one `send` on the sender and one wake-up of the reader on the receiver. Here a frame
//! carries up to [`SPLIT_SEND_SIZE`]; the wire format is unchanged (any yamux peer reads any frame size up to its
//! window), so Kubo and other libp2p peers interoperate as before.
//!
//! Yamux also writes each frame's 12-byte header and its body in two calls. Under TLS each call became its own
//! record and its own `send`; [`Coalesce`] holds small writes back and hands them down together with the next
//! large one as one vectored write.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::{ready, AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// Most bytes of stream data in one yamux frame. A frame is sent whole, so this bounds how long a bulk transfer
/// holds the connection before another stream's frame can go (256 KiB: about 2 ms at 1 Gbit/s).
pub const SPLIT_SEND_SIZE: usize = 256 << 10;

/// Inbound streams the muxer holds for the swarm before it drops new ones, as `libp2p-yamux` does.
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// Writes smaller than this are held back (see [`Coalesce`]).
const SMALL_WRITE: usize = 4 << 10;

/// The yamux upgrade; see the module docs.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Default for Config {
    fn default() -> Self {
        let mut config = yamux::Config::default();
        config.set_split_send_size(SPLIT_SEND_SIZE);
        // As `libp2p-yamux`: a stream's unread data is dropped once the remote closes the connection.
        config.set_read_after_close(false);
        Config(config)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(Muxer::new(io, self.0, yamux::Mode::Server)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        futures::future::ready(Ok(Muxer::new(io, self.0, yamux::Mode::Client)))
    }
}

/// One yamux connection, as libp2p's [`StreamMuxer`].
pub struct Muxer<C> {
    connection: yamux::Connection<Coalesce<C>>,
    /// Streams the remote opened while the swarm was polling for events rather than for streams.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> std::fmt::Debug for Muxer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer").field("buffered_inbound", &self.inbound.len()).finish_non_exhaustive()
    }
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(io: C, config: yamux::Config, mode: yamux::Mode) -> Self {
        let io = Coalesce { inner: io, held: Vec::with_capacity(SMALL_WRITE) };
        Muxer { connection: yamux::Connection::new(io, config, mode), inbound: VecDeque::new(), inbound_waker: None }
    }

    fn poll_next_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match ready!(self.connection.poll_next_inbound(cx)) {
            Some(stream) => Poll::Ready(stream),
            None => Poll::Ready(Err(yamux::ConnectionError::Closed)),
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(result) = self.poll_next_inbound(cx) {
            return Poll::Ready(result);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Self::Substream, Self::Error>> {
        self.connection.poll_new_outbound(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        // Driving the connection (reading frames, sending queued ones) happens inside `poll_next_inbound`.
        let stream = ready!(this.poll_next_inbound(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!(stream = %stream, "dropping an inbound stream: {MAX_BUFFERED_INBOUND_STREAMS} wait already");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // There may be more to do; come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Holds writes under [`SMALL_WRITE`] bytes until the next large write or flush, then hands both down in one
/// vectored write: a yamux header goes out with its frame's body.
struct Coalesce<C> {
    inner: C,
    held: Vec<u8>,
}

impl<C: AsyncWrite + Unpin> Coalesce<C> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Coalesce<C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() < SMALL_WRITE {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        while !this.held.is_empty() {
            let held = this.held.len();
            let n = ready!(
                Pin::new(&mut this.inner).poll_write_vectored(cx, &[IoSlice::new(&this.held), IoSlice::new(buf)])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > held {
                this.held.clear();
                return Poll::Ready(Ok(n - held));
            }
            // All or part of what was held went; `buf` goes in the next round.
            this.held.drain(..n);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Coalesce<C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    /// Records each write it gets, accepting at most `limit` bytes per call.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(&mut Context::from_waker(futures::task::noop_waker_ref()), &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).take(this.limit).collect();
            let n = all.len();
            this.writes.push(all);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn coalesce(limit: usize) -> Coalesce<Recorder> {
        Coalesce { inner: Recorder { writes: Vec::new(), limit }, held: Vec::new() }
    }

    #[tokio::test]
    async fn a_header_goes_down_with_its_body_in_one_write() {
        let mut io = coalesce(usize::MAX);
        let header = [7u8; 12];
        let body = vec![9u8; 64 << 10];
        io.write_all(&header).await.unwrap();
        assert!(io.inner.writes.is_empty(), "a 12-byte write is held back");
        io.write_all(&body).await.unwrap();
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(io.inner.writes[0], [&header[..], &body[..]].concat());

        // A small write on its own goes at the flush.
        io.write_all(b"window update").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes.last().unwrap(), b"window update");
    }

    #[tokio::test]
    async fn short_writes_below_keep_every_byte_in_order() {
        let mut io = coalesce(5);
        let mut sent = Vec::new();
        for (i, len) in [12usize, 20_000, 3, 12, 70_000, 1].into_iter().enumerate() {
            let chunk = vec![i as u8; len];
            io.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
        }
        io.flush().await.unwrap();
        assert!(io.inner.writes.iter().all(|w| w.len() <= 5));
        assert!(io.inner.writes.concat() == sent, "bytes were lost or reordered");
    }
}
