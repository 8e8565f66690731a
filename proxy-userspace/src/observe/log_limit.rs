//! A bound on per-request log lines: a token bucket for the whole process
//! (a burst of `BURST` lines, then `PER_SECOND` a second), so that a
//! client or backend that fails every request cannot make the proxy write
//! a line each. What it holds back is counted
//! (`sidetrack_log_lines_suppressed_total`).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Lines allowed at once.
const BURST: u64 = 50;
/// Lines allowed a second after the burst.
const PER_SECOND: u64 = 10;

static LIMITER: Limiter = Limiter::new();

/// Whether a per-request log line may be written now; when not, it is
/// counted as suppressed.
pub fn allow() -> bool {
    LIMITER.allow(now_ms())
}

/// Per-request log lines held back so far.
pub fn suppressed() -> u64 {
    LIMITER.suppressed.load(Ordering::Relaxed)
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

struct Limiter {
    /// Lines allowed so far, counted against a budget that grows with time.
    spent: AtomicU64,
    suppressed: AtomicU64,
}

impl Limiter {
    const fn new() -> Limiter {
        Limiter {
            spent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn allow(&self, now_ms: u64) -> bool {
        // The budget at `now_ms`: the burst plus what time has earned. The
        // spent count may not fall behind the budget by more than the
        // burst (a quiet hour earns no flood).
        let budget = BURST + now_ms * PER_SECOND / 1000;
        let mut spent = self.spent.load(Ordering::Relaxed);
        loop {
            let floor = budget.saturating_sub(BURST);
            let from = spent.max(floor);
            if from >= budget {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match self.spent.compare_exchange_weak(
                spent,
                from + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => spent = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate() {
        let l = Limiter::new();
        let allowed = (0..200).filter(|_| l.allow(0)).count() as u64;
        assert_eq!(allowed, BURST);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 200 - BURST);
        // A second later, PER_SECOND more.
        let allowed = (0..200).filter(|_| l.allow(1000)).count() as u64;
        assert_eq!(allowed, PER_SECOND);
        // After a quiet hour, one burst again, not an hour's worth.
        let allowed = (0..10_000).filter(|_| l.allow(3_600_000)).count() as u64;
        assert_eq!(allowed, BURST);
    }
}
