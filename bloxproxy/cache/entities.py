"""Entities, not URLs: batch answers split into one cache entry per id, and any request for
ids answered from those entries. Pure functions over a :class:`BatchSpec`; the async side
(the micro-batcher, the stores) is :mod:`bloxproxy.cache.batcher` and
:mod:`bloxproxy.cache.fetcher`.

A rule declares what an upstream batch endpoint looks like (``backend.batch``, see
docs/RULES.md): which query parameter (GET) or body field (POST) carries the id list, the
endpoint's cap, where the answer's list is and which field of an item names its id. Then a
request for ids ``[a, b, c]`` — one id or many, from either front door — is

1. **split** (:func:`ask_of`): its *variant* (everything but the ids: size and format of a
   thumbnail, ``excludeBannedUsers`` …) and its ids, in the caller's order;
2. answered per id from the entries ``entity_key(variant, id)``, the missing ids asked
   upstream in batches of the same variant (:func:`batch_request`), whose answers are
   **split** into items per id (:func:`items_of`; an id Roblox left out is *absent*, a
   negative entry);
3. **assembled** (:func:`assemble`) into the answer Roblox gives for that request: the list
   of the items in the order asked, the absent ones left out, under the same key.

A request that this cannot answer exactly as Roblox would — more ids than the cap, an id
twice, an id of the wrong form, a body that is not a JSON object with a list of ids — is not
split (``ask_of`` returns None) and goes upstream as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson

from ..rules import BatchSpec
from ..tagging import MAX_TAGS, valid_tag
from ..upstream.client import UpstreamRequest

__all__ = [
    "Ask",
    "ask_of",
    "assemble",
    "batch_request",
    "canonical_json",
    "entity_key",
    "entity_tags",
    "items_of",
    "request_tags",
]

# Ids that can be merged safely: Roblox's numeric ids, and names of the username alphabet.
_NUMERIC = re.compile(r"[1-9][0-9]{0,18}")
_NAME = re.compile(r"[A-Za-z0-9_]{1,50}")


@dataclass(frozen=True, slots=True)
class Ask:
    """A request split into its variant (the request without its ids) and its ids."""

    variant: UpstreamRequest  # ids removed: what every batch of these ids shares
    ids: tuple[str, ...]  # as the caller wrote them, in its order
    norm: tuple[str, ...]  # as entities are keyed (lower-cased when matched so)


def canonical_json(value: Any) -> bytes:
    """One spelling of a JSON value: object keys sorted, no spaces (list order kept)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _norm(spec: BatchSpec, ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(i.lower() for i in ids) if spec.match == "case_insensitive" else tuple(ids)


def _valid(spec: BatchSpec, ids: Sequence[str]) -> bool:
    pattern = _NUMERIC if spec.numeric else _NAME
    if not ids or len(ids) > spec.max or not all(pattern.fullmatch(i) for i in ids):
        return False
    return len(set(_norm(spec, ids))) == len(ids)  # an id twice: Roblox's own business


def ask_of(spec: BatchSpec, req: UpstreamRequest) -> Ask | None:
    """``req`` split into its variant and ids, or None when it cannot be answered from
    entities exactly as Roblox would answer it (see the module docstring)."""
    if req.method != spec.method or req.service != spec.service or req.path != spec.path:
        return None
    if spec.method == "GET":
        try:
            pairs = parse_qsl(req.query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return None
        ids: list[str] = []
        rest: list[tuple[str, str]] = []
        for name, value in pairs:
            if name == spec.ids:
                ids.extend(value.split(","))
            else:
                rest.append((name, value))
        if any(not i for i in ids):
            return None
        # (the order of the rest is kept: the variant's cache key puts it in one order)
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in rest)
        variant = dataclasses.replace(req, query=query)
    else:
        try:
            data = orjson.loads(req.body or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get(spec.ids), list):
            return None
        raw = data.pop(spec.ids)
        if spec.numeric:
            if not all(type(i) is int for i in raw):
                return None
            ids = [str(i) for i in raw]
        else:
            if not all(isinstance(i, str) for i in raw):
                return None
            ids = list(raw)
        variant = dataclasses.replace(req, body=canonical_json(data))
    if not _valid(spec, ids):
        return None
    return Ask(variant, tuple(ids), _norm(spec, ids))


def entity_key(variant_key: str, norm_id: str) -> str:
    """The cache key of one id's entry: its variant's key (the upstream request without the
    ids, so a purge by the endpoint's prefix drops its entities too) and the id."""
    return f"{variant_key} id={norm_id}"


def batch_request(spec: BatchSpec, variant: UpstreamRequest, ids: Sequence[str]) -> UpstreamRequest:
    """The upstream call that asks ``ids`` (at most ``spec.max``) in ``variant``: a GET's
    ids first, then the rest of its query as the first caller wrote it."""
    if spec.method == "GET":
        if spec.list_format == "csv":
            pairs = [f"{quote(spec.ids, safe='')}={quote(','.join(ids), safe=',')}"]
        else:
            pairs = [f"{quote(spec.ids, safe='')}={quote(i, safe='')}" for i in ids]
        query = "&".join([*pairs, variant.query] if variant.query else pairs)
        return dataclasses.replace(variant, query=query)
    data = orjson.loads(variant.body or b"{}")
    data[spec.ids] = [int(i) for i in ids] if spec.numeric else list(ids)
    headers = tuple((k, v) for k, v in variant.headers if k.lower() != "content-type")
    return dataclasses.replace(
        variant,
        body=canonical_json(data),
        headers=(*headers, ("Content-Type", "application/json")),
    )


def items_of(spec: BatchSpec, body: bytes) -> dict[str, bytes] | None:
    """A batch answer split into its items per (normalized) id, each as its JSON bytes;
    None when the answer is not the endpoint's shape (not JSON, no list, an item without
    its key). An id asked but absent from the result is simply not in it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get(spec.items), list):
        return None
    out: dict[str, bytes] = {}
    for item in data[spec.items]:
        if not isinstance(item, dict) or spec.key not in item:
            return None
        ident = item[spec.key]
        if isinstance(ident, bool) or not isinstance(ident, int | str):
            return None
        norm = str(ident).lower() if spec.match == "case_insensitive" else str(ident)
        out.setdefault(norm, orjson.dumps(item))
    return out


def assemble(spec: BatchSpec, ask: Ask, items: Sequence[bytes | None]) -> bytes:
    """The answer to ``ask`` from its ids' items (None: absent), in the order asked, as
    Roblox writes it: ``{"<items>": [...]}``; an echoing key field says each id the way
    this caller spelled it."""
    parts: list[bytes] = []
    for ident, item in zip(ask.ids, items, strict=True):
        if item is None:
            continue
        if spec.echo:
            data = orjson.loads(item)
            data[spec.key] = ident
            item = orjson.dumps(data)
        parts.append(item)
    return b'{"' + spec.items.encode() + b'":[' + b",".join(parts) + b"]}"


def entity_tags(spec: BatchSpec, norm_id: str, item: bytes | None) -> tuple[str, ...]:
    """The tags of one id's entry (``about: user`` → ``user:156``): for numeric ids the id;
    for names (usernames) the item's numeric ``id`` when it has one, so that a purge of
    ``user:156`` drops the answer to ``builderman`` too (a name Roblox left out has none)."""
    if not spec.about:
        return ()
    if spec.numeric:
        ident: object = norm_id
    else:
        if item is None:
            return ()
        try:
            data = orjson.loads(item)
        except orjson.JSONDecodeError:
            return ()
        ident = data.get("id") if isinstance(data, dict) else None
        if type(ident) is not int:
            return ()
    tag = f"{spec.about}:{ident}"
    return (tag,) if valid_tag(tag) else ()


def request_tags(spec: BatchSpec, req: UpstreamRequest) -> tuple[str, ...]:
    """The tags of a request to a batch endpoint stored whole (one :func:`ask_of` would not
    split: too many ids, an id twice): ``<about>:<id>`` for each numeric id it names."""
    if not spec.about or not spec.numeric or req.path != spec.path:
        return ()
    raw: list[object] = []
    if spec.method == "GET":
        try:
            pairs = parse_qsl(req.query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return ()
        raw = [i for name, value in pairs if name == spec.ids for i in value.split(",")]
    else:
        try:
            data = orjson.loads(req.body or b"")
        except orjson.JSONDecodeError:
            return ()
        if isinstance(data, dict) and isinstance(data.get(spec.ids), list):
            raw = data[spec.ids]
    out: dict[str, None] = {}
    for ident in raw:
        text = str(ident) if type(ident) is int else ident
        if isinstance(text, str) and _NUMERIC.fullmatch(text):
            out.setdefault(f"{spec.about}:{text}", None)
            if len(out) >= MAX_TAGS:
                break
    return tuple(out)
