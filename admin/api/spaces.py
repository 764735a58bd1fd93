"""Spaces and their members (new members join by accepting an invitation: admin/api/invitations.py)."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from admin.api.invitations import Invitation, invite
from admin.api.models import Page, Role, Strict
from admin.auth import DEPLOYMENT_KIND, ROLE_RANK
from admin.db import hostnames, memberships, new_id, now_ms, principals, spaces
from admin.errors import Conflict, Forbidden, NotFound, field_error
from admin.framework import Ctx, endpoint, etag, paged


class SpaceCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["user", "team"] = "team"


class SpacePatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)


class Space(Strict):
    id: str
    name: str
    kind: str
    plan: str
    role: str | None
    etag: str
    created_at: int
    updated_at: int


class MemberAdd(Strict):
    principal_id: str = Field(min_length=1, max_length=40)
    role: Role


class MemberPatch(Strict):
    role: Role


class Member(Strict):
    principal_id: str
    name: str
    kind: str
    role: str
    etag: str
    created_at: int


def _space(row: Any, role: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "plan": row.plan,
        "role": role,
        "etag": etag(row.id, row.version),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def _load(ctx: Ctx) -> Any:
    row = (await ctx.conn.execute(sa.select(spaces).where(spaces.c.id == ctx.space_id))).first()
    if row is None:
        raise NotFound(f"space {ctx.space_id} not found")
    return row


@endpoint(
    "POST",
    "/api/spaces",
    scope="spaces:write",
    body=SpaceCreate,
    response=Space,
    status=201,
    summary="Create a space; the caller becomes its owner",
)
async def create_space(ctx: Ctx) -> dict[str, Any]:
    body: SpaceCreate = ctx.body
    sid, now = new_id("spc"), now_ms()
    await ctx.conn.execute(
        sa.insert(spaces).values(
            id=sid, kind=body.kind, name=body.name, created_at=now, updated_at=now
        )
    )
    await ctx.conn.execute(
        sa.insert(memberships).values(
            space_id=sid, principal_id=ctx.principal.id, role="owner", created_at=now
        )
    )
    ctx.resource = f"space:{sid}"
    row = (await ctx.conn.execute(sa.select(spaces).where(spaces.c.id == sid))).one()
    ctx.headers["etag"] = etag(sid, row.version)
    return _space(row, "owner")


@endpoint(
    "GET",
    "/api/spaces",
    scope="spaces:read",
    response=Page,
    paged=True,
    summary="List the spaces the caller belongs to",
)
async def list_spaces(ctx: Ctx) -> dict[str, Any]:
    if ctx.principal.is_system_admin:
        q = sa.select(spaces, sa.literal("owner").label("role"))
    else:
        q = (
            sa.select(spaces, memberships.c.role)
            .join(memberships, memberships.c.space_id == spaces.c.id)
            .where(memberships.c.principal_id == ctx.principal.id)
        )
    return await paged(ctx, q, spaces.c.id, lambda r: _space(r, r.role))


@endpoint(
    "GET",
    "/api/spaces/{space}",
    scope="spaces:read",
    role="viewer",
    response=Space,
    summary="Read a space",
)
async def get_space(ctx: Ctx) -> dict[str, Any]:
    row = await _load(ctx)
    ctx.headers["etag"] = etag(row.id, row.version)
    return _space(row, ctx.role)


@endpoint(
    "PATCH",
    "/api/spaces/{space}",
    scope="spaces:write",
    role="admin",
    body=SpacePatch,
    response=Space,
    summary="Rename a space (If-Match honoured)",
)
async def patch_space(ctx: Ctx) -> dict[str, Any]:
    body: SpacePatch = ctx.body
    row = await _load(ctx)
    ctx.if_match(etag(row.id, row.version))
    values: dict[str, Any] = {"updated_at": now_ms(), "version": row.version + 1}
    if body.name is not None:
        values["name"] = body.name
    res = await ctx.conn.execute(
        sa.update(spaces)
        .where(spaces.c.id == row.id, spaces.c.version == row.version)
        .values(**values)
    )
    if res.rowcount != 1:
        raise Conflict("the space changed concurrently; read it again")
    ctx.resource = f"space:{row.id}"
    row = await _load(ctx)
    ctx.headers["etag"] = etag(row.id, row.version)
    return _space(row, ctx.role)


@endpoint(
    "DELETE",
    "/api/spaces/{space}",
    scope="spaces:write",
    role="owner",
    status=204,
    summary="Delete a space and everything in it (its hostnames stop routing)",
)
async def delete_space(ctx: Ctx) -> None:
    row = await _load(ctx)
    ctx.if_match(etag(row.id, row.version))
    hosts = (
        (await ctx.conn.execute(sa.select(hostnames.c.host).where(hostnames.c.space_id == row.id)))
        .scalars()
        .all()
    )
    ctx.enqueue_publish(list(hosts))
    await ctx.conn.execute(sa.delete(spaces).where(spaces.c.id == row.id))
    ctx.resource = f"space:{row.id}"


def _member(row: Any) -> dict[str, Any]:
    return {
        "principal_id": row.principal_id,
        "name": row.name,
        "kind": row.kind,
        "role": row.role,
        "etag": etag(f"{row.space_id}:{row.principal_id}", row.version),
        "created_at": row.created_at,
    }


_MEMBER_Q = sa.select(
    memberships.c.space_id,
    memberships.c.principal_id,
    memberships.c.role,
    memberships.c.version,
    memberships.c.created_at,
    principals.c.name,
    principals.c.kind,
).join(principals, principals.c.id == memberships.c.principal_id)


@endpoint(
    "GET",
    "/api/spaces/{space}/members",
    scope="spaces:read",
    role="viewer",
    response=Page,
    paged=True,
    summary="List members",
)
async def list_members(ctx: Ctx) -> dict[str, Any]:
    q = _MEMBER_Q.where(memberships.c.space_id == ctx.space_id)
    return await paged(ctx, q, memberships.c.principal_id, _member)


def _grantable(ctx: Ctx, role: str) -> None:
    assert ctx.role is not None
    if ROLE_RANK[role] > ROLE_RANK[ctx.role]:
        raise Forbidden(f"an {ctx.role} cannot grant the {role} role")


@endpoint(
    "POST",
    "/api/spaces/{space}/members",
    scope="spaces:write",
    role="admin",
    body=MemberAdd,
    response=Member,
    status=201,
    responses=(
        (
            202,
            Invitation,
            "the principal is invited: it becomes a member once it accepts "
            "(POST /api/invitations/{invitation}/accept); nothing about it is shown before",
        ),
    ),
    summary="Invite a principal (202, it joins by accepting); the system admin adds it (201)",
)
async def add_member(ctx: Ctx) -> dict[str, Any]:
    body: MemberAdd = ctx.body
    _grantable(ctx, body.role)
    p = (
        await ctx.conn.execute(
            sa.select(principals.c.id).where(
                principals.c.id == body.principal_id,
                principals.c.kind != DEPLOYMENT_KIND,  # a deployment is its own space's only
            )
        )
    ).first()
    if p is None:
        raise field_error("body.principal_id", "no such principal")
    exists = (
        await ctx.conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.space_id == ctx.space_id,
                memberships.c.principal_id == body.principal_id,
            )
        )
    ).first()
    if exists is not None:
        raise Conflict("already a member; PATCH the membership to change the role")
    if not ctx.principal.is_system_admin:
        return await invite(ctx, body.principal_id, body.role)
    await ctx.conn.execute(
        sa.insert(memberships).values(
            space_id=ctx.space_id,
            principal_id=body.principal_id,
            role=body.role,
            created_at=now_ms(),
        )
    )
    ctx.resource = f"space:{ctx.space_id}/member:{body.principal_id}"
    row = (
        await ctx.conn.execute(
            _MEMBER_Q.where(
                memberships.c.space_id == ctx.space_id,
                memberships.c.principal_id == body.principal_id,
            )
        )
    ).one()
    return _member(row)


async def _load_member(ctx: Ctx) -> Any:
    row = (
        await ctx.conn.execute(
            _MEMBER_Q.where(
                memberships.c.space_id == ctx.space_id,
                memberships.c.principal_id == ctx.params["principal"],
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"member {ctx.params['principal']} not found")
    return row


async def _owners(ctx: Ctx) -> int:
    return int(
        (
            await ctx.conn.execute(
                sa.select(sa.func.count())
                .select_from(memberships)
                .where(memberships.c.space_id == ctx.space_id, memberships.c.role == "owner")
            )
        ).scalar_one()
    )


@endpoint(
    "PATCH",
    "/api/spaces/{space}/members/{principal}",
    scope="spaces:write",
    role="admin",
    body=MemberPatch,
    response=Member,
    summary="Change a member's role",
)
async def patch_member(ctx: Ctx) -> dict[str, Any]:
    body: MemberPatch = ctx.body
    row = await _load_member(ctx)
    ctx.if_match(etag(f"{row.space_id}:{row.principal_id}", row.version))
    _grantable(ctx, body.role)
    _grantable(ctx, row.role)  # an admin cannot demote an owner
    if row.role == "owner" and body.role != "owner" and await _owners(ctx) <= 1:
        raise Conflict("a space keeps at least one owner")
    await ctx.conn.execute(
        sa.update(memberships)
        .where(
            memberships.c.space_id == ctx.space_id, memberships.c.principal_id == row.principal_id
        )
        .values(role=body.role, version=row.version + 1)
    )
    ctx.resource = f"space:{ctx.space_id}/member:{row.principal_id}"
    return _member(await _load_member(ctx))


@endpoint(
    "DELETE",
    "/api/spaces/{space}/members/{principal}",
    scope="spaces:write",
    role="admin",
    status=204,
    summary="Remove a member",
)
async def remove_member(ctx: Ctx) -> None:
    row = await _load_member(ctx)
    ctx.if_match(etag(f"{row.space_id}:{row.principal_id}", row.version))
    _grantable(ctx, row.role)
    if row.role == "owner" and await _owners(ctx) <= 1:
        raise Conflict("a space keeps at least one owner")
    await ctx.conn.execute(
        sa.delete(memberships).where(
            memberships.c.space_id == ctx.space_id, memberships.c.principal_id == row.principal_id
        )
    )
    ctx.resource = f"space:{ctx.space_id}/member:{row.principal_id}"
