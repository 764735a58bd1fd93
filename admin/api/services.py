"""Services of a space and their hostnames (globally unique, ownership-verified).

A service is created ``pending``; deployments set it ``deployed`` / ``failed``; ``PATCH
{"status": "stopped"}`` withdraws its routes (every hostname is republished, and
:func:`admin.routes.compute_record` answers nothing for a stopped service).

Hostnames are lower-cased and validated as route record hosts (``*.`` wildcards allowed).
A hostname row is a space's *claim* (states and transitions: :mod:`admin.claims`). Names under
the platform base domain (``Settings.base_domain``) are granted at once; any other name stays
pending — and publishes nothing — until a TXT record ``_turnout-verify.<host>`` (for
``*.example.com``: ``_turnout-verify.example.com``) holds ``turnout-verify=<token>``, and can
be proven only within ``Settings.claim_ttl_hours``. Several spaces may wait on the same name;
the first proof wins and displaces the others. Under the base domain the first space to claim a
label owns that label's whole subtree: another space cannot take ``x.app.<base>`` or
``*.app.<base>`` while ``app.<base>`` (or any name below it) is someone else's, nor an ``xn--``
label confusable with one of its labels (UTS #39 skeletons, :mod:`admin.idn`; 409
``hostname_confusable``).

A claimed hostname serves only what its service's routes (the app manifest's) declare for it;
one that no route names is ``routed: false`` and publishes nothing (the gateway answers 404),
while the claim and its proof stay, so routing it again needs no new proof.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from admin import managed
from admin.api.models import Page, Strict
from admin.claims import (
    ClaimExpired,
    ClaimStatus,
    HostnameTaken,
    adopt,
    displace_others,
    expiry,
    holder,
    mark_verified,
    own_claim,
    refuse_if_held_elsewhere,
    renew,
    service_app,
    status_of,
)
from admin.db import deployments, hostnames, new_id, now_ms, service_routes, services
from admin.errors import Conflict, NotFound, Unavailable, field_error
from admin.framework import Ctx, endpoint, etag, paged
from admin.idn import IdnaLabelError, is_ace, skeleton_key
from routing.errors import RecordError
from routing.hostnames import is_wildcard, validate_hostname

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
VERIFY_PREFIX = "_turnout-verify."
VERIFY_VALUE = "turnout-verify="
SETTABLE_STATUS = ("stopped",)
SERVICE_STATUSES = ("pending", "deployed", "failed", "stopped")


class HostnameConfusable(Conflict):
    code = "hostname_confusable"


class IdnUnavailable(Unavailable):
    code = "idn_unavailable"


class VerificationFailed(Conflict):
    code = "verification_failed"


# ------------------------------------------------------------------------------ models


class ServiceCreate(Strict):
    name: str = Field(max_length=63)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if _DNS_LABEL.fullmatch(value) is None:
            raise ValueError(
                "must be a DNS label: 1-63 characters of a-z, 0-9 and '-', "
                "not starting or ending with '-'"
            )
        return value


class ServicePatch(Strict):
    status: str


class Service(Strict):
    id: str
    space_id: str
    name: str
    status: str
    hostnames: list[str]
    etag: str
    created_at: int
    updated_at: int


class HostnameCreate(Strict):
    host: str


class Verification(BaseModel):
    type: str
    name: str
    value: str


class Hostname(Strict):
    host: str
    service_id: str
    status: ClaimStatus = Field(
        description="pending: waits for its TXT proof until expires_at; verified: proven (or "
        "granted under the base domain); expired: no longer verifiable, claim it again to "
        "renew; displaced: another space proved ownership first"
    )
    verified: bool
    verified_at: int | None
    expires_at: int | None = Field(description="a pending claim can be proven until then")
    displaced_at: int | None
    routed: bool = Field(
        description="whether the service's routes (its app manifest) name this hostname; "
        "a hostname that is not routed keeps its claim but serves nothing"
    )
    verification: Verification | None
    etag: str
    created_at: int


class HostnamePage(BaseModel):
    items: list[Hostname]
    next_cursor: str | None


# ------------------------------------------------------------------------------ helpers


def _service(row: Any, hosts: Sequence[str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "space_id": row.space_id,
        "name": row.name,
        "status": row.status,
        "hostnames": list(hosts),
        "etag": etag(row.id, row.version),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def verify_name(host: str) -> str:
    """The TXT name that proves ownership of ``host`` (a wildcard is proven on its parent)."""
    return VERIFY_PREFIX + (host[2:] if is_wildcard(host) else host)


def verification(host: str, token: str) -> dict[str, str]:
    return {"type": "TXT", "name": verify_name(host), "value": VERIFY_VALUE + token}


def _hostname(row: Any, routed: set[str] | None) -> dict[str, Any]:
    """``routed``: the hosts the service's routes name (None: every host of the service)."""
    status = status_of(row)
    return {
        "host": row.host,
        "service_id": row.service_id,
        "status": status.value,
        "verified": bool(row.verified),
        "verified_at": row.verified_at,
        "expires_at": row.expires_at if status is ClaimStatus.PENDING else None,
        "displaced_at": row.displaced_at,
        "routed": routed is None or row.host in routed,
        "verification": (
            verification(row.host, row.verify_token) if status is ClaimStatus.PENDING else None
        ),
        "etag": etag(row.host, row.version),
        "created_at": row.created_at,
    }


async def routed_hosts(conn: AsyncConnection, service_id: str) -> set[str] | None:
    """The hostnames the service's routes name; None when a route names every hostname."""
    found: set[str] = set()
    for host in (
        await conn.execute(
            sa.select(service_routes.c.host).where(service_routes.c.service_id == service_id)
        )
    ).scalars():
        if host is None:
            return None
        found.add(str(host))
    return found


async def service_hosts(conn: AsyncConnection, service_id: str) -> list[str]:
    """Every hostname of a service (verified or not), sorted."""
    rows = await conn.execute(
        sa.select(hostnames.c.host)
        .where(hostnames.c.service_id == service_id)
        .order_by(hostnames.c.host)
    )
    return [str(h) for h in rows.scalars().all()]


async def load_service(ctx: Ctx, ref: str | None = None) -> Any:
    """The service ``ref`` (id or name; default: the ``{service}`` path parameter) of the
    request's space, or 404 — also for another space's service, so ids do not leak."""
    ref = ctx.params["service"] if ref is None else ref
    cond = services.c.id == ref if ref.startswith("svc_") else services.c.name == ref
    row = (
        await ctx.conn.execute(sa.select(services).where(services.c.space_id == ctx.space_id, cond))
    ).first()
    if row is None:
        raise NotFound(f"service {ref} not found")
    return row


async def _bump(ctx: Ctx, row: Any, **values: Any) -> None:
    res = await ctx.conn.execute(
        sa.update(services)
        .where(services.c.id == row.id, services.c.version == row.version)
        .values(version=row.version + 1, updated_at=now_ms(), **values)
    )
    if res.rowcount != 1:
        raise Conflict("the service changed concurrently; read it again")


async def _revoke_runtime_tokens(ctx: Ctx, service_id: str) -> None:
    """Revoke the managed tokens of every deployment of the service (admin.managed)."""
    ids = (
        await ctx.conn.execute(
            sa.select(deployments.c.id).where(deployments.c.service_id == service_id)
        )
    ).scalars()
    await managed.revoke(ctx.conn, [str(i) for i in ids], now_ms())


# ------------------------------------------------------------------------------ services


@endpoint(
    "POST",
    "/api/spaces/{space}/services",
    scope="deployments:write",
    role="editor",
    body=ServiceCreate,
    response=Service,
    status=201,
    summary="Create a service (status pending); names are unique per space",
)
async def create_service(ctx: Ctx) -> dict[str, Any]:
    body: ServiceCreate = ctx.body
    taken = (
        await ctx.conn.execute(
            sa.select(services.c.id).where(
                services.c.space_id == ctx.space_id, services.c.name == body.name
            )
        )
    ).first()
    if taken is not None:
        raise Conflict(f"a service named {body.name} already exists in this space")
    sid, now = new_id("svc"), now_ms()
    await ctx.conn.execute(
        sa.insert(services).values(
            id=sid,
            space_id=ctx.space_id,
            name=body.name,
            status="pending",
            created_at=now,
            updated_at=now,
        )
    )
    ctx.resource = f"space:{ctx.space_id}/service:{sid}"
    row = (await ctx.conn.execute(sa.select(services).where(services.c.id == sid))).one()
    ctx.headers["etag"] = etag(sid, row.version)
    return _service(row, [])


@endpoint(
    "GET",
    "/api/spaces/{space}/services",
    scope="deployments:read",
    role="viewer",
    response=Page,
    paged=True,
    summary="List the space's services",
)
async def list_services(ctx: Ctx) -> dict[str, Any]:
    q = sa.select(services).where(services.c.space_id == ctx.space_id)
    page = await paged(ctx, q, services.c.id, lambda r: _service(r, []))
    ids = [item["id"] for item in page["items"]]
    if ids:
        by_service: dict[str, list[str]] = {}
        rows = await ctx.conn.execute(
            sa.select(hostnames.c.service_id, hostnames.c.host)
            .where(hostnames.c.service_id.in_(ids))
            .order_by(hostnames.c.host)
        )
        for r in rows:
            by_service.setdefault(r.service_id, []).append(r.host)
        for item in page["items"]:
            item["hostnames"] = by_service.get(item["id"], [])
    return page


@endpoint(
    "GET",
    "/api/spaces/{space}/services/{service}",
    scope="deployments:read",
    role="viewer",
    response=Service,
    summary="Read a service (by id or name)",
)
async def get_service(ctx: Ctx) -> dict[str, Any]:
    row = await load_service(ctx)
    ctx.headers["etag"] = etag(row.id, row.version)
    return _service(row, await service_hosts(ctx.conn, row.id))


@endpoint(
    "PATCH",
    "/api/spaces/{space}/services/{service}",
    scope="deployments:write",
    role="editor",
    body=ServicePatch,
    response=Service,
    summary='Stop a service ({"status": "stopped"} withdraws its routes; If-Match honoured)',
)
async def patch_service(ctx: Ctx) -> dict[str, Any]:
    body: ServicePatch = ctx.body
    if body.status not in SETTABLE_STATUS:
        if body.status in SERVICE_STATUSES:
            msg = f"status {body.status} is set by deployments, not by PATCH; use 'stopped'"
        else:
            msg = f"unknown status {body.status!r}; the only status PATCH sets is 'stopped'"
        raise field_error("body.status", msg)
    row = await load_service(ctx)
    ctx.if_match(etag(row.id, row.version))
    hosts = await service_hosts(ctx.conn, row.id)
    await _bump(ctx, row, status=body.status)
    ctx.enqueue_publish(hosts)  # compute_record answers nothing for a stopped service
    await _revoke_runtime_tokens(ctx, row.id)  # its runtimes' credentials end with it
    ctx.resource = f"space:{ctx.space_id}/service:{row.id}"
    row = await load_service(ctx, row.id)
    ctx.headers["etag"] = etag(row.id, row.version)
    return _service(row, hosts)


@endpoint(
    "DELETE",
    "/api/spaces/{space}/services/{service}",
    scope="deployments:write",
    role="admin",
    status=204,
    summary="Delete a service, its hostnames and deployments (its routes are withdrawn)",
)
async def delete_service(ctx: Ctx) -> None:
    row = await load_service(ctx)
    ctx.if_match(etag(row.id, row.version))
    ctx.enqueue_publish(await service_hosts(ctx.conn, row.id))  # tombstones once gone
    await _revoke_runtime_tokens(ctx, row.id)
    await ctx.conn.execute(sa.delete(services).where(services.c.id == row.id))
    ctx.resource = f"space:{ctx.space_id}/service:{row.id}"


# ------------------------------------------------------------------------------ hostnames


def _normalise(raw: str, path: str) -> str:
    try:
        return validate_hostname(raw.lower(), path)
    except RecordError as exc:
        raise field_error(exc.path, exc.reason) from None


def _under_base(host: str, base: str, path: str = "body.host") -> str | None:
    """For a host strictly below the base domain: the name directly under it that owns the
    subtree (``x.app.base`` and ``*.app.base`` → ``app.base``); otherwise ``None``.
    Raises 422 for the base domain itself and for a wildcard over all of it."""
    if host == base or host == f"*.{base}":
        raise field_error(
            path,
            f"{host} is the platform base domain itself; claim a name under it "
            f"(for example app.{base})",
        )
    if not host.endswith("." + base):
        return None
    label = host[: -len(base) - 1].rsplit(".", 1)[-1]
    return f"{label}.{base}"


async def _count_hosts(conn: AsyncConnection, service_id: str) -> int:
    return int(
        (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(hostnames)
                .where(hostnames.c.service_id == service_id)
            )
        ).scalar_one()
    )


async def _load_hostname(ctx: Ctx, service_id: str) -> Any:
    host = ctx.params["host"].lower()
    row = (
        await ctx.conn.execute(
            sa.select(hostnames).where(
                hostnames.c.host == host,
                hostnames.c.space_id == ctx.space_id,
                hostnames.c.service_id == service_id,
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"hostname {host} not found on this service")
    return row


@endpoint(
    "POST",
    "/api/spaces/{space}/services/{service}/hostnames",
    scope="spaces:write",
    role="admin",
    body=HostnameCreate,
    response=Hostname,
    status=201,
    summary="Claim a hostname for a service (base-domain names at once, others after TXT proof)",
)
async def add_hostname(ctx: Ctx) -> dict[str, Any]:
    body: HostnameCreate = ctx.body
    svc = await load_service(ctx)
    row = await claim_hostname(ctx, svc.id, body.host, "body.host")
    ctx.resource = f"space:{ctx.space_id}/service:{svc.id}/hostname:{row.host}"
    ctx.headers["etag"] = etag(row.host, row.version)
    return _hostname(row, await routed_hosts(ctx.conn, svc.id))


async def claim_hostname(
    ctx: Ctx,
    service_id: str,
    raw_host: str,
    path: str,
    *,
    existing_ok: bool = False,
    adopt_from_app: str | None = None,
) -> Any:
    """Claim ``raw_host`` for a service of the path's space and return its row.

    Used by the hostnames API and by app deployments (routes name hostnames). Lower-cased and
    validated (422 at ``path``); 409 ``hostname_taken`` when another space holds the name
    verified (without naming it); at most ``max_hostnames_per_service`` (409
    ``hostname_limit``); names under the base domain are granted at once — the first space to
    claim a label there owns its whole subtree, and ``xn--`` labels confusable with another
    space's label are refused (409 ``hostname_confusable``) — and enqueued for publishing;
    other names wait for their TXT proof (:mod:`admin.claims`). The space's own expired or
    displaced claim on the same service is renewed.
    ``existing_ok``: a claim already on this very service is returned as it is (renewed if it
    had expired). ``adopt_from_app``: a claim on another service of this space that belongs to
    that app moves to this service (its manifest moved the hostname)."""
    host = _normalise(raw_host, path)
    base = ctx.state.settings.base_domain.lower()
    subtree = _under_base(host, base, path)
    refuse_if_held_elsewhere(await holder(ctx.conn, host), ctx.space_id, host)
    assert ctx.space_id is not None
    own = await own_claim(ctx.conn, host, ctx.space_id)
    if own is not None:
        if own.service_id != service_id:
            other, app = await service_app(ctx.conn, own.service_id)
            if adopt_from_app is None or app != adopt_from_app:
                raise HostnameTaken(
                    f"hostname {host} is already attached to service {other} of this space; "
                    "delete it there first"
                )
            await _within_limit(ctx, service_id)
            await ctx.conn.execute(
                sa.delete(service_routes).where(
                    service_routes.c.service_id == own.service_id, service_routes.c.host == host
                )
            )
            own = await adopt(ctx, own, service_id)
            ctx.enqueue_publish([host])
        if status_of(own) in (ClaimStatus.EXPIRED, ClaimStatus.DISPLACED):
            return await renew(ctx, own)
        if existing_ok:
            return own
        raise HostnameTaken(f"hostname {host} is already attached to this service")
    key = None if subtree is None else await _refuse_foreign_subtree(ctx, subtree, base, path)
    await _within_limit(ctx, service_id)
    now = now_ms()
    granted = subtree is not None
    await ctx.conn.execute(
        sa.insert(hostnames).values(
            host=host,
            space_id=ctx.space_id,
            service_id=service_id,
            verified=granted,
            verify_token=secrets.token_hex(16),
            created_at=now,
            verified_at=now if granted else None,
            expires_at=None if granted else expiry(ctx, now),
            label_skeleton=key,
        )
    )
    if granted:
        await displace_others(ctx, host, ctx.space_id, now)
        ctx.enqueue_publish([host])
    return await own_claim(ctx.conn, host, ctx.space_id)


async def _within_limit(ctx: Ctx, service_id: str) -> None:
    """409 ``hostname_limit`` when the service already has ``max_hostnames_per_service``."""
    limit = ctx.state.settings.max_hostnames_per_service
    if await _count_hosts(ctx.conn, service_id) >= limit:
        raise Conflict(
            f"a service has at most {limit} hostnames; delete one first",
            code="hostname_limit",
            details={"limit": limit},
        )


async def _refuse_foreign_subtree(ctx: Ctx, subtree: str, base: str, path: str) -> str | None:
    """409 when another space owns ``subtree`` (or a name below it), or — for an ``xn--``
    label — a label under the base domain whose UTS #39 skeleton equals this one's. Returns
    the owning label's skeleton key, stored with the claim for later checks."""
    foreign = (
        await ctx.conn.execute(
            sa.select(hostnames.c.host)
            .where(
                hostnames.c.space_id != ctx.space_id,
                sa.or_(
                    hostnames.c.host == subtree,
                    hostnames.c.host.endswith("." + subtree, autoescape=True),
                ),
            )
            .limit(1)
        )
    ).first()
    if foreign is not None:
        raise HostnameTaken(f"names under {subtree} are already claimed")
    label = subtree[: -len(base) - 1]
    try:
        mine = skeleton_key(label)
    except IdnaLabelError as exc:
        raise field_error(path, str(exc)) from None
    if not is_ace(label):
        return mine
    if mine is None:  # no PyICU (the optional extra turnout[idn]): fail closed
        raise IdnUnavailable(
            f"{label}.{base}: internationalised (xn--) labels under {base} need the confusable "
            "check, which this admin does not have (install turnout[idn], PyICU)"
        )
    # Other spaces' names under the base domain with the same skeleton (an index lookup), and
    # those claimed before skeletons were stored (computed here, and stored if this claim goes
    # through, so that cost is paid once). A key is only a hint: each candidate's owning label
    # is checked again.
    candidates = (
        await ctx.conn.execute(
            sa.select(hostnames.c.host, hostnames.c.space_id, hostnames.c.label_skeleton).where(
                hostnames.c.space_id != ctx.space_id,
                hostnames.c.host.endswith("." + base, autoescape=True),
                sa.or_(hostnames.c.label_skeleton == mine, hostnames.c.label_skeleton.is_(None)),
            )
        )
    ).all()
    keys: dict[str, str | None] = {}
    backfill: list[dict[str, str]] = []
    for c in candidates:
        theirs = str(c.host)[: -len(base) - 1].rsplit(".", 1)[-1]
        if theirs not in keys:
            try:
                keys[theirs] = skeleton_key(theirs)
            except IdnaLabelError:
                keys[theirs] = None  # a stored label that does not decode (claimed before)
        if keys[theirs] == mine:
            raise HostnameConfusable(
                f"{label}.{base} looks like a name another space holds under {base} "
                "(their Unicode forms are confusable, UTS #39); choose another name"
            )
        key = keys[theirs]
        if c.label_skeleton is None and key is not None:
            backfill.append({"h": c.host, "s": c.space_id, "k": key})
    if backfill:
        await ctx.conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == sa.bindparam("h"), hostnames.c.space_id == sa.bindparam("s"))
            .values(label_skeleton=sa.bindparam("k")),
            backfill,
        )
    return mine


@endpoint(
    "GET",
    "/api/spaces/{space}/services/{service}/hostnames",
    scope="spaces:read",
    role="viewer",
    response=HostnamePage,
    paged=True,
    summary="List a service's hostnames (unverified ones carry their TXT instructions)",
)
async def list_hostnames(ctx: Ctx) -> dict[str, Any]:
    svc = await load_service(ctx)
    routed = await routed_hosts(ctx.conn, svc.id)
    q = sa.select(hostnames).where(hostnames.c.service_id == svc.id)
    return await paged(ctx, q, hostnames.c.host, lambda r: _hostname(r, routed))


@endpoint(
    "GET",
    "/api/spaces/{space}/services/{service}/hostnames/{host}",
    scope="spaces:read",
    role="viewer",
    response=Hostname,
    summary="Read a hostname",
)
async def get_hostname(ctx: Ctx) -> dict[str, Any]:
    svc = await load_service(ctx)
    row = await _load_hostname(ctx, svc.id)
    ctx.headers["etag"] = etag(row.host, row.version)
    return _hostname(row, await routed_hosts(ctx.conn, svc.id))


@endpoint(
    "POST",
    "/api/spaces/{space}/services/{service}/hostnames/{host}/verify",
    scope="spaces:write",
    role="admin",
    response=Hostname,
    transactional=False,  # the DNS lookup must not hold the database
    summary="Check the hostname's TXT ownership proof; verified hostnames are published",
)
async def verify_hostname(ctx: Ctx) -> dict[str, Any]:
    async with ctx.transaction():
        svc = await load_service(ctx)
        row = await _load_hostname(ctx, svc.id)
        routed = await routed_hosts(ctx.conn, svc.id)
        held = await holder(ctx.conn, row.host)
    ctx.resource = f"space:{ctx.space_id}/service:{svc.id}/hostname:{row.host}"
    status = status_of(row)
    if status is ClaimStatus.VERIFIED:
        ctx.headers["etag"] = etag(row.host, row.version)
        return _hostname(row, routed)
    refuse_if_held_elsewhere(held, ctx.space_id, row.host)  # displaced, or lost meanwhile
    if status is ClaimStatus.EXPIRED:
        raise ClaimExpired(
            f"the claim on {row.host} expired at {row.expires_at} without its TXT proof; "
            "claim it again (POST it to the service's hostnames) to renew it",
            details={"expires_at": row.expires_at},
        )
    if status is ClaimStatus.DISPLACED:  # and the space that won has released it since
        raise ClaimExpired(
            f"the claim on {row.host} was displaced by another space's proof; "
            "claim it again (POST it to the service's hostnames) to renew it",
            code="claim_displaced",
        )
    expected = verification(row.host, row.verify_token)
    try:
        found = await ctx.state.resolver.txt(expected["name"])
    except Exception as exc:
        raise Unavailable(f"the TXT lookup of {expected['name']} failed: {exc}") from None
    if expected["value"] not in (v.strip() for v in found):
        raise VerificationFailed(
            f"TXT record {expected['name']} does not contain {expected['value']!r}; "
            "create it and try again (DNS changes can take a while to propagate)",
            details={"expected": expected, "found": found[:20]},
        )
    async with ctx.transaction():
        await mark_verified(ctx, row)
        ctx.enqueue_publish([row.host])
        row = await _load_hostname(ctx, svc.id)
        routed = await routed_hosts(ctx.conn, svc.id)
    ctx.headers["etag"] = etag(row.host, row.version)
    return _hostname(row, routed)


@endpoint(
    "DELETE",
    "/api/spaces/{space}/services/{service}/hostnames/{host}",
    scope="spaces:write",
    role="admin",
    status=204,
    summary="Release a hostname (its route record is withdrawn; If-Match honoured)",
)
async def delete_hostname(ctx: Ctx) -> None:
    svc = await load_service(ctx)
    row = await _load_hostname(ctx, svc.id)
    ctx.if_match(etag(row.host, row.version))
    ctx.enqueue_publish([row.host])  # the publisher sends a tombstone once the row is gone
    await ctx.conn.execute(
        sa.delete(hostnames).where(
            hostnames.c.host == row.host, hostnames.c.space_id == ctx.space_id
        )
    )
    ctx.resource = f"space:{ctx.space_id}/service:{svc.id}/hostname:{row.host}"
