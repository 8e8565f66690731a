//! The bodies the HTTP/2 path hands hyper: nothing, a few bytes of the
//! proxy's own, or a peer's body relayed frame by frame.
//!
//! A relayed body pulls a frame from one side only when the other side
//! takes it, so HTTP/2 flow control holds end to end: a reader that stops
//! stops the writer once the windows between are full, and the proxy
//! holds at most a window per stream. Trailers pass as frames. A relayed
//! response tells its [`End`] how it ended (whole, the backend failed, or
//! dropped: the client went away) when it is dropped, which is when hyper
//! is done with it.

use std::{
    cell::{Cell, RefCell},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::{HeaderMap, body::Incoming};

use super::{End, Ending, grpc};
use crate::proxy::shadow::Tee;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    /// The proxy's own (an error's text).
    Full(Option<Bytes>),
    Relay(Relay),
}

/// A peer's body on its way to the other side.
pub struct Relay {
    inner: Incoming,
    /// Data bytes relayed so far.
    moved: u64,
    /// The same count, for whoever reports it once this body is gone
    /// (only when someone does: observers).
    shared: Option<Rc<Cell<u64>>>,
    /// A gRPC response: a backend that fails mid-body ends the call with
    /// trailers (UNAVAILABLE) rather than a reset, so the client sees a
    /// gRPC status.
    grpc: bool,
    done: bool,
    failed: bool,
    /// Boxed: a body is moved several times on its way through hyper, and
    /// what its end settles is most of its size.
    end: Option<Box<End>>,
    /// Where the body is kept as it passes (for copies), if anywhere.
    tee: Option<Rc<RefCell<Tee>>>,
}

impl Relay {
    /// `inner` relayed, counting also into `shared` when given; `end`
    /// told when it is done.
    pub fn new(
        inner: Incoming,
        shared: Option<Rc<Cell<u64>>>,
        grpc: bool,
        end: Option<Box<End>>,
    ) -> Relay {
        Relay {
            inner,
            moved: 0,
            shared,
            grpc,
            done: false,
            failed: false,
            end,
            tee: None,
        }
    }

    /// Keeps the body in `tee` as it passes (up to the tee's limit).
    pub fn keeping(mut self, tee: Rc<RefCell<Tee>>) -> Relay {
        {
            let mut t = tee.borrow_mut();
            match self.inner.size_hint().exact() {
                Some(0) => t.finish(),
                Some(n) if n > t.limit() as u64 => t.give_up(),
                _ if self.inner.is_end_stream() => t.finish(),
                _ => {}
            }
        }
        self.tee = Some(tee);
        self
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.moved += n;
                    if let Some(shared) = &self.shared {
                        shared.set(shared.get() + n);
                    }
                }
                if let Some(tee) = &self.tee {
                    let mut tee = tee.borrow_mut();
                    if let Some(data) = frame.data_ref() {
                        tee.take(data);
                    }
                    // hyper stops asking once the body says it has ended.
                    if frame.is_trailers() || self.inner.is_end_stream() {
                        tee.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.done = true;
                if let Some(tee) = &self.tee {
                    tee.borrow_mut().finish();
                }
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                self.failed = true;
                if self.grpc {
                    self.done = true;
                    let why = format!("the backend's stream failed: {e}");
                    Poll::Ready(Some(Ok(Frame::trailers(status_trailers(
                        grpc::Code::Unavailable,
                        &why,
                    )))))
                } else {
                    Poll::Ready(Some(Err(e.into())))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.failed && self.inner.is_end_stream())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let how = if self.failed {
            Ending::BackendFailed
        } else if self.done || self.inner.is_end_stream() {
            Ending::Whole
        } else {
            Ending::Dropped
        };
        if let (Ending::Whole, Some(tee)) = (how, &self.tee) {
            tee.borrow_mut().finish();
        }
        if let Some(end) = self.end.take() {
            end.finish(how, self.moved);
        }
    }
}

/// The trailers (or trailers-only headers) of a gRPC status.
pub fn status_trailers(code: grpc::Code, message: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert(
        "grpc-status",
        hyper::header::HeaderValue::from_static(code.text()),
    );
    h.insert("grpc-message", grpc::message(message));
    h
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Relay(r) => r.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Relay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Relay(r) if r.failed || r.done => SizeHint::default(),
            Body::Relay(r) => r.inner.size_hint(),
        }
    }
}
