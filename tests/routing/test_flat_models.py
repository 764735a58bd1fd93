"""The record classes of routing/models.py on both builds: a flat table's hot-cache miss decodes
through them, so they are compiled too (pyproject ``[tool.turnout] compiled-modules``). A
compiled frozen dataclass cannot be unpickled field by field (its ``__setattr__`` refuses), and
the admin's parse workers return records and upstreams through pickle: every class pickles by
its constructor, and copies and equality still hold.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

import routing.models
from routing.models import (
    DEFAULT_POLICY,
    Endpoint,
    Policy,
    RouteRecord,
    Target,
    Upstream,
    decode_record,
    encode_record,
    parse_upstream,
)
from tests.support.build import EXPECT_COMPILED


def test_this_run_exercises_the_intended_build_of_models() -> None:
    assert routing.models.__file__.endswith(".py") is not EXPECT_COMPILED, routing.models.__file__


def full_record() -> RouteRecord:
    return decode_record(
        {
            "host": "*.example.com",
            "version": 9,
            "space_id": "space",
            "service_id": "svc",
            "blocked": "suspended",
            "updated_at": 1_700_000_000_123,
            "policy": {"retries": 3, "sticky": "header:X-User", "upgrades": ["websocket", "h2c"]},
            "endpoints": [
                {
                    "path_prefix": "/api",
                    "methods": ["GET", "POST"],
                    "targets": [
                        {
                            "deployment_id": "a",
                            "weight": 9000,
                            "status": "active",
                            "upstreams": ["http://10.0.0.1:80/base", "http://[::1]:8080"],
                        },
                        {
                            "deployment_id": "b",
                            "weight": 1000,
                            "status": "canary",
                            "upstreams": ["http://b.internal:81"],
                        },
                    ],
                }
            ],
        }
    )


def values() -> list[object]:
    record = full_record()
    endpoint = record.endpoints[0]
    target = endpoint.targets[0]
    return [
        record,
        endpoint,
        target,
        target.upstreams[0],
        target.upstreams[1],
        record.policy,
        DEFAULT_POLICY,
        Policy(),
        parse_upstream("http://h.example.com:9000", "u"),
    ]


@pytest.mark.parametrize("value", values(), ids=lambda v: type(v).__name__)
def test_pickle_and_copies_round_trip(value: object) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(value, protocol))
        assert back == value and type(back) is type(value)
    assert copy.copy(value) == value
    assert copy.deepcopy(value) == value


def test_a_pickled_record_encodes_the_same() -> None:
    record = full_record()
    assert encode_record(pickle.loads(pickle.dumps(record))) == encode_record(record)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (Policy(), "retries"),
        (Upstream("http://a:1", "a", 1, ""), "port"),
        (Target("d", 10000, "active", ()), "weight"),
        (Endpoint("/", (), ()), "path_prefix"),
        (full_record(), "version"),
    ],
)
def test_records_stay_frozen(value: object, field: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, 1)
