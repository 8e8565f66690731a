//! The soak's outputs: `samples.json` (every sample and verdict),
//! `summary.md` (the tables, also printed) and `soak.svg` (a panel per
//! series over time, the warm-up shaded, the medians of the first and last
//! thirds drawn where a series is judged).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::{Outcome, SERIES, load};

pub fn write(o: &Outcome, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("samples.json"), serde_json::to_string_pretty(o)?)?;
    let text = summary(o);
    println!("{text}");
    fs::write(dir.join("summary.md"), &text)?;
    plot(o, &dir.join("soak.svg")).context("plot soak.svg")?;
    crate::cmd::note(format!(
        "wrote {0}/samples.json, {0}/summary.md, {0}/soak.svg (and the proxy's log and last /metrics)",
        dir.display()
    ));
    Ok(())
}

fn summary(o: &Outcome) -> String {
    let mut t = String::new();
    let opts = &o.options;
    let _ = writeln!(
        t,
        "# Soak: {:.1} min on {} ({:.0} s warm-up, a sample every {:.0} s, tolerances x{})\n",
        opts.duration_secs / 60.0,
        o.machine,
        opts.warmup_secs,
        opts.every_secs,
        opts.tolerance_factor
    );
    if o.problems.is_empty() {
        t.push_str("**Passed**: no series trends upward, no request failed.\n\n");
    } else {
        t.push_str("**Failed**:\n\n");
        for p in &o.problems {
            let _ = writeln!(t, "- {p}");
        }
        t.push('\n');
    }
    t.push_str(
        "## Series after the warm-up\n\nStart and end: medians of the first and last thirds.\n\n\
         | series | start | end | growth | allowed | slope /min | |\n|---|--:|--:|--:|--:|--:|---|\n",
    );
    for s in &SERIES {
        if s.tolerance.is_some() && s.judged(&o.options).is_none() {
            let _ = writeln!(
                t,
                "| {} | | | | | | not judged: needs a warm-up of {:.0} s |",
                s.title, s.min_warmup_secs
            );
        }
        if let Some(tr) = o.trends.iter().find(|x| x.key == s.key) {
            let _ = writeln!(
                t,
                "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:+.3} | {} |",
                s.title,
                tr.start,
                tr.end,
                tr.growth,
                tr.allowed,
                tr.slope_per_min,
                if tr.upward { "**upward**" } else { "ok" }
            );
        }
    }
    t.push_str(
        "\n## Requests\n\n| kind | | ok | expected refusals | retried | failed |\n|---|---|--:|--:|--:|--:|\n",
    );
    for r in &o.loads {
        for (kind, k) in &r.kinds {
            let _ = writeln!(
                t,
                "| {kind} | {} | {} | {} | {} | {} |",
                if load::well_formed(kind) {
                    "well-formed"
                } else {
                    "hostile"
                },
                k.ok,
                k.expected,
                k.retried,
                k.failed
            );
        }
    }
    let all = load::total(&o.loads);
    let _ = writeln!(
        t,
        "| **all** | | {} | {} | {} | {} |\n",
        all.ok, all.expected, all.retried, all.failed
    );
    for r in &o.loads {
        for (kind, k) in r.kinds.iter().filter(|(_, k)| !k.examples.is_empty()) {
            let _ = writeln!(t, "{kind} failures, the first {}:", k.examples.len());
            for e in &k.examples {
                let _ = writeln!(t, "- {e}");
            }
            t.push('\n');
        }
    }
    t.push_str("## The proxy's counters at the end\n\n");
    for (name, v) in &o.proxy_counters {
        let _ = writeln!(t, "- `{name}` {v}");
    }
    let _ = writeln!(
        t,
        "\nThe proxy's settings beside the demo's:\n\n```yaml\n{}```",
        o.limits.yaml()
    );
    t
}

/// A tick label with a decimal when the axis spans little.
fn fmt_tick(v: f64, span: f64) -> String {
    if span < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// One panel per series, three across.
fn plot(o: &Outcome, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow!("{e:?}");
    let rows = SERIES.len().div_ceil(3);
    let root = SVGBackend::new(path, (1350, 250 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((rows, 3));
    let minutes = o.options.duration_secs / 60.0;
    let warmup = o.options.warmup_secs / 60.0;
    for (panel, s) in panels.iter().zip(&SERIES) {
        let pts: Vec<(f64, f64)> = o
            .samples
            .iter()
            .filter_map(|x| Some((x.t_secs / 60.0, *x.values.get(s.key)?)))
            .collect();
        let trend = o.trends.iter().find(|t| t.key == s.key);
        let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let (lo, hi) = if pts.is_empty() {
            (0.0, 1.0)
        } else {
            let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1.0);
            (
                (lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::MIN }),
                hi + pad,
            )
        };
        let verdict = match trend {
            Some(t) if t.upward => " — UPWARD",
            Some(_) => " — flat",
            None => "",
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{}{verdict}", s.title), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..minutes.max(0.1), lo..hi)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_desc("minutes")
            .x_label_formatter(&|x| fmt_tick(*x, minutes))
            .y_label_formatter(&|v| fmt_tick(*v, hi - lo))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, lo), (warmup, hi)],
                RGBColor(225, 225, 225).filled(),
            )))
            .map_err(|e| err(&e))?;
        let color = if trend.is_some_and(|t| t.upward) {
            RED
        } else {
            BLUE
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(1)))
            .map_err(|e| err(&e))?;
        if let Some(t) = trend {
            // The thirds after the warm-up, with their medians.
            let after: Vec<f64> = pts.iter().map(|p| p.0).filter(|&x| x >= warmup).collect();
            let third = after.len() / 3;
            if third > 0 {
                let first = (after[0], after[third - 1]);
                let last = (after[after.len() - third], after[after.len() - 1]);
                for ((a, b), v) in [(first, t.start), (last, t.end)] {
                    chart
                        .draw_series(LineSeries::new(vec![(a, v), (b, v)], BLACK.stroke_width(3)))
                        .map_err(|e| err(&e))?;
                }
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
