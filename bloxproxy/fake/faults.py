"""Scripted faults for the fake Roblox upstream.

A :class:`Fault` describes how *one* request to a scripted path is answered.  Scripts are
queued per ``(method or any, service, path)`` with :meth:`FakeRoblox.script`; each request
consumes the next fault, and once the list is exhausted the endpoint behaves normally.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import orjson
from aiohttp import web

JSON_CT = "application/json; charset=utf-8"

# Roblox-style error (code, message) per status.  429 and 503 are the ones the brief asks for;
# the others follow the same shape with the HTTP reason phrase (guess).
_STATUS_ERRORS: dict[int, tuple[int, str]] = {
    400: (0, "BadRequest"),
    401: (0, "Authorization has been denied for this request."),
    403: (0, "Forbidden"),
    404: (0, "NotFound"),
    429: (4, "Too many requests."),
    500: (0, "InternalServerError"),
    503: (0, "Service Unavailable"),
}


def status_error(status: int) -> tuple[int, str]:
    """The default Roblox-style ``(code, message)`` for an error status."""
    found = _STATUS_ERRORS.get(status)
    if found is not None:
        return found
    try:
        return 0, http.HTTPStatus(status).phrase
    except ValueError:
        return 0, "Error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """How to answer one request.  All fields are optional; ``Fault()`` and
    ``Fault(status=200)`` mean "answer normally".

    Precedence: ``drop`` > ``reset_mid_body`` > ``redirect_to`` > ``malformed_json`` >
    ``body``/``content_type`` > ``body_size`` > ``status`` (error) > normal answer.
    ``delay`` (seconds, cancellable ``asyncio.sleep``) is applied first in every case and
    ``headers`` are added to whatever answer is sent.
    """

    status: int | None = None  # non-2xx: Roblox error body; also the status of body faults
    code: int | None = None  # error code for ``status`` faults (default per status)
    message: str | None = None  # error message for ``status`` faults (default per status)
    retry_after: str | None = None  # adds a ``Retry-After`` header
    delay: float = 0.0
    drop: bool = False  # close the connection without any response
    reset_mid_body: bool = False  # send headers + part of a longer declared body, then close
    malformed_json: bool = False  # 200 application/json with body ``{"data": [``
    content_type: str | None = None  # arbitrary body (with ``body``)
    body: bytes | str | None = None
    redirect_to: str | None = None  # 302 (or ``status`` if 3xx) with Location
    body_size: int | None = None  # 200 with a valid JSON body of exactly this many bytes
    headers: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be 100..599, not {self.status}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.body_size is not None and self.body_size < 0:
            raise ValueError("body_size must be >= 0")

    @property
    def is_normal(self) -> bool:
        """True if the answer itself is the endpoint's normal one (maybe delayed/with headers)."""
        return not (
            self.drop
            or self.reset_mid_body
            or self.redirect_to is not None
            or self.malformed_json
            or self.body is not None
            or self.content_type is not None
            or self.body_size is not None
            or (self.status is not None and self.status != 200)
        )

    @classmethod
    def from_json(cls, obj: object) -> Fault:
        """Build a fault from a JSON object with the same (snake_case) field names.

        Raises ``ValueError`` for unknown keys or wrongly typed values.
        """
        if not isinstance(obj, dict):
            raise ValueError("a fault must be a JSON object")
        kinds: dict[str, tuple[type, ...]] = {
            "status": (int,),
            "code": (int,),
            "message": (str,),
            "retry_after": (str,),
            "delay": (int, float),
            "drop": (bool,),
            "reset_mid_body": (bool,),
            "malformed_json": (bool,),
            "content_type": (str,),
            "body": (str,),
            "redirect_to": (str,),
            "body_size": (int,),
            "headers": (dict,),
        }
        assert set(kinds) == {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in obj.items():
            expected = kinds.get(key)
            if expected is None:
                raise ValueError(f"unknown fault field {key!r}")
            if value is None:
                continue
            bad_bool = isinstance(value, bool) and bool not in expected
            if bad_bool or not isinstance(value, expected):
                raise ValueError(f"fault field {key!r} has the wrong type")
            if isinstance(value, dict):
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                    raise ValueError("fault headers must map strings to strings")
                value = dict(value)
            elif key == "delay" and isinstance(value, int | float):
                value = float(value)
            kwargs[key] = value
        return cls(**kwargs)  # type: ignore[arg-type]


def _headers(fault: Fault, content_type: str | None) -> dict[str, str]:
    headers: dict[str, str] = {"Cache-Control": "no-cache"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    headers.update(fault.headers)
    return headers


def error_body(code: int, message: str) -> bytes:
    """A legacy Roblox error body ``{"errors":[{"code":..,"message":..}]}``."""
    return orjson.dumps({"errors": [{"code": code, "message": message}]})


def fault_response(fault: Fault, viewer_tag: bytes | None) -> web.Response | None:
    """The complete answer for a non-normal fault, or None if the endpoint must answer
    (``drop`` and ``reset_mid_body`` are handled by the caller, which owns the transport)."""
    status = fault.status
    if fault.redirect_to is not None:
        code = status if status is not None and 300 <= status < 400 else 302
        headers = _headers(fault, None)
        headers["Location"] = fault.redirect_to
        return web.Response(status=code, headers=headers)
    if fault.malformed_json:
        return web.Response(
            status=status or 200, body=b'{"data": [', headers=_headers(fault, JSON_CT)
        )
    if fault.body is not None or fault.content_type is not None:
        raw = fault.body.encode() if isinstance(fault.body, str) else (fault.body or b"")
        ctype = fault.content_type or "text/plain; charset=utf-8"
        return web.Response(status=status or 200, body=raw, headers=_headers(fault, ctype))
    if fault.body_size is not None:
        pad = max(0, fault.body_size - len(b'{"data":""}'))
        raw = b'{"data":"' + b"x" * pad + b'"}'
        return web.Response(status=status or 200, body=raw, headers=_headers(fault, JSON_CT))
    if status is not None and status != 200:
        if status < 200 or status in (204, 304):
            return web.Response(status=status, headers=_headers(fault, None))
        default_code, default_message = status_error(status)
        raw = error_body(
            default_code if fault.code is None else fault.code,
            default_message if fault.message is None else fault.message,
        )
        if viewer_tag is not None:
            raw = b'{"_fakeViewer":"' + viewer_tag + b'",' + raw[1:]
        return web.Response(status=status, body=raw, headers=_headers(fault, JSON_CT))
    return None


def extra_headers(fault: Fault) -> Mapping[str, str]:
    """Headers a normal-answer fault adds to the endpoint's answer."""
    if fault.retry_after is None:
        return fault.headers
    return {"Retry-After": fault.retry_after, **fault.headers}
