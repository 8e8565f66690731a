//! Idle keep-alive connections to backends, kept per endpoint.
//!
//! Each [`Backend`] owns its idle list, so a checkout touches one small
//! mutex and no map. A connection is registered with the event loop of
//! the worker that made it, so only that worker takes it again (another
//! would be woken through the first one's loop, across threads); the list
//! holds every worker's, tagged. A pooled connection the backend has
//! closed shows up as readable in the socket's cached readiness: the liveness
//! check below costs no system call unless the connection is in fact
//! readable (then it is dead or out of sync, and dropped).

use std::{io, sync::Arc, time::Duration};

use std::{net::SocketAddr, os::fd::AsRawFd};

use crate::rt::net::{TcpSocket, TcpStream};

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

/// An idle connection, the worker it belongs to ([`Watchdog::id`]), and
/// when it went idle (on the workers' coarse clock, [`Watchdog::now_ms`]:
/// idle timeouts are seconds long).
#[derive(Debug)]
pub struct Idle {
    stream: TcpStream,
    worker: u64,
    since_ms: u64,
}

/// Why a backend connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(std::net::SocketAddr, #[source] io::Error),
    /// The proxy's own shortage (descriptors, memory, local ports, its
    /// source address): no fault of the backend's.
    #[error("connect to {0}: the proxy is short of local resources: {1}")]
    Local(std::net::SocketAddr, #[source] io::Error),
}

impl ConnectError {
    /// Whether the backend had no part in it (so it is not to be ejected,
    /// and another backend would fare no better).
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Local(..))
    }

    /// A failed connect(2): local when the error names a shortage here.
    fn connecting(addr: SocketAddr, e: io::Error) -> ConnectError {
        match e.raw_os_error() {
            Some(
                libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE,
            ) => ConnectError::Local(addr, e),
            _ => ConnectError::Io(addr, e),
        }
    }
}

/// A connection to `backend`: a live idle one if there is one, else a new
/// one. The flag says whether it was reused.
pub async fn checkout(
    backend: &Arc<Backend>,
    cfg: &PoolConfig,
    dog: &Watchdog,
) -> Result<(TcpStream, bool), ConnectError> {
    let now = dog.now_ms();
    let worker = dog.id();
    loop {
        let idle = {
            let mut list = backend.idle.lock().expect("pool lock");
            // The newest of this worker's (with one worker, the last).
            list.iter()
                .rposition(|i| i.worker == worker)
                .map(|at| list.remove(at))
        };
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
    // Everything before connect(2) is the proxy's own affair.
    let local = |e| ConnectError::Local(addr, e);
    let socket = TcpSocket::new(addr).map_err(local)?;
    if let Some(mark) = cfg.mark {
        set_int_opt(
            &socket,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            mark as libc::c_int,
        )
        .map_err(local)?;
    }
    if let Some(ip) = cfg.source
        && ip.is_ipv4() == addr.is_ipv4()
    {
        // The port is picked at connect, per destination, not at bind:
        // a bind to port 0 would take a port no other connection may use,
        // and the node would run out after some 28,000 backend connections
        // in all instead of per backend.
        set_int_opt(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1).map_err(local)?;
        socket.bind(SocketAddr::new(ip, 0)).map_err(local)?;
    }
    let stream = match dog.timeout(cfg.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::connecting(addr, e)),
        Err(_) => return Err(ConnectError::Timeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn set_int_opt(
    socket: &TcpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a valid descriptor and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
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
    let worker = dog.id();
    let mut idle = backend.idle.lock().expect("pool lock");
    // Workers' clocks share an epoch: any worker expires any's.
    idle.retain(|i| !expired(i.since_ms, now, cfg));
    if idle.len() < cfg.max_idle_per_endpoint {
        idle.push(Idle {
            stream,
            worker,
            since_ms: now,
        });
    }
}

/// An idle connection must have nothing to read: bytes or EOF mean the
/// backend closed it or sent something unasked. When the loop has looked
/// at its events since the connection's last exchange read it empty, and
/// none was for it, the answer needs no system call; otherwise (the
/// connection was read empty in this same run of tasks, say, with a
/// pipelined request next) a one-byte read asks. What came after the
/// loop's last look is not seen, as with a proxy that watches its idle
/// connections: a request that then meets a closed connection is sent
/// again when it is whole and its write failed, or when it is idempotent;
/// otherwise it gets a 502.
fn is_quiet(stream: &TcpStream) -> bool {
    if stream.quiet() {
        return true;
    }
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers share a backend's idle list; each takes back only the
    /// connections it made, and either expires any.
    #[test]
    fn a_worker_reuses_only_its_own_connections() {
        crate::rt::run(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let backend = Arc::new(Backend::new(listener.local_addr().unwrap()));
            let cfg = PoolConfig::default();
            let (a, b) = (Watchdog::default(), Watchdog::default());
            assert_ne!(a.id(), b.id());

            let (conn, reused) = checkout(&backend, &cfg, &a).await.unwrap();
            assert!(!reused);
            let local = conn.local_addr().unwrap();
            checkin(&backend, conn, &cfg, &a);
            // Worker b finds none of its own: a new connection.
            let (other, reused) = checkout(&backend, &cfg, &b).await.unwrap();
            assert!(!reused);
            assert_ne!(other.local_addr().unwrap(), local);
            checkin(&backend, other, &cfg, &b);
            assert_eq!(backend.idle.lock().unwrap().len(), 2);
            // Worker a gets its own back.
            let (again, reused) = checkout(&backend, &cfg, &a).await.unwrap();
            assert!(reused);
            assert_eq!(again.local_addr().unwrap(), local);
            checkin(&backend, again, &cfg, &a);

            // The clocks share an epoch: with a zero idle timeout, b's checkin
            // expires a's connection as well as the one it was holding.
            let expire_all = PoolConfig {
                idle_timeout: Duration::ZERO,
                ..cfg
            };
            let (third, _) = checkout(&backend, &cfg, &b).await.unwrap();
            checkin(&backend, third, &expire_all, &b);
            assert_eq!(
                backend.idle.lock().unwrap().len(),
                1,
                "only the one just put"
            );
        });
    }

    /// A socket bound to a source address leaves the choice of its port to
    /// connect (IP_BIND_ADDRESS_NO_PORT).
    #[test]
    fn a_source_bound_connection_takes_its_port_at_connect() {
        crate::rt::run(async {
            let dog = Watchdog::default();
            let cfg = PoolConfig {
                source: Some("127.0.0.1".parse().unwrap()),
                ..PoolConfig::default()
            };
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let stream = connect_to(a.local_addr().unwrap(), &cfg, &dog)
                .await
                .unwrap();
            let mut on: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into an int of the size given.
            let rc = unsafe {
                libc::getsockopt(
                    stream.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&mut on as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            assert_eq!(on, 1);
            assert_eq!(stream.local_addr().unwrap().ip().to_string(), "127.0.0.1");
        });
    }

    /// A source address the machine does not have is the proxy's fault; a
    /// refused connect is the backend's.
    #[test]
    fn local_shortages_are_told_from_backend_failures() {
        crate::rt::run(async {
            let dog = Watchdog::default();
            let closed = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            let refused = connect_to(closed, &PoolConfig::default(), &dog)
                .await
                .unwrap_err();
            assert!(!refused.is_local(), "{refused}");
            let elsewhere = PoolConfig {
                source: Some("198.18.255.254".parse().unwrap()),
                ..PoolConfig::default()
            };
            let local = connect_to(closed, &elsewhere, &dog).await.unwrap_err();
            assert!(local.is_local(), "{local}");
            assert!(
                local.to_string().contains("short of local resources"),
                "{local}"
            );
        });
    }
}
