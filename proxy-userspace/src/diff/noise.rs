//! Noise cancelling, Diffy's rule.
//!
//! Each request goes to the primary, to a second instance of the primary
//! (the secondary) and to the candidate. Per endpoint and field the engine
//! counts `raw`, the requests whose candidate response differs from the
//! primary's in that field, and `noise`, those whose secondary response
//! does (two instances of the same code disagree there: timestamps, random
//! ids, a cache's age). Of the endpoint's `requests`, a field is
//! *reported* when
//!
//! ```text
//! raw > noise
//!   and 100 * (raw - noise) / (raw + noise) > relative_threshold_pct
//!   and 100 * (raw - noise) / requests      > absolute_threshold_pct
//! ```
//!
//! All three comparisons are strict: a field exactly at a threshold is
//! not reported. This is Diffy's `DifferencesFilterFactory` (its flags'
//! help calls the thresholds inclusive, its code compares with `>`; this
//! follows the code). The relative difference says the candidate differs
//! in the field clearly more often than the primaries differ among
//! themselves; the absolute one that it does so in more than a sliver of
//! the traffic.
//!
//! The divisions are done as multiplications (`100 * (raw - noise) >
//! relative * (raw + noise)`), exact for counts below 2^53, so a field
//! exactly at a threshold is not pushed over it by rounding.

use serde::{Deserialize, Serialize};

/// The counts of one field and what the rule makes of them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `100 * raw / requests`.
    pub raw_pct: f64,
    /// `100 * noise / requests`.
    pub noise_pct: f64,
    /// `100 * |raw - noise| / (raw + noise)`; 0 when both are 0.
    pub relative_pct: f64,
    /// `100 * |raw - noise| / requests`.
    pub absolute_pct: f64,
    pub reported: bool,
}

/// Applies the rule to one field's counts.
pub fn judge(
    raw: u64,
    noise: u64,
    requests: u64,
    relative_threshold_pct: f64,
    absolute_threshold_pct: f64,
) -> Verdict {
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    let gap = raw.abs_diff(noise);
    let reported = raw > noise
        && 100.0 * gap as f64 > relative_threshold_pct * (raw + noise) as f64
        && 100.0 * gap as f64 > absolute_threshold_pct * requests as f64;
    Verdict {
        raw_pct: pct(raw, requests),
        noise_pct: pct(noise, requests),
        relative_pct: pct(gap, raw + noise),
        absolute_pct: pct(gap, requests),
        reported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: f64 = 20.0;
    const A: f64 = 0.03;

    fn reported(raw: u64, noise: u64, requests: u64) -> bool {
        judge(raw, noise, requests, R, A).reported
    }

    #[test]
    fn zero_noise_reports_what_passes_the_absolute_threshold() {
        // relative is 100% whenever noise is 0 and raw is not.
        assert!(reported(1, 0, 1));
        assert!(reported(1, 0, 3000)); // 0.0333% > 0.03%
        assert!(!reported(3, 0, 10_000)); // exactly 0.03%
        assert!(reported(4, 0, 10_000));
        assert!(!reported(1, 0, 10_000)); // 0.01%
        assert!(!reported(0, 0, 100));
        assert!(!reported(0, 0, 0));
    }

    #[test]
    fn the_relative_threshold_is_strict() {
        // (3 - 2) / (3 + 2) = 20%: exactly at, not reported.
        assert!(!reported(3, 2, 100));
        assert!(!reported(300, 200, 1000));
        // 301 vs 200: 101/501 = 20.16%: just over.
        assert!(reported(301, 200, 1000));
        // 299 vs 200: 99/499 = 19.8%: just under.
        assert!(!reported(299, 200, 1000));
        // 15 vs 10: 20% again, whatever the scale.
        assert!(!reported(15, 10, 25));
        assert!(reported(16, 10, 26));
    }

    #[test]
    fn the_absolute_threshold_is_strict() {
        // 100% relative; 3 of 10,000 is exactly 0.03%.
        assert!(!reported(3, 0, 10_000));
        assert!(reported(3, 0, 9_999));
        // 6 - 3 = 3 of 10,000, relative 33%: at the absolute threshold.
        assert!(!reported(6, 3, 10_000));
        assert!(reported(7, 3, 10_000));
        // Just over and under with a threshold that is not a binary
        // fraction: 0.03% of 100,000 is 30.
        assert!(!reported(30, 0, 100_000));
        assert!(reported(31, 0, 100_000));
    }

    #[test]
    fn noise_at_or_above_raw_is_never_reported() {
        assert!(!reported(10, 10, 10));
        assert!(!reported(5, 10, 10));
        assert!(!reported(0, 10, 10));
        // Even with thresholds of zero.
        assert!(!judge(10, 10, 10, 0.0, 0.0).reported);
        assert!(judge(11, 10, 11, 0.0, 0.0).reported);
    }

    #[test]
    fn tiny_request_counts_pass_the_absolute_threshold_easily() {
        // One request that differs is 100% of one.
        assert!(reported(1, 0, 1));
        assert!(reported(2, 1, 2)); // relative 33%
        assert!(!reported(1, 1, 1));
        // A threshold of 100%: never reachable, as the gap is at most all
        // the requests.
        assert!(!judge(1, 0, 1, R, 100.0).reported);
    }

    #[test]
    fn the_worked_example_of_docs_shadowing_md() {
        for (raw, noise, want) in [
            (10_000, 10_000, false),
            (480, 0, true),
            (40, 30, false),
            (5, 1, true),
            (4, 1, false),
        ] {
            assert_eq!(reported(raw, noise, 10_000), want, "{raw} vs {noise}");
        }
    }

    #[test]
    fn percentages_are_of_the_requests_and_of_the_sum() {
        let v = judge(30, 10, 200, R, A);
        assert_eq!(v.raw_pct, 15.0);
        assert_eq!(v.noise_pct, 5.0);
        assert_eq!(v.relative_pct, 50.0);
        assert_eq!(v.absolute_pct, 10.0);
        assert!(v.reported);
        let none = judge(0, 0, 0, R, A);
        assert_eq!(
            (none.raw_pct, none.relative_pct, none.absolute_pct),
            (0.0, 0.0, 0.0)
        );
    }
}
