//! What the soak samples, every few seconds: the proxy's resident memory
//! and open descriptors (/proc), the entries of its eBPF maps (found
//! through the descriptors it holds, counted with bpftool), the kernel's
//! TCP socket counts and memory (/proc/net/sockstat) and socket buffers
//! (/proc/slabinfo), how much the machine itself stalled (a probe thread,
//! CPU pressure), and a few of its
//! own gauges (/metrics).

use std::{
    collections::BTreeMap,
    fs,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use proxy_common::{MAP_COOKIE_DST, MAP_ORIG_DST, MAP_SOCKHASH};

use crate::{bench::proc, cmd, staging::metric};

/// The maps counted, by series key and name (the kernel keeps a map
/// name's first 15 bytes; these are shorter).
const MAPS: [(&str, &str); 3] = [
    ("sockhash", MAP_SOCKHASH),
    ("orig_dst", MAP_ORIG_DST),
    ("cookie_dst", MAP_COOKIE_DST),
];

/// The proxy's maps to count: (series key, map id).
pub struct Maps(Vec<(&'static str, u32)>);

impl Maps {
    /// Finds the maps by the descriptors `pid` holds: each map descriptor's
    /// fdinfo names its id, and `bpftool map show` the id's name. Maps of
    /// other proxies on the machine (other tests) are not confused with
    /// the soak's.
    pub fn of(pid: u32) -> Result<Maps> {
        let ids = crate::bench::resources::map_ids(pid)
            .with_context(|| format!("read /proc/{pid}/fdinfo"))?;
        let mut found = Vec::new();
        for id in ids {
            let out = cmd::output(Command::new("bpftool").args([
                "-j",
                "map",
                "show",
                "id",
                &id.to_string(),
            ]))
            .with_context(|| format!("bpftool map show id {id}"))?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let name = v["name"].as_str().unwrap_or("");
            if let Some((key, _)) = MAPS.iter().find(|(_, n)| *n == name) {
                found.push((*key, id));
            }
        }
        for (key, name) in MAPS {
            if !found.iter().any(|(k, _)| *k == key) {
                bail!("the proxy (pid {pid}) holds no map named {name}");
            }
        }
        Ok(Maps(found))
    }

    /// Entries in each map now (`bpftool map dump`, one key walk each).
    fn count(&self, values: &mut BTreeMap<String, f64>) {
        for &(key, id) in &self.0 {
            let n = cmd::output(Command::new("bpftool").args([
                "-j",
                "map",
                "dump",
                "id",
                &id.to_string(),
            ]))
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| v.as_array().map(Vec::len));
            if let Some(n) = n {
                values.insert(key.to_owned(), n as f64);
            }
        }
    }
}

/// The TCP line of `/proc/net/sockstat`: `inuse` and `tw` count the
/// network namespace of the reader (the node's root one, where the proxy
/// is); `orphan`, `alloc` and `mem` (pages) the whole machine.
pub fn sockstat(values: &mut BTreeMap<String, f64>) {
    let text = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(tcp) = text.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        return;
    };
    let words: Vec<&str> = tcp.split_whitespace().collect();
    for pair in words.chunks(2) {
        if let [name, v] = pair
            && let Ok(v) = v.parse::<f64>()
        {
            let key = match *name {
                "inuse" => "tcp_inuse",
                "orphan" => "tcp_orphan",
                "tw" => "tcp_tw",
                "mem" => "tcp_mem_pages",
                _ => continue,
            };
            values.insert(key.to_owned(), v);
        }
    }
}

/// Active objects of the slab cache of socket buffer heads (machine-wide).
pub fn skbuff_slab(values: &mut BTreeMap<String, f64>) {
    let text = fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    if let Some(active) = text
        .lines()
        .find_map(|l| l.strip_prefix("skbuff_head_cache "))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
    {
        values.insert("skbuff_slab".into(), active);
    }
}

/// The proxy's own gauges, and how many samples /metrics has (a label set
/// that grows with the traffic would show there).
pub fn metrics(text: &str, values: &mut BTreeMap<String, f64>) {
    values.insert(
        "connections_active".into(),
        metric(text, "sidetrack_connections_active", &[]),
    );
    values.insert(
        "dtab_cache_kb".into(),
        metric(text, "sidetrack_dtab_cache_bytes", &[]) / 1024.0,
    );
    values.insert(
        "memory_charged_kb".into(),
        metric(text, "sidetrack_memory_used_bytes", &[]) / 1024.0,
    );
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    values.insert("metric_series".into(), lines as f64);
}

/// A thread of the soak's own that sleeps 20 ms at a time and keeps the
/// most it overslept: when the proxy misses its deadlines, this tells a
/// machine that stopped running everyone (other builds and tests on
/// it) from a proxy that stopped on its own.
pub struct StallProbe {
    max_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StallProbe {
    pub fn start() -> StallProbe {
        let max_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st) = (Arc::clone(&max_us), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            const NAP: Duration = Duration::from_millis(20);
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                thread::sleep(NAP);
                let late = t.elapsed().saturating_sub(NAP).as_micros() as u64;
                m.fetch_max(late, Ordering::Relaxed);
            }
        });
        StallProbe {
            max_us,
            stop,
            thread: Some(thread),
        }
    }

    /// The most it overslept since the last call, in ms.
    pub fn take_ms(&self) -> f64 {
        self.max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0
    }
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Microseconds some task waited for a CPU, machine-wide, since boot
/// (`/proc/pressure/cpu`, `some`); `None` without PSI.
pub fn cpu_pressure_us() -> Option<f64> {
    fs::read_to_string("/proc/pressure/cpu")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// One sample of everything but the load's counts.
pub fn take(pid: u32, maps: &Maps, metrics_text: Option<&str>) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    values.insert("rss_kb".into(), proc::memory(pid).rss_kb as f64);
    values.insert("fds".into(), proc::fd_count(pid) as f64);
    maps.count(&mut values);
    sockstat(&mut values);
    skbuff_slab(&mut values);
    if let Some(text) = metrics_text {
        metrics(text, &mut values);
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sockstat_and_metrics() {
        let mut v = BTreeMap::new();
        sockstat(&mut v);
        assert!(
            v.contains_key("tcp_inuse") && v.contains_key("tcp_mem_pages"),
            "{v:?}"
        );
        let text = "# HELP x\nsidetrack_connections_active 3\nsidetrack_dtab_cache_bytes 2048\n\
                    sidetrack_requests_total{service=\"a\"} 1\n";
        metrics(text, &mut v);
        assert_eq!(v["connections_active"], 3.0);
        assert_eq!(v["dtab_cache_kb"], 2.0);
        assert_eq!(v["metric_series"], 3.0);
    }
}
