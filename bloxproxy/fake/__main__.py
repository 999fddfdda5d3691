"""Run the fake Roblox upstream: ``python -m bloxproxy.fake --port 8081 [--latency 0.02]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .app import run_fake


def main() -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m bloxproxy.fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per answer")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake(args.host, args.port, args.latency))


if __name__ == "__main__":
    main()
