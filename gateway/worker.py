"""One native gateway worker: the :class:`~gateway.core.GatewayCore` and the native HTTP/1.1
server on it, started and stopped in the right order.

Start: the core (table, pool, flusher, internal listener), then the listening sockets. Stop
(SIGTERM): stop accepting, let in-flight requests finish to the drain deadline, then the core's
own stop (final counter flush, pool, table, store).
"""

from __future__ import annotations

import socket

from gateway.config import GatewayConfig
from gateway.core import GatewayCore
from gateway.flusher import CounterSink
from gateway.native import NativeServer
from routing.store import RouteStore


class GatewayWorker:
    """Everything one native worker process (or the embedded dev gateway) runs."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: RouteStore | None = None,
        counter_sink: CounterSink | None = None,
        index: int = 0,
    ) -> None:
        self.config = config
        self.index = index
        self.core = GatewayCore(config, store=store, counter_sink=counter_sink, index=index)
        self.server: NativeServer | None = None

    async def start(self, socks: list[socket.socket] | None = None, *, wait: float = 5.0) -> None:
        await self.core.start(wait=wait)
        self.server = NativeServer(self.core)
        for sock in socks or ():
            await self.server.listen(sock)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.drain(self.config.drain_timeout)
        await self.core.stop()


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock
