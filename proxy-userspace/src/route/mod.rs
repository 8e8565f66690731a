//! Routing: from a request's name and dtab headers to a bound destination.
//!
//! The [`Router`] holds the compiled base dtab and the namers. A request's
//! route is cached under the raw bytes that decide it (its `l5d-ctx-dtab`
//! and `l5d-dtab` values and its logical name), so a repeated request parses
//! no dtab and binds nothing: a hit costs a hash, a shard read lock and an
//! `Arc` clone. A cached route carries everything the request path needs
//! already made: the bound tree mapped to balancers, the metric handles of
//! each destination, and the combined local dtab to send downstream.
//!
//! A change of the base dtab swaps in a new [`Base`] and clears the cache; a
//! namer change bumps the routing generation, which makes older routes stale.

pub mod identify;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;

use crate::{
    dtab::{self, Bound, ClockCache, CompiledDtab, Dtab, NameTree, NamerSet, Namers, Path},
    namer::balancer::{BackendRegistry, Balancer},
    observe::metrics::{Metrics, MirrorStats, RouteStats},
    policy::mirror::Mirror,
};

pub use crate::policy::{Mirrors, OnRefusal, OverridePolicy, Refusal, Rules, SourceVerdict};
pub use identify::Identifier;

/// The base dtab, compiled, with the text it came from.
pub struct Base {
    pub dtab: Dtab,
    pub compiled: CompiledDtab,
}

impl Base {
    pub fn new(dtab: Dtab) -> Base {
        Base {
            compiled: CompiledDtab::new(&dtab),
            dtab,
        }
    }
}

/// One bound destination of a route: a version of a service.
#[derive(Debug)]
pub struct Dest {
    /// The bound name's id (`/#/io.l5d.fs/world-v2`), the `dst` label and
    /// the `l5d-dst-client` header.
    pub id: String,
    pub residual: Path,
    pub balancer: Balancer,
    pub stats: RouteStats,
}

/// How a name came out of binding.
#[derive(Debug)]
pub enum Outcome {
    Bound(NameTree<Dest>),
    /// Nothing in the dtab or the namers knows the name: 502.
    Neg,
    /// The dtab says fail (`!`): 502.
    Fail,
    /// The name exists but has no members (`$`): 503.
    Empty,
    /// Binding itself failed (a loop, a namer error): 502.
    Error(String),
    /// A namer has not synced what the name needs yet (the Kubernetes
    /// namer before its first list of a namespace): the request may wait
    /// and route again. Such a route is never cached.
    Pending(String),
}

/// Everything the request path needs for one (local dtab, name).
#[derive(Debug)]
pub struct Route {
    /// The logical name (`/svc/world`), the `service` label and `l5d-dst-service`.
    pub name: String,
    /// The combined local dtab (`l5d-ctx-dtab` ++ `l5d-dtab`) in canonical
    /// form, sent downstream as one `l5d-ctx-dtab`; empty when there is none.
    pub local_dtab: String,
    /// Whether the request carried its own dtab entries (and they stood).
    pub overridden: bool,
    /// The routing rule that matched the request, by name.
    pub rule: Option<String>,
    /// A signed override's expiry (unix seconds): past it the route is
    /// bound again, and refused.
    pub signed_until: Option<u64>,
    /// The request's override, refused by the policy and dropped (with
    /// `on_refusal: drop`): why, to count each request it comes with.
    pub dropped_override: Option<Refusal>,
    pub outcome: Outcome,
    /// Where copies of the route's requests go (the `mirrors:` entries
    /// whose prefix covers the name, then the request's own `l5d-mirror`),
    /// bound with the same dtab as the route.
    pub mirrors: Vec<BoundMirror>,
    generation: u64,
}

/// A mirror of a route, bound.
#[derive(Debug)]
pub struct BoundMirror {
    pub mirror: Mirror,
    /// The target path as text: the key of its copies' lane on a worker.
    pub lane: Arc<str>,
    /// The target, bound; why not when it binds to nothing.
    pub target: Result<NameTree<Dest>, String>,
    /// Diff mode: the second instance of the live version, bound.
    pub secondary: Option<Result<NameTree<Dest>, String>>,
    pub stats: MirrorStats,
}

/// What a request's route is decided by: its dtab header values, the
/// signature of its override, the routing rule it matched (by index), the
/// mirror it asked for (`l5d-mirror`), and its logical name.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteQuery<'a> {
    pub ctx: &'a [&'a [u8]],
    pub dtab: &'a [&'a [u8]],
    pub sig: Option<&'a [u8]>,
    pub rule: Option<usize>,
    pub mirror: Option<&'a [u8]>,
    pub name: &'a [u8],
}

/// Why a request could not be routed before binding.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("invalid dtab in {header}: {message}")]
    BadDtab {
        header: &'static str,
        message: String,
    },
    #[error(
        "l5d-ctx-dtab and l5d-dtab carry {count} dtab entries, more than the {limit} allowed (max_dtab_entries)"
    )]
    TooManyEntries { count: usize, limit: usize },
    /// The override policy refuses an entry (`on_refusal: reject`).
    #[error("{0}")]
    Refused(Refusal),
    /// An `l5d-mirror` that names no path, or one the policy refuses.
    #[error("l5d-mirror: {0}")]
    BadMirror(String),
}

/// What the router may hold and bind for requests.
#[derive(Clone, Copy, Debug)]
pub struct RouterLimits {
    /// Routes cached, at most.
    pub cache_entries: usize,
    /// What cached routes hold in all (see [`Route::weight`]).
    pub cache_bytes: usize,
    /// Routes whose key is longer are not cached.
    pub cache_key_bytes: usize,
    /// Dtab entries a request's headers may carry.
    pub max_dtab_entries: usize,
}

impl RouterLimits {
    pub fn of(s: &crate::config::Settings) -> RouterLimits {
        RouterLimits {
            cache_entries: s.bind_cache_capacity,
            cache_bytes: s.route_cache_max_bytes,
            cache_key_bytes: s.route_cache_max_key_bytes,
            max_dtab_entries: s.limits.max_dtab_entries,
        }
    }
}

/// The routing state shared by every connection.
pub struct Router {
    base: ArcSwap<Base>,
    namers: ArcSwap<Namers>,
    cache: ClockCache<Box<[u8]>, Arc<Route>>,
    limits: RouterLimits,
    policy: ArcSwap<OverridePolicy>,
    rules: ArcSwap<Rules>,
    mirrors: ArcSwap<Mirrors>,
    backends: BackendRegistry,
    metrics: Arc<Metrics>,
    generation: Arc<AtomicU64>,
}

impl Router {
    pub fn new(
        base: Dtab,
        namers: Namers,
        limits: RouterLimits,
        metrics: Arc<Metrics>,
        generation: Arc<AtomicU64>,
    ) -> Router {
        Router {
            base: ArcSwap::from_pointee(Base::new(base)),
            namers: ArcSwap::from_pointee(namers),
            cache: ClockCache::with_budget(limits.cache_entries, limits.cache_bytes),
            limits,
            policy: ArcSwap::from_pointee(OverridePolicy::default()),
            rules: ArcSwap::from_pointee(Rules::default()),
            mirrors: ArcSwap::from_pointee(Mirrors::default()),
            backends: BackendRegistry::default(),
            metrics,
            generation,
        }
    }

    /// The shared routing generation: namers bump it when what they know changes.
    pub fn generation(&self) -> &Arc<AtomicU64> {
        &self.generation
    }

    pub fn base(&self) -> Arc<Base> {
        self.base.load_full()
    }

    pub fn namers(&self) -> Arc<Namers> {
        self.namers.load_full()
    }

    /// Replaces the base dtab; every cached route is made again.
    pub fn set_base(&self, dtab: Dtab) {
        self.base.store(Arc::new(Base::new(dtab)));
        self.remake_routes();
    }

    /// Replaces the namers (a changed namer setting).
    pub fn set_namers(&self, namers: Namers) {
        self.namers.store(Arc::new(namers));
        self.remake_routes();
    }

    /// The override policy in force.
    pub fn policy(&self) -> arc_swap::Guard<Arc<OverridePolicy>> {
        self.policy.load()
    }

    /// Replaces the override policy; every cached route is made again.
    pub fn set_policy(&self, policy: OverridePolicy) {
        self.policy.store(Arc::new(policy));
        self.remake_routes();
    }

    /// The routing rules in force.
    pub fn rules(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// Replaces the routing rules; every cached route is made again.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
        self.remake_routes();
    }

    /// The mirrors in force.
    pub fn mirrors(&self) -> arc_swap::Guard<Arc<Mirrors>> {
        self.mirrors.load()
    }

    /// Replaces the mirrors; every cached route is made again.
    pub fn set_mirrors(&self, mirrors: Mirrors) {
        self.mirrors.store(Arc::new(mirrors));
        self.remake_routes();
    }

    /// After a change to what routes are made of: routes made before go
    /// stale (a request in flight keeps its own) and the cache empties.
    fn remake_routes(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.cache.clear();
    }

    pub fn cache_stats(&self) -> dtab::CacheStats {
        self.cache.stats()
    }

    /// The route for a request. `key` must be the bytes that decide the
    /// route, as [`route_key`] writes them from the same `query`.
    pub fn route(&self, key: &[u8], query: &RouteQuery<'_>) -> Result<Arc<Route>, RouteError> {
        let generation = self.generation.load(Ordering::Acquire);
        let cacheable = key.len() <= self.limits.cache_key_bytes;
        // A signed route holds until its signature expires.
        let fresh = |route: &Arc<Route>| {
            route.generation == generation
                && route.signed_until.is_none_or(|until| unix_now() < until)
        };
        if cacheable && let Some(route) = self.cache.get_fresh(key, fresh) {
            return Ok(route);
        }
        if !cacheable {
            self.cache.count_miss();
        }
        // Refused before parsing: binding costs time in the number of
        // local entries, and a request with a new dtab is bound afresh.
        let count = dtab_entries(query.ctx) + dtab_entries(query.dtab);
        if count > self.limits.max_dtab_entries {
            return Err(RouteError::TooManyEntries {
                count,
                limit: self.limits.max_dtab_entries,
            });
        }
        let route = Arc::new(self.bind(query, generation)?);
        // A pending route is bound again by the next request: caching it
        // would keep the answer "not yet" after the namer has synced.
        if cacheable && !matches!(route.outcome, Outcome::Pending(_)) {
            let weight = key.len() + route.weight();
            self.cache
                .insert_weighted(Box::from(key), route.clone(), weight);
        }
        Ok(route)
    }

    fn bind(&self, query: &RouteQuery<'_>, generation: u64) -> Result<Route, RouteError> {
        let RouteQuery {
            sig, rule, name, ..
        } = *query;
        let ctx = parse_header_dtab("l5d-ctx-dtab", query.ctx)?;
        let req = parse_header_dtab("l5d-dtab", query.dtab)?;
        let mut local = ctx.concat(&req);
        // What the override may say: refused (403), or dropped.
        let mut dropped_override = None;
        let policy = self.policy.load();
        let checked = policy
            .check(&local)
            .and_then(|()| policy.check_signature(&local, sig, unix_now()));
        let signed_until = *checked.as_ref().unwrap_or(&None);
        if let Err(refusal) = checked {
            match policy.on_refusal {
                OnRefusal::Reject => return Err(RouteError::Refused(refusal)),
                OnRefusal::Drop => {
                    dropped_override = Some(refusal);
                    local = Dtab::empty();
                }
            }
        }
        let path = logical_path(name);
        let base = self.base.load();
        let namers = self.namers.load();
        let overridden = !local.is_empty();
        let name = path.to_string();
        // The rule's entries come after the base dtab and before the
        // request's own, which have the last word; they are not forwarded.
        let rules = self.rules.load();
        let rule = rule.and_then(|i| rules.get(i));
        let binding = match rule {
            Some(r) => r.dtab.concat(&local),
            None => local.clone(),
        };
        let rule_name = rule.map_or("", |r| r.name.as_str());
        let namers = namers.as_ref() as &dyn NamerSet;
        let outcome = match dtab::bind(&base.compiled, &binding, &path, namers) {
            Err(e) if e.is_pending() => Outcome::Pending(e.to_string()),
            Err(e) => Outcome::Error(e.to_string()),
            Ok(NameTree::Neg) => Outcome::Neg,
            Ok(NameTree::Fail) => Outcome::Fail,
            Ok(NameTree::Empty) => Outcome::Empty,
            Ok(tree) => Outcome::Bound(
                tree.map(&mut |b: &Bound| self.dest(&name, b, overridden, rule_name)),
            ),
        };
        // Copies are bound like the request: the same base, rule and
        // override, so a staged dependency stays staged for its copy too.
        let bind_copy = |to: &Path| -> Result<NameTree<Dest>, String> {
            match dtab::bind(&base.compiled, &binding, to, namers) {
                Err(e) => Err(e.to_string()),
                Ok(NameTree::Neg) => Err(format!("{to} binds to nothing (neg)")),
                Ok(NameTree::Fail) => Err(format!("{to} binds to fail")),
                Ok(NameTree::Empty) => Err(format!("{to} has no members")),
                Ok(tree) => {
                    Ok(tree.map(&mut |b: &Bound| self.dest(&name, b, overridden, MIRROR_LABEL)))
                }
            }
        };
        let configured = self.mirrors.load();
        let asked = match query.mirror {
            Some(to) => Some(self.asked_mirror(to, &policy, &path)?),
            None => None,
        };
        let mirrors = configured
            .for_name(&path)
            .map(|(_, m)| (m.clone(), m.name.to_string(), m.to.to_string()))
            .chain(asked.map(|m| (m, REQUEST_LABEL.into(), REQUEST_LABEL.into())))
            .map(|(mirror, service, target)| BoundMirror {
                lane: mirror.to.to_string().into(),
                target: bind_copy(&mirror.to),
                secondary: mirror.secondary.as_ref().map(&bind_copy),
                stats: self.metrics.mirror_stats(&service, &target),
                mirror,
            })
            .collect();
        let local_dtab = if local.is_empty() {
            String::new()
        } else {
            local.to_string()
        };
        Ok(Route {
            name,
            local_dtab,
            overridden,
            rule: rule.map(|r| r.name.clone()),
            signed_until,
            dropped_override,
            outcome,
            mirrors,
            generation,
        })
    }

    /// The mirror a request asked for with `l5d-mirror`: a path the
    /// override policy allows as a destination. Whether the client may
    /// ask at all was decided before (as for its dtab headers).
    fn asked_mirror(
        &self,
        to: &[u8],
        policy: &OverridePolicy,
        name: &Path,
    ) -> Result<Mirror, RouteError> {
        let text = std::str::from_utf8(to)
            .map_err(|_| RouteError::BadMirror("not UTF-8".into()))?
            .trim();
        let to = Path::read(text).map_err(|e| RouteError::BadMirror(format!("{text:?}: {e}")))?;
        policy
            .check_destination(&to)
            .map_err(|r| RouteError::BadMirror(r.to_string()))?;
        Ok(Mirror::per_request(name.clone(), to))
    }

    fn dest(&self, name: &str, bound: &Bound, overridden: bool, rule: &str) -> Dest {
        let id = bound.id.to_string();
        let backends = bound
            .endpoints
            .as_slice()
            .iter()
            .map(|e| (self.backends.get(e.addr), e.weight))
            .collect();
        let (service, dst) = metric_labels(name, &id, overridden);
        Dest {
            stats: self.metrics.route_stats(service, dst, overridden, rule),
            id,
            residual: bound.residual.clone(),
            balancer: Balancer::new(backends),
        }
    }
}

impl Route {
    /// About what the route holds, in bytes: what the cache counts it as
    /// (with its key) against `route_cache_max_bytes`.
    pub fn weight(&self) -> usize {
        fn tree(t: &NameTree<Dest>) -> usize {
            match t {
                NameTree::Leaf(d) => d.weight(),
                NameTree::Alt(ts) => ts.iter().map(tree).sum::<usize>() + 16,
                NameTree::Union(ws) => ws.iter().map(|w| tree(&w.tree)).sum::<usize>() + 16,
                NameTree::Neg | NameTree::Fail | NameTree::Empty => 0,
            }
        }
        let outcome = match &self.outcome {
            Outcome::Bound(t) => tree(t),
            Outcome::Error(e) | Outcome::Pending(e) => e.len(),
            Outcome::Neg | Outcome::Fail | Outcome::Empty => 0,
        };
        let mirrors: usize = self
            .mirrors
            .iter()
            .map(|m| {
                let bound = |t: &Result<NameTree<Dest>, String>| match t {
                    Ok(t) => tree(t),
                    Err(e) => e.len(),
                };
                std::mem::size_of::<BoundMirror>()
                    + bound(&m.target)
                    + m.secondary.as_ref().map_or(0, bound)
                    + m.mirror.to.heap_bytes()
            })
            .sum();
        std::mem::size_of::<Route>() + self.name.len() + self.local_dtab.len() + outcome + mirrors
    }
}

impl Dest {
    fn weight(&self) -> usize {
        std::mem::size_of::<Dest>()
            + self.id.len()
            + self.residual.to_string().len()
            + self.balancer.len() * 32
    }
}

/// The number of dtab entries in a header's values: each has one `=>`,
/// which no path, name tree or weight can contain.
fn dtab_entries(values: &[&[u8]]) -> usize {
    values
        .iter()
        .map(|v| v.windows(2).filter(|w| w == b"=>").count())
        .sum()
}

/// The label a destination is counted under for a service.
///
/// Labels follow what the operator configured: a name the base dtab or a
/// namer produced is its own label. A literal address (`/$/inet/...`)
/// that a request's own dtab bound is the client's choice, and so is the
/// logical name it was routed for (an override can bind any Host): those
/// fold into one pair of labels, so that distinct overrides cannot fill
/// the series cap (`max_route_series`) and push real services into
/// `overflow`.
fn metric_labels<'a>(name: &'a str, id: &'a str, overridden: bool) -> (&'a str, &'a str) {
    if overridden && id.starts_with("/$/") {
        (OVERRIDE_LABEL, OVERRIDE_ADDRESS_LABEL)
    } else {
        (name, id)
    }
}

/// The `rule` label of the route metrics of copies (shadowing).
pub use crate::observe::metrics::MIRROR_LABEL;
/// The labels of the copies requests asked for themselves (`l5d-mirror`).
pub const REQUEST_LABEL: &str = "(request)";

/// The service label of requests an override sent to a literal address.
pub const OVERRIDE_LABEL: &str = "(override)";
/// Their destination label.
pub const OVERRIDE_ADDRESS_LABEL: &str = "/$ (override)";

/// Parses the concatenated values of one dtab header (every instance, in
/// order, joined by `;`, with no comma splitting, as Linkerd does).
fn parse_header_dtab(header: &'static str, values: &[&[u8]]) -> Result<Dtab, RouteError> {
    if values.is_empty() {
        return Ok(Dtab::empty());
    }
    let mut text = String::new();
    for v in values {
        let v = std::str::from_utf8(v).map_err(|_| RouteError::BadDtab {
            header,
            message: "not UTF-8".into(),
        })?;
        if !text.is_empty() {
            text.push(';');
        }
        text.push_str(v);
    }
    Dtab::parse(&text).map_err(|e| RouteError::BadDtab {
        header,
        message: e.to_string(),
    })
}

/// Seconds since the Unix epoch: what signatures expire against.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `/svc/world` written as bytes by the identifier becomes a path: the
/// elements between slashes (the identifier has made each element one
/// label, with any `/` inside a Host value already refused).
fn logical_path(name: &[u8]) -> Path {
    Path::from_elems(name.split(|b| *b == b'/').filter(|e| !e.is_empty()))
}

/// Writes the cache key of a request into `out` (cleared first): the
/// routing rule that matched (if any), the mirror it asked for (if any),
/// the signature of its override (if any), the dtab header values and the
/// logical name, separated by bytes no header value can hold.
pub fn route_key(out: &mut Vec<u8>, query: &RouteQuery<'_>) {
    out.clear();
    if let Some(rule) = query.rule {
        out.push(3);
        out.extend_from_slice(&(rule as u32).to_le_bytes());
    }
    if let Some(mirror) = query.mirror {
        out.extend_from_slice(mirror);
        out.push(4);
    }
    if let Some(sig) = query.sig {
        out.extend_from_slice(sig);
        out.push(2);
    }
    for v in query.ctx {
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(1);
    for v in query.dtab {
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(1);
    out.extend_from_slice(query.name);
}

/// `l5d-reqid` for a request that has none: 16 hex digits, written into a
/// stack buffer.
pub fn new_request_id(rng: &mut impl rand::Rng, out: &mut [u8; 16]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = rng.random::<u64>();
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::dtab::{Endpoint, Endpoints, Namer, NamerBound, NamerError};

    /// Pending until `synced`, then one address.
    struct Later(AtomicBool);

    impl Namer for Later {
        fn lookup(&self, _: &Path) -> Result<NameTree<NamerBound>, NamerError> {
            if !self.0.load(Ordering::Acquire) {
                return Err(NamerError::pending("not synced yet"));
            }
            Ok(NameTree::Leaf(NamerBound {
                consumed: 1,
                endpoints: Endpoints::One(Endpoint::new("127.0.0.1:8080".parse().unwrap())),
            }))
        }
    }

    #[test]
    fn a_pending_binding_is_an_outcome_of_its_own_and_never_cached() {
        let later = Arc::new(Later(AtomicBool::new(false)));
        let router = Router::new(
            Dtab::parse("/svc => /#/later").unwrap(),
            Namers::default().with("later", later.clone()),
            RouterLimits::of(&crate::config::Settings::default()),
            Arc::new(Metrics::new(100)),
            Arc::default(),
        );
        let query = RouteQuery {
            name: b"/svc/web",
            ..RouteQuery::default()
        };
        let mut key = Vec::new();
        route_key(&mut key, &query);
        for _ in 0..2 {
            let route = router.route(&key, &query).unwrap();
            match &route.outcome {
                Outcome::Pending(e) => assert!(e.contains("not synced yet"), "{e}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(router.cache_stats().len, 0, "a pending route is not cached");
        }
        // Synced: the namer bumps the generation, and the route binds.
        later.0.store(true, Ordering::Release);
        router.generation().fetch_add(1, Ordering::Release);
        let route = router.route(&key, &query).unwrap();
        assert!(
            matches!(route.outcome, Outcome::Bound(_)),
            "{:?}",
            route.outcome
        );
        assert_eq!(router.cache_stats().len, 1);
    }
}
