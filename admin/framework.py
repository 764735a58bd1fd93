"""Endpoint declarations and the one wrapper every admin API request goes through.

Each endpoint is declared once with :func:`endpoint` — method, path, required token scope,
minimum role in the path's space, request/response models — and that declaration drives
everything else: authentication and authorisation, body parsing (422 with field paths),
``Idempotency-Key`` replay, the SQL transaction, the audit row, the publish outbox kick, error
envelopes, and the OpenAPI document (:func:`openapi`). Tests iterate :data:`REGISTRY` to build
the auth matrix, so a new endpoint is covered the day it is declared.

Order of checks: token (401) → scope (403) → path parameters (422: printable, bounded) → space
exists and the caller is a member (404, so ids of other spaces do not leak) → role (403) →
headers and body (422) → handler. Client input outside the body schema follows
:mod:`admin.inputs`; audit rows follow :mod:`admin.audit` (a request refused before the space is
known to be the caller's is recorded against the caller, not the space).

Raw bodies. An endpoint declared with ``parse=fn`` (``raw_body=True``) has ``fn(raw)`` run
*before* its transaction opens: after the space and role checks on a short connection of their
own, in :class:`admin.limits.BodyParsers`' worker processes (off the event loop and its GIL;
at most ``parses_per_principal`` in flight per principal, 429 beyond), and ``ctx.body`` is its
result. The checks run again inside the transaction, so the handler still acts only for a caller
who is authorised at commit time. ``fn`` is a module-level function returning something
picklable; it raises :class:`ApiError` (e.g. 422) for a bad body.

Every answer inside a space the caller may see carries ``X-Quota-Warning: <meter>=<percent>, …``
when the space uses ≥ 80 % of a quota (``admin/billing/warnings.py``; cached per space).

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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from admin import audit
from admin.auth import ROLE_RANK, Principal, authenticate, role_in
from admin.db import idempotency_keys, now_ms, publish_queue, spaces
from admin.errors import (
    ApiError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unprocessable,
)
from admin.inputs import (
    CLIENT_REQUEST_ID,
    client_int,
    client_request_id,
    client_text,
    content_length,
    new_request_id,
)

if TYPE_CHECKING:
    from admin.app import AdminState

log = logging.getLogger("turnout.admin.api")

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY = 200
MAX_CURSOR = 600
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
    # Other answers the handler may give (it sets ``ctx.status`` or raises), for the OpenAPI
    # document: ``(status, model or None, description)``; an error status without a model is
    # documented with the error envelope.
    responses: tuple[tuple[int, type[BaseModel] | None, str], ...] = ()
    parse: Callable[[bytes], Any] | None = None  # raw body → ctx.body, before the transaction
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
    responses: tuple[tuple[int, type[BaseModel] | None, str], ...] = (),
    parse: Callable[[bytes], Any] | None = None,
    read_only: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare an API endpoint (see the module docstring)."""
    if read_only and method != "POST":
        raise ValueError(f"{method} {path}: read_only is for POSTs (other methods say it already)")
    if parse is not None and not raw_body:
        raise ValueError(f"{method} {path}: parse= is for raw_body endpoints")

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
                responses=responses,
                parse=parse,
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
    request_id: str  # the server's own id (X-Request-Id of the answer)
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
    quota_warning: str | None = None  # X-Quota-Warning of the path's space (admin/billing)
    replay_status: int | None = None  # the replay's status (None: the original's); declare it
    client_request_id: str | None = None  # the client's X-Request-Id, if valid
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
        """A query parameter as printable text (422 naming ``query.<name>`` otherwise)."""
        raw = self.request.query_params.get(name)
        return None if raw is None else client_text(raw, f"query.{name}")

    def int_query(self, name: str, lo: int, hi: int) -> int | None:
        """An integer query parameter in ``lo..hi`` (None when absent; 422 otherwise)."""
        raw = self.request.query_params.get(name)
        return None if raw is None else client_int(raw, f"query.{name}", lo, hi)

    def int_param(self, name: str, lo: int = 1, hi: int = 2**31 - 1) -> int:
        """An integer path parameter such as ``{version}`` in ``lo..hi`` (422 otherwise)."""
        return client_int(self.params[name], f"path.{name}", lo, hi)


def etag(resource_id: str, version: int) -> str:
    return f'"{resource_id}.{version}"'


# ------------------------------------------------------------------------------ paging


def page_params(ctx: Ctx) -> tuple[int, str | None]:
    limit = ctx.int_query("limit", 1, 500) or 50
    cursor = ctx.request.query_params.get("cursor")
    after: str | None = None
    if cursor:
        try:
            if len(cursor) > MAX_CURSOR or not cursor.isascii():
                raise ValueError("not a cursor")
            data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            after = data["after"]
            if not isinstance(after, str) or not after.isprintable() or len(after) > 300:
                raise ValueError("not a cursor")
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


def error_response(exc: ApiError, request_id: str, warning: str | None = None) -> Response:
    headers = {**exc.headers, "x-request-id": request_id}
    if warning:
        headers["x-quota-warning"] = warning
    return _json(exc.body(), exc.status, headers)


def make_route_handler(state: AdminState, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        rid = new_request_id()
        sent_rid = request.headers.get("x-request-id")
        client_rid = sent_rid if sent_rid and CLIENT_REQUEST_ID.fullmatch(sent_rid) else None
        principal: Principal | None = None
        ctx: Ctx | None = None
        try:
            principal = await authenticate(state.engine, request.headers.get("authorization"))
            state.last_used.mark(principal.token_id)
            if not principal.has_scope(ep.scope):
                raise Forbidden(f"the token lacks the {ep.scope} scope")
            if ep.parse is not None:
                state.parsers.check(principal.id)  # 429 before reading the body or any SQL
            params = {k: client_text(str(v), f"path.{k}") for k, v in request.path_params.items()}
            raw = await _read_body(request, state.settings.max_body_bytes)
            space_id = params.get("space")
            ctx = Ctx(
                request=request,
                state=state,
                principal=principal,
                request_id=rid,
                params=params,
                raw=raw,
                client_request_id=client_rid,
            )
            if ep.parse is not None or not ep.transactional:
                # Admission on a short connection of its own; no connection is held while the
                # body is parsed (in a worker) or while a non-transactional handler runs.
                async with state.engine.connect() as conn:
                    ctx.tx = conn
                    try:
                        replay = await _admit(ctx, ep, conn, space_id)
                    finally:
                        ctx.tx = None
                if replay is not None:
                    return replay
                if ep.parse is not None:
                    ctx.body = await state.parsers.parse(principal.id, ep.parse, raw)
            if ep.transactional:
                async with state.engine.begin() as conn:
                    ctx.tx = conn
                    try:
                        # (again after a parse: the caller must still be authorised at commit)
                        replay = await _admit(ctx, ep, conn, space_id)
                        if replay is not None:
                            return replay
                        result = await ep.handler(ctx)
                        status, payload = _encode(ctx, ep, result)
                        await _finish(conn, ctx, ep, status, payload)
                    finally:
                        ctx.tx = None
            else:
                result = await ep.handler(ctx)
                status, payload = _encode(ctx, ep, result)
                if ep.mutation or ctx.publish:
                    async with state.engine.begin() as conn:
                        await _finish(conn, ctx, ep, status, payload)
            await ctx._run_after_commit()
            if ctx.queued:
                state.publisher.kick()
            headers = {"x-request-id": rid, **ctx.headers}
            if ctx.quota_warning:
                headers["x-quota-warning"] = ctx.quota_warning
            if result is None or status == 204:
                return Response(status_code=status, headers=headers)
            return Response(
                payload, status_code=status, media_type="application/json", headers=headers
            )
        except ApiError as exc:
            if ep.mutation and principal is not None:
                await _audit_failure(state, ep, principal, ctx, rid, client_rid, exc.code)
            return error_response(exc, rid, ctx.quota_warning if ctx is not None else None)
        except sa.exc.IntegrityError as exc:
            log.info("integrity error on %s %s: %s", ep.method, ep.path, exc.orig)
            conflict = ApiError("the change conflicts with existing data", code="conflict")
            conflict.status = 409
            if ep.mutation and principal is not None:
                await _audit_failure(state, ep, principal, ctx, rid, client_rid, "conflict")
            return error_response(conflict, rid)

    return handle


async def _audit_failure(
    state: AdminState,
    ep: Endpoint,
    principal: Principal,
    ctx: Ctx | None,
    rid: str,
    client_rid: str | None,
    code: str,
) -> None:
    # ctx.space_id is set only once the caller proved membership of the path's space: a request
    # refused before that is the caller's record, not the space's (admin.audit).
    await audit.record_failure(
        state,
        audit.Entry(
            principal_id=principal.id,
            principal_kind=principal.kind,
            space_id=ctx.space_id if ctx is not None else None,
            action=ep.action,
            resource=ep.path,  # the template: the URL of a refused request is the caller's text
            request_id=rid,
            client_request_id=client_rid,
            outcome=code,
        ),
    )


async def _admit(
    ctx: Ctx, ep: Endpoint, conn: AsyncConnection, space_id: str | None
) -> Response | None:
    """Space and role checks, headers, the body, and an ``Idempotency-Key`` replay (if any)."""
    if space_id is not None:
        await _check_space(ctx, ep, space_id)
        ctx.quota_warning = await ctx.state.billing.quota_warning(conn, space_id)
    # Only now, with the caller authorised for this space, look at headers and the body: an
    # outsider learns nothing from validation errors (401/403/404 come first).
    client_request_id(ctx.request.headers.get("x-request-id"))
    if not ep.raw_body:
        ctx.body = _parse_body(ep, ctx.raw)
    # On the request's connection: SQLite engines hold one connection.
    return await _idempotency_lookup(conn, ep, ctx)


def _encode(ctx: Ctx, ep: Endpoint, result: Any) -> tuple[int, bytes]:
    status = ctx.status or ep.status
    payload = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS) if result is not None else b""
    return status, payload


async def _finish(
    conn: AsyncConnection, ctx: Ctx, ep: Endpoint, status: int, payload: bytes
) -> None:
    """The audit row, the outbox rows and the stored idempotent response, in ``conn``."""
    principal = ctx.principal
    if ep.mutation:
        await audit.record(
            conn,
            audit.Entry(
                principal_id=principal.id,
                principal_kind=principal.kind,
                space_id=ctx.space_id,
                action=ep.action,
                resource=ctx.resource or ctx.request.url.path,
                request_id=ctx.request_id,
                client_request_id=ctx.client_request_id,
                outcome="success",
            ),
        )
    await ctx._write_outbox(conn)
    key = ctx.request.headers.get("idempotency-key")
    if ep.mutation and key:
        stored = payload
        if ctx.replay_result is not None:  # e.g. without a secret shown only once
            stored = orjson.dumps(ctx.replay_result, option=orjson.OPT_NON_STR_KEYS)
            status = ctx.replay_status or status
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
    content_length(request.headers.get("content-length"), limit)  # 400 / 413 before reading
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


async def _idempotency_lookup(conn: AsyncConnection, ep: Endpoint, ctx: Ctx) -> Response | None:
    request, raw = ctx.request, ctx.raw
    key = request.headers.get("idempotency-key")
    if not ep.mutation or not key:
        return None
    client_text(key, "header.Idempotency-Key", MAX_IDEMPOTENCY_KEY)
    row = (
        await conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.principal_id == ctx.principal.id,
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
        headers={"idempotent-replay": "true", "x-request-id": ctx.request_id},
    )


async def enqueue_hosts(conn: AsyncConnection, hosts: set[str] | list[str]) -> None:
    """Queue ``hosts`` for publishing in the caller's transaction: the outbox write for work
    done outside a request (background jobs); kick the publisher after the commit."""
    for host in sorted(set(hosts)):
        await _enqueue(conn, host)


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
                *(
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in ep.params
                ),
                {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": False,
                    "description": "the client's own id for the request, kept in the audit row "
                    "as client_request_id; the answer's X-Request-Id is the server's id",
                    "schema": {"type": "string", "pattern": f"^{CLIENT_REQUEST_ID.pattern}$"},
                },
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
        if ep.parse is not None:
            op["responses"]["429"] = {
                "description": "too many bodies of this caller are being parsed at once",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": err,
            }
        if "requestBody" in op:
            op["responses"]["413"] = {"description": "body too large", "content": err}
        ok: dict[str, Any] = {"description": "success"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": schema_ref(ep.response)}}
        op["responses"][str(ep.status)] = ok
        for status, model, description in ep.responses:
            other: dict[str, Any] = {"description": description}
            if model is not None:
                other["content"] = {"application/json": {"schema": schema_ref(model)}}
            elif status >= 400:
                other["content"] = err
            op["responses"][str(status)] = other
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
