"""Composite routes: one clean answer made of several other clean routes' answers.

A rule with ``compose`` (:class:`~bloxproxy.rules.Composite`, ``docs/RULES.md``, "Composite
routes") lists parts; each part is an ordinary clean route asked with parameters rendered
from the composite's own. :func:`composite_answer` asks every chosen part at once through
:meth:`Pipeline.route_answer`, so each part is one request like any other: its own cache
entry (and stale serving), the micro-batcher for batch routes (a hundred profiles of
distinct users ask presence in one or two upstream calls, not a hundred), the limiter and
its fair share for the caller, retries and breakers. Each part is bounded by its deadline.

- **Which parts** (:func:`chosen`): all, or those ``?include=`` names (comma-separated or
  repeated); the main part is always asked (it says whether the thing exists). An unknown
  name is a 400 problem listing the allowed ones.
- **What each part came to** (:func:`outcome_of`, :func:`problem_reason`): its rendered
  answer (``first``: the first item of a list answer; ``pick``: one value of it), or why it
  is missing: ``timeout``, ``not found``, ``upstream 503`` (Roblox's status), or the
  problem's ``code`` (``upstream_unavailable``, ``circuit_open``…).
- **The answer** (:func:`merge`): ``{part: value, ..., "missing": [{part, reason, status},
  ...]}``, 200 as long as the main part is there; without it, the problem the main part
  would have answered on its own route (a 404 for an unknown user; 504 when it ran out of
  time), with ``missing`` in it.
- **Caching**: the composite answer itself is never stored (``Cache-Control: no-store``):
  each part is cached under its own route's policy, so a part refreshed or purged on its
  own is what the next composite answer shows.

The merge and the reasons are pure functions of the parts' answers (table tests in
``tests/test_compose.py``). What it needs of the pipeline is described here as a
:class:`Pipeline` protocol, so that imports point one way (pipeline -> compose).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from multidict import MultiDict, MultiMapping

from . import clean, normalize
from .answer import Answer
from .errors import HTTPProblem, bad_request
from .rules import INCLUDE_PARAM, MISSING_KEY, Composite, Part, Route
from .upstream.client import Caller

__all__ = [
    "Outcome",
    "Pipeline",
    "chosen",
    "composite_answer",
    "merge",
    "outcome_of",
    "problem_reason",
]

log = logging.getLogger("bloxproxy")

TIMEOUT = "timeout"
NOT_FOUND = "not found"
_SHOWN = 40  # characters of an unknown part name repeated in a problem


class Pipeline(Protocol):
    """What a composite needs of the pipeline that calls it (``bloxproxy/pipeline.py``'s
    ``Pipeline``): described here, so that imports point one way (pipeline -> compose)."""

    async def route_answer(
        self,
        route: Route,
        values: dict[str, Any],
        headers: MultiMapping[str],
        caller: Caller,
        credential: str,
        instance: str,
    ) -> Answer: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one part came to: its value, or why it is missing (``reason`` set)."""

    value: Any = None
    reason: str | None = None  # None: the part is there
    status: int = 200  # what the part's own route answered (504: it ran out of time)
    result: str = ""  # how the cache got it (X-Cache of the part), when it answered
    retry_after: str | None = None  # the part's Retry-After, when its problem had one

    @property
    def missing(self) -> bool:
        return self.reason is not None


def chosen(composite: Composite, include: Sequence[str]) -> tuple[Part, ...]:
    """The parts ``?include=`` asks for (each value comma-separated; none: every part), in
    the composite's order and always with the main part; a 400 problem naming the unknown
    ones and the allowed ones."""
    if not include:
        return composite.parts
    names = composite.part_names
    wanted: set[str] = set()
    unknown: dict[str, None] = {}  # the first few, in the order sent (a set's cost per name)
    more = False
    for text in include:
        for name in text.split(","):
            if name in names:
                wanted.add(name)
            elif len(unknown) < 5:
                unknown[name] = None
            elif name not in unknown:
                more = True
    if unknown:
        shown = ", ".join(repr(_cut(n)) for n in unknown) + (" …" if more else "")
        allowed = ", ".join(names)
        reason = f"names no part: {shown} (allowed: {allowed})"
        problem = bad_request(
            f"invalid parameters: {INCLUDE_PARAM} {reason}",
            invalid=[{"name": INCLUDE_PARAM, "in": "query", "reason": reason}],
        )
        problem.extra["allowed"] = list(names)
        raise problem
    wanted.add(composite.main)
    return tuple(p for p in composite.parts if p.name in wanted)


def _cut(name: str) -> str:
    return name if len(name) <= _SHOWN else name[: _SHOWN - 1] + "…"


def problem_reason(status: int, problem: object) -> str:
    """Why a part answered with the problem ``problem`` (its parsed body, status
    ``status``): ``not found``, ``upstream <N>`` when Roblox answered an error status, else
    the problem's ``code`` (``status <N>`` without one)."""
    if status == 404:
        return NOT_FOUND
    if isinstance(problem, dict):
        upstream = problem.get("upstream_status")
        if type(upstream) is int:
            return f"upstream {upstream}"
        code = problem.get("code")
        if isinstance(code, str) and code:
            return code
    return f"status {status}"


def outcome_of(
    part: Part, status: int, body: bytes, result: str = "", retry_after: str | None = None
) -> Outcome:
    """What the part's route answered (``status``, its rendered ``body``, a problem's
    ``Retry-After``) makes of it."""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
        if status == 200:
            return Outcome(reason="upstream_bad_response", status=502, result=result)
    if status != 200:
        reason = problem_reason(status, value)
        return Outcome(reason=reason, status=status, result=result, retry_after=retry_after)
    if part.first:
        items = value.get("data") if isinstance(value, dict) else None
        if not isinstance(items, list):
            return Outcome(reason="upstream_bad_response", status=502, result=result)
        if not items:
            return Outcome(reason=NOT_FOUND, status=404, result=result)
        value = items[0]
    if part.pick is not None:
        value = normalize.get_path(value, part.pick)
        if value is normalize.MISSING:
            return Outcome(reason=NOT_FOUND, status=404, result=result)
    return Outcome(value, result=result)


def merge(composite: Composite, parts: Sequence[Part], outcomes: Sequence[Outcome]) -> Any:
    """The composite answer's body: every part that is there under its name, in the
    composite's order, then ``missing``. Raises the main part's problem when it is missing
    (404 when not found, 504 on timeout, else its own status), ``missing`` in it."""
    body: dict[str, Any] = {}
    missing: list[dict[str, Any]] = []
    main: Outcome | None = None
    for part, outcome in zip(parts, outcomes, strict=True):
        if part.name == composite.main:
            main = outcome
        if outcome.missing:
            missing.append({"part": part.name, "reason": outcome.reason, "status": outcome.status})
        else:
            body[part.name] = outcome.value
    if main is None:
        raise ValueError(f"the main part {composite.main!r} was not asked")
    if main.missing:
        status, reason = main.status, main.reason
        if reason == NOT_FOUND:
            extra = {MISSING_KEY: missing}
            raise HTTPProblem(404, f"{composite.main} not found", code="not_found", extra=extra)
        raise HTTPProblem(
            status if status >= 400 else 502,
            f"{composite.main} is missing ({reason}): nothing to compose",
            code="main_part_missing",
            extra={MISSING_KEY: missing},
            headers={"Retry-After": main.retry_after} if main.retry_after else None,
        )
    body[MISSING_KEY] = missing
    return body


def cache_summary(outcomes: Sequence[Outcome]) -> str:
    """``X-Cache`` of a composite answer: ``HIT`` when every part that answered came from
    the cache as it was, else ``MISS`` (each part's own says more: ask its route)."""
    hit = all(o.result in ("HIT", "STALE") for o in outcomes if o.result)
    return "HIT" if hit and any(o.result for o in outcomes) else "MISS"


def part_values(part: Part, values: dict[str, Any]) -> dict[str, Any]:
    """The part route's parameters rendered from the composite's ``values`` and parsed as a
    client's would be (a 400 when the part's parameter refuses the value)."""
    route = part.route
    path_names = {p.name for p in route.path_params}
    raw_path: dict[str, str] = {}
    query: MultiDict[str] = MultiDict()
    for name, text in part.params.render(values):
        if name in path_names:
            raw_path[name] = text
        else:
            query.add(name, text)
    return clean.values_of(route, raw_path, query)


async def _run(
    pipeline: Pipeline,
    part: Part,
    values: dict[str, Any],
    headers: MultiMapping[str],
    caller: Caller,
    credential: str,
    instance: str,
) -> Outcome:
    """One part, within its deadline; never raises but for cancellation."""
    try:
        answer = await asyncio.wait_for(
            pipeline.route_answer(
                part.route, part_values(part, values), headers, caller, credential, instance
            ),
            part.deadline,
        )
    except TimeoutError:
        return Outcome(reason=TIMEOUT, status=504)
    except HTTPProblem as problem:  # no answer at all: unreachable, no slot, bad parameters
        shown = {**problem.extra, "code": problem.code}
        return Outcome(
            reason=problem_reason(problem.status, shown),
            status=problem.status,
            retry_after=problem.headers.get("Retry-After"),
        )
    except Exception as exc:  # a bug of ours: this part is missing, the rest is answered
        log.error(
            "composite part failed",
            exc_info=exc,
            extra={"request_id": caller.request_id, "part": part.name},
        )
        return Outcome(reason="internal_error", status=500)
    try:
        fetched = answer.fetched
        result = fetched.result if fetched is not None else ""
        retry_after = next((v for k, v in answer.headers if k.lower() == "retry-after"), None)
        return outcome_of(part, answer.status, answer.body, result, retry_after)
    finally:
        _release(answer)


def _release(answer: Answer) -> None:
    """Give back the byte budget's hold on the upstream body behind ``answer`` (once): the
    composite answer is made of the rendered parts, not of the upstream bodies."""
    fetched = answer.fetched
    if fetched is not None and fetched.lease is not None:
        lease, fetched.lease = fetched.lease, None
        lease.release()


async def composite_answer(
    pipeline: Pipeline,
    composite: Composite,
    values: dict[str, Any],
    query: MultiMapping[str],
    headers: MultiMapping[str],
    caller: Caller,
    credential: str,
    instance: str,
) -> Answer:
    """The answer of ``composite`` for its parsed ``values`` and the request's ``query``
    (``include``): every chosen part asked at once, each within its deadline."""
    parts = chosen(composite, query.getall(INCLUDE_PARAM, ()))
    outcomes = await asyncio.gather(
        *(_run(pipeline, p, values, headers, caller, credential, instance) for p in parts)
    )
    body = merge(composite, parts, outcomes)
    return Answer(
        200,
        orjson.dumps(body),
        headers=(("X-Cache", cache_summary(outcomes)), ("Cache-Control", "no-store")),
        content_type=clean.JSON,
        route=composite.id,
    )
