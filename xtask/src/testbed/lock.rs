//! One lock for every process on the machine that uses the bed, held while a
//! node claims its address block and the shared sysctls, while it gives them
//! back, and while `cleanup_stale` looks for dead runs.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const PATH: &str = "/run/lock/sidetrack-bed.lock";

/// Held until dropped (closing the file releases the `flock`). Each guard opens
/// its own file description, so threads of one process exclude each other too.
pub(crate) struct BedLock(#[allow(dead_code)] File);

impl BedLock {
    pub fn take() -> Result<BedLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PATH)
            .with_context(|| format!("open the test bed lock {PATH}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(BedLock(file));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("flock {PATH}"));
            }
            if Instant::now() > deadline {
                bail!("the test bed lock {PATH} was held by another process for 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
