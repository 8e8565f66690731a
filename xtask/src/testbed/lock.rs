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

/// Held by a staging in iptables mode for its whole life: its nftables
/// rules live in the machine's root namespace and match the shared service
/// range, so two at once would take each other's connections.
const NFT_PATH: &str = "/run/lock/sidetrack-bed-nft.lock";

impl BedLock {
    pub fn take() -> Result<BedLock> {
        Self::take_at(PATH, Duration::from_secs(30))
    }

    /// The lock for root-namespace nftables rules (see [`NFT_PATH`]); an
    /// iptables-mode run may wait for another to finish.
    pub fn take_nft() -> Result<BedLock> {
        Self::take_at(NFT_PATH, Duration::from_secs(300))
    }

    fn take_at(path: &str, wait: Duration) -> Result<BedLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open the test bed lock {path}"))?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(BedLock(file));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("flock {path}"));
            }
            if Instant::now() > deadline {
                bail!("the test bed lock {path} was held by another run for {wait:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
