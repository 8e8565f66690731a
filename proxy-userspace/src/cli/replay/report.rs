//! Replay's report: per endpoint (the diff engine's names, `NAME METHOD
//! TEMPLATE`), how the new answers compare with the recorded ones. Raw
//! differences: the diff engine's noise rule needs a second live answer
//! to each request, which a capture does not have, so every difference
//! is counted, including those any two answers would show.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diff::{
    DiffSettings, Kind, OTHER_ENDPOINT, Response,
    compare::{Differences, compare},
};

use super::client::Answer;
use crate::observe::capture::har::{Entry, REDACTED};

/// Endpoints kept apart; the rest are counted as [`OTHER_ENDPOINT`].
pub const MAX_ENDPOINTS: usize = 256;
/// Fields kept per endpoint; further ones are counted in `fields_overflowed`.
pub const MAX_FIELDS: usize = 128;
/// Error messages kept per endpoint.
const MAX_ERRORS: usize = 3;

/// How one replayed request went.
#[derive(Debug)]
pub enum Outcome {
    /// Its answer, compared with the recorded one; no difference is same.
    Compared(Differences),
    Failed(String),
}

/// The differences of a new answer from the recorded one, as the diff
/// engine sees them (recorded first). Headers the capture redacted are
/// left out on both sides; a body the capture did not keep is not
/// compared.
pub fn differences(settings: &DiffSettings, recorded: &Entry, new: &Answer) -> Differences {
    let redacted: Vec<&str> = recorded
        .response
        .headers
        .iter()
        .filter(|h| h.value == REDACTED)
        .map(|h| h.name.as_str())
        .collect();
    let kept = |name: &str| !redacted.iter().any(|r| r.eq_ignore_ascii_case(name));
    let old_headers: Vec<(&[u8], &[u8])> = recorded
        .response
        .headers
        .iter()
        .filter(|h| kept(&h.name))
        .map(|h| (h.name.as_bytes(), h.value.as_bytes()))
        .collect();
    let new_headers: Vec<(&[u8], &[u8])> = new
        .headers
        .iter()
        .filter(|(n, _)| kept(n))
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let recorded_body = recorded.response_body();
    let (old_body, new_body): (&[u8], &[u8]) = match &recorded_body {
        Some(b) => (b, &new.body),
        None => (b"", b""),
    };
    let cut = |b: &[u8]| b.len().min(settings.max_body_bytes);
    let old = Response::new(
        recorded.response.status,
        &old_headers,
        &old_body[..cut(old_body)],
    );
    let new_resp = Response::new(new.status, &new_headers, &new_body[..cut(new_body)]);
    compare(settings, &old, &new_resp)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Entries read from the capture, and lines that were not entries.
    pub entries: u64,
    pub unreadable_lines: u64,
    /// Entries outside the window, names or methods asked for.
    pub filtered_out: u64,
    /// Entries with a method that may write, without `--allow-writes`.
    pub skipped_writes: u64,
    /// Entries whose request body was longer than capture kept.
    pub skipped_body_not_kept: u64,
    /// Entries whose client got no answer.
    pub skipped_no_answer: u64,
    pub replayed: u64,
    pub same: u64,
    pub differing: u64,
    pub errors: u64,
    /// Endpoints with differences or errors first, then by requests.
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub replayed: u64,
    pub same: u64,
    pub differing: u64,
    pub errors: u64,
    /// `recorded -> new` statuses, with how often.
    pub status_changes: BTreeMap<String, u64>,
    /// Fields that differed (other than `status`), most often first.
    pub fields: Vec<FieldReport>,
    pub fields_overflowed: u64,
    /// The first errors' messages.
    pub error_samples: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    pub path: String,
    pub count: u64,
    pub kinds: BTreeMap<Kind, u64>,
    /// The first difference seen: the recorded and the new value.
    pub recorded: Option<String>,
    pub replayed: Option<String>,
}

/// The counts as replies come in.
#[derive(Debug, Default)]
pub struct Tally {
    pub report: Report,
    endpoints: BTreeMap<String, EndpointReport>,
}

impl Tally {
    pub fn add(&mut self, endpoint: &str, outcome: Outcome) {
        let full = self.endpoints.len() >= MAX_ENDPOINTS && !self.endpoints.contains_key(endpoint);
        let key = if full { OTHER_ENDPOINT } else { endpoint };
        let ep = self
            .endpoints
            .entry(key.to_owned())
            .or_insert_with(|| EndpointReport {
                endpoint: key.to_owned(),
                ..Default::default()
            });
        let r = &mut self.report;
        r.replayed += 1;
        ep.replayed += 1;
        match outcome {
            Outcome::Failed(e) => {
                r.errors += 1;
                ep.errors += 1;
                if ep.error_samples.len() < MAX_ERRORS {
                    ep.error_samples.push(e);
                }
            }
            Outcome::Compared(d) if d.is_empty() => {
                r.same += 1;
                ep.same += 1;
            }
            Outcome::Compared(d) => {
                r.differing += 1;
                ep.differing += 1;
                for (path, found) in d {
                    if path == "status" {
                        let change = format!(
                            "{} -> {}",
                            found.first.as_deref().unwrap_or("?"),
                            found.second.as_deref().unwrap_or("?")
                        );
                        *ep.status_changes.entry(change).or_default() += 1;
                        continue;
                    }
                    let i = match ep.fields.iter().position(|f| f.path == path) {
                        Some(i) => i,
                        None if ep.fields.len() >= MAX_FIELDS => {
                            ep.fields_overflowed += 1;
                            continue;
                        }
                        None => {
                            ep.fields.push(FieldReport {
                                path,
                                count: 0,
                                kinds: BTreeMap::new(),
                                recorded: found.first.clone(),
                                replayed: found.second.clone(),
                            });
                            ep.fields.len() - 1
                        }
                    };
                    let f = &mut ep.fields[i];
                    f.count += 1;
                    for k in found.kinds.iter() {
                        *f.kinds.entry(k).or_default() += 1;
                    }
                }
            }
        }
    }

    pub fn finish(mut self) -> Report {
        let mut eps: Vec<EndpointReport> = self.endpoints.into_values().collect();
        for ep in &mut eps {
            ep.fields
                .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        }
        eps.sort_by(|a, b| {
            (b.differing + b.errors)
                .cmp(&(a.differing + a.errors))
                .then_with(|| b.replayed.cmp(&a.replayed))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        self.report.endpoints = eps;
        self.report
    }
}

/// The report as text: one line of totals, a table of endpoints, and
/// under each differing endpoint its status changes and fields.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "{} replayed: {} same, {} differing, {} failed",
        r.replayed, r.same, r.differing, r.errors
    );
    let skipped = [
        (r.filtered_out, "filtered out"),
        (r.skipped_writes, "writes skipped (--allow-writes)"),
        (r.skipped_body_not_kept, "skipped: body not captured"),
        (r.skipped_no_answer, "skipped: no recorded answer"),
        (r.unreadable_lines, "unreadable lines"),
    ];
    for (n, what) in skipped {
        if n > 0 {
            out.push_str(&format!("; {n} {what}"));
        }
    }
    out.push('\n');
    if r.endpoints.is_empty() {
        return out;
    }
    let width = crate::cli::column_width(r.endpoints.iter().map(|e| e.endpoint.as_str()), 8, 80);
    out.push_str(&format!(
        "\n{:<width$}  {:>8}  {:>6}  {:>7}  {:>6}\n",
        "ENDPOINT", "REPLAYED", "SAME", "DIFFERS", "ERRORS"
    ));
    for ep in &r.endpoints {
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>6}  {:>7}  {:>6}\n",
            ep.endpoint, ep.replayed, ep.same, ep.differing, ep.errors
        ));
        for (change, n) in &ep.status_changes {
            out.push_str(&format!("    status {change}: {n}\n"));
        }
        for f in &ep.fields {
            let kinds: Vec<String> = f
                .kinds
                .iter()
                .map(|(k, n)| format!("{} {n}", k.as_str()))
                .collect();
            out.push_str(&format!(
                "    {}: {} ({}); e.g. recorded {}, replayed {}\n",
                f.path,
                f.count,
                kinds.join(", "),
                f.recorded.as_deref().unwrap_or("(absent)"),
                f.replayed.as_deref().unwrap_or("(absent)"),
            ));
        }
        if ep.fields_overflowed > 0 {
            out.push_str(&format!(
                "    ({} differences in fields past the first {MAX_FIELDS})\n",
                ep.fields_overflowed
            ));
        }
        for e in &ep.error_samples {
            out.push_str(&format!("    error: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::capture::har::{self, NameValue};

    fn recorded(status: u16, body: &str, headers: &[(&str, &str)]) -> Entry {
        let line = serde_json::json!({
            "startedDateTime": "", "time": 1.0,
            "request": {"method": "GET", "url": "http://world/users/1", "httpVersion": "HTTP/1.1",
                "cookies": [], "headers": [], "queryString": [], "headersSize": 1, "bodySize": 0},
            "response": {"status": status, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [],
                "headers": headers.iter().map(|(n, v)| NameValue { name: (*n).into(), value: (*v).into() }).collect::<Vec<_>>(),
                "content": {"size": body.len(), "mimeType": "application/json", "text": body},
                "redirectURL": "", "headersSize": 1, "bodySize": body.len()},
            "cache": {}, "timings": {"blocked": 0, "dns": -1, "connect": 0, "send": 0, "wait": 0, "receive": 0, "ssl": -1},
            "_sidetrack": {"started_unix_ms": 1, "name": "/svc/world", "dst": "", "via": "base",
                "request_id": "", "peer": "", "bytes_in": 0, "bytes_out": 0, "mirrored": false,
                "retried": false, "spans": {}, "request_body_kept": true, "response_body_kept": true}
        });
        serde_json::from_value::<har::Entry>(line).unwrap()
    }

    fn answer(status: u16, body: &str, headers: &[(&str, &str)]) -> Answer {
        Answer {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_compare_by_status_and_fields_without_redacted_headers() {
        let s = DiffSettings::default();
        let old = recorded(
            200,
            r#"{"name":"Ann","n":1}"#,
            &[("Set-Cookie", REDACTED), ("Date", "x")],
        );
        let same = answer(
            200,
            r#"{"n":1,"name":"Ann"}"#,
            &[("Set-Cookie", "s=1"), ("Date", "y")],
        );
        assert!(differences(&s, &old, &same).is_empty());
        let d = differences(&s, &old, &answer(200, r#"{"name":"ann","n":1}"#, &[]));
        assert_eq!(d.keys().collect::<Vec<_>>(), ["200.body.name"]);
        let d = differences(&s, &old, &answer(404, "gone", &[]));
        assert_eq!(d.keys().collect::<Vec<_>>(), ["status"]);
        // A body capture did not keep is not compared.
        let mut not_kept = recorded(200, "", &[]);
        not_kept.response.content.text = None;
        assert!(differences(&s, &not_kept, &answer(200, "anything", &[])).is_empty());
    }

    #[test]
    fn the_tally_counts_per_endpoint_with_status_changes_and_fields() {
        let s = DiffSettings::default();
        let old = recorded(200, r#"{"name":"Ann"}"#, &[]);
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add("/svc/world GET /a", Outcome::Compared(Differences::new()));
        }
        for _ in 0..2 {
            let d = differences(&s, &old, &answer(200, r#"{"name":"ann"}"#, &[]));
            t.add("/svc/world GET /b", Outcome::Compared(d));
        }
        let d = differences(&s, &old, &answer(500, "", &[]));
        t.add("/svc/world GET /b", Outcome::Compared(d));
        t.add("/svc/world GET /c", Outcome::Failed("refused".into()));
        let r = t.finish();
        assert_eq!((r.replayed, r.same, r.differing, r.errors), (7, 3, 3, 1));
        let b = &r.endpoints[0];
        assert_eq!(b.endpoint, "/svc/world GET /b");
        assert_eq!((b.replayed, b.differing), (3, 3));
        assert_eq!(b.status_changes, [("200 -> 500".to_owned(), 1)].into());
        assert_eq!(b.fields[0].path, "200.body.name");
        assert_eq!(b.fields[0].count, 2);
        assert_eq!(b.fields[0].recorded.as_deref(), Some(r#""Ann""#));
        assert_eq!(b.fields[0].replayed.as_deref(), Some(r#""ann""#));
        let text = render(&r);
        assert!(
            text.starts_with("7 replayed: 3 same, 3 differing, 1 failed\n"),
            "{text}"
        );
        assert!(text.contains("    status 200 -> 500: 1\n"), "{text}");
        assert!(text.contains("    error: refused\n"), "{text}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn endpoints_past_the_cap_are_other() {
        let mut t = Tally::default();
        for i in 0..MAX_ENDPOINTS + 5 {
            t.add(&format!("ep{i}"), Outcome::Compared(Differences::new()));
        }
        let r = t.finish();
        assert_eq!(r.endpoints.len(), MAX_ENDPOINTS + 1);
        let other = r
            .endpoints
            .iter()
            .find(|e| e.endpoint == OTHER_ENDPOINT)
            .unwrap();
        assert_eq!(other.replayed, 5);
    }
}
