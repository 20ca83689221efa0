/**
 * The HTTP door's live status page (`GET /`): one self-contained HTML document (its CSS and
 * JavaScript inline, nothing fetched from another host) that follows every stream through one
 * pattern subscription (`GET /sse?pattern=*`: each stream's header, then its puts and end, live;
 * the list is not polled), shows the first 100 streams by name with their seq and rate, reads
 * listener counts from the list's first page (`GET /streams?limit=100`) every 10 s, and follows
 * the selected stream over Server-Sent Events. When the server needs a token, the page asks for it in a
 * small form and keeps it in `sessionStorage` (this tab only), never in the page's URL: a
 * `?token=` given in the URL is moved there and removed from the address. The token goes out as
 * `Authorization` and, for `EventSource` (which cannot set headers), as `?token=` on the
 * stream's and the pattern's requests. The header also shows the engine's state from `/healthz`.
 *
 * @example Serve the page
 * ```ts
 * import { statusPage } from "./page.ts";
 * import { assertEquals, assertStringIncludes } from "@std/assert";
 *
 * const res = statusPage();
 * assertEquals(res.headers.get("content-type"), "text/html; charset=utf-8");
 * assertStringIncludes(await res.text(), "<title>msgstream status</title>");
 * ```
 *
 * @module
 */

/**
 * The page's Content-Security-Policy: its own inline script and style only, and nothing from
 * another origin; no other page may frame it.
 */
export const STATUS_PAGE_CSP: string =
  "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; " +
  "frame-ancestors 'none'";

/**
 * The status page as a response, with its content type, `no-cache` and its CSP.
 *
 * @returns A new response.
 */
export function statusPage(): Response {
  return new Response(STATUS_PAGE_HTML, {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-cache",
      "content-security-policy": STATUS_PAGE_CSP,
      // No other site may frame the page (older browsers ignore frame-ancestors).
      "x-frame-options": "DENY",
    },
  });
}

/** The status page: self-contained HTML, CSS and JavaScript; no network but this server. */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>msgstream status</title>
<link rel="icon" href="data:,">
<style>
:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --fg: #1c1e21; --muted: #5b6270; --card: #fff; --line: #dde1e6;
  --accent: #0b63ce; --sel: #e3eefc; --ok: #137333; --warn: #9a5b00; --bad: #b3261e;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14161a; --fg: #e6e8eb; --muted: #9aa3ae; --card: #1d2026; --line: #343a43;
    --accent: #7cb2ff; --sel: #223249; --ok: #7fd196; --warn: #f2c04d; --bad: #ff8a80;
  }
}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header.top { display: flex; flex-wrap: wrap; gap: .4rem 1.25rem; align-items: baseline;
  padding: .8rem 1.25rem; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 1.2rem; margin: 0; }
h2 { font-size: 1.02rem; margin: 0 0 .6rem; }
h3 { font-size: .8rem; margin: 1rem 0 .35rem; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); }
.muted { color: var(--muted); font-size: .9rem; }
main { display: grid; grid-template-columns: minmax(320px, 2fr) 3fr; gap: 1rem;
  padding: 1rem 1.25rem; align-items: start; }
@media (max-width: 820px) { main { grid-template-columns: 1fr; } }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: .9rem 1rem; min-width: 0; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .4rem .45rem; border-bottom: 1px solid var(--line); }
th { font-size: .78rem; color: var(--muted); font-weight: 600; text-transform: uppercase;
  letter-spacing: .04em; }
.num { text-align: right; }
tr.selected td { background: var(--sel); }
button.stream { font: inherit; font-weight: 600; color: var(--accent); background: none;
  border: 0; padding: .1rem .2rem; margin: -.1rem -.2rem; cursor: pointer; text-align: left;
  word-break: break-all; border-radius: 4px; }
button.stream:hover { text-decoration: underline; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.dot { display: inline-block; width: .55rem; height: .55rem; border-radius: 50%;
  background: var(--muted); margin-right: .35rem; vertical-align: middle; }
.dot.ok { background: var(--ok); } .dot.bad { background: var(--bad); }
.yes { color: var(--ok); font-weight: 600; }
form.token { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: 0;
  padding: .7rem 1.25rem; background: var(--sel); border-bottom: 1px solid var(--line); }
form.token input { font: inherit; padding: .25rem .45rem; min-width: 16rem;
  border: 1px solid var(--line); border-radius: 6px; background: var(--card); color: var(--fg); }
form.token button, button.forget { font: inherit; padding: .25rem .7rem; border-radius: 6px;
  border: 1px solid var(--line); background: var(--card); color: var(--fg); cursor: pointer; }
#token-why { color: var(--bad); }
[hidden] { display: none !important; }
pre { margin: 0; padding: .6rem .7rem; background: var(--bg); border: 1px solid var(--line);
  border-radius: 6px; overflow: auto; max-height: 14rem; font: 13px/1.4 ui-monospace,
  SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word; }
ol.tail { list-style: none; margin: 0; padding: 0; max-height: 55vh; overflow: auto;
  font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  border: 1px solid var(--line); border-radius: 6px; background: var(--bg); }
ol.tail li { display: grid; grid-template-columns: 4.5rem 4.2rem 1fr; gap: .5rem;
  padding: .2rem .6rem; border-bottom: 1px solid var(--line); }
ol.tail li:last-child { border-bottom: 0; }
ol.tail .seq { color: var(--muted); text-align: right; }
ol.tail .k-header { color: var(--warn); } ol.tail .k-end, ol.tail .k-reset,
ol.tail .k-close { color: var(--bad); }
ol.tail .data { word-break: break-word; }
</style>
</head>
<body>
<header class="top">
  <h1>msgstream</h1>
  <span class="muted" role="status"><span class="dot" id="conn-dot"></span><span id="conn">connecting…</span></span>
  <span class="muted" id="totals"></span>
  <span class="muted" id="engine"></span>
  <button type="button" class="forget" id="forget" hidden>Forget token</button>
</header>
<form class="token" id="token-form" hidden>
  <label for="token-input">This server needs a token:</label>
  <input id="token-input" type="password" autocomplete="current-password" required>
  <button type="submit">Use token</button>
  <span id="token-why" role="alert"></span>
</form>
<main>
  <section class="card" aria-labelledby="streams-title">
    <h2 id="streams-title">Streams</h2>
    <table>
      <thead><tr><th scope="col">Stream</th><th scope="col" class="num">Listeners</th>
        <th scope="col" class="num">Seq</th><th scope="col" class="num">Msg/s</th>
        <th scope="col">Header</th></tr></thead>
      <tbody id="streams"></tbody>
    </table>
    <p class="muted" id="empty">No streams yet.</p>
  </section>
  <section class="card" aria-labelledby="detail-title">
    <h2 id="detail-title">Select a stream</h2>
    <p class="muted"><span class="dot" id="tail-dot"></span><span id="tail-state">Choose a stream on the left to follow it live.</span></p>
    <h3 id="header-title">Header</h3>
    <pre id="header" aria-labelledby="header-title">—</pre>
    <h3 id="tail-title">Live tail <span class="muted" id="tail-count"></span></h3>
    <ol class="tail" id="tail" role="log" aria-labelledby="tail-title"></ol>
  </section>
</main>
<script>
"use strict";
(function () {
  // The token lives in this tab's sessionStorage, never in the page's URL: one given as
  // ?token= is moved there and removed from the address bar (and so from links and history).
  var KEY = "msgstream.token";
  var params = new URLSearchParams(location.search);
  if (params.has("token")) {
    try { sessionStorage.setItem(KEY, params.get("token")); } catch (e) { /* storage off */ }
    params.delete("token");
    var q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
  }
  var token = null;
  try { token = sessionStorage.getItem(KEY); } catch (e) { /* storage off */ }
  var init = {};
  function useToken(t) {
    token = t;
    init = t ? { headers: { Authorization: "Bearer " + t } } : {};
    $("forget").hidden = !t;
  }
  function askToken(why) {
    $("token-why").textContent = why;
    var form = $("token-form");
    if (form.hidden) { form.hidden = false; $("token-input").focus(); }
  }
  var rows = new Map();
  var selected = null;
  var source = null;
  var received = 0;
  var MAX_TAIL = 200;
  // One page of the list, the first streams by name: never the whole list every second.
  var PAGE = 100;
  function $(id) { return document.getElementById(id); }
  function pretty(text, indent) {
    try { return JSON.stringify(JSON.parse(text), null, indent); } catch (e) { return text; }
  }
  function rate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }
  function setConn(ok, text) {
    $("conn-dot").className = "dot " + (ok ? "ok" : "bad");
    $("conn").textContent = text;
  }
  function cell(tr, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function addRow(name) {
    var tr = document.createElement("tr");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "stream";
    button.textContent = name;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", function () { select(name); });
    cell(tr).appendChild(button);
    var row = { tr: tr, button: button, listeners: cell(tr, "num"), seq: cell(tr, "num"),
      rate: cell(tr, "num"), header: cell(tr) };
    var body = $("streams");
    var before = null;
    for (var i = 0; i < body.children.length; i++) {
      if (body.children[i].dataset.name > name) { before = body.children[i]; break; }
    }
    tr.dataset.name = name;
    body.insertBefore(tr, before);
    rows.set(name, row);
    markSelected();
    return row;
  }
  function render(list, total) {
    var seen = new Set();
    var listeners = 0;
    list.forEach(function (s) {
      seen.add(s.name);
      listeners += s.listeners;
      var row = rows.get(s.name) || addRow(s.name);
      row.listeners.textContent = s.listeners;
      row.seq.textContent = s.seq;
      row.rate.textContent = rate(s.rate);
      row.header.textContent = s.hasHeader ? "yes" : "—";
      row.header.className = s.hasHeader ? "yes" : "muted";
    });
    rows.forEach(function (row, name) {
      if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    });
    $("empty").hidden = list.length > 0;
    $("totals").textContent = (total > list.length ? "first " + list.length + " of " : "") +
      total + (total === 1 ? " stream · " : " streams · ") +
      listeners + (listeners === 1 ? " listener" : " listeners");
  }
  function engine() {
    fetch("healthz").then(function (res) { return res.json(); }).then(function (h) {
      $("engine").textContent = "engine " + h.engine + (h.status === "ok" ? " · up" : " · DOWN");
    }).catch(function () { $("engine").textContent = ""; });
  }
  // The streams come from one pattern subscription (GET sse?pattern=*): each stream's header
  // first, then its puts and its end, live; the list is not polled for them. Only listener
  // counts are read, from the list's first page, every 10 s and when a tail opens.
  var PATTERN = "*";
  var known = new Map();
  var names = [];
  var sorted = true;
  var follow = null;
  function seen(d, header) {
    var s = known.get(d.stream);
    if (!s) {
      s = { seq: d.seq, last: d.seq, rate: 0, header: false, listeners: 0, fresh: true };
      known.set(d.stream, s);
      sorted = false;
    }
    s.seq = d.seq;
    s.fresh = true;
    if (header) s.header = d.message !== null;
    soon();
  }
  // Events show within a tenth of a second, however many arrive.
  var drawing = null;
  function soon() {
    if (drawing === null) drawing = setTimeout(function () { drawing = null; draw(); }, 100);
  }
  function followAll() {
    if (follow) follow.close();
    var es = new EventSource("sse?pattern=" + encodeURIComponent(PATTERN) +
      (token ? "&token=" + encodeURIComponent(token) : ""));
    follow = es;
    // After a reconnect every stream is announced again; those that are not went meanwhile.
    es.onopen = function () { known.forEach(function (s) { s.fresh = false; }); };
    es.onerror = function () {
      setConn(false, es.readyState === EventSource.CLOSED
        ? "cannot follow the streams; retrying"
        : "reconnecting…");
      if (es.readyState === EventSource.CLOSED && follow === es) {
        follow = null;
        setTimeout(function () { if (!follow) followAll(); }, 2000);
      }
    };
    es.addEventListener("header", function (e) { seen(JSON.parse(e.data), true); });
    es.addEventListener("put", function (e) { seen(JSON.parse(e.data), false); });
    es.addEventListener("reset", function (e) { seen(JSON.parse(e.data), false); });
    es.addEventListener("end", function (e) {
      known.delete(JSON.parse(e.data).stream);
      sorted = false;
      soon();
    });
    es.addEventListener("joined", function () {
      known.forEach(function (s, name) {
        if (!s.fresh) { known.delete(name); sorted = false; }
      });
      $("token-form").hidden = true;
      setConn(true, "live · following every stream");
      draw();
    });
  }
  function tick() {
    known.forEach(function (s) { s.rate = Math.max(0, s.seq - s.last); s.last = s.seq; });
    draw();
  }
  function draw() {
    if (!sorted) { names = Array.from(known.keys()).sort(); sorted = true; }
    render(names.slice(0, PAGE).map(function (name) {
      var s = known.get(name);
      return { name: name, listeners: s.listeners, seq: s.seq, rate: s.rate, hasHeader: s.header };
    }), names.length);
  }
  function counts() {
    engine();
    fetch("streams?limit=" + PAGE, init).then(function (res) {
      if (res.status === 401) {
        askToken(token ? "That token was refused." : "");
        throw new Error(token ? "token refused" : "a token is needed");
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      $("token-form").hidden = true;
      if (!follow) followAll();
      return res.json();
    }).then(function (list) {
      list.forEach(function (s) {
        var k = known.get(s.name);
        if (k) k.listeners = s.listeners;
      });
      draw();
    }).catch(function (e) {
      setConn(false, "cannot reach the server (" + e.message + "); retrying");
    });
  }
  function markSelected() {
    rows.forEach(function (row, name) {
      var on = name === selected;
      row.tr.className = on ? "selected" : "";
      row.button.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }
  function tail(kind, id, data) {
    var ol = $("tail");
    var li = document.createElement("li");
    var seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = id ? "#" + id.slice(id.lastIndexOf(":") + 1) : "";
    var k = document.createElement("span");
    k.className = "k-" + kind;
    k.textContent = kind;
    var d = document.createElement("span");
    d.className = "data";
    d.textContent = pretty(data);
    li.appendChild(seq); li.appendChild(k); li.appendChild(d);
    ol.insertBefore(li, ol.firstChild);
    while (ol.children.length > MAX_TAIL) ol.removeChild(ol.lastChild);
    received++;
    $("tail-count").textContent = "(" + received + " events, newest first)";
  }
  function tailState(ok, text) {
    $("tail-dot").className = "dot " + (ok ? "ok" : "bad");
    $("tail-state").textContent = text;
  }
  function select(name) {
    if (source) source.close();
    selected = name;
    received = 0;
    markSelected();
    history.replaceState(null, "", "#stream=" + encodeURIComponent(name));
    $("detail-title").textContent = name;
    $("header").textContent = "—";
    $("tail").textContent = "";
    $("tail-count").textContent = "";
    tailState(false, "connecting…");
    var url = "streams/" + encodeURIComponent(name) +
      (token ? "?token=" + encodeURIComponent(token) : "");
    var es = new EventSource(url);
    source = es;
    es.onopen = function () { tailState(true, "following live"); counts(); };
    es.onerror = function () {
      if (es.readyState === EventSource.CLOSED) tailState(false, "closed");
      else tailState(false, "reconnecting…");
    };
    es.addEventListener("header", function (e) {
      $("header").textContent = e.data === "null" ? "(no header)" : pretty(e.data, 2);
      tail("header", e.lastEventId, e.data);
    });
    es.addEventListener("put", function (e) { tail("put", e.lastEventId, e.data); });
    es.addEventListener("reset", function (e) { tail("reset", e.lastEventId, e.data); });
    es.addEventListener("close", function (e) { tail("close", "", e.data); });
    es.addEventListener("end", function (e) {
      tail("end", e.lastEventId, "stream deleted");
      $("header").textContent = "(stream deleted)";
      es.close();
      tailState(false, "stream deleted");
    });
  }
  $("token-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var t = $("token-input").value;
    $("token-input").value = "";
    try { sessionStorage.setItem(KEY, t); } catch (err) { /* storage off: this page only */ }
    useToken(t);
    $("token-why").textContent = "checking…";
    followAll();
    counts();
    if (selected) select(selected);
  });
  $("forget").addEventListener("click", function () {
    try { sessionStorage.removeItem(KEY); } catch (e) { /* storage off */ }
    useToken(null);
    if (source) { source.close(); source = null; }
    if (follow) { follow.close(); follow = null; }
    known.clear();
    sorted = false;
    draw();
    counts();
  });
  useToken(token);
  var m = /^#stream=(.*)$/.exec(location.hash);
  if (m) { try { select(decodeURIComponent(m[1])); } catch (e) { /* bad hash */ } }
  followAll();
  counts();
  setInterval(tick, 1000);
  setInterval(counts, 10000);
})();
</script>
</body>
</html>
`;
