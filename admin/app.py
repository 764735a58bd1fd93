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
from starlette.routing import BaseRoute, Route

from admin import console
from admin.auth import LastUsed
from admin.billing.service import Billing
from admin.crypto import KeyRing
from admin.db import make_engine
from admin.dns import TxtResolver, make_resolver
from admin.errors import ApiError, NotFound
from admin.framework import REGISTRY, Endpoint, error_response, make_route_handler, openapi
from admin.inputs import new_request_id
from admin.leader import LeaderLoops, Lease
from admin.limits import BodyParsers, WindowLimit
from admin.migrate import upgrade
from admin.pods.service import PodService
from admin.publisher import Publisher
from admin.rollouts.reconciler import RolloutReconciler
from admin.settings import Settings
from routing.redis_conn import scrub, url_secrets
from routing.redis_store import RedisRouteStore
from routing.runtime_state import RuntimeState, runtime_for
from routing.store import MemoryRouteStore, RouteStore

log = logging.getLogger("turnout.admin")

# Resource modules declare their endpoints on import (one module per noun).
RESOURCE_MODULES = (
    "admin.api.spaces",
    "admin.api.invitations",
    "admin.api.tokens",
    "admin.api.services",
    "admin.api.deployments",
    "admin.api.rollouts",
    "admin.api.system",
    "admin.api.plans",
    "admin.api.billing",
    "admin.api.pods",
    "admin.api.runtime",
    "admin.api.traffic",
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
    billing: Billing  # usage collector, quota warnings (admin/billing)
    pods: PodService  # the pod scope authority's clock, lease TTL, mirror and reaper
    parsers: BodyParsers = field(default_factory=BodyParsers)
    audit_failures: WindowLimit = field(default_factory=lambda: WindowLimit(60))
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
    publisher = Publisher(
        engine,
        store,
        lease,
        retry_seconds=settings.publish_retry_seconds,
        reconcile_seconds=settings.reconcile_interval,
    )
    loops = LeaderLoops(lease)
    billing = Billing(engine, runtime, publisher.kick, interval=settings.usage_interval)
    loops.add("usage-collector", billing.collector.run, settings.usage_interval)
    pods = PodService(engine, runtime, keys, lease_seconds=settings.pod_lease_seconds)
    loops.add("pod-reaper", pods.reap, settings.pod_reap_interval)
    state = AdminState(
        settings=settings,
        keys=keys,
        engine=engine,
        store=store,
        publisher=publisher,
        last_used=LastUsed(engine),
        resolver=resolver or make_resolver(settings.dns_fixture),
        runtime=runtime,
        loops=loops,
        billing=billing,
        parsers=BodyParsers(settings.parse_workers, settings.parses_per_principal),
        audit_failures=WindowLimit(settings.audit_failures_per_minute),
        pods=pods,
    )
    # Staged rollouts: the reconciler is a leader job (its clock can be swapped in tests).
    rollouts = RolloutReconciler(
        engine, runtime, state.publisher, interval=settings.rollout_interval
    )
    state.extras["rollouts"] = rollouts
    state.loops.add("rollouts", rollouts.run, settings.rollout_interval)
    return state


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
            await state.parsers.aclose()
            await state.engine.dispose()
            await state.runtime.close()
            await state.store.close()

    routes: list[BaseRoute] = []
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in REGISTRY:
        by_path.setdefault(ep.path, {})[ep.method] = ep
    for path, methods in by_path.items():
        routes.append(Route(path, _dispatch(state, methods), methods=list(methods)))
    doc = openapi()
    secrets = url_secrets(settings.redis_url) + _db_secrets(settings.db_url)

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
            # Driver messages are not ours: make sure no password from a URL rides along.
            reason = scrub(str(exc), secrets)
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        leader = state.loops.lease.holding
        return JSONResponse({"status": "ready", "route_store_epoch": epoch, "leader": leader})

    async def metrics(_request: Request) -> Response:
        p = state.publisher
        lines = [
            "# TYPE turnout_admin_published_total counter",
            f"turnout_admin_published_total {p.published}",
            "# TYPE turnout_admin_publish_failures_total counter",
            f"turnout_admin_publish_failures_total {p.failures}",
            "# TYPE turnout_admin_resyncs_total counter",
            f"turnout_admin_resyncs_total {p.resyncs}",
            "# TYPE turnout_admin_repaired_total counter",
            f"turnout_admin_repaired_total {p.repairs}",
            "# TYPE turnout_admin_publish_pokes_total counter",
            f'turnout_admin_publish_pokes_total{{direction="sent"}} {p.pokes_sent}',
            f'turnout_admin_publish_pokes_total{{direction="received"}} {p.pokes_received}',
            *state.loops.metrics(),
            *state.billing.metrics(),
            *state.pods.metrics(),
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, _exc: Exception) -> Response:
        return error_response(NotFound(f"no such endpoint: {request.url.path}"), new_request_id())

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        # RFC 9110 §15.5.6: a 405 lists the allowed methods (HEAD wherever GET is).
        allowed = getattr(exc, "headers", None) or {}
        methods = {m.strip().upper() for m in allowed.get("Allow", "").split(",") if m.strip()}
        err = ApiError(f"{request.method} is not allowed here", code="method_not_allowed")
        err.status = 405
        err.headers["allow"] = allow_header(methods)
        err.details = {"allow": err.headers["allow"].split(", ")}
        return error_response(err, new_request_id())

    routes += [
        Route("/openapi.json", openapi_json),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *console.routes(),  # the operator console's static pages (admin/console)
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    app.state.admin = state
    return app


def _db_secrets(db_url: str) -> list[str]:
    try:
        password = sa.engine.make_url(db_url).password
    except Exception:
        return []
    return [str(password)] if password else []


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allow_header(methods: set[str]) -> str:
    """The ``Allow`` value for a resource: its methods in a fixed order, HEAD with GET."""
    if "GET" in methods:
        methods = methods | {"HEAD"}
    known = [m for m in _METHOD_ORDER if m in methods]
    return ", ".join(known + sorted(methods - set(_METHOD_ORDER)))


def _dispatch(state: AdminState, methods: dict[str, Endpoint]) -> Callable[[Request], Any]:
    handlers = {m: make_route_handler(state, ep) for m, ep in methods.items()}

    async def route(request: Request) -> Response:
        handler = handlers.get(request.method) or handlers["GET"]  # HEAD is GET sans body
        return await handler(request)

    return route
