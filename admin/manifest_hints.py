"""Hints for manifests written for Takos, the system Turnout re-imagines.

Takos manifests come in a few shapes Turnout spells differently: the flat ``.takos/app.yml``
(top-level ``name``, ``compute``, ``routes`` with ``target:``), ``spec.workers``, services of
``type: worker`` built from ``.takos/workflows/``, container ``image``/``port`` entries, and
per-route ``timeoutMs``. Plain validation would answer each with "unknown field"; instead
:func:`takos_hints` names the Turnout equivalent for every such form it finds, and
:func:`admin.manifest.manifest_from_obj` lists these hints *before* every other problem (the
error message shows only the first five) and drops the plain issues a hint already explains.

Hints quote only names (services, targets) and numbers (timeouts) — never a value of ``env``,
``secrets`` or ``bindings``.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from admin.manifest_load import Issue, key_text

SERVICE_FORM: Final = "spec.services.<name>: {type: http, upstreams: [http://host:port]}"
ENVELOPE: Final = "apiVersion: turnout/v1, kind: App, metadata: {name}, spec"
WORKER_MESSAGE: Final = (
    "worker services (built from .takos/workflows/) are not supported: Turnout runs HTTP "
    "runtimes; run the worker as an HTTP server and declare it as type: http with upstreams "
    f"({SERVICE_FORM})"
)


class Hint(NamedTuple):
    issue: Issue
    replaces: tuple[str, ...] = ()  # paths of plain issues this hint already explains


def _name(value: Any) -> str | None:
    return key_text(value) if isinstance(value, str) and value else None


def takos_hints(doc: Any) -> list[Hint]:
    """Every Takos form in ``doc`` with its Turnout equivalent, most actionable first."""
    if not isinstance(doc, dict):
        return []
    hints: list[Hint] = []
    spec = doc.get("spec")
    flat = "spec" not in doc
    if "compute" in doc:
        names = list(doc["compute"]) if isinstance(doc["compute"], dict) else []
        example = _name(names[0]) if names else None
        where = f"spec.services.{example}" if example else "spec.services.<name>"
        hints.append(
            Hint(
                Issue(
                    "compute",
                    "Takos compute entries are Turnout services: declare each one as "
                    f"{where}: {{type: http, upstreams: [http://host:port]}} inside the App "
                    f"envelope ({ENVELOPE})",
                ),
                ("spec",) if flat else (),
            )
        )
    if flat and "name" in doc:
        hints.append(Hint(Issue("name", "the app's name goes in metadata.name"), ("metadata",)))
    if flat and "routes" in doc:
        hints.append(Hint(Issue("routes", "routes go in spec.routes")))
        hints += _route_hints(doc["routes"], "routes", doc.get("compute"))
    if isinstance(spec, dict):
        hints += _spec_hints(spec)
    return hints


def _spec_hints(spec: dict[Any, Any]) -> list[Hint]:
    hints: list[Hint] = []
    for key in ("workers", "compute"):
        if key in spec:
            names = list(spec[key]) if isinstance(spec[key], dict) else []
            example = _name(names[0]) if names else None
            where = f"spec.services.{example}" if example else "spec.services.<name>"
            hints.append(
                Hint(
                    Issue(
                        f"spec.{key}",
                        f"Takos {key} are Turnout services: run each one as an HTTP server and "
                        f"declare it as {where}: {{type: http, upstreams: [http://host:port]}}",
                    ),
                    () if "services" in spec else ("spec.services",),
                )
            )
    services = spec.get("services")
    if isinstance(services, dict):
        for name, svc in services.items():
            if isinstance(svc, dict):
                hints += _service_hints(svc, f"spec.services.{key_text(name)}")
    hints += _route_hints(spec.get("routes"), "spec.routes", services)
    return hints


def _service_hints(svc: dict[Any, Any], path: str) -> list[Hint]:
    hints: list[Hint] = []
    worker = svc.get("type") == "worker"
    if worker:  # its message covers the build too
        hints.append(Hint(Issue(f"{path}.type", WORKER_MESSAGE), (f"{path}.upstreams",)))
    if "build" in svc and not worker:
        hints.append(
            Hint(
                Issue(
                    f"{path}.build",
                    "Turnout does not build services: run the built artifact as an HTTP server "
                    "and list its address in upstreams",
                )
            )
        )
    for key in ("image", "port"):
        if key in svc:
            hints.append(
                Hint(
                    Issue(
                        f"{path}.{key}",
                        "Turnout does not run images: run the container yourself and list "
                        "http://<its host>:<its port> in upstreams",
                    ),
                    (f"{path}.upstreams",),
                )
            )
    return hints


def _route_hints(routes: Any, path: str, services: Any) -> list[Hint]:
    if not isinstance(routes, list):
        return []
    only = list(services) if isinstance(services, dict) and len(services) == 1 else []
    hints: list[Hint] = []
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        rpath = f"{path}[{i}]"
        target = _name(route.get("target"))
        if "target" in route:
            fix = f"write service: {target} instead" if target else "use service: <name>"
            hints.append(
                Hint(
                    Issue(f"{rpath}.target", f"Turnout routes name their service: {fix}"),
                    (f"{rpath}.service",),
                )
            )
        if "timeoutMs" in route:
            service = _name(route.get("service")) or target or (_name(only[0]) if only else None)
            value = route["timeoutMs"]
            small = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**9
            shown = str(value) if small else None
            where = f"spec.services.{service or '<name>'}.limits.timeout_ms"
            hints.append(
                Hint(
                    Issue(
                        f"{rpath}.timeoutMs",
                        "a timeout belongs to the service in Turnout: set "
                        f"{where}: {shown or '<ms>'} (1..30000) instead",
                    )
                )
            )
        if "name" in route:
            hints.append(
                Hint(Issue(f"{rpath}.name", "routes have no name in Turnout; remove the field"))
            )
    return hints
