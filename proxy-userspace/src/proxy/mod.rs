//! The proxy: the listener, the per-connection HTTP/1.1 loop, backend pools,
//! splice and tunnels.
//!
//! Each worker thread runs one tokio `current_thread` runtime (I/O driver
//! only: deadlines live on the [`watchdog`]) with its connections as tasks
//! on a `LocalSet`, so that what one worker owns ([`Worker`]: its pool, its
//! watchdog) needs no lock and no `Send`.
//!
//! `serve` accepts until told to stop, bounded by the memory budget (see
//! [`budget`]) and by `max_connections` (a semaphore): at the bound, a new connection makes room by closing the
//! connection idle longest, and with none idle it is answered 503 and
//! closed at once rather than left waiting in the listen backlog. On
//! shutdown it takes the connections still queued and closes the listener,
//! lets each connection finish the request it is in (idle keep-alive
//! connections close at once; one taken from the queue gets to send its
//! first), and waits for them up to the grace period.

mod blocks;
pub mod budget;
pub mod conn;
mod http2;
pub mod observed;
pub mod park;
pub mod policy;
pub mod pool;
mod routing;
pub mod shadow;
pub mod splice;
mod stream;
pub mod tunnel;
pub mod watchdog;

use std::{cell::RefCell, rc::Rc, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

use crate::{
    config::{Settings, ms},
    http,
    observe::metrics::Metrics,
    route::{Identifier, Router},
};

use self::{
    budget::{MemoryBudget, Pressure},
    pool::{Pool, PoolConfig},
    watchdog::Watchdog,
};

/// What the connection loop needs from the settings, in the shape it uses.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub limits: http::Limits,
    pub head_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub response_timeout: Duration,
    pub max_interim: usize,
    pub body_timeout: Duration,
    /// Bytes a second a request body must average after one body timeout;
    /// 0: no minimum.
    pub body_min_rate: u64,
    pub linger: Duration,
    /// Zero: tunnels never idle out.
    pub tunnel_idle: Duration,
    pub max_via_hops: usize,
    pub max_connections: usize,
    /// Bodies of known length at least this big are spliced; `u64::MAX`
    /// turns splicing off (eBPF mode: see `tunnel`).
    pub splice_threshold: u64,
    pub pool: PoolConfig,
    pub eject: Duration,
    /// While draining, how long an idle keep-alive connection stays open
    /// for a request already on its way.
    pub drain_idle: Duration,
    /// The header whose value picks a weighted union's branch (the same
    /// value, the same branch), when a request has it.
    pub sticky_header: Option<String>,
    /// How copies of requests are made and carried (shadowing).
    pub shadow: shadow::ShadowConfig,
    /// Starting traces, and telling backends the proxy's timing.
    pub trace: crate::observe::trace::TraceSettings,
    /// Intercepted connections to these ports are tunnelled at once.
    pub opaque_ports: Vec<u16>,
    /// An intercepted connection silent this long is tunnelled (zero: off).
    pub detect_timeout: Duration,
    /// How long a request waits for a namer that has not synced what it
    /// names (`k8s.sync_timeout_ms`).
    pub sync_timeout: Duration,
    /// HTTP/2 in and out.
    pub http2: crate::config::Http2,
}

impl ProxyConfig {
    pub fn from_settings(s: &Settings) -> ProxyConfig {
        ProxyConfig {
            limits: http::Limits {
                max_head: s.limits.max_head_bytes,
                max_request_line: s.limits.max_request_line_bytes,
                max_headers: s.limits.max_headers,
            },
            head_timeout: ms(s.limits.head_timeout_ms),
            first_byte_timeout: ms(s.limits.first_byte_timeout_ms),
            idle_timeout: ms(s.limits.idle_timeout_ms),
            response_timeout: ms(s.limits.response_timeout_ms),
            max_interim: s.limits.max_interim_responses,
            body_timeout: ms(s.limits.body_timeout_ms),
            body_min_rate: s.limits.body_min_bytes_per_sec,
            linger: ms(s.limits.linger_ms),
            tunnel_idle: ms(s.limits.tunnel_idle_timeout_ms),
            max_via_hops: s.limits.max_via_hops,
            max_connections: s.limits.max_connections.max(1),
            splice_threshold: s.limits.splice_threshold_bytes,
            pool: PoolConfig {
                max_idle_per_backend: s.pool.max_idle_per_backend,
                max_idle_total: s.pool.max_idle_total,
                idle_timeout: ms(s.pool.idle_timeout_ms),
                connect_timeout: ms(s.pool.connect_timeout_ms),
                mark: None,
                source: None,
            },
            eject: ms(s.pool.eject_ms),
            drain_idle: ms(s.shutdown_idle_ms),
            sticky_header: s
                .rollouts
                .sticky_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            shadow: shadow::ShadowConfig::of(&s.shadow),
            trace: s.trace.clone(),
            opaque_ports: s.interception.opaque_ports.clone(),
            detect_timeout: ms(s.interception.detect_timeout_ms),
            sync_timeout: ms(s.k8s.sync_timeout_ms),
            http2: s.http2.clone(),
        }
    }
}

/// State every connection shares.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub identifier: Identifier,
    /// Where intercepted connections were going (transparent modes only).
    pub orig_dst: Option<crate::intercept::OrigDst>,
    /// What connections' buffers may take in all.
    pub budget: MemoryBudget,
    /// Where diff mode's answers are compared (off the request path, in
    /// the copies' tasks).
    pub diff: Arc<crate::diff::Engine>,
    /// The Kubernetes namer, when on: which Service owns a ClusterIP, for
    /// requests without a usable Host (the `k8s` identifier).
    pub k8s: Option<Arc<crate::namer::k8s::K8sNamer>>,
    /// Told about every exchange when it ends (access log, dashboard,
    /// capture).
    pub observers: Vec<Arc<dyn crate::observe::exchange::Observer>>,
}

/// What one worker owns: its connections' deadlines and its idle backend
/// connections. Shared by the worker's tasks, never across threads.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub watchdog: Arc<Watchdog>,
    pub pool: RefCell<Pool>,
    /// Copies of requests on their way to other versions (shadowing),
    /// with their own pool.
    pub shadow: shadow::Shadow,
    /// Where lingering connections' unread bytes are read and dropped:
    /// one buffer per worker, not one per connection.
    drain: RefCell<Vec<u8>>,
    /// Buffers idle connections lent (at most `conn::SPARES`).
    pub spares: RefCell<Vec<conn::Spare>>,
    /// Backend connections for requests that came as HTTP/2.
    upstreams: http2::Upstreams,
    /// Memory for the exchanges in flight (`blocks::InBlock`), reused.
    pub blocks: blocks::Blocks,
    /// Seeds each new connection's random numbers: one `getrandom` per
    /// worker rather than one per connection.
    pub seeds: RefCell<rand::rngs::SmallRng>,
    /// The address every accepted connection has as its own, when the
    /// listener is bound to one (not a wildcard): no `getsockname` per
    /// connection to learn it.
    pub local: Option<std::net::SocketAddr>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, local: Option<std::net::SocketAddr>) -> Rc<Worker> {
        let pool = Pool::new(shared.cfg.pool);
        Rc::new(Worker {
            watchdog: Arc::new(Watchdog::default()),
            pool: RefCell::new(pool),
            shadow: shadow::Shadow::new(shared.cfg.pool),
            shared,
            drain: RefCell::default(),
            spares: RefCell::new(Vec::with_capacity(conn::SPARES)),
            upstreams: http2::Upstreams::default(),
            blocks: blocks::Blocks::default(),
            seeds: RefCell::new(rand::SeedableRng::from_os_rng()),
            local,
        })
    }

    /// The drain buffer (64 KiB, made on first use), for a read that
    /// holds it across no await.
    pub fn drain_buffer(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        let mut buf = self.drain.borrow_mut();
        if buf.is_empty() {
            buf.resize(DRAIN_BUFFER, 0);
        }
        buf
    }
}

/// Size of a worker's drain buffer.
const DRAIN_BUFFER: usize = 64 * 1024;

/// Serves one accepted connection on this worker, holding `permit`.
fn spawn_conn(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    worker: &Rc<Worker>,
) {
    // TCP_NODELAY comes from the listener (`serve` sets it there): an
    // accepted socket inherits it, so no setsockopt per connection.
    tokio::task::spawn_local(conn_task(stream, peer, permit, worker.clone()));
}

/// A connection's task: counted as active while it lasts, holding its
/// slot. What it holds while the connection idles is what a busy node
/// keeps per connection (see `conn::Conn::serve`).
fn conn_task(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    permit: OwnedSemaphorePermit,
    worker: Rc<Worker>,
) -> impl Future<Output = ()> {
    let metrics = &worker.shared.metrics;
    metrics.connections_total.inc();
    metrics.connections_active.inc();
    // Undone however the task ends: served, dropped at shutdown, or
    // dropped after a panic.
    let active = Active {
        shared: worker.shared.clone(),
        _slot: permit,
    };
    let mut conn = conn::Conn::new(stream, peer, worker);
    async move {
        // Served where the task holds it (a future made outside and
        // awaited here would be held twice: captured, and awaited).
        conn.serve().await;
        drop(conn);
        drop(active);
    }
}

/// A connection counted as active, holding its slot.
struct Active {
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.metrics.connections_active.dec();
    }
}

/// Accepts what is already queued on `listener`, without waiting, and
/// closes it; returns how many it took and how many slots it added. The
/// kernel finished their handshakes and closing would reset them, so each
/// is served, with a slot added for it where none is free (the backlog
/// bounds how many).
fn sweep_backlog(
    listener: TcpListener,
    slots: &Arc<Semaphore>,
    worker: &Rc<Worker>,
) -> (usize, usize) {
    // Off the reactor: a plain non-blocking accept answers WouldBlock as
    // soon as the queue is empty, whatever the reactor last saw.
    let Ok(listener) = listener.into_std() else {
        return (0, 0);
    };
    let (mut swept, mut added) = (0, 0);
    while let Ok((stream, peer)) = listener.accept() {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                slots.add_permits(1);
                added += 1;
                slots
                    .clone()
                    .try_acquire_owned()
                    .expect("a permit was just added")
            }
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            spawn_conn(stream, peer, permit, worker);
            swept += 1;
        }
    }
    (swept, added)
}

/// A connection slot for a new connection: a free one, or the one the
/// connection idle longest gives up. `None` when every connection is busy.
async fn slot(slots: &Arc<Semaphore>, worker: &Worker) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    if !worker.watchdog.close_oldest_idle() {
        return None;
    }
    worker.shared.metrics.connections_evicted.inc();
    // The closed connection's task gives its slot back when it next runs,
    // which is soon (it was woken); bounded, as a request may have come
    // in on it just as it was closed and be served first.
    worker
        .watchdog
        .timeout(EVICTION_WAIT, slots.clone().acquire_owned())
        .await
        .ok()
        .map(|p| p.expect("the semaphore is never closed"))
}

/// How long a new connection waits for the slot of the idle connection
/// closed for it before it is refused.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Why a new connection is refused.
#[derive(Clone, Copy)]
enum Refusal {
    /// `max_connections`, with none idle to close.
    Connections,
    /// The memory budget is nearly spent.
    MemoryBudget,
}

/// Refuses a connection at once: a 503 that says why (written without
/// waiting: the socket's buffer is empty) and a close, so the client can go
/// elsewhere now instead of waiting in the backlog.
fn refuse(stream: TcpStream, metrics: &Metrics, why: Refusal) {
    metrics.error(crate::observe::metrics::ErrorKind::Overloaded);
    let (answer, text) = match why {
        Refusal::Connections => (
            REFUSAL_CONNECTIONS,
            "refused a connection: every one of max_connections is busy",
        ),
        Refusal::MemoryBudget => (
            REFUSAL_MEMORY,
            "refused a connection: the memory budget is nearly spent",
        ),
    };
    if crate::observe::log_limit::allow() {
        tracing::warn!("{text}");
    }
    let _ = stream.try_write(answer);
    // What the client already sent, read so that closing does not reset
    // the connection under the answer (bounded: no waiting, a few reads).
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

const REFUSAL_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    l5d-err: the proxy is at its connection limit (limits.max_connections)\r\n\
    connection: close\r\ncontent-length: 0\r\n\r\n";

const REFUSAL_MEMORY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    l5d-err: the proxy is near its memory budget (limits.memory_budget_bytes)\r\n\
    connection: close\r\ncontent-length: 0\r\n\r\n";

/// What the workers are told through their watch channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Serve.
    No,
    /// Stop accepting, take what waits in the accept queue (the listener
    /// closes with this process), and drain.
    Drain,
    /// Stop accepting and drain; the accept queue is left to the successor
    /// that holds the same listening sockets.
    HandedOver,
}

/// Runs one worker on the calling thread until `shutdown` says stop and
/// its connections drained (see [`serve`]): a tokio current-thread runtime
/// with the I/O driver only (deadlines live on the watchdog), the
/// connections as tasks on a `LocalSet`, and, with `yield_before_wait`,
/// the yield of [`park`] before each park. Errs when the runtime or the
/// listener cannot be set up.
pub fn run_worker(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<Stop>,
    grace: Duration,
    yield_before_wait: bool,
) -> std::io::Result<bool> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    if yield_before_wait {
        builder.on_thread_park(park::before_park);
    }
    let runtime = builder.build()?;
    let local = tokio::task::LocalSet::new();
    listener.set_nonblocking(true)?;
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        // The accept loop is a task of its own, polled only when a client
        // or the shutdown wakes it: the future `block_on` drives is polled
        // on every wake of any task of the set, so it must cost nothing.
        match tokio::task::spawn_local(serve(listener, shared, shutdown, grace)).await {
            Ok(drained) => Ok(drained),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(false),
        }
    })
}

/// Accepts and serves until `shutdown` says stop, then drains for at most
/// `grace`. Returns whether every connection finished in time. Runs inside
/// a `LocalSet`: connections are local tasks.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<Stop>,
    grace: Duration,
) -> bool {
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux), so
    // it is set once here rather than on every connection.
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
    }
    let max = shared.cfg.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    let worker = Worker::new(shared, local);
    let watchdog = worker.watchdog.clone();
    if let Err(e) = watchdog.start_sweeper("sidetrack-watchdog".into()) {
        tracing::error!(error = %e, "cannot start the deadline sweeper; not serving");
        return false;
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s != Stop::No) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                let _ = watchdog
                    .timeout(Duration::from_millis(50), std::future::pending::<()>())
                    .await;
                continue;
            }
        };
        let budget = &worker.shared.budget;
        if budget.pressure() != Pressure::Normal {
            budget.count_shed_connection();
            refuse(stream, &worker.shared.metrics, Refusal::MemoryBudget);
            continue;
        }
        match slot(&slots, &worker).await {
            Some(permit) => spawn_conn(stream, peer, permit, &worker),
            None => refuse(stream, &worker.shared.metrics, Refusal::Connections),
        }
    }
    watchdog.drain(worker.shared.cfg.drain_idle);
    let (swept, added) = if *shutdown.borrow() == Stop::HandedOver {
        // The successor accepts from this very queue: nothing to take,
        // and closing our descriptor leaves the socket open in its hands.
        drop(listener);
        (0, 0)
    } else {
        // Interception is off by now (the caller switches it off before
        // it says stop), so nothing new is steered here; but connects
        // steered just before wait in the backlog, and closing the
        // listener would reset them. Take them first; each may still send
        // its request.
        sweep_backlog(listener, &slots, &worker)
    };
    if swept > 0 {
        tracing::info!(connections = swept, "took the connections still queued");
    }
    tracing::info!("stopped accepting; draining connections");
    // Every slot back, those the sweep added too.
    let drained = watchdog
        .timeout(grace, slots.acquire_many((max + added) as u32))
        .await
        .is_ok();
    if drained {
        tracing::info!("every connection finished");
    } else {
        tracing::warn!("grace period over with connections still open");
    }
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task holds the connection once, and no exchange.
    #[test]
    fn a_connection_task_is_the_connection_and_a_wait() {
        fn task_size<
            F: FnOnce(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit, Rc<Worker>) -> R,
            R,
        >(
            _: &F,
        ) -> usize {
            std::mem::size_of::<R>()
        }
        let task = task_size(&conn_task);
        let conn = std::mem::size_of::<conn::Conn>();
        eprintln!("task {task} bytes, the connection {conn}");
        assert!(
            task < conn + 1024,
            "task {task} bytes, the connection {conn}"
        );
    }
}
