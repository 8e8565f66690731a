//! Request and response heads, parsed with httparse into offsets of the
//! caller's buffer.
//!
//! httparse hands out slices that borrow the buffer; we turn them into
//! [`Span`]s at once, so a parsed head borrows nothing and can sit in the
//! connection state while the buffer keeps receiving bytes. The header slots
//! httparse fills live on the stack; the span vector is sized once
//! (`with_capacity`) and reused with `clear`, so a warm head never allocates.
//!
//! httparse is stateless: the caller parses again from the start when more
//! bytes arrive. [`Parsed::Partial`] also enforces the size limits, so a peer
//! cannot make the proxy buffer an endless head.
//!
//! A request head that parses is also checked for what RFC 9112 makes the
//! server's duty to refuse with 400 (one valid Host header on HTTP/1.1, a
//! request-target of the form its method allows), so what reaches routing
//! has a trustworthy authority.

use std::mem::MaybeUninit;

use super::{HeadError, Limits, Span};

/// The most header lines a head may have, whatever [`Limits::max_headers`]
/// says: the size of httparse's slot array on the stack (32 bytes a slot).
pub const MAX_HEADERS_CAP: usize = 256;

/// Outcome of parsing a buffer that may not hold the whole head yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete; the body (or the next message) starts at `head_len`.
    Complete { head_len: usize },
    /// More bytes are needed.
    Partial,
}

/// The four shapes of request-target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`, sent to proxies (no `#fragment`).
    Absolute,
    /// `host:port`, CONNECT only.
    Authority,
    /// `*`, OPTIONS only.
    Asterisk,
}

/// Header field lines as (name, value) spans, in order. Values are trimmed
/// of surrounding white space (httparse does it).
///
/// The fields the proxy asks about on every message (framing, persistence,
/// routing) are noted once while the spans are taken: a lookup of one of
/// them that is absent costs no pass over the lines, and one that is
/// present starts at its first line.
#[derive(Clone, Debug, Default)]
struct Fields {
    lines: Vec<(Span, Span)>,
    /// Bit `k as u16`: a line named [`Known`] `k` is present.
    present: u16,
    /// The index of the first line named `k`, when present.
    first: [u16; Known::ALL.len()],
}

/// The header fields the proxy asks about on every message (framing,
/// persistence, routing): [`Fields`] notes where they are while parsing.
/// Look them up by this name, not by string, to use that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Via,
    Host,
    Expect,
    Upgrade,
    L5dDtab,
    L5dReqid,
    Connection,
    L5dCtxDtab,
    ContentLength,
    TransferEncoding,
}

impl Known {
    const ALL: [Known; 10] = [
        Known::Via,
        Known::Host,
        Known::Expect,
        Known::Upgrade,
        Known::L5dDtab,
        Known::L5dReqid,
        Known::Connection,
        Known::L5dCtxDtab,
        Known::ContentLength,
        Known::TransferEncoding,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Known::Via => "via",
            Known::Host => "host",
            Known::Expect => "expect",
            Known::Upgrade => "upgrade",
            Known::L5dDtab => "l5d-dtab",
            Known::L5dReqid => "l5d-reqid",
            Known::Connection => "connection",
            Known::L5dCtxDtab => "l5d-ctx-dtab",
            Known::ContentLength => "content-length",
            Known::TransferEncoding => "transfer-encoding",
        }
    }

    /// Which one `name` is (ASCII case-insensitive). Their lengths differ,
    /// so one comparison decides.
    fn of(name: &[u8]) -> Option<Known> {
        let k = match name.len() {
            3 => Known::Via,
            4 => Known::Host,
            6 => Known::Expect,
            7 => Known::Upgrade,
            8 => Known::L5dDtab,
            9 => Known::L5dReqid,
            10 => Known::Connection,
            12 => Known::L5dCtxDtab,
            14 => Known::ContentLength,
            17 => Known::TransferEncoding,
            _ => return None,
        };
        super::eq_ignore_case_lower(name, k.name().as_bytes()).then_some(k)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A header field name to look up: any string (every line is compared), or
/// a [`Known`] field (found through the index taken at parse time).
pub trait FieldName: Copy {
    /// Is a line named `name` one of these?
    fn matches(&self, name: &[u8]) -> bool;
    fn known(self) -> Option<Known>;
}

impl FieldName for &str {
    fn matches(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(self.as_bytes())
    }
    /// A known field asked for by its name is found through the index too.
    fn known(self) -> Option<Known> {
        Known::of(self.as_bytes())
    }
}

impl FieldName for Known {
    fn matches(&self, name: &[u8]) -> bool {
        super::eq_ignore_case_lower(name, self.name().as_bytes())
    }
    fn known(self) -> Option<Known> {
        Some(self)
    }
}

impl Fields {
    fn with_capacity(n: usize) -> Fields {
        Fields {
            lines: Vec::with_capacity(n),
            ..Fields::default()
        }
    }

    fn fill(&mut self, buf: &[u8], parsed: &[httparse::Header<'_>]) {
        self.lines.clear();
        self.present = 0;
        for (i, h) in parsed.iter().enumerate() {
            let name = h.name.as_bytes();
            if let Some(k) = Known::of(name)
                && self.present & k.bit() == 0
            {
                self.present |= k.bit();
                // Lines are at most MAX_HEADERS_CAP, well within u16.
                self.first[k as usize] = i as u16;
            }
            self.lines
                .push((Span::within(buf, name), Span::within(buf, h.value)));
        }
    }

    fn iter<'a, 'b: 'a>(
        &'a self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + 'a {
        self.lines.iter().map(move |(n, v)| (n.of(buf), v.of(buf)))
    }

    /// Where lines named `name` may start: all of them for an unindexed
    /// name, none when a known one is absent.
    fn first_line<N: FieldName>(&self, name: N) -> usize {
        match name.known() {
            Some(k) if self.present & k.bit() == 0 => self.lines.len(),
            Some(k) => usize::from(self.first[k as usize]),
            None => 0,
        }
    }

    fn get<'b, N: FieldName>(&self, buf: &'b [u8], name: N) -> Option<&'b [u8]> {
        match name.known() {
            Some(k) if self.present & k.bit() == 0 => None,
            Some(k) => Some(self.lines[usize::from(self.first[k as usize])].1.of(buf)),
            None => self.get_all(buf, name).next(),
        }
    }

    fn get_all<'a, 'b: 'a, N: FieldName + 'a>(
        &'a self,
        buf: &'b [u8],
        name: N,
    ) -> impl Iterator<Item = &'b [u8]> + 'a {
        self.lines[self.first_line(name)..]
            .iter()
            .filter(move |(n, _)| name.matches(n.of(buf)))
            .map(move |(_, v)| v.of(buf))
    }
}

/// A parsed request head: spans into the buffer it was parsed from. Every
/// accessor takes that buffer again; passing another one gives garbage (or
/// a panic on an out-of-range span), never unsafety.
#[derive(Clone, Debug)]
pub struct RequestHead {
    method: Span,
    target: Span,
    form: TargetForm,
    minor: u8,
    /// Absolute-form authority (userinfo removed), CONNECT's target, or the Host value.
    authority: Option<Span>,
    /// What [`RequestHead::origin_target`] returns, when it is part of the buffer.
    path: Span,
    fields: Fields,
    head_len: usize,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead::with_capacity(super::Limits::default().max_headers)
    }
}

impl RequestHead {
    /// A head whose header vector holds `max_headers` lines without growing.
    pub fn with_capacity(max_headers: usize) -> Self {
        RequestHead {
            method: Span::EMPTY,
            target: Span::EMPTY,
            form: TargetForm::Origin,
            minor: 1,
            authority: None,
            path: Span::EMPTY,
            fields: Fields::with_capacity(max_headers.min(MAX_HEADERS_CAP)),
            head_len: 0,
        }
    }

    /// Parses the head at the start of `buf`. Leading empty lines are skipped
    /// (RFC 9112 §2.2); a bare LF ends a line as well as CRLF does.
    ///
    /// Errors: 414 when the request line is longer than
    /// `limits.max_request_line` (even before its end has arrived), 431 when
    /// the head outgrows `limits.max_head` or has more than
    /// `limits.max_headers` lines, 505 for an HTTP version other than 1.0 and
    /// 1.1, 400 for anything malformed, including obs-fold, a missing Host
    /// header on HTTP/1.1, several Host lines, a Host value that is not an
    /// authority, and a request-target its method does not allow.
    ///
    /// After an error or [`Parsed::Partial`] the accessors' answers are
    /// meaningless until the next complete parse.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, HeadError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(buf, &mut slots[..max_headers]);
        let head_len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                check_request_line(buf, limits.max_request_line)?;
                if buf.len() >= limits.max_head {
                    return Err(HeadError::HeadTooLarge);
                }
                return Ok(Parsed::Partial);
            }
            Err(e) => return Err(map_error(e, buf, true)),
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            unreachable!("httparse completed a request without its request line");
        };
        self.method = Span::within(buf, method.as_bytes());
        self.target = Span::within(buf, target.as_bytes());
        // The request line ends with " HTTP/1.x" right after the target.
        let line_len = self.target.end as usize + 9 - self.method.start as usize;
        if line_len > limits.max_request_line {
            return Err(HeadError::RequestLineTooLong);
        }
        if head_len > limits.max_head {
            return Err(HeadError::HeadTooLarge);
        }
        self.minor = minor;
        self.head_len = head_len;
        self.fields.fill(buf, req.headers);
        self.check_target_and_host(buf)?;
        Ok(Parsed::Complete { head_len })
    }

    /// Classifies the target, finds the authority, and refuses what RFC 9112
    /// §3.2 tells a server to refuse.
    fn check_target_and_host(&mut self, buf: &[u8]) -> Result<(), HeadError> {
        let mut host = None;
        let from = self.fields.first_line(Known::Host);
        for (name, value) in &self.fields.lines[from..] {
            if super::eq_ignore_case_lower(name.of(buf), b"host") {
                if host.is_some() {
                    return Err(HeadError::Malformed("more than one Host header"));
                }
                if !is_authority(value.of(buf)) {
                    return Err(HeadError::Malformed("invalid Host header"));
                }
                host = Some(*value);
            }
        }
        if host.is_none() && self.minor == 1 {
            return Err(HeadError::Malformed("missing Host header"));
        }
        let method = self.method.of(buf);
        let target = self.target.of(buf);
        let base = self.target.start as usize;
        self.path = self.target;
        self.authority = host.filter(|h| !h.is_empty());
        if method == b"CONNECT" {
            if !is_host_port(target) {
                return Err(HeadError::Malformed("CONNECT needs a host:port target"));
            }
            self.form = TargetForm::Authority;
            self.authority = Some(self.target);
        } else if target == b"*" {
            if method != b"OPTIONS" {
                return Err(HeadError::Malformed(
                    "asterisk-form target is for OPTIONS only",
                ));
            }
            self.form = TargetForm::Asterisk;
        } else if target[0] == b'/' {
            self.form = TargetForm::Origin;
        } else {
            let Some((auth, path)) = split_absolute(target) else {
                return Err(HeadError::Malformed("invalid request target"));
            };
            // userinfo is deprecated for http(s) and is no part of the host.
            let hostport = match target[auth.clone()].iter().rposition(|&b| b == b'@') {
                Some(at) => auth.start + at + 1..auth.end,
                None => auth,
            };
            // An empty host is invalid in an http(s) URI (RFC 9110 §4.2.1).
            if hostport.is_empty() || !is_authority(&target[hostport.clone()]) {
                return Err(HeadError::Malformed("invalid authority in request target"));
            }
            self.form = TargetForm::Absolute;
            // The target's authority overrides Host (RFC 9112 §3.2.2).
            self.authority = Some(Span::new(base + hostport.start, base + hostport.end));
            self.path = Span::new(base + path.start, base + path.end);
        }
        Ok(())
    }

    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.method.of(buf)
    }

    /// The request-target exactly as received.
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.target.of(buf)
    }

    pub fn target_form(&self) -> TargetForm {
        self.form
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor
    }

    /// Length of the head, empty line included: where the body starts.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// Header lines in order, names as received.
    pub fn headers<'a, 'b: 'a>(
        &'a self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + 'a {
        self.fields.iter(buf)
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn get<'b, N: FieldName>(&self, buf: &'b [u8], name: N) -> Option<&'b [u8]> {
        self.fields.get(buf, name)
    }

    /// Every value of header `name`, in order.
    pub fn get_all<'a, 'b: 'a, N: FieldName + 'a>(
        &'a self,
        buf: &'b [u8],
        name: N,
    ) -> impl Iterator<Item = &'b [u8]> + 'a {
        self.fields.get_all(buf, name)
    }

    pub(crate) fn spans(&self) -> &[(Span, Span)] {
        &self.fields.lines
    }

    /// Methods are case-sensitive (RFC 9110 §9.1).
    pub fn is_head_method(&self, buf: &[u8]) -> bool {
        self.method.of(buf) == b"HEAD"
    }

    pub fn is_connect(&self, buf: &[u8]) -> bool {
        self.method.of(buf) == b"CONNECT"
    }

    /// The request's authority (`host[:port]`): the absolute-form target's
    /// (which overrides Host, RFC 9112 §3.2.2), CONNECT's target, else the
    /// Host header. `None` when that is empty or absent (HTTP/1.0 without
    /// Host). Validity and uniqueness were checked by [`RequestHead::parse`].
    pub fn authority<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.authority.map(|s| s.of(buf))
    }

    /// The target to send upstream: origin-form as is; absolute-form reduced
    /// to its path and query, `/` when the path is empty; authority- and
    /// asterisk-form as is. One case is not a slice of the buffer:
    /// `http://h?q` gives `?q`, and the writer must put `/` before it
    /// ([`super::write_request`] does).
    pub fn origin_target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        if self.path.is_empty() {
            b"/"
        } else {
            self.path.of(buf)
        }
    }
}

/// A parsed response head; same conventions as [`RequestHead`].
#[derive(Clone, Debug)]
pub struct ResponseHead {
    status: u16,
    reason: Span,
    minor: u8,
    fields: Fields,
    head_len: usize,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead::with_capacity(super::Limits::default().max_headers)
    }
}

impl ResponseHead {
    pub fn with_capacity(max_headers: usize) -> Self {
        ResponseHead {
            status: 0,
            reason: Span::EMPTY,
            minor: 1,
            fields: Fields::with_capacity(max_headers.min(MAX_HEADERS_CAP)),
            head_len: 0,
        }
    }

    /// Parses the head at the start of `buf`, with the limits of
    /// [`RequestHead::parse`] but no request line. Obs-fold is refused (a
    /// proxy may not forward it, RFC 9112 §5.2); so is a status below 100.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, HeadError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut res = httparse::Response::new(&mut []);
        let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut slots[..max_headers],
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= limits.max_head {
                    return Err(HeadError::HeadTooLarge);
                }
                return Ok(Parsed::Partial);
            }
            Err(e) => return Err(map_error(e, buf, false)),
        };
        if head_len > limits.max_head {
            return Err(HeadError::HeadTooLarge);
        }
        let (Some(minor), Some(status), Some(reason)) = (res.version, res.code, res.reason) else {
            unreachable!("httparse completed a response without its status line");
        };
        if status < 100 {
            return Err(HeadError::Malformed("invalid status code"));
        }
        self.status = status;
        self.minor = minor;
        self.reason = Span::within(buf, reason.as_bytes());
        self.head_len = head_len;
        self.fields.fill(buf, res.headers);
        Ok(Parsed::Complete { head_len })
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase as received (possibly empty).
    pub fn reason<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.reason.of(buf)
    }

    pub fn minor_version(&self) -> u8 {
        self.minor
    }

    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// 1xx: an interim response; the final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    pub fn headers<'a, 'b: 'a>(
        &'a self,
        buf: &'b [u8],
    ) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + 'a {
        self.fields.iter(buf)
    }

    pub fn get<'b, N: FieldName>(&self, buf: &'b [u8], name: N) -> Option<&'b [u8]> {
        self.fields.get(buf, name)
    }

    pub fn get_all<'a, 'b: 'a, N: FieldName + 'a>(
        &'a self,
        buf: &'b [u8],
        name: N,
    ) -> impl Iterator<Item = &'b [u8]> + 'a {
        self.fields.get_all(buf, name)
    }

    pub(crate) fn spans(&self) -> &[(Span, Span)] {
        &self.fields.lines
    }
}

/// The request line starts after the empty lines httparse skips.
fn start_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    &buf[start..]
}

/// 414 when the request line (CR LF excluded) is, or is sure to become,
/// longer than `max`. Looks at no more than `max + 2` bytes.
fn check_request_line(buf: &[u8], max: usize) -> Result<(), HeadError> {
    let line = start_line(buf);
    let window = &line[..line.len().min(max + 2)];
    let len = match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && window[lf - 1] == b'\r' => lf - 1,
        Some(lf) => lf,
        None => window.len(),
    };
    if len > max {
        Err(HeadError::RequestLineTooLong)
    } else {
        Ok(())
    }
}

/// Turns httparse's error into ours, looking at the bytes for the cases
/// that deserve a more precise answer (obs-fold, an HTTP version we do not
/// speak).
/// RFC 9110 §2.5: a request in a later minor version of HTTP/1 than the
/// recipient's (`HTTP/1.2`) is handled as if in the highest it speaks,
/// 1.1. Rewrites such a version in a whole request line at the start of
/// `buf` to `HTTP/1.1`, in place, and returns whether it did; the head is
/// then parsed again (and forwarded as 1.1, as it would be anyway).
pub fn read_later_minor_as_1_1(buf: &mut [u8]) -> bool {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let Some(space) = line.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    let version = &line[space + 1..];
    if version.len() == 8 && version.starts_with(b"HTTP/1.") && (b'2'..=b'9').contains(&version[7])
    {
        buf[space + 8] = b'1';
        true
    } else {
        false
    }
}

fn map_error(e: httparse::Error, buf: &[u8], request: bool) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => {
            let line = start_line(buf);
            let version = if request {
                // method SP target SP version; a second space in a row is no version.
                line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b"")
            } else {
                line
            };
            if version.len() > 5 && version.starts_with(b"HTTP/") && version[5].is_ascii_digit() {
                HeadError::UnsupportedVersion
            } else {
                HeadError::Malformed("invalid HTTP version")
            }
        }
        httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine
            if has_obs_fold(buf) =>
        {
            HeadError::Malformed("obsolete line folding")
        }
        httparse::Error::HeaderName => HeadError::Malformed("invalid header field name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header field value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid request line"),
    }
}

/// Does a line of the head (after the start line) begin with white space?
/// Only used to explain an error, so it may look past the head's end.
fn has_obs_fold(buf: &[u8]) -> bool {
    let line = start_line(buf);
    line.windows(2)
        .take_while(|w| w != b"\n\n" && w != b"\n\r")
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
}

/// `scheme://authority[path][?query]` -> (authority, path-and-query) as
/// ranges of `target`. The scheme is RFC 3986's: ALPHA *(ALPHA / DIGIT / + - .).
fn split_absolute(target: &[u8]) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    // absolute-URI has no fragment (RFC 9112 §3.2.2); refusing `#` keeps the
    // path we forward a path.
    if !scheme_ok || !target[colon + 1..].starts_with(b"//") || target.contains(&b'#') {
        return None;
    }
    let auth_start = colon + 3;
    let auth_end = target[auth_start..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(target.len(), |i| auth_start + i);
    Some((auth_start..auth_end, auth_end..target.len()))
}

/// Could `v` be `uri-host [ ":" port ]` (RFC 9110 §7.2)? Checks the
/// characters only: a reg-name, an IPv4 address or a bracketed IP literal,
/// then an optional all-digit port. Nothing here can smuggle a `/` into the
/// name the router builds from the host.
pub(crate) fn is_authority(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(close) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &v[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &v[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&v[..0], port),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(c) => (&v[..c], &v[c + 1..]),
            None => (v, &v[v.len()..]),
        }
    };
    let host_ok = host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    host_ok && port.iter().all(u8::is_ascii_digit)
}

/// CONNECT's authority-form: a non-empty host and a non-empty port.
fn is_host_port(v: &[u8]) -> bool {
    let Some(c) = v.iter().rposition(|&b| b == b':') else {
        return false;
    };
    c > 0 && c + 1 < v.len() && is_authority(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse_req(buf: &[u8]) -> (RequestHead, Result<Parsed, HeadError>) {
        let mut head = RequestHead::with_capacity(100);
        let res = head.parse(buf, &limits());
        (head, res)
    }

    fn req_err(buf: &[u8]) -> HeadError {
        parse_req(buf).1.expect_err("expected an error")
    }

    fn complete(buf: &[u8]) -> RequestHead {
        let (head, res) = parse_req(buf);
        assert!(
            matches!(res, Ok(Parsed::Complete { .. })),
            "{res:?} for {:?}",
            String::from_utf8_lossy(buf)
        );
        head
    }

    const GET: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nHost: svc.example:8080\r\nAccept: */*\r\nX-Multi: 1\r\nx-multi: 2\r\nEmpty:\r\n\r\nBODY";

    #[test]
    fn parses_request_into_spans() {
        let (head, res) = parse_req(GET);
        let head_len = GET.len() - 4;
        assert_eq!(res, Ok(Parsed::Complete { head_len }));
        assert_eq!(head.head_len(), head_len);
        assert_eq!(head.method(GET), b"GET");
        assert_eq!(head.target(GET), b"/a/b?c=d");
        assert_eq!(head.target_form(), TargetForm::Origin);
        assert_eq!(head.minor_version(), 1);
        assert_eq!(head.origin_target(GET), b"/a/b?c=d");
        assert_eq!(head.authority(GET), Some(&b"svc.example:8080"[..]));
        let headers: Vec<_> = head.headers(GET).collect();
        assert_eq!(
            headers,
            [
                (&b"Host"[..], &b"svc.example:8080"[..]),
                (b"Accept", b"*/*"),
                (b"X-Multi", b"1"),
                (b"x-multi", b"2"),
                (b"Empty", b""),
            ]
        );
        assert_eq!(head.get(GET, "accept"), Some(&b"*/*"[..]));
        assert_eq!(head.get(GET, "X-MULTI"), Some(&b"1"[..]));
        assert_eq!(head.get(GET, "missing"), None);
        assert_eq!(head.get(GET, "empty"), Some(&b""[..]));
        let all: Vec<_> = head.get_all(GET, "x-multi").collect();
        assert_eq!(all, [&b"1"[..], b"2"]);
        assert!(!head.is_head_method(GET));
        assert!(!head.is_connect(GET));
    }

    #[test]
    fn indexed_lookups_agree_with_a_plain_scan() {
        let buf = b"GET / HTTP/1.1\r\nX-A: 1\r\nCONNECTION: a\r\nhost: h\r\nConnection: b\r\n\
                    Via: 1.1 p\r\nL5D-Dtab: /a=>/b\r\nx-a: 2\r\nconnection: c\r\nVIA: 1.0 q\r\n\r\n";
        let head = complete(buf);
        let plain = |name: &str| -> Vec<&[u8]> {
            head.headers(buf)
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v)
                .collect()
        };
        for k in Known::ALL {
            let want = plain(k.name());
            assert_eq!(head.get_all(buf, k).collect::<Vec<_>>(), want, "{k:?}");
            assert_eq!(head.get(buf, k), want.first().copied(), "{k:?}");
            assert_eq!(head.get_all(buf, k.name()).collect::<Vec<_>>(), want);
        }
        for name in ["x-a", "missing", "HOST", "Via"] {
            assert_eq!(head.get_all(buf, name).collect::<Vec<_>>(), plain(name));
        }
        assert_eq!(
            head.get_all(buf, Known::Connection).collect::<Vec<_>>(),
            [&b"a"[..], b"b", b"c"]
        );
        assert_eq!(Known::of(b"Content-LENGTH"), Some(Known::ContentLength));
        assert_eq!(Known::of(b"content-lengtx"), None);
        // Reused for a head without them: nothing is left over.
        let second = b"GET / HTTP/1.0\r\nX-B: 1\r\n\r\n";
        let mut head = head;
        assert!(matches!(
            head.parse(second, &limits()),
            Ok(Parsed::Complete { .. })
        ));
        for k in Known::ALL {
            assert_eq!(head.get(second, k), None, "{k:?}");
        }
    }

    #[test]
    fn reused_head_forgets_previous_headers() {
        let mut head = RequestHead::with_capacity(100);
        head.parse(GET, &limits()).unwrap();
        let second = b"HEAD / HTTP/1.0\r\n\r\n";
        head.parse(second, &limits()).unwrap();
        assert_eq!(head.headers(second).count(), 0);
        assert!(head.is_head_method(second));
        assert_eq!(head.minor_version(), 0);
        assert_eq!(head.authority(second), None);
    }

    /// Every prefix of a head is Partial until the head is whole, and then
    /// gives the same answer as the whole buffer.
    #[test]
    fn every_split_point_gives_the_same_result() {
        let samples: [&[u8]; 5] = [
            GET,
            b"\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"GET http://h:1/p HTTP/1.1\nHost: x\n\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            b"OPTIONS * HTTP/1.0\r\n\r\n",
        ];
        for buf in samples {
            let whole = complete(buf);
            let head_len = whole.head_len();
            for k in 0..buf.len() {
                let (head, res) = parse_req(&buf[..k]);
                if k < head_len {
                    assert_eq!(
                        res,
                        Ok(Parsed::Partial),
                        "prefix {k} of {:?}",
                        String::from_utf8_lossy(buf)
                    );
                } else {
                    assert_eq!(res, Ok(Parsed::Complete { head_len }));
                    assert_eq!(head.method(buf), whole.method(buf));
                    assert_eq!(head.target(buf), whole.target(buf));
                    assert_eq!(head.authority(buf), whole.authority(buf));
                    assert!(head.headers(buf).eq(whole.headers(buf)));
                }
            }
        }
    }

    #[test]
    fn errors_are_the_same_at_every_split_after_the_offending_byte() {
        let bad = b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n";
        let at = 18; // the space in the name
        for k in 0..bad.len() {
            let res = parse_req(&bad[..k]).1;
            if k <= at {
                assert_eq!(res, Ok(Parsed::Partial), "prefix {k}");
            } else {
                assert_eq!(
                    res,
                    Err(HeadError::Malformed("invalid header field name")),
                    "prefix {k}"
                );
            }
        }
    }

    #[test]
    fn leading_empty_lines_and_bare_lf_are_tolerated() {
        let buf = b"\r\n\n\r\nGET / HTTP/1.1\nHost: a\r\nX: y\n\n";
        let head = complete(buf);
        assert_eq!(head.method(buf), b"GET");
        assert_eq!(head.get(buf, "x"), Some(&b"y"[..]));
        assert_eq!(head.head_len(), buf.len());
    }

    #[test]
    fn request_line_too_long_is_414() {
        let l = Limits::default();
        // The target is still arriving and the line is already too long.
        let mut buf = b"GET /".to_vec();
        buf.resize(l.max_request_line + 1, b'a');
        assert_eq!(req_err(&buf), HeadError::RequestLineTooLong);
        assert_eq!(HeadError::RequestLineTooLong.status(), 414);
        // Exactly at the limit, then one over, with the head complete.
        for (extra, ok) in [(0, true), (1, false)] {
            let target_len = l.max_request_line - "GET  HTTP/1.1".len() + extra;
            let mut buf = b"GET /".to_vec();
            buf.resize(4 + target_len, b'a');
            buf.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
            let res = parse_req(&buf).1;
            if ok {
                assert!(matches!(res, Ok(Parsed::Complete { .. })), "{res:?}");
            } else {
                assert_eq!(res, Err(HeadError::RequestLineTooLong));
            }
        }
        // Partial at exactly the limit is fine: the CRLF may follow.
        let mut buf = b"GET /".to_vec();
        buf.resize(l.max_request_line, b'a');
        assert_eq!(parse_req(&buf).1, Ok(Parsed::Partial));
    }

    #[test]
    fn head_too_large_is_431() {
        let small = Limits {
            max_head: 64,
            ..Limits::default()
        };
        let mut head = RequestHead::with_capacity(100);
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
        buf.resize(64, b'v');
        assert_eq!(head.parse(&buf[..63], &small), Ok(Parsed::Partial));
        assert_eq!(head.parse(&buf, &small), Err(HeadError::HeadTooLarge));
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.parse(&buf, &small), Err(HeadError::HeadTooLarge));
        assert_eq!(HeadError::HeadTooLarge.status(), 431);
        // Endless empty lines count towards the head too.
        let blank = vec![b'\n'; 64];
        assert_eq!(head.parse(&blank, &small), Err(HeadError::HeadTooLarge));
        // Default: a 64 KiB head of one big header.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(64 * 1024, b'v');
        assert_eq!(req_err(&big), HeadError::HeadTooLarge);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..99 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(parse_req(&buf).1, Ok(Parsed::Complete { .. })));
        buf.truncate(buf.len() - 2);
        buf.extend_from_slice(b"X-100: v\r\n\r\n");
        assert_eq!(req_err(&buf), HeadError::TooManyHeaders);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        let few = Limits {
            max_headers: 1,
            ..Limits::default()
        };
        let mut head = RequestHead::with_capacity(1);
        assert_eq!(
            head.parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n", &few),
            Err(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn malformed_heads_are_400() {
        let cases: [(&[u8], &str); 14] = [
            (b"G(T / HTTP/1.1\r\n\r\n", "invalid request line"),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                "invalid request line",
            ),
            (b"GET HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "invalid line ending"),
            (b"GET / HTTPS/1.1\r\n\r\n", "invalid HTTP version"),
            (b"GET /  HTTP/1.1\r\n\r\n", "invalid HTTP version"),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                "invalid header field name",
            ),
            (
                b"GET / HTTP/1.1\r\n: a\r\n\r\n",
                "invalid header field name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
                "invalid header field name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
                "invalid header field value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                "invalid header field value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                "obsolete line folding",
            ),
        ];
        for (buf, why) in cases {
            let err = req_err(buf);
            assert_eq!(
                err,
                HeadError::Malformed(why),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn other_http_versions_are_505() {
        for buf in [
            &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"PRI * HTTP/2",
        ] {
            let err = req_err(buf);
            assert_eq!(
                err,
                HeadError::UnsupportedVersion,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(err.status(), 505);
        }
    }

    #[test]
    fn host_rules() {
        let bad: [(&[u8], &str); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", "missing Host header"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                "more than one Host header",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
                "more than one Host header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                "invalid Host header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                "invalid Host header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
                "invalid Host header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
                "invalid Host header",
            ),
        ];
        for (buf, why) in bad {
            assert_eq!(
                req_err(buf),
                HeadError::Malformed(why),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        let good: [(&[u8], Option<&[u8]>); 5] = [
            (b"GET / HTTP/1.0\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", None),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
                Some(b"[::1]:80"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
                Some(b"10.0.0.1"),
            ),
            (
                b"GET / HTTP/1.1\r\nHOST: Web_1.svc~x\r\n\r\n",
                Some(b"Web_1.svc~x"),
            ),
        ];
        for (buf, authority) in good {
            assert_eq!(complete(buf).authority(buf), authority);
        }
    }

    #[test]
    fn absolute_form_authority_overrides_host() {
        type Case = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let cases: [Case; 5] = [
            (
                b"GET http://user:pw@example.com:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
                b"/p?q",
                Some(b"example.com:8080"),
            ),
            (
                b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
                b"/",
                Some(b"example.com"),
            ),
            (
                b"GET HTTPS://example.com/ HTTP/1.0\r\n\r\n",
                b"/",
                Some(b"example.com"),
            ),
            (
                b"GET http://example.com?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
                b"?x=1",
                Some(b"example.com"),
            ),
            (
                b"GET http://[::1]:9/p HTTP/1.1\r\nHost: a\r\n\r\n",
                b"/p",
                Some(b"[::1]:9"),
            ),
        ];
        for (buf, path, authority) in cases {
            let head = complete(buf);
            assert_eq!(head.target_form(), TargetForm::Absolute);
            assert_eq!(
                head.origin_target(buf),
                path,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(head.authority(buf), authority);
        }
        for buf in [
            &b"GET http//x/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET 1http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET mailto:x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://h#f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://h/p#f HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(req_err(buf), HeadError::Malformed("invalid request target"));
        }
        for buf in [
            &b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET http://u@/p HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a:b/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                req_err(buf),
                HeadError::Malformed("invalid authority in request target")
            );
        }
        // The authority ends at the first '/', so an '@' in the path is no userinfo.
        let buf = b"GET http://a/x@evil/ HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(complete(buf).authority(buf), Some(&b"a"[..]));
        assert_eq!(
            req_err(b"GET http://a%2Fb@c d/ HTTP/1.1\r\nHost: a\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn connect_and_asterisk_forms() {
        let buf = b"CONNECT db.svc:5432 HTTP/1.1\r\nHost: db.svc:5432\r\n\r\n";
        let head = complete(buf);
        assert!(head.is_connect(buf));
        assert_eq!(head.target_form(), TargetForm::Authority);
        assert_eq!(head.authority(buf), Some(&b"db.svc:5432"[..]));
        assert_eq!(head.origin_target(buf), b"db.svc:5432");
        for bad in [
            &b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"CONNECT db.svc HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT :80 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a: HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                req_err(bad),
                HeadError::Malformed("CONNECT needs a host:port target")
            );
        }
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.target_form(), TargetForm::Asterisk);
        assert_eq!(head.origin_target(buf), b"*");
        assert_eq!(
            req_err(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::Malformed("asterisk-form target is for OPTIONS only")
        );
    }

    fn parse_res(buf: &[u8]) -> (ResponseHead, Result<Parsed, HeadError>) {
        let mut head = ResponseHead::with_capacity(100);
        let res = head.parse(buf, &limits());
        (head, res)
    }

    #[test]
    fn parses_responses() {
        let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX: 1\r\n\r\n";
        let (head, res) = parse_res(buf);
        assert_eq!(
            res,
            Ok(Parsed::Complete {
                head_len: buf.len()
            })
        );
        assert_eq!(head.status(), 404);
        assert_eq!(head.reason(buf), b"Not Found");
        assert_eq!(head.minor_version(), 1);
        assert_eq!(head.get(buf, "content-length"), Some(&b"0"[..]));
        assert_eq!(head.get_all(buf, "x").count(), 1);
        assert_eq!(head.headers(buf).count(), 2);
        assert!(!head.is_interim());
        for k in 0..buf.len() {
            assert_eq!(parse_res(&buf[..k]).1, Ok(Parsed::Partial), "prefix {k}");
        }

        for (buf, status, reason) in [
            (&b"HTTP/1.0 200\r\n\r\n"[..], 200, &b""[..]),
            (b"HTTP/1.1 204 \r\n\r\n", 204, b""),
            (b"\r\nHTTP/1.1 100 Continue\n\n", 100, b"Continue"),
            (
                b"HTTP/1.1 599 Whatever it likes\r\n\r\n",
                599,
                b"Whatever it likes",
            ),
        ] {
            let (head, res) = parse_res(buf);
            assert!(matches!(res, Ok(Parsed::Complete { .. })), "{res:?}");
            assert_eq!(head.status(), status);
            assert_eq!(head.reason(buf), reason);
        }
        assert!(parse_res(b"HTTP/1.1 101 Switching\r\n\r\n").0.is_interim());
    }

    #[test]
    fn bad_responses() {
        let cases: [(&[u8], HeadError); 7] = [
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                HeadError::Malformed("invalid status line"),
            ),
            (
                b"HTTP/1.1 20 OK\r\n\r\n",
                HeadError::Malformed("invalid status line"),
            ),
            (
                b"HTTP/1.1 099 Low\r\n\r\n",
                HeadError::Malformed("invalid status code"),
            ),
            (b"HTTP/2 200 OK\r\n\r\n", HeadError::UnsupportedVersion),
            (
                b"ICY 200 OK\r\n\r\n",
                HeadError::Malformed("invalid HTTP version"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
                HeadError::Malformed("obsolete line folding"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
                HeadError::Malformed("invalid header field name"),
            ),
        ];
        for (buf, err) in cases {
            assert_eq!(
                parse_res(buf).1,
                Err(err),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        let small = Limits {
            max_head: 32,
            ..Limits::default()
        };
        let mut head = ResponseHead::with_capacity(4);
        let mut buf = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        buf.resize(32, b'v');
        assert_eq!(head.parse(&buf, &small), Err(HeadError::HeadTooLarge));
        // A long status line is only a head size matter for responses.
        let mut buf = b"HTTP/1.1 200 ".to_vec();
        buf.resize(10_000, b'r');
        assert_eq!(parse_res(&buf).1, Ok(Parsed::Partial));
    }

    #[test]
    fn authority_characters() {
        for ok in [
            &b"a"[..],
            b"a.b-c_d~e",
            b"a:1",
            b"a:",
            b"[::1]",
            b"1.2.3.4:5",
            b"x%41",
        ] {
            assert!(is_authority(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a/b"[..],
            b"a?b",
            b"a#b",
            b"a@b",
            b"a b",
            b"a:b",
            b"[::1]x",
            b"[]",
            b"[x]",
            b"caf\xc3\xa9",
        ] {
            assert!(!is_authority(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_a_later_minor_version_of_http_1_is_read_as_1_1() {
        let mut cases: [(&[u8], Option<&[u8]>); 6] = [
            (b"GET / HTTP/1.2\r\n", Some(b"GET / HTTP/1.1\r\n")),
            (b"GET /a%20b HTTP/1.9\n", Some(b"GET /a%20b HTTP/1.1\n")),
            (b"GET / HTTP/1.2", None),
            (b"GET / HTTP/2.0\r\n", None),
            (b"GET / HTTP/1.10\r\n", None),
            (b"GET / HTTP/1.1\r\n", None),
        ];
        for (input, want) in &mut cases {
            let mut buf = input.to_vec();
            let changed = read_later_minor_as_1_1(&mut buf);
            assert_eq!(
                changed,
                want.is_some(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(&buf[..], want.unwrap_or(input));
        }
    }
}
