"""Generate docs/api.md from the admin's OpenAPI document (the endpoint declarations).

Usage: .venv/bin/python scripts/gen_api_docs.py > docs/api.md
A test checks that docs/api.md is up to date with the declarations.
"""

from __future__ import annotations

import sys
from typing import Any

from admin.app import load_resources
from admin.framework import openapi


def render() -> str:
    load_resources()
    doc = openapi()
    out = [
        "# Admin API reference",
        "",
        "Generated from the endpoint declarations by `scripts/gen_api_docs.py` (the same source as",
        "`GET /openapi.json`). Every endpoint needs `Authorization: Bearer <token>`; errors are",
        '`{"error": {"code", "message", "details"?}}`. Mutations accept `Idempotency-Key`; resources',
        "with an `etag` honour `If-Match` (412 on mismatch); lists take `?limit=` (1..500, default",
        '50) and `?cursor=` and answer `{"items", "next_cursor"}`. Every answer carries the',
        "server's `X-Request-Id`; input rules and the audit log: [requests.md](requests.md);",
        "manifest limits, errors and Takos hints (and the 429): [manifest.md](manifest.md).",
        "",
        "| method | path | scope | min. role | summary |",
        "|---|---|---|---|---|",
    ]
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rows.append((path, method, op))
    for path, method, op in rows:
        out.append(
            f"| {method.upper()} | `{path}` | `{op['x-turnout-scope']}` | "
            f"{op.get('x-turnout-role', '—')} | {op['summary']} |"
        )
    out.append("")
    for path, method, op in rows:
        out.append(f"## {method.upper()} `{path}`")
        out.append("")
        out.append(op["summary"] + ".")
        out.append("")
        out.append(
            f"- scope: `{op['x-turnout-scope']}`"
            + (
                f"; minimum role in the space: `{op['x-turnout-role']}`"
                if "x-turnout-role" in op
                else ""
            )
        )
        body = op.get("requestBody")
        if body:
            content = body["content"]
            kinds = ", ".join(f"`{k}`" for k in content)
            schema = next(iter(content.values()))["schema"]
            ref = schema.get("$ref", "")
            name = ref.rsplit("/", 1)[-1] if ref else schema.get("type", "")
            out.append(f"- body ({kinds}): {name}")
            comp = doc["components"]["schemas"].get(name) if ref else None
            if comp and "properties" in comp:
                required = set(comp.get("required", []))
                for prop, spec in comp["properties"].items():
                    typ = (
                        spec.get("type")
                        or " | ".join(
                            str(s.get("type", s.get("$ref", "?")).rsplit("/", 1)[-1])
                            for s in spec.get("anyOf", [])
                        )
                        or (
                            "enum " + "/".join(map(str, spec["enum"]))
                            if "enum" in spec
                            else "object"
                        )
                    )
                    out.append(f"  - `{prop}`{'' if prop in required else ' (optional)'}: {typ}")
        codes = ", ".join(sorted(op["responses"]))
        out.append(f"- answers: {codes}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
