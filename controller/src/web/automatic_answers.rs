//! hyper answers a request it cannot parse (a malformed request line, a
//! head too large, a URI too long: 400, 431, 414) by itself, before any
//! layer of the board sees it, so those answers would leave without the
//! board's security headers. This stream adds them: a response head that
//! lacks them can only be one of hyper's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::headers::SECURITY_HEADERS;

/// The board's connection as hyper writes to it. Writes are not vectored,
/// so a response head always starts a write.
pub struct Headed<S> {
    inner: S,
    /// An amended automatic answer not yet all written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> Headed<S> {
    pub fn new(inner: S) -> Self {
        Headed {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// `bytes` with the security headers added when it is a whole response
/// head of hyper's own (an error status, none of our headers); `None`
/// when it is not.
fn amended(bytes: &[u8]) -> Option<Vec<u8>> {
    let status = bytes.strip_prefix(b"HTTP/1.1 ")?;
    if !matches!(status.get(..4), Some(b"400 " | b"414 " | b"431 ")) {
        return None;
    }
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    if head.contains("\r\nx-content-type-options:") {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 512);
    out.extend_from_slice(&bytes[..end + 2]);
    for (name, value) in SECURITY_HEADERS {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"cache-control: no-store\r\n");
    out.extend_from_slice(&bytes[end + 2..]);
    Some(out)
}

impl<S: AsyncWrite + Unpin> Headed<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Headed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Headed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(out) = amended(buf) {
            // Taken whole: hyper sees its bytes written, ours go out on
            // the next write, flush or shutdown.
            self.pending = out;
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::amended;

    #[test]
    fn hyper_s_own_error_head_gets_the_headers_and_ours_are_left_alone() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(amended(hyper).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n"));
        assert!(out.contains("\r\ncontent-security-policy: default-src 'none'"), "{out}");
        assert!(out.contains("\r\nx-content-type-options: nosniff\r\n"), "{out}");
        assert!(out.ends_with("cache-control: no-store\r\n\r\n"), "{out}");
        let ours = b"HTTP/1.1 400 Bad Request\r\nx-content-type-options: nosniff\r\n\r\nbody";
        assert!(amended(ours).is_none());
        assert!(amended(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(amended(b"<html>400 </html>").is_none());
    }
}
