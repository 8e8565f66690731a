//! A TCP connection as hyper's I/O, read the proxy's way.
//!
//! Reads go through `poll_read_ready` and a `recv(2)` that clears tokio's
//! readiness only on `WouldBlock` (see `proxy::stream`: in eBPF mode a
//! short read does not prove a socket empty, so tokio's `AsyncRead` could
//! wait for ever). The bytes the HTTP/1 loop read before it saw the
//! HTTP/2 preface are given to hyper first.
//!
//! A client's connection is watched ([`Watch`]): the frame headers it
//! sends are counted for floods, and those the proxy sends are followed
//! so that the proxy knows when its output ends with a whole frame (where
//! a GOAWAY of its own may go). A flood ends the reads with an error,
//! which ends hyper's connection; `serve` then sends the GOAWAY.

use std::{
    borrow::Borrow,
    cell::Cell,
    io::{self, IoSlice},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, ready},
    time::Instant,
};

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::{io::Interest, net::TcpStream};

use super::frames::{Flood, Guard, Scan};

/// A connection (owned, or borrowed from the connection loop) with bytes
/// already read from it in front.
pub struct Io<S> {
    stream: S,
    prefix: Vec<u8>,
    /// How much of `prefix` hyper has taken.
    taken: usize,
    /// A client's connection: its frames watched.
    watch: Option<Watch>,
}

/// The frames of a client's connection, both ways.
struct Watch {
    read: Scan,
    guard: Guard,
    write: Scan,
    told: Rc<Watched>,
}

/// What the connection's owner learns of its frames.
#[derive(Debug, Default)]
pub struct Watched {
    /// The flood the client was cut off for.
    pub flood: Cell<Option<Flood>>,
    /// Whether what the proxy wrote so far ends with a whole frame.
    pub at_boundary: Cell<bool>,
    /// The highest stream the client opened.
    pub last_stream: Cell<u32>,
}

impl<S: Borrow<TcpStream>> Io<S> {
    pub fn new(stream: S, prefix: Vec<u8>) -> Io<S> {
        Io {
            stream,
            prefix,
            taken: 0,
            watch: None,
        }
    }

    /// A client's connection (`prefix` starts with its preface), its
    /// frames counted by `guard` and told to `told`.
    pub fn watched(stream: S, prefix: Vec<u8>, guard: Guard, told: Rc<Watched>) -> Io<S> {
        told.at_boundary.set(true);
        Io {
            watch: Some(Watch {
                read: Scan::after_preface(),
                guard,
                write: Scan::new(),
                told,
            }),
            ..Io::new(stream, prefix)
        }
    }
}

impl Watch {
    /// Bytes from the client; an error when they make a flood.
    fn read(&mut self, bytes: &[u8]) -> io::Result<()> {
        let guard = &mut self.guard;
        let flood = self.read.feed(bytes, |h| guard.frame(h, Instant::now));
        self.told.last_stream.set(guard.last_stream());
        match flood {
            None => Ok(()),
            Some(flood) => {
                self.told.flood.set(Some(flood));
                Err(io::Error::other(format!(
                    "HTTP/2 {} flood: more than the limit a second",
                    flood.label()
                )))
            }
        }
    }

    /// Bytes the proxy wrote.
    fn wrote(&mut self, bytes: &[u8]) {
        let none: Option<()> = self.write.feed(bytes, |_| None);
        debug_assert!(none.is_none());
        self.told.at_boundary.set(self.write.at_boundary());
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
            if let Some(w) = &mut this.watch {
                w.read(&rest[..n])?;
            }
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
                    if let Some(w) = &mut this.watch {
                        // SAFETY: recv(2) initialised the first `n` bytes
                        // of the spare room it was given (not yet advanced
                        // past, so `as_mut` starts at them).
                        let got = unsafe {
                            std::slice::from_raw_parts(buf.as_mut().as_ptr().cast::<u8>(), n)
                        };
                        w.read(got)?;
                    }
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
        let this = self.get_mut();
        let stream: &TcpStream = this.stream.borrow();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(n) => {
                    if let Some(w) = &mut this.watch {
                        w.wrote(&data[..n]);
                    }
                    return Poll::Ready(Ok(n));
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let stream: &TcpStream = this.stream.borrow();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(n) => {
                    if let Some(w) = &mut this.watch {
                        let mut left = n;
                        for b in bufs {
                            if left == 0 {
                                break;
                            }
                            let k = left.min(b.len());
                            w.wrote(&b[..k]);
                            left -= k;
                        }
                    }
                    return Poll::Ready(Ok(n));
                }
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
