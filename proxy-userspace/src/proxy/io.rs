//! Copying between sockets through userspace.
//!
//! Every read loops on readiness: an EAGAIN is never the end of a stream.
//! That matters for sockets in the SOCKHASH, which can report EAGAIN at odd
//! moments even when data is on its way.

use std::io;

use crate::rt::net::TcpStream;

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
        match from.read(buf).await? {
            0 => return Ok(total),
            n => {
                progress(n);
                to.write_all(&buf[..n]).await?;
                total += n as u64;
            }
        }
    }
}
