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
    observe::metrics::{Metrics, RouteStats},
};

pub use crate::policy::{OnRefusal, OverridePolicy, Refusal, Rules, SourceVerdict};
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
    generation: u64,
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
    /// route, as [`route_key`] writes them; `ctx` and `dtab` are the header
    /// values, `sig` the override's signature, `rule` the routing rule
    /// that matched (by index), `name` the logical name.
    pub fn route(
        &self,
        key: &[u8],
        ctx: &[&[u8]],
        dtab: &[&[u8]],
        sig: Option<&[u8]>,
        rule: Option<usize>,
        name: &[u8],
    ) -> Result<Arc<Route>, RouteError> {
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
        let count = dtab_entries(ctx) + dtab_entries(dtab);
        if count > self.limits.max_dtab_entries {
            return Err(RouteError::TooManyEntries {
                count,
                limit: self.limits.max_dtab_entries,
            });
        }
        let route = Arc::new(self.bind(ctx, dtab, sig, rule, name, generation)?);
        if cacheable {
            let weight = key.len() + route.weight();
            self.cache
                .insert_weighted(Box::from(key), route.clone(), weight);
        }
        Ok(route)
    }

    fn bind(
        &self,
        ctx: &[&[u8]],
        dtab: &[&[u8]],
        sig: Option<&[u8]>,
        rule: Option<usize>,
        name: &[u8],
        generation: u64,
    ) -> Result<Route, RouteError> {
        let ctx = parse_header_dtab("l5d-ctx-dtab", ctx)?;
        let req = parse_header_dtab("l5d-dtab", dtab)?;
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
        let outcome = match dtab::bind(
            &base.compiled,
            &binding,
            &path,
            namers.as_ref() as &dyn NamerSet,
        ) {
            Err(e) => Outcome::Error(e.to_string()),
            Ok(NameTree::Neg) => Outcome::Neg,
            Ok(NameTree::Fail) => Outcome::Fail,
            Ok(NameTree::Empty) => Outcome::Empty,
            Ok(tree) => Outcome::Bound(
                tree.map(&mut |b: &Bound| self.dest(&name, b, overridden, rule_name)),
            ),
        };
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
            generation,
        })
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
            Outcome::Error(e) => e.len(),
            Outcome::Neg | Outcome::Fail | Outcome::Empty => 0,
        };
        std::mem::size_of::<Route>() + self.name.len() + self.local_dtab.len() + outcome
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
/// routing rule that matched (if any), the signature of its override (if
/// any), the dtab header values and the logical name, separated by bytes
/// no header value can hold.
pub fn route_key(
    out: &mut Vec<u8>,
    ctx: &[&[u8]],
    dtab: &[&[u8]],
    sig: Option<&[u8]>,
    rule: Option<usize>,
    name: &[u8],
) {
    out.clear();
    if let Some(rule) = rule {
        out.push(3);
        out.extend_from_slice(&(rule as u32).to_le_bytes());
    }
    if let Some(sig) = sig {
        out.extend_from_slice(sig);
        out.push(2);
    }
    for v in ctx {
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(1);
    for v in dtab {
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(1);
    out.extend_from_slice(name);
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
