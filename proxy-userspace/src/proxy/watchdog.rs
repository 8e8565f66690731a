//! Connection deadlines without a timer per wait.
//!
//! A timer per read (idle keep-alive, request head, backend response) costs
//! a trip through a timer wheel, and, whenever the new deadline is earlier
//! than the one the event loop sleeps towards, a write to its eventfd to
//! wake it: a system call per request. Instead each
//! connection owns a [`Deadline`]: arming it is two atomic stores, waiting
//! under it an atomic waker registration. One sweeper thread per worker
//! wakes every [`TICK`], advances a coarse clock, and fires the deadlines
//! that have passed, and, once the proxy drains, those of idle connections.
//! Deadlines are therefore honoured to within a tick.
//!
//! The sweeper is a thread rather than a task so that the workers' tokio
//! runtimes need no timer driver at all: with one, every park of the loop
//! reads the clock and walks the timer wheel (about a tenth of the proxy's
//! instructions per request, measured when the workers first ran on
//! tokio). Every other wait in a worker (connects, the accept back-off,
//! the shutdown grace) uses [`Watchdog::timeout`].

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use atomic_waker::AtomicWaker;

/// How often the sweeper looks: the precision of every deadline.
pub const TICK: Duration = Duration::from_millis(50);

/// A connection's current deadline.
#[derive(Default)]
pub struct Deadline {
    /// One word, so that the sweeper decides on a snapshot of a wait and
    /// fires it with a compare-and-swap: a wait that ended meanwhile (and
    /// the next one armed) is never fired by a decision about the last.
    /// Bits 0–60: milliseconds on the watchdog's clock, 0 when disarmed;
    /// [`BUSY`]: a connection serving requests at once (HTTP/2) that is
    /// busy now: no time ends its wait, the drain does; [`IDLE`]: waiting
    /// between requests (fired at once when the proxy drains, and the
    /// one idle longest when room is needed); [`FIRED`]: the sweeper
    /// fired this wait.
    state: AtomicU64,
    /// When the current idle wait began, on the watchdog's clock: which
    /// idle connection is the oldest, when one must make room.
    idle_since: AtomicU64,
    waker: AtomicWaker,
}

const BUSY: u64 = 1 << 61;
const IDLE: u64 = 1 << 62;
const FIRED: u64 = 1 << 63;
const AT_MASK: u64 = BUSY - 1;

impl Deadline {
    /// Moves the current wait's deadline to `after` from now: progress on
    /// a body. A wait already fired stays fired; with no wait, nothing.
    pub fn extend(&self, dog: &Watchdog, after: Duration) {
        let state = self.state.load(Ordering::Relaxed);
        let at = (dog.now_ms() + after.as_millis() as u64).min(AT_MASK);
        if state & AT_MASK == 0 || state & FIRED != 0 || state & AT_MASK == at {
            return;
        }
        // Lost only to the sweeper firing it, which stands.
        let _ = self.state.compare_exchange(
            state,
            at | (state & IDLE),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Turns the current wait of a connection that serves requests at once
    /// (an HTTP/2 connection's, which waits the whole connection) idle or
    /// busy. Idle, as between HTTP/1.1 requests: it ends `after` from now,
    /// when it is the one idle longest and room is needed, or at the
    /// drain. Busy: only at the drain. A wait that fired, or ended, stays
    /// as it is.
    pub fn set_idle(&self, dog: &Watchdog, idle: bool, after: Duration) {
        let state = self.state.load(Ordering::Acquire);
        if state & AT_MASK == 0 || state & FIRED != 0 {
            return;
        }
        let next = if idle {
            let now = dog.now_ms();
            self.idle_since.store(now, Ordering::Relaxed);
            let mut at = (now + after.as_millis() as u64).min(AT_MASK);
            if dog.draining() {
                // Past the drain's grace: the next sweep ends it.
                at = at.min(dog.idle_until_ms.load(Ordering::Relaxed).max(1));
            }
            at | IDLE
        } else {
            AT_MASK | BUSY
        };
        // Lost only to the sweeper firing it, which stands.
        let _ = self
            .state
            .compare_exchange(state, next, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Fires the wait `state` describes if it is due at `now`, unless that
    /// wait is over; returns whether it fired.
    fn fire_if_due(&self, state: u64, now: u64, draining: bool) -> bool {
        let at = state & AT_MASK;
        let due = at != 0
            && state & FIRED == 0
            && (at <= now || (draining && state & (IDLE | BUSY) != 0));
        // `draining`: the drain's grace for idle connections is over.
        let fired = due
            && self
                .state
                .compare_exchange(state, state | FIRED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if fired {
            self.waker.wake();
        }
        fired
    }
}

/// The deadline passed while waiting.
#[derive(Debug)]
pub struct Elapsed;

impl Deadline {
    /// Runs `fut` until it completes or the deadline, armed `after` from
    /// now on `dog`'s clock, passes. `idle` marks a wait between requests.
    pub async fn within<F: Future>(
        &self,
        dog: &Watchdog,
        after: Duration,
        idle: bool,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let now = dog.now_ms();
        let mut at = (now + after.as_millis() as u64).min(AT_MASK);
        if idle {
            self.idle_since.store(now, Ordering::Relaxed);
            // Draining: an idle wait lasts at most to the end of the
            // drain's grace for idle connections.
            if dog.draining() {
                let until = dog.idle_until_ms.load(Ordering::Relaxed);
                if now >= until {
                    return Err(Elapsed);
                }
                at = at.min(until);
            }
        }
        self.state
            .store(at | if idle { IDLE } else { 0 }, Ordering::Release);
        let out = Within {
            deadline: self,
            fut,
        }
        .await;
        self.state.store(0, Ordering::Relaxed);
        out
    }
}

pin_project_lite::pin_project! {
    struct Within<'a, F> {
        deadline: &'a Deadline,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        this.deadline.waker.register(cx.waker());
        if this.deadline.state.load(Ordering::Acquire) & FIRED != 0 {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

/// The deadlines of one worker's connections and the coarse clock they use.
pub struct Watchdog {
    start: Instant,
    now_ms: AtomicU64,
    draining: AtomicBool,
    /// While draining: when idle connections' waits end (the clock's ms).
    idle_until_ms: AtomicU64,
    deadlines: Mutex<Vec<Weak<Deadline>>>,
}

impl Default for Watchdog {
    fn default() -> Self {
        // One epoch for every worker's clock, so that their readings
        // compare.
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let start = *EPOCH.get_or_init(Instant::now);
        Watchdog {
            start,
            // At least one tick, so that 0 can mean "disarmed".
            now_ms: AtomicU64::new(TICK.as_millis() as u64 + start.elapsed().as_millis() as u64),
            draining: AtomicBool::new(false),
            idle_until_ms: AtomicU64::new(u64::MAX),
            deadlines: Mutex::default(),
        }
    }
}

impl Watchdog {
    /// A deadline for a new connection (one lock per connection).
    pub fn deadline(&self) -> Arc<Deadline> {
        let d = Arc::new(Deadline::default());
        self.deadlines
            .lock()
            .expect("watchdog lock")
            .push(Arc::downgrade(&d));
        d
    }

    /// The coarse clock: milliseconds since the first watchdog of the
    /// process started (plus one tick), advanced by the sweeper.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// Runs `fut` for at most `after` (to within a tick), on a deadline of
    /// its own: for the rare waits (connects, back-offs, the shutdown
    /// grace), since it costs an allocation and a lock.
    pub async fn timeout<F: Future>(&self, after: Duration, fut: F) -> Result<F::Output, Elapsed> {
        self.deadline().within(self, after, false, fut).await
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on the proxy drains: connections idle between requests (or
    /// before their first) are closed once `idle_grace` has passed, and
    /// those that go idle after then at once. The grace is for a request
    /// already on its way on an idle keep-alive connection: it is served
    /// (and told `Connection: close`) instead of meeting a closed socket.
    pub fn drain(&self, idle_grace: Duration) {
        let until = self.now_ms() + idle_grace.as_millis() as u64;
        self.idle_until_ms.store(until, Ordering::Relaxed);
        self.draining.store(true, Ordering::Release);
        self.sweep();
    }

    /// Ends the wait of the connection that has been idle longest (between
    /// requests, or before its first), as its idle timeout would: for a
    /// new connection at `max_connections`. Returns whether one was found.
    /// Walks every connection of the worker, under the lock: only at the
    /// limit.
    pub fn close_oldest_idle(&self) -> bool {
        let deadlines = self.deadlines.lock().expect("watchdog lock");
        loop {
            let oldest = deadlines
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|d| {
                    let state = d.state.load(Ordering::Acquire);
                    let idle = state & IDLE != 0 && state & FIRED == 0 && state & AT_MASK != 0;
                    idle.then(|| (d.idle_since.load(Ordering::Relaxed), state, d))
                })
                .min_by_key(|(since, ..)| *since);
            let Some((_, state, d)) = oldest else {
                return false;
            };
            // Fires that very wait only: one that ended meanwhile is not
            // idle any more, and the next oldest is looked for.
            if d.state
                .compare_exchange(state, state | FIRED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                d.waker.wake();
                return true;
            }
        }
    }

    /// Advances the clock and fires what is due; forgets closed connections.
    pub fn sweep(&self) {
        let now = TICK.as_millis() as u64 + self.start.elapsed().as_millis() as u64;
        self.now_ms.store(now, Ordering::Relaxed);
        let draining = self.draining() && now >= self.idle_until_ms.load(Ordering::Relaxed);
        let mut deadlines = self.deadlines.lock().expect("watchdog lock");
        deadlines.retain(|weak| {
            let Some(d) = weak.upgrade() else {
                return false;
            };
            d.fire_if_due(d.state.load(Ordering::Acquire), now, draining);
            true
        });
    }

    /// Starts the sweeper thread: it sweeps every [`TICK`] and ends within a
    /// tick of the last handle to the watchdog going away.
    pub fn start_sweeper(self: &Arc<Self>, name: String) -> std::io::Result<()> {
        let dog = Arc::downgrade(self);
        std::thread::Builder::new().name(name).spawn(move || {
            loop {
                std::thread::sleep(TICK);
                let Some(dog) = dog.upgrade() else { return };
                dog.sweep();
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_passed_deadline_ends_the_wait_within_a_tick() {
        let dog = Arc::new(Watchdog::default());
        dog.start_sweeper("test-sweeper".into()).unwrap();
        let d = dog.deadline();
        let started = Instant::now();
        let r = d
            .within(
                &dog,
                Duration::from_millis(100),
                false,
                std::future::pending::<()>(),
            )
            .await;
        assert!(r.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(100) + 4 * TICK,
            "{took:?}"
        );
        // A wait that finishes first is not disturbed, and the deadline is disarmed after.
        let r = d
            .within(&dog, Duration::from_secs(5), false, async { 7 })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(d.state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_decision_about_an_ended_wait_does_not_fire_the_next() {
        let d = Deadline::default();
        // A wait due at 100 ms; the sweeper reads it at 150 ms...
        d.state.store(100, Ordering::Release);
        let seen = d.state.load(Ordering::Acquire);
        // ...the wait ends and the next one is armed before it fires.
        d.state.store(5_000, Ordering::Release);
        assert!(!d.fire_if_due(seen, 150, false));
        assert_eq!(d.state.load(Ordering::Relaxed) & FIRED, 0);
        // On a fresh look the new wait is not due; at its time it fires once.
        assert!(!d.fire_if_due(d.state.load(Ordering::Acquire), 150, false));
        assert!(d.fire_if_due(d.state.load(Ordering::Acquire), 5_000, false));
        assert!(!d.fire_if_due(d.state.load(Ordering::Acquire), 5_050, false));
        // Draining fires an idle wait at once, and only an idle one.
        d.state.store(9_000 | IDLE, Ordering::Release);
        assert!(d.fire_if_due(d.state.load(Ordering::Acquire), 150, true));
        d.state.store(9_000, Ordering::Release);
        assert!(!d.fire_if_due(d.state.load(Ordering::Acquire), 150, true));
    }

    #[test]
    fn a_busy_connection_makes_no_room_and_times_out_never_but_drains() {
        let dog = Watchdog::default();
        let (busy, idle) = (dog.deadline(), dog.deadline());
        for d in [&busy, &idle] {
            d.state.store(60_000 | IDLE, Ordering::Release);
        }
        // The busy one has been idle longest, but is busy now.
        busy.idle_since.store(1, Ordering::Relaxed);
        idle.idle_since.store(2, Ordering::Relaxed);
        busy.set_idle(&dog, false, Duration::from_secs(60));
        assert!(dog.close_oldest_idle());
        assert_ne!(idle.state.load(Ordering::Relaxed) & FIRED, 0);
        assert_eq!(busy.state.load(Ordering::Relaxed) & FIRED, 0);
        assert!(!dog.close_oldest_idle(), "a busy connection makes no room");
        let state = busy.state.load(Ordering::Acquire);
        assert!(
            !busy.fire_if_due(state, AT_MASK - 1, false),
            "no time ends it"
        );
        assert!(busy.fire_if_due(state, 150, true), "the drain does");
        // Idle again: its idle time starts now, and it makes room.
        busy.state.store(AT_MASK | BUSY, Ordering::Release);
        busy.set_idle(&dog, true, Duration::from_secs(60));
        let state = busy.state.load(Ordering::Relaxed);
        assert_eq!(state & (IDLE | BUSY), IDLE);
        assert_eq!(busy.idle_since.load(Ordering::Relaxed), dog.now_ms());
        assert!(dog.close_oldest_idle());
        // A disarmed or fired wait stays as it is.
        let d = Deadline::default();
        d.set_idle(&dog, false, Duration::from_secs(1));
        assert_eq!(d.state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn timeouts_need_no_timer_driver() {
        // The workers' runtime has no timer driver: the sweeper thread
        // wakes its tasks.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let dog = Arc::new(Watchdog::default());
        dog.start_sweeper("test-sweeper".into()).unwrap();
        let started = Instant::now();
        let r = rt.block_on(dog.timeout(Duration::from_millis(120), std::future::pending::<()>()));
        assert!(r.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(120) && took < Duration::from_millis(120) + 4 * TICK,
            "{took:?}"
        );
        assert_eq!(
            rt.block_on(dog.timeout(Duration::from_secs(5), async { 3 }))
                .unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn draining_ends_idle_waits_only() {
        let dog = Arc::new(Watchdog::default());
        let (idle, busy) = (dog.deadline(), dog.deadline());
        let d2 = dog.clone();
        let idle_wait = tokio::spawn(async move {
            idle.within(
                &d2,
                Duration::from_secs(60),
                true,
                std::future::pending::<()>(),
            )
            .await
            .is_err()
        });
        let d3 = dog.clone();
        let busy_wait = tokio::spawn(async move {
            busy.within(
                &d3,
                Duration::from_secs(60),
                false,
                tokio::time::sleep(Duration::from_millis(200)),
            )
            .await
            .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        dog.drain(Duration::ZERO);
        assert!(idle_wait.await.unwrap(), "the idle wait ended");
        assert!(busy_wait.await.unwrap(), "the busy wait finished normally");
        // Closed connections are forgotten at the next sweep.
        dog.sweep();
        assert!(dog.deadlines.lock().unwrap().is_empty());
    }
}
