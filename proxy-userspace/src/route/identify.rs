//! Identification: the logical name of a request, as Linkerd 1's HTTP
//! identifiers make it.
//!
//! * `io.l5d.header.token` (the default): `<prefix>/<Host>`, the Host value
//!   (or the absolute-form authority) as one element, port included.
//! * `io.l5d.methodAndHost`: `<prefix>/1.1/<METHOD>/<host>`; HTTP/1.0
//!   requests are named `1.0`.
//! * `k8s`: `<prefix>/<namespace>/<port>/<service>` from the names pods
//!   write: `world`, `world.default`, `world.default.svc` and
//!   `world.default.svc.<cluster domain>`, with or without a port. A short
//!   name is in the identifier's namespace; a missing port is the original
//!   destination's (the Service port the pod called), else 80. Any other
//!   host (an IP address, a name outside the cluster) is named as
//!   `io.l5d.header.token` names it.
//!
//! The name is written into a caller's buffer; nothing is allocated.

use crate::config::IdentifierKind;

#[derive(Clone, Debug)]
pub struct Identifier {
    kind: IdentifierKind,
    prefix: String,
    /// `k8s`: the namespace of short names, and the cluster's domain.
    namespace: String,
    cluster_domain: String,
}

/// The version an HTTP/2 request is identified with (in place of HTTP/1's
/// minor version): `io.l5d.methodAndHost` names it `/svc/2/<METHOD>/<host>`.
pub const HTTP2: u8 = u8::MAX;

/// Whether an authority (`host[:port]`) names its host by an IP address,
/// or not at all: then a Service may name it instead.
pub fn names_no_host(authority: Option<&[u8]>) -> bool {
    let Some(a) = authority.filter(|a| !a.is_empty()) else {
        return true;
    };
    if a.first() == Some(&b'[') {
        return true;
    }
    let host = match a.iter().rposition(|&b| b == b':') {
        Some(i) => &a[..i],
        None => a,
    };
    std::str::from_utf8(host).is_ok_and(|h| h.parse::<std::net::Ipv4Addr>().is_ok())
}

/// Why a request has no name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("no Host header and no absolute-form target to name the destination")]
    NoHost,
    #[error("the Host value cannot be a path element (it holds '/', a space or a control byte)")]
    BadHost,
}

impl Identifier {
    /// `prefix` like `/svc` (a trailing slash is ignored).
    pub fn new(kind: IdentifierKind, prefix: &str) -> Identifier {
        Identifier {
            kind,
            prefix: prefix.trim_end_matches('/').to_owned(),
            namespace: "default".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    /// `k8s`: short names are in `namespace`; full names end in
    /// `.svc.<cluster_domain>`.
    pub fn with_k8s(mut self, namespace: &str, cluster_domain: &str) -> Identifier {
        self.namespace = namespace.to_owned();
        self.cluster_domain = cluster_domain.trim_matches('.').to_owned();
        self
    }

    /// Writes the logical name into `out` (cleared first). `dst_port` is
    /// the port the client connected to, when intercepted; `namespace`
    /// the client's, when known (`k8s`: the namespace of its short names).
    pub fn identify_from(
        &self,
        out: &mut Vec<u8>,
        method: &[u8],
        minor: u8,
        host: Option<&[u8]>,
        dst_port: Option<u16>,
        namespace: Option<&str>,
    ) -> Result<(), IdentifyError> {
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or(IdentifyError::NoHost)?;
        if host.iter().any(|b| *b == b'/' || *b <= b' ' || *b == 0x7f) {
            return Err(IdentifyError::BadHost);
        }
        out.clear();
        out.extend_from_slice(self.prefix.as_bytes());
        if self.kind == IdentifierKind::K8s && self.k8s_name(out, host, dst_port, namespace) {
            return Ok(());
        }
        if self.kind == IdentifierKind::MethodAndHost {
            out.extend_from_slice(match minor {
                0 => b"/1.0/",
                HTTP2 => b"/2/",
                _ => b"/1.1/",
            });
            out.extend_from_slice(method);
        }
        out.push(b'/');
        out.extend_from_slice(host);
        Ok(())
    }
}

impl Identifier {
    /// The `k8s` identifier: a request without a usable Host may be named
    /// by the Service that owns its original destination.
    pub fn is_k8s(&self) -> bool {
        self.kind == IdentifierKind::K8s
    }

    /// Writes the `k8s` name of a known Service into `out` (cleared first).
    pub fn k8s_service(&self, out: &mut Vec<u8>, namespace: &str, port: u16, service: &str) {
        let mut digits = [0u8; 20];
        out.clear();
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'/');
        out.extend_from_slice(namespace.as_bytes());
        out.push(b'/');
        out.extend_from_slice(crate::http::decimal(u64::from(port), &mut digits));
        out.push(b'/');
        out.extend_from_slice(service.as_bytes());
    }

    /// Appends `/<namespace>/<port>/<service>` when `host` is a cluster
    /// name; false (nothing written) when it is not.
    fn k8s_name(
        &self,
        out: &mut Vec<u8>,
        host: &[u8],
        dst_port: Option<u16>,
        namespace: Option<&str>,
    ) -> bool {
        let short = namespace.unwrap_or(&self.namespace).as_bytes();
        let (name, port) = match host.iter().rposition(|&b| b == b':') {
            Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && i + 1 < host.len() => {
                (&host[..i], Some(&host[i + 1..]))
            }
            _ => (host, None),
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        let labels: Vec<&[u8]> = name.split(|&b| b == b'.').collect();
        let domain = self.cluster_domain.as_bytes();
        let (service, namespace) = match labels.as_slice() {
            [svc] => (*svc, short),
            [svc, ns] | [svc, ns, b"svc"] => (*svc, *ns),
            [svc, ns, b"svc", rest @ ..] if rest.join(&b'.') == domain => (*svc, *ns),
            _ => return false,
        };
        // DNS labels: what a Service or namespace name can be.
        let label = |l: &[u8]| {
            !l.is_empty()
                && l.len() <= 63
                && l.iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && !l[0].is_ascii_digit()
        };
        if !label(service) || !label(namespace) {
            return false;
        }
        let mut digits = [0u8; 20];
        let port = match (port, dst_port) {
            (Some(p), _) => p,
            (None, Some(p)) => crate::http::decimal(u64::from(p), &mut digits),
            (None, None) => b"80",
        };
        out.push(b'/');
        out.extend_from_slice(namespace);
        out.push(b'/');
        out.extend_from_slice(port);
        out.push(b'/');
        out.extend_from_slice(service);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(
        id: &Identifier,
        method: &str,
        minor: u8,
        host: Option<&str>,
    ) -> Result<String, IdentifyError> {
        let mut out = Vec::new();
        id.identify_from(
            &mut out,
            method.as_bytes(),
            minor,
            host.map(str::as_bytes),
            None,
            None,
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn hosts_that_name_no_host() {
        for a in [
            None,
            Some(&b""[..]),
            Some(b"10.96.0.10"),
            Some(b"10.96.0.10:80"),
            Some(b"[fd00::1]:80"),
        ] {
            assert!(names_no_host(a), "{a:?}");
        }
        for a in [
            &b"world"[..],
            b"world:80",
            b"world.default.svc",
            b"10.96.0.10.nip.io",
        ] {
            assert!(!names_no_host(Some(a)), "{a:?}");
        }
        let id = Identifier::new(IdentifierKind::K8s, "/svc");
        let mut out = Vec::new();
        id.k8s_service(&mut out, "shop", 8080, "cart");
        assert_eq!(out, b"/svc/shop/8080/cart");
    }

    #[test]
    fn k8s_names_every_form_pods_write_alike() {
        let id = Identifier::new(IdentifierKind::K8s, "/svc").with_k8s("shop", "cluster.local");
        let k8s = |host: &str, dst: Option<u16>| {
            let mut out = Vec::new();
            id.identify_from(&mut out, b"GET", 1, Some(host.as_bytes()), dst, None)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        for host in [
            "world.default",
            "world.default.svc",
            "world.default.svc.cluster.local",
            "world.default.svc.cluster.local.",
        ] {
            assert_eq!(k8s(host, None), "/svc/default/80/world", "{host}");
            assert_eq!(
                k8s(&format!("{host}:8080"), None),
                "/svc/default/8080/world",
                "{host}"
            );
        }
        // A short name is in the identifier's namespace; the port the pod
        // called stands in for a missing one.
        assert_eq!(k8s("world", None), "/svc/shop/80/world");
        assert_eq!(k8s("world", Some(9000)), "/svc/shop/9000/world");
        assert_eq!(k8s("world:81", Some(9000)), "/svc/shop/81/world");
        // A client known to be in a namespace: its short names are there.
        let mut out = Vec::new();
        id.identify_from(&mut out, b"GET", 1, Some(b"world"), None, Some("blog"))
            .unwrap();
        assert_eq!(out, b"/svc/blog/80/world");
        id.identify_from(&mut out, b"GET", 1, Some(b"world.shop"), None, Some("blog"))
            .unwrap();
        assert_eq!(out, b"/svc/shop/80/world");
        // Not cluster names: as io.l5d.header.token.
        for host in [
            "198.19.0.2:80",
            "api.example.com",
            "world.default.svc.other.domain",
            "World",
            "[::1]:80",
        ] {
            assert_eq!(k8s(host, None), format!("/svc/{host}"), "{host}");
        }
    }

    #[test]
    fn header_token_uses_the_host_as_one_element() {
        let id = Identifier::new(IdentifierKind::HeaderToken, "/svc");
        assert_eq!(name(&id, "GET", 1, Some("world")).unwrap(), "/svc/world");
        assert_eq!(
            name(&id, "GET", 1, Some("world.default:8080")).unwrap(),
            "/svc/world.default:8080"
        );
        assert_eq!(name(&id, "GET", 1, None), Err(IdentifyError::NoHost));
        assert_eq!(name(&id, "GET", 1, Some("")), Err(IdentifyError::NoHost));
        assert_eq!(
            name(&id, "GET", 1, Some("a/b")),
            Err(IdentifyError::BadHost)
        );
    }

    #[test]
    fn method_and_host() {
        let id = Identifier::new(IdentifierKind::MethodAndHost, "/http/");
        assert_eq!(
            name(&id, "POST", 1, Some("web")).unwrap(),
            "/http/1.1/POST/web"
        );
        assert_eq!(
            name(&id, "GET", 0, Some("web")).unwrap(),
            "/http/1.0/GET/web"
        );
    }
}
