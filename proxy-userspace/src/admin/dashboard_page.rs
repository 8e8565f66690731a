//! The `/dashboard` page: per logical name, each version its requests went
//! to and how (base dtab, rule, override, mirror), over the last 1, 5 or
//! 15 minutes.
//!
//! One self-contained HTML document (no external assets, like the other
//! admin pages). It fetches `/dashboard.json` every two seconds and redraws
//! the tables in place, no reload. Names and destinations come from
//! requests (a Host header), so every value is set as text, never as
//! markup. Each cell carries a class named after its JSON field, so the
//! tests (and a curious user) can find a value.

pub const DASHBOARD: &str = concat!(
    r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sidetrack dashboard</title>
<style>
"##,
    table_page_style!(),
    r##" td.dst { font: 12px ui-monospace, monospace; }
 .via { display: inline-block; padding: 0 .4em; border-radius: .3em; background: #eee; font-size: 12px; }
 .via-override { background: #fde9c8; } .via-rule { background: #dbeafe; } .via-mirror { background: #e9e0fb; }
 tr.flagged td { background: #fdecea; } td.why { color: #b42318; }
 .hidden { display: none; }
 #error { color: #b42318; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Versions</h1>
<p>Each logical name, each destination (version) its requests went to, and how the destination was chosen.
Success excludes 5xx answers and the proxy's own errors (refused, no connection, a backend that died);
a version is flagged when its error rate or p99 is much worse than its siblings'.</p>
<div id="bar">
 <span>Window:
  <label><input type="radio" name="window" value="1m" checked> 1 min</label>
  <label><input type="radio" name="window" value="5m"> 5 min</label>
  <label><input type="radio" name="window" value="15m"> 15 min</label>
 </span>
 <span id="summary">loading…</span>
</div>
<div id="error"></div>
<p id="empty" class="hidden">No requests in the last 15 minutes.</p>
<div id="names"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let last = null;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function windowName() {
  const w = document.querySelector('input[name="window"]:checked');
  return w ? w.value : "1m";
}
const ms = (v) => v === null ? "–" : v.toFixed(1) + " ms";
const pct = (v) => v === null ? "–" : (v * 100).toFixed(1) + "%";
function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}
const COLUMNS = [
  ["requests", "requests", (w) => String(w.requests)],
  ["rps", "req/s", (w) => w.rps.toFixed(2)],
  ["success_rate", "success", (w) => pct(w.success_rate)],
  ["errors_5xx", "5xx", (w) => String(w.errors_5xx)],
  ["errors_proxy", "proxy errors", (w) => String(w.errors_proxy)],
  ["p50_ms", "p50", (w) => ms(w.p50_ms)],
  ["p95_ms", "p95", (w) => ms(w.p95_ms)],
  ["p99_ms", "p99", (w) => ms(w.p99_ms)],
  ["bytes_in", "bytes in", (w) => bytes(w.bytes_in)],
  ["bytes_out", "bytes out", (w) => bytes(w.bytes_out)],
];
function table(rows, win) {
  const t = el("table");
  const head = el("tr");
  head.append(el("th", null, "destination"), el("th", null, "via"));
  for (const [, title] of COLUMNS) head.append(el("th", "num", title));
  head.append(el("th", null, ""));
  t.append(head);
  for (const r of rows) {
    const w = r.windows[win];
    const tr = el("tr", w.flagged ? "flagged" : null);
    tr.dataset.dst = r.dst;
    tr.dataset.via = r.via;
    tr.append(el("td", "dst", r.dst));
    const via = el("td", "via-cell");
    via.append(el("span", "via via-" + r.via, r.rule ? r.via + " " + r.rule : r.via));
    tr.append(via);
    for (const [field, , show] of COLUMNS) tr.append(el("td", "num " + field, show(w)));
    tr.append(el("td", "why", w.flagged ? "⚠ " + w.why : ""));
    t.append(tr);
  }
  return t;
}
function draw() {
  const d = last;
  if (!d) return;
  const win = windowName();
  let rows = 0, flagged = 0;
  const names = $("names");
  names.replaceChildren();
  for (const n of d.names) {
    const section = el("section");
    section.dataset.name = n.name;
    section.append(el("h2", null, n.name), table(n.rows, win));
    names.append(section);
    rows += n.rows.length;
    flagged += n.rows.filter((r) => r.windows[win].flagged).length;
  }
  $("empty").className = d.names.length ? "hidden" : "";
  $("summary").textContent = d.names.length + " names, " + rows + " rows shown, " + flagged +
    " flagged; " + d.rows_used + " of " + d.max_rows + " rows in use, " + d.bucket_secs +
    " s buckets; updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("/dashboard.json", { cache: "no-store" });
    if (!r.ok) throw new Error("/dashboard.json: " + r.status + " " + (await r.text()));
    last = await r.json();
    $("error").textContent = "";
    draw();
  } catch (e) {
    $("error").textContent = String(e) + " (showing the last values)";
  }
  setTimeout(refresh, 2000);
}
for (const input of document.querySelectorAll('input[name="window"]')) {
  input.addEventListener("change", draw);
}
const asked = new URLSearchParams(location.search).get("window");
if (asked) {
  const input = document.querySelector('input[name="window"][value="' + CSS.escape(asked) + '"]');
  if (input) input.checked = true;
}
refresh();
</script>
</body>
</html>
"##
);
