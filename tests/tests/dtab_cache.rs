//! The binding cache stays within its capacity however many distinct local
//! dtabs arrive, counts hits and misses exactly, returns what binding
//! returns, and works from many threads.

use std::sync::atomic::{AtomicUsize, Ordering};

use sidetrack::dtab::{BindCache, CompiledDtab, Dtab, NameTree, Namers, Path, bind};

fn local(i: usize) -> Dtab {
    Dtab::parse(&format!(
        "/svc/web => /$/inet/10.0.{}.{}/80",
        i / 250,
        i % 250 + 1
    ))
    .unwrap()
}

#[test]
fn size_never_exceeds_capacity() {
    for capacity in [1, 7, 64, 100, 1000] {
        let cache = BindCache::new(capacity);
        let path = Path::read("/svc/web").unwrap();
        for i in 0..5 * capacity + 10 {
            cache.get_or_bind(&local(i), &path, || Ok(NameTree::Neg));
            assert!(
                cache.stats().len <= capacity,
                "capacity {capacity}: {:?}",
                cache.stats()
            );
        }
        let s = cache.stats();
        assert_eq!(s.len, capacity);
        assert_eq!(s.misses as usize, 5 * capacity + 10);
        assert_eq!(s.hits, 0);
        assert_eq!(s.evictions as usize, 4 * capacity + 10);
    }
}

#[test]
fn hits_and_misses_are_counted_and_results_are_the_bound_ones() {
    let base = CompiledDtab::new(&Dtab::parse("/svc => /$/inet/10.9.9.9/80").unwrap());
    let namers = Namers::default();
    let cache = BindCache::new(100);
    let binds = AtomicUsize::new(0);
    let paths: Vec<Path> = ["/svc/a", "/svc/b", "/svc/c"]
        .iter()
        .map(|p| Path::read(p).unwrap())
        .collect();
    let locals = [Dtab::empty(), local(1)];
    for round in 0..4 {
        for l in &locals {
            for p in &paths {
                let got = cache.get_or_bind(l, p, || {
                    binds.fetch_add(1, Ordering::Relaxed);
                    bind(&base, l, p, &namers)
                });
                assert_eq!(*got, bind(&base, l, p, &namers), "round {round}");
            }
        }
    }
    let s = cache.stats();
    assert_eq!(binds.load(Ordering::Relaxed), 6);
    assert_eq!(s.misses, 6);
    assert_eq!(s.hits, 18);
    assert_eq!(s.len, 6);
    assert_eq!(s.evictions, 0);
    // Equal dtabs parsed separately are the same key.
    let again = Dtab::parse("/svc/web => /$/inet/10.0.0.2/80").unwrap();
    assert_eq!(again, local(1));
    cache.get_or_bind(&again, &paths[0], || unreachable!("cached"));
    assert_eq!(cache.stats().hits, 19);
    cache.clear();
    assert_eq!(cache.stats().len, 0);
}

#[test]
fn recently_used_entries_survive_a_flood_of_new_ones() {
    let cache = BindCache::new(8);
    let hot = Path::read("/svc/hot").unwrap();
    let hot_local = local(0);
    cache.get_or_bind(&hot_local, &hot, || Ok(NameTree::Empty));
    for i in 1..200 {
        // Touch the hot entry between insertions: CLOCK keeps it.
        cache.get_or_bind(&hot_local, &hot, || {
            panic!("the hot entry was evicted at {i}")
        });
        cache.get_or_bind(&local(i), &hot, || Ok(NameTree::Neg));
    }
    assert_eq!(cache.stats().len, 8);
}

#[test]
fn many_threads_share_one_cache_within_its_bound() {
    let cache = BindCache::new(256);
    let path = Path::read("/svc/web").unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (cache, path) = (&cache, &path);
            s.spawn(move || {
                for i in 0..2000 {
                    let l = local((i * 7 + t) % 600);
                    let got = cache.get_or_bind(&l, path, || Ok(NameTree::Neg));
                    assert_eq!(*got, Ok(NameTree::Neg));
                }
            });
        }
    });
    let s = cache.stats();
    assert!(s.len <= 256, "{s:?}");
    assert_eq!(s.hits + s.misses, 8000);
}
