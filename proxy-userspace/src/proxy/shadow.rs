//! Shadowing in the data path: copies of requests sent to other versions,
//! off the request path.
//!
//! While a request is routed, the mirrors of its route (see
//! `policy::mirror`) decide whether it is copied; the copy's head is
//! written then, and its body is kept as it streams to the live version
//! (a [`Tee`], up to `shadow.max_body_bytes`; past it the copy is given
//! up, and the live request goes on as ever). When the live exchange has
//! been answered, each copy becomes a [`Job`] for its target's lane on
//! this worker: at most `max_in_flight` copies run at once per target,
//! `max_queued` wait, and past that a copy is dropped and counted. The
//! live exchange never waits for a copy: copies start after its answer is
//! relayed, on their own connection pool, with their own timeout, and
//! whatever becomes of them is only counted.
//!
//! A copy's answer is read and thrown away, or, in diff mode, kept (its
//! head and its body up to the limit, dechunked) with the live answer's
//! and the secondary's, and handed to the diff engine.
//!
//! A copy of a request that came as HTTP/2 carries itself ([`Carry`],
//! made by `proxy::http2::mirror`): the lane picks its backend, times it
//! out and counts it, and it is never compared.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, VecDeque},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{SeedableRng, rngs::SmallRng};
use tokio::net::TcpStream;

use super::{
    Worker,
    conn::{ReadHeadError, read_response_head},
    pool::{self, Liveness, Pool},
    stream,
};
use crate::{
    diff,
    dtab::{Choice, NameTree},
    http::{
        self, BodyLength, ChunkedScanner, Known, Parsed, RequestHead, RequestKind, ResponseHead,
    },
    observe::dashboard::Sample,
    policy::mirror::ShadowSettings,
    route::{BoundMirror, Dest, Route},
};

/// What the data path needs of the shadow settings, in its shape.
#[derive(Clone, Debug)]
pub struct ShadowConfig {
    /// Lower case.
    pub marker_header: String,
    /// Lower case.
    pub request_header: String,
    pub max_in_flight: usize,
    pub max_queued: usize,
    pub timeout: Duration,
    pub max_body: usize,
}

impl ShadowConfig {
    pub fn of(s: &ShadowSettings) -> ShadowConfig {
        ShadowConfig {
            marker_header: s.marker_header.to_ascii_lowercase(),
            request_header: s.request_header.to_ascii_lowercase(),
            max_in_flight: s.max_in_flight.max(1),
            max_queued: s.max_queued,
            timeout: crate::config::ms(s.timeout_ms),
            max_body: s.max_body_bytes,
        }
    }
}

/// A body kept as it passes, up to a limit: past it, nothing is kept and
/// the tee says so.
#[derive(Debug, Default)]
pub struct Tee {
    buf: Vec<u8>,
    limit: usize,
    on: bool,
    done: bool,
    overflowed: bool,
}

impl Tee {
    /// Starts keeping, up to `limit` bytes.
    pub fn start(&mut self, limit: usize) {
        self.buf.clear();
        self.limit = limit;
        self.on = true;
        self.done = false;
        self.overflowed = false;
    }

    /// Keeps nothing more: the body is too large to keep, or goes a way
    /// that cannot keep it.
    pub fn give_up(&mut self) {
        self.on = false;
        self.overflowed = true;
        self.buf.clear();
    }

    /// Whether bytes passing are kept: while they are, bodies must go
    /// through userspace (no splice).
    pub fn is_on(&self) -> bool {
        self.on && !self.done
    }

    /// What it keeps at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes passing.
    pub fn take(&mut self, data: &[u8]) {
        if !self.is_on() {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.give_up();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// The whole body has passed.
    pub fn finish(&mut self) {
        if self.on {
            self.done = true;
        }
    }

    /// The body, when it passed whole and was kept whole.
    pub fn kept(&self) -> Option<&[u8]> {
        (self.on && self.done).then_some(&self.buf[..])
    }

    /// The body was too large to keep.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn reset(&mut self) {
        self.on = false;
        self.done = false;
        self.overflowed = false;
        self.buf.clear();
    }
}

/// A request's copies while its live exchange runs: the mirrors that take
/// one, each with its copy's head, the request body as it passes, and in
/// diff mode the live answer.
#[derive(Debug, Default)]
pub struct Copies {
    route: Option<Arc<Route>>,
    chosen: Vec<(usize, Vec<u8>)>,
    diff: bool,
    pub body: Tee,
    live_head: Vec<u8>,
    pub live: Tee,
}

impl Copies {
    /// Ready for the next request.
    pub fn clear(&mut self) {
        self.route = None;
        self.chosen.clear();
        self.diff = false;
        self.body.reset();
        self.live.reset();
        self.live_head.clear();
    }

    /// Whether the request is copied at all.
    pub fn any(&self) -> bool {
        !self.chosen.is_empty()
    }

    /// Whether a copy is compared with the live answer (diff mode).
    pub fn diff(&self) -> bool {
        self.diff
    }

    /// The route's mirror `index` takes a copy, whose head is `head`.
    pub fn choose(&mut self, route: &Arc<Route>, index: usize, head: Vec<u8>) {
        if self.route.is_none() {
            self.route = Some(route.clone());
        }
        self.diff |= route.mirrors[index].secondary.is_some();
        self.chosen.push((index, head));
    }

    /// Diff mode: the live answer's head, and its body kept from here on.
    pub fn keep_live_head(&mut self, head: &[u8], limit: usize) {
        self.live_head.clear();
        self.live_head.extend_from_slice(head);
        self.live.start(limit);
    }

    /// What the buffers hold on to, for the memory budget.
    pub fn capacity(&self) -> usize {
        self.body.buf.capacity() + self.live.buf.capacity() + self.live_head.capacity()
    }

    /// Gives back what a large body took.
    pub fn shrink(&mut self) {
        self.body.buf.shrink_to(0);
        self.live.buf.shrink_to(0);
        self.live_head.shrink_to(0);
    }

    /// After the live exchange: each copy to its target's lane, or counted
    /// as not made (its body was too large; in diff mode, the live answer
    /// was not kept).
    pub fn dispatch(&mut self, worker: &Rc<Worker>) {
        let Some(route) = self.route.take() else {
            return;
        };
        // The bodies may have been kept for an observer too, up to its
        // limit: copies and diffs take them up to their own.
        let limits = &worker.shared;
        let live = if self.diff {
            self.live
                .kept()
                .filter(|b| b.len() <= limits.diff.max_body_bytes())
                .and_then(|body| live_answer(&self.live_head, body))
                .map(Rc::new)
        } else {
            None
        };
        let max_body = limits.cfg.shadow.max_body;
        let body = self.body.kept().filter(|b| b.len() <= max_body);
        let too_large =
            self.body.overflowed() || self.body.kept().is_some_and(|b| b.len() > max_body);
        let budget = &worker.shared.budget;
        for (index, mut head) in self.chosen.drain(..) {
            let bound = &route.mirrors[index];
            let Some(body) = body else {
                if too_large {
                    bound.stats.body_too_large.inc();
                } else {
                    bound.stats.failed.inc();
                }
                continue;
            };
            if bound.secondary.is_some() && live.is_none() {
                bound.stats.diff_skipped.inc();
                continue;
            }
            if budget.pressure() != super::budget::Pressure::Normal {
                bound.stats.dropped.inc();
                continue;
            }
            head.extend_from_slice(body);
            let job = Job {
                route: route.clone(),
                index,
                request: head,
                carried: None,
                live: bound.secondary.as_ref().and(live.clone()),
                charged: 0,
            };
            submit(worker, job);
        }
    }
}

/// The live answer as a diff wants it: its head, and its body (as it was
/// framed, in `framed`) without chunked coding.
fn live_answer(head: &[u8], framed: &[u8]) -> Option<Kept> {
    let mut resp = ResponseHead::with_capacity(64);
    resp.parse(head, &http::Limits::default()).ok()?;
    let chunked = resp.get_all(head, Known::TransferEncoding).next().is_some();
    let body = if chunked {
        let mut out = Vec::with_capacity(framed.len());
        let mut scanner = ChunkedScanner::new();
        scanner.decode(framed, |d| out.extend_from_slice(d)).ok()?;
        out
    } else {
        framed.to_vec()
    };
    Some(Kept {
        head: head.to_vec(),
        len: body.len() as u64,
        body,
        truncated: false,
    })
}

/// An answer kept for a diff: its head as it came, and its body without
/// chunked coding, up to the limit.
#[derive(Debug, Default)]
pub struct Kept {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    /// The body went on past what was kept.
    pub truncated: bool,
    /// The body's whole length, kept or not.
    pub len: u64,
}

impl Kept {
    fn size(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// The answer as the diff engine takes it.
    fn response<'a>(
        &'a self,
        status: u16,
        headers: &'a [(&'a [u8], &'a [u8])],
    ) -> diff::Response<'a> {
        let r = diff::Response::new(status, headers, &self.body);
        if self.truncated {
            r.truncated(Some(self.len))
        } else {
            r
        }
    }
}

/// One copy of a request, ready to go.
pub struct Job {
    pub route: Arc<Route>,
    /// Which of the route's mirrors.
    pub index: usize,
    /// The copy's head and body (HTTP/1.1).
    pub request: Vec<u8>,
    /// A copy that carries itself instead (an HTTP/2 request's).
    pub carried: Option<Box<dyn Carry>>,
    /// Diff mode: the live answer.
    pub live: Option<Rc<Kept>>,
    /// What the job is charged against the memory budget.
    charged: usize,
}

/// What a [`Carry`] comes to: the answer's status and body bytes, or why
/// there was none.
pub type Carried<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(u16, u64), String>> + 'a>>;

/// A copy sent its own way, not as HTTP/1.1 bytes on the shadow pool:
/// an HTTP/2 request's, sent as the live one went out (`proxy::http2`).
/// The lane chooses the backend, times the copy out and counts it.
pub trait Carry {
    /// Sends the copy to `addr` and reads its answer to the end, throwing
    /// it away: its status and the answer's body bytes.
    fn carry<'a>(&'a self, worker: &'a Rc<Worker>, addr: std::net::SocketAddr) -> Carried<'a>;
    /// What it holds, for the memory budget.
    fn size(&self) -> usize;
}

impl Job {
    /// A copy for the route's mirror `index` that carries itself.
    pub fn carried(route: Arc<Route>, index: usize, carried: Box<dyn Carry>) -> Job {
        Job {
            route,
            index,
            request: Vec::new(),
            carried: Some(carried),
            live: None,
            charged: 0,
        }
    }
}

impl Job {
    fn mirror(&self) -> &BoundMirror {
        &self.route.mirrors[self.index]
    }
}

/// One target's copies on this worker.
#[derive(Default)]
struct Lane {
    in_flight: usize,
    queue: VecDeque<Job>,
}

/// A read buffer and a parsed head, kept between copies.
struct Spare {
    buf: Vec<u8>,
    resp: ResponseHead,
}

/// A worker's shadowing: its lanes, its own connection pool, and the
/// buffers copies reuse.
pub struct Shadow {
    pool: RefCell<Pool>,
    lanes: RefCell<HashMap<Arc<str>, Lane>>,
    spares: RefCell<Vec<Spare>>,
    /// Seeds the copies' random choices (of a branch, of a backend).
    seed: Cell<u64>,
}

/// Targets with copies running or waiting on a worker, at most; a copy
/// for another is dropped and counted.
const MAX_LANES: usize = 256;

/// Spare buffers a worker keeps, at most.
const MAX_SPARES: usize = 16;
/// A spare read buffer that grew past this is let go.
const SPARE_BUF: usize = 16 * 1024;

impl Shadow {
    pub fn new(pool: pool::PoolConfig) -> Shadow {
        Shadow {
            pool: RefCell::new(Pool::new(pool)),
            lanes: RefCell::default(),
            spares: RefCell::default(),
            seed: Cell::new(rand::random()),
        }
    }

    /// Copies running or waiting on this worker.
    pub fn pending(&self) -> usize {
        self.lanes
            .borrow()
            .values()
            .map(|l| l.in_flight + l.queue.len())
            .sum()
    }

    fn rng(&self) -> SmallRng {
        let mut state = self.seed.get();
        let seed = crate::dtab::splitmix(&mut state);
        self.seed.set(state);
        SmallRng::seed_from_u64(seed)
    }

    fn spare(&self, max_headers: usize) -> Spare {
        self.spares.borrow_mut().pop().unwrap_or_else(|| Spare {
            buf: Vec::with_capacity(4096),
            resp: ResponseHead::with_capacity(max_headers),
        })
    }

    fn give_back(&self, mut spare: Spare) {
        let mut spares = self.spares.borrow_mut();
        if spares.len() < MAX_SPARES && spare.buf.capacity() <= SPARE_BUF {
            spare.buf.clear();
            spares.push(spare);
        }
    }
}

/// Hands a copy to its target's lane: run now, queued, or dropped when the
/// lane is full.
pub fn submit(worker: &Rc<Worker>, mut job: Job) {
    let cfg = &worker.shared.cfg.shadow;
    let key = job.mirror().lane.clone();
    let mut lanes = worker.shadow.lanes.borrow_mut();
    // Targets come from requests too (`l5d-mirror`): lanes are bounded
    // in number as each is in length.
    if lanes.len() >= MAX_LANES && !lanes.contains_key(&key) {
        job.mirror().stats.dropped.inc();
        return;
    }
    let lane = lanes.entry(key.clone()).or_default();
    let admitted = lane.in_flight < cfg.max_in_flight || lane.queue.len() < cfg.max_queued;
    if admitted {
        // What a copy holds counts against the memory budget until it is done.
        job.charged = job.request.capacity()
            + job.live.as_ref().map_or(0, |k| k.size())
            + job.carried.as_ref().map_or(0, |c| c.size());
        worker.shared.budget.recharge(0, job.charged);
    }
    if lane.in_flight < cfg.max_in_flight {
        lane.in_flight += 1;
        drop(lanes);
        tokio::task::spawn_local(run_lane(worker.clone(), key, job));
    } else if lane.queue.len() < cfg.max_queued {
        lane.queue.push_back(job);
    } else {
        job.mirror().stats.dropped.inc();
    }
}

/// Runs copies of one lane, this one and then those waiting, until none
/// waits.
async fn run_lane(worker: Rc<Worker>, key: Arc<str>, mut job: Job) {
    let mut rng = worker.shadow.rng();
    loop {
        run(&worker, &job, &mut rng).await;
        worker.shared.budget.recharge(job.charged, 0);
        let mut lanes = worker.shadow.lanes.borrow_mut();
        let Some(lane) = lanes.get_mut(&key) else {
            return;
        };
        match lane.queue.pop_front() {
            Some(next) => job = next,
            None => {
                lane.in_flight -= 1;
                if lane.in_flight == 0 {
                    lanes.remove(&key);
                }
                return;
            }
        }
    }
}

/// Why a copy came to nothing.
#[derive(Debug)]
enum CopyError {
    Failed(String),
    TimedOut,
}

/// Sends one copy (and, in diff mode, the secondary's) and counts what
/// became of it.
async fn run(worker: &Rc<Worker>, job: &Job, rng: &mut SmallRng) {
    let bound = job.mirror();
    let stats = &bound.stats;
    let timeout = worker.shared.cfg.shadow.timeout;
    let watchdog = worker.watchdog.clone();
    if let Some(carried) = &job.carried {
        // To the candidate only: the diff compares HTTP/1.1 answers.
        let sent = watchdog.timeout(timeout, carry(worker, &bound.target, &**carried, rng));
        count(stats, sent.await.unwrap_or(Err(CopyError::TimedOut)));
        if bound.secondary.is_some() {
            stats.diff_skipped.inc();
        }
        return;
    }
    let Some(secondary) = &bound.secondary else {
        let sent = watchdog.timeout(
            timeout,
            copy(worker, &bound.target, &job.request, None, rng),
        );
        count(stats, sent.await.unwrap_or(Err(CopyError::TimedOut)));
        return;
    };
    let keep = worker.shared.diff.max_body_bytes();
    let (mut candidate, mut second) = (Kept::default(), Kept::default());
    let mut rng2 = SmallRng::from_rng(rng);
    let both = async {
        tokio::join!(
            copy(
                worker,
                &bound.target,
                &job.request,
                Some((&mut candidate, keep)),
                rng
            ),
            copy(
                worker,
                secondary,
                &job.request,
                Some((&mut second, keep)),
                &mut rng2
            ),
        )
    };
    let (a, b) = match watchdog.timeout(timeout, both).await {
        Ok((a, b)) => (a, b),
        Err(_) => (Err(CopyError::TimedOut), Err(CopyError::TimedOut)),
    };
    let compared = a.is_ok() && b.is_ok();
    count(stats, a);
    let differs = match &job.live {
        Some(live) if compared => {
            compare(worker, &job.route, &job.request, live, &second, &candidate)
        }
        _ => None,
    };
    match differs {
        Some(differs) => {
            stats.diffed.inc();
            if differs {
                stats.differing.inc();
            }
        }
        None => {
            stats.diff_skipped.inc();
        }
    }
}

/// Hands the three answers to the diff engine, under the request's
/// endpoint; whether the candidate's answer differed from the live one.
/// `None` when an answer's head does not parse again (it did once).
fn compare(
    worker: &Worker,
    route: &Route,
    request: &[u8],
    live: &Kept,
    secondary: &Kept,
    candidate: &Kept,
) -> Option<bool> {
    let engine = &worker.shared.diff;
    let settings = engine.settings();
    let limits = &worker.shared.cfg.limits;
    let mut head = RequestHead::with_capacity(limits.max_headers);
    let Ok(Parsed::Complete { head_len }) = head.parse(request, limits) else {
        return None;
    };
    let headers: Vec<(&[u8], &[u8])> = head.headers(request).collect();
    let named = settings
        .endpoint_header
        .as_deref()
        .and_then(|h| head.get(request, h));
    let endpoint = diff::endpoint(
        &route.name,
        head.method(request),
        head.target(request),
        named,
    );
    let req = diff::Request {
        method: head.method(request),
        path: head.target(request),
        headers: &headers,
        body: &request[head_len..],
    };
    let (mut a, mut b, mut c) = (
        ResponseHead::with_capacity(limits.max_headers),
        ResponseHead::with_capacity(limits.max_headers),
        ResponseHead::with_capacity(limits.max_headers),
    );
    let (ha, hb, hc);
    let primary = {
        ha = answer_headers(&mut a, live, limits)?;
        live.response(a.status(), &ha)
    };
    let second = {
        hb = answer_headers(&mut b, secondary, limits)?;
        secondary.response(b.status(), &hb)
    };
    let cand = {
        hc = answer_headers(&mut c, candidate, limits)?;
        candidate.response(c.status(), &hc)
    };
    Some(engine.record(&endpoint, &req, &primary, &second, &cand))
}

/// An answer's header fields, from its head parsed again into `resp`.
fn answer_headers<'k>(
    resp: &mut ResponseHead,
    kept: &'k Kept,
    limits: &http::Limits,
) -> Option<Vec<(&'k [u8], &'k [u8])>> {
    match resp.parse(&kept.head, limits) {
        Ok(Parsed::Complete { .. }) => Some(resp.headers(&kept.head).collect()),
        _ => None,
    }
}

fn count(stats: &crate::observe::metrics::MirrorStats, r: Result<(), CopyError>) {
    match r {
        Ok(()) => {
            stats.answered.inc();
        }
        Err(CopyError::TimedOut) => {
            stats.timed_out.inc();
        }
        Err(CopyError::Failed(why)) => {
            stats.failed.inc();
            if crate::observe::log_limit::allow() {
                tracing::debug!(%why, "a copy of a request failed");
            }
        }
    }
}

/// A member of `target`, counted as sent a request.
fn pick<'t>(
    target: &'t Result<NameTree<Dest>, String>,
    rng: &mut SmallRng,
) -> Result<(&'t Dest, std::net::SocketAddr), CopyError> {
    let tree = target.as_ref().map_err(|e| CopyError::Failed(e.clone()))?;
    let Choice::Leaf(dest) = tree.choose(rng) else {
        return Err(CopyError::Failed("the target chose no destination".into()));
    };
    let backend = dest
        .balancer
        .pick(rng)
        .ok_or_else(|| CopyError::Failed(format!("no endpoints for {}", dest.id)))?;
    dest.stats.requests.inc();
    Ok((dest, backend.addr()))
}

/// Sends a copy that carries itself to a member of `target`.
async fn carry(
    worker: &Rc<Worker>,
    target: &Result<NameTree<Dest>, String>,
    carried: &dyn Carry,
    rng: &mut SmallRng,
) -> Result<(), CopyError> {
    let (dest, addr) = pick(target, rng)?;
    let started = Instant::now();
    let mut tally = Tally::new(dest, started, carried.size());
    let (status, bytes) = carried
        .carry(worker, addr)
        .await
        .map_err(|e| CopyError::Failed(format!("{addr}: {e}")))?;
    dest.stats.response(status);
    dest.stats.latency.observe(started.elapsed());
    tally.status = status;
    tally.bytes_out = bytes;
    tally.answered = true;
    Ok(())
}

/// Sends `request` to a member of `target` and reads the answer, keeping
/// it (up to a number of body bytes) in `keep` when given. A pooled
/// connection found closed before any answer is replaced once by a new one.
async fn copy(
    worker: &Rc<Worker>,
    target: &Result<NameTree<Dest>, String>,
    request: &[u8],
    mut keep: Option<(&mut Kept, usize)>,
    rng: &mut SmallRng,
) -> Result<(), CopyError> {
    let (dest, addr) = pick(target, rng)?;
    let shared = &worker.shared;
    let started = Instant::now();
    let mut tally = Tally::new(dest, started, request.len());
    let mut spare = worker.shadow.spare(shared.cfg.limits.max_headers);
    let pooled = {
        let now = worker.watchdog.now_ms();
        worker
            .shadow
            .pool
            .borrow_mut()
            .take(addr, now, Liveness::Cached)
    };
    let mut reused = pooled.is_some();
    let mut conn = pooled;
    let (conn, head_len) = loop {
        let c = match conn.take() {
            Some(c) => c,
            None => {
                let cfg = *worker.shadow.pool.borrow().config();
                pool::connect(addr, &cfg, &worker.watchdog)
                    .await
                    .map_err(|e| CopyError::Failed(e.to_string()))?
            }
        };
        spare.buf.clear();
        let sent = match stream::write_all(&c, request).await {
            Ok(()) => read_final_head(&c, &mut spare, shared).await,
            Err(_) => Err(ReadHeadError::ClosedBeforeResponse),
        };
        match sent {
            Ok(n) => break (c, n),
            // A pooled connection the target had closed: once more, new.
            Err(ReadHeadError::ClosedBeforeResponse) if reused => reused = false,
            Err(e) => return Err(CopyError::Failed(format!("{addr}: {e}"))),
        }
    };
    let Spare { buf, resp } = &mut spare;
    dest.stats.response(resp.status());
    tally.status = resp.status();
    tally.bytes_out = head_len as u64;
    let kind = RequestKind {
        head: request.starts_with(b"HEAD "),
        ..RequestKind::default()
    };
    let framing = http::response_body(kind, resp, buf)
        .map_err(|e| CopyError::Failed(format!("{addr}: {e}")))?;
    let close = framing.close
        || http::wants_close(resp.minor_version(), resp.get_all(buf, Known::Connection));
    if let Some((k, _)) = keep.as_mut() {
        k.head.extend_from_slice(&buf[..head_len]);
    }
    buf.drain(..head_len);
    let whole = read_body(&conn, buf, framing.length, keep, &mut tally.bytes_out).await?;
    dest.stats.latency.observe(started.elapsed());
    tally.answered = true;
    if whole && !close && buf.is_empty() {
        let now = worker.watchdog.now_ms();
        worker.shadow.pool.borrow_mut().put(addr, conn, now);
    }
    worker.shadow.give_back(spare);
    Ok(())
}

/// One copy on its destination's dashboard row (`Via::Mirror`), counted
/// when the copy ends however it ends: answered, failed, or dropped by the
/// copy timeout (then the future, and this with it, is dropped). A copy
/// that was not answered whole counts as the proxy's error.
struct Tally<'a> {
    dest: &'a Dest,
    started: Instant,
    /// The answer's status (0: none yet).
    status: u16,
    bytes_in: u64,
    /// The answer's head and (dechunked) body bytes read so far.
    bytes_out: u64,
    answered: bool,
}

impl<'a> Tally<'a> {
    fn new(dest: &'a Dest, started: Instant, request: usize) -> Tally<'a> {
        Tally {
            dest,
            started,
            status: 0,
            bytes_in: request as u64,
            bytes_out: 0,
            answered: false,
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        let Some(row) = &self.dest.stats.dashboard else {
            return;
        };
        let now = Instant::now();
        row.record(
            now,
            &Sample {
                latency: now - self.started,
                status: self.status,
                proxy_error: !self.answered,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
            },
        );
    }
}

/// Reads up to the final answer's head (interim ones skipped); its length.
async fn read_final_head(
    conn: &TcpStream,
    spare: &mut Spare,
    shared: &super::Shared,
) -> Result<usize, ReadHeadError> {
    loop {
        let n = read_response_head(
            conn,
            &mut spare.buf,
            &mut spare.resp,
            &shared.cfg.limits,
            &shared.budget,
        )
        .await?;
        if !spare.resp.is_interim() {
            return Ok(n);
        }
        spare.buf.drain(..n);
    }
}

/// Reads an answer's body (its first bytes in `buf`), keeping up to the
/// given number of bytes of it, dechunked, in `keep`. Returns whether the
/// connection is at a message boundary afterwards.
async fn read_body(
    conn: &TcpStream,
    buf: &mut Vec<u8>,
    length: BodyLength,
    keep: Option<(&mut Kept, usize)>,
    counted: &mut u64,
) -> Result<bool, CopyError> {
    let mut keep = keep;
    let mut take = |data: &[u8]| {
        *counted += data.len() as u64;
        if let Some((k, limit)) = keep.as_mut() {
            let room = limit.saturating_sub(k.body.len());
            if data.len() > room {
                k.truncated = true;
            }
            k.body.extend_from_slice(&data[..data.len().min(room)]);
            k.len += data.len() as u64;
        }
    };
    let eof = || CopyError::Failed("the answer ended early".into());
    match length {
        BodyLength::None => Ok(true),
        BodyLength::Tunnel => Ok(false),
        BodyLength::Length(n) => {
            let mut left = n;
            loop {
                let here = (buf.len() as u64).min(left) as usize;
                take(&buf[..here]);
                buf.drain(..here);
                left -= here as u64;
                if left == 0 {
                    return Ok(true);
                }
                if more(conn, buf).await? == 0 {
                    return Err(eof());
                }
            }
        }
        BodyLength::Chunked => {
            let mut scanner = ChunkedScanner::new();
            loop {
                let k = scanner
                    .decode(buf, &mut take)
                    .map_err(|e| CopyError::Failed(e.to_string()))?;
                buf.drain(..k);
                if scanner.is_done() {
                    return Ok(true);
                }
                if more(conn, buf).await? == 0 {
                    return Err(eof());
                }
            }
        }
        BodyLength::UntilClose => loop {
            take(buf);
            buf.clear();
            if more(conn, buf).await? == 0 {
                return Ok(false);
            }
        },
    }
}

/// Reads what the connection has into `buf` (64 KiB at most at a time).
async fn more(conn: &TcpStream, buf: &mut Vec<u8>) -> Result<usize, CopyError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(64 * 1024);
    }
    stream::read_buf(conn, buf)
        .await
        .map_err(|e| CopyError::Failed(e.to_string()))
}
