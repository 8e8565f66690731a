//! The benchmark's load generator, run inside the client pod as
//! `xtask app loadgen ...`; it prints one JSON [`LoadResult`] on stdout.
//!
//! Two shapes, both over keep-alive HTTP/1.1 connections, one thread each
//! (blocking std sockets: the generator must cost less than what it measures,
//! and a thread per connection has no scheduler of its own in the way):
//!
//! * closed loop: each connection sends, waits for the whole response, sends
//!   again. Latency is send to last byte.
//! * open loop: requests are due at a fixed rate, spread over the
//!   connections in turn; latency runs from the time a request was *due*, so
//!   a stall that delays the following sends counts against them too (no
//!   coordinated omission).
//!
//! Three variations: `--close` makes every request a fresh connection with
//! `Connection: close` (latency then includes the handshake); `--idle-conns
//! N` first opens N more connections, one request each, and holds them idle
//! while the measured ones run; `--upload N` sends a POST with an N-byte
//! body instead of a GET.
//!
//! Every loop stops at a deadline and at a request count. Latencies go into
//! HDR histograms in nanoseconds, shipped as (value, count) pairs so that the
//! parent merges the rounds exactly.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// `xtask app loadgen` arguments.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen")]
pub struct Args {
    /// Where to connect (the server, a proxy, or a service address).
    #[arg(long)]
    pub addr: SocketAddr,
    /// The Host header.
    #[arg(long, default_value = "bench")]
    pub host: String,
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Connections (one thread each).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Requests per second over all connections (open loop); none: closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Measured time, after the warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Unmeasured time first (closed loop; the open loop warms each
    /// connection with one request).
    #[arg(long, default_value_t = 0.3)]
    pub warmup_secs: f64,
    /// At most this many measured requests.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
    /// Pin the generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// A line sent on every new connection before the first request (the
    /// bench server reads it as part of the first head and ignores it):
    /// something that is not HTTP makes an intercepting Sidetrack tunnel
    /// the connection as opaque bytes.
    #[arg(long)]
    pub preamble: Option<String>,
    /// A fresh connection for every request, which asks for
    /// `Connection: close`; latency runs from before the connect.
    #[arg(long)]
    pub close: bool,
    /// Connections opened first (one request each, unmeasured) and held
    /// idle until the end. When they are up, `ready` goes to stderr.
    #[arg(long, default_value_t = 0)]
    pub idle_conns: usize,
    /// POST a body of this many bytes with each request (0: GET).
    #[arg(long, default_value_t = 0)]
    pub upload: u64,
    /// With `--close` or `--idle-conns`: also widen this network
    /// namespace's ephemeral port range and allow `tcp_tw_reuse`. Only for
    /// a namespace of its own (the bench's client pod): in the root
    /// namespace the wide range would let every outgoing connection take
    /// the ports the proxies listen on.
    #[arg(long)]
    pub own_netns: bool,
}

/// What one run measured.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LoadResult {
    /// Measured requests that got a whole 2xx response.
    pub requests: u64,
    /// Every request sent, warm-up included (for CPU per request).
    pub sent_total: u64,
    pub errors: u64,
    /// The measured interval.
    pub secs: f64,
    /// Response body bytes received in the measured interval.
    pub body_bytes: u64,
    /// Latency histogram, nanoseconds: (value, count).
    pub hist: Vec<(u64, u64)>,
}

/// The histogram every latency goes into: nanoseconds up to 60 s, 3
/// significant digits (8 ns steps around 10 µs). The lowest discernible value
/// must stay 1: HdrHistogram rounds it down to a power of two and counts in
/// units of it, so a bound of 1 µs would bucket everything in 512 ns steps.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub fn main(args: &[String]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("loadgen".to_owned()).chain(args.iter().cloned()))?;
    if let Some(cpu) = args.cpu {
        pin_self(cpu)?;
    }
    if args.close || args.idle_conns > 0 {
        prepare_many_connections(args.idle_conns + args.conns + 1024, args.own_netns);
    }
    // Sleeps wake on time, not up to 50 µs late (the default slack), which
    // matters to the open loop's schedule.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let result = run(&args)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Room for many connections from this pod: descriptors (RLIMIT_NOFILE,
/// soft and hard, as root), and with `own_netns` the whole ephemeral port
/// range and reuse of ports in TIME_WAIT for new connects (this pod's
/// network namespace only: `/proc/sys/net` is the caller's namespace's).
/// Best effort: a refusal shows up as connect errors, which the run counts.
fn prepare_many_connections(fds: usize, own_netns: bool) {
    let want = fds as libc::rlim_t;
    // SAFETY: `lim` is a live rlimit; a refusal changes nothing.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            let hard = lim.rlim_max;
            // Above the hard limit only with CAP_SYS_RESOURCE; else up to it.
            lim.rlim_cur = want;
            lim.rlim_max = hard.max(want);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = hard;
                lim.rlim_max = hard;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
    if own_netns {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535");
        let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    set_affinity(0, Some(cpu))
}

/// Sets the CPU mask of thread `tid` (0: the caller) to one CPU, or to
/// every CPU of the machine.
pub fn set_affinity(tid: i32, cpu: Option<usize>) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; the CPU_* helpers index inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(c) => libc::CPU_SET(c, &mut set),
            None => {
                // Every online CPU (not `available_parallelism`, which
                // counts only the CPUs the calling thread may use now).
                let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
                for c in 0..n.min(libc::CPU_SETSIZE as usize) {
                    libc::CPU_SET(c, &mut set);
                }
            }
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("sched_setaffinity({tid})"));
        }
    }
    Ok(())
}

/// How many CPUs the calling thread may run on.
#[cfg(test)]
pub fn allowed_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as usize
    }
}

/// Per-connection tallies, merged at the end.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    sent: u64,
    errors: u64,
    bytes: u64,
}

pub fn run(args: &Args) -> Result<LoadResult> {
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let request = Arc::new(request_bytes(args));
    let measured = Duration::from_secs_f64(args.secs);
    let warmup = if args.rate.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(args.warmup_secs)
    };
    let preamble = args
        .preamble
        .as_ref()
        .map(|p| format!("{p}\n").into_bytes());
    let target = Target {
        addr: args.addr,
        preamble: preamble.as_deref(),
        close: args.close,
    };
    let idle = open_idle(
        target,
        args.idle_conns,
        &request_bytes(&Args {
            upload: 0,
            close: false,
            ..args.clone()
        }),
    )?;
    if args.idle_conns > 0 {
        eprintln!("ready");
    }
    // Connections are made before the clock starts (`--close`: each
    // request makes its own).
    let mut streams = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        streams.push(if args.close {
            None
        } else {
            Some(connect(target)?)
        });
    }
    // Open loop: one unmeasured request per connection first.
    if args.rate.is_some() {
        let mut buf = vec![0u8; 64 * 1024];
        for s in streams.iter_mut().flatten() {
            exchange(s, &request, &mut buf)
                .with_context(|| format!("warm-up request from {:?}", s.local_addr()))?;
            // (A server that closes after each answer is not an open-loop
            // case.)
        }
    }
    let budget = Arc::new(AtomicU64::new(args.max_requests));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let deadline = measure_from + measured;
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let request = Arc::clone(&request);
            let budget = Arc::clone(&budget);
            let preamble = preamble.clone();
            let (addr, close) = (args.addr, args.close);
            let schedule = args.rate.map(|rate| {
                let every = Duration::from_secs_f64(args.conns as f64 / rate as f64);
                let offset = Duration::from_secs_f64(i as f64 / rate as f64);
                (every, offset)
            });
            thread::spawn(move || {
                let mut tally = Tally {
                    hist: new_histogram(),
                    requests: 0,
                    sent: 0,
                    errors: 0,
                    bytes: 0,
                };
                connection_loop(
                    stream,
                    Target {
                        addr,
                        preamble: preamble.as_deref(),
                        close,
                    },
                    &request,
                    &budget,
                    (start, measure_from, deadline),
                    schedule,
                    &mut tally,
                );
                tally
            })
        })
        .collect();
    let mut hist = new_histogram();
    let mut out = LoadResult {
        secs: measured.as_secs_f64(),
        ..LoadResult::default()
    };
    let mut last_end = measure_from;
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        hist.add(&t.hist).context("merge histograms")?;
        out.requests += t.requests;
        out.sent_total += t.sent;
        out.errors += t.errors;
        out.body_bytes += t.bytes;
        last_end = last_end.max(Instant::now().min(deadline));
    }
    // A count bound may end the run before the deadline.
    if budget.load(Ordering::Relaxed) == 0 {
        out.secs = last_end
            .saturating_duration_since(measure_from)
            .as_secs_f64()
            .max(1e-6);
    }
    drop(idle);
    // Uploads: the bytes sent count as the bytes moved.
    out.body_bytes += out.requests * args.upload;
    out.hist = hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    Ok(out)
}

/// The bytes of one request: the head, then `--upload`'s body.
fn request_bytes(args: &Args) -> Vec<u8> {
    let (method, mut extra) = if args.upload > 0 {
        ("POST", format!("Content-Length: {}\r\n", args.upload))
    } else {
        ("GET", String::new())
    };
    if args.close {
        extra.push_str("Connection: close\r\n");
    }
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n",
        args.path, args.host
    )
    .into_bytes();
    req.resize(req.len() + args.upload as usize, b'u');
    req
}

/// `--idle-conns`: `n` connections, each with one answered request, made
/// by a few threads at once (a connect through a proxy is a round trip).
fn open_idle(target: Target<'_>, n: usize, request: &[u8]) -> Result<Vec<TcpStream>> {
    const OPENERS: usize = 8;
    if n == 0 {
        return Ok(Vec::new());
    }
    thread::scope(|s| {
        let handles: Vec<_> = (0..OPENERS)
            .map(|k| {
                let count = n / OPENERS + usize::from(k < n % OPENERS);
                s.spawn(move || -> Result<Vec<TcpStream>> {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut v = Vec::with_capacity(count);
                    for _ in 0..count {
                        let mut c = connect(target)?;
                        exchange(&mut c, request, &mut buf)
                            .context("an idle connection's request")?;
                        v.push(c);
                    }
                    Ok(v)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("an opener panicked"))??,
            );
        }
        Ok(all)
    })
}

/// Where connections go, what each sends first, and whether each request
/// gets a connection of its own.
#[derive(Clone, Copy)]
struct Target<'a> {
    addr: SocketAddr,
    preamble: Option<&'a [u8]>,
    close: bool,
}

fn connect(target: Target<'_>) -> Result<TcpStream> {
    let addr = target.addr;
    // `--close` measures connects: the plain blocking one, as clients make
    // it (the timed one costs three more system calls).
    let s = if target.close {
        TcpStream::connect(addr)
    } else {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    };
    let mut s = s.with_context(|| format!("connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    if let Some(p) = target.preamble {
        s.write_all(p).context("send the preamble")?;
    }
    Ok(s)
}

/// Takes one request from the shared budget; false when it is spent.
fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

fn connection_loop(
    mut stream: Option<TcpStream>,
    target: Target<'_>,
    request: &[u8],
    budget: &AtomicU64,
    (start, measure_from, deadline): (Instant, Instant, Instant),
    schedule: Option<(Duration, Duration)>,
    tally: &mut Tally,
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut k: u32 = 0;
    sleep_until(start);
    loop {
        // When the request is due, and so where its latency starts.
        let due = match schedule {
            Some((every, offset)) => {
                let due = measure_from + offset + every * k;
                k += 1;
                if due >= deadline {
                    return;
                }
                sleep_until(due);
                due
            }
            None => {
                let now = Instant::now();
                if now >= deadline {
                    return;
                }
                now
            }
        };
        let measured = due >= measure_from;
        if measured && !take(budget) {
            return;
        }
        tally.sent += 1;
        // A connection the last answer closed, or `--close`'s fresh one:
        // the connect is part of this request's time.
        if stream.is_none() {
            stream = connect(target).ok();
        }
        let outcome = match &mut stream {
            Some(s) => exchange_closing(s, request, &mut buf),
            None => Err(anyhow::anyhow!("connect to {} failed", target.addr)),
        };
        match outcome {
            Ok((body, closed)) => {
                if closed || target.close {
                    stream = None;
                }
                let done = Instant::now();
                if measured && done <= deadline + Duration::from_secs(1) {
                    tally.requests += 1;
                    tally.bytes += body;
                    tally
                        .hist
                        .saturating_record(done.duration_since(due).as_nanos() as u64);
                }
            }
            Err(_) => {
                tally.errors += 1;
                if Instant::now() >= deadline {
                    return;
                }
                // A fresh connection, at most one try per 10 ms.
                thread::sleep(Duration::from_millis(10));
                stream = None;
            }
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Sends one request and reads its whole response; returns the body length.
/// Fails on anything but a 2xx with a Content-Length.
pub fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Result<u64> {
    exchange_closing(stream, request, buf).map(|(body, _)| body)
}

/// [`exchange`], and whether the answer said `Connection: close`.
fn exchange_closing(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Result<(u64, bool)> {
    stream.write_all(request)?;
    let mut filled = 0;
    let (head_len, (body_len, close)) = loop {
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        filled += n;
        if let Some(end) = find_head_end(&buf[..filled]) {
            break (end, parse_head(&buf[..end])?);
        }
        if filled == buf.len() {
            bail!("response head too large");
        }
    };
    let mut left = (body_len as usize).saturating_sub(filled - head_len);
    while left > 0 {
        let want = left.min(buf.len());
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        left -= n;
    }
    Ok((body_len, close))
}

/// Where a head ends (after its blank line), if it has.
pub fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The status must be 2xx; returns the Content-Length, and whether the
/// server closes the connection after this answer (`Connection: close`).
fn parse_head(head: &[u8]) -> Result<(u64, bool)> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    if !status.starts_with('2') {
        bail!("status {status}");
    }
    let (mut length, mut close) = (None, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse().context("bad Content-Length")?);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    Ok((length.context("response without Content-Length")?, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_tell_a_tenth_of_a_microsecond_apart_near_ten() {
        for (a, b) in [(13_000u64, 13_100u64), (8_200, 8_300), (5_000, 5_100)] {
            let p50 = |v: u64| {
                let mut h = new_histogram();
                h.record_n(v, 10).unwrap();
                h.value_at_quantile(0.5)
            };
            assert!(p50(a) < p50(b), "{a} and {b} ns fall in one bucket");
            assert!(p50(a).abs_diff(a) <= 10, "{a} ns read back as {}", p50(a));
        }
    }

    #[test]
    fn unpinning_a_pinned_thread_frees_every_online_cpu() {
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
        thread::spawn(move || {
            set_affinity(0, Some(0)).unwrap();
            assert_eq!(allowed_cpus(), 1);
            set_affinity(0, None).unwrap();
            assert_eq!(allowed_cpus(), online);
        })
        .join()
        .unwrap();
    }

    /// The preamble goes first, once per connection, and the requests
    /// follow it on the same connection.
    #[test]
    fn a_preamble_goes_first_on_each_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (mut got, mut buf, mut answered) = (Vec::new(), [0u8; 4096], 0);
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                let heads = got.windows(4).filter(|w| w == b"\r\n\r\n").count();
                while answered < heads {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .unwrap();
                    answered += 1;
                }
            }
        });
        let args = Args {
            addr,
            host: "bench".into(),
            path: "/".into(),
            conns: 1,
            rate: None,
            secs: 5.0,
            warmup_secs: 0.0,
            max_requests: 3,
            cpu: None,
            preamble: Some("@not-http".into()),
            close: false,
            idle_conns: 0,
            upload: 0,
            own_netns: false,
        };
        let r = run(&args).unwrap();
        assert_eq!((r.requests, r.errors), (3, 0));
        let got = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(got.starts_with("@not-http\nGET / HTTP/1.1\r\n"), "{got:?}");
        assert_eq!(got.matches("@not-http").count(), 1, "{got:?}");
        assert_eq!(got.matches("GET / HTTP/1.1").count(), 3, "{got:?}");
    }

    #[test]
    fn head_parsing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(find_head_end(head), Some(head.len()));
        assert_eq!(parse_head(head).unwrap(), (12, false));
        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(closing).unwrap(), (0, true));
        assert!(parse_head(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").is_err());
    }
}
