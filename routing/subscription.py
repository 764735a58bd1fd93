"""A pub/sub channel followed by one long-lived task that reconnects and resubscribes.

Notifications are wake-ups, never state: a message lost while the connection was down must
not matter. So on every (re)subscription the callback is told ``None`` ("you may have missed
something; look for yourself"), and each message's payload is passed as bytes. The callback is
synchronous and must be cheap (set an event, not do I/O).

A silent connection is probed: after ``keepalive`` seconds without traffic a ``PING`` goes out,
and a connection that stays silent for another ``keepalive`` is dropped and reopened (a
half-open TCP connection, e.g. to a primary that vanished from the network, would otherwise
wait forever). Connection errors reconnect with capped exponential backoff and jitter; through
a Sentinel client each reconnect asks the Sentinels for the current primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("turnout.routing.subscription")

Callback = Callable[[bytes | None], None]
_ERRORS = (RedisError, OSError, TimeoutError)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Subscription:
    """Follows ``channel`` until :meth:`close`. ``received`` counts messages, ``reconnects``
    the subscriptions after the first one."""

    def __init__(
        self,
        channel: str,
        callback: Callback,
        *,
        keepalive: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
    ) -> None:
        self.channel = channel
        self.callback = callback
        self.keepalive = keepalive
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connected = False
        self.received = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _deliver(self, message: bytes | None) -> None:
        try:
            self.callback(message)
        except Exception:  # a broken callback must not end the subscription
            log.exception("notification callback for %s failed", self.channel)

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Until the channel is subscribed (tests; callers never need to wait)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False

    def __repr__(self) -> str:
        state = "subscribed" if self.connected else "connecting"
        return f"{type(self).__name__}({self.channel!r}, {state}, received={self.received})"


class RedisSubscription(Subscription):
    """A :class:`Subscription` on a Redis client (any of :func:`routing.redis_conn.connect`)."""

    def __init__(self, redis: aioredis.Redis, channel: str, callback: Callback, **kw: Any):
        super().__init__(channel, callback, **kw)
        self.redis = redis
        self._task = asyncio.create_task(self._run(), name=f"subscription:{channel}")

    async def _run(self) -> None:
        backoff = self.backoff_initial
        first = True
        while True:
            pubsub: Any = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # redis-py may reconnect and resubscribe inside a read (its retry policy):
                # that gap may have lost messages too, so say so.
                pubsub.connection.register_connect_callback(self._reconnected)
                if not first:
                    self.reconnects += 1
                first = False
                self.connected = True
                self._subscribed.set()
                backoff = self.backoff_initial
                self._deliver(None)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                if self.connected or self.last_error is None:
                    log.warning("subscription to %s lost (%s); reconnecting", self.channel, exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
                self._subscribed.clear()
                if pubsub.connection is not None:
                    pubsub.connection.deregister_connect_callback(self._reconnected)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await pubsub.aclose()
            if _cancelling():
                # The client turned our cancellation into a connection error: end anyway.
                raise asyncio.CancelledError
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.backoff_max)

    def _reconnected(self, _connection: Any) -> None:
        self.reconnects += 1
        self._deliver(None)

    async def _listen(self, pubsub: Any) -> None:
        last_rx = time.monotonic()
        pinged = False
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            now = time.monotonic()
            if message is not None:
                last_rx, pinged = now, False
                if message.get("type") == "message":
                    self.received += 1
                    data = message.get("data")
                    self._deliver(bytes(data) if isinstance(data, bytes | bytearray) else b"")
                continue
            if now - last_rx < self.keepalive:
                continue
            if pinged:
                raise TimeoutError(f"no answer to PING within {self.keepalive:.0f} s")
            await pubsub.ping()
            pinged = True
            last_rx = now


class LocalSubscription(Subscription):
    """A :class:`Subscription` delivered in this process (``MemoryRuntimeState``)."""

    def __init__(
        self, registry: dict[str, list[LocalSubscription]], channel: str, callback: Callback
    ) -> None:
        super().__init__(channel, callback)
        self._registry = registry
        registry.setdefault(channel, []).append(self)
        self.connected = True
        self._subscribed.set()
        asyncio.get_running_loop().call_soon(self._deliver, None)

    def publish(self, message: bytes) -> None:
        self.received += 1
        self._deliver(message)

    async def close(self) -> None:
        subs = self._registry.get(self.channel, [])
        if self in subs:
            subs.remove(self)
        await super().close()
