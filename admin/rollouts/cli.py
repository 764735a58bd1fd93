"""``turnout admin rollout``: a staged rollout's status and the operator's actions, over the API.

::

    turnout admin rollout status  APP_DEPLOYMENT_ID [--watch] [--interval S] [--json]
    turnout admin rollout pause|resume|abort|promote APP_DEPLOYMENT_ID [--reason TEXT] [--json]

Common flags: ``--space`` (env ``TURNOUT_SPACE``), ``--url`` (env ``TURNOUT_ADMIN_URL``, default
``http://127.0.0.1:8081``), ``--token`` (env ``TURNOUT_TOKEN``). It speaks HTTP to the admin API
only (``GET …/app-deployments/{id}/rollout``, ``POST …/rollout/<action>``), never to its
database, so it works against any admin instance.

``status --watch`` is the live view: stage, weight, each canary's request count, error rate and
p99 against the limits, and the time to the next step. On a terminal it redraws one block in
place; piped, it prints a plain line whenever the state, stage, weight or verdict changes and one
line per new history event — so a CI log shows the walk. It ends when the rollout does: exit 0
when completed, 1 when it failed or was aborted.

Exit codes: 0 success, 1 the API refused (the error code and message are printed), 2 a usage or
connection problem.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Any

ACTIONS = ("pause", "resume", "abort", "promote")
DEFAULT_URL = "http://127.0.0.1:8081"
FINAL = ("completed", "aborted", "failed")


class CliError(Exception):
    """Usage or connection problem (exit 2)."""


class ApiRefused(Exception):
    """The API answered an error envelope (exit 1)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")


# ------------------------------------------------------------------------------ rendering


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f} %"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _duration(ms: int) -> str:
    s = max(0, round(ms / 1000))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def next_step(doc: dict[str, Any], now_ms: int) -> str:
    """When and what happens next, as the live view says it."""
    state = str(doc["state"])
    if state in FINAL:
        return state
    if state == "paused":
        return "paused (resume to go on)"
    if doc.get("waiting"):
        return str(doc["waiting"])
    at = doc.get("next_decision_at")
    if at is None:
        return "-"
    left = at - now_ms
    return f"next step in {_duration(left)}" if left > 0 else "next step at the next reconcile"


def summary(doc: dict[str, Any], now_ms: int) -> str:
    """One line: state, stage, weight, and the time to the next step."""
    return (
        f"{doc['state']} stage {doc['stage']}/{len(doc['stages'])} weight {doc['weight']} % "
        f"· {next_step(doc, now_ms)}"
    )


def leg_line(leg: dict[str, Any], hc: dict[str, Any]) -> str:
    """One canary against the limits."""
    p99_limit = hc.get("p99_latency_ms")
    latency = f"p99 {_ms(leg['p99_ms'])}" + (
        f" (limit {_ms(float(p99_limit))})" if p99_limit is not None else ""
    )
    return (
        f"{leg['service']}: {leg['requests']} requests (min {hc['min_requests']}) · errors "
        f"{_pct(leg['error_rate'])} (limit {_pct(hc['error_rate_threshold'])}) · {latency} · "
        f"{leg['verdict']}"
    )


def event_line(event: dict[str, Any]) -> str:
    at = time.strftime("%H:%M:%S", time.gmtime(event["at"] / 1000))
    who = "reconciler" if event["actor"] == "reconciler" else event.get("principal_id") or "?"
    weights = (
        f"{event['from_weight']} % → {event['to_weight']} %"
        if event["from_weight"] is not None
        else f"{event['to_weight']} %"
    )
    return f"{at} {event['action']} {weights} by {who}: {event['reason']}"


def stages_line(doc: dict[str, Any]) -> str:
    parts = []
    for i, stage in enumerate(doc["stages"], start=1):
        label = f"{stage['weight']}%"
        if doc["state"] not in FINAL and i == doc["stage"]:
            label = f"[{label}]"
        parts.append(label)
    return " → ".join(parts)


def block(doc: dict[str, Any], now_ms: int) -> list[str]:
    """The live view's block (also ``status`` without ``--watch``)."""
    lines = [
        f"rollout {doc['id']} of app {doc['app']} ({doc['app_deployment_id']})",
        f"  {summary(doc, now_ms)}",
        f"  stages  {stages_line(doc)}",
    ]
    gate = doc.get("gate")
    if gate is not None:
        lines += [f"  {leg_line(leg, doc['health_check'])}" for leg in gate["services"]]
    if doc.get("fail_reason"):
        lines.append(f"  failed: {doc['fail_reason']}")
    if doc["history"]:
        lines.append(f"  last    {event_line(doc['history'][-1])}")
    return lines


def plain_line(doc: dict[str, Any], now_ms: int) -> str:
    """The piped live view's line."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
    gate = doc.get("gate")
    legs = (
        " | " + " | ".join(leg_line(leg, doc["health_check"]) for leg in gate["services"])
        if gate is not None
        else ""
    )
    return f"{stamp} {summary(doc, now_ms)}{legs}"


def _signature(doc: dict[str, Any]) -> tuple[Any, ...]:
    gate = doc.get("gate") or {}
    return (doc["state"], doc["stage"], doc["weight"], gate.get("verdict"), doc.get("waiting"))


# ------------------------------------------------------------------------------ HTTP


class Client:
    def __init__(self, url: str, token: str, space: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.space = space
        self.timeout = timeout

    def path(self, app_id: str, action: str | None = None) -> str:
        base = f"/api/spaces/{self.space}/app-deployments/{app_id}/rollout"
        return f"{base}/{action}" if action else base

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out: dict[str, Any] = json.loads(resp.read())
                return out
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                raise ApiRefused(exc.code, str(err["code"]), str(err["message"])) from None
            except (ValueError, KeyError, TypeError):
                raise ApiRefused(
                    exc.code, "http_error", raw[:200].decode("utf-8", "replace")
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the admin API at {self.url}: {reason}") from None

    def get(self, app_id: str) -> dict[str, Any]:
        return self.request("GET", self.path(app_id))

    def act(self, app_id: str, action: str, reason: str | None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return self.request("POST", self.path(app_id, action), body)


# ------------------------------------------------------------------------------ commands


def watch(
    fetch: Callable[[], dict[str, Any]],
    out: IO[str],
    *,
    tty: bool,
    interval: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The live view until the rollout ends; returns the last document."""
    drawn = 0
    seen_events = 0
    last_sig: tuple[Any, ...] | None = None
    while True:
        doc = fetch()
        now = int(clock() * 1000)
        if tty:
            lines = block(doc, now)
            if drawn:
                out.write(f"\x1b[{drawn}F\x1b[J")  # back to the block's first line, clear
            out.write("\n".join(lines) + "\n")
            drawn = len(lines)
        else:
            for event in doc["history"][seen_events:]:
                out.write(f"event {event_line(event)}\n")
            sig = _signature(doc)
            if sig != last_sig:
                out.write(plain_line(doc, now) + "\n")
                last_sig = sig
        seen_events = len(doc["history"])
        out.flush()
        if doc["state"] in FINAL:
            return doc
        sleep(interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout admin rollout",
        description="A staged rollout's status (with a live view) and the operator's actions.",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("app_deployment", metavar="APP_DEPLOYMENT_ID")
        p.add_argument(
            "--space", default=os.environ.get("TURNOUT_SPACE"), help="space id (env TURNOUT_SPACE)"
        )
        p.add_argument(
            "--url",
            default=os.environ.get("TURNOUT_ADMIN_URL", DEFAULT_URL),
            help="admin API base URL (env TURNOUT_ADMIN_URL, default %(default)s)",
        )
        p.add_argument(
            "--token", default=os.environ.get("TURNOUT_TOKEN"), help="API token (env TURNOUT_TOKEN)"
        )
        p.add_argument("--json", action="store_true", help="print the rollout document as JSON")

    status = subs.add_parser("status", help="show a rollout (--watch: live view until it ends)")
    common(status)
    status.add_argument("--watch", action="store_true", help="redraw until the rollout ends")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    for action in ACTIONS:
        p = subs.add_parser(action, help=f"{action} the rollout")
        common(p)
        p.add_argument("--reason", help="why (recorded in the rollout's history)")
    return parser


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if not ns.token:
            raise CliError("no token: pass --token or set TURNOUT_TOKEN")
        if not ns.space:
            raise CliError("no space: pass --space or set TURNOUT_SPACE")
        if ns.command == "status" and not 0.1 <= ns.interval <= 3600:
            raise CliError("--interval must be within 0.1..3600 seconds")
        client = Client(ns.url, ns.token, ns.space)
        if ns.command == "status":
            if ns.watch:
                doc = watch(
                    lambda: client.get(ns.app_deployment),
                    io.StringIO() if ns.json else out,  # --json: only the final document
                    tty=out.isatty(),
                    interval=ns.interval,
                )
                if ns.json:
                    out.write(json.dumps(doc) + "\n")
                return 0 if doc["state"] == "completed" else 1
            doc = client.get(ns.app_deployment)
        else:
            doc = client.act(ns.app_deployment, ns.command, ns.reason)
    except CliError as exc:
        print(f"turnout admin rollout: {exc}", file=sys.stderr)
        return 2
    except ApiRefused as exc:
        print(f"turnout admin rollout {ns.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if ns.json:
        out.write(json.dumps(doc) + "\n")
    else:
        out.write("\n".join(block(doc, int(time.time() * 1000))) + "\n")
    return 0
