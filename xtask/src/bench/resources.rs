//! What a proxy holds, read from outside: open descriptors
//! (`/proc/<pid>/fd`), resident memory, and the entries of the eBPF maps
//! its processes own (`bpftool`). The new-connection phases take one
//! snapshot before and one after, so that anything that grows with the
//! number of connections made shows.

use std::process::Command;

use serde::Serialize;

use super::proc;
use crate::cmd;

/// One reading.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub fds: usize,
    pub rss_kb: u64,
    /// (map name, entries) for each eBPF map one of the processes holds;
    /// empty for a proxy without any, `None` when bpftool could not say.
    pub ebpf_maps: Option<Vec<(String, u64)>>,
}

impl Snapshot {
    pub fn take(pids: &[u32]) -> Snapshot {
        let memory = pids
            .iter()
            .map(|&p| proc::memory(p))
            .fold(proc::Memory::default(), |a, b| a + b);
        Snapshot {
            fds: pids.iter().map(|&p| proc::fd_count(p)).sum(),
            rss_kb: memory.rss_kb,
            ebpf_maps: ebpf_map_entries(pids),
        }
    }

    /// Entries over all of its maps.
    pub fn map_entries(&self) -> Option<u64> {
        Some(self.ebpf_maps.as_ref()?.iter().map(|(_, n)| n).sum())
    }
}

/// Before and after a stretch of new connections.
#[derive(Clone, Debug, Serialize)]
pub struct Growth {
    pub before: Snapshot,
    pub after: Snapshot,
    /// Requests sent in between, each on a new connection (client side,
    /// server side, or both).
    pub connections: u64,
}

impl Growth {
    pub fn fds(&self) -> i64 {
        self.after.fds as i64 - self.before.fds as i64
    }

    pub fn rss_kb(&self) -> i64 {
        self.after.rss_kb as i64 - self.before.rss_kb as i64
    }

    pub fn map_entries(&self) -> Option<i64> {
        Some(self.after.map_entries()? as i64 - self.before.map_entries()? as i64)
    }
}

/// The ids of the eBPF maps `pid` holds a descriptor of (each map
/// descriptor's fdinfo names its id): other proxies' maps on the machine
/// (other tests) are not confused with its own.
pub fn map_ids(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The hash maps `pids` hold, with their entry counts (`bpftool map
/// dump`); arrays always hold every entry and are left out.
fn ebpf_map_entries(pids: &[u32]) -> Option<Vec<(String, u64)>> {
    let json = |args: &[&str]| -> Option<serde_json::Value> {
        let out = cmd::output(Command::new("bpftool").arg("-j").args(args))?;
        serde_json::from_str(&out).ok()
    };
    let mut out = Vec::new();
    for &pid in pids {
        for id in map_ids(pid).ok()? {
            let id = id.to_string();
            let m = json(&["map", "show", "id", &id])?;
            if !m["type"].as_str().is_some_and(|t| t.contains("hash")) {
                continue;
            }
            let name = m["name"].as_str().unwrap_or("?").to_owned();
            let n = json(&["map", "dump", "id", &id])
                .and_then(|d| d.as_array().map(|a| a.len() as u64));
            let Some(n) = n else { continue };
            out.push((name, n));
        }
    }
    Some(out)
}
