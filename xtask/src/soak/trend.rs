//! Whether a series trends upward after the warm-up (pure).
//!
//! The samples after the warm-up are cut in thirds; the series' level at
//! the start is the median of the first third and at the end the median
//! of the last, so that a spike (a burst of idle connections, another
//! build on the machine) moves neither much. It trends upward when the
//! end exceeds the start by more than its tolerance: `abs`, or `rel` of
//! the start, whichever is larger. The least-squares slope over the same
//! samples is reported beside it, for the reader: a leak shows as the two
//! agreeing.

use serde::Serialize;

/// How much a series may grow between the first and last thirds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// The growth allowed from `start`, scaled by `factor` (short runs are
    /// noisier: their thirds are seconds apart).
    pub fn allowed(self, start: f64, factor: f64) -> f64 {
        factor * self.abs.max(self.rel * start.abs())
    }
}

/// One series' verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Trend {
    pub key: &'static str,
    /// Samples after the warm-up.
    pub samples: usize,
    /// Medians of the first and last thirds.
    pub start: f64,
    pub end: f64,
    pub growth: f64,
    pub allowed: f64,
    /// Least squares, per minute.
    pub slope_per_min: f64,
    pub upward: bool,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The least-squares slope of `(t, v)` points, per unit of `t`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (st, sv) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(t, v)| (a + t, b + v));
    let (mt, mv) = (st / n, sv / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), &(t, v)| {
        (a + (t - mt) * (v - mv), b + (t - mt) * (t - mt))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Judges the points `(seconds, value)` that come after the warm-up;
/// `None` with fewer than six (two a third).
pub fn judge(
    key: &'static str,
    points: &[(f64, f64)],
    tol: Tolerance,
    factor: f64,
) -> Option<Trend> {
    if points.len() < 6 {
        return None;
    }
    let third = points.len() / 3;
    let values = |p: &[(f64, f64)]| p.iter().map(|&(_, v)| v).collect::<Vec<_>>();
    let start = median(&values(&points[..third]));
    let end = median(&values(&points[points.len() - third..]));
    let growth = end - start;
    let allowed = tol.allowed(start, factor);
    Some(Trend {
        key,
        samples: points.len(),
        start,
        end,
        growth,
        allowed,
        slope_per_min: slope(points) * 60.0,
        upward: growth > allowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        abs: 10.0,
        rel: 0.05,
    };

    fn line(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 5.0, f(i as f64 * 5.0)))
            .collect()
    }

    #[test]
    fn flat_and_noisy_series_pass() {
        let flat = judge("x", &line(60, |_| 1000.0), TOL, 1.0).unwrap();
        assert!(!flat.upward && flat.growth == 0.0 && flat.slope_per_min == 0.0);
        // Spikes and an alternating wobble of ±30 around 1000: the medians
        // do not move beyond 50 (5%).
        let noisy = line(60, |t| {
            let i = (t / 5.0) as usize;
            1000.0
                + if i.is_multiple_of(2) { 30.0 } else { -30.0 }
                + if i.is_multiple_of(17) { 900.0 } else { 0.0 }
        });
        assert!(!judge("x", &noisy, TOL, 1.0).unwrap().upward);
        // A series that falls (a cache settling) is not a leak.
        assert!(
            !judge("x", &line(60, |t| 2000.0 - t), TOL, 1.0)
                .unwrap()
                .upward
        );
    }

    #[test]
    fn a_steady_climb_fails_and_the_factor_loosens() {
        // 1 unit a second over 300 s: the thirds' medians are 200 apart.
        let t = judge("x", &line(60, |t| 1000.0 + t), TOL, 1.0).unwrap();
        assert!(t.upward, "{t:?}");
        assert!((t.growth - 200.0).abs() < 1e-9, "{t:?}");
        assert!((t.slope_per_min - 60.0).abs() < 1e-9, "{t:?}");
        // 5% of the start (1047.5: the first third's middle) beats 10.
        assert!(
            (t.allowed - 0.05 * t.start).abs() < 1e-9 && t.start == 1047.5,
            "{t:?}"
        );
        // Small absolute growth stays under `abs`.
        let small = judge("x", &line(60, |t| t / 50.0), TOL, 1.0).unwrap();
        assert!(!small.upward && small.allowed == 10.0, "{small:?}");
        let loose = judge("x", &line(60, |t| 1000.0 + t / 4.0), TOL, 2.0).unwrap();
        assert!(!loose.upward, "{loose:?}");
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        assert!(judge("x", &line(5, |t| t), TOL, 1.0).is_none());
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
    }
}
