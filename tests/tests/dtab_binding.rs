//! Conformance of lookup and binding with Finagle's rules: lookup order,
//! wildcards, suffixes, alternation and union, neg/fail/empty, the depth
//! limit, built-in and configured namers, per-request dtabs, and choosing a
//! destination. Every binding is made both through the compiled trie and by
//! the reference scan, and the two must agree.

use std::net::SocketAddr;
use std::sync::Arc;

use sidetrack::dtab::{
    BindError, BindResult, Bound, Choice, CompiledDtab, Dtab, Endpoint, Endpoints, MAX_DEPTH,
    NameTree, Namer, NamerBound, NamerError, NamerSet, Namers, Path, bind, bind_reference,
};

fn path(s: &str) -> Path {
    Path::read(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn dtab(s: &str) -> Dtab {
    Dtab::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn bind_with(base: &str, local: &str, p: &str, namers: &dyn NamerSet) -> BindResult {
    let (base, local, p) = (dtab(base), dtab(local), path(p));
    let via_trie = bind(&CompiledDtab::new(&base), &local, &p, namers);
    let via_scan = bind_reference(&base, &local, &p, namers);
    assert_eq!(via_trie, via_scan, "trie and scan disagree on {p}");
    via_trie
}

fn resolve(base: &str, p: &str) -> BindResult {
    bind_with(base, "", p, &Namers::default())
}

/// A bound tree in brief: leaves as `addr` plus `residual` when not `/`.
fn brief(t: &NameTree<Bound>) -> String {
    match t {
        NameTree::Leaf(b) => {
            let addrs: Vec<String> = b
                .endpoints
                .as_slice()
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
            let mut s = addrs.join(",");
            if !b.residual.is_empty() {
                s.push_str(&b.residual.to_string());
            }
            s
        }
        NameTree::Union(ws) => {
            let parts: Vec<String> = ws
                .iter()
                .map(|w| format!("{}*{}", w.weight, brief(&w.tree)))
                .collect();
            format!("({})", parts.join(" & "))
        }
        NameTree::Alt(ts) => format!(
            "alt({})",
            ts.iter().map(brief).collect::<Vec<_>>().join(" | ")
        ),
        NameTree::Neg => "~".into(),
        NameTree::Fail => "!".into(),
        NameTree::Empty => "$".into(),
    }
}

fn ok(base: &str, p: &str) -> String {
    brief(&resolve(base, p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

const A: &str = "/$/inet/10.0.0.1/80";
const B: &str = "/$/inet/10.0.0.2/80";

#[test]
fn lookup_gathers_every_match_last_first_with_the_suffix_appended() {
    let d = dtab("/=>/x; /a=>/y; /a/b=>/z; /a/c=>/w; /a/b=>/v");
    assert_eq!(d.matching_indices(&path("/a/b/c")), vec![4, 2, 1, 0]);
    assert_eq!(
        d.lookup(&path("/a/b/c")).to_string(),
        "/v/c | /z/c | /y/b/c | /x/a/b/c"
    );
    assert_eq!(d.lookup(&path("/q")).to_string(), "/x/q");
    assert_eq!(dtab("/a=>/b").lookup(&path("/c")), NameTree::Neg);
    // Labels match whole: /ab is not a prefix of /abc.
    assert_eq!(dtab("/ab=>/x").lookup(&path("/abc")), NameTree::Neg);
    // The suffix goes onto every leaf of the destination tree.
    assert_eq!(
        dtab("/a => /b & (/c | 2 * /d & $)")
            .lookup(&path("/a/x/y"))
            .to_string(),
        "/b/x/y & (/c/x/y | 2.00*/d/x/y & $)"
    );
}

#[test]
fn wildcards_match_exactly_one_element() {
    let d = dtab("/a/*/c => /d");
    assert_eq!(d.lookup(&path("/a/b/c/e/f")).to_string(), "/d/e/f");
    assert_eq!(d.lookup(&path("/a/zz/c")).to_string(), "/d");
    assert_eq!(d.lookup(&path("/a/c")), NameTree::Neg);
    assert_eq!(d.lookup(&path("/a/b/x/c")), NameTree::Neg);
    assert_eq!(dtab("/* => /x").lookup(&path("/")), NameTree::Neg);
    assert_eq!(
        dtab("/*/* => /x").lookup(&path("/p/q/r")).to_string(),
        "/x/r"
    );
}

#[test]
fn the_later_dentry_wins_and_neg_falls_through_to_earlier_ones() {
    let base = format!("/s => {A}; /s => {B}");
    assert_eq!(ok(&base, "/s"), "10.0.0.2:80");
    assert_eq!(
        ok(&format!("/s => {A}; /s => /missing"), "/s"),
        "10.0.0.1:80"
    );
    assert_eq!(ok(&format!("/s => {A}; /s => ~"), "/s"), "10.0.0.1:80");
    assert_eq!(
        ok(&format!("/s => {A}; /s => /nothing | ~"), "/s/x"),
        "10.0.0.1:80/x"
    );
    // Neither rewrite binds: neg.
    assert_eq!(ok("/s => /m1; /s => /m2", "/s"), "~");
    assert_eq!(ok("", "/s"), "~");
}

#[test]
fn alternation_neg_falls_through_fail_stops_empty_answers() {
    assert_eq!(ok(&format!("/s => ~ | {A}"), "/s"), "10.0.0.1:80");
    assert_eq!(ok(&format!("/s => /gone | {A}"), "/s"), "10.0.0.1:80");
    assert_eq!(ok(&format!("/s => ! | {A}"), "/s"), "!");
    assert_eq!(ok(&format!("/s => $ | {A}"), "/s"), "$");
    assert_eq!(ok(&format!("/s => /$/nil | {A}"), "/s"), "$");
    assert_eq!(ok(&format!("/s => /$/fail | {A}"), "/s"), "!");
    assert_eq!(ok(&format!("/s => {B} | {A}"), "/s"), "10.0.0.2:80");
    // Fail in a later dentry stops the earlier ones too.
    assert_eq!(ok(&format!("/s => {A}; /s => !"), "/s"), "!");
    assert_eq!(
        ok(&format!("/s => {A}; /s => /t; /t => /$/fail"), "/s"),
        "!"
    );
    assert_eq!(ok("/s => ~ | ~", "/s"), "~");
}

#[test]
fn alternatives_after_an_answer_are_not_bound() {
    let looping = "/loop => /loop";
    assert_eq!(
        ok(&format!("{looping}; /s => {A} | /loop"), "/s"),
        "10.0.0.1:80"
    );
    assert_eq!(
        ok(&format!("{looping}; /s => /loop; /s => {A}"), "/s"),
        "10.0.0.1:80"
    );
    // An error in an alternative that is reached ends the binding.
    assert!(matches!(
        resolve(&format!("{looping}; /s => /loop | {A}"), "/s"),
        Err(BindError::DepthExceeded { .. })
    ));
}

#[test]
fn union_drops_neg_and_fail_branches_and_keeps_weights() {
    assert_eq!(ok(&format!("/s => {A} & /missing"), "/s"), "10.0.0.1:80");
    assert_eq!(ok(&format!("/s => {A} & !"), "/s"), "10.0.0.1:80");
    assert_eq!(ok("/s => /missing & ~ & !", "/s"), "~");
    assert_eq!(ok("/s => ! & !", "/s"), "~");
    assert_eq!(
        ok(&format!("/s => {A} & 3 * {B}"), "/s/r"),
        "(1*10.0.0.1:80/r & 3*10.0.0.2:80/r)"
    );
    assert_eq!(ok(&format!("/s => $ & {A}"), "/s"), "(1*$ & 1*10.0.0.1:80)");
    assert_eq!(ok("/s => $ & $", "/s"), "(1*$ & 1*$)");
    // Nested unions stay nested.
    assert_eq!(
        ok(&format!("/s => {A} & 2 * /t; /t => {A} & {B}"), "/s"),
        "(1*10.0.0.1:80 & 2*(1*10.0.0.1:80 & 1*10.0.0.2:80))"
    );
    // A branch that errs drops out when another binds ...
    assert_eq!(
        ok(&format!("/loop => /loop; /s => {A} & /loop"), "/s"),
        "10.0.0.1:80"
    );
    // ... and the first error is the result when none does.
    let err = resolve("/loop => /loop; /s => /loop & /$/bogus", "/s").unwrap_err();
    assert!(matches!(err, BindError::DepthExceeded { .. }), "{err}");
}

#[test]
fn leaf_shares_are_normalised_products_of_union_weights() {
    let t = resolve(
        &format!("/s => {A} & 3 * /t & ~; /t => {A} & {B} & $"),
        "/s",
    )
    .unwrap();
    let shares: Vec<(String, f64)> = t
        .leaf_shares()
        .into_iter()
        .map(|(b, s)| (b.id.to_string(), s))
        .collect();
    let want = [(A, 0.25), (A, 0.25), (B, 0.25)];
    assert_eq!(shares.len(), want.len());
    for ((id, s), (wid, ws)) in shares.iter().zip(want) {
        assert_eq!(id, wid);
        assert!((s - ws).abs() < 1e-12, "{id}: {s} != {ws}");
    }
    // Zero weights in total: every branch equally likely.
    let t = resolve(&format!("/s => 0 * {A} & 0 * {B}"), "/s").unwrap();
    assert_eq!(
        t.leaf_shares().iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![0.5, 0.5]
    );
}

#[test]
fn depth_limit_is_one_hundred_lookups() {
    fn chain(n: usize) -> String {
        let mut d: Vec<String> = (0..n - 1)
            .map(|i| format!("/p{i} => /p{}", i + 1))
            .collect();
        d.push(format!("/p{} => {A}", n - 1));
        d.join(";")
    }
    // 99 rewrites and the /$/inet lookup: 100 lookups, the most allowed.
    assert_eq!(ok(&chain(MAX_DEPTH - 1), "/p0/x"), "10.0.0.1:80/x");
    let err = resolve(&chain(MAX_DEPTH), "/p0").unwrap_err();
    assert!(matches!(err, BindError::DepthExceeded { .. }));
    assert!(err.to_string().contains("maximum depth of 100"), "{err}");
    let err = resolve("/a => /b; /b => /a", "/a").unwrap_err();
    assert!(err.to_string().contains("100"), "{err}");
}

#[test]
fn exponential_unions_hit_the_lookup_budget() {
    let d: Vec<String> = (0..40)
        .map(|i| format!("/l{i} => /l{} & /l{}", i + 1, i + 1))
        .collect();
    let err = resolve(&d.join(";"), "/l0").unwrap_err();
    assert!(matches!(err, BindError::TooComplex { .. }), "{err}");
}

#[test]
fn inet_names_bind_with_id_and_residual() {
    let t = resolve("", "/$/inet/127.0.0.1/8080/e/f").unwrap();
    let NameTree::Leaf(b) = t else {
        panic!("{t:?}")
    };
    assert_eq!(b.id, path("/$/inet/127.0.0.1/8080"));
    assert_eq!(b.residual, path("/e/f"));
    assert_eq!(
        b.endpoints.as_slice(),
        &[Endpoint::new("127.0.0.1:8080".parse().unwrap())]
    );

    assert_eq!(ok("", "/$/inet/127.1/80"), "127.0.0.1:80");
    assert_eq!(ok("", "/$/inet/localhost/80"), "127.0.0.1:80");
    assert_eq!(ok("", "/$/inet/::1/443/x"), "[::1]:443/x");
    assert_eq!(ok("", "/$/fixedinet/10.1.2.3/9"), "10.1.2.3:9");
    // Without a host: loopback, the port third.
    assert_eq!(ok("", "/$/inet/8080/x/y"), "127.0.0.1:8080/x/y");
    let NameTree::Leaf(b) = resolve("", "/$/inet/8080/x").unwrap() else {
        panic!()
    };
    assert_eq!(b.id, path("/$/inet/8080"));
    // Through a dtab, the rewrite's suffix becomes the residual.
    assert_eq!(ok("/svc => /$/inet/10.0.0.9", "/svc/81/a"), "10.0.0.9:81/a");

    for bad in [
        "/$/inet/example.com/80",
        "/$/inet/1.2.3.4/70000",
        "/$/inet/x",
        "/$/inet",
        "/$/nope/a",
    ] {
        let err = resolve("", bad).unwrap_err();
        assert!(matches!(err, BindError::Namer { .. }), "{bad}: {err}");
    }
    assert_eq!(ok("", "/$"), "~");
}

#[test]
fn nil_and_fail_names_take_any_residual() {
    assert_eq!(ok("", "/$/nil"), "$");
    assert_eq!(ok("", "/$/nil/a/b"), "$");
    assert_eq!(ok("", "/$/fail"), "!");
    assert_eq!(ok("/s => /$/fail", "/s/x"), "!");
}

#[test]
fn namers_are_consulted_only_when_the_dtab_has_nothing() {
    // The dtab rewrites even /$ names when it matches them ...
    assert_eq!(
        ok(&format!("/$/inet/10.0.0.1 => {B}"), "/$/inet/10.0.0.1/80"),
        "10.0.0.2:80/80"
    );
    // ... a single `~` rewrite is no rewrite (Finagle compares the lookup with neg) ...
    assert_eq!(ok("/$/inet => ~", "/$/inet/10.0.0.1/80"), "10.0.0.1:80");
    // ... but two are an alternation of negs.
    assert_eq!(ok("/$/inet => ~; /$/inet => ~", "/$/inet/10.0.0.1/80"), "~");
    // Offline there are no configured namers.
    assert_eq!(ok("/svc => /#/io.l5d.fs", "/svc/web"), "~");
}

/// A file-namer stand-in: `web` has two addresses, `api` one, `boom` errs,
/// `split` is a weighted union; anything else is neg.
struct FakeFs;

fn ep(s: &str, weight: f64) -> Endpoint {
    Endpoint {
        addr: s.parse::<SocketAddr>().unwrap(),
        weight,
    }
}

impl Namer for FakeFs {
    fn lookup(&self, p: &Path) -> Result<NameTree<NamerBound>, NamerError> {
        let bound = |eps: Vec<Endpoint>| {
            NameTree::Leaf(NamerBound {
                consumed: 1,
                endpoints: Endpoints::Set(eps.into()),
            })
        };
        Ok(match p.get(0) {
            Some(b"web") => bound(vec![ep("10.1.0.1:80", 1.0), ep("10.1.0.2:80", 3.0)]),
            Some(b"api") => bound(vec![ep("10.2.0.1:80", 1.0)]),
            Some(b"split") => NameTree::Union(vec![
                sidetrack::dtab::Weighted::new(1.0, bound(vec![ep("10.3.0.1:80", 1.0)])),
                sidetrack::dtab::Weighted::new(1.0, NameTree::Neg),
            ]),
            Some(b"boom") => return Err(NamerError::new("disk on fire")),
            Some(b"later") => return Err(NamerError::pending("not synced yet")),
            _ => NameTree::Neg,
        })
    }
}

/// Answers `api` only, under the same prefix, consulted after FakeFs.
struct Fallback;

impl Namer for Fallback {
    fn lookup(&self, p: &Path) -> Result<NameTree<NamerBound>, NamerError> {
        Ok(match p.get(0) {
            Some(b"web") | Some(b"extra") => NameTree::Leaf(NamerBound {
                consumed: 1,
                endpoints: Endpoints::One(ep("10.9.0.1:80", 1.0)),
            }),
            _ => NameTree::Neg,
        })
    }
}

fn namers() -> Namers {
    Namers::default()
        .with("io.l5d.fs", Arc::new(FakeFs))
        .with("io.l5d.fs", Arc::new(Fallback))
}

#[test]
fn configured_namers_bind_under_their_prefix() {
    let n = namers();
    let t = bind_with("/svc => /#/io.l5d.fs", "", "/svc/web/v1/x", &n).unwrap();
    let NameTree::Leaf(b) = &t else {
        panic!("{t:?}")
    };
    assert_eq!(b.id, path("/#/io.l5d.fs/web"));
    assert_eq!(b.residual, path("/v1/x"));
    assert_eq!(b.endpoints.as_slice().len(), 2);
    // The first namer answered; the fallback is only asked after a neg.
    assert_eq!(
        brief(&bind_with("/svc => /#/io.l5d.fs", "", "/svc/extra", &n).unwrap()),
        "10.9.0.1:80"
    );
    assert_eq!(
        brief(&bind_with("/svc => /#/io.l5d.fs", "", "/svc/none", &n).unwrap()),
        "~"
    );
    // A namer's union is bound by the usual rules.
    assert_eq!(
        brief(&bind_with("", "", "/#/io.l5d.fs/split", &n).unwrap()),
        "10.3.0.1:80"
    );
    // A namer error is a binding error naming the path ...
    let err = bind_with("/svc => /#/io.l5d.fs", "", "/svc/boom", &n).unwrap_err();
    assert_eq!(
        err,
        BindError::Namer {
            path: path("/#/io.l5d.fs/boom"),
            message: "disk on fire".into(),
            pending: false,
        }
    );
    // ... that a neg alternative before it does not hide, and a union drops.
    assert!(
        bind_with(
            "/svc => /#/io.l5d.fs/boom | /#/io.l5d.fs/api",
            "",
            "/svc",
            &n
        )
        .is_err()
    );
    assert_eq!(
        brief(
            &bind_with(
                "/svc => /#/io.l5d.fs/boom & /#/io.l5d.fs/api",
                "",
                "/svc",
                &n
            )
            .unwrap()
        ),
        "10.2.0.1:80"
    );
    // A namer that has not synced is pending, not neg: an alternative
    // after it does not take over, and the error says pending.
    let err = bind_with(
        "/svc => /#/io.l5d.fs/later | /#/io.l5d.fs/api",
        "",
        "/svc",
        &n,
    )
    .unwrap_err();
    assert_eq!(
        err,
        BindError::Namer {
            path: path("/#/io.l5d.fs/later"),
            message: "not synced yet".into(),
            pending: true,
        }
    );
    assert!(err.is_pending());
    assert!(
        !bind_with("/svc => /#/io.l5d.fs", "", "/svc/boom", &n)
            .unwrap_err()
            .is_pending()
    );
    // Other prefixes are neg.
    assert_eq!(
        brief(&bind_with("", "", "/#/io.l5d.k8s/web", &n).unwrap()),
        "~"
    );
}

#[test]
fn local_dtabs_override_the_base() {
    let base = format!("/svc => /srv; /srv => {A}");
    let n = Namers::default();
    assert_eq!(
        brief(&bind_with(&base, "", "/svc/web", &n).unwrap()),
        "10.0.0.1:80/web"
    );
    // A local entry comes later in the routing dtab, so it is tried first.
    let local = format!("/srv/web => {B}");
    assert_eq!(
        brief(&bind_with(&base, &local, "/svc/web", &n).unwrap()),
        "10.0.0.2:80"
    );
    assert_eq!(
        brief(&bind_with(&base, &local, "/svc/api", &n).unwrap()),
        "10.0.0.1:80/api"
    );
    // A local rewrite that is neg falls back to the base.
    assert_eq!(
        brief(&bind_with(&base, "/srv/web => /nowhere", "/svc/web", &n).unwrap()),
        "10.0.0.1:80/web"
    );
    // l5d-ctx-dtab ++ l5d-dtab: the header's own entries win over the context's.
    let ctx = dtab(&format!("/srv/web => {B}"));
    let hdr = dtab("/srv/web => /$/inet/10.0.0.3/80");
    let local = ctx.concat(&hdr);
    let compiled = CompiledDtab::new(&dtab(&base));
    let t = bind(&compiled, &local, &path("/svc/web"), &n).unwrap();
    assert_eq!(brief(&t), "10.0.0.3:80");
    // The same local dtab through the trie and the reference scan of the concatenation.
    assert_eq!(
        compiled.lookup(&local, &path("/srv/web/x")),
        dtab(&base).concat(&local).lookup(&path("/srv/web/x"))
    );
    assert_eq!(
        compiled.matching_indices(&local, &path("/srv/web")),
        vec![3, 2, 1]
    );
}

#[test]
fn sticky_choice_depends_only_on_the_key() {
    let t = resolve(&format!("/s => {A} & 3 * {B} & $"), "/s").unwrap();
    let mut counts = [0usize; 3];
    for i in 0..10_000u32 {
        let key = format!("user-{i}");
        let first = t.choose_sticky(key.as_bytes());
        for _ in 0..3 {
            assert_eq!(t.choose_sticky(key.as_bytes()), first);
        }
        match first {
            Choice::Leaf(b) if b.id.to_string() == A => counts[0] += 1,
            Choice::Leaf(_) => counts[1] += 1,
            Choice::Empty => counts[2] += 1,
            other => panic!("{other:?}"),
        }
    }
    // Shares 1/5, 3/5 and 1/5, within a few percent.
    assert!((1700..2300).contains(&counts[0]), "{counts:?}");
    assert!((5700..6300).contains(&counts[1]), "{counts:?}");
    assert!((1700..2300).contains(&counts[2]), "{counts:?}");
    // A lone leaf is always chosen; neg and fail trees choose themselves.
    let one = resolve("", A).unwrap();
    assert!(matches!(one.choose_sticky(b"k"), Choice::Leaf(_)));
    assert_eq!(NameTree::<Bound>::Neg.choose_sticky(b"k"), Choice::Neg);
    assert_eq!(NameTree::<Bound>::Fail.choose_sticky(b"k"), Choice::Fail);
}

/// A sticky rollout grown from 10% to 20% keeps the keys it had: every key
/// on the new version at 10% is still there at 20%, and the shares stay
/// within a binomial band (n = 10,000: 4.5 standard deviations).
#[test]
fn a_sticky_rollout_keeps_its_keys_when_it_grows() {
    let at = |share: f64| {
        resolve(
            &format!("/s => {share} * {A} & {} * {B}", 1.0 - share),
            "/s",
        )
        .unwrap()
    };
    let (ten, twenty) = (at(0.1), at(0.2));
    let on_a = |t: &NameTree<Bound>, key: &str| matches!(t.choose_sticky(key.as_bytes()), Choice::Leaf(b) if b.id.to_string() == A);
    let (mut at_ten, mut at_twenty) = (0usize, 0usize);
    for i in 0..10_000u32 {
        let key = format!("customer-{i}");
        let before = on_a(&ten, &key);
        let after = on_a(&twenty, &key);
        assert!(!before || after, "{key} left the rollout as it grew");
        at_ten += usize::from(before);
        at_twenty += usize::from(after);
    }
    // sd = sqrt(n p (1-p)): 30 at 10%, 40 at 20%.
    assert!((865..1135).contains(&at_ten), "{at_ten}");
    assert!((1820..2180).contains(&at_twenty), "{at_twenty}");
}
