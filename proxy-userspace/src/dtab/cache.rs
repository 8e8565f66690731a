//! A bounded cache of binding results, keyed by (local dtab, path), for one
//! base dtab and one set of namers (replace the cache when either changes).
//!
//! Requests choose their local dtab, so the key space is theirs to grow: the
//! cache holds at most `capacity` entries and at most `max_bytes` of their
//! stated weights, and evicts with CLOCK (second chance) beyond either. An
//! entry heavier than a shard's share of the bytes is not stored at all. It
//! is split into shards, each behind a read-write lock; a hit takes only the
//! read lock, sets the entry's reference bit and clones an `Arc`. Binding on
//! a miss happens outside any lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// foldhash rather than std's SipHash: the router hashes its key (the raw
/// dtab headers and the name) on every request, twice (shard, then map),
/// and SipHash was a few percent of the proxy's instructions. foldhash is
/// seeded per instance and only "minimally" HashDoS-resistant; the cache is
/// bounded, so colliding keys can slow at most `capacity` entries' shard.
type RandomState = foldhash::quality::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::bind::BindResult;
use super::entry::Dtab;
use super::path::Path;

const MAX_SHARDS: usize = 16;

/// Counters and size of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub len: usize,
    pub capacity: usize,
    /// The summed weights of the entries held (bytes, as their inserter stated).
    pub bytes: usize,
    pub max_bytes: usize,
}

/// Binding results by (local dtab, path).
pub struct BindCache {
    inner: ClockCache<(Dtab, Path), Arc<BindResult>>,
}

impl BindCache {
    /// A cache of at most `capacity` results (0 caches nothing).
    pub fn new(capacity: usize) -> BindCache {
        BindCache {
            inner: ClockCache::new(capacity),
        }
    }

    /// The cached result for (`local`, `path`), or `bind()`'s, which is then cached.
    pub fn get_or_bind(
        &self,
        local: &Dtab,
        path: &Path,
        bind: impl FnOnce() -> BindResult,
    ) -> Arc<BindResult> {
        let key = (local.clone(), path.clone());
        self.inner.get_or_insert_with(key, || Arc::new(bind()))
    }

    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// Forgets every entry (counters are kept).
    pub fn clear(&self) {
        self.inner.clear()
    }
}

/// A thread-safe map of bounded size with CLOCK eviction.
pub struct ClockCache<K, V> {
    shards: Box<[RwLock<Shard<K, V>>]>,
    hasher: RandomState,
    capacity: usize,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

struct Shard<K, V> {
    map: HashMap<K, usize, RandomState>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
    capacity: usize,
    bytes: usize,
    max_bytes: usize,
}

struct Slot<K, V> {
    key: K,
    value: V,
    weight: usize,
    referenced: AtomicBool,
}

impl<K: Hash + Eq + Clone, V: Clone> ClockCache<K, V> {
    /// A cache of at most `capacity` entries, whatever their weight.
    pub fn new(capacity: usize) -> ClockCache<K, V> {
        ClockCache::with_budget(capacity, usize::MAX)
    }

    /// A cache of at most `capacity` entries whose weights (see
    /// [`ClockCache::insert_weighted`]) sum to at most `max_bytes`.
    pub fn with_budget(capacity: usize, max_bytes: usize) -> ClockCache<K, V> {
        // Shards hold at least 64 entries (so small caches evict exactly by
        // CLOCK); they get capacity / n each, the first capacity % n one
        // more, and the bytes alike.
        let n = (capacity / 64).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|i| {
                let capacity = capacity / n + usize::from(i < capacity % n);
                let max_bytes = max_bytes / n + usize::from(i < max_bytes % n);
                // The slots grow as entries come: a byte budget may hold
                // far fewer than `capacity`.
                let reserve = capacity.min(1024);
                RwLock::new(Shard {
                    map: HashMap::with_capacity_and_hasher(reserve, RandomState::default()),
                    slots: Vec::with_capacity(reserve),
                    hand: 0,
                    capacity,
                    bytes: 0,
                    max_bytes,
                })
            })
            .collect();
        ClockCache {
            shards,
            hasher: RandomState::default(),
            capacity,
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<Shard<K, V>> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h as usize) % self.shards.len()]
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.get_fresh(key, |_| true)
    }

    /// [`ClockCache::get`] by a borrowed form of the key (`&[u8]` for a
    /// `Box<[u8]>` key), so a lookup need not build an owned key; an entry
    /// `fresh` refuses (a stale route, say) is a miss, and counted as one.
    pub fn get_fresh<Q>(&self, key: &Q, fresh: impl FnOnce(&V) -> bool) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Borrow's contract: a key and its borrowed form hash alike.
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        let found = shard.map.get(key).and_then(|&i| {
            let slot = &shard.slots[i];
            if !fresh(&slot.value) {
                return None;
            }
            slot.referenced.store(true, Ordering::Relaxed);
            Some(slot.value.clone())
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Counts a miss for a lookup the caller skipped (a key it does not cache).
    pub fn count_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.get(&key) {
            return v;
        }
        let value = make();
        self.insert(key, value.clone());
        value
    }

    /// Stores `value` under `key` with a weight of 0 (see
    /// [`ClockCache::insert_weighted`]).
    pub fn insert(&self, key: K, value: V) {
        self.insert_weighted(key, value, 0);
    }

    /// Stores `value` under `key`, replacing the value of an entry that is
    /// there (a stale one, say), or evicting unreferenced entries until the
    /// shard has a free slot and room for `weight` bytes (the caller's
    /// measure of what the entry holds, key included). An entry heavier
    /// than the shard's share of the bytes is not stored. Returns whether
    /// it was.
    pub fn insert_weighted(&self, key: K, value: V, weight: usize) -> bool {
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if shard.capacity == 0 || weight > shard.max_bytes {
            return false;
        }
        if let Some(&i) = shard.map.get(&key) {
            // The new value may weigh more: take the old one out and
            // insert afresh below.
            shard.evict(i);
        }
        // Sweep: clear reference bits until unreferenced entries turn up,
        // and evict them until there is room.
        while shard.slots.len() >= shard.capacity || shard.bytes + weight > shard.max_bytes {
            let hand = shard.hand % shard.slots.len();
            if shard.slots[hand].referenced.swap(false, Ordering::Relaxed) {
                shard.hand = (hand + 1) % shard.slots.len();
            } else {
                shard.evict(hand);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.map.insert(key.clone(), shard.slots.len());
        shard.slots.push(Slot {
            key,
            value,
            weight,
            referenced: AtomicBool::new(false),
        });
        shard.bytes += weight;
        true
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).slots.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.write().unwrap_or_else(|e| e.into_inner());
            s.map.clear();
            s.slots.clear();
            s.hand = 0;
            s.bytes = 0;
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            len: self.len(),
            capacity: self.capacity,
            bytes: self
                .shards
                .iter()
                .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).bytes)
                .sum(),
            max_bytes: self.max_bytes,
        }
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
    /// Removes the entry in slot `i`: the last slot moves into its place,
    /// and the hand stays, so that entry is looked at next.
    fn evict(&mut self, i: usize) {
        let old = self.slots.swap_remove(i);
        self.map.remove(&old.key);
        self.bytes -= old.weight;
        if let Some(moved) = self.slots.get(i)
            && let Some(index) = self.map.get_mut(&moved.key)
        {
            *index = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_gives_referenced_entries_a_second_chance() {
        let c = ClockCache::<u32, u32>::new(2);
        c.insert(1, 10);
        c.insert(2, 20);
        assert_eq!(c.get(&1), Some(10));
        c.insert(3, 30); // 1 was referenced and is spared; 2 goes
        assert_eq!(c.get(&1), Some(10));
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), Some(30));
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_second_insert_replaces_the_value() {
        let c = ClockCache::<u32, u32>::new(2);
        c.insert(1, 10);
        c.insert(1, 11);
        assert_eq!(c.get(&1), Some(11));
        assert_eq!(c.len(), 1);
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn an_entry_refused_as_stale_is_a_miss() {
        let c = ClockCache::<u32, u32>::new(2);
        c.insert(1, 10);
        assert_eq!(c.get_fresh(&1, |v| *v == 10), Some(10));
        assert_eq!(c.get_fresh(&1, |v| *v == 11), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
    }

    #[test]
    fn weights_stay_within_the_byte_budget() {
        // One shard (capacity < 128) of 1,000 bytes.
        let c = ClockCache::<u32, u32>::with_budget(100, 1_000);
        for i in 0..50 {
            assert!(c.insert_weighted(i, i, 300));
            let s = c.stats();
            assert!(s.bytes <= 1_000, "{s:?}");
            assert_eq!(s.len, (i as usize + 1).min(3));
        }
        assert_eq!(c.stats().bytes, 900);
        // One too heavy for the budget is not kept, and evicts nothing.
        assert!(!c.insert_weighted(99, 99, 1_001));
        assert_eq!(c.get(&99), None);
        assert_eq!(c.stats().len, 3);
        // A light one fits beside them; the next heavy one evicts only
        // what makes room.
        assert!(c.insert_weighted(100, 100, 10));
        assert_eq!((c.stats().len, c.stats().bytes), (4, 910));
        assert!(c.insert_weighted(101, 101, 300));
        let s = c.stats();
        assert!(s.bytes <= 1_000 && s.bytes >= 700 && s.len >= 3, "{s:?}");
    }

    #[test]
    fn a_referenced_entry_survives_heavy_inserts() {
        let c = ClockCache::<u32, u32>::with_budget(100, 1_000);
        c.insert_weighted(0, 0, 100);
        for i in 1..20 {
            assert_eq!(c.get(&0), Some(0));
            c.insert_weighted(i, i, 400);
        }
        assert_eq!(c.get(&0), Some(0));
        assert!(c.stats().bytes <= 1_000);
    }

    #[test]
    fn replacing_an_entry_reweighs_it() {
        let c = ClockCache::<u32, u32>::with_budget(100, 1_000);
        c.insert_weighted(1, 1, 600);
        c.insert_weighted(1, 2, 700);
        assert_eq!(c.get(&1), Some(2));
        assert_eq!(c.stats().bytes, 700);
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let c = ClockCache::<u32, u32>::new(0);
        assert_eq!(c.get_or_insert_with(1, || 5), 5);
        assert_eq!(c.get(&1), None);
        assert_eq!(c.len(), 0);
    }
}
