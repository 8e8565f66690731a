//! What replay sends, decided before any socket: which captured entries
//! are replayed (time window, names, methods, writes), the request each
//! becomes, and when it is due. Pure: tested with tables of entries.

use std::time::Duration;

use crate::{
    observe::capture::{
        REPLAY_HEADER, covers,
        har::{Entry, REDACTED},
    },
    policy::signing::SIGNATURE_HEADER,
};

/// Which entries are replayed.
#[derive(Clone, Debug, Default)]
pub struct Select {
    /// Unix milliseconds: entries started before are left out.
    pub since_ms: Option<u64>,
    /// Unix milliseconds: entries started after are left out.
    pub until_ms: Option<u64>,
    /// Name prefixes (`/svc/world`); empty: every name.
    pub names: Vec<String>,
    /// Methods (any case); empty: every method.
    pub methods: Vec<String>,
    pub allow_writes: bool,
}

/// Why an entry is not replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Outside the window, or another name or method.
    Filtered,
    /// A method that may change state, without `--allow-writes`.
    Write,
    /// The request's body was longer than capture's limit: it cannot be
    /// sent as it was.
    BodyNotKept,
    /// The client got no response (the proxy closed the connection): there
    /// is nothing to compare with.
    NoAnswer,
}

impl Select {
    pub fn decide(&self, e: &Entry) -> Result<(), Skip> {
        let t = e.sidetrack.started_unix_ms;
        let in_window =
            self.since_ms.is_none_or(|s| t >= s) && self.until_ms.is_none_or(|u| t <= u);
        let named = self.names.is_empty()
            || self
                .names
                .iter()
                .any(|n| covers(n.trim_end_matches('/'), &e.sidetrack.name));
        let method = self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&e.request.method));
        if !(in_window && named && method) {
            return Err(Skip::Filtered);
        }
        if !self.allow_writes && !is_safe(&e.request.method) {
            return Err(Skip::Write);
        }
        if !e.sidetrack.request_body_kept {
            return Err(Skip::BodyNotKept);
        }
        if e.response.status == 0 {
            return Err(Skip::NoAnswer);
        }
        Ok(())
    }
}

/// The methods replayed without `--allow-writes`: the safe ones (RFC 9110
/// §9.2.1). PUT and DELETE are idempotent but still writes: sent again to
/// a version that shares a database, they change it.
pub fn is_safe(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
}

/// Where the requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Through a running proxy, each with an `l5d-dtab` override that sends
    /// its logical name to `to` (a path like `/srv/world-v2`, or a whole
    /// dtab when it has `=>`).
    Proxy { to: String },
    /// Straight to an address, as captured.
    Direct,
}

/// The override for a captured name: `NAME => TO`, or `to` itself when
/// it is already a dtab.
pub fn override_dtab(name: &str, to: &str) -> String {
    if to.contains("=>") {
        to.trim().to_owned()
    } else {
        format!("{name} => {}", to.trim())
    }
}

/// Request headers never sent again: framing (the body is sent with its
/// length), hop-by-hop ones, and through a proxy the captured overrides
/// (the replay's own replaces them).
const FRAMING: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
];
const OVERRIDES: [&str; 3] = ["l5d-dtab", "l5d-ctx-dtab", SIGNATURE_HEADER];

/// The value of [`REPLAY_HEADER`] on replayed requests.
const REPLAY_MARK: &str = "1";

/// The request to send for `e`: its method, target and headers as
/// captured, less redacted headers (their values were not kept) and the
/// ones above, with its body, a length, `Connection: close`, the replay
/// mark (capture leaves marked requests out) and, through a proxy, the
/// override.
pub fn request(e: &Entry, via: &Via, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", e.request.method, e.target()).into_bytes();
    let mut host = false;
    for h in &e.request.headers {
        let name = h.name.as_str();
        let dropped = h.value == REDACTED
            || name.eq_ignore_ascii_case(REPLAY_HEADER)
            || FRAMING.iter().any(|f| f.eq_ignore_ascii_case(name))
            || (matches!(via, Via::Proxy { .. })
                && OVERRIDES.iter().any(|f| f.eq_ignore_ascii_case(name)));
        if dropped || name.contains(['\r', '\n']) || h.value.contains(['\r', '\n']) {
            continue;
        }
        host |= name.eq_ignore_ascii_case("host");
        out.extend_from_slice(format!("{name}: {}\r\n", h.value).as_bytes());
    }
    if !host {
        let authority = e
            .request
            .url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    if let Via::Proxy { to } = via {
        out.extend_from_slice(
            format!("l5d-dtab: {}\r\n", override_dtab(&e.sidetrack.name, to)).as_bytes(),
        );
    }
    out.extend_from_slice(format!("{REPLAY_HEADER}: {REPLAY_MARK}\r\n").as_bytes());
    if !body.is_empty() || !is_safe(&e.request.method) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// When each of `starts` (unix ms, in order) is due, from the replay's
/// start: as far apart as they were, or `rate` a second.
pub fn schedule(starts: &[u64], rate: Option<f64>) -> Vec<Duration> {
    match rate {
        Some(rate) => (0..starts.len())
            .map(|i| Duration::from_secs_f64(i as f64 / rate))
            .collect(),
        None => {
            let first = starts.first().copied().unwrap_or(0);
            starts
                .iter()
                .map(|t| Duration::from_millis(t.saturating_sub(first)))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::capture::har::{
        Cache, Content, NameValue, PostData, Request, Response, Sidetrack, SpanTimes, Timings,
    };

    fn nv(name: &str, value: &str) -> NameValue {
        NameValue {
            name: name.into(),
            value: value.into(),
        }
    }

    fn entry(method: &str, name: &str, at: u64) -> Entry {
        Entry {
            started_date_time: String::new(),
            time: 1.0,
            request: Request {
                method: method.into(),
                url: "http://world/users/7?x=1".into(),
                http_version: "HTTP/1.1".into(),
                cookies: vec![],
                headers: vec![
                    nv("Host", "world"),
                    nv("Authorization", REDACTED),
                    nv("Accept", "application/json"),
                    nv("Content-Length", "2"),
                    nv("l5d-dtab", "/svc/world => /srv/world-v3"),
                    nv("Connection", "keep-alive"),
                ],
                query_string: vec![],
                post_data: None,
                headers_size: 10,
                body_size: 0,
            },
            response: Response {
                status: 200,
                status_text: "OK".into(),
                http_version: "HTTP/1.1".into(),
                cookies: vec![],
                headers: vec![],
                content: Content {
                    size: 0,
                    mime_type: String::new(),
                    text: Some(String::new()),
                    encoding: None,
                },
                redirect_url: String::new(),
                headers_size: 10,
                body_size: 0,
            },
            cache: Cache {},
            timings: Timings {
                blocked: 0.0,
                dns: -1.0,
                connect: 0.0,
                send: 0.0,
                wait: 0.0,
                receive: 0.0,
                ssl: -1.0,
            },
            sidetrack: Sidetrack {
                started_unix_ms: at,
                name: name.into(),
                dst: "/#/io.l5d.fs/world".into(),
                via: "base".into(),
                rule: None,
                request_id: "r".into(),
                peer: "127.0.0.1:1".into(),
                error: None,
                bytes_in: 0,
                bytes_out: 0,
                mirrored: false,
                retried: false,
                traceparent: String::new(),
                spans: SpanTimes::default(),
                request_body_kept: true,
                response_body_kept: true,
            },
        }
    }

    #[test]
    fn entries_are_chosen_by_window_name_and_method_and_writes_need_leave() {
        let select = Select {
            since_ms: Some(100),
            until_ms: Some(200),
            names: vec!["/svc/world/".into()],
            methods: vec!["get".into(), "POST".into()],
            allow_writes: false,
        };
        let mut not_kept = entry("GET", "/svc/world", 150);
        not_kept.sidetrack.request_body_kept = false;
        let mut unanswered = entry("GET", "/svc/world", 150);
        unanswered.response.status = 0;
        for (e, want) in [
            (entry("GET", "/svc/world", 150), Ok(())),
            (entry("GET", "/svc/world", 99), Err(Skip::Filtered)),
            (entry("GET", "/svc/world", 201), Err(Skip::Filtered)),
            (entry("GET", "/svc/worldly", 150), Err(Skip::Filtered)),
            (entry("DELETE", "/svc/world", 150), Err(Skip::Filtered)),
            (entry("POST", "/svc/world", 150), Err(Skip::Write)),
            (not_kept, Err(Skip::BodyNotKept)),
            (unanswered, Err(Skip::NoAnswer)),
        ] {
            assert_eq!(
                select.decide(&e),
                want,
                "{} {}",
                e.request.method,
                e.sidetrack.name
            );
        }
        let writes = Select {
            allow_writes: true,
            ..Select::default()
        };
        for m in ["POST", "PUT", "PATCH", "DELETE", "GET"] {
            assert_eq!(writes.decide(&entry(m, "/svc/x", 1)), Ok(()), "{m}");
        }
        for m in ["PUT", "DELETE", "PATCH"] {
            assert_eq!(
                Select::default().decide(&entry(m, "/svc/x", 1)),
                Err(Skip::Write)
            );
        }
    }

    #[test]
    fn through_a_proxy_the_request_carries_the_override_and_not_the_redacted() {
        let mut e = entry("POST", "/svc/world", 1);
        e.request.post_data = Some(PostData {
            mime_type: "text/plain".into(),
            text: "hi".into(),
            encoding: None,
        });
        let via = Via::Proxy {
            to: "/srv/world-v2".into(),
        };
        let text = String::from_utf8(request(&e, &via, b"hi")).unwrap();
        assert_eq!(
            text,
            "POST /users/7?x=1 HTTP/1.1\r\nHost: world\r\nAccept: application/json\r\n\
             l5d-dtab: /svc/world => /srv/world-v2\r\nl5d-replay: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        // Straight to an address: as captured (its own override too).
        let text =
            String::from_utf8(request(&entry("GET", "/svc/world", 1), &Via::Direct, b"")).unwrap();
        assert_eq!(
            text,
            "GET /users/7?x=1 HTTP/1.1\r\nHost: world\r\nAccept: application/json\r\n\
             l5d-dtab: /svc/world => /srv/world-v3\r\nl5d-replay: 1\r\nConnection: close\r\n\r\n"
        );
        // A missing Host comes from the URL.
        let mut e = entry("GET", "/svc/world", 1);
        e.request.headers.retain(|h| h.name != "Host");
        let text = String::from_utf8(request(&e, &Via::Direct, b"")).unwrap();
        assert!(text.contains("\r\nHost: world\r\n"), "{text}");
    }

    #[test]
    fn overrides_name_the_captured_name_unless_given_whole() {
        assert_eq!(
            override_dtab("/svc/world", "/srv/world-v2"),
            "/svc/world => /srv/world-v2"
        );
        assert_eq!(
            override_dtab("/svc/world", "/host/world => /srv/v2"),
            "/host/world => /srv/v2"
        );
    }

    #[test]
    fn requests_are_due_as_captured_or_at_the_rate() {
        let starts = [1_000, 1_250, 1_250, 3_000];
        assert_eq!(
            schedule(&starts, None),
            [0, 250, 250, 2_000].map(Duration::from_millis)
        );
        assert_eq!(
            schedule(&starts, Some(4.0)),
            [0, 250, 500, 750].map(Duration::from_millis)
        );
    }
}
