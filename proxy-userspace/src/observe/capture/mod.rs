//! Capture: requests to chosen logical names and their answers, recorded
//! to a bounded on-disk ring for `sidetrack replay` (settings:
//! `config::Capture`; format and behaviour: docs/observability.md).
//!
//! - [`Capture`], the observer: on the worker it only filters and copies
//!   what it keeps into an owned [`Exchange`], which it `try_send`s into
//!   a bounded channel; a full channel drops the exchange and counts it.
//!   Nothing is parsed, serialised or written on the request path.
//! - The writer thread turns each exchange into a HAR entry ([`har`]) and
//!   appends it as one JSON line to the [`ring`].
//! - A write error (a full disk) stops capture, never traffic: the error
//!   is counted and logged once, exchanges that arrive meanwhile are
//!   counted as lost, and writing is tried again [`RETRY_AFTER`] later in
//!   a new segment.

pub mod har;
pub mod ring;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    config::{self, CaptureOnly},
    observe::{
        exchange::{Observer, Record, Spans, Via},
        metrics::{ErrorKind, ExtraCounters},
    },
};

use har::{Entry, Redact};
use ring::{AppendError, Bounds, Ring};

/// After a write error, how long capture stays stopped before it tries
/// again (in a new segment).
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The header `sidetrack replay` marks its requests with: they are not
/// captured, so that a replay through a capturing proxy does not record
/// itself (and the next replay send it again).
pub const REPLAY_HEADER: &str = "l5d-replay";

/// How often an idle writer applies the age bound.
const TICK: Duration = Duration::from_secs(1);

/// How often the writer takes what the workers sent: with the default
/// `buffer` of 1024 exchanges, 100k captured requests a second before any
/// is dropped.
const POLL: Duration = Duration::from_millis(10);

/// Which exchanges are captured.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Name prefixes, without a trailing `/`; empty: every name.
    names: Vec<String>,
    only: CaptureOnly,
}

impl Filter {
    pub fn new(names: &[String], only: CaptureOnly) -> Filter {
        let names = names
            .iter()
            .map(|n| {
                let t = n.trim_end_matches('/');
                if t.is_empty() { "/" } else { t }.to_owned()
            })
            .collect();
        Filter { names, only }
    }

    /// Whether requests to `name` routed `via` are captured. `via` is the
    /// most specific cause: a request with an override that a rule also
    /// matched is an override's.
    pub fn wants(&self, name: &str, via: Via) -> bool {
        let how = match self.only {
            CaptureOnly::Any => via != Via::Mirror,
            CaptureOnly::Rule => via == Via::Rule,
            CaptureOnly::Override => via == Via::Override,
        };
        how && !name.is_empty()
            && (self.names.is_empty() || self.names.iter().any(|p| covers(p, name)))
    }
}

/// Whether the name prefix `prefix` (no trailing `/`) covers `name`,
/// element by element.
pub fn covers(prefix: &str, name: &str) -> bool {
    prefix == "/"
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One exchange, owned: what the worker copies out of a [`Record`].
#[derive(Clone, Debug)]
pub struct Exchange {
    pub started_wall: SystemTime,
    pub total: Duration,
    pub spans: Spans,
    pub peer: SocketAddr,
    pub method: String,
    pub authority: String,
    pub target: String,
    pub status: u16,
    pub error: Option<ErrorKind>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub name: String,
    pub dst: String,
    pub via: Via,
    pub rule: Option<String>,
    pub request_id: String,
    pub mirrored: bool,
    pub retried: bool,
    pub traceparent: String,
    /// Empty when the data path kept no heads.
    pub request_head: Vec<u8>,
    pub request_body: Option<Vec<u8>>,
    pub response_head: Vec<u8>,
    pub response_body: Option<Vec<u8>>,
}

impl Exchange {
    /// Copies what capture keeps of `r`; bodies longer than `max_body`
    /// are not kept (the data path should not have kept them either).
    pub fn of(r: &Record<'_>, max_body: usize) -> Exchange {
        let body = |b: Option<&[u8]>| b.filter(|b| b.len() <= max_body).map(<[u8]>::to_vec);
        let bodies = r.bodies;
        Exchange {
            started_wall: r.started_wall,
            total: r.total,
            spans: r.spans,
            peer: r.peer,
            method: r.method.to_owned(),
            authority: r.authority.to_owned(),
            target: r.target.to_owned(),
            status: r.status,
            error: r.error,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            name: r.name.to_owned(),
            dst: r.dst.to_owned(),
            via: r.via,
            rule: (!r.rule.is_empty()).then(|| r.rule.to_owned()),
            request_id: r.request_id.to_owned(),
            mirrored: r.mirrored,
            retried: r.retried,
            traceparent: r.traceparent.to_owned(),
            request_head: bodies.map_or(Vec::new(), |b| b.request_head.to_vec()),
            request_body: bodies.and_then(|b| body(b.request_body)),
            response_head: bodies.map_or(Vec::new(), |b| b.response_head.to_vec()),
            response_body: bodies.and_then(|b| body(b.response_body)),
        }
    }
}

/// Capture's counters, exported to `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries written.
    pub captured: AtomicU64,
    /// Exchanges dropped because the writer's buffer was full.
    pub dropped: AtomicU64,
    /// Exchanges not written because capture was stopped after a write
    /// error, or whose entry was larger than the whole ring.
    pub lost: AtomicU64,
    pub write_errors: AtomicU64,
    pub bytes_written: AtomicU64,
    /// What the ring's segments take on disk now.
    pub disk_bytes: AtomicU64,
}

impl ExtraCounters for Stats {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.extend([
            (
                "capture_entries",
                "Exchanges captured (written to the ring).",
                get(&self.captured),
            ),
            (
                "capture_dropped",
                "Exchanges not captured because the writer's buffer was full.",
                get(&self.dropped),
            ),
            (
                "capture_lost",
                "Exchanges not captured because capture was stopped by a write error (or too large for the ring).",
                get(&self.lost),
            ),
            (
                "capture_write_errors",
                "Writes to the capture ring that failed (a full disk): each stops capture for a while.",
                get(&self.write_errors),
            ),
            (
                "capture_written_bytes",
                "Bytes written to the capture ring.",
                get(&self.bytes_written),
            ),
        ]);
    }

    fn gauges(&self, out: &mut Vec<(&'static str, &'static str, i64)>) {
        out.push((
            "capture_disk_bytes",
            "Bytes the capture ring's segments take on disk.",
            self.disk_bytes.load(Ordering::Relaxed) as i64,
        ));
    }
}

/// The capture observer; its writer thread ends when it is dropped.
pub struct Capture {
    filter: Filter,
    max_body: usize,
    tx: SyncSender<Exchange>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Opens the ring in `settings.dir` (taking over what is there) and
    /// starts the writer thread.
    pub fn start(settings: &config::Capture) -> Result<Capture, String> {
        let dir = settings
            .dir
            .as_deref()
            .ok_or("capture.dir: required when capture is enabled")?;
        let bounds = Bounds {
            max_bytes: settings.max_bytes,
            max_age: Duration::from_secs(settings.max_age_secs),
            segment_bytes: settings.segment_bytes,
        };
        let ring = Ring::open(dir, bounds, SystemTime::now())
            .map_err(|e| format!("capture.dir {}: {e}", dir.display()))?;
        let stats = Arc::new(Stats::default());
        stats
            .disk_bytes
            .store(ring.total_bytes(), Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(settings.buffer);
        let writer = Writer {
            ring,
            redact: Redact::new(&settings.redact),
            stats: stats.clone(),
            stopped_until: None,
        };
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("capture writer thread: {e}"))?;
        tracing::info!(dir = %dir.display(), segments = %ring_summary(&stats), "capture on");
        Ok(Capture {
            filter: Filter::new(&settings.names, settings.only),
            max_body: settings.max_body_bytes,
            tx,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

fn ring_summary(stats: &Stats) -> String {
    format!("{} bytes kept", stats.disk_bytes.load(Ordering::Relaxed))
}

impl Observer for Capture {
    fn exchange(&self, record: &Record<'_>) {
        if !self.filter.wants(record.name, record.via) {
            return;
        }
        match self.tx.try_send(Exchange::of(record, self.max_body)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn keep_bodies(&self, name: &str, via: Via) -> Option<usize> {
        self.filter.wants(name, via).then_some(self.max_body)
    }
}

/// The writer thread's state.
struct Writer {
    ring: Ring,
    redact: Redact,
    stats: Arc<Stats>,
    /// Set after a write error: until then exchanges are counted as lost.
    stopped_until: Option<Instant>,
}

impl Writer {
    /// Takes what has gathered every [`POLL`], rather than waiting on the
    /// channel: a waiting receiver would be woken by every send, a context
    /// switch per captured request on the worker's side.
    fn run(mut self, rx: Receiver<Exchange>) {
        let mut expired = Instant::now();
        loop {
            loop {
                match rx.try_recv() {
                    Ok(x) => self.write(&x),
                    Err(TryRecvError::Empty) => break,
                    // Only once what was sent has been taken.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if expired.elapsed() >= TICK {
                self.ring.expire(SystemTime::now());
                expired = Instant::now();
            }
            self.stats
                .disk_bytes
                .store(self.ring.total_bytes(), Ordering::Relaxed);
            std::thread::sleep(POLL);
        }
    }

    fn write(&mut self, x: &Exchange) {
        if self
            .stopped_until
            .is_some_and(|until| Instant::now() < until)
        {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if is_replay(&x.request_head) {
            return;
        }
        let mut line = match serde_json::to_vec(&Entry::of(x, &self.redact)) {
            Ok(line) => line,
            Err(e) => {
                tracing::debug!(error = %e, "capture: an entry did not serialise");
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        match self.ring.append(&line, SystemTime::now()) {
            Ok(()) => {
                if self.stopped_until.take().is_some() {
                    tracing::info!("capture resumed");
                }
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_written
                    .fetch_add(line.len() as u64, Ordering::Relaxed);
            }
            Err(AppendError::TooLarge) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(AppendError::Io(e)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                // Logged when capture stops, not at every failed retry.
                if self.stopped_until.is_none() {
                    tracing::warn!(
                        error = %e,
                        retry_in_secs = RETRY_AFTER.as_secs(),
                        "capture stopped: writing to its ring failed; traffic is not affected"
                    );
                }
                self.stopped_until = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }
}

/// Whether a request head carries [`REPLAY_HEADER`].
fn is_replay(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > REPLAY_HEADER.len()
            && line[REPLAY_HEADER.len()] == b':'
            && line[..REPLAY_HEADER.len()].eq_ignore_ascii_case(REPLAY_HEADER.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::exchange::Bodies;

    #[test]
    fn replayed_requests_are_known_by_their_header() {
        assert!(is_replay(
            b"GET / HTTP/1.1\r\nHost: w\r\nL5d-Replay: 1\r\n\r\n"
        ));
        assert!(!is_replay(
            b"GET / HTTP/1.1\r\nHost: w\r\nl5d-replayed: 1\r\n\r\n"
        ));
        assert!(!is_replay(b"GET /l5d-replay: HTTP/1.1\r\n\r\n"));
        assert!(!is_replay(b""));
    }

    #[test]
    fn names_are_prefixes_by_element_and_only_narrows() {
        let f = Filter::new(
            &["/svc/world/".into(), "/svc/hello".into()],
            CaptureOnly::Any,
        );
        for (name, want) in [
            ("/svc/world", true),
            ("/svc/world/v2", true),
            ("/svc/worldly", false),
            ("/svc/hello", true),
            ("/svc", false),
        ] {
            assert_eq!(f.wants(name, Via::Base), want, "{name}");
        }
        let all = Filter::new(&[], CaptureOnly::Any);
        assert!(all.wants("/anything", Via::Override));
        assert!(!all.wants("", Via::Base), "not routed");
        assert!(!all.wants("/svc/x", Via::Mirror), "a copy");
        let root = Filter::new(&["/".into()], CaptureOnly::Any);
        assert!(root.wants("/svc/x", Via::Base));

        let rule = Filter::new(&[], CaptureOnly::Rule);
        assert!(rule.wants("/svc/x", Via::Rule));
        assert!(!rule.wants("/svc/x", Via::Override));
        assert!(!rule.wants("/svc/x", Via::Base));
        let over = Filter::new(&[], CaptureOnly::Override);
        assert!(over.wants("/svc/x", Via::Override));
        assert!(!over.wants("/svc/x", Via::Rule));
    }

    fn settings(dir: &std::path::Path, buffer: usize) -> config::Capture {
        config::Capture {
            enabled: true,
            dir: Some(dir.to_owned()),
            names: vec!["/svc/world".into()],
            buffer,
            ..Default::default()
        }
    }

    fn record<'a>(name: &'a str, bodies: Option<Bodies<'a>>) -> Record<'a> {
        Record {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            total: Duration::from_millis(3),
            spans: Spans::default(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            method: "GET",
            authority: "world",
            target: "/users/1",
            status: 200,
            error: None,
            bytes_in: 40,
            bytes_out: 60,
            name,
            dst: "/#/io.l5d.fs/world",
            via: Via::Base,
            rule: "",
            overridden: false,
            stats: None,
            request_id: "r1",
            mirrored: false,
            retried: false,
            traceparent: "",
            bodies,
        }
    }

    /// The observer end to end, without a proxy: records in, lines out.
    #[test]
    fn the_observer_writes_entries_off_the_callers_thread() {
        let dir =
            std::env::temp_dir().join(format!("sidetrack-capture-obs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Capture::start(&settings(&dir, 64)).unwrap();
        let (world, other) = ("/svc/world", "/svc/hello");
        assert_eq!(c.keep_bodies(world, Via::Base), Some(64 << 10));
        assert_eq!(c.keep_bodies(other, Via::Base), None);
        let bodies = Bodies {
            request_head: b"GET /users/1 HTTP/1.1\r\nHost: world\r\nCookie: a=b\r\n\r\n",
            request_body: Some(b""),
            response_head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
            response_body: Some(b"hi"),
        };
        for _ in 0..10 {
            c.exchange(&record(world, Some(bodies)));
            c.exchange(&record(other, Some(bodies)));
        }
        let stats = c.stats();
        assert!(crate::observe::capture::tests::wait(|| {
            stats.captured.load(Ordering::Relaxed) == 10
        }));
        let segments = ring::list_segments(&dir).unwrap();
        assert_eq!(segments.len(), 1);
        let text = std::fs::read_to_string(&segments[0].0).unwrap();
        let entries: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 10);
        assert_eq!(entries[0].response_body().unwrap(), b"hi");
        assert_eq!(entries[0].sidetrack.name, "/svc/world");
        assert!(!text.contains("a=b"));
        assert_eq!(
            stats.bytes_written.load(Ordering::Relaxed),
            text.len() as u64
        );
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A full buffer drops (and counts) rather than waits.
    #[test]
    fn a_full_buffer_drops_and_counts() {
        let (tx, _rx) = mpsc::sync_channel(2);
        let c = Capture {
            filter: Filter::new(&[], CaptureOnly::Any),
            max_body: 10,
            tx,
            stats: Arc::default(),
        };
        let start = Instant::now();
        for _ in 0..100 {
            c.exchange(&record("/svc/world", None));
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(c.stats.dropped.load(Ordering::Relaxed), 98);
        // Bodies past the limit are not copied.
        let big = [0u8; 11];
        let x = Exchange::of(
            &record(
                "/svc/world",
                Some(Bodies {
                    request_head: b"",
                    request_body: Some(&big),
                    response_head: b"",
                    response_body: Some(&big[..10]),
                }),
            ),
            10,
        );
        assert!(x.request_body.is_none());
        assert_eq!(x.response_body.as_deref(), Some(&big[..10]));
    }

    /// A writer whose directory went away counts the error, stops, and
    /// counts what comes meanwhile as lost.
    #[test]
    fn a_write_error_stops_capture_and_is_counted() {
        let dir =
            std::env::temp_dir().join(format!("sidetrack-capture-err-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ring = Ring::open(
            &dir,
            Bounds {
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
                segment_bytes: 1 << 16,
            },
            SystemTime::now(),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut w = Writer {
            ring,
            redact: Redact::new(&[]),
            stats: Arc::default(),
            stopped_until: None,
        };
        let x = Exchange::of(&record("/svc/world", None), 10);
        for _ in 0..3 {
            w.write(&x);
        }
        let s = w.stats.clone();
        assert_eq!(s.write_errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.lost.load(Ordering::Relaxed), 3);
        assert_eq!(s.captured.load(Ordering::Relaxed), 0);
        // Once the retry time has come and the directory is back, it
        // resumes.
        std::fs::create_dir_all(&dir).unwrap();
        w.stopped_until = Some(Instant::now());
        w.write(&x);
        assert_eq!(s.captured.load(Ordering::Relaxed), 1);
        assert!(w.stopped_until.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub(super) fn wait(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if f() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        f()
    }
}
