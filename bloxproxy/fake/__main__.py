"""Run the fake Roblox upstream.

``python -m bloxproxy.fake --port 8081 [--latency 0.02] [--ip-limit 40/s [--ip-burst 40]
[--ip-limit-per-service]]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .app import run_fake
from .limits import IpLimit


def main() -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m bloxproxy.fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per answer")
    parser.add_argument(
        "--ip-limit",
        metavar="RATE",
        help="per-client-IP limit such as 40/s, 2400/min or 100/10s (429s over it; default off)",
    )
    parser.add_argument(
        "--ip-burst", type=int, metavar="N", help="bucket size (default: the rate per second)"
    )
    parser.add_argument(
        "--ip-limit-per-service",
        action="store_true",
        help="one bucket per (client IP, service) instead of one per client IP",
    )
    args = parser.parse_args()
    limit = None
    if args.ip_limit:
        try:
            limit = IpLimit.parse(
                args.ip_limit, burst=args.ip_burst, per_service=args.ip_limit_per_service
            )
        except ValueError as exc:
            parser.error(f"--ip-limit: {exc}")
    elif args.ip_burst is not None or args.ip_limit_per_service:
        parser.error("--ip-burst and --ip-limit-per-service need --ip-limit")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake(args.host, args.port, args.latency, ip_limit=limit))


if __name__ == "__main__":
    main()
