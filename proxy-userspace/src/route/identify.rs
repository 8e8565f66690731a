//! Identification: the logical name of a request, as Linkerd 1's HTTP
//! identifiers make it.
//!
//! * `io.l5d.header.token` (the default): `<prefix>/<Host>`, the Host value
//!   (or the absolute-form authority) as one element, port included.
//! * `io.l5d.methodAndHost`: `<prefix>/1.1/<METHOD>/<host>`; HTTP/1.0
//!   requests are named `1.0`.
//!
//! The name is written into a caller's buffer; nothing is allocated.

use crate::config::IdentifierKind;

#[derive(Clone, Debug)]
pub struct Identifier {
    kind: IdentifierKind,
    prefix: String,
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
        }
    }

    /// Writes the logical name into `out` (cleared first).
    pub fn identify(
        &self,
        out: &mut Vec<u8>,
        method: &[u8],
        minor: u8,
        host: Option<&[u8]>,
    ) -> Result<(), IdentifyError> {
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or(IdentifyError::NoHost)?;
        if host.iter().any(|b| *b == b'/' || *b <= b' ' || *b == 0x7f) {
            return Err(IdentifyError::BadHost);
        }
        out.clear();
        out.extend_from_slice(self.prefix.as_bytes());
        if self.kind == IdentifierKind::MethodAndHost {
            out.extend_from_slice(if minor == 0 { b"/1.0/" } else { b"/1.1/" });
            out.extend_from_slice(method);
        }
        out.push(b'/');
        out.extend_from_slice(host);
        Ok(())
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
        id.identify(&mut out, method.as_bytes(), minor, host.map(str::as_bytes))?;
        Ok(String::from_utf8(out).unwrap())
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
