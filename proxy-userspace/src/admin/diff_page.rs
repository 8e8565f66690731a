//! The `/diff` page: what the candidate answers differently, per endpoint.
//!
//! One self-contained HTML document (no external assets, like the
//! delegator page). It fetches `/diff.json` every few seconds and draws
//! each endpoint's request counts and fields (raw and noise counts, the
//! verdict, a sample pair with the whole exchange when one was kept);
//! fields within the noise are hidden unless asked for. Every value from
//! a response is set as text, never as markup: the bodies are whatever the
//! services answered.

pub const DIFF: &str = concat!(
    r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sidetrack diff</title>
<style>
"##,
    table_page_style!(),
    r##" td.path, .mono, pre { font: 12px ui-monospace, monospace; }
 tr.quiet { color: #777; }
 .verdict { font-weight: 600; } tr.reported .verdict { color: #b42318; }
 .counts { color: #444; }
 details { margin: .2em 0 .6em; }
 .pair { display: grid; grid-template-columns: repeat(3, minmax(12em, 1fr)); gap: .8em; max-width: 90em; }
 .pair > div { background: #f6f6f6; padding: .4em; overflow: auto; }
 pre { white-space: pre-wrap; word-break: break-all; margin: .2em 0; }
 .hidden { display: none; }
 #error { color: #b42318; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Response diff</h1>
<p>Each request of a route in diff mode goes to the primary, a second primary (the secondary) and the candidate.
<em>raw</em> counts the requests whose candidate answered a field differently from the primary,
<em>noise</em> those whose secondary did. A field is reported when raw exceeds noise by both thresholds.</p>
<div id="bar">
 <span id="summary">loading…</span>
 <label><input type="checkbox" id="all"> show fields within the noise</label>
 <button id="reset" type="button">Reset</button>
</div>
<div id="error"></div>
<p id="empty" class="hidden">No responses compared yet.</p>
<div id="endpoints"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const open = new Set();
let last = null;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function pct(x) { return (Math.round(x * 100) / 100) + "%"; }
function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch (e) { return body; }
}
function kinds(k) { return Object.entries(k).map(([kind, n]) => kind + " ×" + n).join(", "); }
function message(title, m) {
  const d = el("div");
  d.appendChild(el("strong", null, title));
  if (m.status !== undefined) d.appendChild(el("div", "mono", "status " + m.status));
  else d.appendChild(el("div", "mono", m.method + " " + m.path));
  d.appendChild(el("pre", "headers", m.headers.map(([n, v]) => n + ": " + v).join("\n")));
  d.appendChild(el("pre", "body", m.body_truncated ? m.body + "\n… (cut)" : pretty(m.body)));
  return d;
}
function sample(ep, f, key) {
  const details = el("details", "sample");
  details.open = open.has(key);
  details.addEventListener("toggle", () => { details.open ? open.add(key) : open.delete(key); });
  const s = f.samples[0];
  details.appendChild(el("summary", null, "sample: primary " + (s.primary ?? "(absent)") + " · candidate " + (s.candidate ?? "(absent)")));
  const values = el("div", "pair");
  for (const [i, smp] of f.samples.entries()) {
    const v = el("div", "mono");
    v.appendChild(el("div", null, "#" + (i + 1) + " primary: " + (smp.primary ?? "(absent)")));
    v.appendChild(el("div", null, "#" + (i + 1) + " candidate: " + (smp.candidate ?? "(absent)")));
    values.appendChild(v);
  }
  details.appendChild(values);
  if (s.exchange !== null && s.exchange !== undefined && ep.exchanges[s.exchange]) {
    const x = ep.exchanges[s.exchange];
    details.appendChild(message("request", x.request));
    const pair = el("div", "pair exchange");
    pair.appendChild(message("primary", x.primary));
    pair.appendChild(message("secondary", x.secondary));
    pair.appendChild(message("candidate", x.candidate));
    details.appendChild(pair);
  }
  return details;
}
function endpoint(ep, all) {
  const sec = el("section", "endpoint");
  sec.dataset.name = ep.name;
  sec.appendChild(el("h2", null, ep.name));
  let counts = ep.requests + " requests, " + ep.differing + " with a difference, " + ep.noisy + " with noise; " +
    ep.reported_fields + " field" + (ep.reported_fields === 1 ? "" : "s") + " reported";
  if (ep.fields_overflowed) counts += "; " + ep.fields_overflowed + " differences in fields past the cap";
  sec.appendChild(el("div", "counts", counts));
  const shown = ep.fields.filter((f) => all || f.reported);
  if (!shown.length) {
    sec.appendChild(el("p", "none", ep.fields.length ? "Every difference is within the noise." : "No differences."));
    return sec;
  }
  const table = el("table");
  const head = el("tr");
  for (const h of ["field", "kinds", "raw", "noise", "relative", "absolute", ""]) {
    head.appendChild(el("th", ["raw", "noise", "relative", "absolute"].includes(h) ? "num" : null, h));
  }
  table.appendChild(head);
  for (const f of shown) {
    const tr = el("tr", "field " + (f.reported ? "reported" : "quiet"));
    tr.dataset.path = f.path;
    tr.appendChild(el("td", "path", f.path));
    tr.appendChild(el("td", "kinds", kinds(f.kinds)));
    tr.appendChild(el("td", "num raw", f.raw + " (" + pct(f.raw_pct) + ")"));
    tr.appendChild(el("td", "num noise", f.noise + " (" + pct(f.noise_pct) + ")"));
    tr.appendChild(el("td", "num", pct(f.relative_pct)));
    tr.appendChild(el("td", "num", pct(f.absolute_pct)));
    tr.appendChild(el("td", "verdict", f.reported ? "reported" : "noise"));
    table.appendChild(tr);
    if (f.samples.length) {
      const row = el("tr", "samples");
      const td = el("td");
      td.colSpan = 7;
      td.appendChild(sample(ep, f, ep.name + "\u0000" + f.path));
      row.appendChild(td);
      table.appendChild(row);
    }
  }
  sec.appendChild(table);
  return sec;
}
function draw() {
  const r = last;
  if (!r) return;
  const all = $("all").checked;
  const reported = r.endpoints.reduce((n, e) => n + e.reported_fields, 0);
  $("summary").textContent = r.requests + " requests compared over " + r.endpoints.length + " endpoint" +
    (r.endpoints.length === 1 ? "" : "s") + " in the last " + Math.round(r.since_reset_secs) + " s; " +
    reported + " field" + (reported === 1 ? "" : "s") + " reported (thresholds: relative " +
    r.relative_threshold_pct + "%, absolute " + r.absolute_threshold_pct + "%)" +
    (r.samples_dropped ? "; " + r.samples_dropped + " samples not kept (sample memory full)" : "");
  $("empty").classList.toggle("hidden", r.endpoints.length > 0);
  $("endpoints").replaceChildren(...r.endpoints.map((e) => endpoint(e, all)));
}
let timer = null;
async function load() {
  clearTimeout(timer);
  try {
    const resp = await fetch("diff.json", { cache: "no-store" });
    const body = await resp.text();
    if (!resp.ok) throw new Error(resp.status + " " + body);
    last = JSON.parse(body);
    $("error").textContent = "";
    draw();
  } catch (e) {
    $("error").textContent = "could not load diff.json: " + e.message;
  }
  timer = setTimeout(load, 3000);
}
$("all").addEventListener("change", draw);
$("reset").addEventListener("click", async () => {
  const resp = await fetch("diff/reset", { method: "POST" });
  if (!resp.ok) $("error").textContent = "reset: " + resp.status + " " + await resp.text();
  open.clear();
  load();
});
if (new URLSearchParams(location.search).has("all")) $("all").checked = true;
load();
</script>
</body>
</html>
"##
);
