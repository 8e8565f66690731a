//! Byte tunnels: after a 101 (Upgrade) or a 2xx to CONNECT, and for opaque
//! connections, both directions move until each side closes: spliced, or
//! copied through userspace where splice cannot read (sockets in the eBPF
//! SOCKHASH receive redirected bytes into a queue splice does not see).

use std::io;

use tokio::net::TcpStream;

use super::{
    splice::Pipe,
    stream::{copy_until_eof, shutdown_write},
};

/// Moves `a` to `b` and `b` to `a` at once until both directions end; when
/// one direction ends, the write side of its destination is shut down so
/// the peer sees the end too. `progress` runs with the count whenever
/// bytes move (either way), which is how the caller counts them, also for
/// a tunnel that ends in an error or is dropped at its idle timeout.
pub async fn run(
    a: &TcpStream,
    b: &TcpStream,
    splice: bool,
    progress: &impl Fn(usize),
) -> io::Result<()> {
    let (x, y) = if splice {
        let (mut ab, mut ba) = (Pipe::new()?, Pipe::new()?);
        tokio::join!(
            async {
                let n = ab
                    .transfer(a, b, None, progress)
                    .await
                    .map_err(io::Error::from);
                shutdown_write(b);
                n
            },
            async {
                let n = ba
                    .transfer(b, a, None, progress)
                    .await
                    .map_err(io::Error::from);
                shutdown_write(a);
                n
            }
        )
    } else {
        let (mut ab, mut ba) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
        tokio::join!(
            async {
                let n = copy_until_eof(a, b, &mut ab, progress).await;
                shutdown_write(b);
                n
            },
            async {
                let n = copy_until_eof(b, a, &mut ba, progress).await;
                shutdown_write(a);
                n
            }
        )
    };
    x.and(y).map(drop)
}
