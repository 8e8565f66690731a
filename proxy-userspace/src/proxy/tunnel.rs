//! Byte tunnels: after a 101 (Upgrade) or a 2xx to CONNECT, and for opaque
//! connections, both directions are spliced until each side closes.

use std::{io, os::fd::AsRawFd};

use tokio::net::TcpStream;

use super::splice::Pipe;

/// Splices `a` to `b` and `b` to `a` at once until both directions end; when
/// one direction ends, the write side of its destination is shut down so
/// the peer sees the end too. Returns the bytes moved each way.
pub async fn run(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (mut ab, mut ba) = (Pipe::new()?, Pipe::new()?);
    let forward = async {
        let n = ab.transfer(a, b, None).await;
        shutdown_write(b);
        n
    };
    let backward = async {
        let n = ba.transfer(b, a, None).await;
        shutdown_write(a);
        n
    };
    let (x, y) = tokio::join!(forward, backward);
    Ok((x?, y?))
}

fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown on a descriptor the stream owns; failure (already
    // closed) is harmless here.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
}
