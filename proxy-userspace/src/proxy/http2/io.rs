//! A TCP connection as hyper's I/O, read the proxy's way.
//!
//! Reads go through `poll_read_ready` and a `recv(2)` that clears tokio's
//! readiness only on `WouldBlock` (see `proxy::stream`: in eBPF mode a
//! short read does not prove a socket empty, so tokio's `AsyncRead` could
//! wait for ever). The bytes the HTTP/1 loop read before it saw the
//! HTTP/2 preface are given to hyper first.

use std::{
    borrow::Borrow,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::{io::Interest, net::TcpStream};

/// A connection (owned, or borrowed from the connection loop) with bytes
/// already read from it in front.
pub struct Io<S> {
    stream: S,
    prefix: Vec<u8>,
    /// How much of `prefix` hyper has taken.
    taken: usize,
}

impl<S: Borrow<TcpStream>> Io<S> {
    pub fn new(stream: S, prefix: Vec<u8>) -> Io<S> {
        Io {
            stream,
            prefix,
            taken: 0,
        }
    }
}

impl<S: Borrow<TcpStream> + Unpin> Read for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.prefix.len() {
            let rest = &this.prefix[this.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.taken += n;
            if this.taken == this.prefix.len() {
                this.prefix = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let stream: &TcpStream = this.stream.borrow();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let read = stream.try_io(Interest::READABLE, || {
                // SAFETY: recv(2) only writes into the slice (it never
                // reads it), so uninitialised bytes are never read.
                let spare = unsafe { buf.as_mut() };
                socket2::SockRef::from(stream).recv(spare)
            });
            match read {
                Ok(n) => {
                    // SAFETY: recv(2) initialised the first `n` bytes of
                    // the spare room it was given.
                    unsafe { buf.advance(n) };
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: Borrow<TcpStream> + Unpin> Write for Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream: &TcpStream = self.get_mut().stream.borrow();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream: &TcpStream = self.get_mut().stream.borrow();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        super::super::stream::shutdown_write(self.get_mut().stream.borrow());
        Poll::Ready(Ok(()))
    }
}
