//! The xDS and TLS ports' TCP streams, read ahead: one `recv` takes what
//! the socket holds (up to [`READ_AHEAD`] bytes) when HTTP/2 asks for a
//! few kilobytes.
//!
//! h2 reads through a buffer that starts at 8 KiB and is sized to the
//! frame it is reading, so a SotW EDS ACK naming ~1400 clusters (~65 KiB
//! at 1000 services, five DATA frames, sent by Envoy in one write) took
//! six or seven `recv` calls, the last one finding the socket empty
//! (`strace -c`; two with this). Each call locks the socket and may send a
//! TCP window update; together they were a fifth of the daemon's CPU in a
//! SotW endpoint change (docs/PERFORMANCE.md, tenth session). Read ahead,
//! the bytes past what h2 asked for wait in a buffer of the connection's
//! own, given back as soon as h2 has taken them, which it does within the
//! same turn of the connection's task: an idle connection holds nothing.
//! The TLS port reads ahead below rustls, which reads 4 KiB at a time.
//!
//! tokio's `BufReader` reads ahead the same way but keeps its buffer for
//! the connection's life: 128 KiB each, 250 MiB at 2000 proxies.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes one read takes from the socket when h2 asks for less.
pub(crate) const READ_AHEAD: usize = 128 * 1024;

/// A TCP stream read ahead (module docs).
#[derive(Debug)]
pub(crate) struct ReadAhead {
    inner: TcpStream,
    /// Bytes read and not yet taken, from `at` on; empty (unallocated)
    /// when there are none.
    held: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    pub(crate) fn new(inner: TcpStream) -> ReadAhead {
        ReadAhead {
            inner,
            held: Vec::new(),
            at: 0,
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.held.len() {
            let n = out.remaining().min(this.held.len() - this.at);
            out.put_slice(&this.held[this.at..this.at + n]);
            this.at += n;
            if this.at == this.held.len() {
                this.held = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let mut ahead = Vec::with_capacity(READ_AHEAD);
            match this.inner.try_read_buf(&mut ahead) {
                Ok(n) => {
                    let given = n.min(out.remaining());
                    out.put_slice(&ahead[..given]);
                    if given < n {
                        this.held = ahead;
                        this.at = given;
                    }
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for ReadAhead {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_take_the_stream_whole_and_in_order_and_hold_nothing_after() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut peer, mut stream) = (peer.unwrap(), ReadAhead::new(accepted.unwrap().0));
        // More than one read ahead takes, in one write, as Envoy sends an ACK.
        let sent: Vec<u8> = (0..READ_AHEAD * 2 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        peer.write_all(&sent).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 8192];
        let mut held_some = false;
        loop {
            let n = stream.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
            // Nothing is held past what the socket gave in one read.
            assert!(stream.held.len() <= READ_AHEAD);
            held_some |= !stream.held.is_empty();
        }
        assert!(held_some, "no read was taken ahead");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes out of order or changed");
        assert_eq!(
            stream.held.capacity(),
            0,
            "a buffer kept after it was taken"
        );
        // A read at least as large as a read ahead goes straight to the socket.
        let mut large = vec![0u8; READ_AHEAD];
        assert_eq!(stream.read(&mut large).await.unwrap(), 0);
    }
}
