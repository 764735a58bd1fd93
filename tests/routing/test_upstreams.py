"""Replica state: round robin, passive ejection with an injected clock, interning by URL."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from routing.compiled import CompiledRoute, CompiledTarget, compile_record
from routing.models import decode_record, parse_upstream
from routing.upstreams import DEFAULT_EJECTION, EjectionPolicy, Replica, UpstreamRegistry

POLICY = EjectionPolicy(max_fails=3, eject_seconds=10)
URLS = ["http://10.0.0.1:8001", "http://10.0.0.2:8002", "http://10.0.0.3:8003/base/"]


def route_obj(
    urls: list[str], *, version: int = 1, dep: str = "dep-1", weight_split: bool = False
) -> dict[str, Any]:
    targets: list[dict[str, Any]] = [
        {"deployment_id": dep, "weight": 10000, "status": "active", "upstreams": urls}
    ]
    if weight_split:
        targets[0]["weight"] = 8000
        targets.append(
            {
                "deployment_id": "dep-canary",
                "weight": 2000,
                "status": "canary",
                "upstreams": ["http://10.9.9.9:9000"],
            }
        )
    return {
        "host": "app.example.com",
        "version": version,
        "space_id": "space-1",
        "service_id": "svc-1",
        "endpoints": [{"path_prefix": "/", "targets": targets}],
    }


def compile_obj(obj: dict[str, Any], registry: UpstreamRegistry) -> CompiledRoute:
    return compile_record(decode_record(obj), registry)


def target_of(route: CompiledRoute, dep: str = "dep-1") -> CompiledTarget:
    (ep,) = route.endpoints
    target = ep.target(dep.encode())
    assert target is not None
    return target


def make_target(
    urls: list[str] | None = None, registry: UpstreamRegistry | None = None
) -> tuple[CompiledRoute, CompiledTarget]:
    route = compile_obj(
        route_obj(urls or URLS), registry if registry is not None else UpstreamRegistry(POLICY)
    )
    return route, target_of(route)


def urls_of(replicas: list[Replica | None]) -> list[str | None]:
    return [None if r is None else r.url for r in replicas]


# ------------------------------------------------------------------------- replica basics


def test_default_ejection_policy() -> None:
    assert EjectionPolicy() == DEFAULT_EJECTION
    assert (DEFAULT_EJECTION.max_fails, DEFAULT_EJECTION.eject_seconds) == (3, 10.0)
    assert UpstreamRegistry().policy == DEFAULT_EJECTION


def test_replica_fields_from_upstream() -> None:
    replica = Replica(parse_upstream("http://A.internal:8080/base/", "u"), POLICY)
    assert replica.url == "http://a.internal:8080/base"
    assert replica.host == "a.internal"
    assert replica.port == 8080
    assert replica.base_path == b"/base"
    assert replica.key == ("a.internal", 8080)
    assert replica.failures == 0
    assert replica.available(0.0)
    assert replica.policy is POLICY


def test_replicas_on_same_origin_share_pool_key() -> None:
    a = Replica(parse_upstream("http://h.internal:80/a", "u"), POLICY)
    b = Replica(parse_upstream("http://h.internal:80/b", "u"), POLICY)
    assert a.key == b.key
    assert a.base_path != b.base_path


# ------------------------------------------------------------------------- round robin


def test_round_robin_across_replicas() -> None:
    _, target = make_target()
    picked = [target.next_replica(now=0.0) for _ in range(7)]
    expected = [
        "http://10.0.0.1:8001",
        "http://10.0.0.2:8002",
        "http://10.0.0.3:8003/base",
    ]
    assert urls_of(picked) == [*expected, *expected, expected[0]]


def test_round_robin_single_replica() -> None:
    _, target = make_target(URLS[:1])
    first = target.next_replica(0.0)
    assert first is not None
    assert all(target.next_replica(float(t)) is first for t in range(5))


def test_round_robin_is_per_target() -> None:
    registry = UpstreamRegistry(POLICY)
    route = compile_obj(route_obj(URLS[:2], weight_split=True), registry)
    stable, canary = target_of(route), target_of(route, "dep-canary")
    assert urls_of([stable.next_replica(0.0)]) == [URLS[0]]
    assert urls_of([canary.next_replica(0.0)]) == ["http://10.9.9.9:9000"]
    assert urls_of([stable.next_replica(0.0)]) == [URLS[1]]


# ------------------------------------------------------------------------- ejection


def test_ejected_after_max_fails_consecutive_failures() -> None:
    _, target = make_target()
    r0, r1, r2 = target.replicas
    assert r0.record_failure(100.0) is False
    assert r0.record_failure(100.5) is False
    assert r0.available(101.0)
    assert r0.record_failure(101.0) is True  # third consecutive failure ejects
    assert not r0.available(101.0)
    assert r0.ejected_until == 111.0
    picked = [target.next_replica(now=102.0) for _ in range(4)]
    assert picked == [r1, r2, r1, r2]


def test_recovers_after_eject_seconds() -> None:
    _, target = make_target()
    r0, r1, r2 = target.replicas
    for _ in range(3):
        r0.record_failure(50.0)
    assert not r0.available(59.999)
    assert r0 not in [target.next_replica(59.999) for _ in range(6)]
    assert r0.available(60.0)
    picked = [target.next_replica(60.0) for _ in range(6)]
    assert picked.count(r0) == 2
    assert set(picked) == {r0, r1, r2}


def test_success_resets_failure_count() -> None:
    _, target = make_target()
    r0 = target.replicas[0]
    assert r0.record_failure(1.0) is False
    assert r0.record_failure(2.0) is False
    r0.record_success()
    assert r0.failures == 0
    assert r0.record_failure(3.0) is False
    assert r0.record_failure(4.0) is False
    assert r0.available(4.0)  # 4 failures in total, never 3 in a row
    assert r0.record_failure(5.0) is True
    assert not r0.available(5.0)


def test_failures_after_recovery_count_afresh() -> None:
    replica = Replica(parse_upstream(URLS[0], "u"), POLICY)
    for t in (0.0, 0.1, 0.2):
        replica.record_failure(t)
    assert not replica.available(5.0)
    assert replica.failures == 0  # the count restarts once ejected
    assert replica.record_failure(10.5) is False
    assert replica.available(10.5)
    assert replica.record_failure(10.6) is False
    assert replica.record_failure(10.7) is True
    assert replica.ejected_until == pytest.approx(20.7)


def test_ejection_policy_is_honoured() -> None:
    registry = UpstreamRegistry(EjectionPolicy(max_fails=1, eject_seconds=2.5))
    _, target = make_target(URLS[:1], registry)
    (r0,) = target.replicas
    assert r0.record_failure(10.0) is True
    assert target.next_replica(12.4) is None
    assert target.next_replica(12.5) is r0


def test_all_replicas_ejected_gives_none_then_recovers() -> None:
    _, target = make_target()
    for i, replica in enumerate(target.replicas):
        for _ in range(3):
            replica.record_failure(float(i))  # ejected until 10, 11, 12
    assert target.next_replica(5.0) is None
    assert target.next_replica(9.99) is None
    assert target.next_replica(10.0) is target.replicas[0]
    assert target.next_replica(10.5) is target.replicas[0]  # the only one back so far
    assert target.next_replica(12.0) in target.replicas


# ------------------------------------------------------------------------- exclude


def test_exclude_skips_that_replica() -> None:
    _, target = make_target()
    r0, r1, r2 = target.replicas
    picked = [target.next_replica(0.0, exclude=r1) for _ in range(4)]
    assert r1 not in picked
    assert picked == [r0, r2, r0, r2]


def test_exclude_the_only_replica_gives_none() -> None:
    _, target = make_target(URLS[:1])
    (r0,) = target.replicas
    assert target.next_replica(0.0, exclude=r0) is None
    assert target.next_replica(0.0) is r0


def test_exclude_plus_ejection_can_leave_nothing() -> None:
    _, target = make_target(URLS[:2])
    r0, r1 = target.replicas
    for _ in range(3):
        r1.record_failure(0.0)
    assert target.next_replica(1.0, exclude=r0) is None
    assert target.next_replica(1.0) is r0


def test_retry_after_failure_picks_a_different_replica() -> None:
    _, target = make_target()
    first = target.next_replica(0.0)
    assert first is not None
    first.record_failure(0.0)
    second = target.next_replica(0.0, exclude=first)
    assert second is not None and second is not first


# ------------------------------------------------------------------------- registry


def test_registry_interns_by_canonical_url() -> None:
    registry = UpstreamRegistry(POLICY)
    a = registry.get(parse_upstream("http://10.0.0.1:8001", "u"))
    b = registry.get(parse_upstream("http://10.0.0.1:8001/", "u"))
    c = registry.get(parse_upstream("http://10.0.0.1:8002", "u"))
    assert a is b
    assert a is not c
    assert len(registry) == 2
    assert a.policy is POLICY


def test_registry_forgets_unreferenced_replicas() -> None:
    registry = UpstreamRegistry(POLICY)
    replica = registry.get(parse_upstream(URLS[0], "u"))
    assert len(registry) == 1
    del replica
    gc.collect()
    assert len(registry) == 0


def test_same_url_in_two_deployments_shares_one_replica() -> None:
    registry = UpstreamRegistry(POLICY)
    obj = route_obj(URLS[:1], weight_split=True)
    obj["endpoints"][0]["targets"][1]["upstreams"] = [URLS[0]]
    route = compile_obj(obj, registry)
    assert target_of(route).replicas[0] is target_of(route, "dep-canary").replicas[0]
    assert len(registry) == 1


def test_replica_state_survives_recompiling_a_new_version() -> None:
    registry = UpstreamRegistry(POLICY)
    v1 = compile_obj(route_obj(URLS, version=1), registry)
    r0, r1, _ = target_of(v1).replicas
    for _ in range(3):
        r0.record_failure(100.0)
    r1.record_failure(100.0)
    assert not r0.available(101.0)

    # Version 2: different weights, an extra deployment, one URL spelled differently.
    urls_v2 = ["http://10.0.0.1:8001/", URLS[1], URLS[2], "http://10.0.0.4:8004"]
    v2 = compile_obj(route_obj(urls_v2, version=2, weight_split=True), registry)
    assert v2.version == 2
    new_target = target_of(v2)
    assert new_target is not target_of(v1)
    assert new_target.replicas[0] is r0
    assert new_target.replicas[1] is r1
    assert r1.failures == 1
    assert not new_target.replicas[0].available(101.0)
    picked = {new_target.next_replica(101.0) for _ in range(6)}
    assert r0 not in picked
    assert len(picked) == 3

    del v1  # the old version goes away; the state stays with v2's references
    gc.collect()
    assert target_of(v2).replicas[0] is r0
    assert r0.ejected_until == 110.0
    assert new_target.next_replica(110.0) is not None


def test_separate_registries_do_not_share_state() -> None:
    a = compile_obj(route_obj(URLS), UpstreamRegistry(POLICY))
    b = compile_obj(route_obj(URLS), UpstreamRegistry(POLICY))
    assert target_of(a).replicas[0] is not target_of(b).replicas[0]
