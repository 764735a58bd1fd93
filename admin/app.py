"""The admin Starlette application: state, lifespan, routes built from the endpoint registry."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.auth import LastUsed
from admin.crypto import KeyRing
from admin.db import make_engine
from admin.dns import TxtResolver, make_resolver
from admin.errors import ApiError, NotFound
from admin.framework import REGISTRY, Endpoint, error_response, make_route_handler, openapi
from admin.leader import LeaderLoops, Lease
from admin.migrate import upgrade
from admin.pods.service import PodService
from admin.publisher import Publisher
from admin.settings import Settings
from routing.redis_store import RedisRouteStore
from routing.runtime_state import RuntimeState, runtime_for
from routing.store import MemoryRouteStore, RouteStore

log = logging.getLogger("turnout.admin")

# Resource modules declare their endpoints on import (one module per noun).
RESOURCE_MODULES = (
    "admin.api.spaces",
    "admin.api.tokens",
    "admin.api.services",
    "admin.api.deployments",
    "admin.api.system",
    "admin.api.pods",
)


def load_resources() -> None:
    for name in RESOURCE_MODULES:
        importlib.import_module(name)


@dataclass
class AdminState:
    settings: Settings
    keys: KeyRing
    engine: AsyncEngine
    store: RouteStore
    publisher: Publisher
    last_used: LastUsed
    resolver: TxtResolver
    runtime: RuntimeState  # leases, mirrors, counter hashes (Redis, or in-process)
    loops: LeaderLoops  # background jobs that run on the leader lease's holder only
    pods: PodService  # the pod scope authority's clock, lease TTL, mirror and reaper
    extras: dict[str, Any] = field(default_factory=dict)


def build_state(
    settings: Settings,
    *,
    store: RouteStore | None = None,
    resolver: TxtResolver | None = None,
    runtime: RuntimeState | None = None,
) -> AdminState:
    """Everything the admin runs on. ``runtime`` defaults to the route store's Redis (or, for an
    in-process store, a new in-process state; ``turnout dev`` passes the one its gateway
    shares)."""
    keys = settings.require_keys()
    engine = make_engine(settings.db_url)
    if store is None:
        store = (
            RedisRouteStore(settings.redis_url, prefix=settings.redis_prefix)
            if settings.redis_url
            else MemoryRouteStore()
        )
    runtime = runtime or runtime_for(store)
    lease = Lease(runtime, "publisher", settings.lease_ms)
    pods = PodService(engine, runtime, keys, lease_seconds=settings.pod_lease_seconds)
    loops = LeaderLoops(lease)
    loops.add("pod-reaper", pods.reap, settings.pod_reap_interval)
    return AdminState(
        settings=settings,
        keys=keys,
        engine=engine,
        store=store,
        publisher=Publisher(
            engine,
            store,
            lease,
            retry_seconds=settings.publish_retry_seconds,
            reconcile_seconds=settings.reconcile_interval,
        ),
        last_used=LastUsed(engine),
        resolver=resolver or make_resolver(settings.dns_fixture),
        runtime=runtime,
        loops=loops,
        pods=pods,
    )


def create_app(
    settings: Settings,
    *,
    store: RouteStore | None = None,
    resolver: TxtResolver | None = None,
    runtime: RuntimeState | None = None,
    on_ready: Callable[[AdminState], None] | None = None,
) -> Starlette:
    """The admin ASGI app. Refuses to build without an encryption key ring."""
    load_resources()
    state = build_state(settings, store=store, resolver=resolver, runtime=runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await upgrade(state.engine)
        state.last_used.start()
        state.publisher.start()
        state.publisher.kick()  # anything left in the outbox by a crash goes out now
        state.loops.start()
        if on_ready is not None:
            on_ready(state)
        try:
            yield
        finally:
            await state.loops.stop()
            await state.publisher.stop()
            await state.loops.lease.release()
            await state.last_used.stop()
            await state.engine.dispose()
            await state.runtime.close()
            await state.store.close()

    routes: list[Route] = []
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in REGISTRY:
        by_path.setdefault(ep.path, {})[ep.method] = ep
    for path, methods in by_path.items():
        routes.append(Route(path, _dispatch(state, methods), methods=list(methods)))
    doc = openapi()

    async def openapi_json(_request: Request) -> Response:
        return Response(orjson.dumps(doc), media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        try:
            async with state.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            epoch = await state.store.get_epoch()
        except Exception as exc:
            return JSONResponse({"status": "not_ready", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "route_store_epoch": epoch})

    async def metrics(_request: Request) -> Response:
        p = state.publisher
        lines = [
            "# TYPE turnout_admin_published_total counter",
            f"turnout_admin_published_total {p.published}",
            "# TYPE turnout_admin_publish_failures_total counter",
            f"turnout_admin_publish_failures_total {p.failures}",
            "# TYPE turnout_admin_resyncs_total counter",
            f"turnout_admin_resyncs_total {p.resyncs}",
            *state.loops.metrics(),
            *state.pods.metrics(),
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, _exc: Exception) -> Response:
        return error_response(NotFound(f"no such endpoint: {request.url.path}"), "-")

    async def method_not_allowed(request: Request, _exc: Exception) -> Response:
        err = ApiError(f"{request.method} is not allowed here", code="method_not_allowed")
        err.status = 405
        return error_response(err, "-")

    routes += [
        Route("/openapi.json", openapi_json),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    app.state.admin = state
    return app


def _dispatch(state: AdminState, methods: dict[str, Endpoint]) -> Callable[[Request], Any]:
    handlers = {m: make_route_handler(state, ep) for m, ep in methods.items()}

    async def route(request: Request) -> Response:
        handler = handlers.get(request.method) or handlers["GET"]  # HEAD is GET sans body
        return await handler(request)

    return route
