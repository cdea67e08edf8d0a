//! The simulated proxies' TCP connection, writing as Envoy does: what
//! HTTP/2 produces in one turn of the connection's task goes out in one
//! `write`, not one per frame.
//!
//! Envoy's connection buffers what its HTTP/2 codec serialises and writes
//! the buffer when its event loop gets to the socket's write event: a SotW
//! EDS ACK naming ~1400 clusters (~65 KiB: five DATA frames, four of 16 KiB)
//! leaves a real Envoy 1.40 in one `writev` (`strace` of one against the
//! daemon on a 1000-service mesh, docs/PERFORMANCE.md's tenth session).
//! The h2 crate instead writes each DATA frame whose payload it holds by
//! reference as soon as it is queued, and flushes after each: one system
//! call and one TCP segment per frame, paid on the cores the simulated
//! proxies share with the daemon. [`Coalescing`] keeps what is written in
//! one turn of the task and hands it to the socket in the next, which is
//! what Envoy's event loop does; the daemon receives the same frames.
//! tokio's `BufWriter` would not: it writes on every flush, and h2 flushes
//! after every frame.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes held before a write waits for the socket (a SotW ACK is ~65 KiB
/// at 1000 services; HTTP/2 flow control bounds what one turn writes).
const HOLD_LIMIT: usize = 1 << 20;

/// A TCP stream whose writes are gathered until the task's next turn.
///
/// A flush right after a write is deferred: the task is woken and the bytes
/// go out on the flush of its next turn (h2 flushes whenever it has nothing
/// more to write, on every turn). A flush with nothing new since the one
/// before writes everything held. The buffer is kept between messages, so
/// that its pages are not given back and faulted in again every ACK (the
/// load tool's memory, ~128 KiB per simulated proxy at 1000 services).
#[derive(Debug)]
pub struct Coalescing {
    inner: TcpStream,
    /// Bytes accepted and not yet written, from `written` on.
    held: Vec<u8>,
    /// How much of `held` the socket has taken.
    written: usize,
    /// Whether bytes were accepted since the last flush.
    fresh: bool,
}

impl Coalescing {
    /// Wraps a connected stream (`TCP_NODELAY` as the caller set it; Envoy
    /// sets it on its xDS connection).
    pub fn new(inner: TcpStream) -> Coalescing {
        Coalescing {
            inner,
            held: Vec::new(),
            written: 0,
            fresh: false,
        }
    }

    /// Writes what is held until the socket has all of it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes: over the limit, what is held is written
    /// first.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.held.len() - self.written + len > HOLD_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx, buf.len()))?;
        this.held.extend_from_slice(buf);
        this.fresh = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        ready!(this.poll_room(cx, len))?;
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        this.fresh = true;
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.fresh) {
            // More may come in this turn: write on the next one.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Connects a tonic channel's TCP streams as [`Coalescing`] ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connector;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Coalescing>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(Coalescing::new(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Coalescing, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Coalescing::new(client.unwrap()), accepted.unwrap().0)
    }

    /// What the peer has received so far, without waiting.
    fn received(peer: &TcpStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        match peer.try_read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_turns_writes_leave_together_on_the_next_flush() {
        let (mut stream, peer) = pair().await;
        stream.write_all(b"frame one,").await.unwrap();
        let n = stream
            .write_vectored(&[IoSlice::new(b"frame "), IoSlice::new(b"two")])
            .await
            .unwrap();
        assert_eq!(n, 9, "a vectored write is taken whole");
        // The flush right after the writes defers them.
        stream.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(received(&peer).is_empty(), "written before the next turn");
        // The next flush, with nothing new, writes them at once.
        stream.flush().await.unwrap();
        peer.readable().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(received(&peer), b"frame one,frame two");
    }

    #[tokio::test]
    async fn past_the_limit_and_on_shutdown_everything_is_written() {
        let (mut stream, mut peer) = pair().await;
        let big = vec![7u8; HOLD_LIMIT];
        stream.write_all(b"head").await.unwrap();
        // Over the limit: what was held goes out before the next is kept.
        stream.write_all(&big).await.unwrap();
        let mut head = [0u8; 4];
        peer.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"head");
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, big);
    }
}
