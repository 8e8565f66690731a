//! Request and response heads, their framing and the rewritten head, and
//! chunked scanning, on arbitrary bytes. Beyond "no panic", it checks:
//! - a prefix of a complete head is Partial;
//! - the rewritten request head parses again and frames the body as the
//!   original did (what the proxy sends cannot be split differently
//!   upstream), and carries no hop-by-hop field but the framing it needs;
//! - chunked scanning gives the same result however the input is split.
//!
//! The first input byte picks split points and the response's request kind.
//!
//! `cargo xtask fuzz --only http_head` (docs/fuzz.md); the chunked
//! decoder has a target of its own (`chunked`) that checks much more.

#![no_main]

use libfuzzer_sys::fuzz_target;

use sidetrack_fuzz::http::{
    self, BodyLength, ChunkedScanner, HeadError, Limits, Parsed, RequestHead, RequestKind,
    ResponseHead,
};

fn scan(input: &[u8], cut: usize) -> (usize, bool, Option<HeadError>) {
    let mut s = ChunkedScanner::new();
    let cut = cut.min(input.len());
    let mut used = 0;
    for piece in [&input[..cut], &input[cut..]] {
        match s.scan(piece) {
            Ok(n) => {
                used += n;
                if n < piece.len() {
                    break;
                }
            }
            Err(e) => return (used, false, Some(e)),
        }
    }
    (used, s.is_done(), None)
}

fn check_scan(input: &[u8], cut: usize) {
    let whole = scan(input, input.len());
    let split = scan(input, cut);
    assert_eq!((whole.1, whole.2), (split.1, split.2));
    if whole.2.is_none() {
        assert_eq!(whole.0, split.0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_head: 4096,
        max_request_line: 1024,
        max_headers: 32,
    };
    let mut out = Vec::new();
    let mut req = RequestHead::with_capacity(limits.max_headers);
    match req.parse(data, &limits) {
        Ok(Parsed::Complete { head_len }) => {
            assert_eq!(req.head_len(), head_len);
            let mut again = RequestHead::with_capacity(limits.max_headers);
            let cut = usize::from(knob) * head_len / 256;
            assert_eq!(again.parse(&data[..cut], &limits), Ok(Parsed::Partial));
            if let Some(a) = req.authority(data) {
                assert!(!a.is_empty() && !a.contains(&b'/'));
            }
            let _ = (
                req.target(data),
                req.headers(data).count(),
                http::via_hops(&req, data),
            );
            let _ = http::wants_close(req.minor_version(), req.get_all(data, "connection"));
            let _ = http::expects_continue(&req, data);
            let kind = RequestKind::of(&req, data);
            if let Ok(framing) = http::request_body(&req, data) {
                http::write_request(
                    &mut out,
                    &req,
                    data,
                    &framing.length,
                    kind.upgrade,
                    |n| n.eq_ignore_ascii_case(b"l5d-dtab"),
                    &[(b"l5d-dst-service", b"/svc/x")],
                );
                let mut re = RequestHead::with_capacity(limits.max_headers);
                match re.parse(&out, &Limits::default()) {
                    Ok(Parsed::Complete { head_len }) => {
                        assert_eq!(head_len, out.len());
                        assert_eq!(re.method(&out), req.method(data));
                        assert_eq!(re.authority(&out), req.authority(data));
                        let reframed =
                            http::request_body(&re, &out).expect("rewritten head frames");
                        assert_eq!(reframed.length, framing.length);
                        assert!(!reframed.close);
                        for (name, _) in re.headers(&out) {
                            let framing_field = name.eq_ignore_ascii_case(b"transfer-encoding")
                                || (kind.upgrade
                                    && (name.eq_ignore_ascii_case(b"upgrade")
                                        || name.eq_ignore_ascii_case(b"connection")));
                            assert!(!http::is_hop_by_hop(name) || framing_field);
                            assert!(!name.eq_ignore_ascii_case(b"l5d-dtab"));
                        }
                    }
                    // An HTTP/1.0 request without Host goes on without one;
                    // the proxy adds it.
                    Err(HeadError::Malformed("missing Host header")) => {
                        assert!(req.get(data, "host").is_none());
                    }
                    other => panic!("rewritten head: {other:?}"),
                }
                if framing.length == BodyLength::Chunked {
                    let body = &data[head_len..];
                    check_scan(body, usize::from(knob) * body.len() / 256);
                }
            }
        }
        Ok(Parsed::Partial) => assert!(data.len() < limits.max_head),
        Err(e) => {
            let _ = (e.status(), e.reason());
        }
    }

    let mut resp = ResponseHead::with_capacity(limits.max_headers);
    if let Ok(Parsed::Complete { .. }) = resp.parse(data, &limits) {
        let kind = RequestKind {
            head: knob & 1 != 0,
            connect: knob & 2 != 0,
            upgrade: knob & 4 != 0,
        };
        if let Ok(framing) = http::response_body(kind, &resp, data) {
            out.clear();
            http::write_response(
                &mut out,
                &resp,
                data,
                &framing.length,
                false,
                knob & 8 != 0,
                &[],
            );
            let mut re = ResponseHead::with_capacity(limits.max_headers);
            assert!(matches!(
                re.parse(&out, &Limits::default()),
                Ok(Parsed::Complete { .. })
            ));
            assert_eq!(re.status(), resp.status());
        }
    }

    check_scan(data, usize::from(knob) * data.len() / 256);
    if let Ok(text) = std::str::from_utf8(data) {
        out.clear();
        http::write_error(&mut out, 400, text, knob & 1 != 0);
        let mut re = ResponseHead::with_capacity(8);
        assert!(matches!(
            re.parse(&out, &Limits::default()),
            Ok(Parsed::Complete { .. })
        ));
    }
});
