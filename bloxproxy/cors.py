"""CORS for browser clients: the decisions, as pure functions of the request's headers.

Off by default (``server.cors``). When on, the front door (:mod:`bloxproxy.front`) asks
:class:`Cors` two things:

- :meth:`Cors.preflight`: a browser's ``OPTIONS`` preflight (it carries
  ``Access-Control-Request-Method``) on a proxied path — allowed (204 and the
  ``Access-Control-Allow-*`` headers) or refused (a 403 problem saying why). A preflight is
  answered by the front door alone: it never reaches the pipeline, the cache or Roblox.
- :meth:`Cors.actual`: the headers an ordinary answer carries for the request's ``Origin``
  (``Access-Control-Allow-Origin`` for an allowed one, and ``Vary: Origin`` always, so a
  cache between us and the browser keeps answers for different origins apart);
  :meth:`Cors.wire` is the same as bytes for the fast hit path.

Origins are compared as browsers send them (``scheme://host[:port]``, lower case); any
other value, however long or strange, is simply not allowed, and a problem never quotes
more than a short prefix of it. Answers for allowed origins are memoized: their number is
bounded by the configuration, not by what clients send.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, CorsConfig

__all__ = ["Cors", "Preflight"]

# Request headers a browser may send without asking (the CORS-safelisted ones; Fetch
# standard). Content-Type is safelisted only with form and text values, so a JSON
# Content-Type is asked for and must be in server.cors.headers.
_SAFELISTED = frozenset({"accept", "accept-language", "content-language"})
_VARY_PREFLIGHT = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_SHOWN = 80  # characters of a refused value a problem quotes
_MAX_ASKED = 64  # header names a preflight may ask for at once


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")


@dataclass(frozen=True, slots=True)
class Preflight:
    """A preflight's outcome: allowed (204 with ``headers``) or not (403: ``reason``).
    ``headers`` are sent either way (``Vary``, at least)."""

    allowed: bool
    headers: tuple[tuple[str, str], ...]
    reason: str = ""


class Cors:
    """``server.cors`` compiled once (see the module docstring). ``key_header`` is the
    access key's header (``auth.header``) when keys are on: a page must be able to send it."""

    __slots__ = (
        "_any",
        "_credentials",
        "_exposed",
        "_headers",
        "_memo",
        "_methods",
        "_origins",
        "_preflight_static",
        "_vary_only",
        "_wire_memo",
    )

    def __init__(self, config: CorsConfig, key_header: str = "") -> None:
        self._origins = frozenset(o for o in config.origins if o != "*")
        self._any = "*" in config.origins
        self._credentials = config.allow_credentials
        self._methods = frozenset(config.methods)
        names = [*config.headers]
        if key_header and key_header.lower() not in {n.lower() for n in names}:
            names.append(key_header)
        self._headers = frozenset(n.lower() for n in names) | _SAFELISTED
        static = [
            ("Access-Control-Allow-Methods", ", ".join(config.methods)),
            ("Access-Control-Max-Age", str(int(config.max_age))),
        ]
        if names:
            static.append(("Access-Control-Allow-Headers", ", ".join(names)))
        if self._credentials:
            static.append(("Access-Control-Allow-Credentials", "true"))
        self._preflight_static = tuple(static)
        self._exposed = ", ".join(config.expose_headers)
        self._vary_only = (("Vary", "Origin"),)
        self._memo: dict[str, tuple[tuple[str, str], ...]] = {}
        self._wire_memo: dict[str, bytes] = {}

    @classmethod
    def build(cls, config: Config) -> Cors | None:
        """``server.cors`` of ``config``, or None when it is off."""
        cors = config.server.cors
        if not cors.enabled:
            return None
        return cls(cors, config.auth.header if config.auth.keyed else "")

    def _allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``; None: not allowed."""
        if self._any:
            return "*"
        if origin is None:
            return None
        lowered = origin.lower()  # browsers send it in lower case: the configured value
        return lowered if lowered in self._origins else None

    def preflight(
        self, origin: str | None, method: str | None, asked_headers: str | None
    ) -> Preflight:
        """The answer to a preflight with these ``Origin``, ``Access-Control-Request-Method``
        and ``Access-Control-Request-Headers`` values."""
        vary = ("Vary", _VARY_PREFLIGHT)
        if origin is None:
            return Preflight(False, (vary,), "a preflight needs an Origin header")
        allow = self._allow_origin(origin)
        if allow is None:
            return Preflight(False, (vary,), f"origin {_shown(origin)} is not allowed here")
        if not method or method not in self._methods:
            allowed = ", ".join(sorted(self._methods))
            return Preflight(
                False,
                (vary,),
                f"method {_shown(method or '')} is not allowed here (allowed: {allowed})",
            )
        if asked_headers:
            asked = [h.strip().lower() for h in asked_headers.split(",") if h.strip()]
            if len(asked) > _MAX_ASKED:
                return Preflight(False, (vary,), f"more than {_MAX_ASKED} headers asked for")
            refused = [h for h in asked if h not in self._headers]
            if refused:
                names = ", ".join(_shown(h) for h in refused[:5])
                return Preflight(False, (vary,), f"request headers not allowed here: {names}")
        granted = (("Access-Control-Allow-Origin", allow), *self._preflight_static, vary)
        return Preflight(True, granted)

    def actual(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """The CORS headers of an ordinary answer to a request with this ``Origin``."""
        allow = self._allow_origin(origin)
        if allow is None:
            return self._vary_only
        memo = self._memo.get(allow)  # keyed by the allowed value: bounded by the config
        if memo is not None:
            return memo
        out = [("Access-Control-Allow-Origin", allow)]
        if self._credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        if self._exposed:
            out.append(("Access-Control-Expose-Headers", self._exposed))
        out.append(("Vary", "Origin"))
        headers = self._memo[allow] = tuple(out)
        return headers

    def wire(self, origin: str | None) -> bytes:
        """:meth:`actual` as header lines (``Name: value\\r\\n`` each), for prepared answers."""
        key = self._allow_origin(origin) or ""  # "": not allowed (Vary only)
        wired = self._wire_memo.get(key)
        if wired is None:
            headers = self.actual(origin)
            wired = self._wire_memo[key] = "".join(f"{k}: {v}\r\n" for k, v in headers).encode()
        return wired
