//! The `/delegator` page: type a path and a dtab, see how the path delegates.
//!
//! One self-contained HTML document (no external assets: the admin port is
//! often reached through a port-forward with no internet). It posts to
//! `/delegator.json` and draws the explanation tree as nested lists, the
//! branch binding takes marked, every other branch shown too.

pub const DELEGATOR: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sidetrack delegator</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
 h1 { font-size: 1.3em; }
 label { display: block; margin: .6em 0 .2em; font-weight: 600; }
 input, textarea { width: 100%; max-width: 60em; font: 13px ui-monospace, monospace; padding: .3em; }
 textarea { height: 6em; }
 button { display: block; margin-top: .8em; padding: .3em 1.2em; }
 #base { white-space: pre-wrap; background: #f4f4f4; padding: .5em; max-width: 60em; font: 12px ui-monospace, monospace; }
 ul.tree, ul.tree ul { list-style: none; padding-left: 1.2em; border-left: 1px dotted #aaa; }
 .node { font: 13px ui-monospace, monospace; }
 .kind { display: inline-block; min-width: 6em; font-weight: 600; }
 .leaf .kind { color: #17803d; } .neg .kind { color: #888; } .fail .kind, .exception .kind { color: #b42318; }
 .dentry { color: #555; } .bound { color: #17803d; }
 #error { color: #b42318; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Delegator</h1>
<p>How a name binds through the base dtab plus the dtab you type (as a request's <code>l5d-dtab</code> would add it).</p>
<form id="form">
 <label for="path">Path</label>
 <input id="path" name="path" value="/svc/" autocomplete="off">
 <label for="dtab">Dtab override</label>
 <textarea id="dtab" name="dtab" placeholder="/host/world => /srv/world-v2"></textarea>
 <label for="headers">Request headers (the routing rules look at them)</label>
 <textarea id="headers" name="headers" placeholder="x-customer: acme&#10;cookie: plan=free"></textarea>
 <button id="go" type="submit">Delegate</button>
</form>
<label>Base dtab</label>
<div id="base">loading…</div>
<div id="rule"></div>
<div id="error"></div>
<ul class="tree" id="result"></ul>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function render(node, weight) {
  const li = el("li", "node " + node.type);
  li.dataset.type = node.type;
  const line = el("div");
  if (weight !== undefined) line.appendChild(el("span", "weight", weight + " × "));
  line.appendChild(el("span", "kind", node.type));
  line.appendChild(el("span", "path", node.path));
  if (node.dentry) line.appendChild(el("span", "dentry", "  via " + node.dentry.prefix + " => " + node.dentry.dst));
  li.appendChild(line);
  if (node.type === "leaf" && node.bound) {
    const addrs = node.bound.addr.addrs.map((a) => a.ip + ":" + a.port).join(", ");
    li.appendChild(el("div", "bound", "bound " + node.bound.id + (node.bound.path && node.bound.path !== "/" ? " residual " + node.bound.path : "") + " → " + (addrs || "no endpoints")));
  }
  if (node.type === "exception") li.appendChild(el("div", "message", node.message));
  const kids = node.type === "delegate" ? [[node.delegate]] :
               node.type === "alt" ? node.alt.map((t) => [t]) :
               node.type === "union" ? node.union.map((w) => [w.tree, w.weight]) : [];
  if (kids.length) {
    const ul = el("ul");
    for (const [t, w] of kids) ul.appendChild(render(t, w));
    li.appendChild(ul);
  }
  return li;
}
async function delegate(ev) {
  if (ev) ev.preventDefault();
  $("error").textContent = "";
  const result = $("result");
  result.replaceChildren();
  const resp = await fetch("delegator.json", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ path: $("path").value, dtab: $("dtab").value, headers: $("headers").value }),
  });
  const body = await resp.text();
  if (!resp.ok) { $("error").textContent = body; return; }
  const tree = JSON.parse(body);
  $("rule").textContent = tree.rule ? "rule " + tree.rule.name + " adds " + tree.rule.dtab : "no rule matches";
  result.appendChild(render(tree));
}
$("form").addEventListener("submit", delegate);
fetch("dtab").then((r) => r.text()).then((t) => { $("base").textContent = t.trim() || "(empty)"; });
const q = new URLSearchParams(location.search);
if (q.get("path")) { $("path").value = q.get("path"); $("dtab").value = q.get("dtab") || ""; $("headers").value = q.get("headers") || ""; delegate(); }
</script>
</body>
</html>
"#;
