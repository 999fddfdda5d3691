"""Open files: the process's limit, and how many client connections fit under it.

Every client connection is a file descriptor, and so is every upstream and Redis
connection. Containers often start with a soft ``RLIMIT_NOFILE`` of 1024 under a far
higher hard limit: ``serve`` raises the soft limit to the hard one at start
(:func:`raise_file_limit`), and caps client connections below what is left once the pools
are counted (:func:`connection_cap`), so that the process never runs out of descriptors —
out of them, asyncio's accept loop logs a traceback per attempt and serves nobody.
"""

from __future__ import annotations

import resource

from .config import Config

FILE_LIMIT_CEILING = 1 << 20  # what "raise to the hard limit" means when that is unlimited


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (a container's soft limit is often
    1024 while the hard one is far higher): ``(before, after)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FILE_LIMIT_CEILING if soft == resource.RLIM_INFINITY else soft


# Descriptors the process needs besides client connections: the interpreter, the event
# loop, listeners, logs, the fake upstream or a watcher — measured at ~20, doubled.
BASE_FILES = 48


def connection_cap(config: Config, file_limit: int, *, extra: int = 0) -> int:
    """``server.max_connections``, lowered so that client connections leave room in
    ``file_limit`` for the upstream pool, the Redis pool and ``extra`` (another listener's
    cap). With a limit too low for all of them, clients get at most half of it."""
    reserve = BASE_FILES + config.upstream.max_connections + extra
    if config.cache.redis.url:
        reserve += config.cache.redis.max_connections + 4  # + pub/sub and pipelined reads
    room = max(file_limit - reserve, file_limit // 2)
    return max(1, min(config.server.max_connections, room))
