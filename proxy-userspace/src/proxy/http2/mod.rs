//! HTTP/2 from clients: cleartext with prior knowledge (h2c), found by the
//! HTTP/1 loop when a connection's first bytes are the client preface, and
//! served by hyper on the worker's `LocalSet`. Every stream is a request,
//! routed as an HTTP/1.1 request is (`routing`: the same name, dtab
//! headers, override policy, rules and `l5d-*` fields), balanced per
//! request, and sent on as HTTP/2 (gRPC, and the names `http2.h2_names`
//! holds) or translated to HTTP/1.1 (the rest) over the worker's
//! [`Upstreams`].
//!
//! Bodies and trailers are relayed frame by frame ([`body`]), so flow
//! control holds end to end and a reset on either side cancels the other:
//! hyper resets the backend stream when the client's goes (the request's
//! future or body is dropped), and the client's when the backend's fails
//! (a gRPC call gets UNAVAILABLE trailers instead, see [`body::Relay`]).
//! Mirrors copy streams as they copy HTTP/1.1 requests ([`mirror`]).
//! The proxy's own errors are answered as HTTP/1.1's are (status and
//! `l5d-err`), and to gRPC clients as trailers-only responses with the
//! matching `grpc-status` ([`grpc`]).
//!
//! A client connection lives until its client closes it, until it has
//! served no stream for `limits.idle_timeout_ms`, or until the proxy
//! drains or, while it serves none, needs its slot (`max_connections`):
//! then it is sent GOAWAY and its streams in flight finish. hyper and h2 bound what a client may
//! make the proxy hold (docs/http2.md): streams at once, header lists,
//! the HPACK table, windows, and streams reset before they were accepted
//! (rapid reset) or for the client's errors, past which the connection
//! gets GOAWAY ENHANCE_YOUR_CALM. What they do not bound, a client's
//! PING, SETTINGS and empty frames a second, the connection's I/O counts
//! ([`frames`]); a flood ends the connection with the same GOAWAY.

mod body;
mod client;
mod frames;
mod grpc;
mod io;
mod mirror;

use std::{
    cell::{Cell, RefCell},
    convert::Infallible,
    net::SocketAddr,
    rc::Rc,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};
use rand::{SeedableRng, rngs::SmallRng};
use tokio::net::TcpStream;

pub(super) use self::client::Upstreams;
use self::{
    body::{Body, Relay},
    client::{Failed, H1Sender},
    frames::{Flood, Guard},
    io::{Io, Watched},
};
use super::{
    Worker,
    observed::{Observed, Request as Told},
    routing::{self, Origin, Refused, RequestView, VIA_H2},
    shadow::Tee,
    watchdog::{Deadline, Elapsed},
};
use crate::{
    http,
    namer::balancer::InFlight,
    observe::{
        exchange::Bodies,
        metrics::{ErrorKind, RouteStats},
        trace::{self, TIMING_HEADER, Timing},
    },
    policy::signing::SIGNATURE_HEADER,
    route::{Dest, Outcome, Route, identify},
};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a new connection's first bytes (all of them, or as many as
/// came) are the HTTP/2 client preface.
pub(super) fn is_preface(first: &[u8]) -> bool {
    let n = first.len().min(PREFACE.len());
    n > 0 && first[..n] == PREFACE[..n]
}

/// hyper's executor: tasks on the worker's `LocalSet`.
#[derive(Clone, Copy)]
pub(super) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// One client connection, shared by its streams.
struct Conn {
    worker: Rc<Worker>,
    from: Origin,
    deadline: Arc<Deadline>,
    rng: RefCell<SmallRng>,
    /// Name and key buffers of streams that ended, for the next ones.
    spare: RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Streams being served ([`Open`]).
    open: Cell<usize>,
    /// The header values the connection's streams share.
    marks: RefCell<Marks>,
    /// Deadlines of streams that ended, for the next ones' response
    /// timeouts (`Watchdog::timeout` would make one a stream: an
    /// allocation and the watchdog's lock).
    deadlines: RefCell<Vec<Arc<Deadline>>>,
}

/// A stream the connection serves, from its request to its response's
/// end. While one is, the connection is busy: no idle timeout ends it,
/// nor is it the idle one closed for room at `max_connections`; when the
/// last ends, it is idle from then, as an HTTP/1.1 connection between
/// requests.
struct Open(Rc<Conn>);

impl Open {
    fn new(conn: &Rc<Conn>) -> Open {
        let n = conn.open.get();
        if n == 0 {
            conn.deadline
                .set_idle(&conn.worker.watchdog, false, Duration::ZERO);
        }
        conn.open.set(n + 1);
        Open(conn.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let conn = &self.0;
        let n = conn.open.get() - 1;
        conn.open.set(n);
        if n == 0 {
            let idle = conn.worker.shared.cfg.idle_timeout;
            conn.deadline.set_idle(&conn.worker.watchdog, true, idle);
        }
    }
}

/// Header values made once for many streams: those of the route and
/// destination the last stream went to (most streams of a connection go
/// where the one before went), and the room new request ids are cut from
/// (one allocation for many ids).
#[derive(Default)]
struct Marks {
    last: Option<Marked>,
    ids: BytesMut,
}

/// `l5d-dst-service` and `l5d-dst-client` for a route and destination.
struct Marked {
    /// Weak, so that a connection does not keep a route the router let
    /// go; its allocation stays, so no other route takes its address, and
    /// a route at that address is this one, `dest` one of its leaves.
    route: Weak<Route>,
    dest: *const Dest,
    service: Option<HeaderValue>,
    client: Option<HeaderValue>,
}

/// The request ids one allocation of [`Marks::ids`] holds.
const IDS_PER_ALLOCATION: usize = 64;

impl Marks {
    /// `value` as a header value cut from the shared room.
    fn id(&mut self, value: &[u8]) -> Option<HeaderValue> {
        if self.ids.capacity() - self.ids.len() < value.len() {
            self.ids = BytesMut::with_capacity(value.len() * IDS_PER_ALLOCATION);
        }
        self.ids.extend_from_slice(value);
        HeaderValue::from_maybe_shared(self.ids.split().freeze()).ok()
    }
}

/// The `HeaderName`s of the fields [`routing::added`] names, made without
/// allocating.
fn added_name(name: &[u8]) -> Option<HeaderName> {
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    const SIGNATURE: HeaderName = HeaderName::from_static("l5d-dtab-sig");
    const SERVICE: HeaderName = HeaderName::from_static("l5d-dst-service");
    const CLIENT: HeaderName = HeaderName::from_static("l5d-dst-client");
    const CTX_DTAB: HeaderName = HeaderName::from_static("l5d-ctx-dtab");
    const REQID: HeaderName = HeaderName::from_static("l5d-reqid");
    Some(match name {
        b"traceparent" => TRACEPARENT,
        b"l5d-dtab-sig" => SIGNATURE,
        b"Max-Forwards" => header::MAX_FORWARDS,
        b"Host" => header::HOST,
        b"l5d-dst-service" => SERVICE,
        b"l5d-dst-client" => CLIENT,
        b"l5d-ctx-dtab" => CTX_DTAB,
        b"l5d-reqid" => REQID,
        b"Via" => header::VIA,
        other => return HeaderName::from_bytes(other).ok(),
    })
}

/// Most spare buffer pairs a connection keeps.
const MAX_SPARE: usize = 8;

/// Serves `client` as HTTP/2 from its preface on; `read` is what the
/// HTTP/1 loop read of it already.
pub(super) async fn serve(
    client: &TcpStream,
    read: Vec<u8>,
    from: Origin,
    worker: &Rc<Worker>,
    deadline: &Arc<Deadline>,
) {
    let shared = worker.shared.clone();
    let cfg = &shared.cfg.http2;
    shared.metrics.http2_connections.inc();
    // What a client can make the proxy hold on this connection whatever
    // the other side reads: its connection's receive window. (What goes
    // the other way is pulled from the backend only as the client's
    // window lets it be sent.)
    let _charged = Charged::new(&shared, cfg.initial_connection_window_bytes as usize);
    let conn = Rc::new(Conn {
        worker: worker.clone(),
        from,
        deadline: deadline.clone(),
        rng: RefCell::new(SmallRng::from_os_rng()),
        spare: RefCell::default(),
        open: Cell::new(0),
        marks: RefCell::default(),
        deadlines: RefCell::default(),
    });
    let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
    builder
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(cfg.max_header_list_size)
        .header_table_size(cfg.header_table_size)
        .initial_stream_window_size(cfg.initial_stream_window_bytes)
        .initial_connection_window_size(cfg.initial_connection_window_bytes)
        .max_frame_size(cfg.max_frame_size)
        .max_send_buf_size(cfg.max_send_buf_bytes)
        .max_pending_accept_reset_streams(cfg.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(cfg.max_local_error_reset_streams)
        // Responses are the backends' (with their Date), or the proxy's.
        .auto_date_header(false);
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        // Boxed: hyper moves a stream's future by value (into its task,
        // and as it polls it), and the exchange's state is kilobytes.
        Box::pin(async move { Ok::<_, Infallible>(conn.stream(req).await) })
    });
    let limits = frames::Limits {
        pings: cfg.max_pings_per_second,
        settings: cfg.max_settings_per_second,
        empty: cfg.max_empty_frames_per_second,
    };
    let watched = Rc::new(Watched::default());
    let io = Io::watched(
        client,
        read,
        Guard::new(limits, Instant::now()),
        watched.clone(),
    );
    let served = builder.serve_connection(io, service);
    let mut served = std::pin::pin!(served);
    // Idle-marked while no stream is served ([`Open`]): the idle timeout,
    // the drain and a new connection at max_connections end the wait as
    // they end an idle HTTP/1 connection's; while streams are served only
    // the drain does.
    let waited = deadline
        .within(
            &worker.watchdog,
            shared.cfg.idle_timeout,
            true,
            served.as_mut(),
        )
        .await;
    let ended = match waited {
        Ok(ended) => ended,
        Err(Elapsed) => {
            // GOAWAY: no new streams; those in flight finish.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Some(flood) = watched.flood.get() {
        cut_off(client, &watched, flood, &shared, from);
    } else if let Err(e) = ended {
        let calm = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason)
            == Some(h2::Reason::ENHANCE_YOUR_CALM);
        if calm {
            shared.metrics.http2_calm.inc();
            if crate::observe::log_limit::allow() {
                tracing::warn!(peer = %from.peer, "HTTP/2 client cut off (GOAWAY ENHANCE_YOUR_CALM)");
            }
        } else {
            tracing::debug!(peer = %from.peer, error = %e, "HTTP/2 connection ended");
        }
    }
}

/// A client that flooded the proxy: GOAWAY ENHANCE_YOUR_CALM (when the
/// proxy's output ends with a whole frame, as it does unless the client
/// stopped reading, and the socket takes it), then the connection's end.
/// hyper is done with the connection: its streams are gone.
fn cut_off(
    client: &TcpStream,
    watched: &Watched,
    flood: Flood,
    shared: &super::Shared,
    from: Origin,
) {
    // Counted before the client can see its end.
    shared.metrics.http2_calm.inc();
    shared.metrics.http2_flood(flood.label());
    let sent = watched.at_boundary.get()
        && client
            .try_write(&frames::goaway(
                watched.last_stream.get(),
                frames::ENHANCE_YOUR_CALM,
            ))
            .is_ok_and(|n| n == 17);
    super::stream::shutdown_write(client);
    if crate::observe::log_limit::allow() {
        tracing::warn!(
            peer = %from.peer,
            frames = flood.label(),
            goaway = sent,
            "HTTP/2 client cut off for a flood (GOAWAY ENHANCE_YOUR_CALM); see http2.max_*_per_second"
        );
    }
}

/// An HTTP/2 connection's charge against the memory budget, given back
/// when it ends.
struct Charged<'a> {
    shared: &'a super::Shared,
    bytes: usize,
}

impl Charged<'_> {
    fn new(shared: &super::Shared, bytes: usize) -> Charged<'_> {
        shared.budget.recharge(0, bytes);
        Charged { shared, bytes }
    }
}

impl Drop for Charged<'_> {
    fn drop(&mut self) {
        self.shared.budget.recharge(self.bytes, 0);
    }
}

/// An HTTP/2 request head as routing sees it.
struct H2View<'a> {
    parts: &'a Parts,
}

impl RequestView for H2View<'_> {
    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }
    fn target(&self) -> &[u8] {
        self.parts
            .uri
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes())
    }
    fn authority(&self) -> Option<&[u8]> {
        match self.parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => self.get("host"),
        }
    }
    fn version(&self) -> u8 {
        identify::HTTP2
    }
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.parts.headers.get(name).map(HeaderValue::as_bytes)
    }
    fn any_value<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> bool) -> bool {
        self.parts
            .headers
            .get_all(name)
            .iter()
            .any(|v| each(v.as_bytes()))
    }
}

/// How a relayed response ended, as its body saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// To its last frame.
    Whole,
    /// The backend's stream failed.
    BackendFailed,
    /// Dropped before its end: the client reset the stream or went away.
    Dropped,
}

/// What is left to do when a stream's response ends: its latency, the
/// HTTP/1.1 connection back to the pool, the observers told.
pub(super) struct End {
    worker: Rc<Worker>,
    stats: RouteStats,
    in_flight: InFlight,
    h1: Option<(SocketAddr, H1Sender)>,
    told: Option<Box<Telling>>,
    /// The request body's bytes, counted when observers are told.
    bytes_in: Option<Rc<Cell<u64>>>,
    peer: SocketAddr,
    /// The request's copies, sent once the answer has ended whole.
    copies: Option<Box<mirror::Copies>>,
    /// The stream keeps its connection busy until its answer ends.
    _open: Option<Open>,
}

/// The exchange as observers will see it, while its body streams.
struct Telling {
    obs: Observed,
    method: Method,
    uri: Uri,
    /// What capture keeps of it, when it asked.
    kept: Option<Box<Kept>>,
}

/// An exchange's heads, in HTTP/1.1's text form (the version `HTTP/2`),
/// and its bodies as they passed, for capture.
struct Kept {
    request_head: Vec<u8>,
    request: Rc<RefCell<Tee>>,
    response_head: Vec<u8>,
    response: Rc<RefCell<Tee>>,
}

impl End {
    fn finish(self: Box<Self>, how: Ending, bytes_out: u64) {
        let shared = &self.worker.shared;
        self.stats
            .latency
            .observe(self.in_flight.finish(Instant::now()));
        let error = match how {
            Ending::Whole => None,
            Ending::BackendFailed => Some(ErrorKind::BackendDied),
            Ending::Dropped => Some(ErrorKind::ClientDied),
        };
        if let Some(kind) = error {
            shared.metrics.error(kind);
        }
        if let (Ending::Whole, Some((addr, sender))) = (how, self.h1) {
            self.worker.upstreams.put_h1(addr, sender, &shared.cfg.pool);
        }
        if let (Ending::Whole, Some(copies)) = (how, self.copies) {
            copies.dispatch(&self.worker);
        }
        if let Some(mut t) = self.told {
            t.obs.bytes_in += self.bytes_in.as_ref().map_or(0, |b| b.get());
            t.obs.bytes_out += bytes_out;
            t.obs.error = t.obs.error.or(error);
            let kept = t.kept.as_deref();
            let request = kept.map(|k| k.request.borrow());
            let response = kept.map(|k| k.response.borrow());
            let bodies = kept.map(|k| Bodies {
                request_head: &k.request_head,
                request_body: request.as_ref().and_then(|t| t.kept()),
                response_head: &k.response_head,
                response_body: response.as_ref().and_then(|t| t.kept()),
            });
            tell(
                &t.obs,
                &shared.observers,
                self.peer,
                &t.method,
                &t.uri,
                bodies,
            );
        }
    }
}

fn tell(
    obs: &Observed,
    observers: &[Arc<dyn crate::observe::exchange::Observer>],
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    bodies: Option<Bodies<'_>>,
) {
    let told = Told {
        method: method.as_str(),
        authority: uri.authority().map_or("", |a| a.as_str()),
        target: uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    obs.tell_request(observers, peer, told, bodies);
}

/// A request head as capture records it: HTTP/1.1's text form with the
/// version `HTTP/2`, `:authority` as Host when the request has none.
fn request_text(parts: &Parts) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/2\r\n");
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
    {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    push_fields(&mut out, &parts.headers);
    out
}

/// A response head as capture records it (see [`request_text`]).
fn response_text(parts: &hyper::http::response::Parts) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/2 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    push_fields(&mut out, &parts.headers);
    out
}

fn push_fields(out: &mut Vec<u8>, headers: &hyper::HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A backend connection a stream was sent on.
enum Sender {
    H2(client::H2Sender),
    H1(H1Sender),
}

/// A response head from a backend, and what its body's end settles.
struct Sent {
    response: Response<Incoming>,
    in_flight: InFlight,
    h1: Option<(SocketAddr, H1Sender)>,
}

impl Conn {
    /// One stream: routed, sent on and answered; the proxy's own answer
    /// when it could not be.
    async fn stream(self: Rc<Self>, req: Request<Incoming>) -> Response<Body> {
        let shared = self.worker.shared.clone();
        shared.metrics.http2_streams.inc();
        if shared.budget.pressure() == super::budget::Pressure::ShedRequests {
            shared.budget.count_shed_request();
            let r = refused(
                503,
                ErrorKind::Overloaded,
                "the proxy is at its memory budget (limits.memory_budget_bytes)",
            );
            shared.metrics.error(r.kind);
            return error_response(grpc::is_grpc(req.headers()), &r);
        }
        let mut open = Some(Open::new(&self));
        let started = Instant::now();
        let grpc = grpc::is_grpc(req.headers());
        let mut obs = Observed::new(&shared.observers);
        let timing = match shared.cfg.trace.timing {
            Timing::Off => false,
            Timing::Always => true,
            Timing::OnRequest => req.headers().contains_key(TIMING_HEADER),
        };
        if obs.on || timing {
            obs.begin(started, &[], timing);
        }
        let mut request = obs.on.then(|| (req.method().clone(), req.uri().clone()));
        let (mut name, mut key) = self.spare.borrow_mut().pop().unwrap_or_default();
        // (Not boxed apart: the whole stream's future is, see `serve`.)
        let answer = self
            .forward(
                req,
                grpc,
                &mut obs,
                &mut request,
                &mut name,
                &mut key,
                started,
                &mut open,
            )
            .await;
        {
            let mut spare = self.spare.borrow_mut();
            if spare.len() < MAX_SPARE {
                spare.push((name, key));
            }
        }
        answer.unwrap_or_else(|refused| {
            shared.metrics.error(refused.kind);
            tracing::debug!(peer = %self.from.peer, status = refused.status, reason = refused.reason, "HTTP/2 request refused");
            if let Some((method, uri)) = &request {
                obs.error = Some(refused.kind);
                obs.status = refused.status;
                tell(&obs, &shared.observers, self.from.peer, method, uri, None);
            }
            error_response(grpc, &refused)
        })
    }

    /// Route, send, and the response head with its body to relay.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        req: Request<Incoming>,
        grpc: bool,
        obs: &mut Observed,
        request: &mut Option<(Method, Uri)>,
        name: &mut Vec<u8>,
        key: &mut Vec<u8>,
        started: Instant,
        open: &mut Option<Open>,
    ) -> Result<Response<Body>, Refused> {
        let shared = &*self.worker.shared;
        let cfg = &shared.cfg;
        let (mut parts, body) = req.into_parts();
        // A TRACE or OPTIONS goes on with one forward less; at 0 the proxy
        // is its final recipient, as for HTTP/1.1.
        let max_forwards = http::max_forwards_of(
            parts.method.as_str().as_bytes(),
            parts
                .headers
                .get(header::MAX_FORWARDS)
                .map(HeaderValue::as_bytes),
        );
        if max_forwards == Some(0) {
            return Ok(max_forwards_answer(parts.method == Method::TRACE));
        }
        let hops: usize = parts
            .headers
            .get_all(header::VIA)
            .iter()
            .map(|v| http::count_via_entries(v.as_bytes()))
            .sum();
        if hops >= cfg.max_via_hops {
            return Err(refused(
                508,
                ErrorKind::Loop,
                format!("request passed through {hops} proxies (Via); refusing a routing loop"),
            ));
        }
        let view = H2View { parts: &parts };
        let routed = routing::route(shared, &view, self.from, name, key, obs)?;
        let pending = |r: &routing::Routed| matches!(r.route.outcome, Outcome::Pending(_));
        let routed = routing::until_synced(
            &self.worker.watchdog,
            cfg.sync_timeout,
            routed,
            pending,
            || routing::route(shared, &view, self.from, name, key, obs),
        )
        .await?;
        let route = routed.route;
        if obs.on || obs.timing {
            obs.routed(&route, &shared.observers);
        }
        // Capture wants the exchange's heads and bodies: the request's as
        // it came.
        let mut kept = obs.keep.map(|_| {
            Box::new(Kept {
                request_head: request_text(&parts),
                request: Rc::default(),
                response_head: Vec::new(),
                response: Rc::default(),
            })
        });
        let sticky = match &cfg.sticky_header {
            Some(h) => view.get(h),
            None => None,
        };
        let dest = routing::pick_dest(&route, &mut self.rng.borrow_mut(), sticky)?;
        dest.stats.requests.inc();
        if obs.on {
            obs.picked(&route, dest);
        }
        let out_h2 = grpc || names_h2(&cfg.http2.h2_names, &route.name);
        let copies = self.mark(
            &mut parts,
            &route,
            dest,
            routed.edge,
            max_forwards,
            out_h2,
            obs,
        );
        if out_h2 {
            parts.version = Version::HTTP_2;
        } else {
            to_http1(&mut parts);
        }
        let deadline = match grpc::timeout(&parts.headers) {
            Some(t) => t.min(cfg.response_timeout),
            None => cfg.response_timeout,
        };
        // Counted for the observers only.
        let bytes_in = request.is_some().then(|| Rc::new(Cell::new(0)));
        // The request body is kept for copies and for capture, up to the
        // larger of their limits, in one tee.
        let tee = match (&copies, &mut kept) {
            (Some(c), Some(k)) => {
                let limit = cfg.shadow.max_body.max(obs.keep.unwrap_or(0));
                c.body.borrow_mut().start(limit);
                k.request = c.body.clone();
                Some(c.body.clone())
            }
            (Some(c), None) => Some(c.body.clone()),
            (None, Some(k)) => {
                k.request.borrow_mut().start(obs.keep.unwrap_or(0));
                Some(k.request.clone())
            }
            (None, None) => None,
        };
        let mut relay = Relay::new(body, bytes_in.clone(), false, None);
        if let Some(tee) = tee {
            relay = relay.keeping(tee);
        }
        let req = Request::from_parts(parts, Body::Relay(relay));
        let sent = self
            .send(dest, req, out_h2, started, deadline, obs)
            .await
            .inspect_err(|r| {
                if matches!(r.status, 502..=504) {
                    dest.stats.response(r.status);
                }
            })?;
        let (mut parts, body) = sent.response.into_parts();
        let status = parts.status.as_u16();
        dest.stats.response(status);
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static("2 sidetrack"));
        obs.status = status;
        let response_tee = kept.as_mut().map(|k| {
            k.response_head = response_text(&parts);
            k.response.borrow_mut().start(obs.keep.unwrap_or(0));
            k.response.clone()
        });
        // The observers are told when the body ends.
        let told = request.take().map(|(method, uri)| {
            Box::new(Telling {
                obs: std::mem::replace(obs, Observed::new(&[])),
                method,
                uri,
                kept,
            })
        });
        let end = Box::new(End {
            worker: self.worker.clone(),
            stats: dest.stats.clone(),
            in_flight: sent.in_flight,
            h1: sent.h1,
            told,
            bytes_in,
            peer: self.from.peer,
            copies,
            _open: open.take(),
        });
        let mut relay = Relay::new(body, None, grpc, Some(end));
        if let Some(tee) = response_tee {
            relay = relay.keeping(tee);
        }
        Ok(Response::from_parts(parts, Body::Relay(relay)))
    }

    /// The request's own fields that do not go on dropped, and the
    /// proxy's added; the copies (shadowing) chosen in between, from the
    /// request as it goes on before the fields for its live destination.
    /// Not in `forward`'s body: its future would keep room for the added
    /// fields across its waits.
    #[allow(clippy::too_many_arguments)]
    fn mark(
        &self,
        parts: &mut Parts,
        route: &Arc<Route>,
        dest: &Dest,
        edge: bool,
        max_forwards: Option<u64>,
        out_h2: bool,
        obs: &mut Observed,
    ) -> Option<Box<mirror::Copies>> {
        let shared = &*self.worker.shared;
        let cfg = &shared.cfg;
        let mut forwards_text = [0u8; 20];
        let forwards = max_forwards.map(|n| http::decimal(n - 1, &mut forwards_text));
        let added = self.added(&H2View { parts }, route, dest, edge, forwards, obs);
        let dropped = routing::Dropped {
            edge,
            max_forwards: max_forwards.is_some(),
            request_header: cfg.shadow.request_header.as_bytes(),
            timing: obs.timing,
        };
        let drops = |k: &HeaderName| dropped.drops(k.as_str().as_bytes());
        // Most requests have nothing to drop: then nothing is collected.
        if parts.headers.keys().any(drops) {
            let doomed: Vec<HeaderName> =
                parts.headers.keys().filter(|k| drops(k)).cloned().collect();
            for name in doomed {
                parts.headers.remove(name);
            }
        }
        let copies = if route.mirrors.is_empty() {
            None
        } else {
            mirror::choose(shared, &mut self.rng.borrow_mut(), route, parts, out_h2)
        };
        if obs.on {
            obs.mirrored = copies.is_some();
        }
        for (name, value) in added.into_iter().flatten() {
            parts.headers.append(name, value);
        }
        copies
    }

    /// The fields the request goes on with, as HTTP/1.1's do (`routing::added`).
    fn added(
        &self,
        view: &H2View<'_>,
        route: &Arc<Route>,
        dest: &Dest,
        edge: bool,
        max_forwards: Option<&[u8]>,
        obs: &mut Observed,
    ) -> [Option<(HeaderName, HeaderValue)>; routing::MAX_ADDED] {
        let shared = &*self.worker.shared;
        let ids = routing::Ids::of(view, edge, shared, &mut self.rng.borrow_mut(), obs);
        let signature = match route.signed_until {
            Some(_) => view.get(SIGNATURE_HEADER),
            None => None,
        };
        let mut fields = [(&b""[..], &b""[..]); routing::MAX_ADDED];
        let n = routing::added(
            &mut fields,
            route,
            dest,
            &ids,
            signature,
            max_forwards,
            None,
            VIA_H2,
        );
        let mut marks = self.marks.borrow_mut();
        let marks = &mut *marks;
        let same = matches!(&marks.last, Some(m) if std::ptr::eq(m.route.as_ptr(), Arc::as_ptr(route)) && std::ptr::eq(m.dest, dest));
        if !same {
            marks.last = Some(Marked {
                route: Arc::downgrade(route),
                dest,
                service: HeaderValue::from_str(&route.name).ok(),
                client: HeaderValue::from_str(&dest.id).ok(),
            });
        }
        let mut out: [Option<(HeaderName, HeaderValue)>; routing::MAX_ADDED] = Default::default();
        for (slot, &(name, value)) in out.iter_mut().zip(&fields[..n]) {
            let last = marks.last.as_ref();
            let value = match name {
                b"l5d-dst-service" => last.and_then(|m| m.service.clone()),
                b"l5d-dst-client" => last.and_then(|m| m.client.clone()),
                // A new id each time: never indexed, so that it does not
                // take a place in the backend connection's HPACK table
                // (evicting the fields that repeat) for nothing.
                b"l5d-reqid" => marks.id(value).map(|mut v| {
                    v.set_sensitive(true);
                    v
                }),
                b"Via" if value == VIA_H2 => Some(HeaderValue::from_static("2 sidetrack")),
                _ => HeaderValue::from_bytes(value).ok(),
            };
            let (Some(name), Some(value)) = (added_name(name), value) else {
                continue;
            };
            *slot = Some((name, value));
        }
        out
    }

    /// `fut` for at most `after`, on a deadline of the connection's
    /// (kept for the next stream, up to `spares` of them).
    async fn within<F: Future>(
        &self,
        after: Duration,
        spares: usize,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let watchdog = &*self.worker.watchdog;
        let deadline = self.deadlines.borrow_mut().pop();
        let deadline = deadline.unwrap_or_else(|| watchdog.deadline());
        let out = deadline.within(watchdog, after, false, fut).await;
        let mut kept = self.deadlines.borrow_mut();
        if kept.len() < spares {
            kept.push(deadline);
        }
        out
    }

    /// Picks a backend of `dest`, gets a connection to it and sends the
    /// request, trying others when a connect fails (each failure ejects
    /// that backend for a while), and once more on a new connection when
    /// a pooled one closed before it took the request. The response head
    /// must come within `timeout`.
    async fn send(
        &self,
        dest: &Dest,
        mut req: Request<Body>,
        out_h2: bool,
        started: Instant,
        timeout: Duration,
        obs: &mut Observed,
    ) -> Result<Sent, Refused> {
        let shared = &*self.worker.shared;
        let cfg = &shared.cfg;
        let watchdog = &*self.worker.watchdog;
        let respond_by = Instant::now() + timeout;
        let spares = cfg.http2.max_concurrent_streams as usize;
        let mut attempts = dest.balancer.len().clamp(1, 3);
        // A request a pooled connection never took is sent once more.
        let mut resend = true;
        let mut last = String::new();
        while attempts > 0 {
            attempts -= 1;
            let backend = match dest.balancer.pick(&mut *self.rng.borrow_mut()) {
                Some(b) => b.clone(),
                None => {
                    return Err(refused(
                        503,
                        ErrorKind::NoEndpoints,
                        format!("no endpoints for {}", dest.id),
                    ));
                }
            };
            let addr = backend.addr();
            let upstreams = &self.worker.upstreams;
            let got = if out_h2 {
                upstreams
                    .h2(addr, &cfg.http2, &cfg.pool, watchdog)
                    .await
                    .map(|(s, reused)| (Sender::H2(s), reused))
            } else {
                upstreams
                    .h1(addr, &cfg.pool, watchdog)
                    .await
                    .map(|(s, reused)| (Sender::H1(s), reused))
            };
            let (sender, reused) = match got {
                Ok(got) => got,
                Err(Failed::Connect(e)) if e.is_local() => {
                    last = e.to_string();
                    break;
                }
                Err(e) => {
                    backend.eject(cfg.eject);
                    if crate::observe::log_limit::allow() {
                        tracing::warn!(dst = %dest.id, error = %e, "connect failed; backend ejected for {:?}", cfg.eject);
                    }
                    last = e.to_string();
                    continue;
                }
            };
            if obs.track() {
                obs.spans.connected = Some(obs.since());
            }
            if obs.timing {
                add_timing(&mut req, obs);
            }
            let in_flight = backend.start_at(started);
            let left = respond_by.saturating_duration_since(Instant::now());
            let (sent, h1) = match sender {
                Sender::H2(mut s) => (
                    self.within(left, spares, s.try_send_request(req)).await,
                    None,
                ),
                Sender::H1(mut s) => {
                    // A pooled connection whose last exchange is still
                    // being wound up is ready in a moment, or closed.
                    if s.ready().await.is_err() {
                        if std::mem::take(&mut resend) {
                            attempts += 1;
                        }
                        continue;
                    }
                    let sent = self.within(left, spares, s.try_send_request(req)).await;
                    (sent, Some((addr, s)))
                }
            };
            match sent {
                Ok(Ok(response)) => {
                    if obs.track() {
                        obs.spans.first_byte = Some(obs.since());
                    }
                    return Ok(Sent {
                        response,
                        in_flight,
                        h1,
                    });
                }
                Ok(Err(mut e)) => {
                    let error = e.error().to_string();
                    match e.take_message() {
                        // Never sent: the connection was closing. Once
                        // more, on a new one.
                        Some(back) if reused && resend => {
                            tracing::debug!(backend = %addr, error, "pooled connection closed; sending on a new one");
                            obs.retried = true;
                            req = back;
                            resend = false;
                            attempts += 1;
                        }
                        _ => {
                            return Err(refused(
                                502,
                                ErrorKind::BackendDied,
                                format!("{addr}: {error}"),
                            ));
                        }
                    }
                }
                Err(Elapsed) => {
                    return Err(refused(
                        504,
                        ErrorKind::BackendTimeout,
                        format!("{addr} did not answer within {timeout:?}"),
                    ));
                }
            }
        }
        Err(refused(
            502,
            ErrorKind::ConnectFailed,
            format!("{}: {last}", dest.id),
        ))
    }
}

/// `l5d-timing` with the proxy's spans so far.
fn add_timing(req: &mut Request<Body>, obs: &Observed) {
    let mut line = Vec::with_capacity(64);
    let s = &obs.spans;
    trace::write_timing(
        &mut line,
        &[
            ("identify", s.identified),
            ("route", s.routed),
            ("connect", s.connected),
        ],
    );
    if let Ok(v) = HeaderValue::from_bytes(&line) {
        req.headers_mut().insert(TIMING_HEADER, v);
    }
}

/// Whether `name` is one of `names` or under one, segment-wise.
fn names_h2(names: &[String], name: &str) -> bool {
    names.iter().any(|n| {
        let n = n.trim_end_matches('/');
        name == n || (name.starts_with(n) && name.as_bytes().get(n.len()) == Some(&b'/'))
    })
}

/// A request that came as HTTP/2 made ready for HTTP/1.1: the origin-form
/// target, and Host from `:authority` when it has none.
fn to_http1(parts: &mut Parts) {
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let origin = parts.uri.path_and_query().map_or_else(
        || Uri::from_static("/"),
        |p| Uri::try_from(p.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
    );
    parts.uri = origin;
    // HTTP/2's TE may say only "trailers"; HTTP/1.1 would need it named
    // in Connection too, and the backend's trailers are read either way.
    parts.headers.remove(header::TE);
}

fn refused(status: u16, kind: ErrorKind, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
        kind,
        always_close: false,
    }
}

/// The answer to a TRACE or OPTIONS at `Max-Forwards: 0`, as HTTP/1.1's
/// (`http::write_max_forwards_answer`): OPTIONS 200, TRACE 405 (the proxy
/// does not reflect requests); both `Allow: OPTIONS`.
fn max_forwards_answer(trace: bool) -> Response<Body> {
    let mut response = if trace {
        let mut text = http::TRACE_REASON.as_bytes().to_vec();
        text.push(b'\n');
        let mut response = Response::new(Body::Full(Some(Bytes::from(text))));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        let h = response.headers_mut();
        h.insert("l5d-err", HeaderValue::from_static(http::TRACE_REASON));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    } else {
        Response::new(Body::Empty)
    };
    let h = response.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS"));
    h.insert(header::VIA, HeaderValue::from_static("2 sidetrack"));
    response
}

/// The proxy's own answer: for gRPC a trailers-only response with the
/// status its error maps to; otherwise the status, `l5d-err` and the
/// reason as text, as HTTP/1.1 gets it.
fn error_response(grpc: bool, r: &Refused) -> Response<Body> {
    let mut text = Vec::with_capacity(r.reason.len() + 1);
    http::push_sanitised(&mut text, &r.reason);
    let l5d_err = HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("error"));
    let mut response = if grpc {
        let mut response = Response::new(Body::Empty);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.extend(body::status_trailers(grpc::code(r.kind), &r.reason));
        response
    } else {
        text.push(b'\n');
        let mut response = Response::new(Body::Full(Some(Bytes::from(text))));
        *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    };
    response.headers_mut().insert("l5d-err", l5d_err);
    response
        .headers_mut()
        .insert(header::VIA, HeaderValue::from_static("2 sidetrack"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_told_from_its_first_bytes() {
        assert!(is_preface(PREFACE));
        assert!(is_preface(b"PRI * HTTP/2"));
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0]);
        assert!(is_preface(&more));
        assert!(!is_preface(b""));
        assert!(!is_preface(b"GET / HTTP/1.1\r\n"));
        assert!(!is_preface(b"PRI * HTTP/1.1\r\n"));
    }

    #[test]
    fn h2_names_match_whole_segments() {
        let names = ["/svc/world".to_string(), "/svc/grpc/".to_string()];
        assert!(names_h2(&names, "/svc/world"));
        assert!(names_h2(&names, "/svc/world/x"));
        assert!(!names_h2(&names, "/svc/worldly"));
        assert!(names_h2(&names, "/svc/grpc"));
        assert!(!names_h2(&[], "/svc/world"));
    }

    #[test]
    fn a_request_for_http1_gets_origin_form_and_host() {
        let req = Request::builder()
            .uri("http://world:8080/a/b?c=d")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        to_http1(&mut parts);
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.headers["host"], "world:8080");
        assert!(!parts.headers.contains_key("te"));
    }

    #[test]
    fn heads_are_recorded_in_http1_text_form() {
        let req = Request::builder()
            .method("POST")
            .uri("http://world/test.Echo/Unary")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(
            request_text(&parts),
            b"POST /test.Echo/Unary HTTP/2\r\nhost: world\r\ncontent-type: application/grpc\r\n\r\n"
        );
        let resp = Response::builder()
            .status(404)
            .header("via", "2 sidetrack")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        assert_eq!(
            response_text(&parts),
            b"HTTP/2 404 Not Found\r\nvia: 2 sidetrack\r\n\r\n"
        );
    }

    #[test]
    fn added_names_are_made_as_parsed() {
        for name in [
            trace::TRACEPARENT.as_bytes(),
            SIGNATURE_HEADER.as_bytes(),
            b"Max-Forwards",
            b"Host",
            b"l5d-dst-service",
            b"l5d-dst-client",
            b"l5d-ctx-dtab",
            b"l5d-reqid",
            b"Via",
            b"x-other",
        ] {
            let parsed = HeaderName::from_bytes(name).unwrap();
            assert_eq!(added_name(name), Some(parsed));
        }
        assert_eq!(added_name(b"bad name"), None);
    }

    #[test]
    fn ids_cut_from_one_room_keep_their_own_bytes() {
        let mut marks = Marks::default();
        let ids: Vec<HeaderValue> = (0..3 * IDS_PER_ALLOCATION)
            .map(|i| marks.id(format!("{i:016x}").as_bytes()).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id.as_bytes(), format!("{i:016x}").as_bytes());
        }
        assert!(marks.id(b"not\na value").is_none());
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = refused(
            503,
            ErrorKind::NoEndpoints,
            "no endpoints for /#/io.l5d.fs/x",
        );
        let resp = error_response(true, &r);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "no endpoints for /#/io.l5d.fs/x"
        );
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert!(http_body::Body::is_end_stream(resp.body()));
        let resp = error_response(false, &r);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["l5d-err"], "no endpoints for /#/io.l5d.fs/x");
    }
}
