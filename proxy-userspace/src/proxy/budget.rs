//! The whole proxy's memory budget, and what it does when the budget runs
//! short (as Envoy's overload manager does, in two steps).
//!
//! Every buffer that grows with what peers send is accounted: each
//! connection charges the capacity of its buffers (when it starts, after
//! each request head and each exchange, and gives it back when it ends),
//! and the route cache is reserved at its maximum (`route_cache_max_bytes`).
//! A buffer grows only through [`grow`], which asks the budget first.
//!
//! - From [`SHED_CONNECTIONS_AT`] of the budget on, new connections are
//!   refused (503, at once) and connections going idle give back the room
//!   their buffers grew to.
//! - At the budget, a buffer may not grow: the request that needed it (a
//!   large head, a body copied through userspace) is refused with 503, or,
//!   when its response is under way, its connection is closed. Requests that
//!   fit in a connection's first buffers still go through.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::observe::metrics::ExtraCounters;

/// The share of the budget past which new connections are refused, in
/// per cent.
pub const SHED_CONNECTIONS_AT: usize = 90;

/// What the proxy does at its current use of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// Everything is served.
    Normal,
    /// New connections are refused; idle ones shrink their buffers.
    ShedConnections,
    /// Buffers may not grow either.
    ShedRequests,
}

/// The memory budget: what is charged against it, and what was shed.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    /// Held aside for what is bounded on its own (the route cache).
    reserved: usize,
    used: AtomicUsize,
    shed_connections: AtomicU64,
    shed_requests: AtomicU64,
}

/// A buffer was not allowed to grow: the budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl MemoryBudget {
    /// A budget of `limit` bytes, of which `reserved` are held aside.
    pub fn new(limit: usize, reserved: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            reserved,
            used: AtomicUsize::new(0),
            shed_connections: AtomicU64::new(0),
            shed_requests: AtomicU64::new(0),
        }
    }

    /// Bytes charged now, the reserve included.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed) + self.reserved
    }

    /// Charges `now` bytes in place of `before` (a connection's buffers
    /// after they changed).
    pub fn recharge(&self, before: usize, now: usize) {
        if now > before {
            self.used.fetch_add(now - before, Ordering::Relaxed);
        } else if before > now {
            self.used.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    pub fn pressure(&self) -> Pressure {
        let used = self.used();
        if used >= self.limit {
            Pressure::ShedRequests
        } else if used >= self.limit / 100 * SHED_CONNECTIONS_AT {
            Pressure::ShedConnections
        } else {
            Pressure::Normal
        }
    }

    /// Whether `additional` bytes may be taken now.
    pub fn may_grow(&self, additional: usize) -> bool {
        self.used() + additional <= self.limit
    }

    pub fn count_shed_connection(&self) {
        self.shed_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_shed_request(&self) {
        self.shed_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Makes room for `additional` more bytes in `buf`, if the budget allows
/// what that adds to its capacity: the one way a connection's buffers
/// grow. Room already there costs nothing and is always given.
pub fn grow(buf: &mut Vec<u8>, additional: usize, budget: &MemoryBudget) -> Result<(), OverBudget> {
    if buf.capacity() - buf.len() >= additional {
        return Ok(());
    }
    let grows_by = buf.len() + additional - buf.capacity();
    if !budget.may_grow(grows_by) {
        budget.count_shed_request();
        return Err(OverBudget);
    }
    buf.reserve(additional);
    Ok(())
}

/// The budget in `/metrics`.
pub struct BudgetMetrics(pub std::sync::Arc<super::Shared>);

impl ExtraCounters for BudgetMetrics {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        let b = &self.0.budget;
        out.push((
            "overload_shed_connections",
            "New connections refused because the memory budget was nearly spent",
            b.shed_connections.load(Ordering::Relaxed),
        ));
        out.push((
            "overload_shed_requests",
            "Requests refused or cut because a buffer could not grow within the memory budget",
            b.shed_requests.load(Ordering::Relaxed),
        ));
    }

    fn gauges(&self, out: &mut Vec<(&'static str, &'static str, i64)>) {
        let b = &self.0.budget;
        let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        out.push((
            "memory_budget_bytes",
            "The memory budget (memory.budget_bytes)",
            as_i64(b.limit),
        ));
        out.push((
            "memory_used_bytes",
            "Bytes charged against the memory budget: connection buffers and the route cache's reserve",
            as_i64(b.used()),
        ));
        out.push((
            "overload_state",
            "0: normal; 1: refusing new connections; 2: refusing buffer growth too",
            match b.pressure() {
                Pressure::Normal => 0,
                Pressure::ShedConnections => 1,
                Pressure::ShedRequests => 2,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_rises_with_use_and_falls_back() {
        let b = MemoryBudget::new(1000, 100);
        assert_eq!(b.pressure(), Pressure::Normal);
        b.recharge(0, 800);
        assert_eq!(b.pressure(), Pressure::ShedConnections);
        b.recharge(800, 900);
        assert_eq!(b.pressure(), Pressure::ShedRequests);
        b.recharge(900, 0);
        assert_eq!((b.pressure(), b.used()), (Pressure::Normal, 100));
    }

    #[test]
    fn a_buffer_grows_only_within_the_budget() {
        let b = MemoryBudget::new(10_000, 0);
        let mut buf = Vec::with_capacity(1000);
        buf.extend_from_slice(&[1; 1000]);
        // Room already there is free.
        let mut roomy = Vec::<u8>::with_capacity(100);
        assert_eq!(grow(&mut roomy, 100, &b), Ok(()));
        assert_eq!(grow(&mut buf, 5_000, &b), Ok(()));
        assert!(buf.capacity() >= 6_000);
        b.recharge(0, 9_000);
        assert_eq!(grow(&mut buf, 20_000, &b), Err(OverBudget));
        assert_eq!(b.shed_requests.load(Ordering::Relaxed), 1);
        assert!(buf.capacity() < 20_000);
    }
}
