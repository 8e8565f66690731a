//! The machine-wide sysctls the bed needs, shared by every live node of every
//! process: the first node saves the old values (in a file, so a crashed run's
//! leftovers can still be undone) and sets ours; the last one restores them.
//! Callers hold the `BedLock` and decide who is first or last from the live
//! nodes' `lo` addresses.

use std::{fs, path::Path};

use anyhow::{Context, Result};

use super::run::log;

/// What the bed sets. Forwarding carries pod-to-pod traffic through the node.
/// rp_filter needs no change: every pod has a host route back through its veth.
const WANTED: &[(&str, &str)] = &[("net/ipv4/ip_forward", "1")];

/// The values from before the first live node, as `key=value` lines.
const SAVED: &str = "/run/sidetrack-bed.sysctl";

fn proc_path(key: &str) -> String {
    format!("/proc/sys/{key}")
}

fn write(key: &str, value: &str) -> Result<()> {
    log(format_args!("sysctl {}={value}", key.replace('/', ".")));
    fs::write(proc_path(key), value).with_context(|| format!("write {}", proc_path(key)))
}

/// Saves the current values (unless a saved file is already there: then it
/// holds the originals) and sets the bed's.
pub(crate) fn claim() -> Result<()> {
    if !Path::new(SAVED).exists() {
        let mut saved = String::new();
        for (key, _) in WANTED {
            let now = fs::read_to_string(proc_path(key))
                .with_context(|| format!("read {}", proc_path(key)))?;
            saved.push_str(&format!("{key}={}\n", now.trim()));
        }
        fs::write(SAVED, saved).with_context(|| format!("write {SAVED}"))?;
    }
    for (key, value) in WANTED {
        write(key, value)?;
    }
    Ok(())
}

/// Restores the saved values, if any, and forgets them.
pub(crate) fn restore() -> Result<()> {
    let Ok(saved) = fs::read_to_string(SAVED) else {
        return Ok(());
    };
    for line in saved.lines() {
        if let Some((key, value)) = line.split_once('=') {
            write(key, value)?;
        }
    }
    fs::remove_file(SAVED).with_context(|| format!("remove {SAVED}"))
}
