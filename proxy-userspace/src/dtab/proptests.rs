//! Property tests: printing then parsing gives back generated trees and
//! dtabs; the trie (with a local dtab on top) finds the same matches in the
//! same order as the plain last-to-first scan, and so binds and explains
//! alike; random choices follow the weights.

use proptest::prelude::*;
use rand::SeedableRng;

use super::*;

/// Labels from a small alphabet, so that generated prefixes and paths meet.
fn common_label() -> BoxedStrategy<Vec<u8>> {
    prop::sample::select(vec!["a", "b", "c", "#x", "$", "inet", "127.0.0.1", "80"])
        .prop_map(|s| s.as_bytes().to_vec())
        .boxed()
}

/// Any label: common ones, or arbitrary bytes (printed escaped).
fn any_label() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![3 => common_label(), 1 => prop::collection::vec(any::<u8>(), 1..4)].boxed()
}

fn path_of(label: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Path> {
    prop::collection::vec(label, 0..4)
        .prop_map(|ls| Path::from_elems(&ls))
        .boxed()
}

fn inet_leaf() -> impl Strategy<Value = NameTree<Path>> {
    prop::sample::select(vec![
        "/$/inet/127.0.0.1/80",
        "/$/inet/10.0.0.2/81/a",
        "/$/nil",
        "/$/fail",
        "/#/x",
    ])
    .prop_map(|p| NameTree::Leaf(Path::read(p).expect("a valid path")))
}

/// Trees in the printer's normal form: no one-branch alternations or unions,
/// weights with two decimals.
fn tree_of(path: BoxedStrategy<Path>) -> BoxedStrategy<NameTree<Path>> {
    tree_sized(path, 3)
}

fn tree_sized(path: BoxedStrategy<Path>, depth: u32) -> BoxedStrategy<NameTree<Path>> {
    let leaf = prop_oneof![
        6 => path.prop_map(NameTree::Leaf),
        2 => inet_leaf(),
        1 => Just(NameTree::Neg),
        1 => Just(NameTree::Fail),
        1 => Just(NameTree::Empty),
    ];
    leaf.prop_recursive(depth, 8 * depth, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(NameTree::Alt),
            prop::collection::vec((0u32..400, inner), 2..4).prop_map(|ws| {
                NameTree::Union(
                    ws.into_iter()
                        .map(|(k, t)| Weighted::new(f64::from(k) / 100.0, t))
                        .collect(),
                )
            }),
        ]
    })
    .boxed()
}

fn prefix_of(label: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Prefix> {
    let elem = prop_oneof![
        3 => label.prop_map(|l| PrefixElem::Label(l.into())),
        1 => Just(PrefixElem::Any),
    ];
    prop::collection::vec(elem, 0..4)
        .prop_map(Prefix::new)
        .boxed()
}

fn dtab_of(label: BoxedStrategy<Vec<u8>>, entries: std::ops::Range<usize>) -> BoxedStrategy<Dtab> {
    dtab_sized(label, entries, 3)
}

fn dtab_sized(
    label: BoxedStrategy<Vec<u8>>,
    entries: std::ops::Range<usize>,
    depth: u32,
) -> BoxedStrategy<Dtab> {
    let dentry = (prefix_of(label.clone()), tree_sized(path_of(label), depth))
        .prop_map(|(p, t)| Dentry::new(p, t));
    prop::collection::vec(dentry, entries)
        .prop_map(Dtab::new)
        .boxed()
}

proptest! {
    #[test]
    fn trees_round_trip(t in tree_of(path_of(any_label()))) {
        let shown = t.to_string();
        prop_assert_eq!(NameTree::read(&shown).map_err(|e| e.to_string()), Ok(t), "{}", shown);
    }

    #[test]
    fn dtabs_round_trip(d in dtab_of(any_label(), 0..5)) {
        let shown = d.to_string();
        prop_assert_eq!(Dtab::parse(&shown).map_err(|e| e.to_string()), Ok(d), "{}", shown);
    }

    #[test]
    fn trie_matches_equal_the_scan(
        base in dtab_of(common_label(), 0..60),
        local in dtab_of(common_label(), 0..3),
        paths in prop::collection::vec(path_of(common_label()), 1..8),
    ) {
        let compiled = CompiledDtab::new(&base);
        let routing = base.concat(&local);
        for p in &paths {
            prop_assert_eq!(compiled.matching_indices(&local, p), routing.matching_indices(p));
            prop_assert_eq!(compiled.lookup(&local, p), routing.lookup(p));
        }
    }
}

proptest! {
    // Random dtabs loop and fan out a lot, so binding them is slow in debug
    // builds and recurses deeply: fewer cases, on a thread with a big stack.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn trie_binding_equals_the_scan(
        base in dtab_sized(common_label(), 0..16, 1),
        local in dtab_sized(common_label(), 0..3, 1),
        paths in prop::collection::vec(path_of(common_label()), 1..3),
    ) {
        let outcome = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || {
                let compiled = CompiledDtab::new(&base);
                let namers = Namers::default();
                for p in &paths {
                    let (trie, scan) = (bind(&compiled, &local, p, &namers), bind_reference(&base, &local, p, &namers));
                    if trie != scan {
                        return Err(format!("bind {p}: {trie:?} != {scan:?}"));
                    }
                    let (trie, scan) =
                        (delegate(&compiled, &local, p, &namers), delegate_reference(&base, &local, p, &namers));
                    if trie != scan {
                        return Err(format!("delegate {p}: {trie:?} != {scan:?}"));
                    }
                }
                Ok(())
            })
            .expect("a thread")
            .join()
            .expect("no panic");
        prop_assert_eq!(outcome, Ok(()));
    }
}

#[test]
fn random_choices_follow_the_weights() {
    let base = CompiledDtab::new(
        &Dtab::parse(
            "/s => /$/inet/10.0.0.1/80 & 3 * /$/inet/10.0.0.2/80 & 0 * /$/inet/10.0.0.3/80",
        )
        .unwrap(),
    );
    let tree = bind(
        &base,
        &Dtab::empty(),
        &Path::read("/s").unwrap(),
        &Namers::default(),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut counts = [0u32; 3];
    for _ in 0..40_000 {
        match tree.choose(&mut rng) {
            Choice::Leaf(b) => {
                let last = b.endpoints.as_slice()[0].addr.ip().to_string();
                counts
                    [usize::from(last.ends_with(".2")) + 2 * usize::from(last.ends_with(".3"))] +=
                    1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((9_400..10_600).contains(&counts[0]), "{counts:?}");
    assert!((29_400..30_600).contains(&counts[1]), "{counts:?}");
    assert_eq!(counts[2], 0, "a zero weight is never chosen");
}
