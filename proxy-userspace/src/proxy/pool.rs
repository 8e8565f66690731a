//! Idle keep-alive connections to backends, kept per endpoint.
//!
//! Each [`Backend`] owns its idle list, so a checkout touches one small
//! mutex and no map. A pooled connection the backend has closed shows up as
//! readable in tokio's cached readiness: the liveness check below costs no
//! system call unless the connection is in fact readable (then it is dead or
//! out of sync, and dropped).

use std::{io, sync::Arc, time::Duration};

use std::{net::SocketAddr, os::fd::AsRawFd};

use tokio::net::{TcpSocket, TcpStream};

use super::watchdog::Watchdog;
use crate::namer::balancer::Backend;

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// How long a connect to a backend may take.
    pub connect_timeout: Duration,
    /// SO_MARK for backend sockets, so interception leaves them alone.
    pub mark: Option<u32>,
    /// Source address for backend sockets (the node address in eBPF mode,
    /// so that sockops recognises proxy-to-pod connections).
    pub source: Option<std::net::IpAddr>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            mark: None,
            source: None,
        }
    }
}

/// An idle connection and when it went idle (on the worker's coarse
/// clock, [`Watchdog::now_ms`]: idle timeouts are seconds long).
#[derive(Debug)]
pub struct Idle {
    stream: TcpStream,
    since_ms: u64,
}

/// Why a backend connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(std::net::SocketAddr, #[source] io::Error),
}

/// A connection to `backend`: a live idle one if there is one, else a new
/// one. The flag says whether it was reused.
pub async fn checkout(
    backend: &Arc<Backend>,
    cfg: &PoolConfig,
    dog: &Watchdog,
) -> Result<(TcpStream, bool), ConnectError> {
    let now = dog.now_ms();
    loop {
        let idle = backend.idle.lock().expect("pool lock").pop();
        let Some(idle) = idle else { break };
        if !expired(idle.since_ms, now, cfg) && is_quiet(&idle.stream) {
            return Ok((idle.stream, true));
        }
    }
    Ok((connect(backend, cfg, dog).await?, false))
}

fn expired(since_ms: u64, now_ms: u64, cfg: &PoolConfig) -> bool {
    now_ms.saturating_sub(since_ms) >= cfg.idle_timeout.as_millis() as u64
}

/// A new connection to `backend`, with the connect timeout, marked and
/// bound as configured.
pub async fn connect(
    backend: &Backend,
    cfg: &PoolConfig,
    dog: &Watchdog,
) -> Result<TcpStream, ConnectError> {
    let addr = backend.addr();
    connect_to(addr, cfg, dog).await
}

/// A new connection to `addr` (a backend, or an opaque connection's
/// original destination).
pub async fn connect_to(
    addr: SocketAddr,
    cfg: &PoolConfig,
    dog: &Watchdog,
) -> Result<TcpStream, ConnectError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ConnectError::Io(addr, e))?;
    if let Some(mark) = cfg.mark {
        set_mark(&socket, mark).map_err(|e| ConnectError::Io(addr, e))?;
    }
    if let Some(ip) = cfg.source
        && ip.is_ipv4() == addr.is_ipv4()
    {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::Io(addr, e))?;
    }
    let stream = match dog.timeout(cfg.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
        Err(_) => return Err(ConnectError::Timeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn set_mark(socket: &TcpSocket, mark: u32) -> io::Result<()> {
    // SAFETY: setsockopt with a valid descriptor and a u32 option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Returns a connection whose last exchange ended cleanly.
pub fn checkin(backend: &Backend, stream: TcpStream, cfg: &PoolConfig, dog: &Watchdog) {
    let now = dog.now_ms();
    let mut idle = backend.idle.lock().expect("pool lock");
    idle.retain(|i| !expired(i.since_ms, now, cfg));
    if idle.len() < cfg.max_idle_per_endpoint {
        idle.push(Idle {
            stream,
            since_ms: now,
        });
    }
}

/// An idle connection must have nothing to read: bytes or EOF mean the
/// backend closed it or sent something unasked.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}
