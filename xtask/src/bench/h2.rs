//! The HTTP/2 rows (issue 24): `h2load` in the client pod over one
//! connection with 1 and 100 concurrent streams, `GET /` answered by an
//! h2c server in the server pod (`nghttpd`, a 13-byte file), through each
//! of: nothing (`direct`), Sidetrack explicit and in eBPF mode (the name
//! `bench-h2` is in `http2.h2_names`, so requests go out as HTTP/2 too),
//! haproxy (h2 both sides) and nginx (h2c in, `grpc_pass` out: its only
//! HTTP/2 upstream). Latency is each request's, from h2load's per-request
//! log; with 100 streams it is the time a request waits among 100.
//!
//! Targets: eBPF mode adds at most half of haproxy's p50 at 1 stream, and
//! makes at least 1.25x haproxy's requests/s at 100 streams.

use std::{
    fs,
    net::{SocketAddr, SocketAddrV4},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::{
    Plan, report,
    scenarios::{Bed, HAPROXY_PORT, NGINX_PORT, Proxy, SIDETRACK_PORT, Scenario, Variant},
};
use crate::{cmd, staging::metric};

/// Where nghttpd listens in the server pod.
pub const H2_SERVER_PORT: u16 = 8090;
/// The streams h2load keeps open at once on its one connection.
const STREAMS: [usize; 2] = [1, 100];
/// The answer's body, as the HTTP/1.1 bench server's.
const BODY: &str = "Hello world!\n";
/// What the proxies name the server by (`:authority`).
const AUTHORITY: &str = "bench-h2";

/// The cases, in the order they run in each round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Direct,
    SidetrackExplicit,
    SidetrackEbpf,
    Haproxy,
    Nginx,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Direct,
        Case::SidetrackExplicit,
        Case::SidetrackEbpf,
        Case::Haproxy,
        Case::Nginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::SidetrackExplicit => "sidetrack-explicit",
            Case::SidetrackEbpf => "sidetrack-ebpf",
            Case::Haproxy => "haproxy",
            Case::Nginx => "nginx",
        }
    }
}

/// One row: a case at a number of streams, over every round.
#[derive(Clone, Debug, Serialize)]
pub struct H2Row {
    pub name: &'static str,
    pub streams: usize,
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The proxy's CPU per request (µs), user and kernel together.
    pub cpu_us_per_request: Option<f64>,
}

/// nghttpd in the server pod; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every case's rows, the cases taking turns over `plan.h2_rounds` rounds.
pub fn measure(bed: &Bed, plan: &Plan) -> Result<Vec<H2Row>> {
    super::step("HTTP/2: h2load over one connection, 1 and 100 streams");
    let docroot = bed.dir.join("h2-docroot");
    fs::create_dir_all(&docroot)?;
    fs::write(docroot.join("index.html"), BODY)?;
    let mut server = bed.server.command("nghttpd");
    server
        .args(["--no-tls", "--address=0.0.0.0", "-d"])
        .arg(&docroot)
        .arg(H2_SERVER_PORT.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(
        server
            .spawn()
            .context("start nghttpd (apt nghttp2-server)")?,
    );
    let up = SocketAddrV4::new(bed.server.ip(), H2_SERVER_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&up.into(), Duration::from_millis(200)).is_err() {
        ensure!(Instant::now() < deadline, "nghttpd does not listen on {up}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = plan.h2_secs;
    let mut acc: Vec<(Case, usize, Acc)> = Case::ALL
        .iter()
        .flat_map(|&c| STREAMS.map(|s| (c, s, Acc::default())))
        .collect();
    for round in 0..plan.h2_rounds {
        for j in 0..Case::ALL.len() {
            let case = Case::ALL[(round + j) % Case::ALL.len()];
            let mut proxy = start(bed, case, up)?;
            let target = target(bed, case, up);
            // Warm-up, unmeasured: also proves the path.
            let warm = h2load(bed, target, 1, 0.3)?;
            ensure!(
                warm.requests > 0 && warm.errors == 0,
                "{}: the warm-up got {} answers and {} errors:\n{}",
                case.name(),
                warm.requests,
                warm.errors,
                proxy.as_ref().map_or(String::new(), Proxy::log_text)
            );
            for (c, streams, a) in acc.iter_mut().filter(|(c, ..)| *c == case) {
                let cpu_before = proxy.as_ref().and_then(Proxy::cpu);
                let r = h2load(bed, target, *streams, secs)?;
                let cpu = proxy
                    .as_ref()
                    .and_then(Proxy::cpu)
                    .zip(cpu_before)
                    .map(|(b, a)| b.minus(a).total());
                cmd::note(format!(
                    "round {}: {:<18} {:>3} streams {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}",
                    round + 1,
                    c.name(),
                    streams,
                    r.requests as f64 / r.secs,
                    percentile(&r.latencies_us, 0.5),
                    percentile(&r.latencies_us, 0.99),
                    r.errors
                ));
                a.add(r, cpu);
            }
            if let Some(p) = &mut proxy {
                if case == Case::SidetrackEbpf {
                    let m = bed
                        .proxy_metrics(Scenario::SidetrackEbpf)
                        .unwrap_or_default();
                    cmd::note(format!(
                        "sidetrack-ebpf: {} HTTP/2 streams, {} messages redirected by sk_msg",
                        metric(&m, "sidetrack_http2_streams_total", &[]),
                        metric(&m, "sidetrack_ebpf_msg_redirected_total", &[])
                    ));
                }
                p.stop()?;
            }
        }
    }
    Ok(acc
        .into_iter()
        .map(|(c, streams, a)| a.row(c.name(), streams))
        .collect())
}

/// Starts the case's proxy (none for `direct`).
fn start(bed: &Bed, case: Case, up: SocketAddrV4) -> Result<Option<Proxy>> {
    let node = bed.node.ip();
    Ok(match case {
        Case::Direct => None,
        Case::SidetrackExplicit => {
            Some(bed.start_proxy(Scenario::SidetrackExplicit, Variant::default())?)
        }
        Case::SidetrackEbpf => Some(bed.start_proxy(Scenario::SidetrackEbpf, Variant::default())?),
        Case::Haproxy => {
            let listen = SocketAddrV4::new(node, HAPROXY_PORT);
            let conf = bed.dir.join("haproxy-h2.cfg");
            fs::write(&conf, bed.haproxy_h2_conf(listen, up))?;
            let mut c = Command::new("haproxy");
            c.arg("-db").arg("-f").arg(conf);
            Some(bed.spawn_h2_proxy("haproxy", c, listen.into())?)
        }
        Case::Nginx => {
            let listen = SocketAddrV4::new(node, NGINX_PORT);
            let conf = bed.write_nginx_h2_conf(listen, up)?;
            let mut c = Command::new("nginx");
            c.arg("-c").arg(conf).arg("-p").arg(bed.dir.join("nginx"));
            Some(bed.spawn_h2_proxy("nginx", c, listen.into())?)
        }
    })
}

/// Where h2load connects in `case`.
fn target(bed: &Bed, case: Case, up: SocketAddrV4) -> SocketAddr {
    let node = bed.node.ip();
    SocketAddr::V4(match case {
        Case::Direct => up,
        Case::SidetrackExplicit => SocketAddrV4::new(node, SIDETRACK_PORT),
        // The service address nothing owns: only interception gets there.
        Case::SidetrackEbpf => bed.service_addr(),
        Case::Haproxy => SocketAddrV4::new(node, HAPROXY_PORT),
        Case::Nginx => SocketAddrV4::new(node, NGINX_PORT),
    })
}

/// One h2load run's outcome.
struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

/// `h2load -c 1 -m streams -D secs` in the client pod, with a per-request
/// log for the latencies.
fn h2load(bed: &Bed, target: SocketAddr, streams: usize, secs: f64) -> Result<Run> {
    let log = bed.dir.join("h2load.log");
    let _ = fs::remove_file(&log);
    let duration = format!("{}ms", (secs * 1000.0).round() as u64);
    let out = bed
        .client
        .command("h2load")
        .args(["-c", "1", "-m", &streams.to_string(), "-D", &duration])
        .args(["-H", &format!(":authority: {AUTHORITY}")])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{target}/"))
        .stdin(Stdio::null())
        .output()
        .context("run h2load in the client pod (apt nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load against {target} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout"
    let field = |line: &str, word: &str| -> u64 {
        let mut prev = "";
        for w in line.split([' ', ',']).filter(|w| !w.is_empty()) {
            if w == word {
                return prev.parse().unwrap_or(0);
            }
            prev = w;
        }
        0
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("h2load printed no requests line: {text}"))?;
    let succeeded = field(line, "succeeded");
    let errors = field(line, "failed") + field(line, "errored") + field(line, "timeout");
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    let mut latencies_us: Vec<u64> = log_text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    latencies_us.sort_unstable();
    Ok(Run {
        requests: succeeded,
        errors,
        secs,
        latencies_us,
    })
}

/// The `q` quantile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64
}

#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    cpu_s: Option<f64>,
}

impl Acc {
    fn add(&mut self, r: Run, cpu_s: Option<f64>) {
        self.requests += r.requests;
        self.errors += r.errors;
        self.secs += r.secs;
        self.latencies_us.extend(r.latencies_us);
        if let Some(c) = cpu_s {
            *self.cpu_s.get_or_insert(0.0) += c;
        }
    }

    fn row(mut self, name: &'static str, streams: usize) -> H2Row {
        self.latencies_us.sort_unstable();
        H2Row {
            name,
            streams,
            requests: self.requests,
            errors: self.errors,
            secs: self.secs,
            rps: self.requests as f64 / self.secs.max(1e-9),
            p50_us: percentile(&self.latencies_us, 0.5),
            p99_us: percentile(&self.latencies_us, 0.99),
            cpu_us_per_request: self.cpu_s.map(|c| c / self.requests.max(1) as f64 * 1e6),
        }
    }
}

fn row<'a>(rows: &'a [H2Row], name: &str, streams: usize) -> Option<&'a H2Row> {
    rows.iter().find(|r| r.name == name && r.streams == streams)
}

/// The issue's two targets, from the rows.
pub fn targets(rows: &[H2Row]) -> Vec<report::Target> {
    let mut out = Vec::new();
    let (Some(direct), Some(ebpf), Some(haproxy)) = (
        row(rows, "direct", 1),
        row(rows, "sidetrack-ebpf", 1),
        row(rows, "haproxy", 1),
    ) else {
        return out;
    };
    let added = |r: &H2Row| r.p50_us - direct.p50_us;
    let ratio = added(ebpf) / added(haproxy);
    out.push(report::Target {
        name: "HTTP/2, 1 stream: eBPF mode adds at most half of haproxy's p50".into(),
        measured: format!(
            "+{:.1} µs against +{:.1} µs: {ratio:.2}",
            added(ebpf),
            added(haproxy)
        ),
        verdict: report::verdict(ratio <= 0.5, added(haproxy) > 0.0),
        issue: 24,
        ratios: vec![ratio],
    });
    if let (Some(ebpf), Some(haproxy)) =
        (row(rows, "sidetrack-ebpf", 100), row(rows, "haproxy", 100))
    {
        let ratio = ebpf.rps / haproxy.rps.max(1e-9);
        out.push(report::Target {
            name: "HTTP/2, 100 streams: eBPF mode makes at least 1.25x haproxy's requests/s".into(),
            measured: format!("{:.0} against {:.0}: {ratio:.2}x", ebpf.rps, haproxy.rps),
            verdict: report::verdict(ratio >= 1.25, haproxy.rps > 0.0),
            issue: 24,
            ratios: vec![ratio],
        });
    }
    out
}

/// The rows as a Markdown table.
pub fn table(rows: &[H2Row]) -> String {
    let mut t = String::from(
        "HTTP/2 (h2load, one connection):\n\n| scenario | streams | req/s | p50 µs | p99 µs | CPU µs/req | errors |\n|---|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} |\n",
            r.name,
            r.streams,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.cpu_us_per_request
                .map_or("–".to_owned(), |c| format!("{c:.1}")),
            r.errors
        ));
    }
    t
}
