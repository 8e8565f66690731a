//! The soak's clients, `xtask app soak-load good|hostile ENV_JSON`, run
//! inside a client pod. Each kind of traffic has threads of its own, paced
//! (a bounded rate), that run until the deadline in [`Env`]; every
//! exchange is judged at once against what that request must get:
//!
//! * `ok`: a well-formed request got its successful answer, byte-exact;
//! * `expected`: a request to a failing backend, or a hostile one, got the
//!   refusal it must get (4xx/5xx with `l5d-err`, a body cut short, a
//!   close);
//! * `retried`: a keep-alive connection the proxy had closed while idle
//!   took the request's first bytes; sent again once on a new connection,
//!   as HTTP clients do (RFC 9112 §9.3.1);
//! * `failed`: anything else: a wrong or missing answer, or no answer by
//!   the request's deadline.
//!
//! The tallies go to stdout as one JSON [`Report`] a second (and a last
//! one with `done`), which `cargo xtask soak` reads while it samples.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    DENIED, ProxyLimits,
    http::{ReadError, Response, read_response},
};
use crate::{apps::pattern, staging::STAGE_V2};
use Role::{Good, Hostile};

/// Everything the clients need to know about the bed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Env {
    /// The service address every request goes to (intercepted).
    pub service: SocketAddr,
    /// How long to run.
    pub secs: f64,
    pub hello: Ipv4Addr,
    pub world_v1: Ipv4Addr,
    pub world_v2: Ipv4Addr,
    /// The `app-v1` backend, for overrides to a literal address that works.
    pub app_v1: SocketAddr,
    /// A pod where nothing listens.
    pub refused: Ipv4Addr,
    pub limits: ProxyLimits,
}

/// The override that stages `app-v2`.
pub const STAGE_APP_V2: &str = "l5d-dtab: /host/app => /srv/app-v2";

/// One kind's counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KindTally {
    pub ok: u64,
    pub expected: u64,
    pub retried: u64,
    pub failed: u64,
    /// The first failures, verbatim (at most [`MAX_EXAMPLES`]).
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 8;

/// What one load process has counted so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub role: String,
    pub done: bool,
    pub kinds: BTreeMap<String, KindTally>,
}

/// The two client pods' shares of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Well-formed requests: to healthy backends (must succeed) and to
    /// failing ones (must get the proxy's refusal).
    Good,
    /// The hostile cases of issue 18.
    Hostile,
}

/// A kind of traffic: its threads, each running `step` every `every`
/// (back to back when zero).
struct Kind {
    name: &'static str,
    role: Role,
    threads: usize,
    every: Duration,
    step: fn(&Ctx, &mut Session, &Rec),
}

const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A kind: name, role, threads, a step every `every_ms`, the step.
const fn kind(
    name: &'static str,
    role: Role,
    threads: usize,
    every_ms: u64,
    step: fn(&Ctx, &mut Session, &Rec),
) -> Kind {
    Kind {
        name,
        role,
        threads,
        every: ms(every_ms),
        step,
    }
}

/// Every kind, and its rate: about 90 requests a second from the good
/// pod (and 50 more from `hello` to `world`), about 30 from the hostile
/// one plus 50 idle connections a second and the slow-drip ones.
const KINDS: [Kind; 15] = [
    kind("hello-keepalive", Good, 2, 40, hello_keepalive),
    kind("app-short", Good, 1, 100, app_short),
    kind("app-bodies", Good, 2, 125, app_bodies),
    kind("slow-backend", Good, 1, 0, slow_backend),
    kind("flaky-backend", Good, 1, 250, flaky_backend),
    kind("refusing-backend", Good, 1, 250, refusing_backend),
    kind("big-dtab", Hostile, 1, 100, big_dtab),
    kind("interim-flood", Hostile, 1, 500, interim_flood),
    kind("partial-head", Hostile, 6, 0, partial_head),
    kind("inet-overrides", Hostile, 1, 200, inet_overrides),
    kind("idle-sockets", Hostile, 1, 20, idle_sockets),
    kind("trickled-body", Hostile, 2, 0, trickled_body),
    kind("max-forwards", Hostile, 1, 500, max_forwards),
    kind("http-1.2", Hostile, 1, 500, http_1_2),
    kind("proxy-authorization", Hostile, 1, 500, proxy_authorization),
];

/// What every thread shares.
struct Ctx {
    env: Env,
    deadline: Instant,
}

/// One thread's state: its keep-alive connection, a counter, a random
/// stream, and (for `idle-sockets`) the sockets it holds.
struct Session {
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    seq: u64,
    rng: u64,
    idle: VecDeque<(TcpStream, Instant)>,
}

impl Session {
    /// xorshift64: sizes and delays vary, reproducibly per thread.
    fn rand(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % below.max(1)
    }
}

/// Where a thread records its outcomes.
struct Rec<'a>(&'a Mutex<KindTally>);

impl Rec<'_> {
    fn with(&self, f: impl FnOnce(&mut KindTally)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
    fn ok(&self) {
        self.with(|t| t.ok += 1);
    }
    fn expected(&self) {
        self.with(|t| t.expected += 1);
    }
    fn retried(&self) {
        self.with(|t| t.retried += 1);
    }
    fn failed(&self, why: String) {
        self.with(|t| {
            t.failed += 1;
            if t.examples.len() < MAX_EXAMPLES {
                t.examples.push(why);
            }
        });
    }
    /// `ok` when `good`, else a failure described by `what` and the answer.
    fn check(&self, good: bool, what: &str, r: &Response) {
        if good {
            self.ok()
        } else {
            self.failed(format!("{what}: {}", r.brief()))
        }
    }
    /// `expected` when `good`, else a failure.
    fn check_refusal(&self, good: bool, what: &str, r: &Response) {
        if good {
            self.expected()
        } else {
            self.failed(format!("{what}: {}", r.brief()))
        }
    }
}

pub fn main(args: &[String]) -> Result<()> {
    let [role, env] = args else {
        bail!("usage: app soak-load good|hostile ENV_JSON");
    };
    let role = match role.as_str() {
        "good" => Role::Good,
        "hostile" => Role::Hostile,
        _ => bail!("no role {role:?}"),
    };
    let env: Env = serde_json::from_str(env).context("the soak's environment")?;
    let ctx = Arc::new(Ctx {
        deadline: Instant::now() + Duration::from_secs_f64(env.secs),
        env,
    });
    let kinds: Vec<&'static Kind> = KINDS.iter().filter(|k| k.role == role).collect();
    let tallies: Arc<Vec<Mutex<KindTally>>> =
        Arc::new(kinds.iter().map(|_| Mutex::default()).collect());
    let report = |done: bool| Report {
        role: format!("{role:?}").to_lowercase(),
        done,
        kinds: kinds
            .iter()
            .zip(tallies.iter())
            .map(|(k, t)| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner()).clone();
                (k.name.to_owned(), t)
            })
            .collect(),
    };
    let mut workers = Vec::new();
    for (i, kind) in kinds.iter().copied().enumerate() {
        for n in 0..kind.threads {
            let (ctx, tallies) = (Arc::clone(&ctx), Arc::clone(&tallies));
            // Threads of a kind start spread over one period.
            let stagger = kind.every * n as u32 / kind.threads as u32;
            let seed = 0x9e37_79b9_7f4a_7c15 ^ ((i as u64) << 32 | n as u64);
            workers.push(thread::spawn(move || {
                run_kind(kind, &ctx, &Rec(&tallies[i]), stagger, seed)
            }));
        }
    }
    let mut out = io::stdout();
    while Instant::now() < ctx.deadline {
        thread::sleep(
            Duration::from_secs(1).min(ctx.deadline.saturating_duration_since(Instant::now())),
        );
        writeln!(out, "{}", serde_json::to_string(&report(false))?)?;
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
    }
    writeln!(out, "{}", serde_json::to_string(&report(true))?)?;
    Ok(())
}

fn run_kind(kind: &Kind, ctx: &Ctx, rec: &Rec, stagger: Duration, seed: u64) {
    let mut s = Session {
        conn: None,
        buf: Vec::new(),
        seq: 0,
        rng: seed | 1,
        idle: VecDeque::new(),
    };
    thread::sleep(stagger);
    let mut next = Instant::now();
    while Instant::now() < ctx.deadline {
        s.seq += 1;
        (kind.step)(ctx, &mut s, rec);
        next += kind.every;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        thread::sleep((next - now).min(ctx.deadline.saturating_duration_since(now)));
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// A request: `extra` header lines (without CRLF), and a body sent with a
/// Content-Length or, `chunked`, in chunks of 1000 bytes.
fn request(
    method: &str,
    target: &str,
    host: &str,
    extra: &[&str],
    body: &[u8],
    chunked: bool,
) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for h in extra {
        r.extend_from_slice(h.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    if chunked {
        r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for c in body.chunks(1000) {
            r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            r.extend_from_slice(c);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
    } else {
        if method == "POST" {
            r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
    }
    r
}

/// Sends `req` on the session's keep-alive connection (a new one when it
/// has none) and reads the answer by `timeout`. A reused connection found
/// closed before any answer (the proxy closed it while idle) is retried
/// once on a new one. The connection is dropped after an answer that ends
/// it, and after any error.
fn exchange(
    ctx: &Ctx,
    s: &mut Session,
    rec: &Rec,
    req: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    for attempt in 0..2 {
        let reused = s.conn.is_some();
        if s.conn.is_none() {
            s.conn = Some(connect(ctx.env.service).map_err(|e| format!("connect: {e}"))?);
            s.buf.clear();
        }
        let stream = s.conn.as_mut().expect("connected above");
        let got = match stream.write_all(req) {
            Ok(()) => read_response(stream, &mut s.buf, Instant::now() + timeout),
            Err(e) => Err(ReadError::Io(e)),
        };
        match got {
            Ok(r) => {
                if r.close || r.truncated {
                    s.conn = None;
                }
                return Ok(r);
            }
            Err(e) => {
                s.conn = None;
                let stale = match &e {
                    ReadError::Closed => true,
                    ReadError::Io(io) => matches!(
                        io.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ),
                    _ => false,
                };
                if reused && attempt == 0 && stale {
                    rec.retried();
                    continue;
                }
                return Err(e.to_string());
            }
        }
    }
    Err("retried and closed again".into())
}

/// The proxy's default `limits.max_interim_responses`.
const MAX_INTERIM: usize = 16;

/// The usual wait for an answer.
const ANSWER: Duration = Duration::from_secs(10);

/// `GET http://hello/` on a keep-alive connection, every third with
/// `world-v2` staged: hello calls world through the proxy again, passing
/// the override on in `l5d-ctx-dtab`.
fn hello_keepalive(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let staged = s.seq.is_multiple_of(3);
    let extra: &[&str] = if staged { &[STAGE_V2] } else { &[] };
    let e = &ctx.env;
    let want = if staged {
        format!("Hello ({}) earth ({})!!", e.hello, e.world_v2)
    } else {
        format!("Hello ({}) world ({})!!", e.hello, e.world_v1)
    };
    let what = if staged {
        "GET hello, world-v2 staged"
    } else {
        "GET hello"
    };
    match exchange(
        ctx,
        s,
        rec,
        &request("GET", "/", "hello", extra, b"", false),
        ANSWER,
    ) {
        Ok(r) => rec.check(
            r.status == 200 && !r.truncated && r.body == want.as_bytes(),
            what,
            &r,
        ),
        Err(err) => rec.failed(format!("{what}: {err}")),
    }
}

/// `GET http://app/` on a new connection each time (`Connection: close`),
/// every other one with `app-v2` staged.
fn app_short(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    s.conn = None;
    let staged = s.seq.is_multiple_of(2);
    let mut extra = vec!["Connection: close"];
    if staged {
        extra.push(STAGE_APP_V2);
    }
    let want: &[u8] = if staged { b"app-v2" } else { b"app-v1" };
    let req = request("GET", "/", "app", &extra, b"", false);
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check(
            r.status == 200 && r.body == want,
            "GET app, short connection",
            &r,
        ),
        Err(err) => rec.failed(format!("GET app, short connection: {err}")),
    }
    s.conn = None;
}

/// Bodies both ways on a keep-alive connection, in turn: a POST echoed
/// with a Content-Length body, the same chunked, a chunked response, a
/// Content-Length response; up to 48 KiB, half with `app-v2` staged.
fn app_bodies(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let n = s.rand(48 * 1024) as usize;
    let staged = (s.seq / 4) % 2 == 1;
    let backend = if staged { "app-v2" } else { "app-v1" };
    let extra: &[&str] = if staged { &[STAGE_APP_V2] } else { &[] };
    let salt = s.seq as u8;
    let sent: Vec<u8> = pattern(n).into_iter().map(|b| b ^ salt).collect();
    let (what, req, want) = match s.seq % 4 {
        0 => (
            "POST /echo, Content-Length",
            request("POST", "/echo", "app", extra, &sent, false),
            sent,
        ),
        1 => (
            "POST /echo, chunked",
            request("POST", "/echo", "app", extra, &sent, true),
            sent,
        ),
        2 => (
            "GET /chunked/N",
            request("GET", &format!("/chunked/{n}"), "app", extra, b"", false),
            pattern(n),
        ),
        _ => (
            "GET /bytes/N",
            request("GET", &format!("/bytes/{n}"), "app", extra, b"", false),
            pattern(n),
        ),
    };
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check(
            r.status == 200
                && !r.truncated
                && r.header("x-backend") == Some(backend)
                && r.body == want,
            &format!("{what} ({n} bytes, {backend})"),
            &r,
        ),
        Err(err) => rec.failed(format!("{what} ({n} bytes): {err}")),
    }
}

/// A backend that takes 100-600 ms (must succeed), and every tenth
/// request longer than the proxy's response timeout (must get 504).
fn slow_backend(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let too_slow = s.seq.is_multiple_of(10);
    let limit = ctx.env.limits.response_timeout_ms;
    let delay = if too_slow {
        limit + 1500
    } else {
        100 + s.rand(500)
    };
    let req = request("GET", &format!("/slow/{delay}"), "slow", &[], b"", false);
    let what = format!("GET slow /slow/{delay}");
    match exchange(ctx, s, rec, &req, Duration::from_millis(limit) + ANSWER) {
        Ok(r) if too_slow => rec.check_refusal(r.is_proxy_error(&[504]), &what, &r),
        Ok(r) => rec.check(r.status == 200 && r.body == b"slow", &what, &r),
        Err(err) => rec.failed(format!("{what}: {err}")),
    }
}

/// A backend that announces a body and closes half-way: the client must
/// get the head and a body cut short by the close (or a 502 if the proxy
/// saw the end before it answered), never a hang.
fn flaky_backend(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let n = 1000 + s.rand(30_000);
    let req = request("GET", &format!("/die/{n}"), "flaky", &[], b"", false);
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check_refusal(
            (r.status == 200 && r.truncated) || r.is_proxy_error(&[502]),
            "GET flaky (dies mid-body)",
            &r,
        ),
        Err(err) => rec.failed(format!("GET flaky (dies mid-body): {err}")),
    }
}

/// A backend whose pod refuses connects: 502 (or 503 while ejected).
fn refusing_backend(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let req = request("GET", "/", "refused", &[], b"", false);
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check_refusal(r.is_proxy_error(&[502, 503]), "GET refused", &r),
        Err(err) => rec.failed(format!("GET refused: {err}")),
    }
}

/// One keep-alive connection sending requests each with a distinct large
/// `l5d-dtab` (40 entries, about 2.4 KB; each a new route for the
/// cache); every tenth has 101 entries and must get 400.
fn big_dtab(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let too_many = s.seq.is_multiple_of(10);
    let entries = if too_many { 101 } else { 40 };
    let seq = s.seq;
    let dtab: Vec<String> = (0..entries)
        .map(|j| format!("/soak/big-dtab/{seq}/{j}/padding-padding => /srv/app-v1"))
        .collect();
    let header = format!("l5d-dtab: {}", dtab.join(";"));
    let req = request("GET", "/", "app", &[&header], b"", false);
    let what = format!("GET app with {entries} distinct dtab entries");
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) if too_many => rec.check_refusal(r.is_proxy_error(&[400]), &what, &r),
        Ok(r) => rec.check(r.status == 200 && r.body == b"app-v1", &what, &r),
        Err(err) => rec.failed(format!("{what}: {err}")),
    }
}

/// A backend that answers `102 Processing` 40 times: past the proxy's cap
/// (`max_interim_responses`, 16 by default) the client gets 502, having
/// seen at most that many.
fn interim_flood(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let req = request("GET", "/", "interim", &[], b"", false);
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check_refusal(
            r.is_proxy_error(&[502]) && r.interim <= MAX_INTERIM,
            &format!("GET interim (102 flood; {} relayed)", r.interim),
            &r,
        ),
        Err(err) => rec.failed(format!("GET interim (102 flood): {err}")),
    }
}

/// Half a head, then silence: 408 at the head timeout (or 503 when the
/// proxy is full of busy connections), then the proxy's close.
fn partial_head(ctx: &Ctx, _s: &mut Session, rec: &Rec) {
    let limits = ctx.env.limits;
    let mut st = match connect(ctx.env.service) {
        Ok(st) => st,
        Err(e) => return rec.failed(format!("partial head: connect: {e}")),
    };
    if let Err(e) = st.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Partial: waiting") {
        return rec.failed(format!("partial head: write: {e}"));
    }
    let mut buf = Vec::new();
    let answer_by = Instant::now() + ms(limits.head_timeout_ms) + Duration::from_secs(3);
    let r = match read_response(&mut st, &mut buf, answer_by) {
        Ok(r) => r,
        Err(e) => return rec.failed(format!("partial head: no 408: {e}")),
    };
    if !r.is_proxy_error(&[408, 503]) {
        return rec.failed(format!("partial head: {}", r.brief()));
    }
    // Then the close, within the linger.
    let close_by = Instant::now() + ms(limits.linger_ms) + Duration::from_secs(2);
    let mut rest = [0u8; 1024];
    loop {
        let left = close_by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return rec.failed("partial head: open after the 408 past the linger".into());
        }
        let _ = st.set_read_timeout(Some(left));
        match st.read(&mut rest) {
            Ok(0) => return rec.expected(),
            Ok(_) => return rec.failed("partial head: bytes after the 408".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // A reset after the whole answer is a close too.
            Err(_) => return rec.expected(),
        }
    }
}

/// Overrides to many distinct literal addresses: a refused port of the
/// `refused` pod (502; one folded pair of metric labels, warnings
/// rate-limited), every fourth to `app-v1`'s own address (200), and every
/// fourth to a loopback port, which the soak's override policy denies
/// (403, never connected).
fn inet_overrides(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let (live, denied) = (s.seq.is_multiple_of(4), s.seq % 4 == 2);
    let to = if live {
        format!("/$/inet/{}/{}", ctx.env.app_v1.ip(), ctx.env.app_v1.port())
    } else if denied {
        format!("{DENIED}/{}", 1024 + s.seq % 60_000)
    } else {
        format!("/$/inet/{}/{}", ctx.env.refused, 20_000 + s.seq % 40_000)
    };
    let header = format!("l5d-dtab: /host/app => {to}");
    let req = request("GET", "/", "app", &[&header], b"", false);
    let what = format!("GET app via {to}");
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) if live => rec.check(r.status == 200 && r.body == b"app-v1", &what, &r),
        Ok(r) if denied => rec.check_refusal(r.is_proxy_error(&[403]), &what, &r),
        Ok(r) => rec.check_refusal(r.is_proxy_error(&[502, 503]), &what, &r),
        Err(err) => rec.failed(format!("{what}: {err}")),
    }
}

/// Connections that never send a byte: one more each step, at most 400
/// held. Each must be closed by the proxy (at the first-byte timeout, or
/// earlier as the idle one closed for a newcomer at max_connections) or
/// answered 503; open past the timeout and some slack is a failure.
fn idle_sockets(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let limit = ms(ctx.env.limits.first_byte_timeout_ms) + Duration::from_secs(3);
    if s.idle.len() < 400 {
        match connect(ctx.env.service).and_then(|c| c.set_nonblocking(true).map(|()| c)) {
            Ok(c) => s.idle.push_back((c, Instant::now())),
            Err(e) => rec.failed(format!("idle socket: connect: {e}")),
        }
    }
    let ending = Instant::now() + Duration::from_millis(50) >= ctx.deadline;
    let mut buf = [0u8; 512];
    s.idle.retain_mut(|(c, opened)| match c.read(&mut buf) {
        Ok(0) => {
            rec.expected();
            false
        }
        Ok(n) => {
            let answer = String::from_utf8_lossy(&buf[..n]);
            if answer.starts_with("HTTP/1.1 503") && answer.to_ascii_lowercase().contains("l5d-err")
            {
                rec.expected();
            } else {
                rec.failed(format!("idle socket got {answer:?}"));
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if opened.elapsed() > limit {
                rec.failed(format!(
                    "idle socket still open after {:?}",
                    opened.elapsed()
                ));
                false
            } else {
                // At the end, the young ones are let go unjudged.
                !ending
            }
        }
        Err(_) => {
            rec.expected();
            false
        }
    });
}

/// A request body trickled a byte every 300 ms: the proxy must answer 408
/// once the body falls behind its minimum rate.
fn trickled_body(ctx: &Ctx, _s: &mut Session, rec: &Rec) {
    let limits = ctx.env.limits;
    let mut st = match connect(ctx.env.service) {
        Ok(st) => st,
        Err(e) => return rec.failed(format!("trickled body: connect: {e}")),
    };
    if let Err(e) =
        st.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n")
    {
        return rec.failed(format!("trickled body: write: {e}"));
    }
    let until = Instant::now() + ms(2 * limits.body_timeout_ms) + Duration::from_secs(5);
    let mut buf = Vec::new();
    while Instant::now() < until {
        // Writes fail once the proxy has given up; the answer is read anyway.
        let _ = st.write_all(b"x");
        match read_response(&mut st, &mut buf, Instant::now() + ms(300)) {
            Ok(r) => return rec.check_refusal(r.is_proxy_error(&[408]), "trickled body", &r),
            Err(ReadError::Timeout) => continue,
            Err(e) => return rec.failed(format!("trickled body: {e}")),
        }
    }
    rec.failed(format!("trickled body: no answer in {:?}", until.elapsed()));
}

/// OPTIONS and TRACE with `Max-Forwards: 0`, in turn: the proxy answers
/// them itself (200 with Allow; 405 with l5d-err).
fn max_forwards(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let options = s.seq.is_multiple_of(2);
    let method = if options { "OPTIONS" } else { "TRACE" };
    let req = request(method, "/", "app", &["Max-Forwards: 0"], b"", false);
    let what = format!("{method} with Max-Forwards: 0");
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) if options => rec.check(
            r.status == 200 && r.header("x-backend").is_none() && r.header("allow").is_some(),
            &what,
            &r,
        ),
        Ok(r) => rec.check_refusal(
            r.is_proxy_error(&[405]) && r.header("x-backend").is_none(),
            &what,
            &r,
        ),
        Err(err) => rec.failed(format!("{what}: {err}")),
    }
}

/// A request in HTTP/1.2: served as 1.1.
fn http_1_2(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let req = b"GET / HTTP/1.2\r\nHost: app\r\n\r\n";
    match exchange(ctx, s, rec, req, ANSWER) {
        Ok(r) => rec.check(
            r.status == 200 && r.body == b"app-v1",
            "GET in HTTP/1.2",
            &r,
        ),
        Err(err) => rec.failed(format!("GET in HTTP/1.2: {err}")),
    }
}

/// Proxy-Authorization is for the proxy: served, and not passed on.
fn proxy_authorization(ctx: &Ctx, s: &mut Session, rec: &Rec) {
    let req = request(
        "GET",
        "/",
        "app",
        &["Proxy-Authorization: Basic c29hazpzb2Fr"],
        b"",
        false,
    );
    match exchange(ctx, s, rec, &req, ANSWER) {
        Ok(r) => rec.check(
            r.status == 200 && r.header("x-saw-proxy-authorization") == Some("no"),
            "GET with Proxy-Authorization",
            &r,
        ),
        Err(err) => rec.failed(format!("GET with Proxy-Authorization: {err}")),
    }
}

/// Whether a kind's requests are well-formed (the good pod's).
pub fn well_formed(kind: &str) -> bool {
    KINDS.iter().any(|k| k.name == kind && k.role == Role::Good)
}

/// Sums tallies over reports.
pub fn total<'a>(reports: impl IntoIterator<Item = &'a Report>) -> KindTally {
    let mut t = KindTally::default();
    for r in reports {
        for k in r.kinds.values() {
            t.ok += k.ok;
            t.expected += k.expected;
            t.retried += k.retried;
            t.failed += k.failed;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::loadgen::find_head_end;

    #[test]
    fn requests_are_framed() {
        let r = request("POST", "/echo", "app", &["a: b"], b"xyz", false);
        assert_eq!(
            r,
            b"POST /echo HTTP/1.1\r\nHost: app\r\na: b\r\nContent-Length: 3\r\n\r\nxyz"
        );
        let r = request("POST", "/echo", "app", &[], &[b'q'; 1001], true);
        let text = String::from_utf8(r).unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\n\r\n3e8\r\n"));
        assert!(text.ends_with("q\r\n1\r\nq\r\n0\r\n\r\n"));
        assert!(find_head_end(text.as_bytes()).is_some());
        let r = request("GET", "/", "app", &[], b"", false);
        assert_eq!(r, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n");
    }

    #[test]
    fn kinds_are_unique_and_bounded() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(KINDS[..i].iter().all(|o| o.name != k.name), "{}", k.name);
            assert!(k.threads > 0 && k.threads <= 8);
        }
        assert!(well_formed("app-bodies") && !well_formed("big-dtab"));
    }
}
