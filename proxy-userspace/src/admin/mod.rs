//! The admin server (hyper): `/metrics`, `/ready`, `/dtab`,
//! `/delegator.json` and the `/delegator` page, `/diff.json`, the `/diff`
//! page and `POST /diff/reset`, `/dashboard.json` and the `/dashboard`
//! page.
//!
//! It runs on a thread and a single-threaded runtime of its own, so a slow
//! scrape or a big explanation tree never takes a worker from the data path.

/// The style the table pages (`/diff`, `/dashboard`) share, as a literal
/// for `concat!`.
macro_rules! table_page_style {
    () => {
        r##" body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
 h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 1.6em 0 .3em; font-family: ui-monospace, monospace; }
 #bar { display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; }
 #summary { color: #444; }
 table { border-collapse: collapse; margin-top: .4em; }
 th, td { text-align: left; padding: .2em .8em .2em 0; vertical-align: top; }
 th { font-weight: 600; border-bottom: 1px solid #ccc; } th.num { text-align: right; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
"##
    };
}

mod dashboard_page;
mod diff_page;
mod page;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HOST, HeaderValue, ORIGIN},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{
    dtab::{self, Dtab, Path},
    route::Router,
};

use crate::observe::metrics::Metrics;

/// What the admin server shows.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
    /// True once the proxy listens, false again when it drains.
    pub ready: Arc<AtomicBool>,
    /// What interception takes (mode, cgroup, destinations), shown on
    /// `/ready` after its first line.
    pub about: String,
    /// The response diff engine the mirror tasks record into.
    pub diff: Arc<crate::diff::Engine>,
}

/// Starts the admin server on its own thread; returns the bound address.
/// It accepts until `stop` turns true (after a restart handed the listener
/// to a successor), then lets go of the listener.
pub fn spawn(
    listener: std::net::TcpListener,
    admin: Admin,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let admin = Arc::new(admin);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("admin listener");
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        // EMFILE and friends: back off instead of spinning.
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let admin = admin.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let admin = admin.clone();
                            async move { Ok::<_, Infallible>(handle(&admin, req).await) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // The listener is the successor's now; requests already
                // read get a moment to be answered.
                drop(listener);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            });
        })?;
    Ok(addr)
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, "text/plain; charset=utf-8", body)
}

/// The body of `POST /delegator.json`, as Linkerd 1 takes it.
#[derive(Deserialize)]
struct DelegateRequest {
    #[serde(default)]
    dtab: String,
    path: String,
    #[allow(dead_code)]
    #[serde(default)]
    namespace: Option<String>,
    /// A request's header lines (`Name: value`, one a line), for the
    /// routing rules.
    #[serde(default)]
    headers: String,
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        ),
        (&Method::GET, "/ready") => {
            if admin.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, format!("ready\n{}", admin.about))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready\n{}", admin.about),
                )
            }
        }
        (&Method::GET, "/dtab") => text(StatusCode::OK, format!("{}\n", admin.router.base().dtab)),
        (&Method::GET, "/delegator") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", page::DELEGATOR)
        }
        (&Method::GET, "/delegator.json") => {
            let query = req.uri().query().unwrap_or("");
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| percent_decode(v))
                })
            };
            let (Some(path), dtab) = (param("path"), param("dtab").unwrap_or_default()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the path query parameter is required\n",
                );
            };
            delegator_json(admin, &dtab, &path, &param("headers").unwrap_or_default())
        }
        (&Method::POST, "/delegator.json") => {
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
            };
            match serde_json::from_slice::<DelegateRequest>(&body) {
                Ok(d) => delegator_json(admin, &d.dtab, &d.path, &d.headers),
                Err(e) => text(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"dtab\": ..., \"path\": ...}}: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/diff") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", diff_page::DIFF)
        }
        (&Method::GET, "/diff.json") => match serde_json::to_string(&admin.diff.report()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        (&Method::GET, "/dashboard") => match admin.metrics.dashboard() {
            Some(_) => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                dashboard_page::DASHBOARD,
            ),
            None => dashboard_off(),
        },
        (&Method::GET, "/dashboard.json") => match admin.metrics.dashboard() {
            Some(d) => match serde_json::to_string(&d.snapshot(std::time::Instant::now())) {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            None => dashboard_off(),
        },
        (&Method::POST, "/diff/reset") => {
            if !same_origin(&req) {
                return text(
                    StatusCode::FORBIDDEN,
                    "a reset from another origin's page is refused\n",
                );
            }
            admin.diff.reset();
            text(StatusCode::OK, "reset\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /dtab, /delegator, /delegator.json, /diff, /diff.json, /dashboard or /dashboard.json\n",
        ),
    }
}

fn dashboard_off() -> Resp {
    text(
        StatusCode::NOT_FOUND,
        "the dashboard is off (dashboard.enabled: false)\n",
    )
}

/// Whether a state-changing request comes from the admin server's own
/// page or from no page at all (curl, `sidetrack`): a browser sends
/// `Origin` with a cross-origin POST, and a page elsewhere must not be
/// able to reset the diff through a user's port-forward.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(ORIGIN) else {
        return true;
    };
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, a)| a);
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The delegation of `path` through the base dtab, the routing rule the
/// pasted `headers` match (if any; shown as `rule`), and `dtab`.
fn delegator_json(admin: &Admin, dtab: &str, path: &str, headers: &str) -> Resp {
    let local = match Dtab::parse(dtab) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid dtab: {e}\n")),
    };
    let path = match Path::read(path) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid path: {e}\n")),
    };
    let rules = admin.router.rules();
    let pasted = Pasted::new(headers, &path);
    let rule = rules.first_match(&pasted).and_then(|i| rules.get(i));
    let local = match rule {
        Some(r) => r.dtab.concat(&local),
        None => local,
    };
    let base = admin.router.base();
    let namers = admin.router.namers();
    let tree = dtab::delegate(&base.compiled, &local, &path, namers.as_ref());
    let mut json = match serde_json::to_value(&tree) {
        Ok(j) => j,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    if let (Some(r), Some(obj)) = (rule, json.as_object_mut()) {
        obj.insert(
            "rule".into(),
            serde_json::json!({ "name": r.name, "dtab": r.dtab.to_string() }),
        );
    }
    respond(StatusCode::OK, "application/json", json.to_string())
}

/// A request as pasted into the delegator: header lines, the path as its
/// logical name, no source address (rules on sources do not match).
struct Pasted {
    headers: Vec<(String, String)>,
    name: String,
}

impl Pasted {
    fn new(text: &str, path: &Path) -> Pasted {
        Pasted {
            headers: text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect(),
            name: path.to_string(),
        }
    }
}

impl crate::policy::rules::Facts for Pasted {
    fn header_values(&self, name: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_bytes() == name)
            .any(|(_, v)| each(v.as_bytes()))
    }
    fn target(&self) -> &[u8] {
        self.headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map_or(b"/", |(_, v)| v.as_bytes())
    }
    fn logical_name(&self) -> &[u8] {
        self.name.as_bytes()
    }
    fn source(&self) -> std::net::IpAddr {
        std::net::IpAddr::from([0, 0, 0, 0])
    }
}

/// Decodes `%XX` escapes and `+` (a form's space) in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("%2Fsvc%2Fworld"), "/svc/world");
        assert_eq!(percent_decode("a+b%3D%3E%20c"), "a b=> c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
