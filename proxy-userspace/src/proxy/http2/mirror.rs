//! Shadowing for requests that came as HTTP/2. The mirrors of a stream's
//! route choose as they do for HTTP/1.1 (`policy::mirror`: the share,
//! sticky keys, writes); the copy's head is the request's as it goes on
//! (the same fields dropped) with the marker, `l5d-dst-service`,
//! `l5d-ctx-dtab` and `Via`; its body is kept as it streams to the live
//! version (a [`Tee`] up to `shadow.max_body_bytes`). When the live answer
//! has ended whole, each copy goes to its target's lane (`shadow`), which
//! bounds, times and counts it as any copy, and is sent as the live
//! request went out: HTTP/2 (gRPC, `http2.h2_names`) or translated to
//! HTTP/1.1, over the worker's [`Upstreams`](super::Upstreams). Its answer
//! is read and thrown away: it is not compared (the diff takes HTTP/1.1
//! answers).

use std::{cell::RefCell, net::SocketAddr, rc::Rc, sync::Arc};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request, Uri, Version,
    header::{self, HeaderValue},
    http::{request::Parts, uri},
};
use rand::{Rng, rngs::SmallRng};

use super::{body::Body, to_http1};
use crate::{
    policy::mirror::{HostSettings, Verdict},
    proxy::{
        Shared, Worker,
        budget::Pressure,
        shadow::{self, Carried, Carry, Job, Tee},
    },
    route::Route,
};

/// A stream's copies while its live exchange runs.
pub(super) struct Copies {
    route: Arc<Route>,
    /// The mirrors that take a copy, each with the copy's authority when
    /// the mirror sets one (`host:`).
    chosen: Vec<(usize, Option<uri::Authority>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    out_h2: bool,
    /// The request body, kept as it passes to the live version.
    pub body: Rc<RefCell<Tee>>,
}

/// Which of `route`'s mirrors take a copy of the request whose head (its
/// own fields the proxy drops already dropped) is `parts`; `None` when
/// none does. A request that is itself a copy (it carries the marker
/// header) is not copied again, nor is a CONNECT.
pub(super) fn choose(
    shared: &Shared,
    rng: &mut SmallRng,
    route: &Arc<Route>,
    parts: &Parts,
    out_h2: bool,
) -> Option<Box<Copies>> {
    let cfg = &shared.cfg.shadow;
    if parts.method == Method::CONNECT || parts.headers.contains_key(cfg.marker_header.as_str()) {
        return None;
    }
    let method = parts.method.as_str().as_bytes();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(header::HOST).map(HeaderValue::as_bytes));
    let mut chosen = Vec::new();
    let mut host = Vec::new();
    for (index, bound) in route.mirrors.iter().enumerate() {
        let sticky = match &bound.mirror.sticky_header {
            Some(h) => parts.headers.get(h.as_str()).map(HeaderValue::as_bytes),
            None => None,
        };
        match bound.mirror.takes(method, sticky, rng.random()) {
            Verdict::Copy => {}
            Verdict::Skip => continue,
            Verdict::Write => {
                bound.stats.writes_skipped.inc();
                continue;
            }
        }
        // A suffix needs an authority to add it to; a fixed one is set anyway.
        let new = match (authority, &bound.mirror.host) {
            (None, HostSettings::Suffix) => None,
            _ => bound
                .mirror
                .host(authority.unwrap_or_default(), &mut host)
                .and_then(|h| uri::Authority::try_from(h).ok()),
        };
        chosen.push((index, new));
    }
    if chosen.is_empty() {
        return None;
    }
    let mut headers = parts.headers.clone();
    let fields = [
        (cfg.marker_header.as_str(), Some("1")),
        ("l5d-dst-service", Some(&*route.name)),
        (
            "l5d-ctx-dtab",
            Some(&*route.local_dtab).filter(|d| !d.is_empty()),
        ),
        ("via", Some("2 sidetrack")),
    ];
    for (name, value) in fields {
        if let (Ok(name), Some(Ok(value))) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            value.map(HeaderValue::from_str),
        ) {
            headers.append(name, value);
        }
    }
    let mut body = Tee::default();
    body.start(cfg.max_body);
    Some(Box::new(Copies {
        route: route.clone(),
        chosen,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers,
        out_h2,
        body: Rc::new(RefCell::new(body)),
    }))
}

impl Copies {
    /// After the live exchange ended whole: each copy to its target's
    /// lane, or counted as not made (its body was too large, or did not
    /// arrive whole; the proxy is near its memory budget).
    pub(super) fn dispatch(self: Box<Self>, worker: &Rc<Worker>) {
        let tee = self.body.borrow();
        // The tee may have kept more, for capture.
        let max_body = worker.shared.cfg.shadow.max_body;
        let body = tee
            .kept()
            .filter(|b| b.len() <= max_body)
            .map(Bytes::copy_from_slice);
        let too_large = tee.overflowed() || tee.kept().is_some_and(|b| b.len() > max_body);
        for (index, authority) in &self.chosen {
            let bound = &self.route.mirrors[*index];
            let Some(body) = &body else {
                if too_large {
                    bound.stats.body_too_large.inc();
                } else {
                    bound.stats.failed.inc();
                }
                continue;
            };
            if worker.shared.budget.pressure() != Pressure::Normal {
                bound.stats.dropped.inc();
                continue;
            }
            let mut copy = H2Copy {
                method: self.method.clone(),
                uri: self.uri.clone(),
                headers: self.headers.clone(),
                body: body.clone(),
                out_h2: self.out_h2,
            };
            if let Some(a) = authority {
                copy.set_authority(a.clone());
            }
            let job = Job::carried(self.route.clone(), *index, Box::new(copy));
            shadow::submit(worker, job);
        }
    }
}

/// One copy of an HTTP/2 request, ready to go.
struct H2Copy {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    out_h2: bool,
}

impl H2Copy {
    /// The mirror's `host:`: the copy's `:authority`, and its Host when it
    /// has one.
    fn set_authority(&mut self, a: uri::Authority) {
        if let Ok(h) = HeaderValue::from_str(a.as_str())
            && self.headers.contains_key(header::HOST)
        {
            self.headers.insert(header::HOST, h);
        }
        let mut parts = std::mem::take(&mut self.uri).into_parts();
        parts.authority = Some(a);
        if parts.scheme.is_none() {
            parts.scheme = Some(uri::Scheme::HTTP);
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
        }
        self.uri = Uri::from_parts(parts).unwrap_or_default();
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::new(Body::Full(Some(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.out_h2 {
            *req.version_mut() = Version::HTTP_2;
            return req;
        }
        let (mut parts, body) = req.into_parts();
        to_http1(&mut parts);
        Request::from_parts(parts, body)
    }
}

impl Carry for H2Copy {
    fn carry<'a>(&'a self, worker: &'a Rc<Worker>, addr: SocketAddr) -> Carried<'a> {
        Box::pin(async move {
            let cfg = &worker.shared.cfg;
            let upstreams = &worker.upstreams;
            let watchdog = &*worker.watchdog;
            let (response, h1) = if self.out_h2 {
                let (mut sender, _) = upstreams
                    .h2(addr, &cfg.http2, &cfg.pool, watchdog)
                    .await
                    .map_err(|e| e.to_string())?;
                let response = sender
                    .send_request(self.request())
                    .await
                    .map_err(|e| e.to_string())?;
                (response, None)
            } else {
                let (mut sender, _) = upstreams
                    .h1(addr, &cfg.pool, watchdog)
                    .await
                    .map_err(|e| e.to_string())?;
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender
                    .send_request(self.request())
                    .await
                    .map_err(|e| e.to_string())?;
                (response, Some(sender))
            };
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            if let Some(sender) = h1 {
                upstreams.put_h1(addr, sender, &cfg.pool);
            }
            Ok((status, bytes))
        })
    }

    fn size(&self) -> usize {
        self.body.len() + self.headers.len() * 64
    }
}
