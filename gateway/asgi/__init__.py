"""The ASGI front-end: the same core (:class:`gateway.core.GatewayCore`), dispatch and upstream
pool as the native server, as a plain ASGI 3 application.

For people who run the gateway under uvicorn, granian or hypercorn (HTTP/2, TLS, embedding)::

    uvicorn gateway.asgi:app --loop uvloop --http httptools \\
        --no-proxy-headers --no-server-header --no-date-header
    granian --interface asgi --loop uvloop gateway.asgi:app

or ``turnout gateway --server uvicorn|granian`` (:func:`gateway.launcher.run_asgi_server`), which passes those
settings itself. ``--no-proxy-headers`` matters: the gateway decides which peers may set
``X-Forwarded-For`` (``TURNOUT_TRUSTED_PROXIES``); uvicorn's own rewriting of the client address
would bypass that. The server and date headers would duplicate the upstream's.

The package: :mod:`~gateway.asgi.app` (the application: scopes, lifespan, worker slots, the
requests it answers itself), :mod:`~gateway.asgi.http` (one proxied HTTP exchange),
:mod:`~gateway.asgi.websocket` (the WebSocket proxy and its upstream protocol),
:mod:`~gateway.asgi.messages` (ASGI message helpers shared by both). The uvicorn/granian
launchers are in :mod:`gateway.launcher`.
"""

from __future__ import annotations

from gateway.asgi.app import GatewayApp, _claim_slot
from gateway.config import config_from_env, export_config

__all__ = ["GatewayApp", "_claim_slot", "app", "config_from_env", "export_config"]

app = GatewayApp()
