"""Endpoint declarations and the one wrapper every admin API request goes through.

Each endpoint is declared once with :func:`endpoint` — method, path, required token scope,
minimum role in the path's space, request/response models — and that declaration drives
everything else: authentication and authorisation, body parsing (422 with field paths),
``Idempotency-Key`` replay, the SQL transaction, the audit row, the publish outbox kick, error
envelopes, and the OpenAPI document (:func:`openapi`). Tests iterate :data:`REGISTRY` to build
the auth matrix, so a new endpoint is covered the day it is declared.

Order of checks: token (401) → scope (403) → space exists and the caller is a member (404, so
ids of other spaces do not leak) → role (403) → body (422) → handler.

Transactions. By default (``transactional=True``) the handler runs inside one SQL transaction,
``ctx.conn``; the audit row, the outbox rows for :meth:`Ctx.enqueue_publish` and the stored
``Idempotency-Key`` response are written in that same transaction, so a change and its outbox
entry commit together or not at all. An endpoint declared ``transactional=False`` runs its handler
with *no* connection checked out (the space/role/idempotency checks use a short connection of
their own, closed before the handler runs): for work that must not hold the database while it
waits — a full republish (``Publisher.resync`` opens its own transactions, and a SQLite engine
has a single pooled connection), a DNS lookup. Such a handler opens transactions itself with
``async with ctx.transaction() as conn:`` (``ctx.conn`` is that connection inside the block and
raises ``RuntimeError`` outside it); hosts enqueued inside a block are written to the outbox in
that block's transaction. The audit row, the stored idempotent response and any hosts enqueued
outside a block are written after the handler returns, in one short transaction of their own.

Read-only POSTs. An endpoint declared ``read_only=True`` is a POST (a question with a body, such
as a permission check) that changes nothing: it is not a mutation — no audit row, no
``Idempotency-Key`` (neither looked up, stored nor advertised in the OpenAPI document).

After commit. :meth:`Ctx.after_commit` registers work on *derived* state (a runtime mirror) to
run once the request's changes are committed, before the response is sent; it never runs for a
request that failed, and its failures are logged, never turned into an error answer (the SQL
change stands, and derived state repairs itself from SQL).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from admin.auth import ROLE_RANK, Principal, authenticate, role_in
from admin.db import audit_log, idempotency_keys, new_id, now_ms, publish_queue, spaces
from admin.errors import (
    ApiError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
)

if TYPE_CHECKING:
    from admin.app import AdminState

log = logging.getLogger("turnout.admin.api")

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
_RID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PARAM = re.compile(r"{(\w+)}")

Handler = Callable[["Ctx"], Awaitable[Any]]
AfterCommit = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    scope: str
    role: str | None  # minimum role in the {space} of the path; None: no space check
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    summary: str
    action: str
    tag: str
    raw_body: bool  # handler reads the body itself (e.g. YAML manifests)
    paged: bool
    query: tuple[tuple[str, str, str], ...]  # (name, json type, description)
    transactional: bool = True  # False: no transaction around the handler (module docstring)
    read_only: bool = False  # a POST that changes nothing: no audit, no Idempotency-Key

    @property
    def mutation(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE") and not self.read_only

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.path)


REGISTRY: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    scope: str,
    summary: str,
    role: str | None = None,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    action: str | None = None,
    tag: str | None = None,
    raw_body: bool = False,
    paged: bool = False,
    query: tuple[tuple[str, str, str], ...] = (),
    transactional: bool = True,
    read_only: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare an API endpoint (see the module docstring)."""
    if read_only and method != "POST":
        raise ValueError(f"{method} {path}: read_only is for POSTs (other methods say it already)")

    def register(fn: Handler) -> Handler:
        REGISTRY.append(
            Endpoint(
                method=method,
                path=path,
                handler=fn,
                scope=scope,
                role=role,
                body=body,
                response=response,
                status=status,
                summary=summary,
                action=action or fn.__name__,
                tag=tag or path.split("/")[2],
                raw_body=raw_body,
                paged=paged,
                query=query,
                transactional=transactional,
                read_only=read_only,
            )
        )
        return fn

    return register


@dataclass(slots=True)
class Ctx:
    """What a handler gets: the caller, the open transaction, parsed input, and hooks."""

    request: Request
    state: AdminState
    principal: Principal
    request_id: str
    params: dict[str, str]
    tx: AsyncConnection | None = None  # the open transaction; handlers use ``ctx.conn``
    body: Any = None
    raw: bytes = b""
    space_id: str | None = None
    role: str | None = None
    resource: str = ""
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    publish: set[str] = field(default_factory=set)  # enqueued, not yet in the outbox
    queued: set[str] = field(default_factory=set)  # written to the outbox (kick after commit)
    # What an ``Idempotency-Key`` replay returns instead of the result (None: the result itself);
    # set it when the result holds a secret that must be shown once and never stored.
    replay_result: Any = None
    post_commit: list[AfterCommit] = field(default_factory=list)  # see after_commit()

    @property
    def conn(self) -> AsyncConnection:
        """The open transaction (see the module docstring for ``transactional=False``)."""
        if self.tx is None:
            raise RuntimeError(
                "no open transaction: this endpoint is declared transactional=False; "
                "use `async with ctx.transaction() as conn:`"
            )
        return self.tx

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction of its own, for handlers declared ``transactional=False``.

        Hosts enqueued inside the block are written to the outbox in this transaction.
        """
        if self.tx is not None:
            raise RuntimeError("a transaction is already open (a transactional endpoint?)")
        async with self.state.engine.begin() as conn:
            self.tx = conn
            try:
                yield conn
                await self._write_outbox(conn)
            finally:
                self.tx = None

    def after_commit(self, fn: AfterCommit) -> None:
        """Run ``fn()`` once this request's changes are committed (derived state only; see the
        module docstring). Registered functions run in order; a failure is logged."""
        self.post_commit.append(fn)

    async def _run_after_commit(self) -> None:
        todo, self.post_commit = self.post_commit, []
        for fn in todo:
            try:
                await fn()
            except Exception as exc:
                log.warning("after-commit work of %s failed: %s", self.request.url.path, exc)

    def enqueue_publish(self, hosts: set[str] | list[str]) -> None:
        """Hosts whose route records must be republished after this transaction commits."""
        self.publish.update(hosts)

    async def _write_outbox(self, conn: AsyncConnection) -> None:
        for host in sorted(self.publish):
            await _enqueue(conn, host)
        self.queued.update(self.publish)
        self.publish.clear()

    def if_match(self, etag: str) -> None:
        """Honour ``If-Match`` against the resource's current ETag (412 on mismatch)."""
        wanted = self.request.headers.get("if-match")
        if wanted is None:
            return
        candidates = {w.strip() for w in wanted.split(",")}
        if "*" not in candidates and etag not in candidates and f"W/{etag}" not in candidates:
            raise PreconditionFailed(
                "the resource changed since it was read (If-Match does not match its ETag)",
                details={"etag": etag},
            )

    def require_role(self, role: str) -> None:
        if self.role is None or ROLE_RANK[self.role] < ROLE_RANK[role]:
            raise Forbidden(f"this action needs the {role} role in the space")

    def query_param(self, name: str) -> str | None:
        return self.request.query_params.get(name)


def etag(resource_id: str, version: int) -> str:
    return f'"{resource_id}.{version}"'


# ------------------------------------------------------------------------------ paging


def page_params(ctx: Ctx) -> tuple[int, str | None]:
    raw_limit = ctx.query_param("limit")
    limit = 50
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            raise Unprocessable(
                "limit must be an integer 1..500",
                [{"path": "query.limit", "message": "must be an integer 1..500"}],
            )
        limit = int(raw_limit)
    cursor = ctx.query_param("cursor")
    after: str | None = None
    if cursor:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            after = str(data["after"])
        except (ValueError, KeyError, TypeError):
            raise Unprocessable(
                "cursor is not valid", [{"path": "query.cursor", "message": "invalid cursor"}]
            ) from None
    return limit, after


def encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": after})).rstrip(b"=").decode()


async def paged(
    ctx: Ctx, query: sa.Select[Any], key: sa.ColumnElement[Any], render: Callable[[Any], Any]
) -> dict[str, Any]:
    """Run ``query`` ordered by ``key`` with ``?limit=&cursor=``; ``{"items", "next_cursor"}``."""
    limit, after = page_params(ctx)
    if after is not None:
        query = query.where(key > after)
    rows = (await ctx.conn.execute(query.order_by(key).limit(limit + 1))).all()
    items = [render(r) for r in rows[:limit]]
    nxt = None
    if len(rows) > limit:
        last = rows[limit - 1]
        nxt = encode_cursor(str(last._mapping[key.name] if hasattr(key, "name") else last[0]))
    return {"items": items, "next_cursor": nxt}


# ------------------------------------------------------------------------------ the wrapper


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def request_id_of(request: Request) -> str:
    rid = request.headers.get("x-request-id")
    if rid and _RID_OK.fullmatch(rid):
        return rid
    return secrets.token_hex(8)


def error_response(exc: ApiError, request_id: str) -> Response:
    return _json(exc.body(), exc.status, {"x-request-id": request_id})


def make_route_handler(state: AdminState, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        rid = request_id_of(request)
        principal: Principal | None = None
        space_id: str | None = None
        try:
            principal = await authenticate(state.engine, request.headers.get("authorization"))
            state.last_used.mark(principal.token_id)
            if not principal.has_scope(ep.scope):
                raise Forbidden(f"the token lacks the {ep.scope} scope")
            raw = await _read_body(request, state.settings.max_body_bytes)
            params = {k: str(v) for k, v in request.path_params.items()}
            space_id = params.get("space")
            ctx = Ctx(
                request=request,
                state=state,
                principal=principal,
                request_id=rid,
                params=params,
                raw=raw,
            )
            if ep.transactional:
                async with state.engine.begin() as conn:
                    ctx.tx = conn
                    try:
                        replay = await _admit(ctx, ep, conn, space_id)
                        if replay is not None:
                            return replay
                        result = await ep.handler(ctx)
                        status, payload = _encode(ctx, ep, result)
                        await _finish(conn, ctx, ep, space_id, status, payload)
                    finally:
                        ctx.tx = None
            else:
                async with state.engine.connect() as conn:
                    ctx.tx = conn
                    try:
                        replay = await _admit(ctx, ep, conn, space_id)
                    finally:
                        ctx.tx = None
                if replay is not None:
                    return replay
                result = await ep.handler(ctx)
                status, payload = _encode(ctx, ep, result)
                if ep.mutation or ctx.publish:
                    async with state.engine.begin() as conn:
                        await _finish(conn, ctx, ep, space_id, status, payload)
            await ctx._run_after_commit()
            if ctx.queued:
                state.publisher.kick()
            headers = {"x-request-id": rid, **ctx.headers}
            if result is None or status == 204:
                return Response(status_code=status, headers=headers)
            return Response(
                payload, status_code=status, media_type="application/json", headers=headers
            )
        except ApiError as exc:
            if ep.mutation and principal is not None:
                await _audit_failure(state, ep, principal, space_id, rid, exc.code)
            return error_response(exc, rid)
        except sa.exc.IntegrityError as exc:
            log.info("integrity error on %s %s: %s", ep.method, ep.path, exc.orig)
            conflict = ApiError("the change conflicts with existing data", code="conflict")
            conflict.status = 409
            if ep.mutation and principal is not None:
                await _audit_failure(state, ep, principal, space_id, rid, "conflict")
            return error_response(conflict, rid)

    return handle


async def _admit(
    ctx: Ctx, ep: Endpoint, conn: AsyncConnection, space_id: str | None
) -> Response | None:
    """Space and role checks, the body, and an ``Idempotency-Key`` replay (if any)."""
    if space_id is not None:
        await _check_space(ctx, ep, space_id)
    # Only now, with the caller authorised for this space, look at the body: an
    # outsider learns nothing from validation errors (401/403/404 come first).
    ctx.body = _parse_body(ep, ctx.raw)
    # On the request's connection: SQLite engines hold one connection.
    return await _idempotency_lookup(conn, ep, ctx.request, ctx.principal, ctx.raw)


def _encode(ctx: Ctx, ep: Endpoint, result: Any) -> tuple[int, bytes]:
    status = ctx.status or ep.status
    payload = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS) if result is not None else b""
    return status, payload


async def _finish(
    conn: AsyncConnection, ctx: Ctx, ep: Endpoint, space_id: str | None, status: int, payload: bytes
) -> None:
    """The audit row, the outbox rows and the stored idempotent response, in ``conn``."""
    principal = ctx.principal
    if ep.mutation:
        await _audit(conn, ctx, ep, principal, space_id, ctx.request_id, "success")
    await ctx._write_outbox(conn)
    key = ctx.request.headers.get("idempotency-key")
    if ep.mutation and key:
        stored = payload
        if ctx.replay_result is not None:  # e.g. without a secret shown only once
            stored = orjson.dumps(ctx.replay_result, option=orjson.OPT_NON_STR_KEYS)
        # A row past its 24 h has expired; it must not turn the reuse into a 409.
        await conn.execute(
            sa.delete(idempotency_keys).where(
                idempotency_keys.c.principal_id == principal.id,
                idempotency_keys.c.key == key,
            )
        )
        await conn.execute(
            sa.insert(idempotency_keys).values(
                principal_id=principal.id,
                key=key,
                method=ep.method,
                path=ctx.request.url.path,
                body_sha256=hashlib.sha256(ctx.raw).hexdigest(),
                status=status,
                response=stored.decode(),
                created_at=now_ms(),
            )
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(ep: Endpoint, raw: bytes) -> Any:
    if ep.raw_body or ep.body is None:
        return None
    if not raw:
        raise Unprocessable("a JSON body is required", [{"path": "body", "message": "required"}])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(
            f"invalid JSON: {exc}", [{"path": "body", "message": "invalid JSON"}]
        ) from None
    try:
        return ep.body.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError, prefix: str = "body") -> Unprocessable:
    fields = []
    for err in exc.errors(include_url=False):
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        fields.append({"path": path, "message": err["msg"]})
    first = fields[0] if fields else {"path": prefix, "message": "invalid"}
    return Unprocessable(f"{first['path']}: {first['message']}", fields)


async def _check_space(ctx: Ctx, ep: Endpoint, space_id: str) -> None:
    row = (await ctx.conn.execute(sa.select(spaces.c.id).where(spaces.c.id == space_id))).first()
    role = await role_in(ctx.conn, ctx.principal, space_id) if row is not None else None
    if row is None or role is None:
        raise NotFound(f"space {space_id} not found")
    ctx.space_id = space_id
    ctx.role = role
    if ep.role is not None:
        ctx.require_role(ep.role)


async def _idempotency_lookup(
    conn: AsyncConnection, ep: Endpoint, request: Request, principal: Principal, raw: bytes
) -> Response | None:
    key = request.headers.get("idempotency-key")
    if not ep.mutation or not key:
        return None
    if len(key) > 200:
        raise Unprocessable(
            "Idempotency-Key is too long",
            [{"path": "header.Idempotency-Key", "message": "at most 200 characters"}],
        )
    row = (
        await conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.principal_id == principal.id,
                idempotency_keys.c.key == key,
                idempotency_keys.c.created_at > now_ms() - IDEMPOTENCY_TTL_MS,
            )
        )
    ).first()
    if row is None:
        return None
    if (
        row.method != ep.method
        or row.path != request.url.path
        or row.body_sha256 != hashlib.sha256(raw).hexdigest()
    ):
        raise Unprocessable(
            "this Idempotency-Key was used with a different request",
            [{"path": "header.Idempotency-Key", "message": "reused with a different request"}],
            code="idempotency_mismatch",
        )
    return Response(
        row.response.encode(),
        status_code=row.status,
        media_type="application/json" if row.response else None,
        headers={"idempotent-replay": "true", "x-request-id": request_id_of(request)},
    )


async def _audit(
    conn: AsyncConnection,
    ctx: Ctx,
    ep: Endpoint,
    principal: Principal,
    space_id: str | None,
    rid: str,
    outcome: str,
) -> None:
    await conn.execute(
        sa.insert(audit_log).values(
            id=new_id("aud"),
            at=now_ms(),
            principal_id=principal.id,
            space_id=space_id,
            action=ep.action,
            resource=(ctx.resource or ctx.request.url.path)[:300],
            request_id=rid,
            outcome=outcome,
        )
    )


async def _audit_failure(
    state: AdminState, ep: Endpoint, principal: Principal, space_id: str | None, rid: str, code: str
) -> None:
    try:
        async with state.engine.begin() as conn:
            await conn.execute(
                sa.insert(audit_log).values(
                    id=new_id("aud"),
                    at=now_ms(),
                    principal_id=principal.id,
                    space_id=space_id,
                    action=ep.action,
                    resource=ep.path[:300],
                    request_id=rid,
                    outcome=code,
                )
            )
    except Exception as exc:  # auditing a failure must not turn it into a 500
        log.warning("could not audit a failed %s: %s", ep.action, exc)


async def _enqueue(conn: AsyncConnection, host: str) -> None:
    """Queue ``host`` for publishing in the caller's transaction.

    An upsert that always moves ``enqueued_at`` strictly forward: the publisher deletes the rows
    it covered with ``enqueued_at <= <what it read>``, so a change committed while the host is
    being published must leave a newer timestamp behind, or its record would never go out."""
    now = now_ms()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(publish_queue)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(publish_queue)
    stmt = stmt.values(host=host, enqueued_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[publish_queue.c.host],
        set_={
            "enqueued_at": sa.case(
                (publish_queue.c.enqueued_at >= now, publish_queue.c.enqueued_at + 1),
                else_=now,
            )
        },
    )
    await conn.execute(stmt)


# ------------------------------------------------------------------------------ OpenAPI


def openapi(title: str = "Turnout admin API", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from :data:`REGISTRY`."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {
        "ErrorBody": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {},
                    },
                }
            },
        }
    }

    def schema_ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    err = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for ep in REGISTRY:
        op: dict[str, Any] = {
            "operationId": ep.action,
            "summary": ep.summary,
            "tags": [ep.tag],
            "security": [{"bearer": []}],
            "x-turnout-scope": ep.scope,
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in ep.params
            ],
            "responses": {
                "401": {
                    "description": "missing, unknown, expired or revoked token",
                    "content": err,
                },
                "403": {"description": "missing scope or role", "content": err},
                "404": {"description": "not found (or another space's)", "content": err},
                "422": {"description": "validation failed", "content": err},
            },
        }
        if ep.role:
            op["x-turnout-role"] = ep.role
        if ep.read_only:
            op["x-turnout-read-only"] = True
        if ep.paged:
            op["parameters"] += [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
            ]
        for name, typ, desc in ep.query:
            op["parameters"].append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "schema": {"type": typ},
                    "description": desc,
                }
            )
        if ep.mutation:
            op["parameters"].append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                }
            )
            op["responses"]["409"] = {"description": "conflict", "content": err}
            op["responses"]["412"] = {"description": "If-Match mismatch", "content": err}
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_ref(ep.body)}},
            }
        elif ep.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        ok: dict[str, Any] = {"description": "success"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": schema_ref(ep.response)}}
        op["responses"][str(ep.status)] = ok
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
