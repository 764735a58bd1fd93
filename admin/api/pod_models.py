"""Request and response models of the pod API (``admin/api/pods.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from admin.api.models import Strict
from admin.pods.algebra import MAX_RULES, Perm, Rule, ScopeError, normalise_path
from admin.pods.authority import check_name

PermName = Literal["read", "write"]


def _path(value: str) -> str:
    try:
        return normalise_path(value)
    except ScopeError as exc:
        raise ValueError(exc.reason) from None


# ------------------------------------------------------------------------------ requests


class RuleIn(Strict):
    """``{target, permission, recursive?}``: an absolute path (no globs, no ``..``)."""

    target: str = Field(max_length=4096)
    permission: PermName
    recursive: bool = True

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _path(value)

    def rule(self) -> Rule:
        return Rule(self.target, Perm.parse(self.permission), self.recursive)


def rules_of(items: list[RuleIn]) -> list[Rule]:
    return [r.rule() for r in items]


class ScopeIn(Strict):
    allow: list[RuleIn] = Field(min_length=1, max_length=MAX_RULES)
    deny: list[RuleIn] = Field(default_factory=list, max_length=MAX_RULES)


class PodCreate(Strict):
    name: str = Field(max_length=128)
    scope: ScopeIn
    grant: list[RuleIn] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("name")
    @classmethod
    def _pod_name(cls, value: str) -> str:
        return check_name(value)


class SpawnBody(Strict):
    name: str = Field(max_length=128)
    rules: list[RuleIn] = Field(min_length=1, max_length=MAX_RULES)
    grant: list[RuleIn] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("name")
    @classmethod
    def _pod_name(cls, value: str) -> str:
        return check_name(value)


class AttachBody(Strict):
    segment_id: str | None = Field(default=None, min_length=1, max_length=40)


class HeartbeatBody(Strict):
    lease_id: str = Field(min_length=1, max_length=40)


class ReleaseBody(Strict):
    lease_id: str | None = Field(default=None, min_length=1, max_length=40)


class CheckBody(Strict):
    path: str = Field(max_length=4096)
    permission: PermName

    @field_validator("path")
    @classmethod
    def _normalised(cls, value: str) -> str:
        return _path(value)


# ------------------------------------------------------------------------------ responses


class RuleOut(BaseModel):
    target: str
    permission: PermName
    recursive: bool


class LayerOut(RuleOut):
    origin: Literal["explicit", "delegated"]
    edge_id: str | None = None
    child: str | None = None


class DecidingRule(RuleOut):
    origin: Literal["allow", "explicit", "delegated"]
    edge_id: str | None = None
    child: str | None = None


class BaseScopeOut(BaseModel):
    allow: list[RuleOut]
    deny: list[LayerOut]


class LeaseOut(BaseModel):
    id: str
    segment_id: str
    parent: str | None
    created_at: int
    expires_at: int
    ended_at: int | None
    end_reason: str | None
    status: Literal["live", "expired", "ended"]


class EdgeOut(BaseModel):
    id: str
    parent: str
    child: str
    rules: list[RuleOut]
    state: Literal["outstanding", "reclaimed"]
    reason: str | None
    created_at: int
    reclaimed_at: int | None
    delegated_by: str
    reparented_at: int | None
    live: bool | None = None


class Delegated(BaseModel):
    edge_id: str
    child: str | None
    rules: list[RuleOut]


class HistoryOut(BaseModel):
    edge_id: str
    child: str | None
    rules: list[RuleOut]
    reason: str | None
    reclaimed_at: int | None


class SegmentOut(BaseModel):
    id: str
    kind: Literal["root", "compact", "fork"]
    parent_id: str | None
    session_id: str
    pod: str
    created_at: int


class PodSummary(BaseModel):
    id: str
    name: str
    state: Literal["active", "pending", "inactive", "retired"]
    live: bool
    parent: str | None
    version: int
    etag: str
    scope: BaseScopeOut
    grant: list[RuleOut]
    effective: BaseScopeOut
    lease: LeaseOut | None
    session_id: str | None
    segment_id: str | None
    created_at: int
    updated_at: int


class PodOut(PodSummary):
    delegation: EdgeOut | None
    delegated: list[Delegated]
    children: list[EdgeOut]
    children_truncated: bool
    reclaim_history: list[HistoryOut]
    lineage: list[SegmentOut]


class PodPage(BaseModel):
    items: list[PodSummary]
    next_cursor: str | None


class ReclaimedOut(BaseModel):
    edge_id: str
    child: str
    parent: str
    rules: list[RuleOut]
    reason: str
    reparented: int


class AttachOut(BaseModel):
    pod: str
    version: int
    lease: LeaseOut
    effective: BaseScopeOut
    reclaimed: list[ReclaimedOut]
    session_id: str | None
    segment_id: str | None


class SpawnOut(BaseModel):
    child: PodOut
    edge: EdgeOut
    lease: LeaseOut
    parent_effective: BaseScopeOut


class HeartbeatOut(BaseModel):
    lease: LeaseOut


class ReleaseOut(BaseModel):
    released: bool
    lease: LeaseOut | None


class SegmentMove(BaseModel):
    pod: str
    version: int
    session_id: str
    segment_id: str
    lineage: list[SegmentOut]
    effective: BaseScopeOut


class ReclaimOut(BaseModel):
    changed: bool
    edge: EdgeOut
    parent: str
    parent_effective: BaseScopeOut
    reclaimed: list[ReclaimedOut]


class CheckOut(BaseModel):
    allowed: bool
    access: Literal["none", "read", "write"]
    path: str
    permission: PermName
    rule: DecidingRule | None
    source: Literal["mirror", "sql"]
    version: int


class MirrorSyncOut(BaseModel):
    checked: int
    rewritten: int
    deleted: int
    problems: dict[str, int]


class EndedLease(BaseModel):
    pod: str
    lease_id: str


class RebuildOut(BaseModel):
    pods: int
    leases_ended: list[EndedLease]
    reclaimed: list[ReclaimedOut]
    mirrors: MirrorSyncOut
