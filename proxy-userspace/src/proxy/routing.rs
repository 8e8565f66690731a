//! Routing one request, whichever HTTP version it came in: its logical name,
//! its dtab headers under the override policy, the first routing rule it
//! matches, and the bound route; and the `l5d-*` fields the request goes on
//! with. The HTTP/1.1 loop (`conn`) and the HTTP/2 streams (`h2`) both call
//! these, through [`RequestView`], so that a request is named, routed and
//! marked the same way in either.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, rngs::SmallRng};

use super::{Shared, observed::Observed, watchdog::Watchdog};
use crate::{
    http,
    observe::{
        metrics::ErrorKind,
        trace::{self, TRACEPARENT, TRACEPARENT_LEN},
    },
    policy::{OnRefusal, Refusal, SourceVerdict, overrides, rules, signing::SIGNATURE_HEADER},
    route::{self, Dest, Route, RouteError, RouteQuery, identify},
};

/// The `Via` entry the proxy adds.
pub(super) const VIA: &[u8] = b"1.1 sidetrack";
/// The `Via` entry on requests and responses that crossed the proxy as
/// HTTP/2 (RFC 9110 §7.6.3 names the received protocol).
pub(super) const VIA_H2: &[u8] = b"2 sidetrack";
/// How often a request waiting for a namer's first sync is routed again.
const SYNC_POLL: Duration = Duration::from_millis(20);
/// Dtab headers a request may repeat; more instances are refused.
pub(super) const MAX_DTAB_HEADERS: usize = 16;

/// What routing asks of a request head, whichever version carried it.
/// Header names are asked for in lower case.
pub(super) trait RequestView {
    fn method(&self) -> &[u8];
    /// The request target as sent (`/path?query`, or the absolute form).
    fn target(&self) -> &[u8];
    /// Host, or the absolute form's (HTTP/1) or `:authority`'s (HTTP/2).
    fn authority(&self) -> Option<&[u8]>;
    /// What the identifier is told of the version: 0 or 1 for HTTP/1.x,
    /// [`identify::HTTP2`] for HTTP/2.
    fn version(&self) -> u8;
    /// The first value of the header `name`.
    fn get(&self, name: &str) -> Option<&[u8]>;
    /// Every value of the header `name`, until `each` says stop (false);
    /// returns whether one did.
    fn any_value<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> bool) -> bool;
}

/// Headers the proxy sets or consumes itself, so incoming copies are
/// dropped (checked for every field: one length switch, then one
/// comparison).
pub(super) fn is_proxy_header(name: &[u8]) -> bool {
    let is = |wanted: &[u8]| http::eq_ignore_case_lower(name, wanted);
    match name.len() {
        8 => is(b"l5d-dtab"),
        // l5d-dtab-sig too: the proxy sends it itself with the override
        // it forwards, when that override was signed.
        12 => is(b"l5d-ctx-dtab") || is(b"l5d-dtab-sig"),
        14 => is(b"l5d-dst-client"),
        15 => is(b"l5d-dst-service"),
        // Credentials for a proxy: this one takes none, and they are not
        // the backend's to see (RFC 9110 §11.7.2).
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Every `l5d-` header: what an edge proxy removes from clients' requests.
pub(super) fn is_l5d_header(name: &[u8]) -> bool {
    name.len() > 4 && http::eq_ignore_case_lower(&name[..4], b"l5d-")
}

/// Which of a request's own fields do not go on to the backend.
#[derive(Clone, Copy)]
pub(super) struct Dropped<'a> {
    /// At the edge: every `l5d-` header.
    pub edge: bool,
    /// A TRACE or OPTIONS with `Max-Forwards`: the proxy sends its own.
    pub max_forwards: bool,
    /// The header that asks for a copy (`l5d-mirror`).
    pub request_header: &'a [u8],
    /// `l5d-timing`, which the proxy answers itself.
    pub timing: bool,
}

impl Dropped<'_> {
    pub(super) fn drops(&self, name: &[u8]) -> bool {
        is_proxy_header(name)
            || (self.max_forwards && http::eq_ignore_case_lower(name, b"max-forwards"))
            || (self.edge && is_l5d_header(name))
            || http::eq_ignore_case_lower(name, self.request_header)
            || (self.timing && http::eq_ignore_case_lower(name, trace::TIMING_HEADER.as_bytes()))
    }
}

/// The request id and trace context a request goes on with.
pub(super) struct Ids {
    /// A new `l5d-reqid`, for a request that came without one.
    reqid: Option<[u8; 16]>,
    /// A `traceparent` started here, for a request that came without one.
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
}

impl Ids {
    /// The ids of `req` (at the edge its own `l5d-reqid` goes with its
    /// other `l5d-` headers), noted for the observers that read them.
    pub(super) fn of<H: RequestView>(
        req: &H,
        edge: bool,
        shared: &Shared,
        rng: &mut SmallRng,
        obs: &mut Observed,
    ) -> Ids {
        let client_id = req.get("l5d-reqid").filter(|_| !edge);
        let reqid = client_id.is_none().then(|| {
            let mut id = [0u8; 16];
            route::new_request_id(rng, &mut id);
            id
        });
        let client_trace = req.get(TRACEPARENT);
        let traceparent = (client_trace.is_none() && shared.cfg.trace.start).then(|| {
            let mut t = [0u8; TRACEPARENT_LEN];
            trace::start_traceparent(rng.random(), &mut t);
            t
        });
        if obs.details {
            match (client_id, &reqid) {
                (Some(id), _) => obs.request_id.set(id),
                (None, Some(id)) => obs.request_id.set(id),
                (None, None) => {}
            }
            match (client_trace, &traceparent) {
                (Some(t), _) => obs.traceparent.set(t),
                (None, Some(t)) => obs.traceparent.set(t),
                (None, None) => {}
            }
        }
        Ids { reqid, traceparent }
    }
}

/// Most fields the proxy adds to a request: see [`added`].
pub(super) const MAX_ADDED: usize = 9;

/// The fields the proxy adds to a request on its way to `dest`, into
/// `out`; returns how many. `signature` is the override's, when the route
/// was signed; `max_forwards` one less than the client's; `host` a Host
/// for a request that has none; `via` the proxy's entry.
#[allow(clippy::too_many_arguments)]
pub(super) fn added<'a>(
    out: &mut [(&'a [u8], &'a [u8]); MAX_ADDED],
    route: &'a Route,
    dest: &'a Dest,
    ids: &'a Ids,
    signature: Option<&'a [u8]>,
    max_forwards: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    via: &'a [u8],
) -> usize {
    let mut n = 0;
    let mut push = |k: &'a [u8], v: Option<&'a [u8]>| {
        if let Some(v) = v {
            out[n] = (k, v);
            n += 1;
        }
    };
    push(
        TRACEPARENT.as_bytes(),
        ids.traceparent.as_ref().map(|t| &t[..]),
    );
    push(SIGNATURE_HEADER.as_bytes(), signature);
    push(b"Max-Forwards", max_forwards);
    push(b"Host", host);
    push(b"l5d-dst-service", Some(route.name.as_bytes()));
    push(b"l5d-dst-client", Some(dest.id.as_bytes()));
    push(
        b"l5d-ctx-dtab",
        Some(route.local_dtab.as_bytes()).filter(|d| !d.is_empty()),
    );
    push(b"l5d-reqid", ids.reqid.as_ref().map(|id| &id[..]));
    push(b"Via", Some(via));
    n
}

/// A request routing refused: answered with `status` and `l5d-err`.
#[derive(Debug)]
pub(super) struct Refused {
    pub status: u16,
    pub reason: String,
    pub kind: ErrorKind,
    /// The connection cannot go on whatever the request's body (a dtab
    /// that does not parse); otherwise only a request with a body closes
    /// an HTTP/1 connection.
    pub always_close: bool,
}

impl Refused {
    fn new(status: u16, kind: ErrorKind, reason: impl Into<String>) -> Refused {
        Refused {
            status,
            reason: reason.into(),
            kind,
            always_close: false,
        }
    }
}

/// Where a request came from and was going.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    pub peer: SocketAddr,
    /// Where the client meant to connect (transparent modes).
    pub orig_dst: Option<SocketAddrV4>,
}

/// A routed request: its route, and whether the edge setting holds for it
/// (every `l5d-` header the client sent is removed).
pub(super) struct Routed {
    pub route: Arc<Route>,
    pub edge: bool,
}

/// Route: the request's logical name (into `name`), its dtab headers under
/// the override policy, the first rule it matches, and the binding
/// (cached; the key is made in `key`).
pub(super) fn route<H: RequestView>(
    shared: &Shared,
    req: &H,
    from: Origin,
    name: &mut Vec<u8>,
    key: &mut Vec<u8>,
    obs: &mut Observed,
) -> Result<Routed, Refused> {
    let mut orig_text = [0u8; 21];
    // In a cluster, the calling pod's namespace: that of its short
    // names, and what rules and the override policy may ask.
    let pod = match (&shared.k8s, from.peer.ip()) {
        (Some(k8s), std::net::IpAddr::V4(ip)) => k8s.pod_at(ip),
        _ => None,
    };
    let pod_namespace = pod.as_ref().map(|p| p.namespace.clone());
    // In a cluster, a request without a usable Host (none, or an IP
    // address) is named by the Service that owns the ClusterIP it was
    // sent to, as its Host would have named it.
    let service = match (&shared.k8s, from.orig_dst) {
        (Some(k8s), Some(dst))
            if shared.identifier.is_k8s() && identify::names_no_host(req.authority()) =>
        {
            k8s.service_at(*dst.ip()).map(|s| (s, dst.port()))
        }
        _ => None,
    };
    if let Some(((namespace, service), port)) = service {
        shared
            .identifier
            .k8s_service(name, &namespace, port, &service);
    } else {
        shared
            .identifier
            .identify_from(
                name,
                req.method(),
                req.version(),
                name_authority(req.authority(), from.orig_dst, &mut orig_text),
                from.orig_dst.map(|a| a.port()),
                pod_namespace
                    .as_deref()
                    .filter(|_| shared.identifier.is_k8s()),
            )
            .map_err(|e| Refused::new(400, ErrorKind::Unidentified, e.to_string()))?;
    }
    if obs.track() {
        obs.spans.identified = Some(obs.since());
    }
    let mut ctx: [&[u8]; MAX_DTAB_HEADERS] = [&[]; MAX_DTAB_HEADERS];
    let mut dtab: [&[u8]; MAX_DTAB_HEADERS] = [&[]; MAX_DTAB_HEADERS];
    let (mut nctx, mut ndtab) = (0, 0);
    let mut too_many = false;
    for (header, slots, n) in [
        ("l5d-ctx-dtab", &mut ctx, &mut nctx),
        ("l5d-dtab", &mut dtab, &mut ndtab),
    ] {
        req.any_value(header, &mut |value| {
            if *n == MAX_DTAB_HEADERS {
                too_many = true;
                return true;
            }
            slots[*n] = value;
            *n += 1;
            false
        });
    }
    if too_many {
        return Err(Refused {
            always_close: true,
            ..Refused::new(400, ErrorKind::BadDtab, "too many dtab header lines")
        });
    }
    let refused_source = || {
        Refused::new(
            403,
            ErrorKind::OverrideRefused,
            Refusal::Source(from.peer.ip()).to_string(),
        )
    };
    // Who may send an override (the policy's `mode`), and the edge,
    // where every l5d- header from outside goes.
    let policy = shared.router.policy();
    let edge = policy.edge;
    // At the edge a signed override may stay: its signature decides.
    if policy.edge && policy.mode != overrides::Mode::Signed {
        (nctx, ndtab) = (0, 0);
    } else if nctx + ndtab > 0 {
        let refused = match policy.source_in(from.peer.ip(), pod_namespace.as_deref()) {
            SourceVerdict::Honoured => false,
            SourceVerdict::Dropped => true,
            SourceVerdict::Refused if policy.on_refusal == OnRefusal::Drop => true,
            SourceVerdict::Refused => return Err(refused_source()),
        };
        if refused {
            shared.metrics.error(ErrorKind::OverrideRefused);
            (nctx, ndtab) = (0, 0);
        }
    }
    // The copy a request asks for: the same source rules as its dtab
    // headers (but it is refused in `signed` mode, when routed).
    let mut mirror = None;
    if !policy.edge
        && let Some(to) = req.get(&shared.cfg.shadow.request_header)
    {
        match policy.source_in(from.peer.ip(), pod_namespace.as_deref()) {
            SourceVerdict::Honoured => mirror = Some(to),
            SourceVerdict::Refused if policy.on_refusal == OnRefusal::Reject => {
                return Err(refused_source());
            }
            SourceVerdict::Refused | SourceVerdict::Dropped => {
                shared.metrics.error(ErrorKind::OverrideRefused);
            }
        }
    }
    drop(policy);
    let sig = if nctx + ndtab > 0 {
        req.get(SIGNATURE_HEADER)
    } else {
        None
    };
    // The first routing rule the request matches, if there are rules.
    let rules = shared.router.rules();
    let rule = if rules.is_empty() {
        None
    } else {
        rules.first_match(&RuleFacts {
            req,
            name,
            peer: from.peer.ip(),
            pod: pod.as_deref(),
        })
    };
    drop(rules);
    let query = RouteQuery {
        ctx: &ctx[..nctx],
        dtab: &dtab[..ndtab],
        sig,
        rule,
        mirror,
        name,
    };
    route::route_key(key, &query);
    let route = shared.router.route(key, &query).map_err(|e| match e {
        RouteError::BadDtab { .. } | RouteError::TooManyEntries { .. } => Refused {
            always_close: true,
            ..Refused::new(400, ErrorKind::BadDtab, e.to_string())
        },
        RouteError::Refused(_) | RouteError::BadMirror(_) => {
            Refused::new(403, ErrorKind::OverrideRefused, e.to_string())
        }
    })?;
    if route.dropped_override.is_some() {
        shared.metrics.error(ErrorKind::OverrideRefused);
    }
    Ok(Routed { route, edge })
}

/// A route a namer could not bind yet (it has not synced what the name
/// needs, `pending`): routed `again` every few milliseconds until it binds
/// or `timeout` passes (the last answer, pending, is then refused).
/// Pending routes are not cached, so each try binds afresh.
pub(super) async fn until_synced<T, E>(
    watchdog: &Watchdog,
    timeout: Duration,
    mut routed: T,
    pending: impl Fn(&T) -> bool,
    mut again: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let until = Instant::now() + timeout;
    while pending(&routed) && Instant::now() < until {
        let pause = SYNC_POLL.min(until.saturating_duration_since(Instant::now()));
        let _ = watchdog.timeout(pause, std::future::pending::<()>()).await;
        routed = again()?;
    }
    Ok(routed)
}

/// What routing rules ask of a request.
struct RuleFacts<'a, H> {
    req: &'a H,
    name: &'a [u8],
    peer: std::net::IpAddr,
    /// The calling pod, when known.
    pod: Option<&'a crate::namer::k8s::pods::PodInfo>,
}

impl<H: RequestView> rules::Facts for RuleFacts<'_, H> {
    fn header_values(&self, name: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        self.req.any_value(name, &mut |v| each(v))
    }
    fn target(&self) -> &[u8] {
        self.req.target()
    }
    fn logical_name(&self) -> &[u8] {
        self.name
    }
    fn source(&self) -> std::net::IpAddr {
        self.peer
    }
    fn source_namespace(&self) -> Option<&str> {
        self.pod.map(|p| &*p.namespace)
    }
    fn source_label(&self, name: &str) -> Option<&str> {
        self.pod.and_then(|p| p.label(name))
    }
}

/// Chooses the destination of a request from its route, or the refusal.
pub(super) fn pick_dest<'r>(
    route: &'r Route,
    rng: &mut SmallRng,
    sticky: Option<&[u8]>,
) -> Result<&'r Dest, Refused> {
    use crate::{dtab::Choice, route::Outcome};
    // A bound tree chooses per request, or by the sticky key; the other
    // outcomes are the same answers a choice can come to.
    let choice = match &route.outcome {
        Outcome::Bound(tree) => match sticky {
            Some(key) if !key.is_empty() => tree.choose_sticky(key),
            _ => tree.choose(rng),
        },
        Outcome::Neg => Choice::Neg,
        Outcome::Fail => Choice::Fail,
        Outcome::Empty => Choice::Empty,
        Outcome::Error(e) => {
            return Err(Refused::new(
                502,
                ErrorKind::BindFailed,
                format!("binding {} failed: {e}", route.name),
            ));
        }
        Outcome::Pending(e) => {
            return Err(Refused::new(
                503,
                ErrorKind::NoEndpoints,
                format!("{e}; gave up after k8s.sync_timeout_ms"),
            ));
        }
    };
    match choice {
        Choice::Leaf(dest) => Ok(dest),
        Choice::Empty => Err(Refused::new(
            503,
            ErrorKind::NoEndpoints,
            format!("{} is bound to an empty name set", route.name),
        )),
        Choice::Neg => Err(Refused::new(
            502,
            ErrorKind::BindNeg,
            format!("no route to {}: the name is not bound (neg)", route.name),
        )),
        Choice::Fail => Err(Refused::new(
            502,
            ErrorKind::BindFailed,
            format!("no route to {}: the dtab says fail", route.name),
        )),
    }
}

/// The authority a request is named by: its own, unless it has none or
/// names a bare IP address and the connection was intercepted, in which
/// case the original destination `ip:port` (written into `scratch`) stands in.
pub(super) fn name_authority<'a>(
    authority: Option<&'a [u8]>,
    orig: Option<SocketAddrV4>,
    scratch: &'a mut [u8; 21],
) -> Option<&'a [u8]> {
    let is_address = |a: &[u8]| {
        let text = std::str::from_utf8(a).unwrap_or("");
        let host = text
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(text, |(h, _)| h);
        host.parse::<std::net::IpAddr>().is_ok()
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
    };
    match (authority, orig) {
        (Some(a), Some(dst)) if is_address(a) => Some(write_addr(scratch, dst)),
        (None, Some(dst)) => Some(write_addr(scratch, dst)),
        (a, _) => a,
    }
}

/// `ip:port` into a stack buffer (21 bytes hold the longest IPv4 one).
pub(super) fn write_addr(scratch: &mut [u8; 21], addr: SocketAddrV4) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut scratch[..]);
    let _ = write!(cursor, "{addr}");
    let n = cursor.position() as usize;
    &scratch[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_are_dropped_and_the_edge_drops_every_l5d_header() {
        let inside = Dropped {
            edge: false,
            max_forwards: false,
            request_header: b"l5d-mirror",
            timing: false,
        };
        for name in [
            &b"l5d-dtab"[..],
            b"L5d-Ctx-Dtab",
            b"l5d-dtab-sig",
            b"l5d-dst-service",
            b"l5d-dst-client",
            b"proxy-authorization",
            b"l5d-mirror",
        ] {
            assert!(inside.drops(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [&b"l5d-reqid"[..], b"max-forwards", b"l5d-timing", b"te"] {
            assert!(!inside.drops(name), "{}", String::from_utf8_lossy(name));
        }
        let edge = Dropped {
            edge: true,
            max_forwards: true,
            timing: true,
            ..inside
        };
        for name in [&b"l5d-reqid"[..], b"max-forwards", b"l5d-timing"] {
            assert!(edge.drops(name), "{}", String::from_utf8_lossy(name));
        }
    }
}
