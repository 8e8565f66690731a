//! gRPC as the proxy sees it, decided from headers alone: which requests
//! are gRPC, the deadline a call carries (`grpc-timeout`), and the status
//! the proxy's own errors become in a trailers-only response.

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};

use crate::observe::metrics::ErrorKind;

/// gRPC status codes the proxy answers with
/// (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    pub fn text(self) -> &'static str {
        match self {
            Code::DeadlineExceeded => "4",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Internal => "13",
            Code::Unavailable => "14",
        }
    }
}

/// A gRPC request: `content-type: application/grpc`, alone or with a
/// `+format` suffix (`application/grpc+proto`), any case.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers
        .get(hyper::header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|v| {
            v.len() >= GRPC.len()
                && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
                && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
        })
}

/// A call's deadline from its `grpc-timeout` (at most eight digits and a
/// unit: `H`, `M`, `S`, `m`, `u`, `n`); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status a proxy error becomes for a gRPC client: UNAVAILABLE when no
/// backend could take the call (the client may retry it elsewhere),
/// DEADLINE_EXCEEDED for timeouts, INTERNAL for protocol errors.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NoEndpoints
        | ErrorKind::ConnectFailed
        | ErrorKind::BackendDied
        | ErrorKind::BindNeg
        | ErrorKind::BindFailed
        | ErrorKind::Overloaded => Code::Unavailable,
        ErrorKind::BackendTimeout | ErrorKind::HeadTimeout | ErrorKind::BodyTimeout => {
            Code::DeadlineExceeded
        }
        ErrorKind::OverrideRefused => Code::PermissionDenied,
        ErrorKind::HeadTooLarge | ErrorKind::UriTooLong => Code::ResourceExhausted,
        ErrorKind::BadRequest
        | ErrorKind::Unidentified
        | ErrorKind::BadDtab
        | ErrorKind::Loop
        | ErrorKind::BackendHead
        | ErrorKind::TunnelIdle
        | ErrorKind::ClientDied => Code::Internal,
    }
}

/// `grpc-message`: the text percent-encoded as gRPC asks (every byte
/// outside printable ASCII, and `%`).
pub fn message(text: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    HeaderValue::from_bytes(&out).expect("printable ASCII is a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&headers(&[("content-type", ct)])), grpc, "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_bad_ones_are_ignored() {
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789S", None),
            ("S", None),
            ("10", None),
            ("10x", None),
            ("-1S", None),
        ] {
            assert_eq!(timeout(&headers(&[("grpc-timeout", v)])), want, "{v}");
        }
    }

    #[test]
    fn proxy_errors_map_to_grpc_codes() {
        assert_eq!(code(ErrorKind::NoEndpoints), Code::Unavailable);
        assert_eq!(code(ErrorKind::ConnectFailed), Code::Unavailable);
        assert_eq!(code(ErrorKind::BackendDied), Code::Unavailable);
        assert_eq!(code(ErrorKind::BackendTimeout), Code::DeadlineExceeded);
        assert_eq!(code(ErrorKind::BackendHead), Code::Internal);
        assert_eq!(code(ErrorKind::BadDtab), Code::Internal);
        assert_eq!(code(ErrorKind::OverrideRefused), Code::PermissionDenied);
        for k in ErrorKind::ALL {
            assert!(!code(k).text().is_empty());
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no endpoints for /#/x"), "no endpoints for /#/x");
        assert_eq!(message("100% é\n"), "100%25 %C3%A9%0A");
    }
}
