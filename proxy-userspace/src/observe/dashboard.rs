//! The per-version dashboard: for each logical name, each destination
//! (version) its requests went to and how the destination was chosen
//! ([`Via`]), what happened over the last 1, 5 and 15 minutes.
//!
//! A [`Row`] is a ring of fixed time buckets (`dashboard.bucket_secs`
//! wide, 15 minutes of them), each a few counters and a log-scaled latency
//! histogram, all atomics. A route's destination holds its row
//! (`RouteStats::dashboard`, made when the binding is cached), so
//! recording a request is a handful of relaxed adds: no lock, no lookup.
//! Requests that never reached a destination (refused, unidentified,
//! unbound) go through [`Dashboard::record_keyed`], a map under a lock.
//!
//! Memory is bounded by `dashboard.max_rows`: past it, new rows' traffic
//! is counted in one `(other)` row. A row that no cached route holds and
//! that saw nothing for 15 minutes is given back when room is needed.
//!
//! Nothing here reads the clock: every call takes `now`, so the tests
//! script time.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{config, observe::exchange::Via};

/// How far back rows look: the longest window.
const SPAN_SECS: u64 = 900;

/// The windows read out, by name and length in seconds.
pub const WINDOWS: [(&str, u64); 3] = [("1m", 60), ("5m", 300), ("15m", 900)];

/// The name and destination of the row that takes what the cap leaves out.
pub const OTHER: &str = "(other)";
/// The destination of requests that never had one.
pub const NO_DST: &str = "(none)";
/// The name of requests that were not identified.
pub const UNIDENTIFIED: &str = "(unidentified)";

// Latency buckets: four per doubling (lower bounds 1, 1.25, 1.5 and 1.75
// times 2^k µs) from 32 µs to 2^26 µs (67 s), plus one below; what is
// longer counts in the last.
const SUB_BITS: u32 = 2;
const FIRST_OCTAVE: u32 = 5;
const LAST_OCTAVE: u32 = 26;
const LATENCY_BUCKETS: usize = (((LAST_OCTAVE - FIRST_OCTAVE) << SUB_BITS) + 1) as usize;

/// The histogram bucket of a latency.
fn latency_bucket(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if us < 1 << FIRST_OCTAVE {
        return 0;
    }
    let octave = 63 - us.leading_zeros();
    if octave >= LAST_OCTAVE {
        return LATENCY_BUCKETS - 1;
    }
    let sub = (us >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    1 + (((octave - FIRST_OCTAVE) << SUB_BITS) as usize) + sub as usize
}

/// A histogram bucket's bounds in µs: `[lower, upper)`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    if i == 0 {
        return (0, 1 << FIRST_OCTAVE);
    }
    let j = (i - 1) as u32;
    let octave = FIRST_OCTAVE + (j >> SUB_BITS);
    let sub = u64::from(j & ((1 << SUB_BITS) - 1));
    let step = 1u64 << (octave - SUB_BITS);
    ((4 + sub) * step, (5 + sub) * step)
}

/// One exchange as a row counts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub latency: Duration,
    /// The status the client got (0: none).
    pub status: u16,
    /// The proxy answered or closed for it (`Record::error` was set).
    pub proxy_error: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A slot's stamp while one thread clears it for a new bucket.
const CLEARING: u64 = u64::MAX;

/// One time bucket of a row.
struct Slot {
    /// The bucket number it counts, plus one (0: never used).
    stamp: AtomicU64,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    errors_proxy: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            stamp: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            errors_proxy: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Makes the slot count bucket `stamp`, clearing what it counted
    /// before; false when it already counts a later bucket (a sample
    /// older than the ring, dropped). The thread that moves the slot on
    /// marks it [`CLEARING`] first, so no other thread adds to counts that
    /// are about to be zeroed: they wait the few stores it takes.
    fn claim(&self, stamp: u64) -> bool {
        let mut spins = 0u32;
        loop {
            let current = self.stamp.load(std::sync::atomic::Ordering::Acquire);
            if current == stamp {
                return true;
            }
            if current == CLEARING {
                spins += 1;
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            if current > stamp {
                return false;
            }
            if self
                .stamp
                .compare_exchange(
                    current,
                    CLEARING,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                )
                .is_ok()
            {
                for c in [
                    &self.requests,
                    &self.errors_5xx,
                    &self.errors_proxy,
                    &self.bytes_in,
                    &self.bytes_out,
                ] {
                    c.store(0, Relaxed);
                }
                for b in &self.latency {
                    b.store(0, Relaxed);
                }
                self.stamp
                    .store(stamp, std::sync::atomic::Ordering::Release);
                return true;
            }
        }
    }

    fn add(&self, s: &Sample) {
        self.requests.fetch_add(1, Relaxed);
        if s.proxy_error {
            self.errors_proxy.fetch_add(1, Relaxed);
        } else if s.status >= 500 {
            self.errors_5xx.fetch_add(1, Relaxed);
        }
        self.bytes_in.fetch_add(s.bytes_in, Relaxed);
        self.bytes_out.fetch_add(s.bytes_out, Relaxed);
        self.latency[latency_bucket(s.latency)].fetch_add(1, Relaxed);
    }

    /// Adds what the slot counts to `t` if it counts a bucket in
    /// `first..=last` (stamps); a slot moved on meanwhile is left out.
    fn read_into(&self, first: u64, last: u64, t: &mut Totals) {
        let stamp = self.stamp.load(std::sync::atomic::Ordering::Acquire);
        if stamp < first || stamp > last {
            return;
        }
        let mut here = Totals {
            requests: self.requests.load(Relaxed),
            errors_5xx: self.errors_5xx.load(Relaxed),
            errors_proxy: self.errors_proxy.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            ..Totals::default()
        };
        for (sum, b) in here.latency.iter_mut().zip(&self.latency) {
            *sum = u64::from(b.load(Relaxed));
        }
        if self.stamp.load(std::sync::atomic::Ordering::Acquire) == stamp {
            t.add(&here);
        }
    }
}

/// What a row is: the name, the destination, how it was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub dst: String,
    pub via: Via,
    /// The routing rule, for [`Via::Rule`]; empty otherwise.
    pub rule: String,
}

/// The time buckets of one (name, destination, via).
pub struct Row {
    key: Key,
    /// The dashboard's start: bucket 0 begins there.
    epoch: Instant,
    bucket_ms: u64,
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row").field("key", &self.key).finish()
    }
}

impl Row {
    fn new(key: Key, epoch: Instant, bucket_secs: u64) -> Row {
        let slots = (SPAN_SECS / bucket_secs) as usize;
        Row {
            key,
            epoch,
            bucket_ms: bucket_secs * 1000,
            slots: (0..slots).map(|_| Slot::new()).collect(),
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 / self.bucket_ms
    }

    /// Counts one exchange that ended at `now`.
    pub fn record(&self, now: Instant, sample: &Sample) {
        let n = self.bucket(now);
        let slot = &self.slots[(n % self.slots.len() as u64) as usize];
        if slot.claim(n + 1) {
            slot.add(sample);
        }
    }

    /// The last `secs` seconds up to `now`, in whole buckets: the current
    /// one (partly elapsed) and those before it. `Totals::secs` is the
    /// time they cover, no more than has passed since the start.
    pub fn window(&self, now: Instant, secs: u64) -> Totals {
        let n = self.bucket(now);
        let count = (secs * 1000)
            .div_ceil(self.bucket_ms)
            .min(self.slots.len() as u64);
        let first = (n + 1).saturating_sub(count - 1).max(1);
        let mut t = Totals::default();
        for slot in self.slots.iter() {
            slot.read_into(first, n + 1, &mut t);
        }
        let start_ms = (first - 1) * self.bucket_ms;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        t.secs = now_ms.saturating_sub(start_ms) as f64 / 1000.0;
        t
    }

    /// The last bucket anything was counted in, plus one (0: never).
    fn last_stamp(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.stamp.load(Relaxed))
            .filter(|&s| s != CLEARING)
            .max()
            .unwrap_or(0)
    }

    /// The bytes a row of `bucket_secs` takes.
    pub fn size(bucket_secs: u64) -> usize {
        std::mem::size_of::<Row>()
            + (SPAN_SECS / bucket_secs) as usize * std::mem::size_of::<Slot>()
    }
}

/// A row's sums over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors_5xx: u64,
    pub errors_proxy: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    latency: [u64; LATENCY_BUCKETS],
    /// The seconds the window covers.
    pub secs: f64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            requests: 0,
            errors_5xx: 0,
            errors_proxy: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency: [0; LATENCY_BUCKETS],
            secs: 0.0,
        }
    }
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.errors_5xx += o.errors_5xx;
        self.errors_proxy += o.errors_proxy;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors_5xx + self.errors_proxy
    }

    /// Errors (5xx and the proxy's) per request; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors() as f64 / self.requests as f64)
    }

    /// The `q` quantile (0..=1) of the latencies, in milliseconds: the
    /// middle of the bucket it falls in (at most 12.5% off); `None`
    /// without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut below = 0;
        for (i, &n) in self.latency.iter().enumerate() {
            below += n;
            if below >= rank {
                let (lo, hi) = bucket_bounds(i);
                return Some((lo + hi) as f64 / 2.0 / 1000.0);
            }
        }
        None
    }
}

/// How [`Via`] is derived from the labels a destination's metrics are
/// made with: the mirror's label first, then an override, then a rule.
pub fn via_of(overridden: bool, rule: &str) -> Via {
    if rule == super::metrics::MIRROR_LABEL {
        Via::Mirror
    } else if overridden {
        Via::Override
    } else if !rule.is_empty() {
        Via::Rule
    } else {
        Via::Base
    }
}

/// Every row, by key, and the one that takes the rest.
pub struct Dashboard {
    settings: config::Dashboard,
    epoch: Instant,
    rows: Mutex<Rows>,
    other: Arc<Row>,
}

struct Rows {
    by_key: HashMap<Key, Arc<Row>>,
    /// The bucket of the last sweep for rows to give back: at most one a
    /// bucket, however many new names knock once the table is full.
    swept: Option<u64>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard whose time starts at `epoch`.
    pub fn new(settings: config::Dashboard, epoch: Instant) -> Dashboard {
        let other = Key {
            name: OTHER.into(),
            dst: OTHER.into(),
            via: Via::Base,
            rule: String::new(),
        };
        Dashboard {
            other: Arc::new(Row::new(other, epoch, settings.bucket_secs)),
            settings,
            epoch,
            rows: Mutex::new(Rows {
                by_key: HashMap::new(),
                swept: None,
            }),
        }
    }

    /// The row of `key`, made if there is room (or room is made by giving
    /// back a row nobody holds that saw nothing for 15 minutes); else the
    /// `(other)` row. Called when a binding is cached, and per request on
    /// the keyed path.
    pub fn row(&self, key: &Key, now: Instant) -> Arc<Row> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(row) = rows.by_key.get(key) {
            return row.clone();
        }
        if rows.by_key.len() >= self.settings.max_rows {
            self.sweep(&mut rows, now);
            if rows.by_key.len() >= self.settings.max_rows {
                return self.other.clone();
            }
        }
        let row = Arc::new(Row::new(key.clone(), self.epoch, self.settings.bucket_secs));
        rows.by_key.insert(key.clone(), row.clone());
        row
    }

    /// Gives back the rows that only the dashboard holds (their routes
    /// left the cache) and that saw nothing during the last 15 minutes.
    fn sweep(&self, rows: &mut Rows, now: Instant) {
        let bucket = self.other.bucket(now);
        if rows.swept == Some(bucket) {
            return;
        }
        rows.swept = Some(bucket);
        let span = SPAN_SECS / self.settings.bucket_secs;
        // A stamp is the bucket plus one; anything at or below this one
        // is older than the ring.
        let stale = (bucket + 1).saturating_sub(span);
        rows.by_key
            .retain(|_, row| Arc::strong_count(row) > 1 || row.last_stamp() > stale);
    }

    /// Counts an exchange that has no row of its own (no destination):
    /// looked up by key, under the lock.
    pub fn record_keyed(&self, key: &Key, now: Instant, sample: &Sample) {
        self.row(key, now).record(now, sample);
    }

    /// Rows in use, not counting `(other)`.
    pub fn rows_used(&self) -> usize {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }

    /// Everything `/dashboard.json` shows, read at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let rows: Vec<Arc<Row>> = {
            let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            rows.by_key.values().cloned().collect()
        };
        let mut read: Vec<(Key, [Totals; 3])> = rows
            .iter()
            .chain(std::iter::once(&self.other))
            .map(|row| {
                (
                    row.key.clone(),
                    WINDOWS.map(|(_, secs)| row.window(now, secs)),
                )
            })
            .filter(|(_, w)| w[2].requests > 0)
            .collect();
        read.sort_by(|a, b| {
            (&a.0.name, &a.0.dst, a.0.via as u8, &a.0.rule).cmp(&(
                &b.0.name,
                &b.0.dst,
                b.0.via as u8,
                &b.0.rule,
            ))
        });
        let mut names: Vec<NameView> = Vec::new();
        for group in read.chunk_by(|a, b| a.0.name == b.0.name) {
            names.push(self.name_view(group));
        }
        Snapshot {
            bucket_secs: self.settings.bucket_secs,
            max_rows: self.settings.max_rows,
            rows_used: rows.len(),
            row_bytes: Row::size(self.settings.bucket_secs),
            flag_min_requests: self.settings.flag_min_requests,
            names,
        }
    }

    /// One name's rows, each judged against its siblings.
    fn name_view(&self, group: &[(Key, [Totals; 3])]) -> NameView {
        let rule = FlagRule {
            min_requests: self.settings.flag_min_requests,
        };
        let rows = group
            .iter()
            .enumerate()
            .map(|(i, (key, totals))| {
                let window = |w: usize| {
                    let siblings: Vec<&Totals> = group
                        .iter()
                        .enumerate()
                        .filter(|&(j, (k, _))| j != i && is_version(k))
                        .map(|(_, (_, t))| &t[w])
                        .collect();
                    let why = if is_version(key) {
                        rule.judge(&totals[w], &siblings)
                    } else {
                        None
                    };
                    WindowView::of(&totals[w], why)
                };
                RowView {
                    dst: key.dst.clone(),
                    via: key.via.label().into(),
                    rule: key.rule.clone(),
                    windows: Windows {
                        m1: window(0),
                        m5: window(1),
                        m15: window(2),
                    },
                }
            })
            .collect();
        NameView {
            name: group[0].0.name.clone(),
            rows,
        }
    }
}

/// Whether a row is a version (judged, and a sibling to others), not the
/// requests that never reached one or those the cap pooled.
fn is_version(key: &Key) -> bool {
    key.dst != NO_DST && key.dst != OTHER
}

/// When a version is much worse than its siblings on the same name, in
/// one window. It must have served `min_requests`, and
/// - its error rate (5xx and the proxy's errors) is more than twice that
///   of its siblings together, and at least 5 points above it, their
///   requests together being at least `min_requests` too; or
/// - its p99 is more than twice the best p99 among its siblings that
///   served `min_requests`, and at least 5 ms above it.
#[derive(Clone, Copy, Debug)]
pub struct FlagRule {
    pub min_requests: u64,
}

const ERROR_RATIO: f64 = 2.0;
const ERROR_POINTS: f64 = 0.05;
const P99_RATIO: f64 = 2.0;
const P99_FLOOR_MS: f64 = 5.0;

impl FlagRule {
    /// Why the row is flagged, or `None`.
    pub fn judge(&self, row: &Totals, siblings: &[&Totals]) -> Option<String> {
        if row.requests < self.min_requests {
            return None;
        }
        let mut why = Vec::new();
        let (mut requests, mut errors) = (0, 0);
        for s in siblings {
            requests += s.requests;
            errors += s.errors();
        }
        if requests >= self.min_requests {
            let theirs = errors as f64 / requests as f64;
            let ours = row.error_rate().unwrap_or(0.0);
            if ours > ERROR_RATIO * theirs && ours - theirs >= ERROR_POINTS {
                why.push(format!(
                    "errors {:.1}% against {:.1}% on its siblings",
                    ours * 100.0,
                    theirs * 100.0
                ));
            }
        }
        let best = siblings
            .iter()
            .filter(|s| s.requests >= self.min_requests)
            .filter_map(|s| s.quantile_ms(0.99))
            .min_by(f64::total_cmp);
        if let (Some(best), Some(ours)) = (best, row.quantile_ms(0.99))
            && ours > P99_RATIO * best
            && ours - best >= P99_FLOOR_MS
        {
            why.push(format!(
                "p99 {ours:.1} ms against {best:.1} ms on its best sibling"
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// `/dashboard.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub bucket_secs: u64,
    pub max_rows: usize,
    /// Rows in use (kept apart), not counting `(other)`.
    pub rows_used: usize,
    /// The memory one row takes, in bytes.
    pub row_bytes: usize,
    pub flag_min_requests: u64,
    /// Names with any request in the last 15 minutes, sorted.
    pub names: Vec<NameView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameView {
    pub name: String,
    pub rows: Vec<RowView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowView {
    pub dst: String,
    /// `base`, `rule`, `override` or `mirror`.
    pub via: String,
    /// The routing rule's name when `via` is `rule`.
    pub rule: String,
    pub windows: Windows,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Windows {
    #[serde(rename = "1m")]
    pub m1: WindowView,
    #[serde(rename = "5m")]
    pub m5: WindowView,
    #[serde(rename = "15m")]
    pub m15: WindowView,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowView {
    pub requests: u64,
    pub rps: f64,
    /// The share of requests that were neither 5xx nor the proxy's
    /// errors; `null` without requests.
    pub success_rate: Option<f64>,
    pub errors_5xx: u64,
    pub errors_proxy: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub flagged: bool,
    /// Why it is flagged; empty when it is not.
    pub why: String,
}

impl WindowView {
    fn of(t: &Totals, why: Option<String>) -> WindowView {
        let round = |v: f64, places: i32| {
            let f = 10f64.powi(places);
            (v * f).round() / f
        };
        WindowView {
            requests: t.requests,
            rps: if t.secs > 0.0 {
                round(t.requests as f64 / t.secs, 3)
            } else {
                0.0
            },
            success_rate: t.error_rate().map(|e| round(1.0 - e, 4)),
            errors_5xx: t.errors_5xx,
            errors_proxy: t.errors_proxy,
            p50_ms: t.quantile_ms(0.50).map(|v| round(v, 3)),
            p95_ms: t.quantile_ms(0.95).map(|v| round(v, 3)),
            p99_ms: t.quantile_ms(0.99).map(|v| round(v, 3)),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            flagged: why.is_some(),
            why: why.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
