//! The proxy's metrics, exported in the Prometheus/OpenMetrics text format
//! through prometheus-client.
//!
//! Labels follow the request: `service` is the logical name (`/svc/world`),
//! `dst` the bound destination's id (`/#/io.l5d.fs/world-v2`, one per
//! version), `override` whether the request carried its own dtab entries.
//! A route's handles ([`RouteStats`]) are looked up once, when a binding is
//! made and cached, so a request only touches atomics: no label hashing, no
//! lock. Histograms are our own lock-free ones for the same reason.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::{
    dashboard::{self, Dashboard, Key, NO_DST, Row, Sample, UNIDENTIFIED},
    exchange::{Observer, Record, Via},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Latency bucket bounds in seconds: 50 µs to 10 s.
const LATENCY_BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A histogram of seconds with fixed buckets, updated with atomics only.
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl prometheus_client::metrics::TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes each bucket's own count and accumulates them.
        let mut count = 0;
        let mut buckets = [(0.0, 0u64); LATENCY_BOUNDS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.0.buckets[i].load(Ordering::Relaxed);
            count += n;
            *slot = (LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), n);
        }
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub service: String,
    pub dst: String,
    /// `"true"` when the request carried its own dtab entries.
    pub r#override: &'static str,
    /// The routing rule that matched the request, or empty.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub service: String,
    pub dst: String,
    pub r#override: &'static str,
    pub rule: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub service: String,
    /// The mirror's target path (`/srv/world-v2`), or `(request)` for the
    /// copies requests asked for themselves.
    pub target: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

/// The `frame` labels of `sidetrack_http2_floods_total` (each present
/// from the start).
pub const HTTP2_FLOOD_FRAMES: [&str; 3] = ["ping", "settings", "empty"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    frame: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

/// Errors the proxy itself answers or sees, as the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    HeadTooLarge,
    UriTooLong,
    HeadTimeout,
    BodyTimeout,
    TunnelIdle,
    Unidentified,
    BadDtab,
    Loop,
    BindFailed,
    BindNeg,
    NoEndpoints,
    ConnectFailed,
    BackendHead,
    /// The backend gave no final response head within the response timeout.
    BackendTimeout,
    BackendDied,
    ClientDied,
    /// An override the policy refused (answered 403, or dropped).
    OverrideRefused,
    /// A connection refused at once: the proxy was at a limit
    /// (`max_connections` with none idle to close).
    Overloaded,
}

impl ErrorKind {
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadTooLarge => "head_too_large",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::HeadTimeout => "head_timeout",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::TunnelIdle => "tunnel_idle",
            ErrorKind::Unidentified => "unidentified",
            ErrorKind::BadDtab => "bad_dtab",
            ErrorKind::Loop => "loop",
            ErrorKind::BindFailed => "bind_failed",
            ErrorKind::BindNeg => "bind_neg",
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::BackendHead => "backend_bad_response",
            ErrorKind::BackendTimeout => "backend_timeout",
            ErrorKind::BackendDied => "backend_died",
            ErrorKind::ClientDied => "client_died",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::OverrideRefused => "override_refused",
        }
    }

    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::BadRequest,
        ErrorKind::HeadTooLarge,
        ErrorKind::UriTooLong,
        ErrorKind::HeadTimeout,
        ErrorKind::BodyTimeout,
        ErrorKind::TunnelIdle,
        ErrorKind::Unidentified,
        ErrorKind::BadDtab,
        ErrorKind::Loop,
        ErrorKind::BindFailed,
        ErrorKind::BindNeg,
        ErrorKind::NoEndpoints,
        ErrorKind::ConnectFailed,
        ErrorKind::BackendHead,
        ErrorKind::BackendTimeout,
        ErrorKind::BackendDied,
        ErrorKind::ClientDied,
        ErrorKind::OverrideRefused,
        ErrorKind::Overloaded,
    ];
}

/// The `rule` label of the route metrics of copies (shadowing).
pub const MIRROR_LABEL: &str = "(mirror)";

/// The counters of one (service, dst, override) route, fetched once.
#[derive(Clone, Debug)]
pub struct RouteStats {
    pub requests: Counter,
    /// Responses by status class: index 0 is 1xx … index 4 is 5xx.
    pub responses: [Counter; 5],
    pub latency: Histogram,
    /// Bytes read from clients (heads and bodies).
    pub bytes_in: Counter,
    /// Bytes written to clients (heads and bodies).
    pub bytes_out: Counter,
    /// The destination's row on the dashboard, when it is on.
    pub dashboard: Option<Arc<Row>>,
}

impl RouteStats {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }
}

/// What became of the copies of one (service, mirror target), fetched
/// once per route.
#[derive(Clone, Debug)]
pub struct MirrorStats {
    /// Copies answered (whatever the status).
    pub answered: Counter,
    /// Copies that failed: no binding, connect, a bad or missing answer.
    pub failed: Counter,
    /// Copies whose answer took longer than `shadow.timeout_ms`.
    pub timed_out: Counter,
    /// Copies dropped because the target's queue was full.
    pub dropped: Counter,
    /// Requests not copied: their body was over `shadow.max_body_bytes`
    /// (or could not be kept whole).
    pub body_too_large: Counter,
    /// Requests not copied: a method that changes state, on a mirror that
    /// copies reads only.
    pub writes_skipped: Counter,
    /// Diff mode: requests whose three answers were compared.
    pub diffed: Counter,
    /// Diff mode: those where the candidate's answer differed from the
    /// live one.
    pub differing: Counter,
    /// Diff mode: requests copied but not compared (the live answer's
    /// body was not kept, or a copy failed).
    pub diff_skipped: Counter,
}

/// Something else to show at scrape time (dtab cache, eBPF counters): a
/// name, help and value per line, counters and gauges.
pub trait ExtraCounters: Send + Sync + 'static {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>);
    /// Values that go down as well as up (sizes, say).
    fn gauges(&self, _out: &mut Vec<(&'static str, &'static str, i64)>) {}
}

/// Every metric the proxy keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    errors: [Counter; ErrorKind::ALL.len()],
    mirrors: Family<MirrorLabels, Counter>,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    /// Idle connections closed to make room for a new one at `max_connections`.
    pub connections_evicted: Counter,
    pub bytes_copied: Counter,
    pub bytes_spliced: Counter,
    /// Intercepted connections that did not speak HTTP and were tunnelled.
    pub opaque_connections: Counter,
    /// HTTP/2: client connections served, streams (requests) taken, and
    /// connections ended with GOAWAY ENHANCE_YOUR_CALM (a rapid-reset
    /// client, or one whose streams kept erring).
    pub http2_connections: Counter,
    pub http2_streams: Counter,
    pub http2_calm: Counter,
    /// HTTP/2 client connections cut off for a flood, by frame kind.
    http2_floods: [Counter; 3],
    extras: Arc<Extras>,
    route_series: AtomicUsize,
    max_route_series: usize,
    dashboard: Option<Dashboard>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Extras(Mutex<Vec<Arc<dyn ExtraCounters>>>);

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Extras")
    }
}

impl Collector for Extras {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut lines, mut gauges) = (Vec::new(), Vec::new());
        for source in self.0.lock().expect("extras lock").iter() {
            source.counters(&mut lines);
            source.gauges(&mut gauges);
        }
        for (name, help, value) in lines {
            let counter = ConstCounter(value);
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            counter.encode(metric)?;
        }
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGaugeValue(value).encode(metric)?;
        }
        Ok(())
    }
}

struct ConstCounter(u64);

impl EncodeMetric for ConstCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

struct ConstGaugeValue(i64);

impl EncodeMetric for ConstGaugeValue {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl Metrics {
    /// `max_route_series` caps the (service, dst, override) label sets: past
    /// it, new routes are counted under `service="overflow"` so that a flood
    /// of made-up Host headers cannot grow memory without bound.
    pub fn new(max_route_series: usize) -> Self {
        let mut registry = Registry::with_prefix("sidetrack");
        let requests = Family::<RouteLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::default();
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        let mut errors: [Counter; ErrorKind::ALL.len()] = Default::default();
        let error_family = Family::<ErrorLabels, Counter>::default();
        let mirrors = Family::<MirrorLabels, Counter>::default();
        let connections_active = Gauge::default();
        let connections_total = Counter::default();
        let connections_evicted = Counter::default();
        let opaque_connections = Counter::default();
        let [http2_connections, http2_streams, http2_calm] = [(); 3].map(|_| Counter::default());
        registry.register(
            "http2_connections",
            "Client connections served as HTTP/2",
            http2_connections.clone(),
        );
        registry.register(
            "http2_streams",
            "HTTP/2 streams (requests) taken from clients",
            http2_streams.clone(),
        );
        registry.register(
            "http2_goaway_calm",
            "HTTP/2 client connections ended with GOAWAY ENHANCE_YOUR_CALM (rapid reset, too many stream errors)",
            http2_calm.clone(),
        );
        let flood_family = Family::<FrameLabels, Counter>::default();
        registry.register(
            "http2_floods",
            "HTTP/2 client connections cut off (GOAWAY ENHANCE_YOUR_CALM) for sending more PING, SETTINGS or empty frames a second than http2.max_*_per_second, by frame",
            flood_family.clone(),
        );
        let http2_floods = HTTP2_FLOOD_FRAMES
            .map(|frame| flood_family.get_or_create_owned(&FrameLabels { frame }));
        let bytes = Family::<ModeLabels, Counter>::default();

        registry.register(
            "requests",
            "Requests routed, by logical name and bound destination",
            requests.clone(),
        );
        registry.register("responses", "Responses by status class", responses.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            latency.clone(),
        );
        registry.register(
            "request_bytes",
            "Bytes read from clients (heads and bodies), by logical name and bound destination",
            bytes_in.clone(),
        );
        registry.register(
            "response_bytes",
            "Bytes written to clients (heads and bodies), by logical name and bound destination",
            bytes_out.clone(),
        );
        registry.register(
            "errors",
            "Errors the proxy answered or saw, by kind",
            error_family.clone(),
        );
        registry.register(
            "mirror_requests",
            "Copies of requests sent to shadow targets, and requests not copied, by outcome",
            mirrors.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            connections_active.clone(),
        );
        registry.register(
            "opaque_connections",
            "Intercepted connections that were not HTTP, tunnelled to their original destination",
            opaque_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle client connections closed to make room for new ones at max_connections",
            connections_evicted.clone(),
        );
        registry.register(
            "body_bytes",
            "Body bytes moved, by copying through userspace or by splice(2)",
            bytes.clone(),
        );
        registry.register(
            "log_lines_suppressed",
            "Per-request log lines held back by the rate limit",
            LogLinesSuppressed,
        );
        let extras = Arc::new(Extras::default());
        registry.register_collector(Box::new(extras.clone()));

        // Every error kind is present from the start (at zero) and its
        // counter is fetched once.
        for (slot, kind) in errors.iter_mut().zip(ErrorKind::ALL) {
            *slot = error_family.get_or_create_owned(&ErrorLabels { kind: kind.label() });
        }
        let bytes_copied = bytes.get_or_create_owned(&ModeLabels { mode: "copied" });
        let bytes_spliced = bytes.get_or_create_owned(&ModeLabels { mode: "spliced" });
        Metrics {
            registry,
            requests,
            responses,
            latency,
            bytes_in,
            bytes_out,
            errors,
            mirrors,
            connections_active,
            connections_total,
            connections_evicted,
            bytes_copied,
            bytes_spliced,
            opaque_connections,
            http2_connections,
            http2_streams,
            http2_calm,
            http2_floods,
            extras,
            route_series: AtomicUsize::new(0),
            max_route_series,
            dashboard: None,
        }
    }

    /// Keeps the dashboard's rows too: every route's destination gets its
    /// row when its handles are made, and [`Observer::exchange`] counts
    /// into it.
    pub fn with_dashboard(mut self, dashboard: Dashboard) -> Self {
        self.dashboard = Some(dashboard);
        self
    }

    pub fn dashboard(&self) -> Option<&Dashboard> {
        self.dashboard.as_ref()
    }

    /// Adds counters read at scrape time.
    pub fn add_extra(&self, source: Arc<dyn ExtraCounters>) {
        self.extras.0.lock().expect("extras lock").push(source);
    }

    /// Counts a client cut off for a flood of `frame`s (one of
    /// [`HTTP2_FLOOD_FRAMES`]).
    pub fn http2_flood(&self, frame: &str) {
        if let Some(i) = HTTP2_FLOOD_FRAMES.iter().position(|f| *f == frame) {
            self.http2_floods[i].inc();
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].get()
    }

    /// The handles of one route; called when a binding is cached.
    /// The counters of one destination of a route: `rule` is the routing
    /// rule that picked it, or empty.
    pub fn route_stats(
        &self,
        service: &str,
        dst: &str,
        overridden: bool,
        rule: &str,
    ) -> RouteStats {
        let r#override = if overridden { "true" } else { "false" };
        let mut labels = RouteLabels {
            service: service.to_owned(),
            dst: dst.to_owned(),
            r#override,
            rule: rule.to_owned(),
        };
        if self.requests.get(&labels).is_none()
            && self.route_series.fetch_add(1, Ordering::Relaxed) >= self.max_route_series
        {
            labels.service = "overflow".into();
            labels.dst = "overflow".into();
        }
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        RouteStats {
            requests: self.requests.get_or_create_owned(&labels),
            responses: classes.map(|class| {
                self.responses.get_or_create_owned(&ResponseLabels {
                    service: labels.service.clone(),
                    dst: labels.dst.clone(),
                    r#override,
                    rule: labels.rule.clone(),
                    class,
                })
            }),
            latency: self.latency.get_or_create_owned(&labels),
            bytes_in: self.bytes_in.get_or_create_owned(&labels),
            bytes_out: self.bytes_out.get_or_create_owned(&labels),
            // The dashboard has a cap of its own, and is keyed by the
            // labels as they were asked for.
            dashboard: self.dashboard.as_ref().map(|d| {
                let via = dashboard::via_of(overridden, rule);
                let key = Key {
                    name: service.to_owned(),
                    dst: dst.to_owned(),
                    via,
                    rule: if via == Via::Rule { rule } else { "" }.to_owned(),
                };
                d.row(&key, Instant::now())
            }),
        }
    }

    /// The counters of one mirror target of a service; called when a
    /// route is bound. Targets come from the settings, so the label sets
    /// are bounded by them (copies a request asked for itself count under
    /// one target label, `(request)`).
    pub fn mirror_stats(&self, service: &str, target: &str) -> MirrorStats {
        let get = |outcome| {
            self.mirrors.get_or_create_owned(&MirrorLabels {
                service: service.to_owned(),
                target: target.to_owned(),
                outcome,
            })
        };
        MirrorStats {
            answered: get("answered"),
            failed: get("failed"),
            timed_out: get("timeout"),
            dropped: get("dropped"),
            body_too_large: get("body_too_large"),
            writes_skipped: get("write_skipped"),
            diffed: get("diffed"),
            differing: get("differing"),
            diff_skipped: get("diff_skipped"),
        }
    }

    /// The whole text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_is_listed_in_its_own_place() {
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?} is listed out of place");
        }
    }

    struct Fixed;
    impl ExtraCounters for Fixed {
        fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
            out.push(("sidetrack_dtab_cache_hits", "hits", 42));
        }
    }

    #[test]
    fn a_route_shows_up_with_its_labels() {
        let m = Metrics::new(10);
        m.add_extra(Arc::new(Fixed));
        let r = m.route_stats("/svc/world", "/$/inet/127.0.0.1/8080", true, "beta");
        r.requests.inc();
        r.response(503);
        r.latency.observe(std::time::Duration::from_micros(300));
        m.error(ErrorKind::NoEndpoints);
        let text = m.encode();
        assert!(
            text.contains(r#"sidetrack_requests_total{service="/svc/world",dst="/$/inet/127.0.0.1/8080",override="true",rule="beta"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"class="5xx"} 1"#), "{text}");
        assert!(
            text.contains(r#"sidetrack_errors_total{kind="no_endpoints"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidetrack_errors_total{kind="loop"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("sidetrack_request_duration_seconds_count{"),
            "{text}"
        );
        // 300 µs falls in the 500 µs bucket (cumulative buckets, `le` first).
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "sidetrack_request_duration_seconds_bucket{{le=\"{le}\""
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("0.00025").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.0005").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("+Inf").as_deref(), Some("1"), "{text}");
        assert!(
            text.contains("sidetrack_dtab_cache_hits_total 42"),
            "{text}"
        );
    }

    fn record<'a>(stats: Option<&'a RouteStats>, status: u16) -> Record<'a> {
        Record {
            started: std::time::Instant::now(),
            started_wall: std::time::SystemTime::now(),
            total: std::time::Duration::from_millis(3),
            spans: Default::default(),
            peer: "127.0.0.1:1".parse().unwrap(),
            method: "GET",
            authority: "world",
            target: "/",
            status,
            error: stats.is_none().then_some(ErrorKind::Unidentified),
            bytes_in: 40,
            bytes_out: 300,
            name: "",
            dst: "",
            via: Via::Base,
            rule: "",
            overridden: false,
            stats,
            request_id: "",
            mirrored: false,
            retried: false,
            traceparent: "",
            bodies: None,
        }
    }

    #[test]
    fn exchanges_count_bytes_and_go_on_the_dashboard() {
        let m = Metrics::new(10).with_dashboard(Dashboard::new(
            crate::config::Dashboard::default(),
            std::time::Instant::now(),
        ));
        let stats = m.route_stats("/svc/world", "/#/io.l5d.fs/world-v2", true, "");
        m.exchange(&record(Some(&stats), 200));
        m.exchange(&record(Some(&stats), 503));
        m.exchange(&record(None, 400));
        let text = m.encode();
        assert!(
            text.contains(r#"sidetrack_request_bytes_total{service="/svc/world",dst="/#/io.l5d.fs/world-v2",override="true",rule=""} 80"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sidetrack_response_bytes_total{service="/svc/world",dst="/#/io.l5d.fs/world-v2",override="true",rule=""} 600"#),
            "{text}"
        );
        let snap = m
            .dashboard()
            .unwrap()
            .snapshot(std::time::Instant::now() + std::time::Duration::from_secs(1));
        let names: Vec<_> = snap.names.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["(unidentified)", "/svc/world"]);
        let unidentified = &snap.names[0].rows[0];
        assert_eq!(
            (unidentified.dst.as_str(), unidentified.via.as_str()),
            ("(none)", "base")
        );
        assert_eq!(unidentified.windows.m1.errors_proxy, 1);
        let world = &snap.names[1].rows[0];
        assert_eq!(world.via, "override");
        let w = &world.windows.m1;
        assert_eq!(
            (w.requests, w.errors_5xx, w.bytes_in, w.bytes_out),
            (2, 1, 80, 600)
        );
        assert_eq!(w.success_rate, Some(0.5));
    }

    #[test]
    fn route_series_are_capped() {
        let m = Metrics::new(2);
        for i in 0..5 {
            m.route_stats(&format!("/svc/h{i}"), "/d", false, "")
                .requests
                .inc();
        }
        let text = m.encode();
        assert!(text.contains(r#"service="overflow""#), "{text}");
        assert!(!text.contains("/svc/h4"), "{text}");
    }
}

/// Every exchange, once it ends: its bytes on its route's counters, and
/// its row on the dashboard. A routed exchange's row is its
/// destination's (atomics only); one that never reached a destination is
/// counted by name under [`NO_DST`] (or [`UNIDENTIFIED`] without a name).
impl Observer for Metrics {
    /// Counts, latency and bytes only.
    fn wants_request(&self) -> bool {
        false
    }

    fn exchange(&self, r: &Record<'_>) {
        let now = r.started + r.total;
        let sample = Sample {
            latency: r.total,
            status: r.status,
            proxy_error: r.error.is_some(),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
        };
        if let Some(stats) = r.stats {
            stats.bytes_in.inc_by(r.bytes_in);
            stats.bytes_out.inc_by(r.bytes_out);
            if let Some(row) = &stats.dashboard {
                row.record(now, &sample);
            }
        } else if let Some(d) = &self.dashboard {
            let name = match r.name {
                "" => UNIDENTIFIED,
                name => name,
            };
            let key = Key {
                name: name.to_owned(),
                dst: NO_DST.to_owned(),
                via: r.via,
                rule: if r.via == Via::Rule { r.rule } else { "" }.to_owned(),
            };
            d.record_keyed(&key, now, &sample);
        }
    }
}

/// The log limiter's count, read when scraped.
#[derive(Debug)]
struct LogLinesSuppressed;

impl EncodeMetric for LogLinesSuppressed {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&super::log_limit::suppressed(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}
