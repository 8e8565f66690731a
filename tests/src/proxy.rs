//! A `sidetrack run` process for the tests: started with the given flags on
//! ephemeral ports, killed (and waited for) when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::{TempDir, backend::Backend};

pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Log lines before the start-up line.
    pub startup_logs: Vec<String>,
    /// Log lines after the start-up line.
    pub logs: mpsc::Receiver<String>,
}

/// The `sidetrack` binary built for the tests (a bin of this package, so
/// cargo builds it for every integration test): next to the test
/// executable's `deps/` folder.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join("sidetrack-under-test");
    assert!(
        bin.is_file(),
        "{} is missing: build with `cargo test -p sidetrack-tests`",
        bin.display()
    );
    bin
}

impl Proxy {
    /// `sidetrack run --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS...`.
    pub fn start(args: &[&str]) -> Proxy {
        let mut cmd = Command::new(binary());
        cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args);
        Self::spawn(cmd)
    }

    /// Routes `/svc/<name>` to the backends in `dir`'s file `<name>` (the
    /// file namer) under the settings `config` (YAML, written to
    /// `dir/config.yaml`), with more `args`.
    pub fn with_fs_namer(dir: &TempDir, config: &str, args: &[&str]) -> Proxy {
        Self::with_dtab(dir, "/svc => /#/io.l5d.fs", config, args)
    }

    /// A proxy with the base dtab `dtab`, the file namer reading `dir`,
    /// and the settings `config` (YAML, written to `dir/config.yaml`),
    /// with more `args`.
    pub fn with_dtab(dir: &TempDir, dtab: &str, config: &str, args: &[&str]) -> Proxy {
        dir.write("config.yaml", config);
        let config = dir.path().join("config.yaml");
        let mut all = vec![
            "--dtab",
            dtab,
            "--fs-dir",
            dir.str(),
            "--config",
            config.to_str().expect("a UTF-8 path"),
        ];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// A proxy that routes `/svc/web` to a backend of its own, under the
    /// settings `config` (YAML): the bed most single-proxy tests need. The
    /// directory and the backend live as long as what is returned.
    pub fn with_web_backend(tag: &str, config: &str) -> (TempDir, Backend, Proxy) {
        let dir = TempDir::new(tag);
        let web = Backend::start("web");
        dir.write("web", &web.fs_line());
        let proxy = Self::with_fs_namer(&dir, config, &[]);
        (dir, web, proxy)
    }

    /// Starts `cmd` (a `sidetrack run`) and waits for its listening line.
    pub fn spawn(cmd: Command) -> Proxy {
        Self::spawn_with_stdout(cmd, Stdio::null())
    }

    /// [`Proxy::spawn`], with the proxy's standard output going to
    /// `stdout` (a pipe nobody reads, say).
    pub fn spawn_with_stdout(mut cmd: Command, stdout: Stdio) -> Proxy {
        cmd.env("NO_COLOR", "1")
            .env("RUST_LOG", "info,sidetrack=debug")
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start sidetrack");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("[sidetrack] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sidetrack did not start; it said: {seen:#?}");
                }
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split(',').next().unwrap().trim().parse().unwrap();
                let admin = rest
                    .split("admin on http://")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                return Proxy {
                    child,
                    addr,
                    admin,
                    startup_logs: seen,
                    logs: rx,
                };
            }
            seen.push(line);
        }
    }

    /// The admin server's `/metrics` text.
    pub fn metrics(&self) -> String {
        crate::client::get(self.admin, "admin", "/metrics", &[]).text()
    }

    /// One sample's value from `/metrics`: the line that starts with
    /// `name{` and contains every `label="value"` given, or 0.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

/// Finds one sample in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in status")
}

/// Each of `pid`'s worker threads (`sidetrack-worker-N`) with the counts
/// its `/proc/<pid>/task/<tid>/status` gives for the fields named, summed:
/// `voluntary_ctxt_switches` counts how often a worker blocked.
pub fn worker_counts(pid: u32, fields: &[&str]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !name.starts_with("sidetrack-worke") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let sum = status
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                fields
                    .contains(&k)
                    .then(|| v.trim().parse::<u64>().unwrap())
            })
            .sum();
        let tid = task.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(tid, sum);
    }
    out
}

/// The binaries the test bed's scenarios run (`xtask::staging`): this
/// build's `sidetrack` and the demo's apps.
pub fn staging_bins() -> xtask::staging::Bins {
    let dir = binary().parent().unwrap().to_path_buf();
    xtask::staging::Bins {
        sidetrack: binary(),
        app: dir.join("demo-app"),
        app_args: vec![],
    }
}
