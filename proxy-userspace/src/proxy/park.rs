//! What a worker does just before its runtime parks the thread in
//! `epoll_wait`: yield the CPU once (`yield_before_wait`, on by default).
//!
//! A client or backend that shares the worker's CPU then runs at once, and
//! the worker usually finds its answer waiting instead of sleeping and
//! being woken for it: on one CPU that saves a sleep and a wake-up per
//! request. Where the peer runs on another CPU the yield comes straight
//! back, one system call spent while the peer works. `sched_yield` passes
//! the CPU only within the caller's CPU cgroup, so a peer in a pod (a CPU
//! cgroup of its own) gains less (docs/bench.md has the numbers).
//!
//! A yield that lasts longer than [`LONG_YIELD`] means something else on
//! this CPU ran that long: a CPU-bound task, which the scheduler lets
//! finish its slice before the yielded worker runs again, even when its
//! events came meanwhile (a sleeping worker would have been woken and
//! could have preempted it); or a peer whose answer takes that long, when
//! the yield saves nothing worth having anyway. Each long yield doubles
//! the number of parks that then skip the yield (up to
//! [`MAX_YIELD_BACKOFF`]), each short one halves it.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A yield longer than this gave the CPU to something busier than a peer.
const LONG_YIELD: Duration = Duration::from_micros(200);
/// The most parks in a row that skip the yield after long ones.
const MAX_YIELD_BACKOFF: u32 = 4096;

/// One worker's yield state. Only the worker's thread touches it (tokio's
/// park hook must be `Sync`, hence atomics, all relaxed and uncontended).
#[derive(Debug, Default)]
pub struct YieldBeforePark {
    /// Parks left to go without yielding.
    skip: AtomicU32,
    /// What the last long yield set `skip` to.
    backoff: AtomicU32,
}

impl YieldBeforePark {
    /// Called by the runtime before it parks.
    pub fn before_park(&self) {
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            return;
        }
        let start = Instant::now();
        std::thread::yield_now();
        let took = start.elapsed();
        self.after_yield(took);
    }

    fn after_yield(&self, took: Duration) {
        let backoff = self.backoff.load(Ordering::Relaxed);
        let backoff = if took > LONG_YIELD {
            (backoff * 2).clamp(1, MAX_YIELD_BACKOFF)
        } else {
            backoff / 2
        };
        self.backoff.store(backoff, Ordering::Relaxed);
        self.skip.store(backoff, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_yields_back_off_and_short_ones_come_back() {
        let y = YieldBeforePark::default();
        let long = LONG_YIELD * 2;
        y.after_yield(long);
        assert_eq!(y.skip.load(Ordering::Relaxed), 1);
        for want in [2, 4, 8] {
            y.after_yield(long);
            assert_eq!(y.skip.load(Ordering::Relaxed), want);
        }
        for _ in 0..20 {
            y.after_yield(long);
        }
        assert_eq!(y.skip.load(Ordering::Relaxed), MAX_YIELD_BACKOFF);
        // Skipped parks count down without yielding.
        y.skip.store(2, Ordering::Relaxed);
        y.before_park();
        y.before_park();
        assert_eq!(y.skip.load(Ordering::Relaxed), 0);
        // Short yields halve the back-off.
        y.backoff.store(8, Ordering::Relaxed);
        y.after_yield(Duration::ZERO);
        assert_eq!(y.skip.load(Ordering::Relaxed), 4);
        y.after_yield(Duration::ZERO);
        y.after_yield(Duration::ZERO);
        y.after_yield(Duration::ZERO);
        assert_eq!(y.skip.load(Ordering::Relaxed), 0);
    }
}
