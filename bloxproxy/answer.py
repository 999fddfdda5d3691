"""What the pipeline hands back to the front door: one answer, as a plain value.

The pipeline (:mod:`bloxproxy.pipeline`) never builds an HTTP response: it returns an
:class:`Answer` — status, body, the upstream headers it passes on, the content type and
ETag it chose, and the :class:`~bloxproxy.cache.result.Fetched` that says how the cache got
it — and the front door turns that into HTTP once (:mod:`bloxproxy.prepared`), cache headers
and 304 included, and remembers it for the fast path when it may. A whole list
(:mod:`bloxproxy.walk`) is an answer whose body is a ``stream`` of chunks, which the front
door writes as they come and never remembers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from .cache.entry import Entry
from .cache.result import Fetched

__all__ = ["Answer", "Headers"]

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Answer:
    """One answer of the pipeline (see the module docstring)."""

    status: int
    body: bytes
    headers: Headers = ()  # upstream headers passed on as they are (passthrough)
    content_type: str | None = None  # ours (clean routes, problems); None: the headers' own
    etag: str = ""  # set when the answer is (or was just) cached
    fetched: Fetched | None = None  # how the cache got it; None: not through the cache
    route: str = "none"
    # How any entry of this key becomes this body (a clean 200; None: the entry's body as
    # it is): the front door's fast path from Redis renders with it.
    renderer: Callable[[Entry], bytes] | None = None
    # A body made while it is sent (a whole list, walk.py), instead of ``body``: written chunk
    # by chunk (chunked), closed when the client goes, never remembered by the fast path.
    stream: AsyncGenerator[bytes, None] | None = None
