"""The workers of one ``serve --workers N``, to one another: the metrics view.

The supervisor makes a private directory (mode 0700) and gives each worker its index in it.
Each worker serves its metric families as plain data (:func:`bloxproxy.metricsview.encode`)
at ``GET /snapshot`` on the Unix socket ``worker-<index>.sock`` there; the worker a scrape
of ``/_bloxproxy/metrics`` reaches asks every other one at once, each within
:data:`TIMEOUT`, and answers the merge of them all (:func:`bloxproxy.metricsview.merge`).
A worker that does not answer in time (starting, restarting, stuck) is left out of the sums
and counted in ``bloxproxy_workers{state="missing"}``. Nothing of this is on a request's
path: the families are read only when a scrape asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from .metricsview import Family, decode, encode, families, merge

TIMEOUT = 1.0  # seconds a sibling has to send its snapshot
SNAPSHOT_PATH = "/snapshot"


@dataclass(frozen=True, slots=True)
class Siblings:
    """Where the workers of one supervisor find one another, and which one this is."""

    directory: str
    index: int
    count: int

    def socket(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


async def serve_snapshots(siblings: Siblings, registry: CollectorRegistry) -> web.AppRunner:
    """Serve this worker's families on its socket (a stale socket of the worker it replaces
    is removed first); the caller cleans the runner up."""

    async def snapshot(request: web.Request) -> web.Response:
        body = encode(families(registry.collect()))
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(SNAPSHOT_PATH, snapshot)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    path = siblings.socket(siblings.index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    await web.UnixSite(runner, path).start()
    return runner


async def fetch(path: str, wait: float = TIMEOUT) -> list[Family] | None:
    """One sibling's families, or None when it does not answer well in time."""
    try:
        async with asyncio.timeout(wait):
            connector = aiohttp.UnixConnector(path=path)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get("http://worker" + SNAPSHOT_PATH) as resp:
                    if resp.status != 200:
                        return None
                    return decode(await resp.read())
    except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def merged(
    siblings: Siblings,
    registry: CollectorRegistry,
    *,
    shared_budgets: bool,
    wait: float = TIMEOUT,
) -> list[Family]:
    """This worker's families merged with every sibling's that answers within ``wait`` seconds."""
    own = families(registry.collect())
    others = siblings.others()
    got = await asyncio.gather(*(fetch(siblings.socket(i), wait) for i in others))
    views = [(str(siblings.index), own)]
    views += [(str(i), fams) for i, fams in zip(others, got, strict=True) if fams is not None]
    return merge(views, expected=siblings.count, shared_budgets=shared_budgets)
