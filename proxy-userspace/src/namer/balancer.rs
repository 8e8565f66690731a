//! Backends (addresses with what the proxy learns of them) and the
//! balancer that picks one per request.
//!
//! A [`Backend`] is one backend address with the state the proxy learns
//! about it: a peak-EWMA of its response latency, the requests in flight, an
//! ejection deadline after a failed connect. Backends are shared by address across bindings (see
//! [`BackendRegistry`]) so that what is learnt survives a dtab or namer
//! change.
//!
//! [`Balancer::pick`] is power of two choices: draw two backends (by
//! weight), take the one with the lower cost `ewma × (in_flight + 1) / weight`.
//! Everything on this path is atomics; no lock, no allocation.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;

/// The decay time of the latency average: what happened this long ago
/// weighs 1/e of what happens now.
const EWMA_TAU_NS: f64 = 10e9;
/// The latency assumed for an backend never measured (1 ms): a new backend
/// looks neither free nor dead.
const EWMA_INITIAL_NS: f64 = 1e6;

/// e^-x for x >= 0. Between a backend's requests x is usually tiny (µs
/// over a 10 s decay time), where three terms of the series are exact to
/// within x³/6 < 2e-7 of the weight and cost far less than `exp`.
fn decay(x: f64) -> f64 {
    if x < 0.01 {
        1.0 - x + x * x / 2.0
    } else {
        (-x).exp()
    }
}

fn clock_ns() -> u64 {
    clock_ns_at(Instant::now())
}

/// `at` in nanoseconds since the first use of the clock.
fn clock_ns_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// One backend address and what the proxy knows of it.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    ewma_ns: AtomicU64, // f64 bits
    stamp_ns: AtomicU64,
    in_flight: AtomicU32,
    ejected_until_ns: AtomicU64,
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            ewma_ns: AtomicU64::new(EWMA_INITIAL_NS.to_bits()),
            stamp_ns: AtomicU64::new(clock_ns()),
            in_flight: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latency average, decayed to now, in nanoseconds.
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request as started now; the guard records its latency when
    /// it is told the request finished, and always ends the in-flight count.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(Instant::now())
    }

    /// [`Backend::start`] for a request that started at `started` (the
    /// proxy reads the clock once when a request arrives).
    pub fn start_at(self: &Arc<Self>, started: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self.clone(),
            started,
        }
    }

    /// Folds one observed latency into the peak-EWMA: a latency above the
    /// average replaces it at once (peak), a lower one is blended in with a
    /// weight that grows with the time since the last observation.
    pub fn observe(&self, latency: Duration) {
        self.observe_at(latency, Instant::now());
    }

    /// [`Backend::observe`] for a latency that ended at `now`.
    pub fn observe_at(&self, latency: Duration, now: Instant) {
        let rtt = latency.as_nanos() as f64;
        let now = clock_ns_at(now);
        let then = self.stamp_ns.swap(now, Ordering::Relaxed);
        let old = self.ewma_ns();
        let new = if rtt > old {
            rtt
        } else {
            let w = decay(now.saturating_sub(then) as f64 / EWMA_TAU_NS);
            old * w + rtt * (1.0 - w)
        };
        // A lost race only loses one sample.
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Takes the backend out of rotation for `backoff` (after a failed connect).
    pub fn eject(&self, backoff: Duration) {
        let until = clock_ns() + backoff.as_nanos() as u64;
        self.ejected_until_ns.store(until, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        // Never ejected (the usual case) needs no clock.
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        until != 0 && until > clock_ns()
    }

    fn cost(&self, weight: f64) -> f64 {
        self.ewma_ns() * f64::from(self.in_flight() + 1) / weight.max(f64::MIN_POSITIVE)
    }
}

/// Ends an in-flight request on drop; [`InFlight::finish`] also records its latency.
pub struct InFlight {
    backend: Arc<Backend>,
    started: Instant,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Ends the request at `now`: records and returns its latency.
    pub fn finish(self, now: Instant) -> Duration {
        let took = now.saturating_duration_since(self.started);
        self.backend.observe_at(took, now);
        took
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends of one bound name with their weights.
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    backends: Arc<[(Arc<Backend>, f64)]>,
    total_weight: f64,
}

impl Balancer {
    pub fn new(backends: Vec<(Arc<Backend>, f64)>) -> Self {
        let backends: Vec<_> = backends.into_iter().filter(|(_, w)| *w > 0.0).collect();
        let total_weight = backends.iter().map(|(_, w)| w).sum();
        Balancer {
            backends: backends.into(),
            total_weight,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn backends(&self) -> impl Iterator<Item = &(Arc<Backend>, f64)> {
        self.backends.iter()
    }

    /// Picks an backend, avoiding ejected ones while any other is left.
    pub fn pick(&self, rng: &mut impl Rng) -> Option<&Arc<Backend>> {
        match self.backends.len() {
            0 => None,
            1 => Some(&self.backends[0].0),
            _ => {
                let a = self.draw(rng);
                let b = self.draw(rng);
                let (ea, wa) = &self.backends[a];
                let (eb, wb) = &self.backends[b];
                let pick = match (ea.is_ejected(), eb.is_ejected()) {
                    (false, true) => a,
                    (true, false) => b,
                    (true, true) => return self.first_live().or(Some(ea)),
                    (false, false) => {
                        if eb.cost(*wb) < ea.cost(*wa) {
                            b
                        } else {
                            a
                        }
                    }
                };
                Some(&self.backends[pick].0)
            }
        }
    }

    /// One index drawn with probability proportional to its weight.
    fn draw(&self, rng: &mut impl Rng) -> usize {
        let mut x = rng.random::<f64>() * self.total_weight;
        for (i, (_, w)) in self.backends.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        self.backends.len() - 1
    }

    fn first_live(&self) -> Option<&Arc<Backend>> {
        self.backends
            .iter()
            .map(|(e, _)| e)
            .find(|e| !e.is_ejected())
    }
}

/// Backends by address, so that bindings made at different times share one
/// [`Backend`] (its latency and ejection). Entries go
/// when the last binding that uses the backend is dropped.
#[derive(Default)]
pub struct BackendRegistry {
    by_addr: Mutex<HashMap<SocketAddr, Weak<Backend>>>,
}

impl BackendRegistry {
    /// The backend for `addr`, made if no live binding has it. Called when a
    /// name is bound, never per request.
    pub fn get(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut map = self.by_addr.lock().expect("backend registry lock");
        if let Some(e) = map.get(&addr).and_then(Weak::upgrade) {
            return e;
        }
        if map.len() > 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let e = Arc::new(Backend::new(addr));
        map.insert(addr, Arc::downgrade(&e));
        e
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::SmallRng};

    use super::*;

    fn ep(port: u16) -> Arc<Backend> {
        Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    #[test]
    fn weights_split_picks_in_proportion() {
        let b = Balancer::new(vec![(ep(1), 3.0), (ep(2), 1.0)]);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..20_000 {
            let i = b.draw(&mut rng);
            counts[i] += 1;
        }
        let share = f64::from(counts[0]) / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let (fast, slow) = (ep(1), ep(2));
        fast.observe(Duration::from_micros(100));
        slow.observe(Duration::from_millis(50));
        let b = Balancer::new(vec![(fast.clone(), 1.0), (slow.clone(), 1.0)]);
        let mut rng = SmallRng::seed_from_u64(1);
        let fast_picks = (0..1000)
            .filter(|_| Arc::ptr_eq(b.pick(&mut rng).unwrap(), &fast))
            .count();
        // Only a draw of (slow, slow) picks slow: about a quarter.
        assert!((700..=800).contains(&fast_picks), "{fast_picks}");
    }

    #[test]
    fn in_flight_requests_raise_the_cost() {
        let (a, b) = (ep(1), ep(2));
        let held: Vec<_> = (0..10).map(|_| a.start()).collect();
        let bal = Balancer::new(vec![(a.clone(), 1.0), (b.clone(), 1.0)]);
        let mut rng = SmallRng::seed_from_u64(3);
        let b_picks = (0..1000)
            .filter(|_| Arc::ptr_eq(bal.pick(&mut rng).unwrap(), &b))
            .count();
        assert!(b_picks > 700, "{b_picks}");
        drop(held);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn ejected_endpoints_are_avoided_until_the_backoff_ends() {
        let (a, b) = (ep(1), ep(2));
        a.eject(Duration::from_millis(50));
        let bal = Balancer::new(vec![(a.clone(), 1.0), (b.clone(), 1.0)]);
        let mut rng = SmallRng::seed_from_u64(5);
        assert!((0..200).all(|_| Arc::ptr_eq(bal.pick(&mut rng).unwrap(), &b)));
        std::thread::sleep(Duration::from_millis(60));
        assert!((0..200).any(|_| Arc::ptr_eq(bal.pick(&mut rng).unwrap(), &a)));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = ep(1);
        e.observe(Duration::from_millis(10));
        assert_eq!(e.ewma_ns(), 10e6);
        e.observe(Duration::from_micros(1));
        assert!(e.ewma_ns() <= 10e6 && e.ewma_ns() > 1e3);
    }

    #[test]
    fn registry_shares_live_endpoints() {
        let r = BackendRegistry::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let a = r.get(addr);
        assert!(Arc::ptr_eq(&a, &r.get(addr)));
        drop(a);
        let b = r.get(addr);
        assert_eq!(Arc::strong_count(&b), 1);
    }
}
