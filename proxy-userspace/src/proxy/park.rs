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
//! Beside a CPU-bound task the yield does not make the worker wait out
//! that task's slice on tokio: the hand-written loop before it did, and
//! backed off after late yields; measured on tokio, the same back-off
//! changed nothing (12.4k against 12.6k requests a second beside a
//! spinning thread, all on one CPU), so it went. `tests/proxy_yield.rs`
//! keeps the guard: beside a spinning thread, yielding may not cost a
//! multiple of not yielding.

/// The park hook: one `sched_yield`.
pub fn before_park() {
    std::thread::yield_now();
}
