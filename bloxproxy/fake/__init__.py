"""A bundled fake of the Roblox web APIs, used as the upstream in tests and benchmarks.

Serves ``/{service}/{path}`` (e.g. ``/users/v1/users/1``) with fixture data shaped like the
real responses, Roblox-style errors, cursor pagination, the CSRF handshake, per-credential
``_fakeViewer`` tags, scripted faults and a control API under ``/_fake/``.
"""

from .app import FAKE_STATE, create_fake_app, run_fake
from .data import PENDING_THUMBNAIL_USER_ID, SYNTHETIC_MAX, SYNTHETIC_MIN
from .faults import Fault
from .state import FakeRoblox, Recorded

__all__ = [
    "FAKE_STATE",
    "PENDING_THUMBNAIL_USER_ID",
    "SYNTHETIC_MAX",
    "SYNTHETIC_MIN",
    "FakeRoblox",
    "Fault",
    "Recorded",
    "create_fake_app",
    "run_fake",
]
