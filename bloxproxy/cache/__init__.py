"""Response cache: the :class:`Entry` value, the :class:`Store` protocol and its stores.

:class:`MemoryStore` is the in-process L1; :class:`RedisStore` the shared L2.
"""

from ..errors import StoreUnavailable
from .entry import Entry, make_etag
from .redis_store import RedisStore
from .store import MemoryStore, Store

__all__ = ["Entry", "MemoryStore", "RedisStore", "Store", "StoreUnavailable", "make_etag"]
