//! Body framing (RFC 9112 §6) and persistence (§9.3) of request and
//! response heads, against a reference written from the RFCs over the
//! field lines as they were generated, not as the head parser found them:
//! a lookup that misses a line (case, several lines, a near-miss name)
//! shows as a disagreement. Also, what the proxy writes on frames its body
//! as the received head did, and a response decoded for an HTTP/1.0 client
//! is close-delimited.
//!
//! Input: byte 0 picks the HTTP version, request or response and the
//! request kind, byte 1 the method or status; the rest is field lines
//! separated by `\n`, each a name picked by its first byte (the framing
//! fields in several spellings, near misses, others) and a value.
//!
//! `cargo xtask fuzz --only framing` (docs/fuzz.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

use sidetrack_fuzz::http::{
    self, BodyLength, Framing, Known, Limits, Parsed, RequestHead, RequestKind, ResponseHead,
    head::MAX_HEADERS_CAP,
};

const NAMES: [&str; 16] = [
    "Content-Length",
    "content-length",
    "CONTENT-LENGTH",
    "Transfer-Encoding",
    "transfer-encoding",
    "TRANSFER-encoding",
    "Connection",
    "connection",
    "Expect",
    "Upgrade",
    "Keep-Alive",
    // Near misses: not framing fields.
    "Content-Lengths",
    "Content_Length",
    "Transfer-Encodinf",
    "Xransfer-Encoding",
    "X-Other",
];

const METHODS: [&str; 4] = ["POST", "GET", "PUT", "OPTIONS"];

const STATUSES: [u16; 16] = [
    100, 101, 103, 199, 200, 201, 204, 206, 299, 300, 304, 305, 400, 404, 500, 599,
];

/// Is `b` optional white space?
fn ows(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// The values of the generated lines named `name` (any case), in order.
fn values<'a>(fields: &'a [(&str, &[u8])], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| trim(v))
}

/// The non-empty elements of comma-separated lists over several lines.
fn elements<'a>(fields: &'a [(&str, &[u8])], name: &'a str) -> Vec<&'a [u8]> {
    values(fields, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|e| !e.is_empty())
        .collect()
}

fn has(fields: &[(&str, &[u8])], name: &str, token: &str) -> bool {
    elements(fields, name)
        .iter()
        .any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// What Transfer-Encoding says: `None` without one, `Some(Err)` when it
/// leaves the end unknowable (no coding; chunked last but not only once),
/// `Some(Ok(chunked last))` otherwise.
fn coding(fields: &[(&str, &[u8])]) -> Option<Result<bool, ()>> {
    values(fields, "transfer-encoding").next()?;
    let codings = elements(fields, "transfer-encoding");
    let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    let chunked = codings.iter().filter(|c| is_chunked(c)).count();
    Some(match codings.last() {
        None => Err(()),
        Some(last) if is_chunked(last) => (chunked == 1).then_some(true).ok_or(()),
        Some(_) => Ok(false),
    })
}

/// Content-Length: every element of every line a number, all equal.
fn length(fields: &[(&str, &[u8])]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for v in values(fields, "content-length") {
        for e in v.split(|&b| b == b',').map(trim) {
            if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(e).unwrap().parse().map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn keep(length: BodyLength) -> Result<Framing, ()> {
    Ok(Framing {
        length,
        close: false,
    })
}

fn close(length: BodyLength) -> Result<Framing, ()> {
    Ok(Framing {
        length,
        close: true,
    })
}

/// RFC 9112 §6.3 for a request, with the proxy's strictness: any
/// Transfer-Encoding on HTTP/1.0 is refused, and so is a final coding other
/// than chunked; TE with CL is chunked, and the connection closes after.
fn request_reference(minor: u8, fields: &[(&str, &[u8])]) -> Result<Framing, ()> {
    let cl = values(fields, "content-length").next().is_some();
    match coding(fields) {
        Some(_) if minor == 0 => Err(()),
        Some(Ok(true)) => Ok(Framing {
            length: BodyLength::Chunked,
            close: cl,
        }),
        Some(_) => Err(()),
        None => match length(fields)? {
            Some(n) => keep(BodyLength::Length(n)),
            None => keep(BodyLength::None),
        },
    }
}

/// RFC 9112 §6.3 for a response; the proxy trusts only the close where the
/// framing is faulty but the end is still known.
fn response_reference(
    kind: RequestKind,
    minor: u8,
    status: u16,
    fields: &[(&str, &[u8])],
) -> Result<Framing, ()> {
    if status == 101 {
        return if kind.upgrade {
            keep(BodyLength::Tunnel)
        } else {
            Err(())
        };
    }
    if status < 200 {
        return keep(BodyLength::None);
    }
    if kind.connect && status < 300 {
        return keep(BodyLength::Tunnel);
    }
    if kind.head || status == 204 || status == 304 {
        return keep(BodyLength::None);
    }
    let cl = values(fields, "content-length").next().is_some();
    match coding(fields) {
        Some(Err(())) => Err(()),
        Some(_) if minor == 0 => close(BodyLength::UntilClose),
        Some(Ok(true)) => Ok(Framing {
            length: BodyLength::Chunked,
            close: cl,
        }),
        Some(Ok(false)) => close(BodyLength::UntilClose),
        None => match length(fields)? {
            Some(n) => keep(BodyLength::Length(n)),
            None => close(BodyLength::UntilClose),
        },
    }
}

/// Limits for parsing: a received head gets the proxy's defaults, a
/// written one room for the fields the proxy adds (`Connection: close`).
fn limits(written: bool) -> Limits {
    let max_headers = if written { MAX_HEADERS_CAP } else { 100 };
    Limits {
        max_headers,
        ..Limits::default()
    }
}

fn parse_request<'h>(
    head: &'h mut RequestHead,
    buf: &[u8],
    written: bool,
) -> Option<&'h RequestHead> {
    match head.parse(buf, &limits(written)) {
        Ok(Parsed::Complete { head_len }) => {
            assert_eq!(head_len, buf.len());
            Some(head)
        }
        _ => None,
    }
}

fn parse_response<'h>(
    head: &'h mut ResponseHead,
    buf: &[u8],
    written: bool,
) -> Option<&'h ResponseHead> {
    match head.parse(buf, &limits(written)) {
        Ok(Parsed::Complete { head_len }) => {
            assert_eq!(head_len, buf.len());
            Some(head)
        }
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let [flags, pick, lines @ ..] = input else {
        return;
    };
    let minor = flags & 1;
    let is_request = flags & 2 != 0;
    let fields: Vec<(&str, &[u8])> = lines
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&n, value) = line.split_first()?;
            Some((NAMES[usize::from(n) % NAMES.len()], value))
        })
        .collect();

    let mut buf = Vec::new();
    if is_request {
        let method = METHODS[usize::from(*pick) % METHODS.len()];
        buf.extend_from_slice(format!("{method} /x HTTP/1.{minor}\r\nHost: a\r\n").as_bytes());
    } else {
        let status = STATUSES[usize::from(*pick) % STATUSES.len()];
        buf.extend_from_slice(format!("HTTP/1.{minor} {status} R\r\n").as_bytes());
    }
    for (name, value) in &fields {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");

    let mut out = Vec::new();
    if is_request {
        let mut head = RequestHead::default();
        // Values httparse refuses (control bytes) make no head: nothing to check.
        let Some(req) = parse_request(&mut head, &buf, false) else {
            return;
        };
        assert_eq!(req.minor_version(), minor);
        let framing = http::request_body(req, &buf);
        assert_eq!(
            framing.map_err(|_| ()),
            request_reference(minor, &fields),
            "request framing of {:?}",
            String::from_utf8_lossy(&buf)
        );
        assert_eq!(
            http::wants_close(minor, req.get_all(&buf, Known::Connection)),
            has(&fields, "connection", "close")
                || (minor == 0 && !has(&fields, "connection", "keep-alive"))
        );
        assert_eq!(
            http::expects_continue(req, &buf),
            minor == 1 && has(&fields, "expect", "100-continue")
        );
        let upgrade = minor == 1
            && values(&fields, "upgrade")
                .next()
                .is_some_and(|v| !v.is_empty())
            && has(&fields, "connection", "upgrade");
        assert_eq!(http::is_upgrade(req, &buf), upgrade);
        let kind = RequestKind::of(req, &buf);
        assert_eq!(kind.upgrade, upgrade);

        // What goes upstream frames the body the same way.
        if let Ok(framing) = framing {
            http::write_request(
                &mut out,
                req,
                &buf,
                &framing.length,
                upgrade,
                |_| false,
                &[],
            );
            let mut again = RequestHead::with_capacity(MAX_HEADERS_CAP);
            let re = parse_request(&mut again, &out, true).expect("the written request parses");
            assert_eq!(
                http::request_body(re, &out).map(|f| f.length),
                Ok(framing.length),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    } else {
        let mut head = ResponseHead::default();
        let Some(resp) = parse_response(&mut head, &buf, false) else {
            return;
        };
        let kind = RequestKind {
            head: flags & 4 != 0,
            connect: flags & 8 != 0,
            upgrade: flags & 16 != 0,
        };
        let status = resp.status();
        let framing = http::response_body(kind, resp, &buf);
        assert_eq!(
            framing.map_err(|_| ()),
            response_reference(kind, minor, status, &fields),
            "response framing of {:?} for {kind:?}",
            String::from_utf8_lossy(&buf)
        );
        assert_eq!(
            http::wants_close(minor, resp.get_all(&buf, Known::Connection)),
            has(&fields, "connection", "close")
                || (minor == 0 && !has(&fields, "connection", "keep-alive"))
        );
        let Ok(framing) = framing else { return };

        // What goes to the client frames the body the same way.
        let tunnel = framing.length == BodyLength::Tunnel;
        http::write_response(
            &mut out,
            resp,
            &buf,
            &framing.length,
            tunnel && status == 101,
            framing.close,
            &[],
        );
        let mut again = ResponseHead::with_capacity(MAX_HEADERS_CAP);
        let re = parse_response(&mut again, &out, true).expect("the written response parses");
        assert_eq!(re.status(), status);
        // (An HTTP/1.0 response with Transfer-Encoding, read to the close,
        // once went on with the field kept: seed bug-response-1.0-te-chunked.)
        assert_eq!(
            http::response_body(kind, re, &out).map(|f| f.length),
            Ok(framing.length),
            "{:?} written as {:?}",
            String::from_utf8_lossy(&buf),
            String::from_utf8_lossy(&out)
        );

        // A chunked response decoded for an HTTP/1.0 client: no framing
        // field, and the close ends it.
        if framing.length == BodyLength::Chunked {
            out.clear();
            http::write_response_dechunked(&mut out, resp, &buf, &[]);
            let mut again = ResponseHead::with_capacity(MAX_HEADERS_CAP);
            let re = parse_response(&mut again, &out, true).expect("the dechunked head parses");
            assert!(re.get(&out, Known::TransferEncoding).is_none());
            assert!(re.get(&out, Known::ContentLength).is_none());
            assert!(http::wants_close(1, re.get_all(&out, Known::Connection)));
            assert_eq!(
                http::response_body(kind, re, &out),
                Ok(Framing {
                    length: BodyLength::UntilClose,
                    close: true
                })
            );
        }
    }
});
