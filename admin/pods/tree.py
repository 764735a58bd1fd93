"""``turnout admin pods tree --space S``: the delegation tree as SQL holds it.

What an operator looks at when a restore went wrong: every pod of the space under the pod that
delegated to it, each with its effective write regions (and what cuts into them), its lease
state and its age; reclaimed children are shown with the reason and when.

It reads SQL directly, read-only, like ``resync`` and ``rekey``: it is for the moment the API
or its tokens are part of the problem, it needs no ``TURNOUT_KEYS`` (nothing is decrypted), and
it shows the authority — never the mirror, whose disagreement may be what is being debugged.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from admin.db import spaces
from admin.pods.algebra import Perm, write_regions
from admin.pods.records import PodState, load_states


class NoSuchSpace(LookupError):
    pass


def _ago(ms: int) -> str:
    s = max(0, ms) // 1000
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172_800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def _lease(state: PodState, now: int) -> dict[str, Any]:
    lease = state.lease
    if lease is None:
        return {"status": "none"}
    out: dict[str, Any] = {
        "status": lease.status(now),
        "id": lease.id,
        "expires_at": lease.expires_at,
    }
    return out


def _node(state: PodState, now: int) -> dict[str, Any]:
    scope = state.effective()
    regions = []
    for rule, cuts in write_regions(scope):
        regions.append(
            {
                "region": rule.to_json(),
                "except": [
                    {**d.rule.to_json(), "origin": d.origin.value, "child": d.child} for d in cuts
                ],
            }
        )
    edge = state.in_edge
    return {
        "name": state.pod.name,
        "state": state.status(),
        "created_at": state.pod.created_at,
        "age_ms": now - state.pod.created_at,
        "lease": _lease(state, now),
        "write": regions,
        "read": [r.to_json() for r in scope.allow if r.permission is Perm.READ],
        "edge": None
        if edge is None
        else {
            "id": edge.id,
            "state": edge.state.value,
            "reason": edge.reason,
            "reclaimed_at": edge.reclaimed_at,
        },
        "children": [],
    }


async def build(engine: AsyncEngine, space_id: str, now: int) -> dict[str, Any]:
    """The space's delegation tree as plain data (what ``--json`` prints)."""
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(spaces.c.id).where(spaces.c.id == space_id))).first()
        if found is None:
            raise NoSuchSpace(space_id)
        states = await load_states(conn, space_id)
    nodes = {pid: _node(st, now) for pid, st in states.items()}
    roots: list[dict[str, Any]] = []
    for pid, st in sorted(states.items(), key=lambda kv: kv[1].pod.name):
        parent = st.in_edge.parent_pod_id if st.in_edge is not None else None
        if parent is not None and parent in nodes:
            nodes[parent]["children"].append(nodes[pid])
        else:
            roots.append(nodes[pid])
    live = sum(1 for st in states.values() if st.lease is not None and st.lease.live(now))
    return {"space_id": space_id, "at": now, "pods": len(states), "live": live, "roots": roots}


def _lease_text(node: dict[str, Any], now: int) -> str:
    lease = node["lease"]
    status = lease["status"]
    if status == "live":
        return f"lease live, expires in {_ago(lease['expires_at'] - now)}"
    if status == "expired":
        return f"lease EXPIRED {_ago(now - lease['expires_at'])} ago (not reaped yet)"
    return "no lease"


def _rule_text(rule: dict[str, Any]) -> str:
    return str(rule["target"]) + ("" if rule["recursive"] else " (shallow)")


def render(tree: dict[str, Any]) -> str:
    """The tree for a terminal."""
    now = tree["at"]
    lines = [f"space {tree['space_id']}: {tree['pods']} pods, {tree['live']} live"]

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        edge = node["edge"]
        if edge is not None and edge["state"] == "reclaimed":
            when = _ago(now - (edge["reclaimed_at"] or now))
            lines.append(
                f"{prefix}{branch}{node['name']}  reclaimed ({edge['reason']}, {when} ago)"
            )
            return
        lines.append(
            f"{prefix}{branch}{node['name']}  {node['state']}, {_lease_text(node, now)}, "
            f"age {_ago(node['age_ms'])}"
        )
        inner = prefix + ("" if top else ("    " if last else "│   "))
        pad = inner + ("│   " if node["children"] else "    ")
        for region in node["write"]:
            cuts = ", ".join(
                _rule_text(c)
                + (f" → {c['child']}" if c["origin"] == "delegated" else " (explicit deny)")
                for c in region["except"]
            )
            lines.append(
                f"{pad}write {_rule_text(region['region'])}" + (f"  except {cuts}" if cuts else "")
            )
        for rule in node["read"]:
            lines.append(f"{pad}read  {_rule_text(rule)}")
        if not node["write"] and not node["read"]:
            lines.append(f"{pad}(no scope)")
        kids = node["children"]
        for i, child in enumerate(kids):
            walk(child, inner, i == len(kids) - 1, False)

    for root in tree["roots"]:
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"
