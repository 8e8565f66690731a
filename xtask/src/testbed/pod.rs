//! A pod: a network namespace and a cgroup of the node, and the ways to run
//! code inside them.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io,
    net::Ipv4Addr,
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use anyhow::{Context, Result};

use super::netns;

/// One pod of a node. A cheap description: cloning it makes no new pod, and
/// it outlives nothing (after the node's teardown, running in it fails).
#[derive(Clone, Debug)]
pub struct Pod {
    name: String,
    ip: Ipv4Addr,
    netns: String,
    host_veth: String,
    cgroup: PathBuf,
}

impl Pod {
    pub(crate) fn new(
        name: &str,
        ip: Ipv4Addr,
        netns: String,
        host_veth: String,
        cgroup: PathBuf,
    ) -> Pod {
        Pod {
            name: name.to_owned(),
            ip,
            netns,
            host_veth,
            cgroup,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's address (a /32 on its `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The namespace's name for `ip netns` / `ip -n`.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The namespace's bind mount (`/run/netns/<name>`).
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.netns)
    }

    /// The namespace's inode: equal to `/proc/<pid>/ns/net`'s for processes inside.
    pub fn netns_inode(&self) -> Result<u64> {
        let p = self.netns_path();
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("stat {}", p.display()))?
            .ino())
    }

    /// The root-namespace end of the pod's veth pair.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// A `Command` for `program` that starts inside the pod (see `enter`). If
    /// the pod is gone, spawning it fails with the error of opening the
    /// namespace or the cgroup.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Err(e) = self.enter(&mut cmd) {
            let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
            // SAFETY: the closure only builds an io::Error from a number.
            unsafe { cmd.pre_exec(move || Err(io::Error::from_raw_os_error(errno))) };
        }
        cmd
    }

    /// Makes `cmd`, between fork and exec, join the pod's cgroup and then
    /// its network namespace, so every socket it makes belongs to both from
    /// the start. Both files are opened here, before the fork (`ip netns
    /// exec` would hide the cgroup mount by remounting /sys), and are
    /// close-on-exec; they live as long as `cmd`.
    pub fn enter<'c>(&self, cmd: &'c mut Command) -> io::Result<&'c mut Command> {
        let procs = OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))?;
        let ns = netns::open(&self.netns)?;
        let files: Arc<(File, File)> = Arc::new((procs, ns));
        // SAFETY: between fork and exec the closure only calls write and
        // setns (async-signal-safe) on descriptors opened before the fork,
        // and reads errno; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let (procs, ns) = &*files;
                // "0" is the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        Ok(cmd)
    }

    /// Runs `f` on a fresh thread of this process whose network namespace is
    /// the pod's, and returns its result (a panic in `f` is resumed here).
    /// The thread does NOT join the pod's cgroup: a cgroup v2 holds whole
    /// processes unless it is in threaded mode, so eBPF programs attached to
    /// the pod's cgroup do not see these sockets. Use `command` for that.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = netns::open(&self.netns)
            .with_context(|| format!("open {}", self.netns_path().display()))?;
        std::thread::scope(|s| {
            let thread = s.spawn(move || -> io::Result<T> {
                netns::enter(&ns)?;
                drop(ns);
                Ok(f())
            });
            match thread.join() {
                Ok(r) => r.with_context(|| format!("setns into {}", self.netns)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}
