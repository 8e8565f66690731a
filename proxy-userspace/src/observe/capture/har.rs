//! One captured exchange as a HAR 1.2 entry (an element of HAR's
//! `log.entries`), with the proxy's own fields under `_sidetrack` (HAR's
//! rule for custom fields: a leading underscore). The writer thread turns
//! an [`Exchange`] into an [`Entry`] and `sidetrack replay` reads the same
//! type back, so the format has one definition.
//!
//! Pure: no I/O. Heads are the bytes the client and the backend sent,
//! already checked by the proxy's parser; they are split into lines here
//! without a second validation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::Exchange;
use crate::observe::exchange::unframed;

/// What a redacted header's value becomes.
pub const REDACTED: &str = "<redacted>";

/// Headers always redacted: credentials and session cookies.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// The header names whose values are not written (lowercase).
#[derive(Clone, Debug)]
pub struct Redact(Vec<String>);

impl Redact {
    /// The credentials headers and `extra`.
    pub fn new(extra: &[String]) -> Redact {
        let mut names: Vec<String> = ALWAYS_REDACTED.iter().map(|h| (*h).to_owned()).collect();
        names.extend(extra.iter().map(|h| h.trim().to_ascii_lowercase()));
        names.sort();
        names.dedup();
        Redact(names)
    }

    pub fn covers(&self, name: &str) -> bool {
        self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When the request head was complete (RFC 3339, UTC, milliseconds).
    pub started_date_time: String,
    /// Total milliseconds, request head to the response's last byte.
    pub time: f64,
    pub request: Request,
    pub response: Response,
    pub cache: Cache,
    pub timings: Timings,
    /// The endpoint the request went to (`ip:port` of the backend is not
    /// known to observers: the bound destination's id is in `_sidetrack`).
    #[serde(rename = "_sidetrack")]
    pub sidetrack: Sidetrack,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cache {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub method: String,
    /// `http://AUTHORITY/TARGET`.
    pub url: String,
    pub http_version: String,
    /// Cookies are not parsed out (the `Cookie` header is redacted).
    pub cookies: Vec<NameValue>,
    pub headers: Vec<NameValue>,
    /// The query's pairs as sent (not percent-decoded).
    pub query_string: Vec<NameValue>,
    /// The body when there is one and it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_data: Option<PostData>,
    /// The head's bytes, request line and blank line included; -1 unknown.
    pub headers_size: i64,
    /// The body's bytes as received; -1 unknown.
    pub body_size: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostData {
    pub mime_type: String,
    pub text: String,
    /// `base64` when the body is not UTF-8 (HAR 1.2 has `encoding` on a
    /// response's content only; this is its counterpart).
    #[serde(rename = "_encoding", default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// 0 when the client got no response (the connection was closed).
    pub status: u16,
    pub status_text: String,
    pub http_version: String,
    pub cookies: Vec<NameValue>,
    pub headers: Vec<NameValue>,
    pub content: Content,
    #[serde(rename = "redirectURL")]
    pub redirect_url: String,
    pub headers_size: i64,
    pub body_size: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// The body's length (after any chunked coding is removed); -1
    /// unknown.
    pub size: i64,
    pub mime_type: String,
    /// The body when it was kept (`None`: longer than the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `base64` when the body is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

/// HAR's phases in milliseconds, -1 for those that do not apply. From the
/// proxy's spans: `blocked` is identifying and routing, `connect` waiting
/// for a backend connection (pooled or new), `wait` until the response's
/// first byte, `receive` the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub blocked: f64,
    pub dns: f64,
    pub connect: f64,
    pub send: f64,
    pub wait: f64,
    pub receive: f64,
    pub ssl: f64,
}

/// The proxy's own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidetrack {
    /// `startedDateTime` as unix milliseconds (what replay filters on).
    pub started_unix_ms: u64,
    /// The logical name (`/svc/world`).
    pub name: String,
    /// The bound destination's id (the version it went to).
    pub dst: String,
    /// `base`, `rule` or `override`.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub request_id: String,
    /// The client's address.
    pub peer: String,
    /// What went wrong when the proxy answered itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub mirrored: bool,
    pub retried: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    /// The proxy's spans, milliseconds from the complete request head.
    pub spans: SpanTimes,
    /// Whether the request's body is here whole (false: it was longer than
    /// the limit, and replay cannot send it).
    pub request_body_kept: bool,
    pub response_body_kept: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identified: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<f64>,
}

impl Entry {
    /// The entry for one exchange, headers in `redact` replaced.
    pub fn of(x: &Exchange, redact: &Redact) -> Entry {
        let started_unix_ms = x
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (req_line, req_headers) = split_head(&x.request_head);
        let (resp_line, resp_headers) = split_head(&x.response_head);
        let req_version = req_line
            .rsplit(' ')
            .next()
            .filter(|v| v.starts_with("HTTP/"))
            .unwrap_or("HTTP/1.1");
        let mut resp_words = resp_line.splitn(3, ' ');
        let resp_version = resp_words.next().filter(|v| v.starts_with("HTTP/"));
        let status_text = resp_words.nth(1).unwrap_or("").to_owned();

        let request_body = x
            .request_body
            .as_deref()
            .map(|b| dechunked(&req_headers, b));
        let response_body = x
            .response_body
            .as_deref()
            .map(|b| dechunked(&resp_headers, b));
        let req_head_len = x.request_head.len() as i64;
        let resp_head_len = x.response_head.len() as i64;
        // HTTP/2's byte counts are of bodies alone (its heads are
        // HPACK-coded frames, recorded here in HTTP/1.1's text form).
        let heads_counted = req_version != "HTTP/2";
        let known = |head: i64, total: u64| {
            if head <= 0 {
                -1
            } else if heads_counted {
                (total as i64 - head).max(0)
            } else {
                total as i64
            }
        };

        let post_data = request_body.as_ref().filter(|b| !b.is_empty()).map(|b| {
            let mime_type = header(&req_headers, "content-type");
            let (text, encoding) = body_text(b, mime_type);
            PostData {
                mime_type: mime_type.to_owned(),
                text,
                encoding,
            }
        });
        let (text, encoding) = match &response_body {
            Some(b) => {
                let (t, e) = body_text(b, header(&resp_headers, "content-type"));
                (Some(t), e)
            }
            None => (None, None),
        };
        let resp_body_size = known(resp_head_len, x.bytes_out);
        let content = Content {
            size: response_body
                .as_ref()
                .map_or(resp_body_size, |b| b.len() as i64),
            mime_type: header(&resp_headers, "content-type").to_owned(),
            text,
            encoding,
        };

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let span = |d: Option<Duration>| d.map(ms);
        let s = &x.spans;
        let between = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => ms(b.saturating_sub(a)),
            _ => -1.0,
        };
        let timings = Timings {
            blocked: s.routed.map_or(-1.0, ms),
            dns: -1.0,
            connect: between(s.routed, s.connected),
            send: 0.0,
            wait: between(s.connected, s.first_byte),
            receive: s.first_byte.map_or(-1.0, |f| ms(x.total.saturating_sub(f))),
            ssl: -1.0,
        };

        Entry {
            started_date_time: humantime::format_rfc3339_millis(x.started_wall).to_string(),
            time: ms(x.total),
            request: Request {
                method: x.method.clone(),
                url: url(&x.authority, &x.target),
                http_version: req_version.to_owned(),
                cookies: Vec::new(),
                headers: redacted(&req_headers, redact),
                query_string: query(&x.target),
                post_data,
                headers_size: if req_head_len > 0 { req_head_len } else { -1 },
                body_size: known(req_head_len, x.bytes_in),
            },
            response: Response {
                status: x.status,
                status_text,
                http_version: resp_version.unwrap_or("HTTP/1.1").to_owned(),
                cookies: Vec::new(),
                headers: redacted(&resp_headers, redact),
                content,
                redirect_url: header(&resp_headers, "location").to_owned(),
                headers_size: if resp_head_len > 0 { resp_head_len } else { -1 },
                body_size: resp_body_size,
            },
            cache: Cache {},
            timings,
            sidetrack: Sidetrack {
                started_unix_ms,
                name: x.name.clone(),
                dst: x.dst.clone(),
                via: x.via.label().to_owned(),
                rule: x.rule.clone(),
                request_id: x.request_id.clone(),
                peer: x.peer.to_string(),
                error: x.error.map(|e| e.label().to_owned()),
                bytes_in: x.bytes_in,
                bytes_out: x.bytes_out,
                mirrored: x.mirrored,
                retried: x.retried,
                traceparent: x.traceparent.clone(),
                spans: SpanTimes {
                    identified: span(s.identified),
                    routed: span(s.routed),
                    connected: span(s.connected),
                    first_byte: span(s.first_byte),
                },
                request_body_kept: request_body.is_some(),
                response_body_kept: response_body.is_some(),
            },
        }
    }

    /// The request's body as sent: empty when it had none, `None` when it
    /// was not kept.
    pub fn request_body(&self) -> Option<Vec<u8>> {
        if !self.sidetrack.request_body_kept {
            return None;
        }
        match &self.request.post_data {
            None => Some(Vec::new()),
            Some(p) => decode_text(&p.text, p.encoding.as_deref()),
        }
    }

    /// The response's body, `None` when it was not kept.
    pub fn response_body(&self) -> Option<Vec<u8>> {
        let c = &self.response.content;
        let text = c.text.as_deref()?;
        decode_text(text, c.encoding.as_deref())
    }

    /// The request-target: the URL without its scheme and authority.
    pub fn target(&self) -> &str {
        let url = &self.request.url;
        match url.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => url,
        }
    }
}

fn decode_text(text: &str, encoding: Option<&str>) -> Option<Vec<u8>> {
    match encoding {
        None => Some(text.as_bytes().to_vec()),
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        Some(_) => None,
    }
}

/// A body as text: itself when it is UTF-8 and not gRPC (whose
/// length-prefixed messages are binary even when they decode as UTF-8),
/// else base64 (and `base64`).
fn body_text(body: &[u8], mime_type: &str) -> (String, Option<String>) {
    const GRPC: &str = "application/grpc";
    let grpc = mime_type
        .get(..GRPC.len())
        .is_some_and(|m| m.eq_ignore_ascii_case(GRPC));
    match std::str::from_utf8(body) {
        Ok(s) if !grpc => (s.to_owned(), None),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            Some("base64".to_owned()),
        ),
    }
}

/// The body without its chunked coding when the head says chunked (as
/// the data path keeps it: as framed); a broken coding is kept as it is.
fn dechunked(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    unframed(body, chunked).map_or_else(|| body.to_vec(), |b| b.into_owned())
}

/// A head's first line and its header fields, as text (lossy).
fn split_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").map(|l| l.trim_end_matches('\n'));
    let first = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    (first, headers)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map_or("", |(_, v)| v.as_str())
}

fn redacted(headers: &[(String, String)], redact: &Redact) -> Vec<NameValue> {
    headers
        .iter()
        .map(|(name, value)| NameValue {
            name: name.clone(),
            value: if redact.covers(name) {
                REDACTED.to_owned()
            } else {
                value.clone()
            },
        })
        .collect()
}

fn url(authority: &str, target: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        target.to_owned()
    } else {
        format!("http://{authority}{target}")
    }
}

fn query(target: &str) -> Vec<NameValue> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    let q = q.split('#').next().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            NameValue {
                name: name.to_owned(),
                value: value.to_owned(),
            }
        })
        .collect()
}

/// Unix milliseconds of a moment.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::exchange::{Spans, Via};

    fn exchange() -> Exchange {
        Exchange {
            started_wall: UNIX_EPOCH + Duration::from_millis(1_777_636_800_123),
            total: Duration::from_micros(12_500),
            spans: Spans {
                identified: Some(Duration::from_micros(10)),
                routed: Some(Duration::from_micros(500)),
                connected: Some(Duration::from_micros(1_500)),
                first_byte: Some(Duration::from_micros(11_500)),
            },
            peer: "10.0.0.7:40000".parse().unwrap(),
            method: "POST".into(),
            authority: "world".into(),
            target: "/users/7?expand=1&x".into(),
            status: 200,
            error: None,
            bytes_in: 0,
            bytes_out: 0,
            name: "/svc/world".into(),
            dst: "/#/io.l5d.fs/world".into(),
            via: Via::Rule,
            rule: Some("beta".into()),
            request_id: "abc".into(),
            mirrored: false,
            retried: false,
            traceparent: String::new(),
            request_head: Vec::new(),
            request_body: None,
            response_head: Vec::new(),
            response_body: None,
        }
    }

    fn with_bodies(mut x: Exchange, req: &[u8], resp_head: &str, resp: &[u8]) -> Exchange {
        x.request_head = b"POST /users/7?expand=1&x HTTP/1.1\r\nHost: world\r\n\
            Authorization: Bearer s3cret\r\nCookie: sid=1\r\nX-Api-Key: k\r\n\
            Content-Type: application/json\r\nContent-Length: 9\r\n\r\n"
            .to_vec();
        x.request_body = Some(req.to_vec());
        x.response_head = resp_head.as_bytes().to_vec();
        x.response_body = Some(resp.to_vec());
        x.bytes_in = (x.request_head.len() + req.len()) as u64;
        x.bytes_out = (x.response_head.len() + resp.len()) as u64;
        x
    }

    #[test]
    fn an_entry_has_har_fields_and_the_proxys_own() {
        let x = with_bodies(
            exchange(),
            br#"{"a":"b"}"#,
            "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: s=2\r\nContent-Length: 2\r\n\r\n",
            b"ok",
        );
        let x = Exchange { status: 201, ..x };
        let e = Entry::of(&x, &Redact::new(&["X-API-Key".into()]));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["startedDateTime"], "2026-05-01T12:00:00.123Z");
        assert_eq!(v["time"], 12.5);
        assert_eq!(v["request"]["url"], "http://world/users/7?expand=1&x");
        assert_eq!(v["request"]["httpVersion"], "HTTP/1.1");
        assert_eq!(
            v["request"]["queryString"],
            serde_json::json!([{"name":"expand","value":"1"},{"name":"x","value":""}])
        );
        assert_eq!(v["request"]["postData"]["text"], r#"{"a":"b"}"#);
        assert_eq!(v["request"]["postData"]["mimeType"], "application/json");
        assert_eq!(v["request"]["bodySize"], 9);
        assert_eq!(v["response"]["status"], 201);
        assert_eq!(v["response"]["statusText"], "Created");
        assert_eq!(v["response"]["content"]["text"], "ok");
        assert_eq!(v["response"]["content"]["size"], 2);
        assert_eq!(v["response"]["content"]["mimeType"], "text/plain");
        assert_eq!(v["timings"]["blocked"], 0.5);
        assert_eq!(v["timings"]["connect"], 1.0);
        assert_eq!(v["timings"]["wait"], 10.0);
        assert_eq!(v["timings"]["receive"], 1.0);
        let s = &v["_sidetrack"];
        assert_eq!(s["name"], "/svc/world");
        assert_eq!(s["dst"], "/#/io.l5d.fs/world");
        assert_eq!(
            (s["via"].as_str(), s["rule"].as_str()),
            (Some("rule"), Some("beta"))
        );
        assert_eq!(s["request_id"], "abc");
        assert_eq!(s["started_unix_ms"], 1_777_636_800_123u64);
        // Round trip: replay reads what the writer wrote.
        let back: Entry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.target(), "/users/7?expand=1&x");
        assert_eq!(back.request_body().unwrap(), br#"{"a":"b"}"#);
    }

    #[test]
    fn credentials_and_listed_headers_are_redacted() {
        let x = with_bodies(
            exchange(),
            b"",
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=2\r\nset-cookie: t=3\r\nContent-Length: 0\r\n\r\n",
            b"",
        );
        let e = Entry::of(&x, &Redact::new(&["x-api-key".into()]));
        let value = |headers: &[NameValue], name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone())
                .collect()
        };
        for name in ["authorization", "cookie", "x-api-key"] {
            assert_eq!(value(&e.request.headers, name), [REDACTED], "{name}");
        }
        assert_eq!(value(&e.request.headers, "host"), ["world"]);
        assert_eq!(
            value(&e.response.headers, "set-cookie"),
            [REDACTED, REDACTED]
        );
        let line = serde_json::to_string(&e).unwrap();
        for secret in ["s3cret", "sid=1", "s=2", "t=3"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        // No body: no postData, and replay sends none.
        assert!(e.request.post_data.is_none());
        assert_eq!(e.request_body().unwrap(), b"");
    }

    #[test]
    fn bodies_that_are_not_utf8_are_base64_and_chunked_ones_are_decoded() {
        let binary = [0u8, 0xff, 0xfe, b'a'];
        let x = with_bodies(
            exchange(),
            &binary,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3\r\n\xff\x00\x01\r\n2\r\nhi\r\n0\r\n\r\n",
        );
        let e = Entry::of(&x, &Redact::new(&[]));
        let p = e.request.post_data.as_ref().unwrap();
        assert_eq!(
            (p.text.as_str(), p.encoding.as_deref()),
            ("AP/+YQ==", Some("base64"))
        );
        assert_eq!(e.request_body().unwrap(), binary);
        assert_eq!(e.response.content.encoding.as_deref(), Some("base64"));
        assert_eq!(e.response_body().unwrap(), b"\xff\x00\x01hi");
        assert_eq!(e.response.content.size, 5);
    }

    #[test]
    fn grpc_bodies_are_base64_even_when_they_read_as_utf8() {
        assert_eq!(
            body_text(b"\0\0\0\0\x02hi", "application/grpc+proto"),
            ("AAAAAAJoaQ==".to_owned(), Some("base64".to_owned()))
        );
        assert_eq!(body_text(b"hi", "text/plain"), ("hi".to_owned(), None));
    }

    #[test]
    fn bodies_over_the_limit_are_recorded_by_size_alone() {
        let mut x = with_bodies(
            exchange(),
            b"",
            "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            b"",
        );
        x.request_body = None;
        x.response_body = None;
        x.bytes_in += 70_000;
        x.bytes_out += 100_000;
        let e = Entry::of(&x, &Redact::new(&[]));
        assert!(!e.sidetrack.request_body_kept && !e.sidetrack.response_body_kept);
        assert_eq!(e.request.body_size, 70_000);
        assert_eq!(e.response.content.size, 100_000);
        assert!(e.response.content.text.is_none());
        assert_eq!((e.request_body(), e.response_body()), (None, None));
    }

    #[test]
    fn an_exchange_without_heads_still_makes_an_entry() {
        let mut x = exchange();
        x.status = 0;
        x.spans = Spans::default();
        x.error = Some(crate::observe::metrics::ErrorKind::ConnectFailed);
        let e = Entry::of(&x, &Redact::new(&[]));
        assert_eq!((e.request.headers_size, e.request.body_size), (-1, -1));
        assert_eq!(e.timings.wait, -1.0);
        assert_eq!(e.sidetrack.error.as_deref(), Some("connect_failed"));
    }
}
