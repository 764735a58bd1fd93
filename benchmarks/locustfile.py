"""Locust scenario: tenant traffic over many hostnames + an admin flipping deployments.

Run by ``benchmarks/scenario.py`` (which starts everything); the environment carries
TURNOUT_SCENARIO_HOSTS (file with one hostname per line, each an app ``a<i>``),
TURNOUT_SCENARIO_ADMIN (admin base URL), TURNOUT_SCENARIO_TOKEN, TURNOUT_SCENARIO_SPACE,
TURNOUT_SCENARIO_V1 / _V2 (upstream URLs whose /small answers "v1" / "v2").

TenantUser: GET /small on a random hostname; any non-200, or a body other than v1/v2, fails.
AdminUser (one): every few seconds switches one app between v1 and v2 (a direct deploy of the
other version, or a rollback to the previous deployment), then polls that hostname through the gateway until the new version answers and
reports the time from the admin's 201 to the first new answer as a "propagation" request.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import ClassVar

from locust import FastHttpUser, between, constant, task

with open(os.environ["TURNOUT_SCENARIO_HOSTS"]) as _fh:
    HOSTS = [h.strip() for h in _fh if h.strip()]
HOST_OF = {h.split(".")[1]: h for h in HOSTS}  # app -> hostname
ADMIN = os.environ["TURNOUT_SCENARIO_ADMIN"]
TOKEN = os.environ["TURNOUT_SCENARIO_TOKEN"]
SPACE = os.environ["TURNOUT_SCENARIO_SPACE"]
UPSTREAM = {"v1": os.environ["TURNOUT_SCENARIO_V1"], "v2": os.environ["TURNOUT_SCENARIO_V2"]}


def manifest(service: str, app: str, version: str) -> str:
    return json.dumps(
        {
            "apiVersion": "turnout/v1",
            "kind": "App",
            "metadata": {"name": app},
            "spec": {
                "services": {service: {"type": "http", "upstreams": [UPSTREAM[version]]}},
                "routes": [{"service": service}],
                "rollout": {"strategy": "direct"},
            },
        }
    )


class TenantUser(FastHttpUser):
    wait_time = constant(0)
    weight = 20

    @task
    def get(self) -> None:
        host = random.choice(HOSTS)
        with self.client.get(
            "/small", headers={"Host": host}, name="tenant GET", catch_response=True
        ) as r:
            if r.status_code != 200 or r.text.strip() not in ("v1", "v2"):
                r.failure(f"{r.status_code} {r.text[:80]!r}")


class AdminUser(FastHttpUser):
    wait_time = between(2, 4)
    fixed_count = 1
    current: ClassVar[dict[str, str]] = {}
    can_roll_back: ClassVar[set[str]] = set()

    @task
    def flip(self) -> None:
        # A rollback needs an older deployment that is not serving: apps deployed since their
        # last rollback.
        candidates = sorted(self.can_roll_back)
        rollback = bool(candidates) and random.random() < 0.5
        host = HOST_OF[random.choice(candidates)] if rollback else random.choice(HOSTS)
        service, app = host.split(".")[:2]  # <service>.<app>.<base>
        now = self.current.get(app, "v1")
        target = "v2" if now == "v1" else "v1"
        t0 = time.perf_counter()
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if rollback:
            # Roll back: the previous deployment is the other version (they alternate).
            r = self.client.post(
                f"{ADMIN}/api/spaces/{SPACE}/services/{service}/rollback",
                data="{}",
                headers=auth,
                name="admin rollback",
            )
            ok = r.status_code == 200
        else:
            r = self.client.post(
                f"{ADMIN}/api/spaces/{SPACE}/app-deployments",
                data=manifest(service, app, target),
                headers=auth,
                name="admin deploy",
            )
            ok = r.status_code == 201
        if not ok:
            return
        if rollback:
            self.can_roll_back.discard(app)
        else:
            self.can_roll_back.add(app)
        committed = time.perf_counter()
        while time.perf_counter() - committed < 10:
            g = self.client.get("/small", headers={"Host": host}, name="admin poll")
            if g.status_code == 200 and g.text.strip() == target:
                elapsed = (time.perf_counter() - committed) * 1000
                self.environment.events.request.fire(
                    request_type="ROUTE",
                    name="propagation (commit -> first new answer)",
                    response_time=elapsed,
                    response_length=0,
                    exception=None,
                    context={},
                )
                self.current[app] = target
                return
            time.sleep(0.002)
        self.environment.events.request.fire(
            request_type="ROUTE",
            name="propagation (commit -> first new answer)",
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=0,
            exception=RuntimeError(f"{host} did not switch to {target} in 10 s"),
            context={},
        )
