//! Settings: every `sidetrack run` flag, every limit, and the YAML file that
//! can hold them all.
//!
//! Precedence: built-in defaults, then the file (`--config`), then flags.
//! The file is watched; when it changes, the parts that can change without
//! a restart (the dtab, the dtab file, namer settings) are applied, and a
//! file that no longer parses is refused with a log line while the old
//! settings stay.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// How a request becomes a logical name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum IdentifierKind {
    /// `/svc/<Host>`: the Host header as one element (Linkerd's `io.l5d.header.token`).
    #[default]
    #[serde(rename = "io.l5d.header.token")]
    #[value(name = "io.l5d.header.token")]
    HeaderToken,
    /// `/svc/1.1/<METHOD>/<host>` (Linkerd's `io.l5d.methodAndHost`).
    #[serde(rename = "io.l5d.methodAndHost")]
    #[value(name = "io.l5d.methodAndHost")]
    MethodAndHost,
    /// `/svc/<namespace>/<port>/<service>` from the names pods write
    /// (`world`, `world.default`, `world.default.svc`,
    /// `world.default.svc.cluster.local`, each with or without a port):
    /// the shape of `/#/io.l5d.k8s/<namespace>/<port>/<service>`, so that
    /// `/svc => /#/io.l5d.k8s` routes them. Other hosts are named as
    /// `io.l5d.header.token` names them.
    #[serde(rename = "k8s")]
    #[value(name = "k8s")]
    K8s,
}

/// How traffic reaches the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// Clients address the proxy directly (an explicit proxy, like Linkerd's http_proxy use).
    #[default]
    None,
    /// eBPF steering: cgroup/connect4 (and connect6, for dual-stack sockets
    /// connecting to v4-mapped addresses) rewrites connects to the proxy,
    /// sockops and sk_msg let same-node hops skip the TCP/IP stack.
    Ebpf,
    /// nftables DNAT to the proxy and SO_ORIGINAL_DST, for nodes without
    /// eBPF and for comparison.
    Iptables,
}

/// Everything `sidetrack run` needs. Durations are in milliseconds in the file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The base dtab, inline.
    pub dtab: String,
    /// The base dtab, from a file (watched); appended after `dtab`.
    pub dtab_file: Option<PathBuf>,
    /// The file namer's directory; `/#/io.l5d.fs/<name>` reads `<fs_dir>/<name>`.
    pub fs_dir: Option<PathBuf>,
    /// How often watched files are checked for changes.
    pub watch_interval_ms: u64,
    pub workers: usize,
    /// Pin worker i to the i-th CPU the process may run on (wrapping
    /// around), like nginx's `worker_cpu_affinity auto`: the kernel then
    /// never moves a worker, whose caches stay warm. Off: the kernel places
    /// them. Read at start.
    pub pin_workers: bool,
    /// Before a worker sleeps waiting for events, it yields the CPU once,
    /// so that the client or backend it just wrote to runs first when they
    /// share its CPU: the answer is then waiting and the worker does not
    /// sleep. Costs a system call a wait when they do not. The yield
    /// reaches only tasks in the worker's own CPU cgroup. A yield that
    /// comes back late (a CPU-bound task ran) makes the worker skip the
    /// yield for a growing number of waits. Read at start.
    pub yield_before_wait: bool,
    pub intercept: InterceptMode,
    pub identifier: IdentifierKind,
    /// The prefix of logical names (`/svc`).
    pub dst_prefix: String,
    pub limits: Limits,
    pub pool: Pool,
    /// Routes cached per (dtab headers, logical name), at most.
    pub bind_cache_capacity: usize,
    /// What the cached routes may hold in all (keys, local dtabs, bound
    /// names), in bytes: clients choose their dtab headers, so the cache
    /// is bounded by what it holds as well as by count.
    pub route_cache_max_bytes: usize,
    /// A request whose dtab headers and name take more bytes than this is
    /// routed without the cache (looked up, bound and forgotten).
    pub route_cache_max_key_bytes: usize,
    /// Label sets kept for per-route metrics before new ones are pooled as "overflow".
    pub max_route_series: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
    /// While draining (a stop, or a successor's takeover), how long an
    /// idle keep-alive connection stays open for a request already on its
    /// way: it is served with `Connection: close` rather than met by a
    /// closed socket. Responses during the drain all say close.
    pub shutdown_idle_ms: u64,
    /// What transparent interception (`intercept: ebpf|iptables`) takes.
    pub interception: Interception,
    /// Who may send overrides (`l5d-dtab`, `l5d-ctx-dtab`) and what they
    /// may say (see `policy::overrides`); reloaded live.
    pub overrides: crate::policy::overrides::OverrideSettings,
    /// How weighted unions (`0.1 * /srv/v23 & 0.9 * /srv/v22`) choose.
    pub rollouts: Rollouts,
    /// Routing rules, tried in order per request: the first that matches
    /// adds its dtab (see `policy::rules`); reloaded live.
    pub rules: Vec<crate::policy::rules::RuleSettings>,
    /// Restarts without a gap (see `handover`).
    pub handover: Handover,
    /// How copies of requests are made and carried (see `policy::mirror`).
    pub shadow: crate::policy::mirror::ShadowSettings,
    /// Which requests are copied to which other versions, and which are
    /// compared (see `policy::mirror`); reloaded live.
    pub mirrors: Vec<crate::policy::mirror::MirrorSettings>,
    /// How diff mode compares answers and judges noise (see `diff`);
    /// reloaded live.
    pub diff: crate::diff::DiffSettings,
    /// Kubernetes service discovery and names.
    pub k8s: K8s,
    /// The per-version dashboard (`/dashboard`, see `observe::dashboard`).
    pub dashboard: Dashboard,
    /// One line per exchange, off by default (see `observe::access_log`).
    pub access_log: AccessLogSettings,
    /// Trace context: starting a `traceparent`, and the proxy's timing
    /// told to backends (see `observe::trace`).
    pub trace: TraceSettings,
    /// Requests and their answers recorded to an on-disk ring, for
    /// `sidetrack replay` (see `observe::capture`). Read at start.
    pub capture: Capture,
    /// HTTP/2 in (cleartext, prior knowledge) and out (see `proxy::h2`,
    /// docs/http2.md). Read at start.
    pub http2: Http2,
}

/// HTTP/2: the limits a client connection gets, and which requests go out
/// to backends as HTTP/2 (docs/http2.md). Read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Http2 {
    /// Connections that start with the HTTP/2 preface are served as
    /// HTTP/2; off, they are refused as bad HTTP/1 (or tunnelled, when
    /// intercepted).
    pub enabled: bool,
    /// Streams a client may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// The largest header list a client may send, decoded
    /// (SETTINGS_MAX_HEADER_LIST_SIZE); a larger one resets its stream.
    pub max_header_list_size: u32,
    /// The HPACK table the client's encoder may use (SETTINGS_HEADER_TABLE_SIZE).
    pub header_table_size: u32,
    /// Flow-control windows the proxy gives its peers, per stream and per
    /// connection: what a peer may send before the other side reads.
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    /// The largest frame the proxy takes (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame_size: u32,
    /// What a stream may queue to send before its writer waits.
    pub max_send_buf_bytes: usize,
    /// Streams a client may open and reset before the proxy accepted them
    /// (the rapid-reset attack, CVE-2023-44487); past it, GOAWAY
    /// ENHANCE_YOUR_CALM.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the proxy may reset for a client's protocol errors before
    /// it ends the connection with GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_reset_streams: usize,
    /// Frames a client may send a second, of each kind that asks the
    /// proxy for work and carries no request: PING (without ACK), SETTINGS
    /// (without ACK), and empty frames (DATA without END_STREAM, HEADERS
    /// or CONTINUATION without END_HEADERS). Past one, GOAWAY
    /// ENHANCE_YOUR_CALM; 0 sets no limit.
    pub max_pings_per_second: u32,
    pub max_settings_per_second: u32,
    pub max_empty_frames_per_second: u32,
    /// HTTP/2 connections a worker keeps per backend address; streams are
    /// spread over them.
    pub connections_per_endpoint: usize,
    /// Logical names (prefixes, path-segment-wise: `/svc/world` holds
    /// `/svc/world` and `/svc/world/x`) whose requests go out as HTTP/2
    /// whatever their content type. gRPC requests (`content-type:
    /// application/grpc...`) always do; the others go out as HTTP/1.1.
    pub h2_names: Vec<String>,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            enabled: true,
            max_concurrent_streams: 100,
            max_header_list_size: 16 << 10,
            header_table_size: 4096,
            initial_stream_window_bytes: 256 << 10,
            initial_connection_window_bytes: 1 << 20,
            max_frame_size: 16 << 10,
            max_send_buf_bytes: 256 << 10,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_pings_per_second: 100,
            max_settings_per_second: 50,
            max_empty_frames_per_second: 100,
            connections_per_endpoint: 2,
            h2_names: Vec::new(),
        }
    }
}

impl Http2 {
    /// Values HTTP/2 itself refuses (RFC 9113 §6.5.2), or that serve nobody.
    pub fn validate(&self) -> Result<(), String> {
        let window = 1u32 << 31;
        if self.max_concurrent_streams == 0 {
            return Err("http2.max_concurrent_streams: 0 would serve no request".into());
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err(format!(
                "http2.max_frame_size: {} is outside 16384..=16777215 (RFC 9113 §6.5.2)",
                self.max_frame_size
            ));
        }
        for (name, v) in [
            (
                "initial_stream_window_bytes",
                self.initial_stream_window_bytes,
            ),
            (
                "initial_connection_window_bytes",
                self.initial_connection_window_bytes,
            ),
        ] {
            if v == 0 || v >= window {
                return Err(format!("http2.{name}: {v} is outside 1..2^31"));
            }
        }
        if self.connections_per_endpoint == 0 {
            return Err("http2.connections_per_endpoint: 0 could reach no backend".into());
        }
        if let Some(bad) = self.h2_names.iter().find(|n| !n.starts_with('/')) {
            return Err(format!("http2.h2_names: {bad:?} is not a path (/svc/...)"));
        }
        Ok(())
    }
}

/// Which routed requests capture records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureOnly {
    /// Every request to a chosen name.
    #[default]
    Any,
    /// Only those a routing rule chose the destination of.
    Rule,
    /// Only those that carried their own dtab (`l5d-dtab`, `l5d-ctx-dtab`).
    Override,
}

/// Capture: requests to chosen logical names and their answers, as JSON
/// lines of HAR entries in segment files under `dir`, bounded by size and
/// age (`observe::capture`; docs/observability.md). Read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Capture {
    pub enabled: bool,
    /// Where the segment files go (created if missing); required when
    /// enabled.
    pub dir: Option<PathBuf>,
    /// Logical-name prefixes to capture (`/svc/world` takes `/svc/world`
    /// and `/svc/world/...`, not `/svc/worldly`); empty: every name.
    pub names: Vec<String>,
    /// Every request to those names, or only those a rule routed, or only
    /// those that carried an override.
    pub only: CaptureOnly,
    /// Request and response bodies are kept up to this many bytes each; a
    /// longer body is recorded by its size alone.
    pub max_body_bytes: usize,
    /// What all segments together may take on disk: the oldest go first.
    pub max_bytes: u64,
    /// Segments whose last entry is older than this are deleted.
    pub max_age_secs: u64,
    /// A new segment is started when the current one would grow past this.
    pub segment_bytes: u64,
    /// Exchanges waiting for the writer thread, at most; past it they are
    /// dropped and counted (capture never makes a request wait).
    pub buffer: usize,
    /// Request and response headers whose values are replaced by
    /// `<redacted>`, besides `Authorization`, `Proxy-Authorization`,
    /// `Cookie` and `Set-Cookie`, which always are.
    pub redact: Vec<String>,
}

impl Default for Capture {
    fn default() -> Capture {
        Capture {
            enabled: false,
            dir: None,
            names: Vec::new(),
            only: CaptureOnly::Any,
            max_body_bytes: 64 << 10,
            max_bytes: 256 << 20,
            max_age_secs: 3_600,
            segment_bytes: 16 << 20,
            buffer: 1_024,
            redact: Vec::new(),
        }
    }
}

/// The largest `capture.max_body_bytes`: each waiting exchange may hold
/// two bodies this big, `capture.buffer` of them.
pub const MAX_CAPTURE_BODY: usize = 16 << 20;
/// The smallest `capture.segment_bytes`.
pub const MIN_CAPTURE_SEGMENT: u64 = 4 << 10;

impl Capture {
    fn validate(&self) -> Result<(), String> {
        if self.enabled && self.dir.is_none() {
            return Err("capture.dir: required when capture is enabled".into());
        }
        if let Some(name) = self.names.iter().find(|n| !n.starts_with('/')) {
            return Err(format!(
                "capture.names: {name:?} is not a path (like /svc/world)"
            ));
        }
        if self.max_body_bytes > MAX_CAPTURE_BODY {
            return Err(format!(
                "capture.max_body_bytes: {} is more than {MAX_CAPTURE_BODY}",
                self.max_body_bytes
            ));
        }
        if self.segment_bytes < MIN_CAPTURE_SEGMENT {
            return Err(format!(
                "capture.segment_bytes: {} is less than {MIN_CAPTURE_SEGMENT}",
                self.segment_bytes
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(format!(
                "capture.max_bytes: {} is less than one segment ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.max_age_secs == 0 || self.max_age_secs > MAX_MS / 1000 {
            return Err(format!(
                "capture.max_age_secs: {} is not between 1 and a year",
                self.max_age_secs
            ));
        }
        if self.buffer == 0 || self.buffer > 1 << 20 {
            return Err(format!(
                "capture.buffer: {} is not between 1 and {}",
                self.buffer,
                1 << 20
            ));
        }
        Ok(())
    }
}

/// The per-version dashboard: per logical name, destination and how the
/// destination was chosen, the last 15 minutes in fixed time buckets.
/// Read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Dashboard {
    /// Keep the dashboard's rows (`/dashboard`, `/dashboard.json`). Off,
    /// the pages answer 404 and requests record nothing there.
    pub enabled: bool,
    /// Rows kept apart, at most (one per name, destination and way it was
    /// chosen); traffic of any further one is counted in one `(other)`
    /// row. Each row takes about 35 KiB (10 s buckets), so the default
    /// bounds the dashboard to about 9 MiB.
    pub max_rows: usize,
    /// The width of a time bucket, in seconds: a divisor of 60. The
    /// windows (1, 5, 15 minutes) are read in whole buckets.
    pub bucket_secs: u64,
    /// A version is compared with its siblings (flagged when much worse)
    /// only once it, and its siblings together, served this many
    /// requests in the window.
    pub flag_min_requests: u64,
}

impl Default for Dashboard {
    fn default() -> Dashboard {
        Dashboard {
            enabled: true,
            max_rows: 256,
            bucket_secs: 10,
            flag_min_requests: 20,
        }
    }
}

/// The access log's format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// The common log format, then the proxy's fields as `key=value`.
    Common,
}

/// `access_log:` in the settings; read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// `-` for stdout, else a file (appended to, reopened on SIGHUP).
    pub path: String,
    /// Keep the query string in the logged path (it may hold secrets).
    pub include_query: bool,
    /// How many bytes of lines may wait for the writer; past it lines are
    /// dropped and counted.
    pub buffer_bytes: usize,
    /// How often the writer writes what has gathered (sooner when the
    /// buffer is half full): lines reach the file this late at most.
    pub flush_interval_ms: u64,
}

impl Default for AccessLogSettings {
    fn default() -> AccessLogSettings {
        AccessLogSettings {
            enabled: false,
            format: AccessLogFormat::Json,
            path: "-".into(),
            include_query: false,
            buffer_bytes: 1 << 20,
            flush_interval_ms: 100,
        }
    }
}

/// The most rows `dashboard.max_rows` may ask for: a setting, not a
/// client, bounds the dashboard's memory, and this bounds the setting.
pub const MAX_DASHBOARD_ROWS: usize = 10_000;

impl Dashboard {
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket_secs == 0 || 60 % self.bucket_secs != 0 {
            return Err(format!(
                "dashboard.bucket_secs: {} does not divide a minute",
                self.bucket_secs
            ));
        }
        if self.max_rows == 0 || self.max_rows > MAX_DASHBOARD_ROWS {
            return Err(format!(
                "dashboard.max_rows: {} is not between 1 and {MAX_DASHBOARD_ROWS}",
                self.max_rows
            ));
        }
        if self.flag_min_requests == 0 {
            return Err("dashboard.flag_min_requests: 0 would judge versions on nothing".into());
        }
        Ok(())
    }
}

impl AccessLogSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.path.is_empty() {
            return Err("access_log.path: empty (use - for stdout)".into());
        }
        if self.buffer_bytes < 4096 {
            return Err(format!(
                "access_log.buffer_bytes: {} is less than one line may take (4096)",
                self.buffer_bytes
            ));
        }
        Ok(())
    }
}

/// Trace context (see `observe::trace`).
/// When the backend is told the proxy's timing.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Never.
    Off,
    /// When the request carries `l5d-timing` (any value; it is replaced).
    #[default]
    OnRequest,
    /// On every request.
    Always,
}

/// `trace:` in the settings; read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSettings {
    /// Start a trace (a new `traceparent`, sampled) for a request that
    /// comes without one, so that the services behind can join it.
    pub start: bool,
    /// When the backend gets `l5d-timing`.
    pub timing: Timing,
}

impl Default for TraceSettings {
    fn default() -> TraceSettings {
        TraceSettings {
            start: false,
            timing: Timing::OnRequest,
        }
    }
}

/// Kubernetes: the `io.l5d.k8s` namer and the `k8s` identifier. Read at
/// start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct K8s {
    /// Run the `io.l5d.k8s` namer: watch the API server's EndpointSlices
    /// and Services.
    pub enabled: bool,
    /// The API server's URL; default: the pod's service account
    /// (in-cluster), else the kubeconfig.
    pub api_server: Option<String>,
    /// How long a request waits for the namer's first sync of what it
    /// names; then 503 with `l5d-err`.
    pub sync_timeout_ms: u64,
    /// The namespace of a short name (`Host: world`) when the calling
    /// pod's is not known.
    pub namespace: String,
    /// The cluster's DNS domain (`world.default.svc.<domain>`).
    pub cluster_domain: String,
    /// This node's name: the namer watches the pods on it, so that a short
    /// name is in the calling pod's namespace. Default: `NODE_NAME` from
    /// the environment (the DaemonSet sets it from the downward API); with
    /// neither, short names are in `namespace`.
    pub node_name: Option<String>,
}

impl Default for K8s {
    fn default() -> K8s {
        K8s {
            enabled: false,
            api_server: None,
            sync_timeout_ms: 3_000,
            namespace: "default".into(),
            cluster_domain: "cluster.local".into(),
            node_name: None,
        }
    }
}

/// Weighted rollouts. Read at start.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Rollouts {
    /// A request header (a customer id, say) whose value picks the branch
    /// of a weighted union: the same value takes the same branch while the
    /// weights stay, and when a branch's weight grows the values it had
    /// keep it. A request without the header is chosen at random.
    pub sticky_header: Option<String>,
}

/// How a new proxy takes over from a running one. Read at start.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Handover {
    /// Take over from a proxy running on the same listen address, and let
    /// a successor take over from this one.
    pub enabled: bool,
    /// The Unix socket the running proxy offers its listeners and eBPF
    /// data path on; default `/run/sidetrack/handover-<ip>-<port>.sock`
    /// (none when listening on port 0).
    pub socket: Option<PathBuf>,
    /// How long either side waits for the other's next message.
    pub timeout_ms: u64,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            enabled: true,
            socket: None,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Interception {
    /// Destinations whose connects go to the proxy (service CIDRs), like
    /// `10.96.0.0/12`.
    pub cidrs: Vec<String>,
    /// Ports to intercept; empty means every port not excluded.
    pub ports: Vec<u16>,
    /// Ports never intercepted: connects to them go straight to their
    /// destination (the kernel's path, no proxy).
    pub exclude_ports: Vec<u16>,
    /// Ports intercepted but never parsed: a connection to one is
    /// tunnelled to its original destination at once (MySQL, SMTP, brokers:
    /// server-first protocols, and anything that is not HTTP/1).
    pub opaque_ports: Vec<u16>,
    /// An intercepted connection whose client has sent nothing this long
    /// after it was accepted is tunnelled to its original destination: a
    /// server-first protocol on a port not listed as opaque. 0: wait for a
    /// request head as on any connection.
    pub detect_timeout_ms: u64,
    /// eBPF mode: connects made in the proxy's own network namespace (the
    /// node's: host-network pods, node processes in the attach cgroup) are
    /// not intercepted, as the kubelet's and the node's own traffic is not
    /// (it is outside the pods' cgroup).
    pub skip_host_network: bool,
    /// The cgroup v2 directory the eBPF programs attach to; default: the
    /// kubelet's pods cgroup when found, else the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// SO_MARK on the proxy's own sockets, which interception leaves alone.
    pub mark: u32,
    /// eBPF mode: how much sk_msg may put on a receiver's queue that it has
    /// not read, at least (the receiver's receive buffer, if larger, is the
    /// bound instead). A redirect never blocks its sender; past the bound
    /// messages go the normal TCP way, whose window holds the sender back,
    /// until the receiver has caught up. The default, 4 MiB, is Linux's
    /// default largest TCP send buffer (tcp_wmem), the buffer a redirect
    /// bypasses: a bulk sender keeps the shortcut as far as TCP would let
    /// it run ahead. 0 removes the bound.
    pub redirect_queue_min_bytes: u32,
}

impl Default for Interception {
    fn default() -> Self {
        Interception {
            cidrs: vec!["10.96.0.0/12".into()],
            ports: Vec::new(),
            exclude_ports: Vec::new(),
            opaque_ports: Vec::new(),
            detect_timeout_ms: 300,
            skip_host_network: true,
            cgroup: None,
            mark: 0x5354,
            redirect_queue_min_bytes: 4 << 20,
        }
    }
}

/// The handover socket's path when the settings name none: one per listen
/// address, under /run/sidetrack. `None` for port 0 (a proxy whose port is
/// picked anew each start has nothing to take over).
pub fn default_handover_socket(listen: SocketAddr) -> Option<PathBuf> {
    (listen.port() != 0).then(|| {
        let ip = listen.ip().to_string().replace([':', '.'], "_");
        PathBuf::from(format!(
            "/run/sidetrack/handover-{ip}-{}.sock",
            listen.port()
        ))
    })
}

/// Parses `a.b.c.d/len` (a bare address is a /32).
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: std::net::Ipv4Addr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?;
    let len: u8 = len
        .trim()
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?} has a bad prefix length"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((std::net::Ipv4Addr::from(u32::from(ip) & mask), len))
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request or response head; beyond it, 431.
    pub max_head_bytes: usize,
    /// Longest request line; beyond it, 414.
    pub max_request_line_bytes: usize,
    pub max_headers: usize,
    /// Time to receive a whole request head once it has started; then 408.
    pub head_timeout_ms: u64,
    /// Time a keep-alive client connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Time a new connection may take to send its first byte: one that
    /// says nothing holds a connection slot for this long, not the idle
    /// timeout.
    pub first_byte_timeout_ms: u64,
    /// Time from sending a request to its final response head, however
    /// many interim (1xx) responses come meanwhile (then 504).
    pub response_timeout_ms: u64,
    /// Interim (1xx) responses relayed for one request; one more is a
    /// backend out of bounds (502).
    pub max_interim_responses: usize,
    /// Longest a request or response body may go without a byte moving;
    /// then a request body gets 408 (before any response) and a response
    /// body's client connection is closed.
    pub body_timeout_ms: u64,
    /// Bytes a second a request body must average once it has taken longer
    /// than `body_timeout_ms` (the grace): one that trickles a byte now and
    /// then gets 408 when it falls behind. 0: no minimum.
    pub body_min_bytes_per_sec: u64,
    /// After an error response that closes the connection, how long the
    /// proxy goes on reading (and dropping) what the client still sends,
    /// so that closing does not reset the connection under the response
    /// (RFC 9112 §9.6).
    pub linger_ms: u64,
    /// A byte tunnel (after a 101 or a 2xx to CONNECT, or an intercepted
    /// connection that is not HTTP) in which nothing moves either way for
    /// this long is closed; 0: never.
    pub tunnel_idle_timeout_ms: u64,
    /// Requests that have passed through more proxies than this (Via) are refused (508).
    pub max_via_hops: usize,
    /// Dtab entries a request may carry in `l5d-ctx-dtab` and `l5d-dtab`
    /// together; more get 400 (binding costs time in the number of local
    /// entries, and each request with a new dtab is bound afresh).
    pub max_dtab_entries: usize,
    /// Client connections served at once (shared out among the workers).
    /// At the limit a new connection closes the one idle longest (between
    /// requests, or silent since it connected), and with none idle it is
    /// answered 503 and closed at once.
    pub max_connections: usize,
    /// What the buffers of client connections may take in all, with the
    /// route cache's `route_cache_max_bytes` held aside: from 90% of it new
    /// connections are refused (503), and at it a request whose buffers
    /// would have to grow is refused (503) or, mid-response, cut. Set it
    /// below the container's memory limit.
    pub memory_budget_bytes: usize,
    /// Bodies of known length at least this big move with splice(2).
    pub splice_threshold_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Pool {
    /// Idle connections kept per backend address, per worker.
    #[serde(alias = "max_idle_per_endpoint")]
    pub max_idle_per_backend: usize,
    /// Idle connections kept in all, per worker, over every backend (an
    /// override can name any address); at the bound the one idle longest
    /// is closed.
    pub max_idle_total: usize,
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How long an endpoint that refused a connect is kept out of rotation.
    pub eject_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 4140)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9990)),
            dtab: String::new(),
            dtab_file: None,
            fs_dir: None,
            watch_interval_ms: 500,
            workers: 1,
            pin_workers: false,
            yield_before_wait: true,
            intercept: InterceptMode::None,
            identifier: IdentifierKind::HeaderToken,
            dst_prefix: "/svc".into(),
            limits: Limits::default(),
            pool: Pool::default(),
            bind_cache_capacity: 10_000,
            route_cache_max_bytes: 4 << 20,
            route_cache_max_key_bytes: 4 << 10,
            max_route_series: 10_000,
            shutdown_grace_ms: 10_000,
            shutdown_idle_ms: 500,
            interception: Interception::default(),
            overrides: Default::default(),
            rollouts: Rollouts::default(),
            rules: Vec::new(),
            shadow: Default::default(),
            mirrors: Vec::new(),
            diff: Default::default(),
            k8s: K8s::default(),
            handover: Handover::default(),
            dashboard: Dashboard::default(),
            access_log: Default::default(),
            trace: Default::default(),
            capture: Capture::default(),
            http2: Http2::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_headers: 100,
            head_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            first_byte_timeout_ms: 5_000,
            response_timeout_ms: 30_000,
            max_interim_responses: 16,
            body_timeout_ms: 60_000,
            body_min_bytes_per_sec: 1024,
            linger_ms: 2_000,
            tunnel_idle_timeout_ms: 3_600_000,
            max_via_hops: 10,
            max_dtab_entries: 100,
            max_connections: 10_000,
            memory_budget_bytes: 512 << 20,
            splice_threshold_bytes: 64 * 1024,
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_idle_per_backend: 64,
            max_idle_total: 1024,
            idle_timeout_ms: 30_000,
            connect_timeout_ms: 3_000,
            eject_ms: 5_000,
        }
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The longest any `*_ms` setting may be: a year. Longer ones would
/// overflow a deadline (an `Instant` plus the duration) somewhere.
pub const MAX_MS: u64 = 365 * 24 * 3_600_000;

/// The shortest `watch_interval_ms`: the watchers poll, and 0 would spin.
pub const MIN_WATCH_INTERVAL_MS: u64 = 10;

impl Settings {
    /// Parses a YAML settings file; unknown keys are errors.
    pub fn from_yaml(text: &str) -> Result<Settings, String> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        let s: Settings = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Refuses values no deployment means: a watch interval that would
    /// spin, a duration past [`MAX_MS`], a proxy that may hold no
    /// connection.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let p = &self.pool;
        let durations = [
            ("watch_interval_ms", self.watch_interval_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
            ("shutdown_idle_ms", self.shutdown_idle_ms),
            ("limits.head_timeout_ms", l.head_timeout_ms),
            ("limits.first_byte_timeout_ms", l.first_byte_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.response_timeout_ms", l.response_timeout_ms),
            ("limits.body_timeout_ms", l.body_timeout_ms),
            ("limits.linger_ms", l.linger_ms),
            ("limits.tunnel_idle_timeout_ms", l.tunnel_idle_timeout_ms),
            ("pool.idle_timeout_ms", p.idle_timeout_ms),
            ("pool.connect_timeout_ms", p.connect_timeout_ms),
            ("pool.eject_ms", p.eject_ms),
            ("handover.timeout_ms", self.handover.timeout_ms),
            ("shadow.timeout_ms", self.shadow.timeout_ms),
            ("k8s.sync_timeout_ms", self.k8s.sync_timeout_ms),
            (
                "access_log.flush_interval_ms",
                self.access_log.flush_interval_ms,
            ),
            (
                "interception.detect_timeout_ms",
                self.interception.detect_timeout_ms,
            ),
        ];
        for (name, v) in durations {
            if v > MAX_MS {
                return Err(format!("{name}: {v} is more than a year ({MAX_MS})"));
            }
        }
        if self.watch_interval_ms < MIN_WATCH_INTERVAL_MS {
            return Err(format!(
                "watch_interval_ms: {} is less than {MIN_WATCH_INTERVAL_MS}; the watchers would spin",
                self.watch_interval_ms
            ));
        }
        crate::policy::OverridePolicy::new(&self.overrides)?;
        crate::policy::Rules::new(&self.rules)?;
        crate::policy::Mirrors::new(&self.mirrors)?;
        self.shadow.validate()?;
        self.diff.validate()?;
        self.dashboard.validate()?;
        self.access_log.validate()?;
        self.capture.validate()?;
        self.http2.validate()?;
        if l.max_connections == 0 {
            return Err("limits.max_connections: 0 would serve nobody".into());
        }
        if self.interception.mark == 0 {
            return Err(
                "interception.mark: 0 is every unmarked socket's mark; the proxy could not tell its own sockets apart"
                    .into(),
            );
        }
        Ok(())
    }

    /// Where this proxy offers its sockets to a successor and looks for a
    /// predecessor; `None` when handover is off.
    pub fn handover_socket(&self) -> Option<PathBuf> {
        if !self.handover.enabled {
            return None;
        }
        self.handover
            .socket
            .clone()
            .or_else(|| default_handover_socket(self.listen))
    }

    /// Reads and parses a settings file.
    pub fn load(path: &std::path::Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Settings::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The whole base dtab text: `dtab`, then the dtab file's contents.
    pub fn base_dtab_text(&self) -> Result<String, String> {
        let mut text = self.dtab.clone();
        if let Some(path) = &self.dtab_file {
            let file = std::fs::read_to_string(path)
                .map_err(|e| format!("reading dtab file {}: {e}", path.display()))?;
            if !text.trim().is_empty() && !text.trim_end().ends_with(';') {
                text.push(';');
            }
            text.push_str(&file);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_can_be_set_from_yaml() {
        let s = Settings::from_yaml(
            "listen: 127.0.0.1:1\nadmin: 127.0.0.1:2\ndtab: /svc => /$/inet/127.1/3\nfs_dir: /tmp/d\n\
             workers: 2\nidentifier: io.l5d.methodAndHost\nintercept: none\nlimits:\n  max_head_bytes: 100\n  head_timeout_ms: 5\n\
             pool:\n  connect_timeout_ms: 7\nbind_cache_capacity: 3\nyield_before_wait: false\n\
             route_cache_max_bytes: 1000\nroute_cache_max_key_bytes: 100\n",
        )
        .unwrap();
        assert_eq!(s.listen.port(), 1);
        assert_eq!(s.workers, 2);
        assert!(!s.yield_before_wait && Settings::default().yield_before_wait);
        assert_eq!(s.identifier, IdentifierKind::MethodAndHost);
        assert_eq!(s.limits.max_head_bytes, 100);
        assert_eq!(
            s.limits.max_request_line_bytes, 8192,
            "unset keys keep their defaults"
        );
        assert_eq!(s.pool.connect_timeout_ms, 7);
        assert_eq!(s.bind_cache_capacity, 3);
        assert_eq!(
            (s.route_cache_max_bytes, s.route_cache_max_key_bytes),
            (1000, 100)
        );
    }

    #[test]
    fn capture_is_off_by_default_and_reads_its_section() {
        assert!(!Settings::default().capture.enabled);
        let s = Settings::from_yaml(
            "capture:\n  enabled: true\n  dir: /tmp/cap\n  names: [/svc/world]\n  only: override\n\
             \x20 max_body_bytes: 100\n  max_bytes: 65536\n  max_age_secs: 60\n  segment_bytes: 8192\n\
             \x20 buffer: 8\n  redact: [x-api-key]\n",
        )
        .unwrap();
        let c = &s.capture;
        assert!(c.enabled);
        assert_eq!(c.dir.as_deref(), Some(std::path::Path::new("/tmp/cap")));
        assert_eq!(c.names, ["/svc/world"]);
        assert_eq!(c.only, CaptureOnly::Override);
        assert_eq!(
            (
                c.max_body_bytes,
                c.max_bytes,
                c.max_age_secs,
                c.segment_bytes,
                c.buffer
            ),
            (100, 65536, 60, 8192, 8)
        );
        assert_eq!(c.redact, ["x-api-key"]);
    }

    #[test]
    fn dashboard_settings_are_checked() {
        let s = Settings::from_yaml("dashboard:\n  max_rows: 8\n  bucket_secs: 15\n").unwrap();
        assert_eq!((s.dashboard.max_rows, s.dashboard.bucket_secs), (8, 15));
        assert!(s.dashboard.enabled, "on by default");
        for bad in [
            "bucket_secs: 7",
            "bucket_secs: 0",
            "bucket_secs: 120",
            "max_rows: 0",
            "max_rows: 10001",
            "flag_min_requests: 0",
        ] {
            let e = Settings::from_yaml(&format!("dashboard:\n  {bad}\n")).unwrap_err();
            assert!(e.starts_with("dashboard."), "{bad}: {e}");
        }
    }

    #[test]
    fn the_handover_socket_is_per_listen_address_and_can_be_off() {
        let s = Settings::from_yaml("listen: 10.0.0.5:4140\n").unwrap();
        assert_eq!(
            s.handover_socket().unwrap(),
            PathBuf::from("/run/sidetrack/handover-10_0_0_5-4140.sock")
        );
        let s = Settings::from_yaml("listen: 127.0.0.1:0\n").unwrap();
        assert_eq!(s.handover_socket(), None, "port 0: nothing to take over");
        let s = Settings::from_yaml(
            "listen: 10.0.0.5:4140\nhandover:\n  socket: /tmp/h.sock\n  timeout_ms: 5\n",
        )
        .unwrap();
        assert_eq!(s.handover_socket().unwrap(), PathBuf::from("/tmp/h.sock"));
        let s =
            Settings::from_yaml("listen: 10.0.0.5:4140\nhandover:\n  enabled: false\n").unwrap();
        assert_eq!(s.handover_socket(), None);
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        assert_eq!(
            parse_cidr("10.96.0.1/12").unwrap(),
            ("10.96.0.0".parse().unwrap(), 12)
        );
        assert_eq!(
            parse_cidr("198.19.0.7").unwrap(),
            ("198.19.0.7".parse().unwrap(), 32)
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
        let s =
            Settings::from_yaml("interception:\n  cidrs: [198.19.0.0/16]\n  exclude_ports: [22]\n")
                .unwrap();
        assert_eq!(s.interception.exclude_ports, vec![22]);
        assert_eq!(s.interception.mark, 0x5354);
        assert_eq!(s.interception.redirect_queue_min_bytes, 4 << 20);
        let off = Settings::from_yaml("interception:\n  redirect_queue_min_bytes: 0\n").unwrap();
        assert_eq!(off.interception.redirect_queue_min_bytes, 0);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(
            Settings::from_yaml("lisen: 1.2.3.4:5\n")
                .unwrap_err()
                .contains("lisen")
        );
        assert!(Settings::from_yaml("workers: many\n").is_err());
        assert!(Settings::from_yaml("limits:\n  bogus: 1\n").is_err());
    }

    #[test]
    fn values_that_would_spin_overflow_or_serve_nobody_are_refused() {
        let err = |yaml: &str| Settings::from_yaml(yaml).unwrap_err();
        assert!(err("watch_interval_ms: 0\n").contains("spin"));
        assert!(
            err("limits:\n  head_timeout_ms: 18446744073709551615\n").contains("head_timeout_ms")
        );
        assert!(err("pool:\n  eject_ms: 31536000001\n").contains("pool.eject_ms"));
        assert!(err("limits:\n  max_connections: 0\n").contains("max_connections"));
        assert!(err("interception:\n  mark: 0\n").contains("interception.mark"));
        assert!(err("capture:\n  enabled: true\n").contains("capture.dir"));
        assert!(err("capture:\n  names: [svc/world]\n").contains("capture.names"));
        assert!(err("capture:\n  segment_bytes: 10\n").contains("capture.segment_bytes"));
        assert!(
            err("capture:\n  max_bytes: 8192\n  segment_bytes: 16384\n")
                .contains("capture.max_bytes")
        );
        assert!(err("capture:\n  buffer: 0\n").contains("capture.buffer"));
        assert!(err("capture:\n  only: always\n").contains("only"));
        // The edges themselves are fine, and 0 still means "never" where it does.
        let s = Settings::from_yaml(
            "watch_interval_ms: 10\nshutdown_grace_ms: 31536000000\nlimits:\n  tunnel_idle_timeout_ms: 0\n",
        )
        .unwrap();
        assert_eq!(s.watch_interval_ms, 10);
    }
}
