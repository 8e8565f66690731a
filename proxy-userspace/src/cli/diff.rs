//! `sidetrack diff`: a running proxy's response diff report, from its
//! admin server's `/diff.json`, as text for a terminal or a CI job.
//!
//! Exit status: 0 when no field is reported, 1 when one is (the candidate
//! answers differently beyond the noise: a script can gate on it), 2 when
//! the report could not be read.

use std::process::ExitCode;

use clap::Args;

use crate::diff::{EndpointReport, FieldReport, Report};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The proxy's admin address (`127.0.0.1:9990` or `http://127.0.0.1:9990`).
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub admin: String,
    /// Print the report as JSON (what `/diff.json` serves).
    #[arg(long)]
    pub json: bool,
    /// Show the fields within the noise too, not only the reported ones.
    #[arg(long)]
    pub all: bool,
}

impl DiffArgs {
    pub fn run(self) -> ExitCode {
        match self.fetch() {
            Ok((report, raw)) => {
                if self.json {
                    println!("{}", String::from_utf8_lossy(&raw).trim_end());
                } else {
                    print!("{}", render(&report, self.all));
                }
                if report.reported_fields() > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("sidetrack diff: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn fetch(&self) -> Result<(Report, Vec<u8>), String> {
        let authority = super::admin_http::authority(&self.admin);
        let raw = super::admin_http::request(authority, "GET", "/diff.json", None)?;
        let report = serde_json::from_slice(&raw)
            .map_err(|e| format!("{authority}/diff.json is not a diff report: {e}"))?;
        Ok((report, raw))
    }
}

/// The report as text: a summary line, then each endpoint with its counts
/// and its reported fields (with `all`, every field), each with a sample.
pub fn render(r: &Report, all: bool) -> String {
    let mut out = String::new();
    let reported = r.reported_fields();
    out.push_str(&format!(
        "{} requests compared over {} {} in the last {:.0} s; {} {} reported \
         (thresholds: relative {}%, absolute {}%)\n",
        r.requests,
        r.endpoints.len(),
        plural(r.endpoints.len(), "endpoint", "endpoints"),
        r.since_reset_secs,
        reported,
        plural(reported, "field", "fields"),
        r.relative_threshold_pct,
        r.absolute_threshold_pct,
    ));
    if r.samples_dropped > 0 {
        out.push_str(&format!(
            "({} samples not kept: the sample memory is full)\n",
            r.samples_dropped
        ));
    }
    for ep in &r.endpoints {
        out.push('\n');
        endpoint(&mut out, ep, all);
    }
    out
}

fn endpoint(out: &mut String, ep: &EndpointReport, all: bool) {
    out.push_str(&format!(
        "{}\n  {} requests, {} with a difference, {} with noise; {} {} reported\n",
        ep.name,
        ep.requests,
        ep.differing,
        ep.noisy,
        ep.reported_fields,
        plural(ep.reported_fields, "field", "fields"),
    ));
    if ep.fields_overflowed > 0 {
        out.push_str(&format!(
            "  {} differences in fields past the cap (max_fields_per_endpoint) not counted\n",
            ep.fields_overflowed
        ));
    }
    let shown: Vec<&FieldReport> = ep.fields.iter().filter(|f| all || f.reported).collect();
    if !shown.is_empty() {
        let width = super::column_width(shown.iter().map(|f| f.path.as_str()), 5, 60);
        out.push_str(&format!(
            "  {:<width$}  {:<8}  {:>16}  {:>16}  {}\n",
            "FIELD", "VERDICT", "RAW", "NOISE", "KINDS"
        ));
        for f in &shown {
            let kinds: Vec<String> = f
                .kinds
                .iter()
                .map(|(k, n)| format!("{} {n}", k.as_str()))
                .collect();
            out.push_str(&format!(
                "  {:<width$}  {:<8}  {:>16}  {:>16}  {}\n",
                f.path,
                if f.reported { "reported" } else { "noise" },
                format!("{} ({:.2}%)", f.raw, f.raw_pct),
                format!("{} ({:.2}%)", f.noise, f.noise_pct),
                kinds.join(", "),
            ));
            if let Some(s) = f.samples.first() {
                out.push_str(&format!(
                    "  {:<width$}    e.g. primary {}, candidate {}\n",
                    "",
                    s.primary.as_deref().unwrap_or("(absent)"),
                    s.candidate.as_deref().unwrap_or("(absent)"),
                ));
            }
        }
    }
    let hidden = ep.fields.len() - shown.len();
    if hidden > 0 {
        out.push_str(&format!(
            "  ({hidden} {} within the noise: --all shows {})\n",
            plural(hidden, "field", "fields"),
            plural(hidden, "it", "them"),
        ));
    } else if ep.fields.is_empty() {
        out.push_str("  no differences\n");
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{DiffSettings, Engine, Request, Response};

    fn report() -> Report {
        let e = Engine::new(DiffSettings::default());
        let req = Request {
            method: b"GET",
            path: b"/users/7",
            headers: &[],
            body: b"",
        };
        for i in 0..10 {
            let p = format!(r#"{{"name":"Ann","ts":{i}}}"#);
            let s = format!(r#"{{"name":"Ann","ts":{}}}"#, i + 1);
            let c = format!(r#"{{"name":"ann","ts":{}}}"#, i + 2);
            e.record(
                "/svc/world GET /users/{id}",
                &req,
                &Response::new(200, &[], p.as_bytes()),
                &Response::new(200, &[], s.as_bytes()),
                &Response::new(200, &[], c.as_bytes()),
            );
        }
        let mut r = e.report();
        r.since_reset_secs = 42.0;
        r
    }

    #[test]
    fn the_text_shows_reported_fields_and_counts_the_rest() {
        let text = render(&report(), false);
        let want = [
            "10 requests compared over 1 endpoint in the last 42 s; 1 field reported \
             (thresholds: relative 20%, absolute 0.03%)",
            "",
            "/svc/world GET /users/{id}",
            "  10 requests, 10 with a difference, 10 with noise; 1 field reported",
            "  FIELD          VERDICT                RAW             NOISE  KINDS",
            "  200.body.name  reported      10 (100.00%)         0 (0.00%)  value 10",
            r#"                   e.g. primary "Ann", candidate "ann""#,
            "  (1 field within the noise: --all shows it)",
            "",
        ];
        assert_eq!(text, want.join("\n"), "{text}");
    }

    #[test]
    fn all_shows_the_noise_too() {
        let text = render(&report(), true);
        assert!(
            text.contains(
                "  200.body.ts    noise         10 (100.00%)      10 (100.00%)  value 10\n"
            ),
            "{text}"
        );
        assert!(!text.contains("--all"), "{text}");
    }

    #[test]
    fn an_empty_report_says_so() {
        let r = Engine::new(DiffSettings::default()).report();
        assert!(
            render(&r, false).starts_with("0 requests compared over 0 endpoints"),
            "{}",
            render(&r, false)
        );
    }
}
