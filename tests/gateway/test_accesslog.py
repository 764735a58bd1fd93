"""Access log lines: one JSON object per line, the documented fields, seeded sampling."""

from __future__ import annotations

import calendar
import io
import random

import orjson
import pytest

from gateway.accesslog import AccessLog

NOW = calendar.timegm((2024, 5, 1, 12, 34, 56)) + 0.789


def write_one(log: AccessLog, **overrides: object) -> None:
    fields: dict[str, object] = {
        "peer": "10.0.0.7",
        "method": b"GET",
        "url": b"/api/x?q=\xe9",
        "host": b"app.example.com",
        "status": 200,
        "nbytes": 1234,
        "latency_ms": 12.345,
        "request_id": b"req-1",
        "deployment": b"dep-1",
    }
    fields.update(overrides)
    log.write(**fields)  # type: ignore[arg-type]


def test_one_json_line_with_the_fields() -> None:
    out = io.StringIO()
    log = AccessLog(1.0, out, clock=lambda: NOW)
    write_one(log)

    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert orjson.loads(text) == {
        "ts": "2024-05-01T12:34:56.789Z",
        "peer": "10.0.0.7",
        "method": "GET",
        "url": "/api/x?q=é",  # latin-1: every byte maps to one character, nothing is lost
        "host": "app.example.com",
        "status": 200,
        "bytes": 1234,
        "latency_ms": 12.3,
        "request_id": "req-1",
        "deployment": "dep-1",
    }


def test_missing_host_and_deployment_are_null_and_lines_accumulate() -> None:
    out = io.StringIO()
    t = [NOW]
    log = AccessLog(1.0, out, clock=lambda: t[0])
    write_one(log, host=None, deployment=None, status=404)
    t[0] = NOW + 1.0005  # next second, 0.5 ms in
    write_one(log)

    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["host"] is None and lines[0]["deployment"] is None
    assert lines[0]["status"] == 404
    assert lines[1]["ts"] == "2024-05-01T12:34:57.789Z"


def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_one(AccessLog(1.0, clock=lambda: NOW))
    assert orjson.loads(capsys.readouterr().out)["request_id"] == "req-1"


def test_a_closed_stream_never_raises() -> None:
    out = io.StringIO()
    log = AccessLog(1.0, out)
    out.close()
    write_one(log)
    assert log.errors == 1
    assert "errors=1" in repr(log)


def test_sampling_with_a_seeded_rng() -> None:
    log = AccessLog(0.25, io.StringIO(), random.Random(42))
    picks = [log.sampled() for _ in range(10_000)]
    expected_rng = random.Random(42)
    assert picks == [expected_rng.random() < 0.25 for _ in range(10_000)]  # deterministic
    assert 2300 < sum(picks) < 2700

    assert all(AccessLog(1.0, rng=random.Random(1)).sampled() for _ in range(1000))
    assert not any(AccessLog(0.0, rng=random.Random(1)).sampled() for _ in range(1000))


def test_sample_out_of_range_is_refused() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            AccessLog(bad)
