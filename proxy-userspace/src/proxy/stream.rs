//! Reads and writes over shared `&TcpStream`s: a connection's two
//! directions are driven from one task, and tokio's `AsyncRead` helpers
//! need `&mut`.
//!
//! Every read goes through `readable()` and `try_read*`, never
//! `AsyncRead`: tokio's `poll_read` takes a short read for an empty socket
//! and clears the readiness, and in eBPF mode a short read does not prove
//! that. A socket's first bytes can land in its TCP receive queue (sent
//! before the proxy's end joined the SOCKHASH) and the rest in the sk_msg
//! ingress queue, and one read takes from one queue only; waiting for an
//! edge after the first would wait for ever. `try_read` clears readiness
//! only on `WouldBlock`, and a `WouldBlock` is never the end of a stream.

//!
//! Waiting goes through `poll_read_ready` and `poll_write_ready` rather
//! than `readable()` and `writable()`: those keep a list of waiters per
//! socket, and cost a few hundred instructions a request more; a socket's
//! direction here always has one waiter at most.

use std::{future::poll_fn, io};

use tokio::net::TcpStream;

/// Waits until `stream` may be readable (a hint: the next read may still
/// find nothing). One task at a time may wait on a socket's read side.
pub async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until `stream` may be writable. One task at a time may wait on a
/// socket's write side.
pub async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// Reads what is there into `buf`, waiting for something (0: the peer closed).
pub async fn read(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        read_ready(from).await?;
        match from.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Appends what can be read from `from` to `buf`'s spare capacity (not
/// zeroed first), waiting for something (0: the peer closed).
pub async fn read_buf(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        read_ready(from).await?;
        match from.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Reads what is there now into `buf`'s spare capacity, asking the kernel
/// whatever the runtime's readiness says (`WouldBlock`: nothing yet).
///
/// For the answer to a request just written: a peer on the same CPU
/// usually answers before the writer runs again, while the readiness of a
/// connection found empty (a pooled one is) says nothing is there, and
/// waiting for the runtime to learn otherwise costs a park of the worker
/// (a yield and an `epoll_wait`) per request. The readiness is left as it
/// is: an edge for these bytes is still to come, and only makes a read
/// find nothing once.
pub fn try_read_buf_now(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(64);
    }
    let n = socket2::SockRef::from(from).recv(buf.spare_capacity_mut())?;
    // SAFETY: recv(2) initialised the first `n` bytes of the spare
    // capacity it was given, and `n` is at most its length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Writes all of `data`, waiting for room as needed.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_ready(to).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Shuts the write side (the peer reads an end). An error (the socket is
/// already closed) is of no use to the caller and is dropped.
pub fn shutdown_write(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// Copies from `from` to `to` until `from` ends; calls `progress` with the
/// count after each read. Returns the bytes copied.
pub async fn copy_until_eof(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    progress: &impl Fn(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        match read(from, buf).await? {
            0 => return Ok(total),
            n => {
                progress(n);
                write_all(to, &buf[..n]).await?;
                total += n as u64;
            }
        }
    }
}
