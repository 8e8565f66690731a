//! A cgroup made for one test (v2, or v1 for the pids controller), and
//! children started inside it.
//!
//! The guard removes the cgroup when dropped, also when the test panics; any
//! process still in it is killed first so that the removal succeeds.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Makes `<cgroup v2 root>/sidetrack-test-<pid>-<n>-<tag>`.
    pub fn create(tag: &str) -> io::Result<Self> {
        Self::create_in(&sidetrack::intercept::cgroup::v2_root()?, tag)
    }

    /// A cgroup with the pids controller: in the v1 `pids` hierarchy where
    /// the machine mounts one (as these VMs do), else under the v2 root
    /// with the controller enabled there.
    pub fn with_pids(tag: &str) -> io::Result<Self> {
        if let Some(v1) = xtask::testbed::pids_v1_root() {
            return Self::create_in(v1, tag);
        }
        let root = sidetrack::intercept::cgroup::v2_root()?;
        fs::write(root.join("cgroup.subtree_control"), "+pids")?;
        Self::create_in(&root, tag)
    }

    /// Makes `<parent>/sidetrack-test-<pid>-<n>-<tag>`.
    fn create_in(root: &Path, tag: &str) -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sidetrack-test-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd` join this cgroup between fork and exec, so that every
    /// socket it creates belongs to the cgroup from the start.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        xtask::staging::node_process(cmd, &self.path).map_err(io::Error::other)?;
        cmd.spawn()
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("could not remove test cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
