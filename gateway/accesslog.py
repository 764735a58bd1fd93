"""Access log: one JSON line per (sampled) request.

Off by default: the server constructs an :class:`AccessLog` only when it is enabled, and checks
``sampled()`` before gathering the fields, so a disabled or unsampled log costs one comparison.
Lines go to a text stream (stdout by default); buffering and flushing are the stream's business.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import TextIO

import orjson


class AccessLog:
    """Writes ``{"ts", "peer", "method", "url", "host", "status", "bytes", "latency_ms",
    "request_id", "deployment"}`` lines. Bytes fields are decoded as latin-1 (lossless)."""

    __slots__ = ("_clock", "_random", "_sec", "_sec_text", "_stream", "errors", "sample")

    def __init__(
        self,
        sample: float,
        stream: TextIO | None = None,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("access log sample must be within 0..1")
        self.sample = sample
        self._stream = stream  # None: whatever sys.stdout is at write time
        self._random = (rng or random.Random()).random
        self._clock = clock
        self._sec = -1  # the whole second _sec_text renders (one strftime per second)
        self._sec_text = ""
        self.errors = 0  # lines lost to a broken or closed stream

    def sampled(self) -> bool:
        """Should this request be logged? Always True at 1.0, never at 0.0."""
        return self.sample >= 1.0 or self._random() < self.sample

    def write(
        self,
        *,
        peer: str,
        method: bytes,
        url: bytes,
        host: bytes | None,
        status: int,
        nbytes: int,
        latency_ms: float,
        request_id: bytes,
        deployment: bytes | None,
    ) -> None:
        """Write one line. Never raises for a broken stream: logging must not fail a request."""
        line = orjson.dumps(
            {
                "ts": self._timestamp(self._clock()),
                "peer": peer,
                "method": method.decode("latin-1"),
                "url": url.decode("latin-1"),
                "host": None if host is None else host.decode("latin-1"),
                "status": status,
                "bytes": nbytes,
                "latency_ms": round(latency_ms, 1),
                "request_id": request_id.decode("latin-1"),
                "deployment": None if deployment is None else deployment.decode("latin-1"),
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(line.decode())
        except (OSError, ValueError):  # EPIPE, or a closed stream
            self.errors += 1

    def _timestamp(self, now: float) -> str:
        """ISO-8601 UTC with milliseconds: ``2024-05-01T12:34:56.789Z``."""
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ms = min(999, int((now - sec) * 1000))
        return f"{self._sec_text}.{ms:03d}Z"

    def __repr__(self) -> str:
        stream = self._stream if self._stream is not None else "stdout"
        return f"AccessLog(sample={self.sample}, stream={stream!r}, errors={self.errors})"
