//! Reads and writes over shared `&TcpStream`s (tokio's own helpers need
//! `&mut`, and a connection's two directions are driven from one task).
//!
//! Every read loops on readiness: an EAGAIN is never the end of a stream.
//! That matters for sockets in the SOCKHASH, which can report EAGAIN at odd
//! moments even when data is on its way.

use std::io;

use tokio::net::TcpStream;

/// Appends what can be read from `from` to `buf`'s spare capacity (which
/// is not zeroed first: tokio reads into it as uninitialised memory).
pub async fn read_into(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read_buf(buf) {
            Ok(k) => return Ok(k),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `write_all` over a shared reference (the tokio stream's own needs `&mut`).
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies from `from` to `to` until `from` ends, then shuts `to`'s write
/// side; calls `progress` with the count after each read. Returns the bytes copied.
pub async fn copy_until_eof(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    progress: &impl Fn(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                progress(n);
                write_all(to, &buf[..n]).await?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
