use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;

fn settings(max_rows: usize) -> config::Dashboard {
    config::Dashboard {
        max_rows,
        ..config::Dashboard::default()
    }
}

fn key(name: &str, dst: &str, via: Via) -> Key {
    Key {
        name: name.into(),
        dst: dst.into(),
        via,
        rule: String::new(),
    }
}

fn ok(ms: u64) -> Sample {
    Sample {
        latency: Duration::from_millis(ms),
        status: 200,
        proxy_error: false,
        bytes_in: 100,
        bytes_out: 1000,
    }
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

#[test]
fn latency_buckets_are_ordered_and_hold_their_values() {
    let mut last_upper = 0;
    for i in 0..LATENCY_BUCKETS {
        let (lo, hi) = bucket_bounds(i);
        assert_eq!(
            lo,
            last_upper,
            "bucket {i} starts where {} ends",
            i.max(1) - 1
        );
        assert!(hi > lo);
        assert_eq!(latency_bucket(Duration::from_micros(lo)), i, "{lo} µs");
        assert_eq!(
            latency_bucket(Duration::from_micros(hi - 1)),
            i,
            "{} µs",
            hi - 1
        );
        // Four a doubling: no bucket wider than a quarter of its start.
        assert!(i == 0 || (hi - lo) * 4 <= lo, "bucket {i}: {lo}..{hi}");
        last_upper = hi;
    }
    assert_eq!(last_upper, 1 << LAST_OCTAVE);
    assert_eq!(latency_bucket(Duration::ZERO), 0);
    assert_eq!(
        latency_bucket(Duration::from_secs(3600)),
        LATENCY_BUCKETS - 1,
        "longer than the last bound: counted in the last bucket"
    );
}

#[test]
fn percentiles_are_within_a_bucket_of_the_truth() {
    let t0 = Instant::now();
    let row = Row::new(key("/svc/a", "/d", Via::Base), t0, 10);
    // 90 at 10 ms, 9 at 100 ms, 1 at 1 s.
    for (n, ms) in [(90, 10), (9, 100), (1, 1000)] {
        for _ in 0..n {
            row.record(secs(t0, 5), &ok(ms));
        }
    }
    let t = row.window(secs(t0, 6), 60);
    let close = |got: Option<f64>, want: f64| {
        let got = got.unwrap();
        assert!(
            (got - want).abs() <= want * 0.125,
            "{got} is not about {want}"
        );
    };
    close(t.quantile_ms(0.50), 10.0);
    close(t.quantile_ms(0.95), 100.0);
    close(t.quantile_ms(0.99), 100.0);
    close(t.quantile_ms(1.0), 1000.0);
    assert_eq!(Totals::default().quantile_ms(0.5), None);
}

#[test]
fn windows_count_the_last_1_5_and_15_minutes_in_whole_buckets() {
    let t0 = Instant::now();
    let row = Row::new(key("/svc/a", "/d", Via::Base), t0, 10);
    // 10 requests at 30 s, 20 at 400 s, 30 at 885 s; read at 899 s.
    for (n, at) in [(10, 30), (20, 400), (30, 885)] {
        for _ in 0..n {
            row.record(secs(t0, at), &ok(1));
        }
    }
    let now = secs(t0, 899);
    let [m1, m5, m15] = WINDOWS.map(|(_, s)| row.window(now, s));
    assert_eq!((m1.requests, m5.requests, m15.requests), (30, 30, 60));
    // 1 minute: the current bucket (890..899) and the five before it.
    assert_eq!(m1.secs, 59.0);
    assert_eq!(m15.secs, 899.0, "no more than has passed since the start");
    // Later, the first requests fall out of the ring, and the 5-minute
    // window holds the bucket of 885 s until 1180 s.
    let later = secs(t0, 1179);
    assert_eq!(row.window(later, 900).requests, 50);
    assert_eq!(row.window(later, 300).requests, 30);
    assert_eq!(row.window(secs(t0, 1180), 300).requests, 0);
    assert_eq!(row.window(secs(t0, 1180), 900).requests, 50);
    // A slot reused a lap later (that of 400 s) counts only the new lap.
    row.record(secs(t0, 1300), &ok(1));
    assert_eq!(row.window(secs(t0, 1305), 60).requests, 1);
    assert_eq!(row.window(secs(t0, 1305), 900).requests, 31);
}

#[test]
fn a_sample_older_than_the_ring_is_dropped() {
    let t0 = Instant::now();
    let row = Row::new(key("/svc/a", "/d", Via::Base), t0, 10);
    row.record(secs(t0, 1000), &ok(1));
    // Bucket 10 shares the slot of bucket 100, which is newer.
    row.record(secs(t0, 100), &ok(1));
    assert_eq!(row.window(secs(t0, 1000), 900).requests, 1);
}

#[test]
fn errors_are_split_and_success_is_the_rest() {
    let t0 = Instant::now();
    let row = Row::new(key("/svc/a", "/d", Via::Base), t0, 10);
    let at = secs(t0, 1);
    for status in [200, 204, 404, 500, 503] {
        row.record(at, &Sample { status, ..ok(1) });
    }
    // The proxy's own 502, and a closed connection (no status).
    for status in [502, 0] {
        row.record(
            at,
            &Sample {
                status,
                proxy_error: true,
                ..ok(1)
            },
        );
    }
    let t = row.window(at, 60);
    assert_eq!((t.requests, t.errors_5xx, t.errors_proxy), (7, 2, 2));
    assert_eq!((t.bytes_in, t.bytes_out), (700, 7000));
    let view = WindowView::of(&t, None);
    assert_eq!(view.success_rate, Some(0.4286));
    assert_eq!(view.rps, 7.0, "7 requests in the 1 s since the start");
}

#[test]
fn no_count_is_lost_when_threads_cross_buckets_together() {
    let t0 = Instant::now();
    let row = Arc::new(Row::new(key("/svc/a", "/d", Via::Base), t0, 1));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let row = row.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    // Every thread walks the same 800 s, a new bucket
                    // each 25 samples.
                    row.record(t0 + Duration::from_millis(i * 40), &ok(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(row.window(secs(t0, 800), 900).requests, 80_000);
}

#[test]
fn rows_are_capped_and_the_rest_goes_to_other() {
    let t0 = Instant::now();
    let d = Dashboard::new(settings(2), t0);
    let a = d.row(&key("/svc/a", "/d1", Via::Base), t0);
    let b = d.row(&key("/svc/a", "/d2", Via::Override), t0);
    let c = d.row(&key("/svc/c", "/d3", Via::Base), t0);
    assert!(Arc::ptr_eq(
        &a,
        &d.row(&key("/svc/a", "/d1", Via::Base), t0)
    ));
    assert_eq!(c.key().name, OTHER);
    assert_eq!(d.rows_used(), 2);
    for row in [&a, &b, &c] {
        row.record(secs(t0, 1), &ok(1));
    }
    let snap = d.snapshot(secs(t0, 2));
    let names: Vec<_> = snap.names.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["(other)", "/svc/a"]);
    assert_eq!(snap.names[1].rows.len(), 2);

    // A row still held (its route is cached) is kept however quiet;
    // one that nothing holds is given back once 15 minutes passed
    // without a request.
    drop(b);
    let later = secs(t0, 895);
    assert_eq!(
        d.row(&key("/svc/c", "/d3", Via::Base), later).key().name,
        OTHER
    );
    let later = secs(t0, 905);
    let c = d.row(&key("/svc/c", "/d3", Via::Base), later);
    assert_eq!(c.key().name, "/svc/c");
    assert_eq!(d.rows_used(), 2);
}

#[test]
fn requests_without_a_destination_are_counted_by_key() {
    let t0 = Instant::now();
    let d = Dashboard::new(settings(10), t0);
    let k = key(UNIDENTIFIED, NO_DST, Via::Base);
    for _ in 0..3 {
        d.record_keyed(
            &k,
            secs(t0, 1),
            &Sample {
                status: 400,
                proxy_error: true,
                ..ok(0)
            },
        );
    }
    let snap = d.snapshot(secs(t0, 2));
    let w = &snap.names[0].rows[0].windows.m1;
    assert_eq!((w.requests, w.errors_proxy), (3, 3));
    assert!(
        !w.flagged,
        "requests that reached no version are not judged"
    );
}

fn totals(requests: u64, errors: u64, latency_ms: u64) -> Totals {
    let mut t = Totals {
        requests,
        errors_5xx: errors,
        secs: 60.0,
        ..Totals::default()
    };
    t.latency[latency_bucket(Duration::from_millis(latency_ms))] = requests;
    t
}

#[test]
fn the_flag_rule() {
    let rule = FlagRule { min_requests: 20 };
    let judge = |row: Totals, siblings: &[Totals]| {
        let siblings: Vec<&Totals> = siblings.iter().collect();
        rule.judge(&row, &siblings)
    };
    let healthy = totals(100, 1, 10);
    // Errors: more than twice the siblings' rate and 5 points above it.
    let why = judge(totals(100, 10, 10), std::slice::from_ref(&healthy)).unwrap();
    assert_eq!(why, "errors 10.0% against 1.0% on its siblings");
    assert_eq!(
        judge(totals(100, 5, 10), std::slice::from_ref(&healthy)),
        None,
        "4 points"
    );
    assert_eq!(
        judge(totals(100, 30, 10), &[totals(100, 20, 10)]),
        None,
        "not twice"
    );
    assert_eq!(
        judge(totals(19, 19, 10), std::slice::from_ref(&healthy)),
        None,
        "too few requests"
    );
    assert_eq!(
        judge(totals(100, 50, 10), &[totals(19, 0, 10)]),
        None,
        "too few requests on the siblings"
    );
    assert_eq!(judge(totals(100, 50, 10), &[]), None, "no sibling");
    // The siblings' requests count together.
    assert!(judge(totals(100, 50, 10), &[totals(10, 0, 10), totals(10, 0, 10)]).is_some());
    // p99: more than twice the best sibling's and 5 ms above it.
    let why = judge(totals(100, 1, 200), &[healthy.clone(), totals(100, 1, 150)]).unwrap();
    assert!(why.starts_with("p99 2"), "{why}");
    assert!(why.ends_with("ms on its best sibling"), "{why}");
    assert_eq!(
        judge(totals(100, 1, 3), &[totals(100, 1, 1)]),
        None,
        "less than 5 ms above"
    );
    assert_eq!(
        judge(totals(100, 1, 200), &[totals(19, 0, 10)]),
        None,
        "the sibling served too few to compare"
    );
    // Both at once.
    let why = judge(totals(100, 50, 200), &[healthy]).unwrap();
    assert!(why.contains("; p99"), "{why}");
}

#[test]
fn the_snapshot_flags_the_version_that_is_worse() {
    let t0 = Instant::now();
    let d = Dashboard::new(settings(10), t0);
    let v1 = d.row(&key("/svc/world", "/#/io.l5d.fs/world-v1", Via::Base), t0);
    let v2 = d.row(
        &key("/svc/world", "/#/io.l5d.fs/world-v2", Via::Override),
        t0,
    );
    let at = secs(t0, 30);
    for _ in 0..40 {
        v1.record(at, &ok(2));
        v2.record(
            at,
            &Sample {
                status: 503,
                ..ok(2)
            },
        );
    }
    let snap = d.snapshot(secs(t0, 31));
    let json = serde_json::to_value(&snap).unwrap();
    let rows = &json["names"][0]["rows"];
    assert_eq!(rows[0]["dst"], "/#/io.l5d.fs/world-v1");
    assert_eq!(rows[0]["via"], "base");
    assert_eq!(rows[0]["windows"]["1m"]["flagged"], false);
    assert_eq!(rows[1]["via"], "override");
    let w = &rows[1]["windows"]["15m"];
    assert_eq!(w["flagged"], true);
    assert_eq!(w["why"], "errors 100.0% against 0.0% on its siblings");
    assert_eq!(w["errors_5xx"], 40);
    assert_eq!(w["success_rate"], 0.0);
    assert_eq!(rows[0]["windows"]["5m"]["success_rate"], 1.0);
    assert_eq!(rows[0]["windows"]["5m"]["rps"], 1.29, "40 requests in 31 s");
    // Quiet names are left out.
    let quiet = d.snapshot(secs(t0, 1000));
    assert!(quiet.names.is_empty());
}

#[test]
fn via_comes_from_the_labels() {
    assert_eq!(via_of(false, ""), Via::Base);
    assert_eq!(via_of(false, "beta"), Via::Rule);
    assert_eq!(via_of(true, "beta"), Via::Override);
    assert_eq!(
        via_of(true, crate::observe::metrics::MIRROR_LABEL),
        Via::Mirror
    );
}
