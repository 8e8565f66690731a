//! One client connection: read a request head, route it, forward it, relay
//! the response, and loop for the next request on the same connection.
//!
//! An exchange runs four steps that read top to bottom (route, send, await
//! the final response, relay); what to do at each turn is decided by
//! [`policy`](super::policy) from the heads, and the steps here do the I/O.
//!
//! Buffers are reused by every request of a connection: `from_client`
//! holds what has been read from the client (a head, the start of a body,
//! pipelined requests after it), `from_backend` what has been read from the
//! backend, `heads` the heads the proxy writes. Parsed heads are offsets
//! into those buffers. While a connection waits idle for its next request
//! with nothing buffered, it lends them to its worker ([`Spare`]), which
//! keeps a few for the next connection that wakes and frees the rest: an
//! idle keep-alive connection holds no buffers, and a busy one takes them
//! back without allocating. Nor does its task hold an exchange: a request's
//! exchange runs in a block of the worker's ([`InBlock`]), so an idle
//! task is the connection and what waiting needs. A request that hits the
//! route cache allocates nothing.
//!
//! Requests are answered strictly in order, one at a time: a pipelined
//! request waits in `from_client` until the response before it is complete.
//!
//! Error responses the proxy makes carry `l5d-err`; an error before the
//! response head has gone out is answered, an error after it (a backend
//! dying mid-body) can only close the client connection.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    rc::Rc,
    sync::Arc,
    time::Instant,
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::net::TcpStream;

use super::{
    Shared, Worker,
    blocks::InBlock,
    budget::{self, MemoryBudget, OverBudget},
    observed::Observed,
    policy::{
        self, Attempt, ClientNext, ConnectionField, Relay, RequestBody, RequestFacts,
        ResponseFacts, SendFailure,
    },
    pool::{self, Liveness},
    routing::{self, RequestView, VIA, is_l5d_header, is_proxy_header, write_addr},
    shadow::{Copies, Tee},
    splice::{Broken, Pipe},
    stream::{self, copy_until_eof},
    tunnel,
    watchdog::{Deadline, Elapsed},
};
use crate::{
    http::{self, BodyLength, ChunkedScanner, HeadError, Known, Parsed, RequestHead, ResponseHead},
    namer::balancer::InFlight,
    observe::{
        exchange::Bodies,
        log_limit,
        metrics::ErrorKind,
        trace::{self, TIMING_HEADER, Timing},
    },
    policy::{
        mirror::{HostSettings, Verdict},
        signing::SIGNATURE_HEADER,
    },
    route::{Dest, Outcome, Route},
};

/// A deadline that never comes in practice (a year): for tunnels that
/// never idle out.
const NEVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The first allocation of a connection's read buffers; they grow up to the
/// head limit when a head needs it.
const INITIAL_BUF: usize = 8 * 1024;
/// The copy buffer of small bodies, and what it shrinks back to.
const SMALL_COPY: usize = 4096;
/// Chunk size for copying bodies through userspace.
const COPY_CHUNK: usize = 64 * 1024;

/// A parsed HTTP/1 request head and the buffer its spans index, as
/// routing sees a request.
struct H1View<'a> {
    req: &'a RequestHead,
    buf: &'a [u8],
}

impl RequestView for H1View<'_> {
    fn method(&self) -> &[u8] {
        self.req.method(self.buf)
    }
    fn target(&self) -> &[u8] {
        self.req.target(self.buf)
    }
    fn authority(&self) -> Option<&[u8]> {
        self.req.authority(self.buf)
    }
    fn version(&self) -> u8 {
        self.req.minor_version()
    }
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.req.get(self.buf, name)
    }
    fn any_value<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> bool) -> bool {
        self.req.get_all(self.buf, name).any(each)
    }
}

/// Why a request ended the connection or was answered by the proxy.
enum Failure {
    /// Answer with this status and `l5d-err` reason, count it, then close
    /// (`close`) or go on with the next request.
    Respond {
        status: u16,
        reason: String,
        kind: ErrorKind,
        close: bool,
    },
    /// Close without a word (the client went away, or a response was
    /// already under way).
    Close(Option<ErrorKind>),
}

impl Failure {
    fn respond(status: u16, kind: ErrorKind, reason: impl Into<String>) -> Failure {
        Failure::Respond {
            status,
            reason: reason.into(),
            kind,
            close: true,
        }
    }
}

impl From<HeadError> for Failure {
    fn from(e: HeadError) -> Failure {
        let kind = match e.status() {
            431 => ErrorKind::HeadTooLarge,
            414 => ErrorKind::UriTooLong,
            _ => ErrorKind::BadRequest,
        };
        Failure::respond(e.status(), kind, e.reason())
    }
}

pub struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    shared: Arc<Shared>,
    deadline: Arc<Deadline>,
    /// What has been read from the client: a head, the start of a body,
    /// pipelined requests after it.
    from_client: Vec<u8>,
    /// What has been read from the backend.
    from_backend: Vec<u8>,
    /// The heads the proxy writes (with a body that came whole).
    heads: Vec<u8>,
    /// The request's logical name, and its route-cache key.
    name: Vec<u8>,
    key: Vec<u8>,
    /// Room for copying bodies through userspace, and for draining.
    scratch: Vec<u8>,
    req: RequestHead,
    resp: ResponseHead,
    pipe: Option<Pipe>,
    rng: SmallRng,
    /// Where the client meant to connect (transparent modes).
    orig_dst: Option<SocketAddrV4>,
    /// Requests answered so far on this connection.
    served: u64,
    /// What the buffers are charged against the memory budget.
    charged: usize,
    /// The override policy's edge setting, for this request: every `l5d-`
    /// header the client sent is removed.
    edge: bool,
    /// The request's copies (shadowing), while its exchange runs.
    copies: Copies,
    /// The exchange as its observers will see it (access log, dashboard,
    /// capture); kept only when there are observers.
    obs: Observed,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.budget.recharge(self.charged, 0);
    }
}

/// The buffers a connection lends its worker while it waits idle between
/// requests; any connection of the worker may take them back.
pub struct Spare {
    from_client: Vec<u8>,
    from_backend: Vec<u8>,
    heads: Vec<u8>,
    name: Vec<u8>,
    key: Vec<u8>,
    scratch: Vec<u8>,
    /// The observers' copy of the request head.
    obs_head: Vec<u8>,
    req: RequestHead,
    resp: ResponseHead,
}

/// How many [`Spare`]s a worker keeps: enough for the connections that are
/// active at once on one worker; the buffers of the rest of the idle ones
/// are freed.
pub const SPARES: usize = 64;

/// Charges `now` bytes for a connection that was charged `charged`.
fn charge(charged: &mut usize, budget: &MemoryBudget, now: usize) {
    if now != *charged {
        budget.recharge(*charged, now);
        *charged = now;
    }
}

/// `l5d-err` of a request shed because a buffer could not grow.
const OVER_BUDGET: &str = "the proxy is at its memory budget and this request needs more room (limits.memory_budget_bytes)";

/// What a connection is charged besides its buffers: the connection
/// itself, its parsed heads' slots, its deadline and its task.
const CONN_BASE: usize = 2048;

/// A request on its way: the backend connection it went out on.
struct Upstream {
    conn: TcpStream,
    in_flight: InFlight,
    /// The connection came from the pool.
    reused: bool,
    interim_relayed: bool,
}

impl Upstream {
    /// This attempt, as the resend policy sees it.
    fn attempt(&self, whole: bool) -> Attempt {
        Attempt {
            reused: self.reused,
            whole,
            interim_relayed: self.interim_relayed,
        }
    }
}

/// The final response head, in `resp` and the first `head_len` bytes of
/// `from_backend`, and how far the request body got.
struct Answer {
    facts: ResponseFacts,
    head_len: usize,
    body: RequestBody,
}

/// What a new intercepted connection's client did first.
enum First {
    /// Sent bytes (or closed): parse them.
    Spoke,
    /// Nothing within the detection timeout (or an opaque port): tunnel.
    Silent,
    /// Closed by the proxy meanwhile (to make room, or draining).
    Evicted,
}

/// A deadline that fired this much before its time was pulled in.
const EARLY: std::time::Duration = std::time::Duration::from_millis(20);

/// How the exchange of one request ended, for the loop.
enum Next {
    /// Keep the client connection for another request.
    KeepAlive,
    Close,
}

impl Conn {
    pub fn new(client: TcpStream, peer: SocketAddr, worker: Rc<Worker>) -> Conn {
        let shared = worker.shared.clone();
        let shared_observers = shared.observers.clone();
        let max_headers = shared.cfg.limits.max_headers;
        let rng = SmallRng::from_rng(&mut *worker.seeds.borrow_mut());
        Conn {
            client,
            peer,
            shared,
            deadline: worker.watchdog.deadline(),
            worker,
            from_client: Vec::with_capacity(INITIAL_BUF),
            from_backend: Vec::with_capacity(INITIAL_BUF),
            heads: Vec::with_capacity(1024),
            name: Vec::with_capacity(128),
            key: Vec::with_capacity(256),
            scratch: Vec::new(),
            req: RequestHead::with_capacity(max_headers),
            resp: ResponseHead::with_capacity(max_headers),
            pipe: None,
            rng,
            orig_dst: None,
            served: 0,
            charged: 0,
            edge: false,
            copies: Copies::default(),
            obs: Observed::new(&shared_observers),
        }
    }

    /// Charges the buffers' capacity against the memory budget (what
    /// changed since the last time).
    fn account(&mut self) {
        let now = self.buffers_capacity();
        charge(&mut self.charged, &self.shared.budget, now);
    }

    fn buffers_capacity(&self) -> usize {
        CONN_BASE
            + self.from_client.capacity()
            + self.from_backend.capacity()
            + self.heads.capacity()
            + self.name.capacity()
            + self.key.capacity()
            + self.scratch.capacity()
            + self.copies.capacity()
    }

    /// Idle between requests with nothing buffered: lends the buffers to
    /// the worker (false, and nothing changes, when something is buffered).
    fn park(&mut self) -> bool {
        if !self.from_client.is_empty() || !self.from_backend.is_empty() {
            return false;
        }
        let cleared = |v: &mut Vec<u8>| {
            let mut v = std::mem::take(v);
            v.clear();
            v
        };
        let spare = Spare {
            from_client: std::mem::take(&mut self.from_client),
            from_backend: std::mem::take(&mut self.from_backend),
            heads: cleared(&mut self.heads),
            name: cleared(&mut self.name),
            key: cleared(&mut self.key),
            scratch: std::mem::take(&mut self.scratch),
            obs_head: cleared(&mut self.obs.head),
            req: std::mem::replace(&mut self.req, RequestHead::with_capacity(0)),
            resp: std::mem::replace(&mut self.resp, ResponseHead::with_capacity(0)),
        };
        let mut spares = self.worker.spares.borrow_mut();
        if spares.len() < SPARES {
            spares.push(spare);
        }
        drop(spares);
        self.account();
        true
    }

    /// Takes buffers back after [`Conn::park`]: a worker's spare ones, or
    /// new ones.
    fn unpark(&mut self) {
        let spare = self.worker.spares.borrow_mut().pop();
        let spare = spare.unwrap_or_else(|| {
            let max_headers = self.shared.cfg.limits.max_headers;
            Spare {
                from_client: Vec::with_capacity(INITIAL_BUF),
                from_backend: Vec::with_capacity(INITIAL_BUF),
                heads: Vec::with_capacity(1024),
                name: Vec::with_capacity(128),
                key: Vec::with_capacity(256),
                scratch: Vec::new(),
                obs_head: Vec::new(),
                req: RequestHead::with_capacity(max_headers),
                resp: ResponseHead::with_capacity(max_headers),
            }
        });
        self.from_client = spare.from_client;
        self.from_backend = spare.from_backend;
        self.heads = spare.heads;
        self.name = spare.name;
        self.key = spare.key;
        self.scratch = spare.scratch;
        self.obs.head = spare.obs_head;
        self.req = spare.req;
        self.resp = spare.resp;
        self.account();
    }

    /// Between requests with the budget nearly spent: the buffers give
    /// back what they grew to beyond their first size (keeping what
    /// they hold: pipelined bytes).
    fn shrink_if_pressed(&mut self) {
        if self.shared.budget.pressure() == budget::Pressure::Normal {
            return;
        }
        self.from_client.shrink_to(INITIAL_BUF);
        self.from_backend.shrink_to(INITIAL_BUF);
        self.heads.shrink_to(1024);
        self.scratch.truncate(SMALL_COPY);
        self.scratch.shrink_to(SMALL_COPY);
        self.copies.shrink();
    }

    /// Serves the connection until it ends (then drop it). Through a
    /// borrow: an `async fn` taking the connection by value would hold it
    /// twice in its future (the argument, and the binding it is moved
    /// into), and an idle connection's task is memory kept per connection.
    pub async fn serve(&mut self) {
        // Its own handle: the exchange's block is the worker's, and the
        // exchange borrows the connection.
        let worker = self.worker.clone();
        if let Some(orig) = &self.shared.orig_dst {
            self.orig_dst = orig.lookup(&self.client, self.peer, self.worker.local);
        }
        self.account();
        // An intercepted connection that is not HTTP/1 by its port, or
        // whose client says nothing at first (a server-first protocol),
        // goes to where it was going, untouched.
        if let Some(dst) = self.orig_dst {
            let opaque = self.shared.cfg.opaque_ports.contains(&dst.port())
                || self
                    .shared
                    .k8s
                    .as_ref()
                    .is_some_and(|k| k.is_opaque(*dst.ip(), dst.port()));
            let first = if opaque {
                First::Silent
            } else {
                self.client_speaks_first().await
            };
            match first {
                First::Spoke => {}
                First::Silent => {
                    // Boxed (once per connection), as the HTTP/2 path and
                    // the exchange: the task's future is as large as its
                    // largest state, and every idle connection carries it.
                    let tunnel = Box::pin(self.tunnel_opaque());
                    tunnel.await;
                    return;
                }
                // Closed to make room, or the proxy drains: as an idle
                // connection would be.
                First::Evicted => return,
            }
        }
        loop {
            let head_len = self.read_request_head().await;
            self.account();
            let head_len = match head_len {
                Ok(Some(n)) => n,
                Ok(None) => return,
                // HTTP/2 with prior knowledge: the client preface.
                Err(Failure::Respond { .. })
                    if self.served == 0
                        && self.shared.cfg.http2.enabled
                        && super::http2::is_preface(&self.from_client) =>
                {
                    let from = routing::Origin {
                        peer: self.peer,
                        orig_dst: self.orig_dst,
                    };
                    let read = std::mem::take(&mut self.from_client);
                    let h2 = Box::pin(super::http2::serve(
                        &self.client,
                        read,
                        from,
                        &self.worker,
                        &self.deadline,
                    ));
                    h2.await;
                    return;
                }
                // Not HTTP, on an intercepted connection: pass it on untouched.
                Err(Failure::Respond {
                    kind: ErrorKind::BadRequest,
                    ..
                }) if self.served == 0 && self.orig_dst.is_some() => {
                    let tunnel = Box::pin(self.tunnel_opaque());
                    tunnel.await;
                    return;
                }
                Err(f) if self.obs.on && !matches!(f, Failure::Close(_)) => {
                    // A head the proxy refused: logged without its fields.
                    self.obs.begin(Instant::now(), &[], false);
                    self.fail(f).await;
                    self.observe();
                    return;
                }
                Err(f) => {
                    self.fail(f).await;
                    return;
                }
            };
            self.served += 1;
            let timing = match self.shared.cfg.trace.timing {
                Timing::Off => false,
                Timing::Always => true,
                Timing::OnRequest => self.req.get(&self.from_client, TIMING_HEADER).is_some(),
            };
            if self.obs.on || timing {
                self.obs
                    .begin(Instant::now(), &self.from_client[..head_len], timing);
            }
            // In a block of the worker's while it runs: an idle
            // connection's task does not carry an exchange's state (made
            // apart from the await: a temporary of the awaiting statement
            // would take its room in the task all the same).
            let exchange = InBlock::new(&worker.blocks, self.exchange(head_len));
            let next = exchange.await;
            self.shrink_if_pressed();
            self.account();
            match next {
                Ok(Next::KeepAlive) => self.observe(),
                Ok(Next::Close) => {
                    self.observe();
                    return;
                }
                Err(mut f) => {
                    // A refusal that would keep the connection comes before
                    // anything was forwarded, so the head is still in
                    // `from_client`: a client that asked for the close (or
                    // an HTTP/1.0 one that did not ask to keep the
                    // connection) is told so, and the connection ends (RFC
                    // 9112 §9.6).
                    if let Failure::Respond { close, .. } = &mut f
                        && !*close
                    {
                        *close = http::wants_close(
                            self.req.minor_version(),
                            self.req.get_all(&self.from_client, Known::Connection),
                        );
                    }
                    let close =
                        matches!(f, Failure::Close(_) | Failure::Respond { close: true, .. });
                    self.fail(f).await;
                    self.observe();
                    if close {
                        return;
                    }
                    // Only a refusal before anything was forwarded keeps the
                    // connection, and only for a request without a body: its
                    // head is all there is to skip.
                    self.from_client.drain(..head_len);
                }
            }
        }
    }

    /// Whether the client of a new connection sends something within the
    /// detection timeout (what it sent is kept in `from_client`). A client
    /// that closes counts as speaking: the loop then sees the end.
    async fn client_speaks_first(&mut self) -> First {
        let after = self.shared.cfg.detect_timeout;
        if after.is_zero() {
            return First::Spoke;
        }
        // Usually the request is there already: read now (the read the
        // head would have needed), no wait, no timer.
        match stream::try_read_buf_now(&self.client, &mut self.from_client) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return First::Spoke,
        }
        let until = Instant::now() + after;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            // Idle-marked: a connection that has said nothing is the first
            // to make room at max_connections, as between requests.
            let ready = stream::read_ready(&self.client);
            if self
                .deadline
                .within(&self.worker.watchdog, left, true, ready)
                .await
                .is_err()
            {
                // Early: the deadline was pulled in (evicted, draining).
                return if Instant::now() + EARLY < until {
                    First::Evicted
                } else {
                    First::Silent
                };
            }
            // Readiness can be stale (a socket the eBPF programs redirect
            // into reports it with nothing queued): only bytes, or the
            // end, count. This read clears a stale readiness.
            match self.client.try_read_buf(&mut self.from_client) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return First::Spoke,
            }
        }
    }

    /// Tunnels a connection that does not speak HTTP to where its client
    /// was connecting, with what was read so far sent first.
    async fn tunnel_opaque(&mut self) {
        let Some(dst) = self.orig_dst else { return };
        let cfg = &self.shared.cfg;
        let backend = match pool::connect(SocketAddr::V4(dst), &cfg.pool, &self.worker.watchdog)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                self.shared.metrics.error(ErrorKind::ConnectFailed);
                tracing::debug!(peer = %self.peer, %dst, error = %e, "opaque connection: connect failed");
                return;
            }
        };
        self.shared.metrics.opaque_connections.inc();
        tracing::debug!(peer = %self.peer, %dst, "not HTTP: tunnelling to the original destination");
        if stream::write_all(&backend, &self.from_client)
            .await
            .is_err()
        {
            return;
        }
        // A tunnel neither side has said anything on yet (a silent client,
        // tunnelled by detection or by its port) must see a first byte
        // within the first-byte timeout, as a request would: otherwise
        // idle connections would hold their slots for the tunnel idle
        // timeout. A server-first protocol's banner is that first byte.
        let quiet = self
            .from_client
            .is_empty()
            .then_some(self.shared.cfg.first_byte_timeout);
        if let Some(after) = quiet {
            // Until a side speaks the connection is idle (evictable at
            // max_connections), as a connection waiting for its request.
            let (client, watchdog) = (&self.client, &*self.worker.watchdog);
            let either = async {
                tokio::select! {
                    r = stream::read_ready(client) => r,
                    r = stream::read_ready(&backend) => r,
                }
            };
            if self
                .deadline
                .within(watchdog, after, true, either)
                .await
                .is_err()
            {
                self.shared.metrics.error(ErrorKind::TunnelIdle);
                return;
            }
        }
        self.tunnel(&backend, self.from_client.len() as u64, quiet)
            .await;
    }

    /// Runs the byte tunnel between the client and `backend` until both
    /// directions end, or nothing moves either way for `tunnel_idle`, and
    /// counts the bytes moved (with `sent_first`, those written before)
    /// however it ends: a tunnel's usual end is a reset or the idle timeout.
    async fn tunnel(
        &self,
        backend: &TcpStream,
        sent_first: u64,
        quiet: Option<std::time::Duration>,
    ) {
        let cfg = &self.shared.cfg;
        let metrics = &self.shared.metrics;
        let splice = cfg.splice_threshold != u64::MAX;
        let after = cfg.tunnel_idle;
        // A task of this worker's: nothing here needs to be Send.
        let moved = std::cell::Cell::new(sent_first);
        let count = |n: usize| moved.set(moved.get() + n as u64);
        if after.is_zero() && quiet.is_none() {
            let _ = tunnel::run(&self.client, backend, splice, &count).await;
        } else {
            // Zero: tunnels never idle out, once a byte has moved.
            let idle = if after.is_zero() { NEVER } else { after };
            let (deadline, watchdog) = (&*self.deadline, &*self.worker.watchdog);
            let progress = |n| {
                count(n);
                deadline.extend(watchdog, idle);
            };
            let moving = tunnel::run(&self.client, backend, splice, &progress);
            let first = quiet.unwrap_or(idle);
            if deadline
                .within(watchdog, first, false, moving)
                .await
                .is_err()
            {
                metrics.error(ErrorKind::TunnelIdle);
                tracing::debug!(peer = %self.peer, idle = ?after, "tunnel idle: closed");
            }
        }
        let moved = moved.into_inner();
        if splice {
            metrics.bytes_spliced.inc_by(moved)
        } else {
            metrics.bytes_copied.inc_by(moved)
        };
    }

    /// After an error response and our FIN: reads and drops what the
    /// client still sends (the rest of a body, say) until it closes too or
    /// `linger` passes. Closing a socket with unread bytes resets the
    /// connection, and a reset can destroy the response before the client
    /// reads it (RFC 9112 §9.6). Idle-marked: a draining proxy stops at once.
    async fn linger(&mut self) {
        let after = self.shared.cfg.linger;
        if after.is_zero() {
            return;
        }
        let client = &self.client;
        let worker = &self.worker;
        let drain = async {
            loop {
                if stream::read_ready(client).await.is_err() {
                    return;
                }
                // The worker's one drain buffer, borrowed for the read
                // only: a lingering connection holds no buffer of its own.
                let read = client.try_read(&mut worker.drain_buffer());
                match read {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = self
            .deadline
            .within(&self.worker.watchdog, after, true, drain)
            .await;
    }

    /// The exchange that just ended, to the observers.
    fn observe(&mut self) {
        if !self.obs.on {
            return;
        }
        let bodies = self.obs.keep.map(|_| Bodies {
            request_head: &self.obs.head,
            request_body: self.copies.body.kept(),
            response_head: &self.heads[..self.obs.response_head.min(self.heads.len())],
            response_body: self.copies.live.kept(),
        });
        self.obs
            .tell(&self.shared.observers, self.peer, &self.req, bodies);
        // What the exchange kept is not held on to until the next one.
        self.obs.route = None;
    }

    /// `l5d-timing` with the proxy's spans so far, into the head waiting
    /// in `heads` (which ends at `head_end`), before its blank line.
    fn add_timing(&mut self, head_end: usize) {
        let mut line = Vec::with_capacity(96);
        line.extend_from_slice(TIMING_HEADER.as_bytes());
        line.extend_from_slice(b": ");
        let s = &self.obs.spans;
        trace::write_timing(
            &mut line,
            &[
                ("identify", s.identified),
                ("route", s.routed),
                ("connect", s.connected),
            ],
        );
        line.extend_from_slice(b"\r\n");
        let at = head_end - 2;
        self.heads.splice(at..at, line);
    }

    /// Answers or counts a failure. Errors the proxy answers carry `l5d-err`.
    async fn fail(&mut self, f: Failure) {
        match f {
            Failure::Respond {
                status,
                reason,
                kind,
                close,
            } => {
                self.shared.metrics.error(kind);
                tracing::debug!(peer = %self.peer, status, reason, "request refused");
                self.heads.clear();
                http::write_error(&mut self.heads, status, &reason, close);
                let written = stream::write_all(&self.client, &self.heads).await;
                if self.obs.on {
                    self.obs.error = Some(kind);
                    if written.is_ok() {
                        self.obs.status = status;
                        self.obs.bytes_out += self.heads.len() as u64;
                        self.obs.response_head = self.heads.len();
                    }
                }
                if close {
                    stream::shutdown_write(&self.client);
                    self.linger().await;
                }
            }
            Failure::Close(kind) => {
                if let Some(kind) = kind {
                    self.shared.metrics.error(kind);
                    if self.obs.on {
                        self.obs.error = Some(kind);
                    }
                }
            }
        }
    }

    /// Reads until `from_client` holds a whole request head. `None` when the client
    /// closed (or idled out, or the proxy is draining) between requests.
    async fn read_request_head(&mut self) -> Result<Option<usize>, Failure> {
        // Its own handle: `park` and `unpark` borrow the connection.
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.from_client.is_empty() {
                let parsed = match self.req.parse(&self.from_client, &cfg.limits) {
                    Err(HeadError::UnsupportedVersion)
                        if http::read_later_minor_as_1_1(&mut self.from_client) =>
                    {
                        self.req.parse(&self.from_client, &cfg.limits)?
                    }
                    parsed => parsed?,
                };
                match parsed {
                    Parsed::Complete { head_len } => return Ok(Some(head_len)),
                    Parsed::Partial => {}
                }
                deadline.get_or_insert_with(|| Instant::now() + cfg.head_timeout);
            }
            let max_head = cfg.limits.max_head;
            let read = match deadline {
                // Between requests: wait as long as the idle timeout, and
                // give up at once when the proxy drains. Except for the
                // first request of a connection accepted while draining
                // (one still queued when the listener closed): it came to
                // be served, so it gets the head timeout. A new connection
                // gets the first-byte timeout: one that says nothing must
                // not hold a slot for the idle timeout.
                None => {
                    let (after, idle) = if self.served == 0 && self.worker.watchdog.draining() {
                        (cfg.head_timeout, false)
                    } else if self.served == 0 {
                        (cfg.first_byte_timeout, true)
                    } else {
                        (cfg.idle_timeout, true)
                    };
                    // Idle with nothing buffered: wait without buffers.
                    // The socket's readiness may be left over from the
                    // last read, so a wake-up is only a hint: a read that
                    // finds nothing clears it, and the wait starts again.
                    let mut idle_read = None;
                    while self.served > 0 && self.park() {
                        let ready = stream::read_ready(&self.client);
                        let waited = self
                            .deadline
                            .within(&self.worker.watchdog, after, idle, ready)
                            .await;
                        self.unpark();
                        if let Err(Elapsed) = waited {
                            return Ok(None);
                        }
                        match self.client.try_read_buf(&mut self.from_client) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            r => {
                                idle_read = Some(r);
                                break;
                            }
                        }
                    }
                    if let Some(r) = idle_read {
                        r
                    } else {
                        let wait = read_more(
                            &self.client,
                            &mut self.from_client,
                            max_head,
                            &self.shared.budget,
                        );
                        match self
                            .deadline
                            .within(&self.worker.watchdog, after, idle, wait)
                            .await
                        {
                            Ok(r) => r,
                            Err(Elapsed) => return Ok(None),
                        }
                    }
                }
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    let wait = read_more(
                        &self.client,
                        &mut self.from_client,
                        max_head,
                        &self.shared.budget,
                    );
                    match self
                        .deadline
                        .within(&self.worker.watchdog, left, false, wait)
                        .await
                    {
                        Ok(r) => r,
                        Err(Elapsed) => {
                            return Err(Failure::respond(
                                408,
                                ErrorKind::HeadTimeout,
                                "timed out reading the request head",
                            ));
                        }
                    }
                }
            };
            match read {
                Ok(0) if self.from_client.is_empty() => return Ok(None),
                Ok(0) => return Err(Failure::Close(Some(ErrorKind::ClientDied))),
                // A head that does not end grows the buffer read by read:
                // charged as it grows, not when it is whole.
                Ok(_) => {
                    let now = self.buffers_capacity();
                    charge(&mut self.charged, &self.shared.budget, now);
                }
                Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Err(Failure::respond(503, ErrorKind::Overloaded, OVER_BUDGET));
                }
                Err(_) => return Err(Failure::Close(Some(ErrorKind::ClientDied))),
            }
        }
    }

    /// One request and its response, in four steps: route, send, await the
    /// final response, relay. On return, `from_client` starts at the next
    /// request (if any bytes of it arrived).
    async fn exchange(&mut self, head_len: usize) -> Result<Next, Failure> {
        let started = Instant::now();
        if http::max_forwards(&self.req, &self.from_client) == Some(0) {
            return self.answer_max_forwards(head_len).await;
        }
        let (mut route, mut req) = self.route()?;
        if matches!(route.outcome, Outcome::Pending(_)) {
            (route, req) = self.await_synced(route, req).await?;
        }
        // A refusal after routing keeps the connection only when the request
        // has no body left to skip.
        // A rollout sticks to the request's key (a customer id) when it has one.
        let sticky = match &self.shared.cfg.sticky_header {
            Some(name) => self.req.get(&self.from_client, name.as_str()),
            None => None,
        };
        if self.obs.on || self.obs.timing {
            self.obs.routed(&route, &self.shared.observers);
        }
        let dest = pick_dest(&route, &mut self.rng, sticky, req.body != BodyLength::None)?;
        dest.stats.requests.inc();
        self.copies.clear();
        if !route.mirrors.is_empty() {
            self.choose_copies(&route, &req);
        }
        if self.obs.on {
            self.obs.picked(&route, dest);
            self.obs.mirrored = self.copies.any();
        }
        let (whole, head_end) = self.write_upstream_head(&route, dest, &req, head_len);
        // The request body is kept for copies, and for observers that
        // asked (capture), up to the larger of their limits.
        let keep_body = match (self.copies.any(), self.obs.keep) {
            (true, keep) => Some(self.shared.cfg.shadow.max_body.max(keep.unwrap_or(0))),
            (false, keep) => keep,
        };
        if let Some(limit) = keep_body {
            self.copies.body.start(limit);
            if whole {
                self.copies.body.take(&self.heads[head_end..]);
                self.copies.body.finish();
            } else if matches!(req.body, BodyLength::Length(n) if n > limit as u64) {
                // Known too large: the live body streams (or is spliced)
                // as ever, and there is no copy.
                self.copies.body.give_up();
            }
        }
        let mut upstream = self.send(dest, &req, whole, started, head_end).await?;
        let answer = self
            .await_final_response(dest, &req, whole, &mut upstream)
            .await?;
        let next = self.relay(dest, &req, answer, upstream).await?;
        if self.copies.any() {
            self.copies.dispatch(&self.worker);
        }
        Ok(next)
    }

    /// A route a namer could not bind yet (it has not synced what the name
    /// needs): routed again every few milliseconds until it binds or
    /// `sync_timeout` passes (the last answer, pending, is then a 503).
    /// Pending routes are not cached, so each try binds afresh.
    async fn await_synced(
        &mut self,
        route: Arc<Route>,
        req: RequestFacts,
    ) -> Result<(Arc<Route>, RequestFacts), Failure> {
        let watchdog = self.worker.watchdog.clone();
        let timeout = self.shared.cfg.sync_timeout;
        let pending =
            |(r, _): &(Arc<Route>, RequestFacts)| matches!(r.outcome, Outcome::Pending(_));
        routing::until_synced(&watchdog, timeout, (route, req), pending, || self.route()).await
    }

    /// Which of the route's mirrors take a copy of this request, and the
    /// copies' heads. A request that is itself a copy (it carries the
    /// marker header) is not copied again, nor is an upgrade or CONNECT.
    fn choose_copies(&mut self, route: &Arc<Route>, req: &RequestFacts) {
        let buf = &self.from_client[..];
        let cfg = &self.shared.cfg.shadow;
        if req.kind.upgrade
            || req.kind.connect
            || self.req.get(buf, cfg.marker_header.as_str()).is_some()
        {
            return;
        }
        let method = self.req.method(buf);
        for (index, bound) in route.mirrors.iter().enumerate() {
            let sticky = match &bound.mirror.sticky_header {
                Some(h) => self.req.get(buf, h.as_str()),
                None => None,
            };
            match bound.mirror.takes(method, sticky, self.rng.random()) {
                Verdict::Copy => {}
                Verdict::Skip => continue,
                Verdict::Write => {
                    bound.stats.writes_skipped.inc();
                    continue;
                }
            }
            // A suffix needs a Host to add it to; a fixed Host is set anyway.
            let mut host = Vec::new();
            let authority = self.req.authority(buf);
            let new_host = match (authority, &bound.mirror.host) {
                (None, HostSettings::Suffix) => None,
                _ => bound.mirror.host(authority.unwrap_or_default(), &mut host),
            };
            let replace_host = new_host.is_some();
            let request_header = cfg.request_header.as_bytes();
            let edge = self.edge;
            let mut extra: [(&[u8], &[u8]); 6] = [(b"", b""); 6];
            let mut n = 0;
            for (k, v, on) in [
                (cfg.marker_header.as_bytes(), &b"1"[..], true),
                (b"Host", new_host.unwrap_or_default(), replace_host),
                (b"l5d-dst-service", route.name.as_bytes(), true),
                (
                    b"l5d-ctx-dtab",
                    route.local_dtab.as_bytes(),
                    !route.local_dtab.is_empty(),
                ),
                (b"Via", VIA, true),
            ] {
                if on {
                    extra[n] = (k, v);
                    n += 1;
                }
            }
            let mut head = Vec::with_capacity(self.req.head_len() + 128);
            http::write_request(
                &mut head,
                &self.req,
                buf,
                &req.body,
                false,
                |name: &[u8]| {
                    is_proxy_header(name)
                        || http::eq_ignore_case_lower(name, request_header)
                        || (replace_host && http::eq_ignore_case_lower(name, b"host"))
                        || (edge && is_l5d_header(name))
                },
                &extra[..n],
            );
            self.copies.choose(route, index, head);
        }
    }

    /// A TRACE or OPTIONS that may be forwarded no further is answered by
    /// the proxy as its final recipient (RFC 9110 §7.6.2). A request body
    /// is not read: the connection closes after the answer.
    async fn answer_max_forwards(&mut self, head_len: usize) -> Result<Next, Failure> {
        let buf = &self.from_client[..];
        let framing = http::request_body(&self.req, buf)?;
        let close = framing.length != BodyLength::None
            || http::wants_close(
                self.req.minor_version(),
                self.req.get_all(buf, Known::Connection),
            );
        let trace = self.req.method(buf) == b"TRACE";
        self.heads.clear();
        http::write_max_forwards_answer(&mut self.heads, trace, VIA, close);
        if stream::write_all(&self.client, &self.heads).await.is_err() {
            return Err(Failure::Close(Some(ErrorKind::ClientDied)));
        }
        if close {
            stream::shutdown_write(&self.client);
            self.linger().await;
            return Ok(Next::Close);
        }
        self.from_client.drain(..head_len);
        Ok(Next::KeepAlive)
    }

    /// Route: the request's logical name, its dtab headers, and the binding
    /// (cached), with the facts the later steps decide on.
    fn route(&mut self) -> Result<(Arc<Route>, RequestFacts), Failure> {
        let shared = &*self.shared;
        let buf = &self.from_client[..];
        let req = &self.req;
        let hops = http::via_hops(req, buf);
        if hops >= shared.cfg.max_via_hops {
            return Err(Failure::respond(
                508,
                ErrorKind::Loop,
                format!("request passed through {hops} proxies (Via); refusing a routing loop"),
            ));
        }
        let framing = http::request_body(req, buf)?;
        let view = H1View { req, buf };
        let from = routing::Origin {
            peer: self.peer,
            orig_dst: self.orig_dst,
        };
        let routed = routing::route(
            shared,
            &view,
            from,
            &mut self.name,
            &mut self.key,
            &mut self.obs,
        )
        .map_err(|r| Failure::Respond {
            close: r.always_close || framing.length != BodyLength::None,
            status: r.status,
            reason: r.reason,
            kind: r.kind,
        })?;
        self.edge = routed.edge;
        let route = routed.route;
        Ok((route, RequestFacts::of(req, buf, framing)))
    }

    /// The head to send on, into `heads`, with the body when it arrived
    /// whole with the head; the head leaves `from_client`. Returns whether
    /// the request is whole in `heads` (and so can be written again), and
    /// where in `heads` the head ends (and that body starts).
    fn write_upstream_head(
        &mut self,
        route: &Route,
        dest: &Dest,
        req: &RequestFacts,
        head_len: usize,
    ) -> (bool, usize) {
        let view = H1View {
            req: &self.req,
            buf: &self.from_client,
        };
        let ids = routing::Ids::of(&view, self.edge, &self.shared, &mut self.rng, &mut self.obs);
        // HTTP/1.1 requires Host (RFC 9112 §3.2): an HTTP/1.0 request
        // without one (routed by its original destination in the
        // transparent modes) gets that address, or an empty value.
        let mut host_text = [0u8; 21];
        let host = missing_host(
            self.req.authority(&self.from_client),
            self.orig_dst,
            &mut host_text,
        );
        // A TRACE or OPTIONS goes on with one forward less (0 was answered).
        let max_forwards = http::max_forwards(&self.req, &self.from_client);
        let mut forwards_text = [0u8; 20];
        let forwards = max_forwards.map(|n| http::decimal(n - 1, &mut forwards_text));
        // A signed override goes on with its signature: the next hop
        // checks the same canonical text.
        let signature = match route.signed_until {
            Some(_) => self.req.get(&self.from_client, SIGNATURE_HEADER),
            None => None,
        };
        let mut extra = [(&b""[..], &b""[..]); routing::MAX_ADDED];
        let n = routing::added(
            &mut extra, route, dest, &ids, signature, forwards, host, VIA,
        );
        let dropped = routing::Dropped {
            edge: self.edge,
            max_forwards: max_forwards.is_some(),
            request_header: self.shared.cfg.shadow.request_header.as_bytes(),
            timing: self.obs.timing,
        };
        self.heads.clear();
        http::write_request(
            &mut self.heads,
            &self.req,
            &self.from_client,
            &req.body,
            req.kind.upgrade,
            |name: &[u8]| dropped.drops(name),
            &extra[..n],
        );
        self.from_client.drain(..head_len);
        let head_end = self.heads.len();
        // A body that arrived whole with the head goes out with it.
        let whole = take_whole_body(
            &mut self.from_client,
            &req.body,
            &mut self.heads,
            &self.shared,
        );
        self.obs.bytes_in += (self.heads.len() - head_end) as u64;
        (whole, head_end)
    }

    /// Send: a backend connection (pooled or new), and the head (with the
    /// body when whole) written on it. A pooled connection that fails the
    /// write is replaced once when the policy allows.
    async fn send(
        &mut self,
        dest: &Dest,
        req: &RequestFacts,
        whole: bool,
        started: Instant,
        head_end: usize,
    ) -> Result<Upstream, Failure> {
        let mut upstream = self
            .connect(dest, started, policy::liveness(req, whole))
            .await?;
        if self.obs.track() {
            self.obs.spans.connected = Some(self.obs.since());
        }
        if self.obs.timing {
            self.add_timing(head_end);
        }
        loop {
            match stream::write_all(&upstream.conn, &self.heads).await {
                Ok(()) => return Ok(upstream),
                Err(e) if policy::may_resend(req, upstream.attempt(whole), SendFailure::Write) => {
                    tracing::debug!(error = %e, "pooled connection failed; sending on a new one");
                    self.reconnect(dest, &mut upstream).await?;
                }
                Err(e) => {
                    return Err(write_failed(dest, &upstream, &e));
                }
            }
        }
    }

    /// Await the final response: the request body (unless the client waits
    /// for a 100 Continue), interim responses relayed, the response
    /// timeout from the send to the final head. A pooled connection that
    /// closes before any answer is replaced once when the policy allows.
    async fn await_final_response(
        &mut self,
        dest: &Dest,
        req: &RequestFacts,
        whole: bool,
        upstream: &mut Upstream,
    ) -> Result<Answer, Failure> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let response_timeout = cfg.response_timeout;
        // One deadline from the send to the final head: interim responses
        // do not push it on.
        let respond_by = Instant::now() + response_timeout;
        let mut interim = 0;
        let mut body = if whole {
            RequestBody::Sent
        } else {
            RequestBody::Held
        };
        if !whole && (!req.expects_continue || !self.from_client.is_empty()) {
            body = self.send_request_body(&upstream.conn, &req.body).await?;
        }
        loop {
            // While the body waits for a 100 Continue, the client may send
            // it anyway (it need not wait long, RFC 9110 §10.1.1): watch
            // for that too, or a backend that waits for the body and a
            // client that waits for an answer would wait on each other.
            let body_held = body == RequestBody::Held;
            let client = &self.client;
            let head = read_response_head(
                &upstream.conn,
                &mut self.from_backend,
                &mut self.resp,
                &cfg.limits,
                &self.shared.budget,
            );
            let wait = async {
                if body_held {
                    tokio::select! {
                        biased;
                        head = head => Waited::Head(head),
                        _ = stream::read_ready(client) => Waited::Client,
                    }
                } else {
                    Waited::Head(head.await)
                }
            };
            let left = respond_by.saturating_duration_since(Instant::now());
            let waited = self
                .deadline
                .within(&self.worker.watchdog, left, false, wait)
                .await;
            let head_len = match waited {
                Ok(Waited::Head(Ok(n))) => {
                    self.account();
                    if self.obs.track() && self.obs.spans.first_byte.is_none() {
                        self.obs.spans.first_byte = Some(self.obs.since());
                    }
                    n
                }
                Ok(Waited::Client) => {
                    // Readiness can be stale: only bytes mean a body.
                    match self.client.try_read_buf(&mut self.from_client) {
                        Ok(0) => return Err(Failure::Close(Some(ErrorKind::ClientDied))),
                        Ok(_) => body = self.send_request_body(&upstream.conn, &req.body).await?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(Failure::Close(Some(ErrorKind::ClientDied))),
                    }
                    continue;
                }
                Err(Elapsed) => {
                    return Err(upstream_failure(
                        dest,
                        504,
                        ErrorKind::BackendTimeout,
                        format!(
                            "{} did not answer within {response_timeout:?}",
                            upstream.in_flight.backend().addr(),
                        ),
                    ));
                }
                Ok(Waited::Head(Err(ReadHeadError::ClosedBeforeResponse)))
                    if policy::may_resend(
                        req,
                        upstream.attempt(whole),
                        SendFailure::ClosedBeforeResponse,
                    ) =>
                {
                    tracing::debug!(
                        "pooled connection closed before answering; sending on a new one"
                    );
                    self.reconnect(dest, upstream).await?;
                    if let Err(e) = stream::write_all(&upstream.conn, &self.heads).await {
                        return Err(write_failed(dest, upstream, &e));
                    }
                    continue;
                }
                Ok(Waited::Head(Err(ReadHeadError::OverBudget))) => {
                    return Err(upstream_failure(
                        dest,
                        503,
                        ErrorKind::Overloaded,
                        OVER_BUDGET.into(),
                    ));
                }
                Ok(Waited::Head(Err(e))) => {
                    return Err(upstream_failure(
                        dest,
                        502,
                        ErrorKind::BackendHead,
                        format!(
                            "bad response from {}: {e}",
                            upstream.in_flight.backend().addr()
                        ),
                    ));
                }
            };
            let status = self.resp.status();
            if (100..200).contains(&status) && status != 101 {
                interim += 1;
                if interim > cfg.max_interim {
                    return Err(upstream_failure(
                        dest,
                        502,
                        ErrorKind::BackendHead,
                        format!(
                            "{} sent more than {} interim responses",
                            upstream.in_flight.backend().addr(),
                            cfg.max_interim
                        ),
                    ));
                }
                // Interim responses are relayed (hop-by-hop fields dropped)
                // where the policy says; `heads` is free: a request that
                // had an answer is not sent again.
                if policy::relays_interim(req) {
                    self.heads.clear();
                    http::write_interim(&mut self.heads, &self.resp, &self.from_backend);
                    stream::write_all(&self.client, &self.heads)
                        .await
                        .map_err(|_| Failure::Close(Some(ErrorKind::ClientDied)))?;
                }
                self.from_backend.drain(..head_len);
                upstream.interim_relayed = true;
                if status == 100 && body == RequestBody::Held {
                    body = self.send_request_body(&upstream.conn, &req.body).await?;
                }
                continue;
            }
            let facts =
                ResponseFacts::of(req.kind, &self.resp, &self.from_backend).map_err(|e| {
                    upstream_failure(
                        dest,
                        502,
                        ErrorKind::BackendHead,
                        format!(
                            "bad response framing from {}: {e}",
                            upstream.in_flight.backend().addr()
                        ),
                    )
                })?;
            return Ok(Answer {
                facts,
                head_len,
                body,
            });
        }
    }

    /// Relay: the final response head as the policy decides, then its body
    /// (or the tunnel), then the backend connection back to the pool and
    /// the client connection kept or closed.
    async fn relay(
        &mut self,
        dest: &Dest,
        req: &RequestFacts,
        answer: Answer,
        upstream: Upstream,
    ) -> Result<Next, Failure> {
        let mut reply = policy::after_response(req, &answer.facts, answer.body);
        if self.worker.watchdog.draining() {
            reply = reply.draining();
        }
        let resp_body = answer.facts.body;
        // Diff mode: the live answer is kept, to compare the copies' with;
        // and for observers that asked (capture).
        let keep_live =
            (self.copies.diff() || self.obs.keep.is_some()) && reply.relay == Relay::AsFramed;
        if keep_live {
            let diff = if self.copies.diff() {
                self.shared.diff.max_body_bytes()
            } else {
                0
            };
            let limit = diff.max(self.obs.keep.unwrap_or(0));
            self.copies
                .keep_live_head(&self.from_backend[..answer.head_len], limit);
        }
        self.heads.clear();
        // The proxy names itself in the response's Via too (RFC 9110 §7.6.3).
        let extra: &[(&[u8], &[u8])] = match reply.connection {
            ConnectionField::KeepAlive => &[(b"Via", VIA), (b"Connection", b"keep-alive")],
            ConnectionField::Omit | ConnectionField::Close => &[(b"Via", VIA)],
        };
        if reply.relay == Relay::Dechunked {
            http::write_response_dechunked(&mut self.heads, &self.resp, &self.from_backend, extra);
        } else {
            http::write_response(
                &mut self.heads,
                &self.resp,
                &self.from_backend,
                &resp_body,
                reply.relay == Relay::Tunnel,
                reply.connection == ConnectionField::Close,
                extra,
            );
        }
        self.from_backend.drain(..answer.head_len);
        dest.stats.response(answer.facts.status);
        let head_end = self.heads.len();
        // A body already read whole goes out with the head: one write, one
        // wake-up of the client.
        let body_with_head = reply.relay == Relay::AsFramed
            && take_whole_body(
                &mut self.from_backend,
                &resp_body,
                &mut self.heads,
                &self.shared,
            );
        if keep_live {
            if body_with_head {
                self.copies.live.take(&self.heads[head_end..]);
                self.copies.live.finish();
            } else if !matches!(resp_body, BodyLength::Length(_) | BodyLength::Chunked) {
                self.copies.live.give_up();
            }
        }
        stream::write_all(&self.client, &self.heads)
            .await
            .map_err(|_| Failure::Close(Some(ErrorKind::ClientDied)))?;
        if self.obs.on {
            self.obs.status = answer.facts.status;
            self.obs.bytes_out += self.heads.len() as u64;
            self.obs.response_head = head_end;
        }

        let Upstream {
            conn: backend,
            in_flight,
            ..
        } = upstream;
        match reply.relay {
            Relay::Tunnel => {
                // Whatever either side sent after the heads goes first.
                if !self.from_backend.is_empty() {
                    stream::write_all(&self.client, &self.from_backend)
                        .await
                        .map_err(|_| Failure::Close(Some(ErrorKind::ClientDied)))?;
                }
                if !self.from_client.is_empty() {
                    stream::write_all(&backend, &self.from_client)
                        .await
                        .map_err(|_| Failure::Close(Some(ErrorKind::BackendDied)))?;
                }
                dest.stats.latency.observe(in_flight.started().elapsed());
                drop(in_flight);
                let sent_first = (self.from_backend.len() + self.from_client.len()) as u64;
                self.tunnel(&backend, sent_first, None).await;
                return Ok(Next::Close);
            }
            Relay::Dechunked => self.relay_dechunked(&backend).await?,
            Relay::AsFramed if !body_with_head => {
                self.relay_response_body(&backend, &resp_body).await?;
                self.copies.live.finish();
            }
            Relay::AsFramed => {}
        }
        let addr = in_flight.backend().addr();
        dest.stats.latency.observe(in_flight.finish(Instant::now()));
        // Bytes after the response's end belong to no request: a backend
        // that sent them is out of step, and they must not be read as the
        // next response (the buffer is this client's, whichever backend the
        // next request goes to).
        let stray = !self.from_backend.is_empty();
        if stray {
            if log_limit::allow() {
                tracing::warn!(
                    backend = %addr,
                    bytes = self.from_backend.len(),
                    "backend sent bytes after its response; connection dropped"
                );
            }
            self.from_backend.clear();
        }
        if reply.pool_backend && !stray {
            let now = self.worker.watchdog.now_ms();
            self.worker.pool.borrow_mut().put(addr, backend, now);
        }
        match reply.client {
            ClientNext::KeepAlive => Ok(Next::KeepAlive),
            ClientNext::Close { linger } => {
                // Without lingering, the close that follows at once sends
                // the same end: no `shutdown` per closed connection.
                if linger {
                    stream::shutdown_write(&self.client);
                    self.linger().await;
                }
                Ok(Next::Close)
            }
            ClientNext::AfterTunnel => Ok(Next::Close),
        }
    }

    /// Picks a backend of `dest` and connects (a pooled connection checked
    /// as `liveness` says, or a new one), trying others when a connect
    /// fails (each failure ejects that backend for a while).
    async fn connect(
        &mut self,
        dest: &Dest,
        started: Instant,
        liveness: Liveness,
    ) -> Result<Upstream, Failure> {
        let cfg = &self.shared.cfg;
        let attempts = dest.balancer.len().clamp(1, 3);
        let mut last = String::new();
        for _ in 0..attempts {
            let Some(backend) = dest.balancer.pick(&mut self.rng) else {
                return Err(Failure::Respond {
                    status: 503,
                    reason: format!("no endpoints for {}", dest.id),
                    kind: ErrorKind::NoEndpoints,
                    close: true,
                });
            };
            let now = self.worker.watchdog.now_ms();
            let pooled = self
                .worker
                .pool
                .borrow_mut()
                .take(backend.addr(), now, liveness);
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => match pool::connect(backend.addr(), &cfg.pool, &self.worker.watchdog).await
                {
                    Ok(conn) => (conn, false),
                    // The proxy's own shortage: the backend keeps its place,
                    // and another would fare no better.
                    Err(e) if e.is_local() => {
                        if log_limit::allow() {
                            tracing::warn!(dst = %dest.id, error = %e, "connect failed here; backend kept");
                        }
                        last = e.to_string();
                        break;
                    }
                    Err(e) => {
                        backend.eject(cfg.eject);
                        if log_limit::allow() {
                            tracing::warn!(dst = %dest.id, error = %e, "connect failed; backend ejected for {:?}", cfg.eject);
                        }
                        last = e.to_string();
                        continue;
                    }
                },
            };
            return Ok(Upstream {
                conn,
                in_flight: backend.start_at(started),
                reused,
                interim_relayed: false,
            });
        }
        Err(upstream_failure(
            dest,
            502,
            ErrorKind::ConnectFailed,
            format!("{}: {last}", dest.id),
        ))
    }

    /// Replaces `upstream`'s connection with a new one to the same backend
    /// (bypassing the pool).
    async fn reconnect(&mut self, dest: &Dest, upstream: &mut Upstream) -> Result<(), Failure> {
        let cfg = &self.shared.cfg;
        let backend = upstream.in_flight.backend();
        self.obs.retried = true;
        match pool::connect(backend.addr(), &cfg.pool, &self.worker.watchdog).await {
            Ok(conn) => {
                upstream.conn = conn;
                upstream.reused = false;
                Ok(())
            }
            Err(e) => {
                if !e.is_local() {
                    backend.eject(cfg.eject);
                }
                Err(upstream_failure(
                    dest,
                    502,
                    ErrorKind::ConnectFailed,
                    format!("{}: {e}", dest.id),
                ))
            }
        }
    }

    /// Sends the request body: first what is already in `from_client`, then
    /// the rest from the client, spliced when its length is known and
    /// large. `Cut` when the backend stopped taking it (it may have
    /// answered already, say 413, and closed): the caller reads what it said.
    async fn send_request_body(
        &mut self,
        backend: &TcpStream,
        body: &BodyLength,
    ) -> Result<RequestBody, Failure> {
        // A body being kept for copies goes through userspace.
        let tee = self.copies.body.is_on();
        let threshold = if tee {
            u64::MAX
        } else {
            self.shared.cfg.splice_threshold
        };
        let metrics = self.shared.metrics.clone();
        let after = self.shared.cfg.body_timeout;
        let (deadline, watchdog) = (&*self.deadline, &*self.worker.watchdog);
        // Besides the inactivity timeout, the body must keep up a minimum
        // average rate after a grace of one body timeout: a client that
        // trickles a byte now and then would never trip the first.
        let min_rate = self.shared.cfg.body_min_rate;
        let pace = policy::Pace::new(watchdog.now_ms(), after, min_rate);
        let progress = |n| deadline.extend(watchdog, pace.moved(n, watchdog.now_ms()));
        let moving = move_body(
            &self.client,
            backend,
            &mut self.from_client,
            &mut self.scratch,
            &mut self.pipe,
            body,
            Moving {
                splice_threshold: threshold,
                progress: &progress,
                budget: &self.shared.budget,
                tee: tee.then_some(&mut self.copies.body),
            },
        );
        let moved = match deadline.within(watchdog, after, false, moving).await {
            Ok(Ok(moved)) => moved,
            Ok(Err(MoveError::To(e))) => {
                tracing::debug!(peer = %self.peer, error = %e, "backend stopped taking the request body");
                return Ok(RequestBody::Cut);
            }
            Ok(Err(MoveError::From(_))) => return Err(Failure::Close(Some(ErrorKind::ClientDied))),
            Ok(Err(MoveError::Framing(e))) => return Err(Failure::from(e)),
            Ok(Err(MoveError::OverBudget)) => {
                return Err(Failure::respond(503, ErrorKind::Overloaded, OVER_BUDGET));
            }
            // Before any response: the client hears why.
            Err(Elapsed) if pace.behind(watchdog.now_ms()) => {
                return Err(Failure::respond(
                    408,
                    ErrorKind::BodyTimeout,
                    format!(
                        "the request body came slower than {min_rate} bytes/s \
                         (limits.body_min_bytes_per_sec)"
                    ),
                ));
            }
            Err(Elapsed) => {
                return Err(Failure::respond(
                    408,
                    ErrorKind::BodyTimeout,
                    format!("the request body stalled for {after:?}"),
                ));
            }
        };
        metrics.bytes_copied.inc_by(moved.copied);
        metrics.bytes_spliced.inc_by(moved.spliced);
        self.obs.bytes_in += moved.copied + moved.spliced;
        self.copies.body.finish();
        Ok(RequestBody::Sent)
    }

    /// Relays a chunked response body as its bare data.
    async fn relay_dechunked(&mut self, backend: &TcpStream) -> Result<(), Failure> {
        let after = self.shared.cfg.body_timeout;
        let (deadline, watchdog) = (&*self.deadline, &*self.worker.watchdog);
        let progress = |_| deadline.extend(watchdog, after);
        let moving = dechunk_body(
            backend,
            &self.client,
            &mut self.from_backend,
            &mut self.scratch,
            &progress,
            &self.shared.budget,
        );
        let Ok(moved) = deadline.within(watchdog, after, false, moving).await else {
            return Err(body_stalled(&self.peer, after));
        };
        match moved {
            Ok(n) => {
                self.shared.metrics.bytes_copied.inc_by(n);
                self.obs.bytes_out += n;
                Ok(())
            }
            Err(MoveError::To(_)) => Err(Failure::Close(Some(ErrorKind::ClientDied))),
            Err(MoveError::OverBudget) => Err(Failure::Close(Some(ErrorKind::Overloaded))),
            Err(MoveError::From(_) | MoveError::Framing(_)) => {
                if log_limit::allow() {
                    tracing::warn!(peer = %self.peer, "backend died mid-response; closing the client connection");
                }
                Err(Failure::Close(Some(ErrorKind::BackendDied)))
            }
        }
    }

    /// Relays the response body from `bbuf` and then the backend.
    async fn relay_response_body(
        &mut self,
        backend: &TcpStream,
        body: &BodyLength,
    ) -> Result<(), Failure> {
        let tee = self.copies.live.is_on();
        let threshold = if tee {
            u64::MAX
        } else {
            self.shared.cfg.splice_threshold
        };
        let after = self.shared.cfg.body_timeout;
        let (deadline, watchdog) = (&*self.deadline, &*self.worker.watchdog);
        let progress = |_| deadline.extend(watchdog, after);
        let moving = move_body(
            backend,
            &self.client,
            &mut self.from_backend,
            &mut self.scratch,
            &mut self.pipe,
            body,
            Moving {
                splice_threshold: threshold,
                progress: &progress,
                budget: &self.shared.budget,
                tee: tee.then_some(&mut self.copies.live),
            },
        );
        let Ok(moved) = deadline.within(watchdog, after, false, moving).await else {
            return Err(body_stalled(&self.peer, after));
        };
        match moved {
            Ok(m) => {
                self.shared.metrics.bytes_copied.inc_by(m.copied);
                self.shared.metrics.bytes_spliced.inc_by(m.spliced);
                self.obs.bytes_out += m.copied + m.spliced;
                Ok(())
            }
            Err(MoveError::To(_)) => Err(Failure::Close(Some(ErrorKind::ClientDied))),
            Err(MoveError::OverBudget) => Err(Failure::Close(Some(ErrorKind::Overloaded))),
            Err(MoveError::From(_) | MoveError::Framing(_)) => {
                if log_limit::allow() {
                    tracing::warn!(peer = %self.peer, "backend died mid-response; closing the client connection");
                }
                Err(Failure::Close(Some(ErrorKind::BackendDied)))
            }
        }
    }
}

/// A failure on the way to or from a backend, answered with `status` and
/// counted against the destination like a response from it.
fn upstream_failure(dest: &Dest, status: u16, kind: ErrorKind, reason: String) -> Failure {
    dest.stats.response(status);
    Failure::respond(status, kind, reason)
}

/// Writing the request to `upstream` failed, past any resend.
fn write_failed(dest: &Dest, upstream: &Upstream, e: &io::Error) -> Failure {
    let addr = upstream.in_flight.backend().addr();
    upstream_failure(
        dest,
        502,
        ErrorKind::BackendDied,
        format!("writing to {addr}: {e}"),
    )
}

/// A response body that stopped moving: the client has its head already,
/// so all it can be told is the closed connection.
fn body_stalled(peer: &SocketAddr, after: std::time::Duration) -> Failure {
    if log_limit::allow() {
        tracing::warn!(%peer, "response body stalled for {after:?}; closing the client connection");
    }
    Failure::Close(Some(ErrorKind::BodyTimeout))
}

/// The Host field for a request that has none (an HTTP/1.0 one; HTTP/1.1
/// requires it, RFC 9112 §3.2): the original destination in the
/// transparent modes, else empty. `None` when the request has an authority.
fn missing_host<'a>(
    authority: Option<&[u8]>,
    orig: Option<SocketAddrV4>,
    scratch: &'a mut [u8; 21],
) -> Option<&'a [u8]> {
    if authority.is_some() {
        return None;
    }
    Some(match orig {
        Some(dst) => write_addr(scratch, dst),
        None => b"",
    })
}

/// Moves a body that `pending` holds whole (or an absent one) to `out`, so
/// it is written with its head; false when the body is still to come.
fn take_whole_body(
    pending: &mut Vec<u8>,
    body: &BodyLength,
    out: &mut Vec<u8>,
    shared: &Shared,
) -> bool {
    let len = match *body {
        BodyLength::None => return true,
        BodyLength::Length(n) if n <= pending.len() as u64 => n as usize,
        BodyLength::Chunked => {
            let mut scanner = ChunkedScanner::new();
            match scanner.scan(pending) {
                Ok(k) if scanner.is_done() => k,
                _ => return false,
            }
        }
        _ => return false,
    };
    out.extend_from_slice(&pending[..len]);
    pending.drain(..len);
    shared.metrics.bytes_copied.inc_by(len as u64);
    true
}

/// Chooses the destination of a request from its route, or the refusal.
fn pick_dest<'r>(
    route: &'r Route,
    rng: &mut SmallRng,
    sticky: Option<&[u8]>,
    has_body: bool,
) -> Result<&'r Dest, Failure> {
    routing::pick_dest(route, rng, sticky).map_err(|r| Failure::Respond {
        status: r.status,
        reason: r.reason,
        kind: r.kind,
        close: has_body,
    })
}

/// Reads more of a head into `buf`, growing it (by doubling, up to the
/// head limit) within the memory budget: `OutOfMemory` when the budget
/// refuses.
async fn read_more(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
    budget: &MemoryBudget,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        let want = (buf.capacity() * 2).clamp(INITIAL_BUF, limit.max(INITIAL_BUF) + 1024);
        budget::grow(buf, want - buf.len(), budget)
            .map_err(|OverBudget| io::Error::from(io::ErrorKind::OutOfMemory))?;
    }
    stream::read_buf(stream, buf).await
}

/// What came first while a request body waited for 100 Continue.
enum Waited<T> {
    Head(T),
    /// The client became readable: perhaps it sends the body anyway.
    Client,
}

/// Why no response head could be read from a backend.
#[derive(Debug)]
pub(super) enum ReadHeadError {
    /// The connection ended before the first byte (a pooled connection the
    /// backend had closed, usually).
    ClosedBeforeResponse,
    Closed,
    Io(io::Error),
    Bad(HeadError),
    /// The head needed more room than the memory budget had.
    OverBudget,
}

impl std::fmt::Display for ReadHeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadHeadError::ClosedBeforeResponse => {
                f.write_str("the connection closed before a response")
            }
            ReadHeadError::Closed => f.write_str("the connection closed inside the response head"),
            ReadHeadError::Io(e) => write!(f, "{e}"),
            ReadHeadError::OverBudget => f.write_str(OVER_BUDGET),
            // HeadError speaks of requests, its usual subject.
            ReadHeadError::Bad(HeadError::HeadTooLarge) => f.write_str("response head too large"),
            ReadHeadError::Bad(e) => write!(f, "{e}"),
        }
    }
}

/// Reads until `bbuf` holds a whole response head; returns its length.
pub(super) async fn read_response_head(
    backend: &TcpStream,
    bbuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    limits: &http::Limits,
    budget: &MemoryBudget,
) -> Result<usize, ReadHeadError> {
    // The answer is often there already (see `try_read_buf_now`).
    if bbuf.is_empty() {
        match stream::try_read_buf_now(backend, bbuf) {
            Ok(0) => return Err(ReadHeadError::ClosedBeforeResponse),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if is_reset(&e) => return Err(ReadHeadError::ClosedBeforeResponse),
            Err(e) => return Err(ReadHeadError::Io(e)),
        }
    }
    loop {
        if !bbuf.is_empty() {
            match resp.parse(bbuf, limits).map_err(ReadHeadError::Bad)? {
                Parsed::Complete { head_len } => return Ok(head_len),
                Parsed::Partial => {}
            }
        }
        match read_more(backend, bbuf, limits.max_head, budget).await {
            Ok(0) if bbuf.is_empty() => return Err(ReadHeadError::ClosedBeforeResponse),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return Err(ReadHeadError::OverBudget);
            }
            Ok(0) => return Err(ReadHeadError::Closed),
            Ok(_) => {}
            Err(e) if bbuf.is_empty() && is_reset(&e) => {
                return Err(ReadHeadError::ClosedBeforeResponse);
            }
            Err(e) => return Err(ReadHeadError::Io(e)),
        }
    }
}

/// A reset before any byte of a response is an end too: the backend
/// closed a connection that still had the request unread.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Bytes moved by copying and by splicing.
#[derive(Default)]
struct Moved {
    copied: u64,
    spliced: u64,
}

enum MoveError {
    From(#[allow(dead_code)] io::Error),
    To(#[allow(dead_code)] io::Error),
    Framing(HeadError),
    /// A copy buffer could not grow within the memory budget.
    OverBudget,
}

impl From<OverBudget> for MoveError {
    fn from(_: OverBudget) -> MoveError {
        MoveError::OverBudget
    }
}

/// How a body moves: spliced from `splice_threshold` bytes on, with
/// `progress` called whenever bytes arrive (it pushes the body timeout on).
struct Moving<'a, P> {
    splice_threshold: u64,
    progress: &'a P,
    /// What copy buffers grow within.
    budget: &'a MemoryBudget,
    /// Where the body is kept as it passes (for copies), if anywhere;
    /// `splice_threshold` is then `u64::MAX`.
    tee: Option<&'a mut Tee>,
}

impl From<Broken> for MoveError {
    fn from(b: Broken) -> MoveError {
        match b {
            Broken::From(e) => MoveError::From(e),
            Broken::To(e) => MoveError::To(e),
        }
    }
}

/// Moves one message body from `from` to `to`. `pending` holds bytes already
/// read from `from`; on return it holds only what follows the body.
async fn move_body<P: Fn(usize)>(
    from: &TcpStream,
    to: &TcpStream,
    pending: &mut Vec<u8>,
    copy: &mut Vec<u8>,
    pipe: &mut Option<Pipe>,
    body: &BodyLength,
    how: Moving<'_, P>,
) -> Result<Moved, MoveError> {
    let Moving {
        splice_threshold,
        progress,
        budget,
        mut tee,
    } = how;
    let mut keep = |data: &[u8]| {
        if let Some(t) = tee.as_deref_mut() {
            t.take(data);
        }
    };
    let mut moved = Moved::default();
    match *body {
        BodyLength::None | BodyLength::Tunnel => {}
        BodyLength::Length(n) => {
            let first = (n as usize).min(pending.len());
            keep(&pending[..first]);
            stream::write_all(to, &pending[..first])
                .await
                .map_err(MoveError::To)?;
            pending.drain(..first);
            moved.copied += first as u64;
            let rest = n - first as u64;
            if rest >= splice_threshold && rest > 0 {
                let p = match pipe {
                    Some(p) => p,
                    None => pipe.insert(Pipe::new().map_err(MoveError::To)?),
                };
                moved.spliced += p
                    .transfer(from, to, Some(rest), progress)
                    .await
                    .map_err(MoveError::from)?;
            } else {
                moved.copied +=
                    copy_exact(from, to, copy, rest, progress, budget, &mut keep).await?;
            }
        }
        BodyLength::Chunked => {
            let mut scanner = ChunkedScanner::new();
            loop {
                if !pending.is_empty() {
                    let k = scanner.scan(pending).map_err(MoveError::Framing)?;
                    keep(&pending[..k]);
                    stream::write_all(to, &pending[..k])
                        .await
                        .map_err(MoveError::To)?;
                    pending.drain(..k);
                    moved.copied += k as u64;
                }
                if scanner.is_done() {
                    break;
                }
                if pending.capacity() - pending.len() < 4096 {
                    budget::grow(pending, COPY_CHUNK, budget)?;
                }
                match stream::read_buf(from, pending).await {
                    Ok(0) => return Err(MoveError::From(io::ErrorKind::UnexpectedEof.into())),
                    Ok(k) => progress(k),
                    Err(e) => return Err(MoveError::From(e)),
                }
            }
        }
        BodyLength::UntilClose if splice_threshold == u64::MAX => {
            // Not kept: an answer that ends with its connection is not
            // compared.
            if let Some(t) = tee {
                t.give_up();
            }
            stream::write_all(to, pending)
                .await
                .map_err(MoveError::To)?;
            moved.copied += pending.len() as u64;
            pending.clear();
            copy_buffer(copy, u64::MAX, budget)?;
            moved.copied += copy_until_eof(from, to, copy, progress)
                .await
                .map_err(MoveError::From)?;
        }
        BodyLength::UntilClose => {
            stream::write_all(to, pending)
                .await
                .map_err(MoveError::To)?;
            moved.copied += pending.len() as u64;
            pending.clear();
            let p = match pipe {
                Some(p) => p,
                None => pipe.insert(Pipe::new().map_err(MoveError::To)?),
            };
            moved.spliced += p
                .transfer(from, to, None, progress)
                .await
                .map_err(MoveError::from)?;
        }
    }
    Ok(moved)
}

/// Moves a chunked body from `from` to `to` as its bare data (sizes,
/// extensions and trailers dropped), starting with what is in `pending`;
/// `decoded` is scratch space. Returns the data bytes moved; `pending`
/// keeps what follows the body.
async fn dechunk_body(
    from: &TcpStream,
    to: &TcpStream,
    pending: &mut Vec<u8>,
    decoded: &mut Vec<u8>,
    progress: &impl Fn(usize),
    budget: &MemoryBudget,
) -> Result<u64, MoveError> {
    let mut scanner = ChunkedScanner::new();
    let mut moved = 0;
    loop {
        if !pending.is_empty() {
            decoded.clear();
            let k = scanner
                .decode(pending, |d| decoded.extend_from_slice(d))
                .map_err(MoveError::Framing)?;
            stream::write_all(to, decoded)
                .await
                .map_err(MoveError::To)?;
            pending.drain(..k);
            moved += decoded.len() as u64;
        }
        if scanner.is_done() {
            return Ok(moved);
        }
        if pending.capacity() - pending.len() < 4096 {
            budget::grow(pending, COPY_CHUNK, budget)?;
        }
        match stream::read_buf(from, pending).await {
            Ok(0) => return Err(MoveError::From(io::ErrorKind::UnexpectedEof.into())),
            Ok(k) => progress(k),
            Err(e) => return Err(MoveError::From(e)),
        }
    }
}

/// Makes `copy` at least `want` bytes (rounded up to a page, at most a
/// copy chunk), within the budget: a small body needs no large buffer.
/// What it grows to stays for the connection's next bodies.
fn copy_buffer(copy: &mut Vec<u8>, want: u64, budget: &MemoryBudget) -> Result<(), OverBudget> {
    let want = (want.min(COPY_CHUNK as u64) as usize)
        .next_multiple_of(SMALL_COPY)
        .min(COPY_CHUNK);
    if copy.len() < want {
        budget::grow(copy, want - copy.len(), budget)?;
        copy.resize(want, 0);
    }
    Ok(())
}

/// Copies exactly `n` bytes through userspace, never reading past them.
async fn copy_exact(
    from: &TcpStream,
    to: &TcpStream,
    copy: &mut Vec<u8>,
    n: u64,
    progress: &impl Fn(usize),
    budget: &MemoryBudget,
    keep: &mut impl FnMut(&[u8]),
) -> Result<u64, MoveError> {
    if n == 0 {
        return Ok(0);
    }
    copy_buffer(copy, n, budget)?;
    let mut left = n;
    while left > 0 {
        let want = (left as usize).min(copy.len());
        let got = loop {
            stream::read_ready(from).await.map_err(MoveError::From)?;
            match from.try_read(&mut copy[..want]) {
                Ok(0) => return Err(MoveError::From(io::ErrorKind::UnexpectedEof.into())),
                Ok(k) => {
                    progress(k);
                    break k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(MoveError::From(e)),
            }
        };
        keep(&copy[..got]);
        stream::write_all(to, &copy[..got])
            .await
            .map_err(MoveError::To)?;
        left -= got as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returns<'a, A, F, R>(_: &F) -> usize
    where
        F: FnOnce(&'a mut Conn, A) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn returns0<'a, F, R>(_: &F) -> usize
    where
        F: FnOnce(&'a mut Conn) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// An idle connection's task is its `serve` future: the connection and
    /// what waiting for a head needs, not an exchange in flight (that runs
    /// in a block of the worker's) nor a tunnel or an HTTP/2 connection
    /// (boxed).
    #[test]
    fn an_idle_connection_carries_no_exchange() {
        let serve = returns0(&Conn::serve);
        let exchange = returns(&Conn::exchange);
        eprintln!(
            "Conn {} bytes, serve {serve}, exchange {exchange}, tunnel_opaque {}",
            std::mem::size_of::<Conn>(),
            returns0(&Conn::tunnel_opaque),
        );
        assert!(
            serve < exchange / 2,
            "serve {serve} bytes, an exchange {exchange}"
        );
    }

    #[test]
    fn a_request_without_host_gets_its_original_destination_or_an_empty_one() {
        let mut scratch = [0u8; 21];
        assert_eq!(missing_host(Some(b"web:80"), None, &mut scratch), None);
        let dst = SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 3, 4), 8080);
        assert_eq!(
            missing_host(Some(b"web"), Some(dst), &mut scratch),
            None,
            "a request's own Host stays"
        );
        assert_eq!(
            missing_host(None, Some(dst), &mut scratch),
            Some(&b"198.18.3.4:8080"[..])
        );
        assert_eq!(missing_host(None, None, &mut scratch), Some(&b""[..]));
    }
}
