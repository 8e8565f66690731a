//! What a connection notes about the exchange under way for its observers
//! (access log, dashboard, capture), and the [`Record`] made of it when the
//! exchange ends.
//!
//! Nothing here runs when the proxy has no observers: the connection loop
//! asks [`Observed::on`] first. When it has, an exchange costs a copy of
//! its request head into a buffer the connection keeps, and a clock read
//! per span.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    http::RequestHead,
    observe::{
        exchange::{Bodies, Observer, Record, Spans, Via},
        metrics::ErrorKind,
    },
    route::{Dest, Outcome, Route},
};

/// Longest `l5d-reqid` or `traceparent` value kept for the record; longer
/// ones are cut (they are ids, not payloads).
const MAX_ID: usize = 64;

/// An id kept without an allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Id {
    bytes: [u8; MAX_ID],
    len: u8,
}

impl Default for Id {
    fn default() -> Id {
        Id {
            bytes: [0; MAX_ID],
            len: 0,
        }
    }
}

impl Id {
    pub(super) fn set(&mut self, value: &[u8]) {
        let n = value.len().min(MAX_ID);
        self.bytes[..n].copy_from_slice(&value[..n]);
        self.len = n as u8;
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// One connection's notes on its current exchange.
#[derive(Debug)]
pub(super) struct Observed {
    /// The proxy has observers: every other field is kept only then (or
    /// the spans for `timing`).
    pub on: bool,
    /// Some observer reads the request's own fields: the head is copied,
    /// the wall clock read, the spans and ids kept.
    pub details: bool,
    /// This request asked for the proxy's timing (`l5d-timing`), or every
    /// request gets it: the spans are kept, and told to the backend.
    pub timing: bool,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub spans: Spans,
    /// The request head as the client sent it (the parsed head's offsets
    /// index it as they index the read buffer it came from).
    pub head: Vec<u8>,
    pub route: Option<Arc<Route>>,
    /// Which leaf of the route's bound tree the request went to.
    pub dest: Option<usize>,
    pub status: u16,
    pub error: Option<ErrorKind>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: Id,
    pub traceparent: Id,
    pub mirrored: bool,
    pub retried: bool,
    /// Up to how many bytes of each body observers want kept, for this
    /// request's route.
    pub keep: Option<usize>,
    /// How much of the connection's `heads` buffer is the response head
    /// the client got (with an error answer's body).
    pub response_head: usize,
}

impl Observed {
    pub(super) fn new(observers: &[Arc<dyn Observer>]) -> Observed {
        Observed {
            on: !observers.is_empty(),
            details: observers.iter().any(|o| o.wants_request()),
            timing: false,
            started: Instant::now(),
            started_wall: SystemTime::UNIX_EPOCH,
            spans: Spans::default(),
            head: Vec::new(),
            route: None,
            dest: None,
            status: 0,
            error: None,
            bytes_in: 0,
            bytes_out: 0,
            request_id: Id::default(),
            traceparent: Id::default(),
            mirrored: false,
            retried: false,
            keep: None,
            response_head: 0,
        }
    }

    /// Whether spans are taken for this exchange.
    pub(super) fn track(&self) -> bool {
        self.details || self.timing
    }

    /// A new exchange, whose head is `head`.
    pub(super) fn begin(&mut self, started: Instant, head: &[u8], timing: bool) {
        self.timing = timing;
        self.started = started;
        self.spans = Spans::default();
        self.head.clear();
        if self.details {
            self.started_wall = SystemTime::now();
            self.head.extend_from_slice(head);
        }
        self.route = None;
        self.dest = None;
        self.status = 0;
        self.error = None;
        self.bytes_in = head.len() as u64;
        self.bytes_out = 0;
        self.request_id.clear();
        self.traceparent.clear();
        self.mirrored = false;
        self.retried = false;
        self.keep = None;
        self.response_head = 0;
    }

    /// Time since the head was complete.
    pub(super) fn since(&self) -> Duration {
        self.started.elapsed()
    }

    /// The route is known: which observers want bodies of it, and how much.
    pub(super) fn routed(&mut self, route: &Arc<Route>, observers: &[Arc<dyn Observer>]) {
        if self.track() {
            self.spans.routed = Some(self.since());
        }
        if !self.on {
            return;
        }
        let via = Via::of(route.overridden, route.rule.is_some());
        self.keep = observers
            .iter()
            .filter_map(|o| o.keep_bodies(&route.name, via))
            .max();
        self.route = Some(route.clone());
    }

    /// The destination chosen: its place among the route's leaves.
    pub(super) fn picked(&mut self, route: &Route, dest: &Dest) {
        let Outcome::Bound(tree) = &route.outcome else {
            return;
        };
        let mut i = 0;
        let mut found = None;
        tree.for_each_leaf(&mut |leaf| {
            if std::ptr::eq(leaf, dest) {
                found = Some(i);
            }
            i += 1;
        });
        self.dest = found;
    }

    /// The record of the exchange, to each observer. `bodies` when some
    /// observer asked for them.
    pub(super) fn tell(
        &self,
        observers: &[Arc<dyn Observer>],
        peer: SocketAddr,
        req: &RequestHead,
        bodies: Option<Bodies<'_>>,
    ) {
        let head = &self.head[..];
        // A head cut short (the exchange failed before it was whole) has
        // no fields to read.
        let parsed = !head.is_empty() && req.head_len() <= head.len();
        let request = if parsed {
            Request {
                method: text(Some(req.method(head))),
                authority: text(req.authority(head)),
                target: text(Some(req.target(head))),
            }
        } else {
            Request::default()
        };
        self.tell_request(observers, peer, request, bodies);
    }

    /// The record of the exchange of `request`, to each observer.
    pub(super) fn tell_request(
        &self,
        observers: &[Arc<dyn Observer>],
        peer: SocketAddr,
        request: Request<'_>,
        bodies: Option<Bodies<'_>>,
    ) {
        let route = self.route.as_deref();
        let dest = match (route, self.dest) {
            (Some(route), Some(index)) => leaf(route, index),
            _ => None,
        };
        let record = Record {
            started: self.started,
            started_wall: self.started_wall,
            total: self.since(),
            spans: self.spans,
            peer,
            method: request.method,
            authority: request.authority,
            target: request.target,
            status: self.status,
            error: self.error,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            name: route.map_or("", |r| r.name.as_str()),
            dst: dest.map_or("", |d| d.id.as_str()),
            via: route.map_or(Via::Base, |r| Via::of(r.overridden, r.rule.is_some())),
            rule: route.and_then(|r| r.rule.as_deref()).unwrap_or(""),
            overridden: route.is_some_and(|r| r.overridden),
            stats: dest.map(|d| &d.stats),
            request_id: self.request_id.as_str(),
            mirrored: self.mirrored,
            retried: self.retried,
            traceparent: self.traceparent.as_str(),
            bodies,
        };
        for o in observers {
            o.exchange(&record);
        }
    }
}

/// What the record says of the request itself.
#[derive(Clone, Copy, Default)]
pub(super) struct Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub target: &'a str,
}

/// A head's field as text (empty when absent or not UTF-8).
fn text(b: Option<&[u8]>) -> &str {
    std::str::from_utf8(b.unwrap_or_default()).unwrap_or("")
}

/// The route's `index`th bound leaf.
fn leaf(route: &Route, index: usize) -> Option<&Dest> {
    let Outcome::Bound(tree) = &route.outcome else {
        return None;
    };
    let mut i = 0;
    let mut found = None;
    tree.for_each_leaf(&mut |leaf| {
        if i == index {
            found = Some(leaf);
        }
        i += 1;
    });
    found
}
