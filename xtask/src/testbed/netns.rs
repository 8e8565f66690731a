//! Network namespaces (named, as `ip netns` makes them under /run/netns) and
//! the links between them.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::run::ip;

const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns add NAME` bind-mounts the namespace.
pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub(crate) fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name]).map(drop)
}

/// Deletes the namespace's name; absent is fine. The namespace itself dies
/// when the last process, thread or descriptor in it goes.
pub(crate) fn delete(name: &str) -> Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "delete", name]).map(drop)
}

/// The names under /run/netns.
pub(crate) fn list() -> Vec<String> {
    entry_names(NETNS_DIR)
}

/// The names of a directory's entries; none when it cannot be read.
fn entry_names(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A descriptor for `setns` (opened close-on-exec).
pub(crate) fn open(name: &str) -> io::Result<File> {
    File::open(path(name))
}

/// Moves the calling thread into the namespace behind `ns`.
pub(crate) fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor we own; it only changes this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interfaces of the root namespace (as seen by this thread).
pub(crate) fn links() -> Vec<String> {
    entry_names("/sys/class/net")
}

/// Deletes an interface of the root namespace (a veth takes its peer along);
/// absent is fine.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    ip(&["link", "delete", name]).map(drop)
}

/// The MAC address of an interface of the root namespace.
pub(crate) fn mac(name: &str) -> Result<String> {
    let p = Path::new("/sys/class/net").join(name).join("address");
    Ok(fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_owned())
}
