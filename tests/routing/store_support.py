"""Helpers shared by the store, table and snapshot tests (records, polling waits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from routing.models import RouteRecord, decode_record


def make_record(
    host: str,
    version: int = 1,
    *,
    port: int = 8001,
    deployment: str = "dep-1",
    space: str = "space-1",
    service: str = "svc-1",
) -> RouteRecord:
    """A small valid route record; ``port`` makes records of one host distinguishable."""
    return decode_record(
        {
            "host": host,
            "version": version,
            "space_id": space,
            "service_id": service,
            "updated_at": 1_700_000_000_000 + version,
            "endpoints": [
                {
                    "path_prefix": "/",
                    "methods": [],
                    "targets": [
                        {
                            "deployment_id": deployment,
                            "weight": 10000,
                            "status": "active",
                            "upstreams": [f"http://127.0.0.1:{port}"],
                        }
                    ],
                }
            ],
        }
    )


def hosts(n: int, domain: str = "example.com") -> list[str]:
    return [f"h{i:05d}.{domain}" for i in range(n)]


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 1.0, interval: float = 0.002
) -> float:
    """Poll ``predicate`` until true; return the seconds it took, or fail the test."""
    started = time.perf_counter()
    deadline = started + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.perf_counter() - started
