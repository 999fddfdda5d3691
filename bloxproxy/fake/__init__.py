"""A bundled fake of the Roblox web APIs, used as the upstream in tests and benchmarks.

Serves ``/{service}/{path}`` (e.g. ``/users/v1/users/1``) with fixture data shaped like the
real responses, Roblox-style errors, cursor pagination, the documented batch caps, the CSRF
handshake, per-credential ``_fakeViewer`` tags, synthetic populations (users, groups,
universes) large enough for benchmarks, groups with long member lists, an optional
per-client-IP rate limit (legacy 429s without ``Retry-After``; ``x-ratelimit-*`` on Open
Cloud paths), scripted faults and thumbnail states, and a control API under ``/_fake/``.
"""

from .app import FAKE_STATE, answer, create_fake_app, run_fake
from .data import (
    LARGE_GROUP_MAX,
    LARGE_GROUP_MIN,
    PENDING_THUMBNAIL_USER_ID,
    SYNTHETIC_GROUP_MAX,
    SYNTHETIC_GROUP_MIN,
    SYNTHETIC_MAX,
    SYNTHETIC_MIN,
)
from .data_content import SYNTHETIC_PLACE_OFFSET, SYNTHETIC_UNIVERSE_MAX, SYNTHETIC_UNIVERSE_MIN
from .faults import Fault
from .limits import IpLimit
from .state import THUMBNAIL_STATES, FakeRoblox, Recorded

__all__ = [
    "FAKE_STATE",
    "LARGE_GROUP_MAX",
    "LARGE_GROUP_MIN",
    "PENDING_THUMBNAIL_USER_ID",
    "SYNTHETIC_GROUP_MAX",
    "SYNTHETIC_GROUP_MIN",
    "SYNTHETIC_MAX",
    "SYNTHETIC_MIN",
    "SYNTHETIC_PLACE_OFFSET",
    "SYNTHETIC_UNIVERSE_MAX",
    "SYNTHETIC_UNIVERSE_MIN",
    "THUMBNAIL_STATES",
    "FakeRoblox",
    "Fault",
    "IpLimit",
    "Recorded",
    "answer",
    "create_fake_app",
    "run_fake",
]
