//! Binding through the compiled trie against the plain last-to-first scan.
//!
//! Each bind follows a 3-step rewrite chain in the base dtab plus a 2-entry
//! per-request override (`/svc/web` -> `/k8s/prod/web` -> `/srv/web-v1`,
//! overridden to `/srv/web-v2` -> `/$/inet/...`), against base dtabs of 10,
//! 1,000 and 100,000 entries. The memory of each compiled trie is printed.
//!
//! `cargo bench -p sidetrack --bench dtab`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sidetrack::dtab::{CompiledDtab, Dtab, NameTree, Namers, Path, bind, bind_reference};

/// The chain first (so a scan passes every filler entry), then fillers that
/// share the chain's first labels, as a real dtab's services do.
fn base_dtab(entries: usize) -> Dtab {
    let mut text = String::from(
        "/svc => /k8s/prod;\n/k8s/prod/web => /srv/web-v1;\n/srv/web-v1 => /$/inet/10.0.0.1/8080;\n",
    );
    for i in 0..entries.saturating_sub(3) {
        let (a, b) = (i / 250 % 250, i % 250);
        match i % 3 {
            0 => text.push_str(&format!("/svc/host{i} => /k8s/ns{}/svc{i};\n", i % 50)),
            1 => text.push_str(&format!(
                "/k8s/ns{}/svc{i} => /$/inet/10.{a}.{b}.1/80;\n",
                i % 50
            )),
            _ => text.push_str(&format!(
                "/srv/*/v{i} => /$/inet/10.{a}.{b}.2/80 & 2 * /$/inet/10.{a}.{b}.3/80;\n"
            )),
        }
    }
    let dtab = Dtab::parse(&text).expect("the bench dtab parses");
    assert_eq!(dtab.len(), entries.max(3));
    dtab
}

fn bench(c: &mut Criterion) {
    let local =
        Dtab::parse("/srv/web-v1 => /srv/web-v2; /srv/web-v2 => /$/inet/10.0.0.2/8080").unwrap();
    let path = Path::read("/svc/web").unwrap();
    let namers = Namers::default();
    let mut group = c.benchmark_group("bind");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    for entries in [10, 1_000, 100_000] {
        let base = base_dtab(entries);
        let compiled = CompiledDtab::new(&base);
        let want = bind(&compiled, &local, &path, &namers).unwrap();
        assert_eq!(want, bind_reference(&base, &local, &path, &namers).unwrap());
        let NameTree::Leaf(b) = &want else {
            panic!("{want:?}")
        };
        assert_eq!(b.endpoints.as_slice()[0].addr.to_string(), "10.0.0.2:8080");
        println!(
            "dtab of {entries} entries: trie {} bytes ({} nodes), trie plus dentries {} bytes",
            compiled.trie_bytes(),
            compiled.node_count(),
            compiled.total_bytes()
        );
        group.bench_with_input(BenchmarkId::new("trie", entries), &entries, |b, _| {
            b.iter(|| bind(black_box(&compiled), &local, black_box(&path), &namers))
        });
        group.bench_with_input(BenchmarkId::new("scan", entries), &entries, |b, _| {
            b.iter(|| bind_reference(black_box(&base), &local, black_box(&path), &namers))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
