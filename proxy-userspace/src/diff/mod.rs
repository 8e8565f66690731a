//! Response diffing with noise cancelling, as Twitter's Diffy does it: a
//! request goes to the primary, to a second instance of the primary (the
//! secondary) and to the candidate; the fields in which the candidate
//! answers differently are reported only when they differ clearly more
//! often than the two primaries differ from each other.
//!
//! Pure logic: no I/O, no async; the data path hands it captured
//! responses from its mirror tasks, the admin server and `sidetrack diff`
//! show what it reports.
//!
//! - [`endpoint()`]: which requests are counted together.
//! - [`compare`]: two responses to the fields they differ in (`status`,
//!   `headers.NAME`, `200.body.user.name`) and how ([`Kind`]).
//! - [`noise`]: the rule that decides which fields are reported.
//! - [`Engine`]: the counts per endpoint and field, samples, bounds.
//! - [`Report`]: what `/diff.json` serves.

pub mod compare;
pub mod endpoint;
pub mod engine;
pub mod noise;
pub mod report;
pub mod settings;

pub use compare::{Kind, Request, Response};
pub use endpoint::endpoint;
pub use engine::{Engine, OTHER_ENDPOINT};
pub use report::{EndpointReport, ExchangeSample, FieldReport, FieldSample, Report};
pub use settings::DiffSettings;

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: Request = Request {
        method: b"GET",
        path: b"/users/1",
        headers: &[(b"Authorization", b"Bearer secret"), (b"Accept", b"*/*")],
        body: b"",
    };

    fn json(body: &str) -> Response<'_> {
        Response::new(200, &[], body.as_bytes())
    }

    /// Records `n` requests at `ep` with these bodies (primary, secondary,
    /// candidate).
    fn record(e: &Engine, ep: &str, n: usize, p: &str, s: &str, c: &str) {
        for _ in 0..n {
            e.record(ep, &REQ, &json(p), &json(s), &json(c));
        }
    }

    fn field<'r>(r: &'r Report, ep: &str, path: &str) -> &'r FieldReport {
        r.endpoints
            .iter()
            .find(|e| e.name == ep)
            .and_then(|e| e.fields.iter().find(|f| f.path == path))
            .unwrap_or_else(|| panic!("no {path} at {ep} in {r:#?}"))
    }

    #[test]
    fn a_real_difference_is_reported_and_a_noisy_one_cancelled() {
        let e = Engine::new(DiffSettings::default());
        // The timestamp differs between any two answers; the name only in
        // the candidate's.
        for i in 0..100 {
            let p = format!(r#"{{"name":"Ann","ts":{i}}}"#);
            let s = format!(r#"{{"name":"Ann","ts":{}}}"#, i + 1);
            let c = format!(r#"{{"name":"ann","ts":{}}}"#, i + 2);
            e.record("ep", &REQ, &json(&p), &json(&s), &json(&c));
        }
        let r = e.report();
        assert_eq!(r.requests, 100);
        assert_eq!(r.reported_fields(), 1);
        let ep = &r.endpoints[0];
        assert_eq!((ep.requests, ep.differing, ep.noisy), (100, 100, 100));
        // Reported fields come first.
        assert_eq!(ep.fields[0].path, "200.body.name");
        let name = field(&r, "ep", "200.body.name");
        assert!(name.reported);
        assert_eq!((name.raw, name.noise), (100, 0));
        assert_eq!(name.kinds, [(Kind::Value, 100)].into());
        let ts = field(&r, "ep", "200.body.ts");
        assert!(!ts.reported);
        assert_eq!((ts.raw, ts.noise), (100, 100));
        assert_eq!((ts.raw_pct, ts.noise_pct), (100.0, 100.0));
    }

    #[test]
    fn samples_are_bounded_per_field_and_share_their_exchange() {
        let e = Engine::new(DiffSettings {
            samples_per_field: 2,
            ..Default::default()
        });
        record(
            &e,
            "ep",
            5,
            r#"{"a":1,"b":1}"#,
            r#"{"a":1,"b":1}"#,
            r#"{"a":2,"b":2}"#,
        );
        let r = e.report();
        let a = field(&r, "ep", "200.body.a");
        assert_eq!(a.samples.len(), 2);
        assert_eq!(a.samples[0].primary.as_deref(), Some("1"));
        assert_eq!(a.samples[0].candidate.as_deref(), Some("2"));
        let b = field(&r, "ep", "200.body.b");
        // Both fields point at the same two exchanges.
        assert_eq!(a.samples[0].exchange, b.samples[0].exchange);
        let ep = &r.endpoints[0];
        assert_eq!(ep.exchanges.len(), 2);
        let x = &ep.exchanges[a.samples[1].exchange.unwrap()];
        assert_eq!(x.request.method, "GET");
        assert_eq!(x.request.path, "/users/1");
        assert_eq!(x.candidate.body, r#"{"a":2,"b":2}"#);
        // Credentials are not shown.
        assert_eq!(
            x.request.headers,
            [
                ("Authorization".to_owned(), "<redacted>".to_owned()),
                ("Accept".to_owned(), "*/*".to_owned())
            ]
        );
    }

    #[test]
    fn sample_bodies_are_cut_and_the_sample_budget_holds() {
        let e = Engine::new(DiffSettings {
            sample_body_bytes: 10,
            ..Default::default()
        });
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
        record(&e, "ep", 1, r#"{"a":"y"}"#, r#"{"a":"y"}"#, &long);
        let r = e.report();
        let x = &r.endpoints[0].exchanges[0];
        assert_eq!(x.candidate.body.len(), 10);
        assert!(x.candidate.body_truncated && !x.primary.body_truncated);

        // A budget with room for the field values only, not the exchange.
        let e = Engine::new(DiffSettings {
            max_sample_bytes: 200,
            ..Default::default()
        });
        record(&e, "ep", 10, r#"{"a":1}"#, r#"{"a":1}"#, r#"{"a":2}"#);
        let r = e.report();
        assert!(r.sample_bytes <= 200, "{}", r.sample_bytes);
        let a = field(&r, "ep", "200.body.a");
        assert!(!a.samples.is_empty() && a.samples.iter().all(|s| s.exchange.is_none()));
        assert!(r.samples_dropped > 0);
        assert!(r.endpoints[0].exchanges.is_empty());
    }

    #[test]
    fn endpoints_past_the_cap_are_counted_as_other() {
        let e = Engine::new(DiffSettings {
            max_endpoints: 2,
            ..Default::default()
        });
        for ep in ["a", "b", "c", "d", "a"] {
            record(&e, ep, 1, "1", "1", "2");
        }
        let r = e.report();
        let names: Vec<_> = r
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.requests))
            .collect();
        // Sorted by reported fields, then requests, then name.
        assert_eq!(names, [("a", 2), ("other", 2), ("b", 1)]);
    }

    #[test]
    fn fields_past_the_cap_are_counted_as_overflow() {
        let e = Engine::new(DiffSettings {
            max_fields_per_endpoint: 2,
            ..Default::default()
        });
        record(
            &e,
            "ep",
            3,
            r#"{"a":1,"b":1,"c":1}"#,
            r#"{"a":1,"b":1,"c":0}"#,
            r#"{"a":2,"b":2,"c":2}"#,
        );
        let r = e.report();
        let ep = &r.endpoints[0];
        let paths: Vec<_> = ep.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["200.body.a", "200.body.b"]);
        // c, three times as raw and three as noise.
        assert_eq!(ep.fields_overflowed, 6);
    }

    #[test]
    fn thresholds_reload_in_place_and_other_changes_reset() {
        let e = Engine::new(DiffSettings::default());
        // 3 raw, 2 noise of 5: exactly 20% relative, not reported.
        record(&e, "ep", 2, "1", "2", "3");
        record(&e, "ep", 1, "1", "1", "3");
        record(&e, "ep", 2, "1", "1", "1");
        let r = e.report();
        let f = field(&r, "ep", "200.body");
        assert_eq!((f.raw, f.noise, f.reported), (3, 2, false));
        assert!(!e.set_settings(DiffSettings {
            relative_threshold_pct: 19.0,
            ..Default::default()
        }));
        let r = e.report();
        assert!(field(&r, "ep", "200.body").reported);
        assert_eq!(r.relative_threshold_pct, 19.0);
        assert!(e.set_settings(DiffSettings {
            arrays_as_sets: true,
            ..Default::default()
        }));
        assert!(e.report().endpoints.is_empty());
        assert!(e.settings().arrays_as_sets);
    }

    #[test]
    fn reset_forgets_everything() {
        let e = Engine::new(DiffSettings::default());
        record(&e, "ep", 3, "1", "1", "2");
        assert_eq!(e.report().requests, 3);
        e.reset();
        let r = e.report();
        assert_eq!(
            (
                r.requests,
                r.endpoints.len(),
                r.sample_bytes,
                r.samples_dropped
            ),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let e = Engine::new(DiffSettings::default());
        record(
            &e,
            "/svc/world GET /users/{id}",
            4,
            r#"{"a":[1]}"#,
            r#"{"a":[1]}"#,
            r#"{"a":[1,2]}"#,
        );
        let r = e.report();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""kinds":{"array_length":4}"#), "{text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_engine_is_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Engine>();
        let e = std::sync::Arc::new(Engine::new(DiffSettings::default()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || record(&e, "ep", 50, "1", "1", "2"))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(field(&e.report(), "ep", "200.body").raw, 200);
    }
}
