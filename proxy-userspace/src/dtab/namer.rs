//! Where delegation ends: bound names, the built-in `/$/...` names, and the
//! `Namer` trait through which configured namers (`/#/<prefix>/...`: the
//! file namer, the Kubernetes namer) bind the paths under their prefix.
//!
//! Built-in names, as Finagle's global namer has them:
//! - `/$/inet/<ip>/<port>[/residual]` (and `/$/fixedinet`, the same here) binds
//!   to that address. `/$/inet/<port>` and the host `localhost` mean the
//!   loopback address. Hosts are IP literals (dotted IPv4 with Java's short
//!   forms such as `127.1`, or IPv6): this module does no DNS.
//! - `/$/nil[/...]` is empty, `/$/fail[/...]` fails.
//! - any other `/$/<kind>/...` is an error (an unknown namer); `/$` alone is neg.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::path::Path;
use super::tree::NameTree;

/// One address a bound name stands for, with its load-balancing weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: f64,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, weight: 1.0 }
    }
}

/// The addresses of a bound name. A single address is stored inline, so
/// binding `/$/inet/...` allocates nothing for it.
#[derive(Clone, Debug)]
pub enum Endpoints {
    One(Endpoint),
    Set(Arc<[Endpoint]>),
}

impl Endpoints {
    pub fn as_slice(&self) -> &[Endpoint] {
        match self {
            Endpoints::One(e) => std::slice::from_ref(e),
            Endpoints::Set(es) => es,
        }
    }
}

impl PartialEq for Endpoints {
    fn eq(&self, other: &Endpoints) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// A bound name: what a path delegates to in the end.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    /// The path that names this destination (`/$/inet/10.0.0.1/80`,
    /// `/#/io.l5d.fs/web`): the part of the looked-up path the namer consumed.
    pub id: Path,
    /// The rest of the looked-up path, left for the destination to interpret.
    pub residual: Path,
    pub endpoints: Endpoints,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

/// What a configured namer binds: how many labels of the path it was given
/// name the destination (they become the bound id, after the namer's
/// prefix; the rest become the residual), and the destination's addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct NamerBound {
    pub consumed: usize,
    pub endpoints: Endpoints,
}

/// A namer failure, carried into the binding error or the explanation tree.
///
/// A pending one is no answer yet: the namer has not learnt what it would
/// bind the path to (the Kubernetes namer before its first list of a
/// namespace). Neg would be wrong then (an earlier dentry would take over
/// for good), so binding fails instead, and the router neither caches nor
/// refuses such a route for good: the request may wait and bind again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamerError {
    pub message: String,
    pub pending: bool,
}

impl NamerError {
    /// A failure: the path cannot be bound.
    pub fn new(message: impl Into<String>) -> NamerError {
        NamerError {
            message: message.into(),
            pending: false,
        }
    }

    /// Not known yet: binding again later may succeed.
    pub fn pending(message: impl Into<String>) -> NamerError {
        NamerError {
            message: message.into(),
            pending: true,
        }
    }
}

impl fmt::Display for NamerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A configured namer (the file namer, the Kubernetes namer). Lookups are
/// synchronous and must be quick: they run on the request path, from state
/// the namer keeps current on its own.
pub trait Namer: Send + Sync {
    /// Binds `path` (the part after `/#/<prefix>`): a tree of bound names, or
    /// neg when this namer has nothing there.
    fn lookup(&self, path: &Path) -> Result<NameTree<NamerBound>, NamerError>;
}

/// Everything binding consults for paths the dtab does not rewrite, apart
/// from the built-in `/$/...` names. Given a whole path (`/#/io.l5d.fs/web`),
/// it returns bound names or neg.
pub trait NamerSet: Sync {
    fn lookup(&self, path: &Path) -> Result<NameTree<Bound>, NamerError>;
}

/// Namers by prefix, tried in order; a namer that answers neg passes the
/// path on to the next one whose prefix matches. `Namers::default()` has
/// none, which makes every `/#/...` path neg (the offline CLI uses that).
#[derive(Clone, Default)]
pub struct Namers {
    namers: Vec<(Path, Arc<dyn Namer>)>,
}

impl Namers {
    /// Adds a namer for paths under `/#/<kind>` (`kind` like `io.l5d.fs`,
    /// one label or several separated by `/`).
    pub fn with(mut self, kind: &str, namer: Arc<dyn Namer>) -> Namers {
        let prefix =
            Path::from_elems(std::iter::once("#").chain(kind.split('/').filter(|s| !s.is_empty())));
        self.namers.push((prefix, namer));
        self
    }
}

impl NamerSet for Namers {
    fn lookup(&self, path: &Path) -> Result<NameTree<Bound>, NamerError> {
        for (prefix, namer) in &self.namers {
            if !path.starts_with(prefix) {
                continue;
            }
            let rest = path.skip(prefix.len());
            let tree = namer.lookup(&rest)?;
            if tree != NameTree::Neg {
                return Ok(tree.map(&mut |b: &NamerBound| {
                    let n = prefix.len() + b.consumed.min(rest.len());
                    Bound {
                        id: path.take(n),
                        residual: path.skip(n),
                        endpoints: b.endpoints.clone(),
                    }
                }));
            }
        }
        Ok(NameTree::Neg)
    }
}

/// Binds a built-in `/$/...` path (the caller has checked the `$`).
pub(crate) fn lookup_system(path: &Path) -> Result<NameTree<Bound>, NamerError> {
    let mut elems = path.elems();
    elems.next(); // "$"
    let Some(kind) = elems.next() else {
        return Ok(NameTree::Neg);
    };
    match kind {
        b"inet" | b"fixedinet" => lookup_inet(path),
        b"fail" => Ok(NameTree::Fail),
        b"nil" => Ok(NameTree::Empty),
        _ => Err(NamerError::new(format!(
            "unknown namer /$/{} for path {path} (the built-in ones are /$/inet, /$/fixedinet, /$/nil and /$/fail)",
            String::from_utf8_lossy(kind)
        ))),
    }
}

/// `/$/inet/<host>/<port>/...`, else `/$/inet/<port>/...` (loopback), as
/// Finagle reads them: the first form when its port is an integer.
fn lookup_inet(path: &Path) -> Result<NameTree<Bound>, NamerError> {
    let label = |i| path.get(i).and_then(|l| std::str::from_utf8(l).ok());
    let (host, port, consumed) = match (label(2), label(3).and_then(java_int)) {
        (Some(host), Some(port)) => (host, port, 4),
        _ => match label(2).and_then(java_int) {
            Some(port) => ("", port, 3),
            None => {
                return Err(NamerError::new(format!(
                    "malformed inet path {path}: expected /$/inet/<ip>/<port>"
                )));
            }
        },
    };
    let port = u16::try_from(port)
        .map_err(|_| NamerError::new(format!("port {port} out of range in {path}")))?;
    let ip = parse_host(host).ok_or_else(|| {
        NamerError::new(format!(
            "{host} in {path} is not an IP address (the dtab engine does not resolve DNS names)"
        ))
    })?;
    Ok(NameTree::Leaf(Bound {
        id: path.take(consumed),
        residual: path.skip(consumed),
        endpoints: Endpoints::One(Endpoint::new(SocketAddr::new(ip, port))),
    }))
}

/// Java's `Integer.parseInt`: an optional sign and decimal digits, in range.
fn java_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = s.parse().ok()?;
    i32::try_from(n).ok().map(i64::from)
}

fn parse_host(host: &str) -> Option<IpAddr> {
    if host.is_empty() || host == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if let Some(v4) = parse_ipv4(host) {
        return Some(IpAddr::V4(v4));
    }
    let v6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Dotted decimal IPv4 with Java's short forms: `a.b.c.d`, `a.b.c` (c fills
/// 16 bits), `a.b` (b fills 24), `a` (32 bits).
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut value: u32 = 0;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        if i + 1 < parts.len() {
            if n > 255 {
                return None;
            }
            value |= (n as u32) << (8 * (3 - i));
        } else {
            let bits = 8 * (4 - i);
            if n >= 1u64 << bits {
                return None;
            }
            value |= n as u32;
        }
    }
    Some(Ipv4Addr::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_short_forms() {
        assert_eq!(parse_ipv4("127.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(parse_ipv4("10.1.258"), Some(Ipv4Addr::new(10, 1, 1, 2)));
        assert_eq!(parse_ipv4("1"), Some(Ipv4Addr::new(0, 0, 0, 1)));
        assert_eq!(parse_ipv4("1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(parse_ipv4("1.2.3.256"), None);
        assert_eq!(parse_ipv4("256.1"), None);
        assert_eq!(parse_ipv4("1..2"), None);
        assert_eq!(parse_ipv4("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4("a.b"), None);
    }

    #[test]
    fn java_ints() {
        assert_eq!(java_int("+80"), Some(80));
        assert_eq!(java_int("-1"), Some(-1));
        assert_eq!(java_int("99999999999"), None);
        assert_eq!(java_int("8o"), None);
        assert_eq!(java_int(""), None);
    }
}
