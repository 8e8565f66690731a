//! Idle keep-alive connections to backends: one pool per worker, owned by
//! it, keyed by backend address.
//!
//! A connection is registered with the runtime of the worker that made it,
//! so only that worker uses it again; a per-worker pool needs no lock and
//! no tag. Connections idle longer than the idle timeout are closed at
//! checkout, at checkin, and by a sweep of the whole pool at most once per
//! half idle timeout (so addresses no longer routed to do not keep theirs).
//!
//! A pooled connection can have been closed by its backend while it sat
//! idle. Checkout looks before handing one out, in one of two ways
//! ([`Liveness`]): through tokio's cached readiness, which costs a system
//! call only when the socket may have something to read, or with a
//! `MSG_PEEK` that asks the kernel whatever the cache says. The cache can
//! be behind: a hang-up the kernel has queued but the runtime's event loop
//! has not yet taken (it takes events in batches) looks quiet there. The
//! caller picks `Sure` for requests that must not be sent on a dead
//! connection (see `policy::liveness`).

use std::{
    collections::HashMap, io, mem::MaybeUninit, net::SocketAddr, os::fd::AsRawFd, time::Duration,
};

use tokio::{
    io::Interest,
    net::{TcpSocket, TcpStream},
};

use super::watchdog::Watchdog;

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Idle connections kept per backend address (per worker).
    pub max_idle_per_backend: usize,
    /// Idle connections kept in all (per worker): overrides can name any
    /// number of addresses, and each would keep its share. At the bound the
    /// connection idle longest is closed to make room.
    pub max_idle_total: usize,
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
            max_idle_per_backend: 64,
            max_idle_total: 1024,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            mark: None,
            source: None,
        }
    }
}

/// How sure checkout must be that an idle connection is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// As far as the runtime's readiness knows (a request that may be sent
    /// again if the connection turns out closed).
    Cached,
    /// As far as the kernel knows now: a `MSG_PEEK` system call.
    Sure,
}

/// An idle connection and when it went idle (on the worker's coarse clock,
/// [`Watchdog::now_ms`]: idle timeouts are seconds long).
#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since_ms: u64,
}

/// One worker's idle backend connections.
#[derive(Debug)]
pub struct Pool {
    cfg: PoolConfig,
    /// Per address, oldest first.
    idle: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    /// Connections in `idle`, over every address.
    total: usize,
    last_sweep_ms: u64,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool {
            cfg,
            idle: HashMap::default(),
            total: 0,
            last_sweep_ms: 0,
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// The newest idle connection to `addr` that is still open, checked as
    /// `liveness` says; the dead and expired ones met on the way are closed.
    pub fn take(&mut self, addr: SocketAddr, now_ms: u64, liveness: Liveness) -> Option<TcpStream> {
        let list = self.idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            self.total -= 1;
            if !expired(idle.since_ms, now_ms, &self.cfg) && is_open(&idle.stream, liveness) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keeps `stream`, whose last exchange ended cleanly, for reuse.
    ///
    /// Its read readiness is cleared here, with no system call: the
    /// exchange read everything it was owed, so anything that comes now is
    /// an end or bytes nobody asked for, and either brings a new event.
    /// A `Cached` checkout then reads the socket only when such an event
    /// came (tokio keeps a hang-up sticky), not once per request. In eBPF
    /// mode bytes can wait in the other of a socket's two queues (see
    /// `stream`), but for a pooled connection those would be unasked
    /// bytes, which a `Sure` checkout still sees.
    pub fn put(&mut self, addr: SocketAddr, stream: TcpStream, now_ms: u64) {
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        let cfg = self.cfg;
        if now_ms.saturating_sub(self.last_sweep_ms) >= cfg.idle_timeout.as_millis() as u64 / 2 {
            self.last_sweep_ms = now_ms;
            self.idle.retain(|_, list| {
                list.retain(|i| !expired(i.since_ms, now_ms, &cfg));
                !list.is_empty()
            });
            self.total = self.len();
        }
        let list = self.idle.entry(addr).or_default();
        let before = list.len();
        list.retain(|i| !expired(i.since_ms, now_ms, &cfg));
        let kept = list.len();
        self.total -= before - kept;
        if kept >= cfg.max_idle_per_backend || cfg.max_idle_total == 0 {
            return;
        }
        list.push(Idle {
            stream,
            since_ms: now_ms,
        });
        self.total += 1;
        if self.total > cfg.max_idle_total {
            self.close_oldest();
        }
    }

    /// Closes the connection idle longest, over every address: at the
    /// total bound. Walks the addresses: only at the bound.
    fn close_oldest(&mut self) {
        let oldest = self
            .idle
            .iter()
            .filter_map(|(addr, list)| list.first().map(|i| (i.since_ms, *addr)))
            .min();
        if let Some((_, addr)) = oldest
            && let Some(list) = self.idle.get_mut(&addr)
        {
            list.remove(0);
            self.total -= 1;
            if list.is_empty() {
                self.idle.remove(&addr);
            }
        }
    }

    /// Idle connections held, over every address.
    pub fn len(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(since_ms: u64, now_ms: u64, cfg: &PoolConfig) -> bool {
    now_ms.saturating_sub(since_ms) >= cfg.idle_timeout.as_millis() as u64
}

/// An idle connection must have nothing to read: bytes or an end mean the
/// backend closed it or sent something unasked.
fn is_open(stream: &TcpStream, liveness: Liveness) -> bool {
    let would_block =
        |r: io::Result<usize>| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    match liveness {
        // No system call while the runtime has seen nothing to read.
        Liveness::Cached => would_block(stream.try_read(&mut [0u8; 1])),
        Liveness::Sure => {
            let mut probe = [MaybeUninit::<u8>::uninit(); 1];
            would_block(socket2::SockRef::from(stream).peek(&mut probe))
        }
    }
}

/// Why a backend connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
    /// The proxy's own shortage (descriptors, memory, local ports, its
    /// source address): no fault of the backend's.
    #[error("connect to {0}: the proxy is short of local resources: {1}")]
    Local(SocketAddr, #[source] io::Error),
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

/// A new connection to `addr` (a backend, or an opaque connection's
/// original destination) with the connect timeout, marked and bound as
/// configured.
pub async fn connect(
    addr: SocketAddr,
    cfg: &PoolConfig,
    watchdog: &Watchdog,
) -> Result<TcpStream, ConnectError> {
    // Everything before connect(2) is the proxy's own affair.
    let local = |e| ConnectError::Local(addr, e);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )
    .map_err(local)?;
    if let Some(mark) = cfg.mark {
        socket.set_mark(mark).map_err(local)?;
    }
    if let Some(ip) = cfg.source
        && ip.is_ipv4() == addr.is_ipv4()
    {
        // The port is picked at connect, per destination, not at bind:
        // a bind to port 0 would take a port no other connection may use,
        // and the node would run out after some 28,000 backend connections
        // in all instead of per backend.
        bind_address_no_port(&socket).map_err(local)?;
        socket.bind(&SocketAddr::new(ip, 0).into()).map_err(local)?;
    }
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = match watchdog
        .timeout(cfg.connect_timeout, socket.connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::connecting(addr, e)),
        Err(_) => return Err(ConnectError::Timeout(addr)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT, which socket2 does not offer.
fn bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor `socket` owns, with a pointer to
    // an int that lives across the call and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pool() -> Pool {
        Pool::new(PoolConfig::default())
    }

    /// A backend that accepts and keeps what it accepted.
    fn listener() -> (std::net::TcpListener, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    #[tokio::test]
    async fn the_newest_idle_connection_is_reused_and_expired_ones_are_closed() {
        let dog = Watchdog::default();
        let (_l, addr) = listener();
        let mut pool = pool();
        let (a, b) = (
            connect(addr, pool.config(), &dog).await.unwrap(),
            connect(addr, pool.config(), &dog).await.unwrap(),
        );
        let (a_local, b_local) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        pool.put(addr, a, 1_000);
        pool.put(addr, b, 2_000);
        assert_eq!(pool.len(), 2);
        let got = pool.take(addr, 2_000, Liveness::Cached).unwrap();
        assert_eq!(got.local_addr().unwrap(), b_local, "the newest first");
        pool.put(addr, got, 2_000);
        // 30 s after the first went idle, it is expired; the second is not.
        let got = pool.take(addr, 31_000, Liveness::Sure).unwrap();
        assert_eq!(got.local_addr().unwrap(), b_local);
        assert!(pool.take(addr, 31_000, Liveness::Sure).is_none());
        assert!(pool.is_empty(), "{a_local} was closed on the way");
        // Another address has nothing.
        let (_l2, other) = listener();
        assert!(pool.take(other, 31_000, Liveness::Cached).is_none());
    }

    #[tokio::test]
    async fn a_checkin_sweeps_addresses_nobody_uses_any_more() {
        let dog = Watchdog::default();
        let ((_l1, one), (_l2, two)) = (listener(), listener());
        let mut pool = pool();
        pool.put(one, connect(one, pool.config(), &dog).await.unwrap(), 1_000);
        pool.put(
            two,
            connect(two, pool.config(), &dog).await.unwrap(),
            40_000,
        );
        assert_eq!(pool.len(), 1, "one's connection expired in the sweep");
        assert_eq!(pool.idle.len(), 1, "and its address went with it");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_share_per_backend() {
        let dog = Watchdog::default();
        let (_l, addr) = listener();
        let mut pool = Pool::new(PoolConfig {
            max_idle_per_backend: 2,
            ..PoolConfig::default()
        });
        for _ in 0..3 {
            let s = connect(addr, pool.config(), &dog).await.unwrap();
            pool.put(addr, s, 1_000);
        }
        assert_eq!(pool.len(), 2);
    }

    /// Overrides can name any number of addresses: the pool keeps at most
    /// its total, closing the connection idle longest to make room.
    #[tokio::test]
    async fn the_pool_keeps_at_most_its_total_over_every_backend() {
        let dog = Watchdog::default();
        let listeners: Vec<_> = (0..5).map(|_| listener()).collect();
        let mut pool = Pool::new(PoolConfig {
            max_idle_total: 3,
            ..PoolConfig::default()
        });
        for (i, (_, addr)) in listeners.iter().enumerate() {
            let s = connect(*addr, pool.config(), &dog).await.unwrap();
            pool.put(*addr, s, 1_000 + i as u64);
            assert_eq!(pool.len(), (i + 1).min(3));
            assert_eq!(pool.total, pool.len());
        }
        // The first two went; the three newest stay.
        for (i, (_, addr)) in listeners.iter().enumerate() {
            let kept = pool.take(*addr, 2_000, Liveness::Sure).is_some();
            assert_eq!(kept, i >= 2, "{i}");
        }
        assert_eq!((pool.total, pool.len()), (0, 0));
    }

    /// A connection its backend closed, or that holds bytes nobody asked
    /// for, is never handed out; `Sure` sees the end even where the
    /// runtime has not looked at its events since.
    #[tokio::test]
    async fn a_closed_or_dirty_connection_is_not_handed_out() {
        let dog = Watchdog::default();
        let (l, addr) = listener();
        let mut pool = pool();
        let closed = connect(addr, pool.config(), &dog).await.unwrap();
        let dirty = connect(addr, pool.config(), &dog).await.unwrap();
        let (first, _) = l.accept().unwrap();
        let (mut second, _) = l.accept().unwrap();
        // The runtime's readiness was last cleared by an empty read.
        assert!(is_open(&closed, Liveness::Cached));
        assert!(is_open(&closed, Liveness::Sure));
        drop(first);
        second.write_all(b"stray").unwrap();
        // No await since: the event loop has not taken the new events, so
        // the runtime's readiness still says nothing is there (it was last
        // cleared by an empty read), and only a question to the kernel
        // sees the end.
        assert!(is_open(&closed, Liveness::Cached), "the cache is behind");
        assert!(!is_open(&closed, Liveness::Sure), "the end is seen");
        assert!(!is_open(&dirty, Liveness::Sure), "stray bytes are seen");
        pool.put(addr, closed, 1_000);
        pool.put(addr, dirty, 1_000);
        assert!(pool.take(addr, 1_000, Liveness::Sure).is_none());
        assert!(pool.is_empty());
    }

    /// A pooled connection costs no read at checkout until an event comes
    /// for it; an end that the runtime has taken is seen then.
    #[tokio::test]
    async fn a_hang_up_the_runtime_has_taken_is_seen_without_a_peek() {
        let dog = Watchdog::default();
        let (l, addr) = listener();
        let mut pool = pool();
        let conn = connect(addr, pool.config(), &dog).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let mut got = vec![0u8; 64];
        crate::proxy::stream::read(&conn, &mut got).await.unwrap();
        // The response read whole, readiness still set by its event.
        pool.put(addr, conn, 1_000);
        let conn = pool.take(addr, 1_000, Liveness::Cached).unwrap();
        pool.put(addr, conn, 1_000);
        drop(peer);
        // Let the runtime's driver take the hang-up's event.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(pool.take(addr, 1_000, Liveness::Cached).is_none());
    }

    /// A socket bound to a source address leaves the choice of its port to
    /// connect (IP_BIND_ADDRESS_NO_PORT).
    #[tokio::test]
    async fn a_source_bound_connection_takes_its_port_at_connect() {
        let dog = Watchdog::default();
        let cfg = PoolConfig {
            source: Some("127.0.0.1".parse().unwrap()),
            ..PoolConfig::default()
        };
        let (_l, addr) = listener();
        let stream = connect(addr, &cfg, &dog).await.unwrap();
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int of the size given, on a live socket.
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
    }

    /// A source address the machine does not have is the proxy's fault; a
    /// refused connect is the backend's.
    #[tokio::test]
    async fn local_shortages_are_told_from_backend_failures() {
        let dog = Watchdog::default();
        let closed = listener().1;
        let refused = connect(closed, &PoolConfig::default(), &dog)
            .await
            .unwrap_err();
        assert!(!refused.is_local(), "{refused}");
        let elsewhere = PoolConfig {
            source: Some("198.18.255.254".parse().unwrap()),
            ..PoolConfig::default()
        };
        let local = connect(closed, &elsewhere, &dog).await.unwrap_err();
        assert!(local.is_local(), "{local}");
        assert!(
            local.to_string().contains("short of local resources"),
            "{local}"
        );
    }
}
