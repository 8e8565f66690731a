//! What to do with one exchange, decided from its heads alone: no I/O.
//!
//! The connection loop (`conn`) reads the heads, asks here, and then acts:
//! how sure a pooled connection must be to carry the request
//! ([`liveness`]), whether a request that met a dead pooled connection
//! may be sent again ([`may_resend`]), whether an interim response is
//! passed on ([`relays_interim`]), and, once the final response head is
//! in, how its body is relayed and what becomes of both connections
//! ([`after_response`]).
//!
//! Resending follows RFC 9110 §9.2.2: a proxy may repeat an idempotent
//! request by itself, not another. So a request that is not idempotent
//! (or whose body is still to come from the client, and could not be sent
//! twice anyway) is only sent on a pooled connection the kernel says is
//! open at that moment, and is sent again only when writing it failed:
//! an end the backend sent before the request arrived. One that closes
//! after taking the request, before any answer, gets a 502: the backend
//! may have acted on it.

use std::{cell::Cell, time::Duration};

use super::pool::Liveness;
use crate::http::{
    self, BodyLength, Framing, HeadError, Known, RequestHead, RequestKind, ResponseHead,
};

/// What the proxy needs to know of a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub kind: RequestKind,
    pub body: BodyLength,
    /// The client said `Connection: close`, is HTTP/1.0 without
    /// keep-alive, or framed its body so that the connection must close.
    pub wants_close: bool,
    pub idempotent: bool,
    pub expects_continue: bool,
}

impl RequestFacts {
    /// The facts of `head` (in `buf`), whose body framing is `framing`.
    pub fn of(head: &RequestHead, buf: &[u8], framing: Framing) -> RequestFacts {
        let minor = head.minor_version();
        RequestFacts {
            minor,
            kind: RequestKind::of(head, buf),
            body: framing.length,
            wants_close: http::wants_close(minor, head.get_all(buf, Known::Connection))
                || framing.close,
            idempotent: http::is_idempotent(head.method(buf)),
            expects_continue: http::expects_continue(head, buf),
        }
    }
}

/// What the proxy needs to know of a final response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFacts {
    pub status: u16,
    pub body: BodyLength,
    /// The backend said `Connection: close`, is HTTP/1.0 without
    /// keep-alive, or framed the body so that the connection must close.
    pub wants_close: bool,
}

impl ResponseFacts {
    /// The facts of `head` (in `buf`), the answer to a request of `kind`;
    /// an error is a framing the proxy cannot relay (502).
    pub fn of(
        kind: RequestKind,
        head: &ResponseHead,
        buf: &[u8],
    ) -> Result<ResponseFacts, HeadError> {
        let framing = http::response_body(kind, head, buf)?;
        Ok(ResponseFacts {
            status: head.status(),
            body: framing.length,
            wants_close: http::wants_close(
                head.minor_version(),
                head.get_all(buf, Known::Connection),
            ) || framing.close,
        })
    }
}

/// How sure checkout must be that a pooled connection is open: sure for a
/// request that may not be sent twice, through the runtime's readiness
/// for one that may.
pub fn liveness(req: &RequestFacts, whole: bool) -> Liveness {
    if req.idempotent && whole {
        Liveness::Cached
    } else {
        Liveness::Sure
    }
}

/// How sending a request on a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// Writing the request failed: the connection was closed before the
    /// request reached the backend.
    Write,
    /// The connection closed after the request went out and before the
    /// first byte of an answer.
    ClosedBeforeResponse,
}

/// One attempt at sending a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The connection came from the pool (a new one failing is the
    /// backend's answer, not a stale connection).
    pub reused: bool,
    /// The request, body included, is in the proxy's buffer and can be
    /// written again.
    pub whole: bool,
    /// An interim response was relayed already: the client has heard
    /// from this attempt.
    pub interim_relayed: bool,
}

/// Whether a request whose attempt failed so is sent again, once, on a
/// new connection.
pub fn may_resend(req: &RequestFacts, attempt: Attempt, failure: SendFailure) -> bool {
    attempt.reused
        && attempt.whole
        && !attempt.interim_relayed
        && match failure {
            SendFailure::Write => true,
            SendFailure::ClosedBeforeResponse => req.idempotent,
        }
}

/// Whether an interim (1xx, not 101) response is passed on to the client:
/// not to an HTTP/1.0 one, which cannot tell it from the final response
/// (RFC 9110 §15.2).
pub fn relays_interim(req: &RequestFacts) -> bool {
    req.minor > 0
}

/// How far the request body got by the time the final response came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// Sent whole (or there was none).
    Sent,
    /// Never asked for: the client waited for a 100 Continue that did not
    /// come, and may or may not send the body now.
    Held,
    /// The backend stopped taking it part way.
    Cut,
}

/// How the response body goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    /// As the backend framed it.
    AsFramed,
    /// A chunked body as bare data, ended by closing: for an HTTP/1.0
    /// client, which knows no chunked coding.
    Dechunked,
    /// Both connections become one byte tunnel (101, or 2xx to CONNECT).
    Tunnel,
}

/// What becomes of the client connection after the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientNext {
    KeepAlive,
    /// Close the write side; with `linger`, read and drop what the client
    /// still sends first (a body nobody took), so that the close does not
    /// reset the connection before the client has read the response.
    Close {
        linger: bool,
    },
    /// Nothing follows the tunnel: it ends the connection.
    AfterTunnel,
}

/// The `Connection` field the proxy writes in the response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionField {
    /// None (HTTP/1.1 keep-alive is the default; a tunnel keeps the
    /// backend's upgrade fields).
    Omit,
    Close,
    /// An HTTP/1.0 client keeps its connection only when told so.
    KeepAlive,
}

/// The decision once the final response head is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub relay: Relay,
    pub connection: ConnectionField,
    pub client: ClientNext,
    /// The backend connection goes back to the pool when the body has
    /// been relayed (and nothing stray follows it).
    pub pool_backend: bool,
}

impl Reply {
    /// The same reply while the proxy drains: a client that would keep its
    /// connection is told to close it, and it ends after this response.
    pub fn draining(self) -> Reply {
        match self.client {
            ClientNext::KeepAlive => Reply {
                connection: ConnectionField::Close,
                client: ClientNext::Close { linger: false },
                ..self
            },
            _ => self,
        }
    }
}

/// The decision for a final response `resp` to `req`, whose body went as
/// `body` says.
pub fn after_response(req: &RequestFacts, resp: &ResponseFacts, body: RequestBody) -> Reply {
    if resp.body == BodyLength::Tunnel {
        return Reply {
            relay: Relay::Tunnel,
            connection: ConnectionField::Omit,
            client: ClientNext::AfterTunnel,
            pool_backend: false,
        };
    }
    let relay = if req.minor == 0 && resp.body == BodyLength::Chunked {
        Relay::Dechunked
    } else {
        Relay::AsFramed
    };
    // A body not taken whole leaves the client connection out of step:
    // the client may still be sending it.
    let body_left = body != RequestBody::Sent;
    let close_client = req.wants_close
        || body_left
        || resp.body == BodyLength::UntilClose
        || relay == Relay::Dechunked;
    let (connection, client) = if close_client {
        let linger = body_left;
        (ConnectionField::Close, ClientNext::Close { linger })
    } else if req.minor == 0 {
        (ConnectionField::KeepAlive, ClientNext::KeepAlive)
    } else {
        (ConnectionField::Omit, ClientNext::KeepAlive)
    };
    // Pooled only when the exchange is over on both sides: a backend that
    // answered before taking the whole body may still read the rest, and
    // would take the next request's bytes for it.
    let pool_backend = !resp.wants_close && !body_left && resp.body != BodyLength::UntilClose;
    Reply {
        relay,
        connection,
        client,
        pool_backend,
    }
}

/// The minimum average rate of a request body: by `at_ms` on the
/// watchdog's clock, a body that started at `start_ms` must have moved
/// `min_rate` bytes a second for every second past a grace of one body
/// timeout. Without a rate (0) only the inactivity timeout applies.
pub struct Pace {
    start_ms: u64,
    grace_ms: u64,
    min_rate: u64,
    moved: Cell<u64>,
    /// When bytes last moved.
    last_ms: Cell<u64>,
    inactivity: Duration,
}

impl Pace {
    pub fn new(start_ms: u64, inactivity: Duration, min_rate: u64) -> Pace {
        Pace {
            start_ms,
            grace_ms: inactivity.as_millis() as u64,
            min_rate,
            moved: Cell::new(0),
            last_ms: Cell::new(start_ms),
            inactivity,
        }
    }

    /// The last moment the body may reach, in watchdog milliseconds, with
    /// what it moved so far.
    fn due_ms(&self) -> u64 {
        let earned = self.moved.get().saturating_mul(1000) / self.min_rate;
        self.start_ms + self.grace_ms + earned
    }

    /// Counts `n` bytes moved at `now_ms`; how long the body may now go
    /// on: the inactivity timeout, or less when the rate says so.
    pub fn moved(&self, n: usize, now_ms: u64) -> Duration {
        self.moved.set(self.moved.get() + n as u64);
        self.last_ms.set(now_ms);
        if self.min_rate == 0 {
            return self.inactivity;
        }
        let left = Duration::from_millis(self.due_ms().saturating_sub(now_ms));
        self.inactivity.min(left)
    }

    /// Whether, when the body's deadline passed at `now_ms`, it had fallen
    /// behind the rate while still moving (rather than stalled: nothing
    /// moved for the inactivity timeout).
    pub fn behind(&self, now_ms: u64) -> bool {
        let stalled = now_ms >= self.last_ms.get() + self.inactivity.as_millis() as u64;
        self.min_rate != 0 && now_ms >= self.due_ms() && !stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parsed::{request, response};

    fn req(text: &str) -> RequestFacts {
        let buf = text.as_bytes();
        let head = request(buf);
        let framing = http::request_body(&head, buf).unwrap();
        RequestFacts::of(&head, buf, framing)
    }

    fn resp(req: &RequestFacts, text: &str) -> ResponseFacts {
        let buf = text.as_bytes();
        ResponseFacts::of(req.kind, &response(buf), buf).unwrap()
    }

    fn decide(request: &str, response: &str, body: RequestBody) -> Reply {
        let r = req(request);
        after_response(&r, &resp(&r, response), body)
    }

    const GET_11: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const GET_10: &str = "GET / HTTP/1.0\r\n\r\n";
    const GET_10_KA: &str = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    const GET_11_CLOSE: &str = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    const HEAD_11: &str = "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
    const POST_11: &str = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    const POST_CHUNKED: &str = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    const CONNECT_11: &str = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
    const UPGRADE_11: &str =
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";

    const OK_LEN: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    const OK_CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    const OK_EOF: &str = "HTTP/1.1 200 OK\r\n\r\n";
    const OK_LEN_CLOSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";
    const OK_10_LEN: &str = "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n";
    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\n\r\n";
    const NOT_MODIFIED: &str = "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n";
    const SWITCHING: &str =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
    const TOO_LARGE_CLOSE: &str =
        "HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    use ClientNext::*;
    use ConnectionField as F;
    use Relay::*;
    use RequestBody::*;

    fn reply(relay: Relay, connection: F, client: ClientNext, pool_backend: bool) -> Reply {
        Reply {
            relay,
            connection,
            client,
            pool_backend,
        }
    }

    /// Every combination the connection loop meets, from raw heads through
    /// the framing rules to the decision.
    #[test]
    fn the_decision_after_the_response_head() {
        let keep = Close { linger: false };
        let cases: &[(&str, &str, RequestBody, Reply)] = &[
            // Keep-alive both ways.
            (
                GET_11,
                OK_LEN,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                GET_11,
                OK_CHUNKED,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                POST_11,
                OK_LEN,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                POST_CHUNKED,
                OK_LEN,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            // A body ended by the backend's close ends both connections.
            (GET_11, OK_EOF, Sent, reply(AsFramed, F::Close, keep, false)),
            // The client asks to close: the backend connection stays good.
            (
                GET_11_CLOSE,
                OK_LEN,
                Sent,
                reply(AsFramed, F::Close, keep, true),
            ),
            // The backend asks to close: the client connection stays.
            (
                GET_11,
                OK_LEN_CLOSE,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, false),
            ),
            // An HTTP/1.0 backend without keep-alive.
            (
                GET_11,
                OK_10_LEN,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, false),
            ),
            // HTTP/1.0 clients: closed unless they asked for keep-alive,
            // told so when kept; chunked is decoded and ends by closing.
            (GET_10, OK_LEN, Sent, reply(AsFramed, F::Close, keep, true)),
            (
                GET_10_KA,
                OK_LEN,
                Sent,
                reply(AsFramed, F::KeepAlive, KeepAlive, true),
            ),
            (
                GET_10_KA,
                OK_CHUNKED,
                Sent,
                reply(Dechunked, F::Close, keep, true),
            ),
            (GET_10, OK_EOF, Sent, reply(AsFramed, F::Close, keep, false)),
            // No body whatever the fields say: HEAD, 204, 304.
            (
                HEAD_11,
                OK_LEN,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                HEAD_11,
                OK_EOF,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                GET_11,
                NO_CONTENT,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            (
                GET_11,
                NOT_MODIFIED,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, true),
            ),
            // Tunnels: 2xx to CONNECT, 101 to an upgrade.
            (
                CONNECT_11,
                OK_LEN,
                Sent,
                reply(Tunnel, F::Omit, AfterTunnel, false),
            ),
            (
                UPGRADE_11,
                SWITCHING,
                Sent,
                reply(Tunnel, F::Omit, AfterTunnel, false),
            ),
            // CONNECT refused: an ordinary response.
            (
                CONNECT_11,
                TOO_LARGE_CLOSE,
                Sent,
                reply(AsFramed, F::Omit, KeepAlive, false),
            ),
            // A final answer before the body was asked for (Expect: 100-continue
            // never answered) or taken whole: the client may still be sending
            // it, so neither connection is kept, and the client is drained.
            (
                POST_11,
                TOO_LARGE_CLOSE,
                Held,
                reply(AsFramed, F::Close, Close { linger: true }, false),
            ),
            (
                POST_11,
                OK_LEN,
                Held,
                reply(AsFramed, F::Close, Close { linger: true }, false),
            ),
            (
                POST_CHUNKED,
                OK_LEN,
                Cut,
                reply(AsFramed, F::Close, Close { linger: true }, false),
            ),
        ];
        for (i, (request, response, body, want)) in cases.iter().enumerate() {
            let got = decide(request, response, *body);
            assert_eq!(
                &got, want,
                "case {i}: {request:?} answered {response:?} ({body:?})"
            );
        }
    }

    #[test]
    fn a_101_without_an_upgrade_asked_for_is_refused() {
        let r = req(GET_11);
        let buf = SWITCHING.as_bytes();
        assert!(ResponseFacts::of(r.kind, &response(buf), buf).is_err());
    }

    #[test]
    fn interim_responses_reach_http_1_1_clients_only() {
        assert!(relays_interim(&req(GET_11)));
        assert!(!relays_interim(&req(GET_10_KA)));
    }

    #[test]
    fn only_a_request_that_may_be_sent_twice_trusts_the_runtime_s_readiness() {
        assert_eq!(liveness(&req(GET_11), true), Liveness::Cached);
        assert_eq!(liveness(&req(HEAD_11), true), Liveness::Cached);
        // Not idempotent, or its body still with the client.
        assert_eq!(liveness(&req(POST_11), true), Liveness::Sure);
        assert_eq!(liveness(&req(GET_11), false), Liveness::Sure);
        let put = req("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n");
        assert!(put.idempotent);
        assert_eq!(liveness(&put, true), Liveness::Cached);
    }

    #[test]
    fn a_request_is_sent_again_only_when_that_is_safe() {
        let (get, post) = (req(GET_11), req(POST_11));
        let pooled = Attempt {
            reused: true,
            whole: true,
            interim_relayed: false,
        };
        use SendFailure::*;
        // A failed write never reached the backend: any whole request.
        assert!(may_resend(&get, pooled, Write));
        assert!(may_resend(&post, pooled, Write));
        // Closed after the request went out: idempotent ones only.
        assert!(may_resend(&get, pooled, ClosedBeforeResponse));
        assert!(!may_resend(&post, pooled, ClosedBeforeResponse));
        // A new connection's failure is the backend's answer.
        let fresh = Attempt {
            reused: false,
            ..pooled
        };
        assert!(!may_resend(&get, fresh, Write));
        assert!(!may_resend(&get, fresh, ClosedBeforeResponse));
        // A body still streaming from the client cannot be written twice.
        let streaming = Attempt {
            whole: false,
            ..pooled
        };
        assert!(!may_resend(&get, streaming, Write));
        // The client heard a 1xx from this attempt already.
        let heard = Attempt {
            interim_relayed: true,
            ..pooled
        };
        assert!(!may_resend(&get, heard, ClosedBeforeResponse));
    }

    #[test]
    fn facts_come_from_the_heads() {
        let r = req(
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 9\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.minor, 1);
        assert_eq!(r.body, BodyLength::Length(9));
        assert!(r.wants_close && !r.idempotent && r.expects_continue);
        // Transfer-Encoding beside Content-Length: legal, but closes.
        let smuggle = req(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(smuggle.body, BodyLength::Chunked);
        assert!(smuggle.wants_close);
    }

    #[test]
    fn a_trickled_body_falls_behind_the_rate_after_the_grace() {
        // Grace 1 s, 1,000 bytes/s: a byte every 300 ms earns 1 ms each.
        let pace = Pace::new(0, Duration::from_secs(1), 1_000);
        let mut now = 0;
        let mut cut_at = None;
        for _ in 0..20 {
            now += 300;
            let left = pace.moved(1, now);
            if left.is_zero() || pace.behind(now) {
                cut_at = Some(now);
                break;
            }
        }
        assert_eq!(cut_at, Some(1_200), "behind once past 1 s + 4 ms earned");
        // A body at the rate is never behind: its deadline moves with it.
        let pace = Pace::new(0, Duration::from_secs(1), 1_000);
        for t in (100..10_000).step_by(100) {
            let left = pace.moved(100, t);
            assert!(
                !pace.behind(t) && left >= Duration::from_millis(900),
                "{t}: {left:?}"
            );
        }
    }

    #[test]
    fn without_a_rate_only_inactivity_counts() {
        let pace = Pace::new(0, Duration::from_secs(1), 0);
        assert_eq!(pace.moved(1, 1_000_000), Duration::from_secs(1));
        assert!(!pace.behind(u64::MAX / 2));
    }
}
