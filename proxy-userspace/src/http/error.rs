//! Responses the proxy makes itself when it cannot or will not forward a
//! request. Each says why twice: in `l5d-err` (Linkerd 1's header, which
//! tools read) and as a one-line text body (which people read).
//!
//! The reason often quotes what a client sent (a bad dtab, a host name), so
//! it is reduced to printable ASCII and bounded before it enters a header.

use super::rewrite::push_status;

/// Longest reason written, in bytes; longer ones are cut and end in `...`.
pub const MAX_REASON: usize = 1024;

/// Appends a complete response to `out`: status line, `l5d-err: <reason>`,
/// `Content-Type: text/plain`, `Content-Length`, `Connection: close` when
/// `close`, and the body `<reason>\n`. Every byte of `reason` outside
/// printable ASCII becomes `?`.
pub fn write_error(out: &mut Vec<u8>, status: u16, reason: &str, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, status);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nl5d-err: ");
    let start = out.len();
    push_sanitised(out, reason);
    let end = out.len();
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    push_decimal(out, end - start + 1);
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_within(start..end);
    out.push(b'\n');
}

/// Why a TRACE at `Max-Forwards: 0` gets 405 (`l5d-err` and the body).
pub const TRACE_REASON: &str = "Max-Forwards reached 0 at the proxy, which does not reflect TRACE";

/// The proxy's own answer to a TRACE or OPTIONS request it may forward no
/// further (`Max-Forwards: 0`), as the final recipient (RFC 9110 §7.6.2):
/// OPTIONS gets 200, TRACE 405 with `l5d-err` (the proxy does not reflect
/// requests: a reflected head would show the client's cookies and
/// credentials to whatever script sent it). Both say `Allow: OPTIONS` and
/// carry `via`, so the client sees which hop answered.
pub fn write_max_forwards_answer(out: &mut Vec<u8>, trace: bool, via: &[u8], close: bool) {
    if trace {
        out.extend_from_slice(b"HTTP/1.1 405 Method Not Allowed\r\nl5d-err: ");
        out.extend_from_slice(TRACE_REASON.as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
        push_decimal(out, TRACE_REASON.len() + 1);
    } else {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0");
    }
    out.extend_from_slice(b"\r\nallow: OPTIONS\r\nvia: ");
    out.extend_from_slice(via);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if trace {
        out.extend_from_slice(TRACE_REASON.as_bytes());
        out.push(b'\n');
    }
}

/// `n` in decimal, in `digits`: the slice it takes.
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// `reason` as an `l5d-err` value: printable ASCII (others become `?`),
/// cut at a bound.
pub fn push_sanitised(out: &mut Vec<u8>, reason: &str) {
    let bytes = reason.as_bytes();
    let cut = bytes.len() > MAX_REASON;
    let keep = if cut { &bytes[..MAX_REASON - 3] } else { bytes };
    out.extend(
        keep.iter()
            .map(|&b| if (b' '..=b'~').contains(&b) { b } else { b'?' }),
    );
    if cut {
        out.extend_from_slice(b"...");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(decimal(n as u64, &mut [0u8; 20]));
}

/// The reason phrase RFC 9110 §15 gives a status code; `""` for others.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, reason: &str, close: bool) -> String {
        let mut out = Vec::new();
        write_error(&mut out, status, reason, close);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(
            error(502, "no endpoints for /svc/web", false),
            "HTTP/1.1 502 Bad Gateway\r\nl5d-err: no endpoints for /svc/web\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\nno endpoints for /svc/web\n"
        );
        assert_eq!(
            error(431, "request head too large", true),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nl5d-err: request head too large\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\nrequest head too large\n"
        );
        assert_eq!(
            error(299, "", false),
            "HTTP/1.1 299 \r\nl5d-err: \r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\n\n"
        );
    }

    #[test]
    fn reason_is_sanitised_and_bounded() {
        assert_eq!(
            error(400, "bad\r\nX-Injected: 1\tcaf\u{e9}\0", false),
            "HTTP/1.1 400 Bad Request\r\nl5d-err: bad??X-Injected: 1?caf???\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\nbad??X-Injected: 1?caf???\n"
        );
        let long = "x".repeat(5000);
        let out = error(400, &long, false);
        let want = format!("{}...", "x".repeat(MAX_REASON - 3));
        assert!(out.contains(&format!("l5d-err: {want}\r\n")));
        assert!(out.ends_with(&format!("\r\n\r\n{want}\n")));
        assert!(out.contains(&format!("Content-Length: {}\r\n", MAX_REASON + 1)));
    }

    #[test]
    fn appends_to_out() {
        let mut out = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        write_error(&mut out, 503, "x", false);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[test]
    fn phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(400), "Bad Request");
        assert_eq!(reason_phrase(408), "Request Timeout");
        assert_eq!(reason_phrase(414), "URI Too Long");
        assert_eq!(reason_phrase(505), "HTTP Version Not Supported");
        assert_eq!(reason_phrase(799), "");
    }
}
