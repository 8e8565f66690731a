//! Capture and replay with the real binary: a proxy captures a name's
//! exchanges to its on-disk ring (bounded, redacted), keeps serving when
//! the disk is full, and `sidetrack replay` sends what it captured to two
//! other versions and reports the one that answers differently.
//! Loopback only.

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use sidetrack_tests::{
    TempDir,
    backend::{SeenRequest, read_request},
    client::{self, Client},
    eventually,
    proxy::{self, Proxy},
    require_root,
};

/// A small JSON service in versions: `same` answers as `world` does,
/// `differs` renames a field and has lost an endpoint.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Original,
    Differs,
}

impl App {
    fn start(flavour: Flavour) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        thread::spawn(move || serve(s, flavour, &seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        App { addr, seen, stop }
    }

    fn fs_line(&self) -> String {
        format!("{} {}\n", self.addr.ip(), self.addr.port())
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(s: TcpStream, flavour: Flavour, seen: &Mutex<Vec<SeenRequest>>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut out = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while let Ok(Some(req)) = read_request(&mut r, None) {
        let path = req.target.split('?').next().unwrap_or("").to_owned();
        let method = req.method.clone();
        seen.lock().unwrap().push(req);
        let (status, body) = if let Some(id) = path.strip_prefix("/users/") {
            let name = if flavour == Flavour::Differs {
                "ann"
            } else {
                "Ann"
            };
            ("200 OK", format!(r#"{{"id":{id},"name":"{name}"}}"#))
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            ("200 OK", "b".repeat(n.parse().unwrap_or(0)))
        } else if path == "/gone" && flavour == Flavour::Differs {
            ("404 Not Found", r#"{"error":"gone"}"#.to_owned())
        } else if method == "POST" {
            ("201 Created", r#"{"created":true}"#.to_owned())
        } else {
            ("200 OK", r#"{"ok":true}"#.to_owned())
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nSet-Cookie: session=SETCOOKIESECRET\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A proxy that routes `/svc/<name>` to `/srv/<name>`, read from `dir` by
/// the file namer, with capture into `capture` as `settings` say.
fn proxy(dir: &TempDir, capture: &Path, settings: &str) -> Proxy {
    let config = format!(
        "capture:\n  enabled: true\n  dir: {}\n  names: [/svc/world]\n{settings}",
        capture.display()
    );
    dir.write("config.yaml", &config);
    let config = dir.path().join("config.yaml");
    Proxy::start(&[
        "--dtab",
        "/srv => /#/io.l5d.fs; /svc => /srv",
        "--fs-dir",
        dir.str(),
        "--config",
        config.to_str().unwrap(),
    ])
}

fn captured(p: &Proxy) -> f64 {
    p.metric("sidetrack_capture_entries_total", &[])
}

/// Every segment's lines, oldest first, parsed.
fn entries(dir: &Path) -> Vec<serde_json::Value> {
    segments(dir)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    paths
}

fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn header<'v>(entry: &'v serde_json::Value, side: &str, name: &str) -> Vec<&'v str> {
    entry[side]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["name"].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h["value"].as_str().unwrap())
        .collect()
}

/// What is captured: the chosen name only, credentials redacted, bodies
/// up to the limit; and the ring stays within its size as it turns over.
#[test]
fn capture_keeps_the_chosen_name_redacted_and_within_its_bounds() {
    let dir = TempDir::new("capture");
    let ring = dir.path().join("ring");
    let world = App::start(Flavour::Original);
    let hello = App::start(Flavour::Original);
    dir.write("world", &world.fs_line());
    dir.write("hello", &hello.fs_line());
    let p = proxy(
        &dir,
        &ring,
        "  max_body_bytes: 1024\n  segment_bytes: 8192\n  max_bytes: 32768\n  redact: [x-api-key]\n",
    );
    let mut c = Client::connect(p.addr);
    let r = c.get(
        "world",
        "/users/7?q=1",
        &[
            "Authorization: Bearer AUTHSECRET",
            "Cookie: sid=COOKIESECRET",
            "X-Api-Key: KEYSECRET",
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), Some("session=SETCOOKIESECRET"));
    assert_eq!(c.get("hello", "/users/1", &[]).status, 200);
    assert_eq!(c.get("world", "/bytes/5000", &[]).status, 200);
    assert!(eventually(10, || captured(&p) == 2.0), "{}", p.metrics());

    let all = entries(&ring);
    assert_eq!(all.len(), 2, "hello is not captured: {all:#?}");
    let e = &all[0];
    assert_eq!(e["request"]["url"], "http://world/users/7?q=1");
    assert_eq!(e["_sidetrack"]["name"], "/svc/world");
    assert!(e["_sidetrack"]["dst"].as_str().unwrap().contains("world"));
    assert_eq!(e["response"]["status"], 200);
    assert_eq!(e["response"]["content"]["text"], r#"{"id":7,"name":"Ann"}"#);
    assert!(e["timings"]["wait"].as_f64().unwrap() >= 0.0);
    for name in ["authorization", "cookie", "x-api-key"] {
        assert_eq!(header(e, "request", name), ["<redacted>"], "{name}");
    }
    assert_eq!(header(e, "response", "set-cookie"), ["<redacted>"]);
    let text: String = segments(&ring)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for secret in ["AUTHSECRET", "COOKIESECRET", "KEYSECRET", "SETCOOKIESECRET"] {
        assert!(!text.contains(secret), "{secret} written to the capture");
    }
    // Over the body limit: its size, not its bytes.
    let big = &all[1];
    assert!(big["response"]["content"]["text"].is_null(), "{big}");
    assert_eq!(big["response"]["content"]["size"], 5000);
    assert_eq!(big["_sidetrack"]["response_body_kept"], false);

    // The ring turns over: about 600 bytes an entry, 32 KiB in all.
    for i in 0..200 {
        assert_eq!(c.get("world", &format!("/users/{i}"), &[]).status, 200);
    }
    assert!(eventually(10, || captured(&p) == 202.0), "{}", p.metrics());
    let bytes = disk_bytes(&ring);
    assert!(bytes <= 32768, "{bytes} bytes on disk");
    assert!(segments(&ring).len() >= 3, "{:?}", segments(&ring));
    let kept = entries(&ring);
    assert!(kept.len() < 202, "the oldest went");
    assert_eq!(
        kept.last().unwrap()["request"]["url"],
        "http://world/users/199"
    );
    assert_eq!(p.metric("sidetrack_capture_disk_bytes", &[]) as u64, bytes);
    assert_eq!(p.metric("sidetrack_capture_write_errors_total", &[]), 0.0);
}

/// A tmpfs mounted for a test, unmounted when dropped (on failure too).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Mount(path.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk stops capture, not traffic: every request is answered, the
/// write errors are counted, and the proxy says so once.
#[test]
fn a_full_disk_stops_capture_and_not_traffic() {
    require_root();
    let dir = TempDir::new("capture-full");
    let world = App::start(Flavour::Original);
    dir.write("world", &world.fs_line());
    let ring = dir.path().join("tiny");
    let _mount = Mount::tmpfs(&ring, "256k");
    // The ring may hold far more than the disk does.
    let p = proxy(
        &dir,
        &ring,
        "  max_body_bytes: 16384\n  segment_bytes: 65536\n  max_bytes: 67108864\n",
    );
    let mut c = Client::connect(p.addr);
    let mut sent = 0;
    // Each entry takes about 8 KiB: 256 KiB is full after some 32.
    while sent < 200 && p.metric("sidetrack_capture_write_errors_total", &[]) == 0.0 {
        for _ in 0..10 {
            let r = c.get("world", "/bytes/8000", &[]);
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 8000);
            sent += 1;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        p.metric("sidetrack_capture_write_errors_total", &[]) >= 1.0,
        "{sent} sent; {}",
        p.metrics()
    );
    // Traffic goes on while capture is stopped; what comes is counted as lost.
    let lost = p.metric("sidetrack_capture_lost_total", &[]);
    for _ in 0..20 {
        assert_eq!(c.get("world", "/bytes/8000", &[]).status, 200);
    }
    assert!(eventually(5, || p
        .metric("sidetrack_capture_lost_total", &[])
        >= lost + 20.0));
    assert!(captured(&p) >= 20.0, "{}", p.metrics());
    let mut warned = 0;
    while let Ok(line) = p.logs.try_recv() {
        warned += usize::from(line.contains("capture stopped"));
    }
    assert_eq!(warned, 1, "logged once");
    drop(p);
}

/// `sidetrack replay`, run as a command; its JSON report and exit code.
fn replay(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(proxy::binary())
        .arg("replay")
        .args(args)
        .arg("--json")
        .output()
        .expect("run sidetrack replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

fn endpoint<'r>(report: &'r serde_json::Value, name: &str) -> &'r serde_json::Value {
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

/// A capture made here, replayed through the proxy to a version that
/// answers the same and to one that does not: the report names the
/// endpoints that differ, how, and writes go only when allowed.
#[test]
fn replay_reports_the_version_that_answers_differently() {
    let dir = TempDir::new("replay");
    let ring = dir.path().join("ring");
    let world = App::start(Flavour::Original);
    let same = App::start(Flavour::Original);
    let v2 = App::start(Flavour::Differs);
    dir.write("world", &world.fs_line());
    dir.write("world-same", &same.fs_line());
    dir.write("world-v2", &v2.fs_line());
    let p = proxy(&dir, &ring, "");
    for i in 1..=5 {
        let r = client::get(
            p.addr,
            "world",
            &format!("/users/{i}"),
            &["Authorization: Bearer AUTHSECRET"],
        );
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client::get(p.addr, "world", "/gone", &[]).status, 200);
    }
    let mut c = Client::connect(p.addr);
    c.send(b"POST /orders HTTP/1.1\r\nHost: world\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"item\":42}")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().status, 201);
    assert!(eventually(10, || captured(&p) == 8.0), "{}", p.metrics());

    let capture = ring.to_str().unwrap();
    let proxy_addr = p.addr.to_string();
    let base = [
        "--capture",
        capture,
        "--proxy",
        &proxy_addr,
        "--since",
        "1h",
        "--rate",
        "200",
    ];

    // The same answers: nothing differs; the POST is not sent.
    let (code, r) = replay(&[&base[..], &["--to", "/srv/world-same"]].concat());
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        (
            &r["replayed"],
            &r["same"],
            &r["differing"],
            &r["skipped_writes"]
        ),
        (&7.into(), &7.into(), &0.into(), &1.into()),
        "{r:#}"
    );
    assert_eq!(same.seen().len(), 7);
    // The redacted credentials are not sent with the marker for a value.
    for req in same.seen() {
        assert_eq!(req.header("authorization"), None, "{:?}", req.headers);
        // The override, passed on by the proxy as context.
        let ctx = req.header("l5d-ctx-dtab").unwrap_or_default();
        assert!(ctx.contains("/srv/world-same"), "{:?}", req.headers);
    }

    // The other version: one field of one endpoint, the status of another.
    let (code, r) = replay(&[&base[..], &["--to", "/srv/world-v2"]].concat());
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(
        (&r["replayed"], &r["differing"]),
        (&7.into(), &7.into()),
        "{r:#}"
    );
    let users = endpoint(&r, "/svc/world GET /users/{id}");
    assert_eq!(
        (&users["replayed"], &users["differing"]),
        (&5.into(), &5.into())
    );
    let fields = users["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 1, "{users:#}");
    assert_eq!(fields[0]["path"], "200.body.name");
    assert_eq!(fields[0]["count"], 5);
    assert_eq!(fields[0]["recorded"], r#""Ann""#);
    assert_eq!(fields[0]["replayed"], r#""ann""#);
    let gone = endpoint(&r, "/svc/world GET /gone");
    assert_eq!(gone["status_changes"]["200 -> 404"], 2, "{gone:#}");
    assert_eq!(v2.seen().iter().filter(|s| s.method == "POST").count(), 0);

    // With --allow-writes the POST goes too, with its body.
    let (_, r) = replay(
        &[
            &base[..],
            &[
                "--to",
                "/srv/world-v2",
                "--allow-writes",
                "--method",
                "POST",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        (&r["replayed"], &r["skipped_writes"]),
        (&1.into(), &0.into()),
        "{r:#}"
    );
    let posts: Vec<SeenRequest> = v2
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, br#"{"item":42}"#);
    assert_eq!(endpoint(&r, "/svc/world POST /orders")["same"], 1);

    // Straight to an address, as captured: the original answers the same.
    let (code, r) = replay(&[
        "--capture",
        capture,
        "--addr",
        &world.addr.to_string(),
        "--rate",
        "200",
    ]);
    assert_eq!((code, &r["same"]), (0, &7.into()), "{r:#}");
    // Replayed requests carry a mark, and capture leaves them out.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(captured(&p), 8.0);
    assert_eq!(entries(&ring).len(), 8);
    drop(p);
}
