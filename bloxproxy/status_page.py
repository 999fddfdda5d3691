"""The status page: ``/_bloxproxy/`` (HTML) and ``/_bloxproxy/status.json`` (its numbers).

:func:`collect` reads the live objects — the metrics' plain counts, the limiter's budgets,
the guard's breakers, the fetcher's calls in flight, L1, a Redis PING — into the plain
:class:`~bloxproxy.status.Inputs` that :func:`bloxproxy.status.snapshot` turns into the
document. The page is one self-contained HTML file: inline CSS, a few lines of inline JS
that fetch ``status.json`` every 2 s, keep the last :data:`POINTS` points and draw them as
SVG sparklines; no external URL of any kind. Its Content-Security-Policy allows only that
script and that style (by their hashes) and requests to the proxy itself.

Both are behind the access keys when ``auth`` is on, like ``/_bloxproxy/metrics``: the key
in ``auth.header``, as ``Authorization: Bearer <key>``, or — what a browser sends after its
login prompt, which the 401 asks for — as the password of ``Authorization: Basic`` (any
user name). A wrong key is a failed attempt for the throttle; no key at all only gets the
prompt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from .appkeys import CONFIG, FETCHER, FRONT, GUARD, METRICS, PIPELINE, RUNTIME
from .authn import basic_password, bearer
from .errors import HTTPProblem, only_get
from .status import Breaker, Inputs, RequestRow, snapshot

__all__ = ["PAGE", "POINTS", "add_routes", "collect"]

POINTS = 60  # points each chart keeps (two minutes at one poll every 2 s)
POLL_MS = 2000
PREFIX = "/_bloxproxy/"
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="bloxproxy status", charset="UTF-8"'}

_STYLE = """
:root{--bg:#f4f6f9;--card:#fff;--ink:#1b2430;--dim:#5d6b7c;--line:#e2e7ee;--accent:#2563eb;
--ok:#15803d;--warn:#b45309;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{display:flex;align-items:baseline;gap:16px;padding:14px 24px;background:#111827;
color:#f9fafb}
header h1{margin:0;font-size:18px;font-weight:600}
header h1 span{color:#93c5fd;font-weight:400}
.state{margin:0;font-size:13px;color:#d1d5db}
.state::before{content:"";display:inline-block;width:8px;height:8px;border-radius:50%;
margin-right:6px;background:#9ca3af}
.state.live::before{background:#22c55e}
.state.down::before{background:#ef4444}
main{padding:18px 24px;max-width:1280px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.tile h2,section>h2{margin:0 0 2px;font-size:12px;font-weight:600;letter-spacing:.04em;
text-transform:uppercase;color:var(--dim)}
.big{margin:0;font-size:28px;font-weight:650;font-variant-numeric:tabular-nums}
.sub{margin:0;font-size:12px;color:var(--dim);min-height:17px}
svg.spark{display:block;width:100%;height:44px;margin-top:6px}
svg.spark polyline{fill:none;stroke:var(--accent);stroke-width:1.6;
vector-effect:non-scaling-stroke}
svg.spark polygon{fill:#dbeafe;stroke:none}
svg.spark.red polyline{stroke:var(--bad)}
svg.spark.red polygon{fill:#fee2e2}
.bar{height:6px;background:var(--line);border-radius:3px;overflow:hidden;margin-top:8px}
.bar i{display:block;height:100%;width:0;background:var(--accent)}
.bar.full i{background:var(--warn)}
section{margin-top:18px}
section>h2{margin-bottom:6px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);
border-radius:8px;overflow:hidden;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;font-weight:600;color:var(--dim);background:#f9fafb}
td.n,th.n{text-align:right}
td .bar{width:90px;display:inline-block;margin:0 0 0 6px;vertical-align:middle}
tr:last-child td{border-bottom:0}
.note{display:block;font-size:12px;color:var(--dim)}
.chip{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;margin-right:4px;
background:#dcfce7;color:var(--ok)}
.chip.warn{background:#fef3c7;color:var(--warn)}
.chip.bad{background:#fee2e2;color:var(--bad)}
.empty td{color:var(--dim);text-align:center}
footer{padding:4px 24px 18px;font-size:12px;color:var(--dim)}
"""

_SCRIPT = """
(function () {
'use strict';
var N = @POINTS@, W = 240, H = 48, D = '\u2013';
var hist = {hit: [], req: [], saved: [], up: [], r429: [], wait: []};
var prev = null, prevT = 0, prevSlots = {}, last = '';
function $(id) { return document.getElementById(id); }
function put(id, v) { $(id).textContent = v; }
function num(n) {
  return n >= 1e7 ? (n / 1e6).toFixed(1) + ' M' : n >= 1e4 ? (n / 1e3).toFixed(1) + ' k' : '' + n;
}
function pct(r) { return r === null || r === undefined ? D : (r * 100).toFixed(1) + ' %'; }
function per(r) { return (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + '/s'; }
function size(b) {
  return b >= 1048576 ? (b / 1048576).toFixed(1) + ' MiB'
    : b >= 1024 ? (b / 1024).toFixed(1) + ' KiB' : b + ' B';
}
function ago(s) {
  s = Math.floor(s);
  if (s >= 86400) return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
  if (s >= 3600) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
  return s >= 60 ? Math.floor(s / 60) + ' min ' + s % 60 + ' s' : s + ' s';
}
function push(a, v) { a.push(v); if (a.length > N) a.shift(); }
function spark(id, vals, max) {  // the points across the width, the newest at the right
  var svg = $(id), m = max || Math.max.apply(null, vals.concat([0])) || 1;
  var step = W / Math.max(vals.length - 1, 1);
  var pts = vals.map(function (v, i) {
    var x = W - (vals.length - 1 - i) * step, y = H - 2 - Math.min(v / m, 1) * (H - 6);
    return x.toFixed(1) + ',' + y.toFixed(1);
  });
  svg.querySelector('polyline').setAttribute('points', pts.join(' '));
  var area = pts.length > 1 ? pts.concat([W + ',' + H, pts[0].split(',')[0] + ',' + H]) : [];
  svg.querySelector('polygon').setAttribute('points', area.join(' '));
  svg.setAttribute('data-points', '' + vals.length);
}
function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function bar(frac) {
  var b = el('span', undefined, 'bar' + (frac >= 0.95 ? ' full' : '')), i = el('i');
  i.style.width = (Math.max(0, Math.min(frac, 1)) * 100).toFixed(0) + '%';
  b.appendChild(i);
  return b;
}
function chip(text, cls) { return el('span', text, 'chip' + (cls ? ' ' + cls : '')); }
function rows(id, list, make, cols, none) {
  var body = $(id).tBodies[0];
  body.textContent = '';
  if (!list.length) {
    var tr = el('tr', undefined, 'empty'), td = el('td', none);
    td.colSpan = cols;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  list.forEach(function (x) { body.appendChild(make(x)); });
}
function service(s, dt) {
  var tr = el('tr'), b = s.budget, td = el('td');
  tr.setAttribute('data-name', s.name);
  tr.appendChild(el('td', s.name));
  if (b) {
    td.appendChild(document.createTextNode(per(b.rate)));
    td.appendChild(el('span', b.source === 'roblox' ? 'Roblox\u2019s limit'
      : b.source === 'learned' ? 'learned (configured ' + per(b.ceiling) + ')'
      : 'configured', 'note'));
  } else td.textContent = D;
  tr.appendChild(td);
  td = el('td');
  if (b) {
    var was = prevSlots[s.name];
    var used = dt > 0 && was !== undefined ? Math.max(0, b.slots - was) / dt : null;
    td.appendChild(document.createTextNode(used === null ? D : per(used)));
    if (used !== null) td.appendChild(bar(b.rate ? used / b.rate : 0));
    td.appendChild(el('span', num(b.slots) + (b.slots === 1 ? ' call' : ' calls')
      + ' let through', 'note'));
  } else td.textContent = D;
  tr.appendChild(td);
  tr.appendChild(el('td', b ? b.waiting + ' waiting' + (b.refusals ? ', ' + b.refusals
    + ' refused' : '') : D));
  tr.appendChild(el('td', num(s.attempts), 'n'));
  tr.appendChild(el('td', num(s.status_429), 'n'));
  tr.appendChild(el('td', num(s.errors), 'n'));
  td = el('td');
  if (b && b.paused) td.appendChild(chip('paused ' + b.hold_seconds.toFixed(1) + ' s', 'warn'));
  if (s.breaker === 'open') {
    td.appendChild(chip('circuit open ' + s.breaker_open_for.toFixed(0) + ' s', 'bad'));
  } else if (s.breaker === 'half_open') td.appendChild(chip('circuit half-open', 'warn'));
  if (!td.childNodes.length) td.appendChild(chip('ok'));
  tr.appendChild(td);
  return tr;
}
function route(r) {
  var tr = el('tr');
  tr.appendChild(el('td', r.route));
  tr.appendChild(el('td', num(r.requests), 'n'));
  tr.appendChild(el('td', pct(r.hit_ratio), 'n'));
  tr.appendChild(el('td', r.mean_ms.toFixed(1) + ' ms', 'n'));
  tr.appendChild(el('td', num(r.errors), 'n'));
  return tr;
}
function now(list) { return list.length ? ', now ' + per(list[list.length - 1]) : ''; }
function draw(s) {
  var t = performance.now() / 1000, dt = prev ? t - prevT : 0, q = s.requests, u = s.upstream;
  if (prev && dt > 0) {
    push(hist.req, Math.max(0, q.api - prev.requests.api) / dt);
    push(hist.up, Math.max(0, u.attempts - prev.upstream.attempts) / dt);
    push(hist.r429, Math.max(0, u.status_429 - prev.upstream.status_429) / dt);
    push(hist.saved, Math.max(0, s.upstream_calls_avoided - prev.upstream_calls_avoided) / dt);
  }
  push(hist.wait, s.coalescing.waiters);
  push(hist.hit, s.hit_ratio === null ? 0 : s.hit_ratio * 100);
  var r = q.by_result;
  put('hit-ratio', pct(s.hit_ratio));
  put('hit-sub', num(r.HIT) + ' hits, ' + num(r.STALE) + ' stale, ' + num(r.COALESCED)
    + ' shared, ' + num(r.MISS) + ' misses');
  spark('c-hit', hist.hit, 100);
  put('requests', num(q.api));
  put('requests-sub', (q.errors ? num(q.errors) + ' 5xx' : 'no 5xx') + now(hist.req)
    + (q.other ? '; ' + num(q.other) + ' other' : ''));
  spark('c-req', hist.req);
  put('avoided', num(s.upstream_calls_avoided));
  put('avoided-sub', 'answered without a call of their own' + now(hist.saved));
  spark('c-saved', hist.saved);
  put('attempts', num(u.attempts));
  put('attempts-sub', num(u.errors) + ' failed' + now(hist.up));
  spark('c-up', hist.up);
  put('upstream-429', num(u.status_429));
  put('r429-sub', (u.paused.length ? 'paused: ' + u.paused.join(', ') : 'no scope paused')
    + (q.client_429 ? '; ' + num(q.client_429) + ' refused to clients' : ''));
  spark('c-429', hist.r429);
  var c = s.coalescing;
  put('waiters', num(c.waiters));
  put('waiters-sub', 'on ' + c.in_flight + ' upstream call' + (c.in_flight === 1 ? '' : 's')
    + ' in flight');
  spark('c-wait', hist.wait);
  var l = s.l1, fill = l.enabled ? Math.max(l.bytes / (l.max_bytes || 1),
    l.entries / (l.max_entries || 1)) : 0;
  put('l1', l.enabled ? num(l.entries) + ' entries' : 'off');
  put('l1-sub', l.enabled ? size(l.bytes) + ' of ' + size(l.max_bytes) + '; at most '
    + num(l.max_entries) + ' entries' : 'cache.max_entries is 0');
  $('l1-bar').style.width = (Math.min(1, fill) * 100).toFixed(1) + '%';
  var d = s.redis.state;
  put('redis', d === 'off' ? 'not used' : d === 'ok' ? 'ok' : 'down');
  $('redis').className = 'big' + (d === 'ok' || d === 'off' ? '' : ' bad');
  put('redis-sub', d === 'off' ? 'L1 only (cache.redis.url unset)'
    : d === 'ok' ? 'PING ' + s.redis.ping_ms.toFixed(1) + ' ms' : d);
  rows('services', s.services, function (x) { return service(x, dt); }, 8,
    'no upstream call yet');
  rows('routes', s.routes, route, 5, 'no API request yet');
  prevSlots = {};
  s.services.forEach(function (x) { if (x.budget) prevSlots[x.name] = x.budget.slots; });
  prev = s;
  prevT = t;
  last = new Date().toLocaleTimeString();
  var st = $('state');
  st.className = 'state live';
  st.textContent = 'live \u00b7 updated ' + last + ' \u00b7 up ' + ago(s.uptime_seconds);
}
function fail(e) {
  var st = $('state');
  st.className = 'state down';
  st.textContent = 'no answer from the proxy (' + e.message + ')'
    + (last ? '; numbers from ' + last : '');
}
var src = new URL('status.json', location.href);
src.username = src.password = '';  // opened as user:key@host: the key is in the auth cache
function tick() {
  fetch(src.href, {cache: 'no-store', credentials: 'same-origin'}).then(function (r) {
    if (!r.ok) throw new Error('HTTP ' + r.status);
    return r.json();
  }).then(draw).catch(fail);
}
tick();
setInterval(tick, @POLL@);
})();
""".replace("@POINTS@", str(POINTS)).replace("@POLL@", str(POLL_MS))


def _tile(title: str, key: str, sub: str, chart: str = "", red: bool = False) -> str:
    """One tile: a title, a big number (``key``), a line under it (``sub``), and a chart
    (``chart``, an SVG sparkline) or, for L1, a bar."""
    if chart:
        cls = "spark red" if red else "spark"
        below = (
            f'<svg class="{cls}" id="{chart}" viewBox="0 0 240 48" preserveAspectRatio="none" '
            'role="img" aria-label="the last points"><polygon/><polyline/></svg>'
        )
    elif key == "l1":
        below = '<div class="bar"><i id="l1-bar"></i></div>'
    else:
        below = ""
    return (
        f'<div class="tile"><h2>{title}</h2><p class="big" id="{key}">\u2013</p>'
        f'<p class="sub" id="{sub}"></p>{below}</div>'
    )


_TILES = "".join(
    (
        _tile("Hit ratio", "hit-ratio", "hit-sub", "c-hit"),
        _tile("API requests", "requests", "requests-sub", "c-req"),
        _tile("Upstream calls avoided", "avoided", "avoided-sub", "c-saved"),
        _tile("Upstream calls", "attempts", "attempts-sub", "c-up"),
        _tile("Upstream 429s", "upstream-429", "r429-sub", "c-429", red=True),
        _tile("Coalescing waiters", "waiters", "waiters-sub", "c-wait"),
        _tile("L1 cache", "l1", "l1-sub"),
        _tile("Redis", "redis", "redis-sub"),
    )
)


def _table(key: str, heads: tuple[str, ...], numeric: frozenset[str]) -> str:
    cells = "".join(f'<th class="n">{h}</th>' if h in numeric else f"<th>{h}</th>" for h in heads)
    return f'<table id="{key}"><thead><tr>{cells}</tr></thead><tbody></tbody></table>'


PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width,initial-scale=1">'
    '<link rel="icon" href="data:,"><title>bloxproxy status</title>'
    f"<style>{_STYLE}</style></head><body>"
    '<header><h1>bloxproxy <span>status</span></h1><p id="state" class="state">connecting…</p>'
    "</header><noscript><p>This page draws itself with JavaScript; the same numbers are at "
    '<a href="status.json">status.json</a>.</p></noscript><main>'
    f'<div class="tiles">{_TILES}</div>'
    "<section><h2>Upstream services and budgets</h2>"
    + _table(
        "services",
        ("service", "budget", "use", "line", "calls", "429s", "errors", "state"),
        frozenset({"calls", "429s", "errors"}),
    )
    + "</section><section><h2>Top routes</h2>"
    + _table(
        "routes",
        ("route", "requests", "hit ratio", "mean latency", "5xx"),
        frozenset({"requests", "hit ratio", "mean latency", "5xx"}),
    )
    + '</section></main><footer>Reads <a href="status.json">status.json</a> every '
    f"{POLL_MS // 1000} s; the charts keep the last {POINTS} points. Counts are this "
    "process's since it started.</footer>"
    f"<script>{_SCRIPT}</script></body></html>"
).encode()


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def collect(app: web.Application) -> Inputs:
    """The live objects' state now, as plain values."""
    config, rt = app[CONFIG], app[RUNTIME]
    live = app[PIPELINE].config if PIPELINE in app else config
    metrics = app[METRICS]
    guard, fetcher = app.get(GUARD), app.get(FETCHER)
    now = rt.monotonic()
    breakers = []
    budgets = []
    if guard is not None:
        for name, st in sorted(guard.services.items()):
            b = st.breaker
            breakers.append(Breaker(name, b.state, b.opened_until - now))
        budgets = guard.limiter.rows()
    redis, ping = "off", None
    if rt.redis is not None:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(0.5):
                await rt.redis.ping()
            redis, ping = "ok", (time.perf_counter() - start) * 1000
        except Exception as exc:  # any failure here means "not reachable right now"
            redis = f"unreachable ({type(exc).__name__})"
    l1 = fetcher.l1 if fetcher is not None else None
    return Inputs(
        now=rt.clock(),
        uptime=now - app[_STARTED],
        requests=[RequestRow(*row) for row in metrics.request_counts()],
        attempts=metrics.attempt_counts(),
        budgets=budgets,
        rates=live.limits.upstream.rates,
        default_rate=live.limits.upstream.rate,
        breakers=breakers,
        in_flight=fetcher.in_flight if fetcher is not None else 0,
        waiters=fetcher.waiting if fetcher is not None else 0,
        l1_entries=len(l1) if l1 is not None else 0,
        l1_bytes=l1.bytes_used if l1 is not None else 0,
        l1_max_entries=l1.max_entries if l1 is not None else 0,
        l1_max_bytes=l1.max_bytes if l1 is not None else 0,
        cache_enabled=live.cache.enabled,
        redis=redis,
        redis_ms=ping,
    )


async def _authorize(request: web.Request) -> None:
    """Let the request in when keys are off or it brings a valid one (see the module
    docstring); else a 401 problem that makes a browser ask for the key."""
    gate = request.app[FRONT].gate
    if gate is None or not gate.keyed:
        return
    authorization = request.headers.get("Authorization", "")
    given = (
        request.headers.get(gate.header) or bearer(authorization) or basic_password(authorization)
    )
    if not given:
        raise HTTPProblem(
            401,
            f"the status page needs an access key: in {gate.header}, as a Bearer token, or "
            "as the password a browser asks for (any user name)",
            code="unauthorized",
            headers=_CHALLENGE,
        )
    try:
        await gate.authenticate(request, given)
    except HTTPProblem as exc:
        if exc.status == 401:
            exc.headers.update(_CHALLENGE)
        raise


_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def page(request: web.Request) -> web.Response:
    only_get(request)
    await _authorize(request)
    return web.Response(
        body=PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={**_HEADERS, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"},
    )


async def status_json(request: web.Request) -> web.Response:
    only_get(request)
    await _authorize(request)
    body = orjson.dumps(snapshot(await collect(request.app)))
    return web.Response(body=body, content_type="application/json", headers=_HEADERS)


_STARTED = web.AppKey("status_started", float)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, wrap: Callable[..., Handler]) -> None:
    """``/_bloxproxy/`` and ``/_bloxproxy/status.json``; other methods get a 405 problem."""
    app[_STARTED] = app[RUNTIME].monotonic()
    app.router.add_route("*", PREFIX, wrap(page, gated=False))
    app.router.add_route("*", PREFIX + "status.json", wrap(status_json, gated=False))
