//! cgroup v2 directories for nodes and pods: finding the v2 mount, making
//! them, emptying them of processes and removing them leaf first.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::run::log;

/// The cgroup v2 mount point, from /proc/self/mountinfo (on these machines
/// /sys/fs/cgroup/unified, a hybrid layout; /sys/fs/cgroup on pure v2 hosts).
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
}

/// The v1 `pids` hierarchy, where the machine mounts one (these VMs do):
/// a test that needs a pids limit makes its cgroup there, and
/// `cleanup_stale` looks there for the ones a killed run left.
pub fn pids_v1_root() -> Option<&'static Path> {
    v1_root("/sys/fs/cgroup/pids")
}

/// The v1 `cpu` hierarchy, where the machine mounts one (these VMs do, and
/// their cgroup v2 then has no cpu controller): `Node::cpu_cgroup` makes its
/// CPU cgroups there, and `cleanup_stale` looks there for the ones a killed
/// run left.
pub fn cpu_v1_root() -> Option<&'static Path> {
    v1_root("/sys/fs/cgroup/cpu")
}

fn v1_root(path: &'static str) -> Option<&'static Path> {
    let root = Path::new(path);
    root.join("cgroup.procs").exists().then_some(root)
}

pub(crate) fn create(path: &Path) -> Result<()> {
    log(format_args!("mkdir {}", path.display()));
    fs::create_dir(path).with_context(|| format!("create cgroup {}", path.display()))
}

/// The pids in one cgroup (not its descendants).
pub(crate) fn procs(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `path` and every cgroup below it, children before parents.
fn subtree(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree(&entry.path()));
            }
        }
    }
    out.push(path.to_owned());
    out
}

/// SIGKILLs every process in the subtree and waits (up to 5 s) until none is
/// left, then removes the cgroups, leaves first. Absent is fine.
pub(crate) fn kill_and_remove(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cgroups = subtree(path);
        let pids: Vec<i32> = cgroups.iter().flat_map(|c| procs(c)).collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "processes {pids:?} were still in {} 5 s after SIGKILL",
                path.display()
            );
        }
        log(format_args!("kill -9 {pids:?} (in {})", path.display()));
        // cgroup.kill (Linux 5.14+) kills the whole subtree at once, also
        // processes forking meanwhile; the per-pid kill covers older kernels.
        if fs::write(path.join("cgroup.kill"), "1").is_err() {
            for pid in pids {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for cgroup in subtree(path) {
        log(format_args!("rmdir {}", cgroup.display()));
        // A killed process leaves its cgroup a moment after it is gone from
        // cgroup.procs, so EBUSY is retried until the deadline.
        loop {
            match fs::remove_dir(&cgroup) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("remove cgroup {}", cgroup.display()));
                }
            }
        }
    }
    Ok(())
}
