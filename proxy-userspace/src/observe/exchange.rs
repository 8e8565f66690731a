//! One exchange (a request and its response) as the observers see it when
//! it ends: the access log, the dashboard's windows and capture.
//!
//! The connection loop fills a [`Record`] of borrowed parts as the exchange
//! goes (nothing is copied for it) and hands it to each [`Observer`] once,
//! after the response's last byte went to the client or the exchange
//! failed. Observers must not block: whatever they keep they copy into a
//! bounded buffer and write elsewhere (see `access_log`, `capture`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use crate::observe::metrics::{ErrorKind, RouteStats};

/// How the destination was chosen, from the most specific cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// The base dtab alone.
    Base,
    /// A routing rule (its name is `Route::rule`).
    Rule,
    /// The request's own `l5d-dtab` / `l5d-ctx-dtab`.
    Override,
    /// A copy made by a mirror (shadowing).
    Mirror,
}

impl Via {
    /// The most specific cause: an override beats a rule, a rule the base
    /// dtab.
    pub fn of(overridden: bool, rule: bool) -> Via {
        if overridden {
            Via::Override
        } else if rule {
            Via::Rule
        } else {
            Via::Base
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Via::Base => "base",
            Via::Rule => "rule",
            Via::Override => "override",
            Via::Mirror => "mirror",
        }
    }
}

/// Where the proxy's own time went, from the complete request head:
/// each an offset from `Record::started`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spans {
    /// The logical name was known (identify).
    pub identified: Option<Duration>,
    /// The route was bound and a destination picked (route).
    pub routed: Option<Duration>,
    /// A backend connection was ready (taken from the pool or connected).
    pub connected: Option<Duration>,
    /// The backend's response head began to arrive (first byte).
    pub first_byte: Option<Duration>,
}

/// One finished exchange. Text fields are empty when the exchange ended
/// before they were known.
#[derive(Debug)]
pub struct Record<'a> {
    /// When the request head was complete.
    pub started: Instant,
    /// The same moment on the wall clock.
    pub started_wall: SystemTime,
    /// From `started` to the response's last byte (or the failure).
    pub total: Duration,
    pub spans: Spans,
    /// The client (the calling pod, on a node).
    pub peer: SocketAddr,
    pub method: &'a str,
    /// The Host header (or the absolute form's authority).
    pub authority: &'a str,
    /// The request-target as the client sent it, query included.
    pub target: &'a str,
    /// The status the client was answered with; 0 when it got none (the
    /// connection was closed).
    pub status: u16,
    /// Set when the proxy itself answered (or closed): what went wrong.
    pub error: Option<ErrorKind>,
    /// Bytes read from the client for this exchange (head and body).
    pub bytes_in: u64,
    /// Bytes written to the client for this exchange (head and body).
    pub bytes_out: u64,
    /// The logical name (`/svc/world`), once the request was identified
    /// and routed; else empty.
    pub name: &'a str,
    /// The bound destination's id (`/#/io.l5d.fs/world-v2`), the version
    /// the request went to; else empty.
    pub dst: &'a str,
    /// How the destination was chosen (`Base` when the request was not
    /// routed).
    pub via: Via,
    /// The routing rule that matched, or empty.
    pub rule: &'a str,
    /// The request's own dtab entries stood.
    pub overridden: bool,
    /// The destination's counters (the route's `RouteStats`), when the
    /// request had a destination: what the metrics count it under.
    pub stats: Option<&'a RouteStats>,
    /// `l5d-reqid`: the client's or the one the proxy gave it.
    pub request_id: &'a str,
    /// The request was copied to a mirror.
    pub mirrored: bool,
    /// The request was sent again on a fresh connection after a pooled
    /// one turned out closed before any response byte.
    pub retried: bool,
    /// `traceparent` as forwarded (the client's, or the one the proxy
    /// started), or empty.
    pub traceparent: &'a str,
    /// For observers that asked for bodies ([`Observer::keep_bodies`]):
    /// the request head as the client sent it, the request body as far as
    /// it was kept, and the response head and body as the client got them.
    pub bodies: Option<Bodies<'a>>,
}

///
/// Bodies are as framed on the wire: a chunked body keeps its chunked
/// coding (its head says `Transfer-Encoding: chunked`); [`unframed`] takes
/// it off. The response head is the one the client got (the proxy's own
/// error answer, body included, when the proxy answered).
#[derive(Debug, Clone, Copy)]
pub struct Bodies<'a> {
    pub request_head: &'a [u8],
    /// `None` when the body was larger than the limit (or not kept whole).
    pub request_body: Option<&'a [u8]>,
    pub response_head: &'a [u8],
    pub response_body: Option<&'a [u8]>,
}

/// A body as kept in [`Bodies`], without its chunked coding when `chunked`
/// (`None` when the coding is broken).
pub fn unframed(body: &[u8], chunked: bool) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !chunked {
        return Some(std::borrow::Cow::Borrowed(body));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut scanner = crate::http::ChunkedScanner::new();
    scanner
        .decode(body, |data| out.extend_from_slice(data))
        .ok()?;
    Some(std::borrow::Cow::Owned(out))
}

impl Record<'_> {
    pub fn via(&self) -> Via {
        self.via
    }

    /// The logical name, or empty.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The bound destination's id, or empty.
    pub fn dst(&self) -> &str {
        self.dst
    }

    /// The routing rule that matched, or empty.
    pub fn rule(&self) -> &str {
        self.rule
    }
}

/// Something told about every exchange.
pub trait Observer: Send + Sync {
    fn exchange(&self, record: &Record<'_>);

    /// Whether this observer reads the request's own fields (method,
    /// authority, target, wall time, spans, request id, traceparent).
    /// When none does, a connection does not note them: an observer of
    /// counts alone (the dashboard) costs no copy of the head.
    fn wants_request(&self) -> bool {
        true
    }

    /// Whether this observer wants the request's and response's heads and
    /// bodies of requests to logical name `name` routed `via`, and up to
    /// how many bytes of each body. Asked once per request, when routed.
    fn keep_bodies(&self, _name: &str, _via: Via) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::unframed;

    #[test]
    fn chunked_bodies_are_unframed() {
        assert_eq!(
            unframed(b"5\r\nhello\r\n0\r\n\r\n", true).unwrap().as_ref(),
            b"hello"
        );
        assert_eq!(unframed(b"hello", false).unwrap().as_ref(), b"hello");
        assert!(unframed(b"zz\r\nhello", true).is_none());
    }
}
