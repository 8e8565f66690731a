//! The engine: counts each endpoint's differences, keeps a few samples,
//! and reports them through the noise rule.
//!
//! It runs in the mirror tasks, off the request path: `record` compares
//! the three responses without a lock, then takes one mutex to count.
//! Everything it keeps is bounded by the settings: endpoints, fields per
//! endpoint, samples per field, and the bytes of all samples together.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use super::{
    compare::{Differences, Kind, Request, Response, compare},
    endpoint::{MAX_ENDPOINT_LEN, truncate},
    noise::judge,
    report::{
        EndpointReport, ExchangeSample, FieldReport, FieldSample, Report, RequestSample,
        ResponseSample,
    },
    settings::DiffSettings,
};

/// Where the requests of endpoints past `max_endpoints` are counted.
pub const OTHER_ENDPOINT: &str = "other";

/// Request and response headers whose values samples never show.
const REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "l5d-dtab-signature",
];
/// Header lines kept per sampled message, and bytes per value.
const SAMPLE_HEADERS: usize = 64;
const SAMPLE_HEADER_VALUE: usize = 256;
const SAMPLE_TARGET: usize = 1024;
/// What a kept sample costs beyond its strings (a rough allowance for the
/// structs around them).
const SAMPLE_OVERHEAD: usize = 64;

/// The diff engine. `Send + Sync`: share it in an `Arc`.
pub struct Engine {
    inner: Mutex<Inner>,
    /// `max_body_bytes` of the settings in force, read without the lock
    /// by the data path (what it keeps of a live answer).
    max_body: std::sync::atomic::AtomicUsize,
}

struct Inner {
    settings: Arc<DiffSettings>,
    /// Bumped by each reset, so a comparison made under older settings or
    /// before a reset is not counted after it.
    generation: u64,
    since: Instant,
    endpoints: HashMap<String, EndpointState>,
    sample_bytes: usize,
    samples_dropped: u64,
}

#[derive(Default)]
struct EndpointState {
    requests: u64,
    differing: u64,
    noisy: u64,
    fields: HashMap<String, FieldState>,
    fields_overflowed: u64,
    exchanges: Vec<ExchangeSample>,
}

#[derive(Default)]
struct FieldState {
    raw: u64,
    noise: u64,
    kinds: BTreeMap<Kind, u64>,
    samples: Vec<FieldSample>,
}

/// One request's comparisons, as `record` hands them to the counting.
struct Compared<'a> {
    raw: Differences,
    noise: Differences,
    request: &'a Request<'a>,
    primary: &'a Response<'a>,
    secondary: &'a Response<'a>,
    candidate: &'a Response<'a>,
}

impl Engine {
    pub fn new(settings: DiffSettings) -> Engine {
        Engine {
            max_body: settings.max_body_bytes.into(),
            inner: Mutex::new(Inner {
                settings: Arc::new(settings),
                generation: 0,
                since: Instant::now(),
                endpoints: HashMap::new(),
                sample_bytes: 0,
                samples_dropped: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while counting leaves counts, not broken invariants.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> Arc<DiffSettings> {
        self.lock().settings.clone()
    }

    /// Takes new settings (a reload). New thresholds apply to the counts
    /// kept; a change to anything else (what is compared, the bounds)
    /// resets them, as counts made under other rules would not add up.
    /// Returns whether it reset.
    pub fn set_settings(&self, settings: DiffSettings) -> bool {
        let mut inner = self.lock();
        self.max_body.store(
            settings.max_body_bytes,
            std::sync::atomic::Ordering::Relaxed,
        );
        let reset = !inner.settings.same_comparison(&settings);
        inner.settings = Arc::new(settings);
        if reset {
            inner.reset();
        }
        reset
    }

    /// How many bytes of each body a comparison looks at
    /// (`max_body_bytes`), without taking the lock.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets every count and sample.
    pub fn reset(&self) {
        self.lock().reset();
    }

    /// Compares one request's three responses and counts the differences
    /// under `endpoint` (see [`super::endpoint()`]): primary vs candidate
    /// (raw) and primary vs secondary (noise). Returns whether the
    /// candidate's answer differed from the primary's at all.
    pub fn record(
        &self,
        endpoint: &str,
        request: &Request,
        primary: &Response,
        secondary: &Response,
        candidate: &Response,
    ) -> bool {
        let (settings, generation) = {
            let inner = self.lock();
            (inner.settings.clone(), inner.generation)
        };
        let compared = Compared {
            raw: compare(&settings, primary, candidate),
            noise: compare(&settings, primary, secondary),
            request,
            primary,
            secondary,
            candidate,
        };
        let differs = !compared.raw.is_empty();
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.count(endpoint, compared);
        }
        differs
    }

    /// The report: every endpoint, every field, judged by the thresholds
    /// in force now.
    pub fn report(&self) -> Report {
        self.lock().report()
    }
}

impl Inner {
    fn reset(&mut self) {
        self.generation += 1;
        self.since = Instant::now();
        self.endpoints.clear();
        self.sample_bytes = 0;
        self.samples_dropped = 0;
    }

    fn count(&mut self, endpoint: &str, c: Compared) {
        let s = self.settings.clone();
        let mut name = endpoint.to_owned();
        truncate(&mut name, MAX_ENDPOINT_LEN);
        if !self.endpoints.contains_key(&name) && self.endpoints.len() >= s.max_endpoints {
            name = OTHER_ENDPOINT.to_owned();
        }
        let ep = self.endpoints.entry(name).or_default();
        ep.requests += 1;
        ep.differing += u64::from(!c.raw.is_empty());
        ep.noisy += u64::from(!c.noise.is_empty());

        // The exchange is made once, for the first field of this request
        // that still wants a sample.
        let mut exchange: Option<usize> = None;
        let mut tried = false;
        for (path, found) in &c.raw {
            let Some(field) = field(ep, path, s.max_fields_per_endpoint) else {
                continue;
            };
            field.raw += 1;
            for kind in found.kinds.iter() {
                *field.kinds.entry(kind).or_default() += 1;
            }
            if field.samples.len() >= s.samples_per_field {
                continue;
            }
            let values = found.first.as_ref().map_or(0, String::len)
                + found.second.as_ref().map_or(0, String::len)
                + SAMPLE_OVERHEAD;
            if self.sample_bytes + values > s.max_sample_bytes {
                self.samples_dropped += 1;
                continue;
            }
            self.sample_bytes += values;
            if !tried {
                tried = true;
                let whole = exchange_sample(&s, &c);
                let cost = exchange_cost(&whole);
                if self.sample_bytes + cost <= s.max_sample_bytes {
                    self.sample_bytes += cost;
                    ep.exchanges.push(whole);
                    exchange = Some(ep.exchanges.len() - 1);
                } else {
                    self.samples_dropped += 1;
                }
            }
            // Fetched again: `field` was borrowed from `ep` above.
            if let Some(field) = ep.fields.get_mut(path) {
                field.samples.push(FieldSample {
                    primary: found.first.clone(),
                    candidate: found.second.clone(),
                    exchange,
                });
            }
        }
        for path in c.noise.keys() {
            if let Some(field) = field(ep, path, s.max_fields_per_endpoint) {
                field.noise += 1;
            }
        }
    }

    fn report(&self) -> Report {
        let s = &self.settings;
        let mut endpoints: Vec<EndpointReport> = self
            .endpoints
            .iter()
            .map(|(name, ep)| {
                let mut fields: Vec<FieldReport> = ep
                    .fields
                    .iter()
                    .map(|(path, f)| {
                        let v = judge(
                            f.raw,
                            f.noise,
                            ep.requests,
                            s.relative_threshold_pct,
                            s.absolute_threshold_pct,
                        );
                        FieldReport {
                            path: path.clone(),
                            kinds: f.kinds.clone(),
                            raw: f.raw,
                            noise: f.noise,
                            raw_pct: v.raw_pct,
                            noise_pct: v.noise_pct,
                            relative_pct: v.relative_pct,
                            absolute_pct: v.absolute_pct,
                            reported: v.reported,
                            samples: f.samples.clone(),
                        }
                    })
                    .collect();
                fields.sort_by(|a, b| {
                    b.reported
                        .cmp(&a.reported)
                        .then(b.raw.cmp(&a.raw))
                        .then_with(|| a.path.cmp(&b.path))
                });
                EndpointReport {
                    name: name.clone(),
                    requests: ep.requests,
                    differing: ep.differing,
                    noisy: ep.noisy,
                    reported_fields: fields.iter().filter(|f| f.reported).count(),
                    fields_overflowed: ep.fields_overflowed,
                    fields,
                    exchanges: ep.exchanges.clone(),
                }
            })
            .collect();
        endpoints.sort_by(|a, b| {
            b.reported_fields
                .cmp(&a.reported_fields)
                .then(b.requests.cmp(&a.requests))
                .then_with(|| a.name.cmp(&b.name))
        });
        Report {
            relative_threshold_pct: s.relative_threshold_pct,
            absolute_threshold_pct: s.absolute_threshold_pct,
            since_reset_secs: self.since.elapsed().as_secs_f64(),
            requests: endpoints.iter().map(|e| e.requests).sum(),
            endpoints,
            sample_bytes: self.sample_bytes,
            samples_dropped: self.samples_dropped,
        }
    }
}

/// The endpoint's field at `path`, made if there is room; counts an
/// overflow if not.
fn field<'e>(ep: &'e mut EndpointState, path: &str, max: usize) -> Option<&'e mut FieldState> {
    if !ep.fields.contains_key(path) {
        if ep.fields.len() >= max {
            ep.fields_overflowed += 1;
            return None;
        }
        ep.fields.insert(path.to_owned(), FieldState::default());
    }
    ep.fields.get_mut(path)
}

fn exchange_sample(s: &DiffSettings, c: &Compared) -> ExchangeSample {
    let r = c.request;
    let (body, body_truncated) = sample_body(r.body, false, s.sample_body_bytes);
    ExchangeSample {
        request: RequestSample {
            method: lossy(r.method, 32),
            path: lossy(r.path, SAMPLE_TARGET),
            headers: sample_headers(r.headers),
            body,
            body_truncated,
        },
        primary: response_sample(s, c.primary),
        secondary: response_sample(s, c.secondary),
        candidate: response_sample(s, c.candidate),
    }
}

fn response_sample(s: &DiffSettings, r: &Response) -> ResponseSample {
    let (body, body_truncated) = sample_body(r.body, r.body_truncated, s.sample_body_bytes);
    ResponseSample {
        status: r.status,
        headers: sample_headers(r.headers),
        body,
        body_truncated,
    }
}

fn sample_body(body: &[u8], truncated: bool, max: usize) -> (String, bool) {
    let cut = body.len() > max;
    (lossy(body, max), truncated || cut)
}

fn sample_headers(headers: &[(&[u8], &[u8])]) -> Vec<(String, String)> {
    headers
        .iter()
        .take(SAMPLE_HEADERS)
        .map(|(name, value)| {
            let redact = REDACTED
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r.as_bytes()));
            let value = if redact {
                "<redacted>".to_owned()
            } else {
                lossy(value, SAMPLE_HEADER_VALUE)
            };
            (lossy(name, SAMPLE_HEADER_VALUE), value)
        })
        .collect()
}

/// At most `max` bytes of `b` as text (invalid UTF-8 replaced).
fn lossy(b: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
    truncate(&mut s, max);
    s
}

fn exchange_cost(e: &ExchangeSample) -> usize {
    let headers =
        |h: &[(String, String)]| -> usize { h.iter().map(|(n, v)| n.len() + v.len() + 16).sum() };
    let response = |r: &ResponseSample| r.body.len() + headers(&r.headers) + SAMPLE_OVERHEAD;
    e.request.method.len()
        + e.request.path.len()
        + e.request.body.len()
        + headers(&e.request.headers)
        + response(&e.primary)
        + response(&e.secondary)
        + response(&e.candidate)
        + SAMPLE_OVERHEAD
}
