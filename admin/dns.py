"""TXT lookups for hostname ownership proofs, behind a small pluggable interface.

The default resolver asks the system's DNS (dnspython, reading /etc/resolv.conf). Tests and
air-gapped set-ups use :class:`FixtureResolver`, backed by a JSON file ``{"name": ["txt", ...]}``
(DNS itself is outside the project, so a fixture is the honest boundary).
"""

from __future__ import annotations

import asyncio
import json
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver


class TxtResolver(Protocol):
    async def txt(self, name: str) -> list[str]:
        """TXT strings at ``name`` ([] when there are none or the name does not exist)."""
        ...


class SystemResolver:
    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    async def txt(self, name: str) -> list[str]:
        resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = self.timeout
        try:
            answer = await resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            return []
        out: list[str] = []
        for rdata in answer:
            out.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        return out


class FixtureResolver:
    """Reads the fixture file on every lookup, so tests can edit it while the admin runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def txt(self, name: str) -> list[str]:
        def load() -> list[str]:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    data = json.load(fh)
            except FileNotFoundError:
                return []
            values = data.get(name.lower().rstrip("."), [])
            return [str(v) for v in values] if isinstance(values, list) else [str(values)]

        return await asyncio.to_thread(load)


def make_resolver(fixture: str | None) -> TxtResolver:
    return FixtureResolver(fixture) if fixture else SystemResolver()
