//! A terminated inbound TLS connection handed to Pingora as a plain stream: Pingora's "virtual
//! socket" carries the decrypted bytes, so the HTTP proxy, the head limits and the sniffer work
//! on it unchanged, while the socket digest (original destination, addresses) still comes from
//! the TCP socket underneath. The socket also holds the inbound peer-table entry, so a
//! connection's peer identity is forgotten when the connection closes. (These virtual sockets
//! carry no file descriptor, which Pingora needs only to pool upstream connections; outbound
//! mTLS streams carry theirs: `pooled`.)

use std::pin::Pin;
use std::task::{Context, Poll};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::{GetSocketDigest, SocketDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::inbound::PeerEntry;

/// A TLS stream as Pingora's virtual socket.
pub struct TlsSocket<S> {
    inner: S,
    _peer: Option<PeerEntry>,
}

impl<S> std::fmt::Debug for TlsSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSocket")
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> VirtualSocket for TlsSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        // The TCP socket underneath was set up (no delay, keep-alive) before the handshake.
        Ok(())
    }
}

/// Wrap `inner` as a Pingora stream whose socket digest is `digest`.
pub fn into_stream<S>(inner: S, peer: Option<PeerEntry>, digest: Option<SocketDigest>) -> L4Stream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let mut s = L4Stream::from(VirtualSocketStream::new(Box::new(TlsSocket {
        inner,
        _peer: peer,
    })));
    if let Some(d) = digest {
        s.set_socket_digest(d);
    }
    s
}

/// A socket digest for the TCP socket `fd` with what is already known of it filled in (so
/// nothing is asked of the kernel again, and the original destination survives the wrapping).
pub fn digest_of(fd: i32, from: Option<&SocketDigest>) -> SocketDigest {
    let d = SocketDigest::from_raw_fd(fd);
    if let Some(from) = from {
        let _ = d.peer_addr.set(from.peer_addr().cloned());
        let _ = d.local_addr.set(from.local_addr().cloned());
        let _ = d.original_dst.set(from.original_dst().cloned());
    }
    d
}
