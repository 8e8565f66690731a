//! A cgroup v2 made for one test, and children started inside it.
//!
//! The guard removes the cgroup when dropped, also when the test panics; any
//! process still in it is killed first so that the removal succeeds.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, process::CommandExt},
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
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = sidetrack::intercept::cgroup::v2_root()?;
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
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())?;
        // SAFETY: the closure only calls async-signal-safe libc functions on
        // data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 2 {
                    return Err(err);
                }
                Ok(())
            })
        };
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
