//! `cargo xtask demo`: the ad-hoc staging tutorial, end to end, on the netns
//! test bed with the proxy in eBPF mode.
//!
//! A client pod calls `http://hello/` with plain `connect()`s; `hello` calls
//! `http://world/`. Neither knows the proxy: `cgroup/connect4` sends their
//! connects to it, and the dtab routes `world` to `world-v1`, or, for a
//! request carrying `l5d-dtab: /host/world => /srv/world-v2`, to the staged
//! `world-v2`.
//!
//! The same for gRPC: a call from the client pod to a `greeter` service
//! (grpcio, HTTP/2 without TLS, to world's service address) goes to
//! `greeter-v1`, and one carrying `l5d-dtab` as metadata to `greeter-v2`.
//!
//! Then shadowing, Diffy's way: `users` (JSON) is mirrored to a candidate
//! `users-v2` whose greeting differs, and to `users-b`, a second instance
//! of the live version whose answers differ from it only in a timestamp;
//! after 300 requests `sidetrack diff` reports the greeting and cancels the
//! timestamp as noise. Last, the dashboard's address and its summary line
//! per version. Everything is torn down at the end (or on Ctrl-C).

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::{
    cmd,
    staging::{self, Bins, Mode, STAGE_V2, Staging},
    testbed,
};

pub fn run(keep: bool) -> Result<()> {
    // First, before any thread exists: Ctrl-C tears the test bed down.
    testbed::teardown_on_signal()?;
    let bins = Bins::build()?;
    cmd::step(
        "starting a node with pods client, hello, world-v1, world-v2, and sidetrack in eBPF mode",
    );
    let mut s = Staging::start("demo", Mode::Ebpf, bins)?;
    for pod in [&s.client, &s.hello, &s.world_v1, &s.world_v2] {
        cmd::note(format!("pod {:<9} {}", pod.name(), pod.ip()));
    }
    cmd::note(format!(
        "sidetrack listens on {} (admin {}); hello is {}, world is {}",
        s.proxy_addr,
        s.admin_addr,
        staging::hello_service(),
        staging::world_service()
    ));
    cmd::note(format!("base dtab: {}", staging::DTAB.replace('\n', " ")));

    cmd::step("a plain request, from pod client");
    println!("$ curl http://hello/");
    let plain = s.get_hello(&[])?;
    println!("{plain}");
    let want = format!("Hello ({}) world ({})!!", s.hello.ip(), s.world_v1.ip());
    ensure!(plain == want, "expected {want:?}");

    cmd::step("the same request, staging world-v2 for itself only");
    println!("$ curl -H '{STAGE_V2}' http://hello/");
    let staged = s.get_hello(&[STAGE_V2])?;
    println!("{staged}");
    let want = format!("Hello ({}) earth ({})!!", s.hello.ip(), s.world_v2.ip());
    ensure!(staged == want, "expected {want:?}");

    let greeters = grpc(&s)?;

    cmd::step("what the proxy saw");
    let m = s.metrics()?;
    let intercepted = staging::metric(&m, "sidetrack_ebpf_connect_intercepted_total", &[]);
    let redirected = staging::metric(&m, "sidetrack_ebpf_bytes_redirected_total", &[]);
    let msgs = staging::metric(&m, "sidetrack_ebpf_msg_redirected_total", &[]);
    println!("connections intercepted by connect4/6:    {intercepted}");
    println!(
        "bytes that skipped the TCP/IP stack:      {redirected} ({msgs} messages redirected by sk_msg)"
    );
    println!("requests per destination:");
    for line in m
        .lines()
        .filter(|l| l.starts_with("sidetrack_requests_total{"))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let n = line.rsplit(' ').next().unwrap_or("0");
        let overridden = if label("override") == "true" {
            "  (l5d-dtab override)"
        } else {
            ""
        };
        println!(
            "  {:<12} -> {:<24} {n}{overridden}",
            label("service"),
            label("dst")
        );
    }
    println!(
        "delegator: http://{}/delegator?path=/svc/world",
        s.admin_addr
    );

    shadowing(&mut s)?;
    dashboard(&s)?;

    if keep {
        cmd::step("running until Ctrl-C (try the delegator page, or curl from the client pod)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    cmd::step("tearing the node down");
    drop(greeters);
    drop(s);
    cmd::step("demo done");
    Ok(())
}

/// gRPC servers in the world pods, killed when dropped.
struct Greeters(Vec<std::process::Child>);

impl Drop for Greeters {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The port the greeters listen on in their pods.
const GREETER_PORT: u16 = 9095;

/// gRPC through the same interception: a `greeter` in each world pod
/// (tests/grpc/peer.py on grpcio), a call from the client pod, and the same
/// call staged onto greeter-v2 by its `l5d-dtab` metadata.
fn grpc(s: &Staging) -> Result<Greeters> {
    use std::io::BufRead;
    cmd::step(
        "gRPC (HTTP/2): a call to greeter, and the same call staging greeter-v2 for itself only",
    );
    let peer = crate::workspace_root().join("tests/grpc/peer.py");
    let python = crate::setup::venv_python();
    let disco = s.dir.join("disco");
    let mut greeters = Greeters(Vec::new());
    for (pod, name) in [(&s.world_v1, "greeter-v1"), (&s.world_v2, "greeter-v2")] {
        std::fs::write(disco.join(name), format!("{} {GREETER_PORT}\n", pod.ip()))?;
        let mut child = pod
            .command(&python)
            .arg(&peer)
            .args(["serve", &GREETER_PORT.to_string(), name, "0.0.0.0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        greeters.0.push(child);
        ensure!(line.trim() == "ready", "{name} did not start: {line:?}");
    }
    std::fs::write(
        disco.join("greeter"),
        format!("{} {GREETER_PORT}\n", s.world_v1.ip()),
    )?;
    let call = |dtab: &str| -> Result<serde_json::Value> {
        let out = s
            .client
            .command(&python)
            .arg(&peer)
            .args([
                "call",
                &staging::world_service().to_string(),
                "greeter",
                "unary",
                dtab,
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "the gRPC call failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(
            text.lines().last().unwrap_or_default(),
        )?)
    };
    // The namer reads the new files within its interval.
    std::thread::sleep(Duration::from_millis(400));
    println!(
        "$ grpc test.Echo/Unary greeter   (grpcio, an insecure channel to {})",
        staging::world_service()
    );
    let plain = call("")?;
    println!("answered by {} ({})", plain["server"], plain["dst_client"]);
    ensure!(
        plain["server"] == "greeter-v1",
        "expected greeter-v1: {plain}"
    );
    let dtab = "/host/greeter => /srv/greeter-v2";
    println!("$ grpc test.Echo/Unary greeter   with metadata l5d-dtab: {dtab}");
    let staged = call(dtab)?;
    println!(
        "answered by {} ({})",
        staged["server"], staged["dst_client"]
    );
    ensure!(
        staged["server"] == "greeter-v2",
        "expected greeter-v2: {staged}"
    );
    Ok(greeters)
}

/// The dashboard: its address, and one summary line per version from
/// `/dashboard.json` (the last minute).
fn dashboard(s: &Staging) -> Result<()> {
    cmd::step("every version's dashboard");
    let (status, body) =
        staging::http_get(std::net::SocketAddr::V4(s.admin_addr), "/dashboard.json")?;
    ensure!(status == 200, "/dashboard.json answered {status}");
    let d: serde_json::Value = serde_json::from_str(&body)?;
    println!("dashboard: http://{}/dashboard", s.admin_addr);
    println!(
        "$ curl http://{}/dashboard.json   (the last minute, one line per version)",
        s.admin_addr
    );
    let mut versions = 0;
    for name in d["names"].as_array().into_iter().flatten() {
        for row in name["rows"].as_array().into_iter().flatten() {
            let w = &row["windows"]["1m"];
            let flag = match row["windows"]["1m"]["flagged"].as_bool() {
                Some(true) => format!("  FLAGGED: {}", w["why"].as_str().unwrap_or("")),
                _ => String::new(),
            };
            println!(
                "  {:<11} {:<26} via {:<8} {:>4} req  {:>5.1}% ok  p50 {:>6.2} ms  p99 {:>6.2} ms{flag}",
                name["name"].as_str().unwrap_or(""),
                row["dst"].as_str().unwrap_or(""),
                row["via"].as_str().unwrap_or(""),
                w["requests"].as_u64().unwrap_or(0),
                w["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
                w["p50_ms"].as_f64().unwrap_or(0.0),
                w["p99_ms"].as_f64().unwrap_or(0.0),
            );
            versions += 1;
        }
    }
    ensure!(
        versions >= 4,
        "expected rows for world-v1, world-v2 and the users versions:\n{body}"
    );
    Ok(())
}

/// The shadowing part: a mirror in diff mode, live traffic, the report.
fn shadowing(s: &mut Staging) -> Result<()> {
    cmd::step("shadowing: copies of live traffic to a candidate, compared with the live answers");
    let mirror = s.start_users()?;
    cmd::note(
        "users (live) and users-b (a second instance of it) greet \"world\", the candidate users-v2 \"earth\"; \
         every answer carries its own served_at timestamp",
    );
    println!("settings added (reloaded live):\n{}", mirror.trim_end());
    s.reconfigure(mirror)?;
    let diffed = |s: &Staging| -> Result<f64> {
        Ok(staging::metric(
            &s.metrics()?,
            "sidetrack_mirror_requests_total",
            &[("service", "/svc/users"), ("outcome", "diffed")],
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while diffed(s)? == 0.0 {
        // The namer reads the users files within its interval (200 ms):
        // until then the name is not bound, and the request is tried again.
        let tried = s.curl("http://users/users/0", staging::world_service(), &[]);
        ensure!(
            std::time::Instant::now() < deadline,
            "the mirror did not load ({tried:?}):\n{}",
            s.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = diffed(s)?;
    println!("$ curl http://users/users/[1-300]   (300 requests on one connection)");
    let body = s.curl("http://users/users/[1-300]", staging::world_service(), &[])?;
    let text = String::from_utf8_lossy(&body);
    let live = text.matches(r#""greeting":"world""#).count();
    println!("{live} answers, every one from the live version (greeting \"world\")");
    ensure!(live == 300, "expected 300 live answers: {text:.300}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while diffed(s)? < before + 300.0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the copies were not all compared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("$ sidetrack diff --admin {}", s.admin_addr);
    let out = std::process::Command::new(&s.bins.sidetrack)
        .args(["diff", "--admin", &s.admin_addr.to_string()])
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    ensure!(
        report.contains("body.greeting") && !report.contains("served_at"),
        "the report should name the greeting and cancel the timestamp"
    );
    println!("diff page: http://{}/diff", s.admin_addr);
    Ok(())
}
