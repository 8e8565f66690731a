//! Where a message body ends (RFC 9112 §6) and whether the connection
//! outlives the exchange (RFC 9112 §9.3).
//!
//! The proxy forwards bodies verbatim, chunked ones included, so it never
//! decodes a body; it only needs to know how many bytes belong to it.
//! [`ChunkedScanner`] is a byte-driven state machine for that: it keeps no
//! input, so a body may arrive split anywhere, and it hands whole chunk
//! payloads back to the caller ([`ChunkedScanner::data_remaining`]) so large
//! chunks can be spliced without being looked at.
//!
//! Framing is where request smuggling lives, so the rules lean strict where
//! two parsers could disagree about a boundary: Transfer-Encoding on an
//! HTTP/1.0 request, differing Content-Lengths, `chunked` twice or (in a
//! request) not last, a bare LF or a stray byte inside chunk framing are
//! all refused rather than
//! guessed at; Transfer-Encoding with Content-Length is accepted (TE wins)
//! but the connection is closed afterwards.

use super::{HeadError, Known, RequestHead, ResponseHead, list_elements, trim_ows};

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body: the next message (if any) starts right after the head.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked; feed the bytes to a [`ChunkedScanner`] to find the end.
    Chunked,
    /// Everything until the server closes (responses only).
    UntilClose,
    /// After this head the connection is an opaque byte stream both ways:
    /// a 2xx answer to CONNECT, a 101 answer to an upgrade request.
    Tunnel,
}

/// A body's framing and whether the connection must close after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub length: BodyLength,
    /// The framing is legal but ends with, or should end, the connection:
    /// Transfer-Encoding sent alongside Content-Length (RFC 9112 §6.1
    /// obliges the close), or a close-delimited response.
    pub close: bool,
}

impl Framing {
    fn keep(length: BodyLength) -> Framing {
        Framing {
            length,
            close: false,
        }
    }

    fn close(length: BodyLength) -> Framing {
        Framing {
            length,
            close: true,
        }
    }
}

/// What a response's framing depends on in its request, captured when the
/// request head was parsed (its bytes may be gone by the time the response
/// comes, when requests are pipelined).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestKind {
    pub head: bool,
    pub connect: bool,
    pub upgrade: bool,
}

impl RequestKind {
    pub fn of(head: &RequestHead, buf: &[u8]) -> RequestKind {
        RequestKind {
            head: head.is_head_method(buf),
            connect: head.is_connect(buf),
            upgrade: is_upgrade(head, buf),
        }
    }
}

/// The transfer codings a message lists, reduced to what framing needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// `chunked` is the last coding (and appears once).
    Chunked,
    /// Some coding other than `chunked` is last.
    NotChunked,
}

/// Reads every Transfer-Encoding line; `None` without any.
fn transfer_coding<'b>(
    values: impl Iterator<Item = &'b [u8]>,
) -> Result<Option<Coding>, HeadError> {
    let mut seen_line = false;
    let mut chunked = 0;
    let mut last_chunked = None;
    for value in values {
        seen_line = true;
        for coding in list_elements(value) {
            // `chunked` takes no parameters; `chunked;x=y` is some other coding.
            let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            chunked += usize::from(is_chunked);
            last_chunked = Some(is_chunked);
        }
    }
    match (seen_line, last_chunked) {
        (false, _) => Ok(None),
        (true, None) => Err(HeadError::BadFraming("empty Transfer-Encoding")),
        // Chunked at most once (RFC 9112 §6.1); twice leaves the end unknowable.
        (true, Some(true)) if chunked > 1 => Err(HeadError::BadFraming("chunked applied twice")),
        (true, Some(true)) => Ok(Some(Coding::Chunked)),
        (true, Some(false)) => Ok(Some(Coding::NotChunked)),
    }
}

/// Reads every Content-Length line: digits only, and every value (across
/// lines and comma-separated elements) equal (RFC 9110 §8.6). `None`
/// without any.
fn content_length<'b>(values: impl Iterator<Item = &'b [u8]>) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let digits = trim_ows(element);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::BadFraming("invalid Content-Length"));
            }
            let n = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let Some(n) = n else {
                return Err(HeadError::BadFraming("Content-Length too large"));
            };
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::BadFraming("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The request body's framing (RFC 9112 §6.3, items 3 to 6).
pub fn request_body(head: &RequestHead, buf: &[u8]) -> Result<Framing, HeadError> {
    let te = transfer_coding(head.get_all(buf, Known::TransferEncoding))?;
    match te {
        // An HTTP/1.0 recipient cannot know chunked; someone along the way
        // may frame this differently (RFC 9112 §6.1).
        Some(_) if head.minor_version() == 0 => Err(HeadError::BadFraming(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        Some(Coding::Chunked) => {
            let with_length = head.get(buf, Known::ContentLength).is_some();
            Ok(Framing {
                length: BodyLength::Chunked,
                close: with_length,
            })
        }
        Some(Coding::NotChunked) => Err(HeadError::BadFraming(
            "final transfer coding of a request is not chunked",
        )),
        None => match content_length(head.get_all(buf, Known::ContentLength))? {
            Some(n) => Ok(Framing::keep(BodyLength::Length(n))),
            None => Ok(Framing::keep(BodyLength::None)),
        },
    }
}

/// The response body's framing (RFC 9112 §6.3, items 1 to 7). A
/// [`HeadError`] here means the proxy discards the response and answers 502.
pub fn response_body(
    request: RequestKind,
    head: &ResponseHead,
    buf: &[u8],
) -> Result<Framing, HeadError> {
    let status = head.status();
    if status == 101 {
        return if request.upgrade {
            Ok(Framing::keep(BodyLength::Tunnel))
        } else {
            Err(HeadError::BadFraming(
                "101 to a request that asked for no upgrade",
            ))
        };
    }
    if head.is_interim() {
        return Ok(Framing::keep(BodyLength::None));
    }
    // Any Content-Length or Transfer-Encoding here is ignored (RFC 9110 §9.3.6).
    if request.connect && (200..300).contains(&status) {
        return Ok(Framing::keep(BodyLength::Tunnel));
    }
    if request.head || status == 204 || status == 304 {
        return Ok(Framing::keep(BodyLength::None));
    }
    match transfer_coding(head.get_all(buf, Known::TransferEncoding))? {
        // Faulty framing on HTTP/1.0: trust only the close.
        Some(_) if head.minor_version() == 0 => Ok(Framing::close(BodyLength::UntilClose)),
        Some(Coding::Chunked) => Ok(Framing {
            length: BodyLength::Chunked,
            close: head.get(buf, Known::ContentLength).is_some(),
        }),
        Some(Coding::NotChunked) => Ok(Framing::close(BodyLength::UntilClose)),
        None => match content_length(head.get_all(buf, Known::ContentLength))? {
            Some(n) => Ok(Framing::keep(BodyLength::Length(n))),
            None => Ok(Framing::close(BodyLength::UntilClose)),
        },
    }
}

/// Does the sender of these Connection values want the connection closed
/// after this message? HTTP/1.1 persists unless `close`; HTTP/1.0 persists
/// only with `keep-alive` (RFC 9112 §9.3).
pub fn wants_close<'b>(minor: u8, connection_values: impl IntoIterator<Item = &'b [u8]>) -> bool {
    let (mut close, mut keep_alive) = (false, false);
    for value in connection_values {
        for option in list_elements(value) {
            close |= option.eq_ignore_ascii_case(b"close");
            keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    close || (minor == 0 && !keep_alive)
}

/// Is `token` (ASCII case-insensitive) an element of these comma-separated
/// lists? Lists may be split over several header lines.
pub fn has_token<'b>(values: impl IntoIterator<Item = &'b [u8]>, token: &str) -> bool {
    contains_token(values, token.as_bytes())
}

pub(crate) fn contains_token<'b>(values: impl IntoIterator<Item = &'b [u8]>, token: &[u8]) -> bool {
    values
        .into_iter()
        .any(|v| list_elements(v).any(|e| e.eq_ignore_ascii_case(token)))
}

/// `Expect: 100-continue` on an HTTP/1.1 request; HTTP/1.0 requests' are
/// ignored (RFC 9110 §10.1.1).
pub fn expects_continue(head: &RequestHead, buf: &[u8]) -> bool {
    head.minor_version() == 1 && has_token(head.get_all(buf, Known::Expect), "100-continue")
}

/// Whether a request method is idempotent (RFC 9110 §9.2.2): the methods
/// a proxy may send again by itself after a connection failed under them.
/// Methods are case-sensitive.
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// An HTTP/1.1 request with an Upgrade header that its Connection header
/// names (RFC 9110 §7.8; HTTP/1.0 requests' Upgrade is ignored).
pub fn is_upgrade(head: &RequestHead, buf: &[u8]) -> bool {
    head.minor_version() == 1
        && head.get(buf, Known::Upgrade).is_some_and(|v| !v.is_empty())
        && has_token(head.get_all(buf, Known::Connection), "upgrade")
}

/// Longest chunk-size line (size and extensions) we read; real ones are a
/// few bytes, and extensions are used by nobody we forward to.
pub const MAX_CHUNK_LINE: u32 = 4096;
/// Most trailer bytes after the last chunk.
pub const MAX_TRAILERS: u32 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of chunk-size.
    Size,
    /// White space after the size, before `;` or CR.
    SizeWs,
    /// chunk-ext, up to CR.
    Ext,
    /// CR seen at the end of the size line.
    SizeLf,
    /// Inside chunk data; `remaining` bytes to go.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
    Failed(&'static str),
}

/// Finds the end of a chunked body (RFC 9112 §7.1) without keeping or
/// decoding any of it. Feed every byte of the body, in order, in pieces of
/// any size; how the pieces are cut never changes the outcome.
#[derive(Clone, Debug)]
pub struct ChunkedScanner {
    state: State,
    /// Chunk size being read, then bytes of it still to come.
    size: u64,
    line_len: u32,
    trailer_len: u32,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size,
            size: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// Ready for the next body.
    pub fn reset(&mut self) {
        *self = ChunkedScanner::new();
    }

    /// Looks at the next bytes of the body and returns how many belong to
    /// it: all of `data`, or fewer when the body ends inside it (the rest is
    /// the next message). After the end, returns 0. An error is final: every
    /// later call returns it again.
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, HeadError> {
        self.decode(data, |_| {})
    }

    /// [`ChunkedScanner::scan`] that also hands each run of chunk data to
    /// `data`, in order: the body without its chunked coding (sizes,
    /// extensions and trailers dropped). How `input` is cut into pieces
    /// never changes the data handed out.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, HeadError> {
        if let State::Failed(e) = self.state {
            return Err(HeadError::BadChunk(e));
        }
        let mut i = 0;
        while i < input.len() {
            let take = self.data_remaining().min((input.len() - i) as u64) as usize;
            if take > 0 {
                data(&input[i..i + take]);
                self.skip_data(take as u64);
                i += take;
                continue;
            }
            // Framing bytes up to the next chunk data (or the end).
            let n = self.scan_framing(&input[i..])?;
            if n == 0 {
                break;
            }
            i += n;
        }
        Ok(i)
    }

    /// Scans framing bytes until chunk data starts, the body ends or `input`
    /// does; returns how many it took.
    fn scan_framing(&mut self, input: &[u8]) -> Result<usize, HeadError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Data && self.state != State::Done {
            if let Err(e) = self.step(input[i]) {
                self.state = State::Failed(e);
                return Err(HeadError::BadChunk(e));
            }
            i += 1;
        }
        Ok(i)
    }

    /// Advances over one framing byte (never called in `Data` or `Done`).
    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        use State::*;
        match self.state {
            Size | SizeWs | Ext => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err("chunk size line too long");
                }
            }
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return Err("chunked trailers too large");
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = (b as char).to_digit(16).unwrap_or(0);
                if self.size > u64::MAX >> 4 {
                    return Err("chunk size too large");
                }
                self.size = self.size << 4 | u64::from(digit);
                Size
            }
            (Size, _) if self.line_len == 1 => return Err("missing chunk size"),
            // Whitespace may stand before an extension's `;` (BWS), not
            // before the line end (RFC 9112 §7.1.1).
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs, b';') => Ext,
            (SizeWs, b'\r') => return Err("whitespace after a chunk size"),
            (Size | Ext, b'\r') => SizeLf,
            (Size | SizeWs, _) => return Err("invalid chunk size"),
            // chunk-ext is tokens, `=`, quoted strings: printable, HTAB, obs-text.
            (Ext, b'\t' | b' '..=b'~' | 0x80..) => Ext,
            (Ext, _) => return Err("invalid byte in chunk extension"),
            (SizeLf, b'\n') => {
                self.line_len = 0;
                if self.size == 0 { TrailerStart } else { Data }
            }
            (DataLf, b'\n') => Size,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (SizeLf | DataLf | TrailerLf | FinalLf, _) => {
                return Err("chunk line not ended by CRLF");
            }
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err("chunk data not followed by CRLF"),
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, b' ' | b'\t') => return Err("obsolete line folding in trailers"),
            (TrailerStart | TrailerName, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.')
            | (TrailerStart | TrailerName, b'^' | b'_' | b'`' | b'|' | b'~')
            | (TrailerStart | TrailerName, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z') => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerStart | TrailerName, _) => return Err("invalid trailer field"),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b'\t' | b' '..=b'~' | 0x80..) => TrailerValue,
            (TrailerValue, _) => return Err("invalid trailer field"),
            (Data | Done | Failed(_), _) => unreachable!("step in {:?}", self.state),
        };
        Ok(())
    }

    /// The body's last byte has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of chunk data still to come in the current chunk; 0 outside
    /// chunk data. The caller may move that many bytes without scanning
    /// them, then report them with [`ChunkedScanner::skip_data`].
    pub fn data_remaining(&self) -> u64 {
        if self.state == State::Data {
            self.size
        } else {
            0
        }
    }

    /// Accounts for `n` bytes of chunk data moved without [`ChunkedScanner::scan`].
    ///
    /// # Panics
    /// When `n` is more than [`ChunkedScanner::data_remaining`].
    pub fn skip_data(&mut self, n: u64) {
        assert!(n <= self.data_remaining(), "skipped past the chunk's data");
        if n == 0 {
            return;
        }
        self.size -= n;
        if self.size == 0 {
            self.state = State::DataCr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::parsed::{request as req, response as res};

    /// A request with `fields` (CRLF-separated lines) and HTTP/1.`minor`.
    fn request_framing(minor: u8, fields: &str) -> Result<Framing, HeadError> {
        let buf = format!("POST /x HTTP/1.{minor}\r\nHost: a\r\n{fields}\r\n");
        request_body(&req(buf.as_bytes()), buf.as_bytes())
    }

    fn response_framing(
        request: RequestKind,
        status_line: &str,
        fields: &str,
    ) -> Result<Framing, HeadError> {
        let buf = format!("{status_line}\r\n{fields}\r\n");
        response_body(request, &res(buf.as_bytes()), buf.as_bytes())
    }

    const fn keep(length: BodyLength) -> Result<Framing, HeadError> {
        Ok(Framing {
            length,
            close: false,
        })
    }

    const fn close(length: BodyLength) -> Result<Framing, HeadError> {
        Ok(Framing {
            length,
            close: true,
        })
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "PURGE", ""] {
            assert!(!is_idempotent(m.as_bytes()), "{m}");
        }
    }

    #[test]
    fn request_body_lengths() {
        use BodyLength::*;
        let cases: [(&str, Result<Framing, HeadError>); 24] = [
            ("", keep(None)),
            ("Content-Length: 0\r\n", keep(Length(0))),
            ("Content-Length: 10\r\n", keep(Length(10))),
            ("Content-Length: 007\r\n", keep(Length(7))),
            (
                "Content-Length: 18446744073709551615\r\n",
                keep(Length(u64::MAX)),
            ),
            ("Content-Length: 10, 10\r\n", keep(Length(10))),
            (
                "Content-Length: 10\r\ncontent-length: 10\r\n",
                keep(Length(10)),
            ),
            (
                "Content-Length: 10\r\nContent-Length: 11\r\n",
                Err(HeadError::BadFraming("conflicting Content-Length values")),
            ),
            (
                "Content-Length: 10, 11\r\n",
                Err(HeadError::BadFraming("conflicting Content-Length values")),
            ),
            (
                "Content-Length: 10,\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length: +10\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length: -1\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length: 0x10\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length: 1 0\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length:\r\n",
                Err(HeadError::BadFraming("invalid Content-Length")),
            ),
            (
                "Content-Length: 18446744073709551616\r\n",
                Err(HeadError::BadFraming("Content-Length too large")),
            ),
            ("Transfer-Encoding: chunked\r\n", keep(Chunked)),
            ("Transfer-Encoding: CHUNKED\r\n", keep(Chunked)),
            ("Transfer-Encoding: gzip, chunked\r\n", keep(Chunked)),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                keep(Chunked),
            ),
            // TE wins over CL, and the connection closes after the exchange.
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                close(Chunked),
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: nonsense\r\n",
                close(Chunked),
            ),
            (
                "Transfer-Encoding: gzip\r\n",
                Err(HeadError::BadFraming(
                    "final transfer coding of a request is not chunked",
                )),
            ),
            (
                "Transfer-Encoding: chunked;q=1\r\n",
                Err(HeadError::BadFraming(
                    "final transfer coding of a request is not chunked",
                )),
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(request_framing(1, fields), want, "{fields:?}");
        }
        let refused: [(&str, &str); 7] = [
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                "final transfer coding of a request is not chunked",
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "final transfer coding of a request is not chunked",
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                "chunked applied twice",
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "chunked applied twice",
            ),
            (
                "Transfer-Encoding: chunked, gzip, Chunked\r\n",
                "chunked applied twice",
            ),
            ("Transfer-Encoding:\r\n", "empty Transfer-Encoding"),
            ("Transfer-Encoding: ,\r\n", "empty Transfer-Encoding"),
        ];
        for (fields, why) in refused {
            let err = request_framing(1, fields).unwrap_err();
            assert_eq!(err, HeadError::BadFraming(why), "{fields:?}");
            assert_eq!(err.status(), 400);
        }
        assert_eq!(
            request_framing(0, "Transfer-Encoding: chunked\r\n"),
            Err(HeadError::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 request"
            ))
        );
        assert_eq!(request_framing(0, "Content-Length: 3\r\n"), keep(Length(3)));
    }

    #[test]
    fn response_body_lengths() {
        use BodyLength::*;
        let get = RequestKind::default();
        let head = RequestKind { head: true, ..get };
        let connect = RequestKind {
            connect: true,
            ..get
        };
        let upgrade = RequestKind {
            upgrade: true,
            ..get
        };
        let cases: [(RequestKind, &str, &str, Result<Framing, HeadError>); 21] = [
            (
                get,
                "HTTP/1.1 200 OK",
                "Content-Length: 12\r\n",
                keep(Length(12)),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked\r\n",
                keep(Chunked),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                close(Chunked),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: gzip\r\nContent-Length: 3\r\n",
                close(UntilClose),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked, gzip\r\n",
                close(UntilClose),
            ),
            (get, "HTTP/1.1 200 OK", "", close(UntilClose)),
            (get, "HTTP/1.0 200 OK", "", close(UntilClose)),
            (
                get,
                "HTTP/1.0 200 OK",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                close(UntilClose),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Content-Length: 1\r\nContent-Length: 2\r\n",
                Err(HeadError::BadFraming("conflicting Content-Length values")),
            ),
            (
                get,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked, chunked\r\n",
                Err(HeadError::BadFraming("chunked applied twice")),
            ),
            (
                get,
                "HTTP/1.1 204 No Content",
                "Content-Length: 12\r\n",
                keep(None),
            ),
            (
                get,
                "HTTP/1.1 304 Not Modified",
                "Transfer-Encoding: chunked\r\n",
                keep(None),
            ),
            (get, "HTTP/1.1 100 Continue", "", keep(None)),
            (
                get,
                "HTTP/1.1 103 Early Hints",
                "Link: </a>\r\n",
                keep(None),
            ),
            (
                head,
                "HTTP/1.1 200 OK",
                "Content-Length: 12\r\n",
                keep(None),
            ),
            (
                head,
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked\r\n",
                keep(None),
            ),
            (
                connect,
                "HTTP/1.1 200 Connection established",
                "Content-Length: 12\r\n",
                keep(Tunnel),
            ),
            (
                connect,
                "HTTP/1.1 407 Proxy Auth",
                "Content-Length: 12\r\n",
                keep(Length(12)),
            ),
            (
                upgrade,
                "HTTP/1.1 101 Switching Protocols",
                "Upgrade: websocket\r\nConnection: upgrade\r\n",
                keep(Tunnel),
            ),
            (
                upgrade,
                "HTTP/1.1 200 OK",
                "Content-Length: 2\r\n",
                keep(Length(2)),
            ),
            (
                get,
                "HTTP/1.1 101 Switching Protocols",
                "Upgrade: websocket\r\n",
                Err(HeadError::BadFraming(
                    "101 to a request that asked for no upgrade",
                )),
            ),
        ];
        for (request, status, fields, want) in cases {
            assert_eq!(
                response_framing(request, status, fields),
                want,
                "{request:?} {status} {fields:?}"
            );
        }
    }

    #[test]
    fn request_kind_from_head() {
        let buf = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            RequestKind::of(&req(buf), buf),
            RequestKind {
                head: true,
                connect: false,
                upgrade: false
            }
        );
        let buf = b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n";
        assert_eq!(
            RequestKind::of(&req(buf), buf),
            RequestKind {
                head: false,
                connect: true,
                upgrade: false
            }
        );
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(
            RequestKind::of(&req(buf), buf),
            RequestKind {
                head: false,
                connect: false,
                upgrade: true
            }
        );
    }

    #[test]
    fn persistence() {
        let v = |s: &'static str| s.as_bytes();
        assert!(!wants_close(1, []));
        assert!(wants_close(1, [v("close")]));
        assert!(wants_close(1, [v("Keep-Alive, CLOSE")]));
        assert!(wants_close(1, [v("keep-alive"), v(" close ")]));
        assert!(!wants_close(1, [v("closed, x-close")]));
        assert!(wants_close(0, []));
        assert!(!wants_close(0, [v("keep-alive")]));
        assert!(!wants_close(0, [v("foo"), v("Keep-Alive")]));
        assert!(wants_close(0, [v("keep-alive, close")]));
        assert!(has_token([v("a, b"), v("c")], "C"));
        assert!(has_token([v("a,\tb ,c")], "b"));
        assert!(!has_token([v("ab")], "a"));
        assert!(!has_token([], "a"));
    }

    #[test]
    fn expect_and_upgrade() {
        let t = |s: &str| {
            let buf = format!("{s}\r\n");
            let head = req(buf.as_bytes());
            (
                expects_continue(&head, buf.as_bytes()),
                is_upgrade(&head, buf.as_bytes()),
            )
        };
        assert_eq!(
            t("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"),
            (true, false)
        );
        assert_eq!(
            t("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n"),
            (false, false)
        );
        assert_eq!(
            t("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 101-continue\r\n"),
            (false, false)
        );
        assert_eq!(
            t(
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
            ),
            (false, true)
        );
        assert_eq!(
            t(
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            ),
            (false, true)
        );
        assert_eq!(
            t("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"),
            (false, false)
        );
        assert_eq!(
            t("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"),
            (false, false)
        );
        assert_eq!(
            t("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade:\r\n"),
            (false, false)
        );
        assert_eq!(
            t("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"),
            (false, false)
        );
    }

    /// Outcome of scanning `input` in the pieces `cuts` makes:
    /// (bytes of the body, done, error).
    fn scan_pieces(input: &[u8], cuts: &[usize]) -> (usize, bool, Option<HeadError>) {
        let mut scanner = ChunkedScanner::new();
        let mut used = 0;
        let mut from = 0;
        for &to in cuts.iter().chain([input.len()].iter()) {
            let to = to.clamp(from, input.len());
            match scanner.scan(&input[from..to]) {
                Ok(n) => {
                    used += n;
                    if n < to - from {
                        break;
                    }
                }
                Err(e) => return (used, false, Some(e)),
            }
            from = to;
        }
        (used, scanner.is_done(), None)
    }

    /// Scans `input` whole, then split at every point and byte by byte,
    /// and checks all agree; returns the whole scan's outcome.
    fn scan_all_ways(input: &[u8]) -> (usize, bool, Option<HeadError>) {
        let whole = scan_pieces(input, &[]);
        // Every cut of small inputs; a spread of cuts of big ones.
        let step = (input.len() / 512).max(1);
        for cut in (0..=input.len())
            .step_by(step)
            .chain([input.len().saturating_sub(1)])
        {
            let split = scan_pieces(input, &[cut]);
            assert_eq!(
                split.1,
                whole.1,
                "split at {cut}: {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(split.2, whole.2, "split at {cut}");
            if whole.2.is_none() {
                assert_eq!(split.0, whole.0, "split at {cut}");
            }
        }
        if input.len() <= 512 {
            let bytewise: Vec<usize> = (1..input.len()).collect();
            let by_byte = scan_pieces(input, &bytewise);
            assert_eq!((by_byte.1, by_byte.2), (whole.1, whole.2));
        }
        whole
    }

    #[test]
    fn decoding_drops_sizes_extensions_and_trailers() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"5;x=\"a;b\"\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", b"hello"),
            (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),
        ];
        for (body, data) in cases {
            let mut input = body.to_vec();
            input.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut out = Vec::new();
            let mut scanner = ChunkedScanner::new();
            let n = scanner
                .decode(&input, |d| out.extend_from_slice(d))
                .unwrap();
            assert_eq!((n, scanner.is_done()), (body.len(), true));
            assert_eq!(out, data, "{:?}", String::from_utf8_lossy(body));
        }
        // An error stays.
        let mut scanner = ChunkedScanner::new();
        assert!(scanner.decode(b"x\r\n", |_| {}).is_err());
        assert!(scanner.decode(b"", |_| {}).is_err());
    }

    #[test]
    fn chunked_bodies_end_where_they_should() {
        let bodies: [&[u8]; 8] = [
            b"0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
            b"5;name=value;quoted=\"a;b\\\"c\"\r\nhello\r\n0;last\r\n\r\n",
            b"5 ;x\r\nhello\r\n0\t;y\r\n\r\n",
            b"0005\r\nhello\r\n000\r\nExpires: never\r\nX-Sum: abc\t\r\n\r\n",
            b"3\r\n\r\n\r\r\n0\r\nA:\r\n\r\n",
        ];
        for body in bodies {
            let mut input = body.to_vec();
            input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            assert_eq!(
                scan_all_ways(&input),
                (body.len(), true, None),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            // Without what follows, the body is still whole.
            assert_eq!(scan_all_ways(body), (body.len(), true, None));
            // And one byte short it is not done.
            assert_eq!(
                scan_all_ways(&body[..body.len() - 1]),
                (body.len() - 1, false, None)
            );
        }
    }

    #[test]
    fn bad_chunked_bodies() {
        let long_ext = format!(
            "1;{}\r\nx\r\n0\r\n\r\n",
            "e".repeat(MAX_CHUNK_LINE as usize)
        );
        let long_zeros = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(MAX_CHUNK_LINE as usize));
        let big_trailer = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILERS as usize));
        let cases: [(&[u8], &str); 24] = [
            (b"5 \r\nhello\r\n0\r\n\r\n", "whitespace after a chunk size"),
            (
                b"5\r\nhello\r\n0\t\r\n\r\n",
                "whitespace after a chunk size",
            ),
            (b"zz\r\n", "missing chunk size"),
            (b"\r\n", "missing chunk size"),
            (b";ext\r\n", "missing chunk size"),
            (b" 5\r\n", "missing chunk size"),
            (b"-5\r\n", "missing chunk size"),
            (b"5x\r\n", "invalid chunk size"),
            (b"5 5\r\n", "invalid chunk size"),
            (b"0x5\r\n", "invalid chunk size"),
            (b"5\n", "invalid chunk size"),
            (b"5\r\r\n", "chunk line not ended by CRLF"),
            (b"5;a\nhello", "invalid byte in chunk extension"),
            (b"5;a\0\r\n", "invalid byte in chunk extension"),
            (b"10000000000000000\r\n", "chunk size too large"),
            (long_ext.as_bytes(), "chunk size line too long"),
            (long_zeros.as_bytes(), "chunk size line too long"),
            (b"5\r\nhelloX\r\n", "chunk data not followed by CRLF"),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5\r\nhello\r\r", "chunk line not ended by CRLF"),
            (
                b"0\r\nX: a\r\n b\r\n\r\n",
                "obsolete line folding in trailers",
            ),
            (b"0\r\nX a\r\n\r\n", "invalid trailer field"),
            (b"0\r\n\n", "invalid trailer field"),
            (big_trailer.as_bytes(), "chunked trailers too large"),
        ];
        for (input, why) in cases {
            let (_, done, err) = scan_all_ways(input);
            assert!(!done);
            assert_eq!(
                err,
                Some(HeadError::BadChunk(why)),
                "{:?}",
                String::from_utf8_lossy(&input[..input.len().min(40)])
            );
        }
        // 16 hex digits is the most a u64 holds; fine.
        assert_eq!(scan_all_ways(b"ffffffffffffffff\r\n").2, None);
        // Errors stick.
        let mut s = ChunkedScanner::new();
        assert!(s.scan(b"x").is_err());
        assert_eq!(
            s.scan(b"0\r\n\r\n"),
            Err(HeadError::BadChunk("missing chunk size"))
        );
        assert_eq!(HeadError::BadChunk("x").status(), 400);
    }

    #[test]
    fn data_can_be_skipped_without_scanning() {
        let mut s = ChunkedScanner::new();
        assert_eq!(s.data_remaining(), 0);
        assert_eq!(s.scan(b"100000\r\n"), Ok(8));
        assert_eq!(s.data_remaining(), 0x100000);
        assert_eq!(s.scan(&[0u8; 10]), Ok(10));
        assert_eq!(s.data_remaining(), 0x100000 - 10);
        s.skip_data(0x100000 - 20);
        s.skip_data(0);
        assert_eq!(s.data_remaining(), 10);
        s.skip_data(10);
        assert_eq!(s.data_remaining(), 0);
        assert_eq!(s.scan(b"\r\n0\r\n\r\nrest"), Ok(7));
        assert!(s.is_done());
        assert_eq!(s.scan(b"rest"), Ok(0));
        s.reset();
        assert!(!s.is_done());
        assert_eq!(s.scan(b"0\r\n\r\n"), Ok(5));
    }

    #[test]
    #[should_panic(expected = "skipped past")]
    fn skipping_too_much_panics() {
        let mut s = ChunkedScanner::new();
        s.scan(b"2\r\n").unwrap();
        s.skip_data(3);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A valid chunked body built from chunk sizes, extensions and trailers.
        /// A chunked body and the data it carries.
        fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            let chunk = (
                1usize..300,
                proptest::option::of("[a-z]{1,5}(=[a-z0-9]{0,5})?"),
                any::<bool>(),
            );
            let trailers = proptest::collection::vec(("[A-Za-z-]{1,10}", "[ -~]{0,20}"), 0..3);
            (proptest::collection::vec(chunk, 0..6), trailers).prop_map(|(chunks, trailers)| {
                let mut out = Vec::new();
                let mut data = Vec::new();
                for (i, (size, ext, upper)) in chunks.into_iter().enumerate() {
                    let hex = if upper {
                        format!("{size:X}")
                    } else {
                        format!("{size:x}")
                    };
                    out.extend_from_slice(hex.as_bytes());
                    if let Some(ext) = ext {
                        out.extend_from_slice(format!(";{ext}").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    let bytes = (0..size).map(|j| b"\r\n0;\x00xyz"[(i + j) % 8]);
                    data.extend(bytes.clone());
                    out.extend(bytes);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                (out, data)
            })
        }

        proptest! {
            #[test]
            fn valid_bodies_end_at_their_end_however_split(
                (body, _) in chunked_body(),
                tail in proptest::collection::vec(any::<u8>(), 0..20),
                mut cuts in proptest::collection::vec(0usize..2000, 0..8),
            ) {
                let mut input = body.clone();
                input.extend_from_slice(&tail);
                cuts.sort_unstable();
                prop_assert_eq!(scan_pieces(&input, &cuts), (body.len(), true, None));
            }

            #[test]
            fn decoding_gives_the_data_however_split(
                (body, data) in chunked_body(),
                tail in proptest::collection::vec(any::<u8>(), 0..20),
                mut cuts in proptest::collection::vec(0usize..2000, 0..8),
            ) {
                let mut input = body.clone();
                input.extend_from_slice(&tail);
                cuts.sort_unstable();
                let mut scanner = ChunkedScanner::new();
                let (mut used, mut from, mut out) = (0, 0, Vec::new());
                for &to in cuts.iter().chain([input.len()].iter()) {
                    let to = to.clamp(from, input.len());
                    let n = scanner.decode(&input[from..to], |d| out.extend_from_slice(d)).unwrap();
                    used += n;
                    if n < to - from {
                        break;
                    }
                    from = to;
                }
                prop_assert!(scanner.is_done());
                prop_assert_eq!(used, body.len());
                prop_assert_eq!(out, data);
            }

            #[test]
            fn any_bytes_scan_the_same_however_split(
                input in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'1'), Just(b';'), Just(b':'), Just(b'a'), any::<u8>()],
                    0..80,
                ),
                mut cuts in proptest::collection::vec(0usize..80, 0..6),
            ) {
                cuts.sort_unstable();
                let whole = scan_pieces(&input, &[]);
                let split = scan_pieces(&input, &cuts);
                prop_assert_eq!((split.1, split.2), (whole.1, whole.2));
                if whole.2.is_none() {
                    prop_assert_eq!(split.0, whole.0);
                }
            }
        }
    }
}
