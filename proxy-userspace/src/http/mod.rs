//! HTTP/1.1 message framing for the proxy's hot path: request and response
//! heads parsed out of the caller's buffer, the length of the body that
//! follows (RFC 9112 §6), the end of a chunked body, the rewritten head sent
//! on, and the small error responses the proxy makes itself.
//!
//! The module is pure: no I/O, no async. The connection loop owns the bytes
//! (a reused read buffer and a reused output `Vec<u8>`); everything here
//! either reads them or appends to the output. A parsed head holds only
//! offsets ([`Span`]s) into the buffer, so it borrows nothing, lives in the
//! connection state, and copies no header bytes. After warm-up (the first
//! head of a connection sized the header vector and the output buffer) a
//! request costs no heap allocation; `tests/tests/http_alloc.rs` checks it.
//!
//! - [`head`]: [`RequestHead`] / [`ResponseHead`], parsed with httparse.
//! - [`framing`]: body length, [`ChunkedScanner`], connection persistence.
//! - [`rewrite`]: hop-by-hop removal and the forwarded heads.
//! - [`error`]: responses the proxy makes, with `l5d-err`.
//!
//! Refinements of the API first sketched for this module:
//! - [`Span`] is a `Copy` struct of two `u32` offsets rather than
//!   `Range<u32>`, which is not `Copy`.
//! - [`framing::request_body`] and [`framing::response_body`] return a
//!   [`Framing`]: the [`BodyLength`] plus `close`, set when the framing is
//!   legal but suspicious or ends only with the connection (Transfer-Encoding
//!   together with Content-Length, a close-delimited body), so the caller
//!   closes the connection after this exchange.
//! - [`BodyLength::Tunnel`]: a 2xx answer to CONNECT or a 101 answer to an
//!   upgrade; after the head both directions become an opaque byte stream.
//! - [`framing::response_body`] takes a [`RequestKind`] (HEAD? CONNECT?
//!   upgrade?), captured from the request head when it was parsed, since the
//!   request's bytes may be gone when its response arrives (pipelining).
//! - Errors inside a chunked body are [`HeadError::BadChunk`].

pub mod error;
pub mod framing;
pub mod head;
pub mod rewrite;

pub use error::{
    TRACE_REASON, decimal, push_sanitised, reason_phrase, write_error, write_max_forwards_answer,
};
pub use framing::{
    BodyLength, ChunkedScanner, Framing, RequestKind, expects_continue, has_token, is_idempotent,
    is_upgrade, request_body, response_body, wants_close,
};
pub use head::{
    FieldName, Known, Parsed, RequestHead, ResponseHead, TargetForm, read_later_minor_as_1_1,
};
pub use rewrite::{
    count_via_entries, is_hop_by_hop, max_forwards, max_forwards_of, via_hops, write_interim,
    write_request, write_response, write_response_dechunked,
};

/// Bounds on what a peer may make the proxy hold or scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request or response head, start line to the empty line included (431).
    pub max_head: usize,
    /// Request line, without its line end (414).
    pub max_request_line: usize,
    /// Header field lines in one head (431). Values above
    /// [`head::MAX_HEADERS_CAP`] are clamped to it.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a head (or a chunked body) was refused. [`HeadError::status`] is the
/// status the proxy answers a client with; for a broken *response* from a
/// backend the proxy answers 502 instead, whatever the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{0}")]
    BadFraming(&'static str),
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("{0}")]
    BadChunk(&'static str),
}

impl HeadError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::RequestLineTooLong => 414,
            HeadError::Malformed(_) | HeadError::BadFraming(_) | HeadError::BadChunk(_) => 400,
            HeadError::UnsupportedVersion => 505,
        }
    }

    /// Short text for `l5d-err`.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::RequestLineTooLong => "request line too long",
            HeadError::Malformed(why) | HeadError::BadFraming(why) | HeadError::BadChunk(why) => {
                why
            }
            HeadError::UnsupportedVersion => "unsupported HTTP version",
        }
    }
}

/// A byte range of the caller's buffer. Heads are capped far below 4 GiB, so
/// two `u32`s suffice and keep a header entry at 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    pub fn new(start: usize, end: usize) -> Span {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers in `buf`, the buffer it was parsed from.
    #[inline]
    pub fn of<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The span of `part`, a subslice of `buf`. Empty slices may point
    /// anywhere (httparse returns `""` for an absent reason phrase), so they
    /// become [`Span::EMPTY`].
    pub(crate) fn within(buf: &[u8], part: &[u8]) -> Span {
        if part.is_empty() {
            return Span::EMPTY;
        }
        let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        debug_assert!(start + part.len() <= buf.len());
        Span::new(start, start + part.len())
    }
}

/// `name` equals `lower` ignoring ASCII case, where `lower` is ASCII with
/// no uppercase letter (the proxy's own field names). `name` may be
/// anything. The same answer as `name.eq_ignore_ascii_case(lower)`, eight
/// bytes at a time: header names are compared on every field of every head.
#[inline]
pub fn eq_ignore_case_lower(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(
        lower
            .iter()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    );
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name
            .iter()
            .zip(lower)
            .all(|(&a, &b)| a == b || (a ^ 0x20 == b && b.is_ascii_lowercase()));
    }
    // Whole words, the last one overlapping the one before when n is not a
    // multiple of 8.
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    loop {
        let (a, b) = (word(name, i), word(lower, i));
        // 0x20 in each byte of `b` that is a lowercase letter: a byte of
        // `name` may differ from it in that bit only. `b`'s bytes are ASCII,
        // so the adds below carry into no neighbour.
        const ONES: u64 = 0x0101_0101_0101_0101;
        let ge_a = b.wrapping_add(ONES * (0x80 - u64::from(b'a')));
        let gt_z = b.wrapping_add(ONES * (0x80 - u64::from(b'z') - 1));
        let letters = (ge_a & !gt_z & (ONES * 0x80)) >> 2;
        if a | letters != b {
            return false;
        }
        if i + 8 == n {
            return true;
        }
        i = (i + 8).min(n - 8);
    }
}

/// Is `b` optional white space (RFC 9110 §5.6.3)?
#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading and trailing OWS.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty
/// ones skipped.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Heads parsed whole, for the http modules' tests.
#[cfg(test)]
pub(crate) mod parsed {
    use super::{Limits, Parsed, RequestHead, ResponseHead};

    /// `buf`'s request head; panics unless it parses complete.
    pub fn request(buf: &[u8]) -> RequestHead {
        let mut head = RequestHead::with_capacity(100);
        let res = head.parse(buf, &Limits::default());
        assert!(matches!(res, Ok(Parsed::Complete { .. })), "{res:?}");
        head
    }

    /// `buf`'s response head; panics unless it parses complete.
    pub fn response(buf: &[u8]) -> ResponseHead {
        let mut head = ResponseHead::with_capacity(100);
        let res = head.parse(buf, &Limits::default());
        assert!(matches!(res, Ok(Parsed::Complete { .. })), "{res:?}");
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let cases = [
            (HeadError::HeadTooLarge, 431, "request head too large"),
            (HeadError::TooManyHeaders, 431, "too many header fields"),
            (HeadError::RequestLineTooLong, 414, "request line too long"),
            (HeadError::Malformed("bad"), 400, "bad"),
            (HeadError::BadFraming("cl"), 400, "cl"),
            (HeadError::BadChunk("hex"), 400, "hex"),
            (
                HeadError::UnsupportedVersion,
                505,
                "unsupported HTTP version",
            ),
        ];
        for (err, status, reason) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.reason(), reason, "{err:?}");
            assert_eq!(err.to_string(), reason);
        }
    }

    #[test]
    fn limits_default() {
        let l = Limits::default();
        assert_eq!(
            (l.max_head, l.max_request_line, l.max_headers),
            (65536, 8192, 100)
        );
    }

    #[test]
    fn list_elements_trim_and_skip_empty() {
        let v: Vec<&[u8]> = list_elements(b" a ,,\tb\t, , c").collect();
        assert_eq!(v, [&b"a"[..], b"b", b"c"]);
        assert_eq!(list_elements(b" , ").count(), 0);
        assert_eq!(trim_ows(b"  "), b"");
    }

    #[test]
    fn fast_case_insensitive_comparison() {
        let lower = [
            "te",
            "via",
            "host",
            "upgrade",
            "l5d-dtab",
            "connection",
            "keep-alive",
            "l5d-ctx-dtab",
            "content-length",
            "proxy-connection",
            "transfer-encoding",
            "l5d-dst-service",
            "a-9-z-0-y",
            "12345678",
        ];
        for l in lower {
            let b = l.as_bytes();
            assert!(eq_ignore_case_lower(b, b), "{l}");
            assert!(
                eq_ignore_case_lower(l.to_ascii_uppercase().as_bytes(), b),
                "{l}"
            );
            for i in 0..b.len() {
                // Each byte flipped in the case bit: equal only for letters.
                let mut v = b.to_vec();
                v[i] ^= 0x20;
                assert_eq!(
                    eq_ignore_case_lower(&v, b),
                    v.eq_ignore_ascii_case(b),
                    "{l} {i}"
                );
                // Each byte replaced by a near neighbour or a high byte.
                for d in [1u8, 0x40, 0x80, 0xa0] {
                    let mut v = b.to_vec();
                    v[i] = v[i].wrapping_add(d);
                    assert_eq!(
                        eq_ignore_case_lower(&v, b),
                        v.eq_ignore_ascii_case(b),
                        "{l} {i} {d}"
                    );
                }
            }
            assert!(!eq_ignore_case_lower(&b[1..], b));
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_comparison_agrees_with_std(
            lower in "[a-z0-9!#$%&'*+.^_`|~-]{0,40}",
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            flips in proptest::collection::vec(proptest::prelude::any::<bool>(), 40),
        ) {
            let l = lower.as_bytes();
            proptest::prop_assert_eq!(eq_ignore_case_lower(&name, l), name.eq_ignore_ascii_case(l));
            // And the interesting case: the same letters in mixed case.
            let mixed: Vec<u8> = l.iter().zip(&flips).map(|(&b, &f)| if f { b.to_ascii_uppercase() } else { b }).collect();
            proptest::prop_assert!(eq_ignore_case_lower(&mixed, l));
            let mut caret = mixed.clone();
            for b in caret.iter_mut() {
                if *b == b'~' { *b = b'^'; } else if *b == b'-' { *b = b'\r'; }
            }
            proptest::prop_assert_eq!(eq_ignore_case_lower(&caret, l), caret.eq_ignore_ascii_case(l));
        }
    }

    #[test]
    fn span_within() {
        let buf = b"hello world";
        assert_eq!(Span::within(buf, &buf[6..]), Span::new(6, 11));
        assert_eq!(Span::within(buf, b""), Span::EMPTY);
        assert_eq!(Span::new(6, 11).of(buf), b"world");
    }
}
