"""The API docs page, and the routes that serve it and the OpenAPI document.

:func:`render_docs` turns the OpenAPI dict of :mod:`bloxproxy.openapi` into one
self-contained HTML page, on the server: inline CSS, a few lines of inline JS for the
filter box (the page reads fine without them), no external asset of any kind, every value
escaped with :func:`html.escape`. It works offline and behind a strict CSP.

:func:`add_routes` serves ``/openapi.json`` and ``/docs`` (and the same under
``/_bloxproxy/``, which is exempt from access keys and client limits). Explicit routes win
over the catch-all, so a passthrough service named ``docs`` still gets ``/docs/...``; only
the bare ``/docs`` is the page. Both are built on first use and again only when a reload
swaps the config or rule set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from html import escape
from typing import Any

from aiohttp import web

from .appkeys import CONFIG, PIPELINE, RULES
from .errors import only_get
from .openapi import PASSTHROUGH_TAG, build_openapi, dumps

JSON = dict[str, Any]
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_CODE_RE = re.compile(r"`([^`]+)`")
_ID_RE = re.compile(r"[^A-Za-z0-9_.-]")
_METHODS = ("get", "head", "post", "put", "patch", "delete")


def _text(value: str) -> str:
    """Escaped prose; `backticks` become <code> (after escaping, so nothing else is live)."""
    return _CODE_RE.sub(r"<code>\1</code>", escape(value))


def _paras(value: str) -> str:
    return "".join(f"<p>{_text(p.strip())}</p>" for p in value.split("\n\n") if p.strip())


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, ensure_ascii=False))


def _anchor(prefix: str, name: str) -> str:
    return prefix + _ID_RE.sub("-", name)


def _resolve(spec: JSON, node: JSON) -> JSON:
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    out: Any = spec
    for part in ref[2:].split("/"):
        out = out[part]
    return dict(out)


def _type(schema: JSON) -> str:
    if schema.get("type") == "array":
        return "array of " + _type(schema.get("items", {}))
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else str(kind)
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def _constraints(schema: JSON) -> list[str]:
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(str(v) for v in schema["enum"]))
    if schema.get("minimum", -(2**63)) != -(2**63):
        out.append(f"≥ {schema['minimum']}")
    if schema.get("maximum", 2**63 - 1) != 2**63 - 1:
        out.append(f"≤ {schema['maximum']}")
    if "enum" not in schema and ("minLength" in schema or "maxLength" in schema):
        low, high = schema.get("minLength", 0), schema.get("maxLength", "∞")
        out.append(f"{low} to {high} characters" if low else f"at most {high} characters")
    if "pattern" in schema:
        out.append(f"pattern {schema['pattern']}")
    if "minItems" in schema or "maxItems" in schema:
        out.append(f"{schema.get('minItems', 0)} to {schema.get('maxItems', '∞')} items")
    if schema.get("type") == "array":
        out.extend(f"each {c}" for c in _constraints(schema.get("items", {})))
    return out


def _params_table(params: list[JSON]) -> str:
    if not params:
        return ""
    rows = []
    for p in params:
        s = p.get("schema", {})
        default = json.dumps(s["default"]) if "default" in s else ""
        example = json.dumps(p["example"]) if "example" in p else ""
        required = " <em>required</em>" if p.get("required") else ""
        rows.append(
            f"<tr><td><code>{escape(p['name'])}</code>{required}</td><td>{escape(p['in'])}</td>"
            f"<td>{escape(_type(s))}</td><td>{escape('; '.join(_constraints(s)))}</td>"
            f"<td>{escape(default)}</td><td>{escape(example)}</td>"
            f"<td>{_text(p.get('description', ''))}</td></tr>"
        )
    return (
        "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>"
        "<th>constraints</th><th>default</th><th>example</th><th>description</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "config default"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _upstream(up: JSON) -> str:
    query = "&".join(f"{k}={v}" for k, v in up.get("query", {}).items())
    line = f"{up['method']} {up['service']} {up['path']}" + (f"?{query}" if query else "")
    out = f"<h4>Upstream request</h4><p><code>{escape(line)}</code>"
    if up.get("safe_read") and up["method"] != "GET":
        out += " (a read: retried like a GET)"
    out += "</p>"
    if "body" in up:
        out += f"<p>JSON body template:</p><pre>{_json(up['body'])}</pre>"
    return out


def _cache(c: JSON) -> str:
    if not c.get("enabled"):
        return "<h4>Cache</h4><p>Not cached.</p>"
    parts = [f"TTL {_duration(c['ttl'])}"]
    for key, label in (
        ("stale_while_revalidate", "stale-while-revalidate"),
        ("stale_if_error", "stale-if-error"),
    ):
        if c.get(key):
            parts.append(f"{label} {_duration(c[key])}")
    parts += [f"404s {_duration(c['not_found_ttl'])}", f"credentials: {c['credentials']}"]
    parts += [
        f"{w['path']} in {json.dumps(w['in'])}: at most {_duration(w['ttl'])}"
        + (f", asked again {w['repoll']} times" if w.get("repoll") else "")
        for w in c.get("when", [])
    ]
    return "<h4>Cache</h4><p>" + escape(" · ".join(parts)) + "</p>"


_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}


def _is_problem(spec: JSON, response: JSON) -> bool:
    content = _resolve(spec, response).get("content", {})
    return bool(content) and all(m.get("schema") == _PROBLEM_SCHEMA for m in content.values())


_ENVELOPE_KEYS = {"data", "next_cursor", "previous_cursor"}


def _body_kind(schema: JSON) -> str:
    if "anyOf" in schema:
        return " or ".join(_body_kind(s) for s in schema["anyOf"])
    ref = str(schema.get("$ref", ""))
    members = set(schema.get("properties", {}))
    if ref.endswith("/ListPage") or members == _ENVELOPE_KEYS:
        return "list envelope"
    if ref.endswith("/WholeList") or members == _ENVELOPE_KEYS | {"_end"}:
        return "whole list"
    return ref.rsplit("/", 1)[-1] if ref else _type(schema)


def _members(schema: JSON) -> str:
    """The members of a 200 body (a list's items'), one row each, when they are known."""
    for s in schema.get("anyOf", [schema]):
        if set(s.get("properties", {})) == _ENVELOPE_KEYS:
            s = s["properties"]["data"].get("items", {})
            title = "Members of each item"
        else:
            title = "Members"
        members = s.get("properties", {})
        if members:
            required = set(s.get("required", []))
            rows = "".join(
                f"<tr><td><code>{escape(name)}</code>"
                f"{' <em>always</em>' if name in required else ''}</td>"
                f"<td>{escape(_type(m) if m else 'any (null in the samples)')}</td></tr>"
                for name, m in members.items()
            )
            return f"<p>{title}:</p><table><tr><th>member</th><th>type</th></tr>{rows}</table>"
    return ""


def _responses(spec: JSON, responses: JSON) -> str:
    """Success rows with their examples; problem statuses on one line (see Errors)."""
    rows, examples, problems = [], [], []
    for status, raw in responses.items():
        if _is_problem(spec, raw):
            problems.append(status)
            continue
        r = _resolve(spec, raw)
        content = r.get("content", {})
        kinds = [f"{media}: {_body_kind(m.get('schema', {}))}" for media, m in content.items()]
        json_body = content.get("application/json", {})
        if status == "200":
            examples.append(_members(json_body.get("schema", {})))
        examples += [
            f"<p>Example {escape(status)}:</p><pre>{_json(m['example'])}</pre>"
            for m in content.values()
            if "example" in m
        ]
        examples += [
            f"<p>Example {escape(status)} <code>{escape(name)}</code>: "
            f"<code>{escape(str(h['example']))}</code></p>"
            for name, h in r.get("headers", {}).items()
            if "example" in h
        ]
        rows.append(
            f"<tr><td>{escape(status)}</td><td>{_text(r.get('description', ''))}</td>"
            f"<td>{escape('; '.join(kinds))}</td></tr>"
        )
    if problems:
        rows.append(
            f"<tr><td>{escape(', '.join(problems))}</td><td>Errors, as "
            '<a href="#errors">problem+json</a></td><td>application/problem+json</td></tr>'
        )
    return (
        "<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(examples)
    )


def _operations(spec: JSON) -> Iterator[tuple[str, list[str], str, JSON]]:
    """(tag, methods, path, operation); passthrough's per-method operations come as one."""
    for path, item in spec.get("paths", {}).items():
        ops = [(m, item[m]) for m in _METHODS if m in item]
        if ops and all(op.get("x-bloxproxy-passthrough") for _, op in ops):
            ops[0][1].setdefault("parameters", item.get("parameters", []))
            yield PASSTHROUGH_TAG, [m for m, _ in ops], path, ops[0][1]
            continue
        for method, op in ops:
            yield (op.get("tags") or ["other"])[0], [method], path, op


def _description(op: JSON) -> str:
    """The description, less its closing "Upstream: ..." paragraph when the upstream
    section shows the same request."""
    text = str(op.get("description", ""))
    head, sep, last = text.rpartition("\n\n")
    if "x-bloxproxy-upstream" in op and (last if sep else text).startswith("Upstream: `"):
        return head
    return text


def _article(spec: JSON, methods: list[str], path: str, op: JSON) -> str:
    badges = "".join(f'<span class="m {m}">{m.upper()}</span>' for m in methods)
    anchor = _anchor("op-", op.get("operationId", path))
    deprecated = ' <span class="dep">deprecated</span>' if op.get("deprecated") else ""
    body = [
        f'<article id="{anchor}" data-search="{escape(" ".join((path, *methods)).lower())} '
        f'{escape(op.get("summary", "").lower())}">',
        f"<h3>{badges} <code>{escape(path)}</code>{deprecated}</h3>",
        f'<p class="sum">{_text(op.get("summary", ""))} '
        f"<small>{escape(op.get('operationId', ''))}</small></p>",
        _paras(_description(op)),
        _params_table(op.get("parameters", [])),
    ]
    if "x-bloxproxy-upstream" in op:
        body.append(_upstream(op["x-bloxproxy-upstream"]))
    if "x-bloxproxy-cache" in op:
        body.append(_cache(op["x-bloxproxy-cache"]))
    body.append(_responses(spec, op.get("responses", {})))
    body.append(_try_form(spec, methods[0], path, op))
    return "".join(body) + "</article>"


def _auth_of(spec: JSON, op: JSON) -> str:
    """Which credential the "try it" form sends: ``admin`` (the admin token as a bearer),
    ``key`` (the access key header) or nothing."""
    security: list[JSON] = op.get("security", spec.get("security")) or []
    names = {name for requirement in security for name in requirement}  # optional ones too
    return "admin" if "adminToken" in names else "key" if "accessKey" in names else ""


def _try_input(p: JSON) -> str:
    """One parameter's input, filled in with its example (else its default)."""
    schema = p.get("schema", {})
    value = p.get("example", schema.get("default"))
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        value = "true" if value else "false"
    text = "" if value is None else str(value)
    name, where = escape(p["name"]), escape(p["in"])
    attrs = f'name="{name}" data-in="{where}"' + (" required" if p.get("required") else "")
    choices = list(schema.get("enum", ()))
    if schema.get("type") == "boolean":
        choices = ["true", "false"]
    if choices:
        options = "" if p.get("required") else '<option value=""></option>'
        for choice in choices:
            c = escape(str(choice))
            options += (
                f'<option value="{c}"{" selected" if str(choice) == text else ""}>{c}</option>'
            )
        return f"<label>{name} <select {attrs}>{options}</select></label>"
    return f'<label>{name} <input {attrs} value="{escape(text)}"></label>'


def _try_form(spec: JSON, method: str, path: str, op: JSON) -> str:
    """The "try it" form: the operation's parameters and a button that asks the proxy this
    page came from (fetch, same origin) and shows the status and the body."""
    if op.get("x-bloxproxy-passthrough"):
        method = "get"  # passthrough's one article: try a GET
    inputs = "".join(_try_input(p) for p in op.get("parameters", []))
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        example = json.dumps(body.get("example", {}), ensure_ascii=False)
        inputs += (
            f'<label>body <textarea name="body" data-in="body">{escape(example)}</textarea></label>'
        )
    return (
        f'<form class="try" data-method="{escape(method.upper())}" data-path="{escape(path)}" '
        f'data-auth="{_auth_of(spec, op)}"><h4>Try it</h4>{inputs}'
        f'<button type="submit">Send {escape(method.upper())}</button>'
        '<pre class="out" hidden></pre></form>'
    )


def _errors(spec: JSON) -> str:
    """The problem format once: its members, each error status and an example."""
    problem = spec["components"]["schemas"]["Problem"]
    required = set(problem.get("required", []))
    members = "".join(
        f"<tr><td><code>{escape(name)}</code>{' <em>always</em>' if name in required else ''}"
        f"</td><td>{escape(_type(s))}</td><td>{_text(s.get('description', ''))}</td></tr>"
        for name, s in problem["properties"].items()
    )
    statuses: dict[str, str] = {}
    for _, _, _, op in _operations(spec):
        for status, raw in op.get("responses", {}).items():
            if "$ref" in raw and _is_problem(spec, raw):
                statuses.setdefault(status, _resolve(spec, raw).get("description", ""))
    codes = "".join(
        f"<tr><td>{escape(status)}</td><td>{_text(text)}</td></tr>"
        for status, text in sorted(statuses.items())
    )
    media = next(iter(spec["components"]["responses"]["BadRequest"]["content"].values()))
    return (
        f'<section id="errors"><h2>Errors</h2>{_paras(problem.get("description", ""))}'
        "<p>Every error is <code>application/problem+json</code>:</p><table><tr>"
        f"<th>member</th><th>type</th><th>meaning</th></tr>{members}</table>"
        f"<h4>Statuses</h4><table><tr><th>status</th><th>when</th></tr>{codes}</table>"
        f"<p>Example:</p><pre>{_json(media['example'])}</pre></section>"
    )


def render_docs(spec: JSON) -> str:
    """The whole docs page for an OpenAPI document (plain data, not modified)."""
    spec = json.loads(json.dumps(spec))  # a private copy: _operations fills in parameters
    info = spec.get("info", {})
    groups: dict[str, list[str]] = {}
    toc: dict[str, list[str]] = {}
    for tag, methods, path, op in _operations(spec):
        groups.setdefault(tag, []).append(_article(spec, methods, path, op))
        anchor = _anchor("op-", op.get("operationId", path))
        toc.setdefault(tag, []).append(
            f'<li><a href="#{anchor}">{escape(" ".join(m.upper() for m in methods))} '
            f"{escape(path)}</a></li>"
        )
    nav = "".join(
        f'<li><a href="#{_anchor("tag-", t)}">{escape(t)}</a><ul>{"".join(items)}</ul></li>'
        for t, items in toc.items()
    )
    sections = "".join(
        f'<section id="{_anchor("tag-", t)}"><h2>{escape(t)}</h2>{"".join(arts)}</section>'
        for t, arts in groups.items()
    )
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    schemes = spec.get("components", {}).get("securitySchemes", {})
    creds = ""
    if "accessKey" in schemes:
        header = escape(schemes["accessKey"].get("name", ""))
        creds += (
            f'<label>Access key ({header}) <input id="try-key" type="password" '
            f'data-header="{header}" autocomplete="off"></label>'
        )
    if "adminToken" in schemes:
        creds += (
            '<label>Admin token <input id="try-admin" type="password" autocomplete="off"></label>'
        )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f'<nav><input id="q" type="search" placeholder="Filter routes" hidden>'
        f'<div class="creds">{creds}</div>'
        f'<ul>{nav}<li><a href="#errors">errors</a></li></ul></nav><main>'
        f"<h1>{title}</h1><p>{_text(info.get('summary', ''))}</p>"
        f"{_paras(info.get('description', ''))}"
        f'<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1).</p>'
        f"{sections}{_errors(spec)}</main><script>{_JS}</script></body></html>"
    )


_CSS = """
body{margin:0;font:15px/1.5 system-ui,sans-serif;color:#1b1b1f;display:flex}
nav{width:18rem;flex:none;height:100vh;overflow:auto;position:sticky;top:0;
background:#f4f4f7;padding:1rem;box-sizing:border-box;font-size:13px}
nav ul{list-style:none;padding-left:.6rem;margin:.2rem 0}nav a{color:#234;text-decoration:none}
nav input{width:100%;margin-bottom:.5rem}
main{padding:1rem 2rem;max-width:70rem;min-width:0}
article{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
h3{margin:.3rem 0;font-size:1.05rem}h4{margin:.8rem 0 .3rem}
.m{display:inline-block;border-radius:4px;padding:0 .4rem;margin-right:.2rem;color:#fff;
background:#555;font-size:.8rem}.m.get{background:#1f6feb}.m.post{background:#2da44e}
.m.delete{background:#cf222e}.dep{color:#cf222e;font-size:.8rem}.sum small{color:#777}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border:1px solid #ddd;padding:.2rem .4rem;text-align:left;vertical-align:top}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;font-size:12px}
code{background:#f0f0f3;padding:0 .2rem;border-radius:3px}
form.try{border-top:1px dashed #ccc;margin-top:.6rem}
form.try label{display:inline-block;margin:.2rem .8rem .2rem 0;font-size:13px}
form.try textarea{display:block;width:40rem;max-width:100%;min-height:3rem;font:12px monospace}
form.try button{margin:.3rem 0}.creds label{display:block;margin:.3rem 0}
@media(max-width:50rem){body{display:block}nav{width:auto;height:auto;position:static}}
"""

_JS = """
(function(){var q=document.getElementById('q');q.hidden=false;
q.addEventListener('input',function(){var t=q.value.toLowerCase();
document.querySelectorAll('article').forEach(function(a){
a.hidden=t!==''&&a.dataset.search.indexOf(t)<0;});});
function seg(v){return encodeURIComponent(v);}
function target(f){var path=f.dataset.path,qs=[],body=null;
f.querySelectorAll('[data-in]').forEach(function(e){var v=e.value,w=e.dataset.in;
if(w==='path'){var enc=e.name==='path'?v.replace(/^\\/+/,'').split('/').map(seg).join('/'):seg(v);
path=path.split('{'+e.name+'}').join(enc);}
else if(w==='query'){if(v!=='')qs.push(seg(e.name)+'='+seg(v).replace(/%2C/gi,','));}
else if(w==='body'){body=v;}});
return {url:path+(qs.length?'?'+qs.join('&'):''),body:body};}
function headers(f,body){var h={'Accept':'application/json'},k=document.getElementById('try-key'),
a=document.getElementById('try-admin');if(body!==null)h['Content-Type']='application/json';
if(f.dataset.auth==='key'&&k&&k.value)h[k.dataset.header]=k.value;
if(f.dataset.auth==='admin'&&a&&a.value)h['Authorization']='Bearer '+a.value;return h;}
function show(out,r,text){var ct=r.headers.get('content-type')||'',shown=text;
if(ct.indexOf('json')>=0){try{shown=JSON.stringify(JSON.parse(text),null,2);}catch(e){}}
var head=r.status+' '+r.statusText;['x-cache','x-request-id','location'].forEach(function(n){
var v=r.headers.get(n);if(v)head+='\\n'+n+': '+v;});
out.textContent=head+'\\n\\n'+(shown.length>200000?shown.slice(0,200000)+'\\n…':shown);}
document.querySelectorAll('form.try').forEach(function(f){
f.addEventListener('submit',function(ev){ev.preventDefault();
var out=f.querySelector('.out'),t=target(f),m=f.dataset.method;out.hidden=false;
out.textContent=m+' '+t.url+' …';
fetch(t.url,{method:m,headers:headers(f,t.body),body:t.body,redirect:'manual',
credentials:'same-origin'}).then(function(r){
if(r.type==='opaqueredirect'){out.textContent='redirect (the image is elsewhere: '+
'open '+t.url+' in a tab to follow it)';return;}
return r.text().then(function(text){show(out,r,text);});
}).catch(function(e){out.textContent=m+' '+t.url+' failed: '+e;});});});})();
"""


# -- serving --------------------------------------------------------------------------


class _Described:
    """The spec bytes and the page for the app's current config and rules (memoized)."""

    __slots__ = ("_key", "html", "json")

    def __init__(self) -> None:
        self._key: tuple[object, object] | None = None
        self.json = b""
        self.html = b""

    def refresh(self, app: web.Application) -> _Described:
        pipeline = app.get(PIPELINE)
        live, rules = (pipeline.config, pipeline.rules) if pipeline else (app[CONFIG], app[RULES])
        if self._key is None or self._key[0] is not live or self._key[1] is not rules:
            startup = app[CONFIG]  # the client middleware enforces the startup auth config
            spec = build_openapi(
                rules,
                access_key_header=startup.auth.header if startup.auth.keyed else None,
                passthrough_services=live.upstream.allowed_services,
            )
            self.json, self.html = dumps(spec), render_docs(spec).encode()
            self._key = (live, rules)
        return self


Wrap = Callable[..., Callable[[web.Request], Awaitable[web.StreamResponse]]]


def add_routes(app: web.Application, wrap: Wrap) -> None:
    """Serve ``/openapi.json`` and ``/docs``, also under ``/_bloxproxy/``; other methods
    get a 405 problem (not the catch-all's passthrough or 404)."""
    described = _Described()

    async def spec(request: web.Request) -> web.Response:
        only_get(request)
        body = described.refresh(request.app).json
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "no-cache"}
        )

    async def docs(request: web.Request) -> web.Response:
        only_get(request)
        body = described.refresh(request.app).html
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
        )

    for prefix in ("/", "/_bloxproxy/"):
        gated = prefix == "/"  # the top-level copies need the access key, like the API
        app.router.add_route("*", prefix + "openapi.json", wrap(spec, gated=gated))
        app.router.add_route("*", prefix + "docs", wrap(docs, gated=gated))
