//! The access log: one line per exchange, JSON or the common log format
//! with extra fields, written by a thread of its own.
//!
//! A worker formats its line into a buffer of its own and appends it to a
//! shared, bounded buffer under a short lock; the writer thread swaps that
//! buffer for an empty one and writes it out. A full buffer drops the line
//! (counted in `sidetrack_access_log_dropped_total`): a slow disk or a
//! blocked stdout never slows requests. In steady state nothing is
//! allocated: the two buffers trade places.
//!
//! To a file, the log is reopened on SIGHUP (after logrotate has moved it).

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

use crate::config::{AccessLogFormat as Format, AccessLogSettings};

use super::{
    exchange::{Observer, Record},
    metrics::ExtraCounters,
};

/// Where lines wait for the writer.
struct Pending {
    lines: Vec<u8>,
    /// The writer is gone (stopped): nothing more is kept.
    closed: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    ready: Condvar,
    capacity: usize,
    flush_interval: Duration,
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    reopen: Arc<AtomicBool>,
}

/// The access log, as an observer of exchanges.
pub struct AccessLog {
    inner: Arc<Inner>,
    format: Format,
    include_query: bool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

thread_local! {
    /// Each worker's line, formatted before the lock is taken.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Where lines go.
enum Sink {
    Stdout,
    File(PathBuf, File),
}

impl Sink {
    fn open(path: &str) -> io::Result<Sink> {
        if path == "-" {
            return Ok(Sink::Stdout);
        }
        let path = PathBuf::from(path);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Sink::File(path, file))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(_, f) => f.write_all(bytes),
        }
    }

    /// After logrotate moved the file: a new one at the same path.
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File(path, file) = self {
            *file = OpenOptions::new().create(true).append(true).open(&*path)?;
        }
        Ok(())
    }
}

impl AccessLog {
    /// Opens the log and starts its writer.
    pub fn start(settings: &AccessLogSettings) -> io::Result<Arc<AccessLog>> {
        let sink = Sink::open(&settings.path)?;
        let log = AccessLog::new(settings);
        if matches!(sink, Sink::File(..)) {
            signal_hook::flag::register(signal_hook::consts::SIGHUP, log.inner.reopen.clone())?;
        }
        let shared = log.inner.clone();
        let mut sink = sink;
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&shared, &mut sink))?;
        *log.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        Ok(Arc::new(log))
    }

    /// The log without its writer yet.
    fn new(settings: &AccessLogSettings) -> AccessLog {
        AccessLog {
            inner: Arc::new(Inner {
                pending: Mutex::new(Pending {
                    lines: Vec::with_capacity(settings.buffer_bytes),
                    closed: false,
                }),
                ready: Condvar::new(),
                capacity: settings.buffer_bytes,
                flush_interval: Duration::from_millis(settings.flush_interval_ms.max(1)),
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                reopen: Arc::new(AtomicBool::new(false)),
            }),
            format: settings.format,
            include_query: settings.include_query,
            writer: Mutex::new(None),
        }
    }

    /// Writes what is buffered and stops the writer (at exit).
    pub fn stop(&self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.inner.ready.notify_one();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }

    /// Lines dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.closed || pending.lines.len() + line.len() > self.inner.capacity {
            drop(pending);
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        drop(pending);
        // The writer wakes by itself every flush interval; it is woken
        // early only when the buffer is half full, so that a busy proxy
        // does not wake it for every line.
        let half = self.inner.capacity / 2;
        if before < half && before + line.len() >= half {
            self.inner.ready.notify_one();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The writer thread: takes what is pending, writes it, and reopens the
/// file when SIGHUP asked.
fn write_lines(inner: &Inner, sink: &mut Sink) {
    let mut batch: Vec<u8> = Vec::with_capacity(inner.capacity);
    loop {
        let closed = {
            let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.closed && pending.lines.len() < inner.capacity / 2 {
                // Every flush interval, or early when the buffer is half
                // full or the log stops.
                let (p, _) = inner
                    .ready
                    .wait_timeout(pending, inner.flush_interval)
                    .unwrap_or_else(|e| e.into_inner());
                pending = p;
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.closed
        };
        if inner.reopen.swap(false, Ordering::Relaxed)
            && let Err(e) = sink.reopen()
        {
            tracing::warn!(error = %e, "access log: reopening failed; writing on to the old file");
        }
        if !batch.is_empty() {
            match sink.write(&batch) {
                Ok(()) => {
                    let lines = batch.iter().filter(|b| **b == b'\n').count();
                    inner.written.fetch_add(lines as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    if inner.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "access log: write failed; those lines are lost");
                    }
                }
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

impl Observer for AccessLog {
    fn exchange(&self, record: &Record<'_>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            match self.format {
                Format::Json => write_json(&mut line, record, self.include_query),
                Format::Common => write_common(&mut line, record, self.include_query),
            }
            line.push(b'\n');
            self.append(&line);
        });
    }
}

/// The path to log: without its query unless asked.
fn logged_path(target: &str, include_query: bool) -> &str {
    if include_query {
        target
    } else {
        target.split_once('?').map_or(target, |(p, _)| p)
    }
}

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_micros() as u64)
}

/// A field written as its `Display` form, straight into the line (no
/// string of its own).
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One JSON line's fields.
#[derive(Serialize)]
struct Line<'a> {
    time: Shown<humantime::Rfc3339Timestamp>,
    source: Shown<std::net::SocketAddr>,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    status: u16,
    duration_us: u64,
    first_byte_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    name: &'a str,
    dst: &'a str,
    via: &'static str,
    rule: &'a str,
    #[serde(rename = "override")]
    overridden: bool,
    error: Option<&'static str>,
    retried: bool,
    mirrored: bool,
    request_id: &'a str,
    traceparent: &'a str,
    identify_us: Option<u64>,
    route_us: Option<u64>,
    connect_us: Option<u64>,
}

fn write_json(out: &mut Vec<u8>, r: &Record<'_>, include_query: bool) {
    let line = Line {
        time: Shown(humantime::format_rfc3339_micros(r.started_wall)),
        source: Shown(r.peer),
        method: r.method,
        authority: r.authority,
        path: logged_path(r.target, include_query),
        status: r.status,
        duration_us: r.total.as_micros() as u64,
        first_byte_us: micros(r.spans.first_byte),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        name: r.name(),
        dst: r.dst(),
        via: r.via().label(),
        rule: r.rule(),
        overridden: r.overridden,
        error: r.error.map(|e| e.label()),
        retried: r.retried,
        mirrored: r.mirrored,
        request_id: r.request_id,
        traceparent: r.traceparent,
        identify_us: micros(r.spans.identified),
        route_us: micros(r.spans.routed),
        connect_us: micros(r.spans.connected),
    };
    let _ = serde_json::to_writer(&mut *out, &line);
}

/// `host - - [time] "METHOD path HTTP/1.1" status bytes` and then the
/// proxy's fields as `key=value` (values without spaces; `-` when empty).
fn write_common(out: &mut Vec<u8>, r: &Record<'_>, include_query: bool) {
    let _ = write!(
        out,
        "{} - - [{}] \"{} {} HTTP/1.1\" {} {} name={} dst={} via={} rule={} error={} duration_us={} first_byte_us={} bytes_in={} retried={} mirrored={} request_id={} traceparent={} identify_us={} route_us={} connect_us={}",
        r.peer.ip(),
        humantime::format_rfc3339_micros(r.started_wall),
        Dashed(r.method),
        Dashed(logged_path(r.target, include_query)),
        r.status,
        r.bytes_out,
        Dashed(r.name()),
        Dashed(r.dst()),
        r.via().label(),
        Dashed(r.rule()),
        r.error.map_or("-", |e| e.label()),
        r.total.as_micros(),
        Micros(r.spans.first_byte),
        r.bytes_in,
        r.retried,
        r.mirrored,
        Dashed(r.request_id),
        Dashed(r.traceparent),
        Micros(r.spans.identified),
        Micros(r.spans.routed),
        Micros(r.spans.connected),
    );
}

/// A common-format value: `-` when empty, spaces and quotes as `_`.
struct Dashed<'a>(&'a str);

impl std::fmt::Display for Dashed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for part in self.0.split_inclusive([' ', '"']) {
            match part.strip_suffix([' ', '"']) {
                Some(text) => {
                    f.write_str(text)?;
                    f.write_str("_")?;
                }
                None => f.write_str(part)?,
            }
        }
        Ok(())
    }
}

/// A span in microseconds, or `-`.
struct Micros(Option<Duration>);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", d.as_micros()),
            None => f.write_str("-"),
        }
    }
}

impl ExtraCounters for AccessLog {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        let i = &self.inner;
        out.push((
            "access_log_lines",
            "Access log lines written.",
            i.written.load(Ordering::Relaxed),
        ));
        out.push((
            "access_log_dropped",
            "Access log lines dropped: the buffer was full (the writer fell behind).",
            i.dropped.load(Ordering::Relaxed),
        ));
        out.push((
            "access_log_write_errors",
            "Access log writes that failed (their lines are lost).",
            i.write_errors.load(Ordering::Relaxed),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::exchange::Spans;
    use std::time::{Instant, SystemTime};

    fn record<'a>() -> Record<'a> {
        Record {
            started: Instant::now(),
            started_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            total: Duration::from_micros(1234),
            spans: Spans {
                identified: Some(Duration::from_micros(3)),
                routed: Some(Duration::from_micros(9)),
                connected: None,
                first_byte: Some(Duration::from_micros(1000)),
            },
            peer: "198.18.0.7:40000".parse().unwrap(),
            method: "GET",
            authority: "world",
            target: "/hello?token=secret",
            status: 200,
            error: None,
            bytes_in: 80,
            bytes_out: 120,
            name: "",
            dst: "",
            via: crate::observe::exchange::Via::Base,
            rule: "",
            overridden: false,
            stats: None,
            request_id: "0123456789abcdef",
            mirrored: false,
            retried: true,
            traceparent: "",
            bodies: None,
        }
    }

    #[test]
    fn a_json_line_has_every_field_and_no_query_by_default() {
        let mut out = Vec::new();
        write_json(&mut out, &record(), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["source"], "198.18.0.7:40000");
        assert_eq!(v["path"], "/hello");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_us"], 1234);
        assert_eq!(v["first_byte_us"], 1000);
        assert_eq!(v["connect_us"], serde_json::Value::Null);
        assert_eq!(v["retried"], true);
        assert_eq!(v["via"], "base");
        assert_eq!(v["request_id"], "0123456789abcdef");
        let mut out = Vec::new();
        write_json(&mut out, &record(), true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/hello?token=secret");
    }

    #[test]
    fn a_common_line_starts_as_the_common_log_format_does() {
        let mut out = Vec::new();
        write_common(&mut out, &record(), false);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.starts_with(
                "198.18.0.7 - - [2023-11-14T22:13:20.000000Z] \"GET /hello HTTP/1.1\" 200 120 name=- dst=- via=base"
            ),
            "{line}"
        );
        assert!(line.ends_with(" connect_us=-"), "{line}");
    }

    #[test]
    fn common_values_have_no_spaces_or_quotes() {
        assert_eq!(Dashed("").to_string(), "-");
        assert_eq!(Dashed("a b\"c").to_string(), "a_b_c");
        assert_eq!(Dashed("/svc/world").to_string(), "/svc/world");
    }

    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        // No writer: nothing takes lines away meanwhile.
        let log = AccessLog::new(&AccessLogSettings {
            buffer_bytes: 4096,
            ..Default::default()
        });
        let line = [b'x'; 1000];
        for _ in 0..4 {
            log.append(&line);
        }
        assert_eq!(log.dropped(), 0);
        log.append(&line);
        log.append(&line);
        assert_eq!(log.dropped(), 2);
        assert_eq!(log.inner.pending.lock().unwrap().lines.len(), 4000);
    }

    #[test]
    fn lines_reach_the_file_and_a_reopen_starts_a_new_one() {
        let dir = std::env::temp_dir().join(format!("sidetrack-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let settings = AccessLogSettings {
            enabled: true,
            path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let log = AccessLog::start(&settings).unwrap();
        log.exchange(&record());
        let wait_for = |p: &std::path::Path, lines: usize| {
            for _ in 0..200 {
                let n = std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
                if n >= lines {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            0
        };
        assert_eq!(wait_for(&path, 1), 1);
        // logrotate moves the file, then SIGHUP: the flag the handler sets.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.inner.reopen.store(true, Ordering::Relaxed);
        // The writer reopens before it writes what woke it.
        log.exchange(&record());
        log.stop();
        assert_eq!(wait_for(&path, 1), 1);
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
