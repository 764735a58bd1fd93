"""The chaos run, shortened (tests/support/chaos.py; the full run is benchmarks/chaos.py): the
production layout on loopback under load while the Redis primary, the leader admin, a gateway
and then all of Redis are killed in turn. Asserts the goals; prints the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import LABELS, SHORT, run_chaos
from tests.support.pg import PG_ERRORS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]


def test_chaos_short(tmp_path: Path) -> None:
    try:
        report = run_chaos(tmp_path, SHORT)
    except PG_ERRORS as exc:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc!r}", pytrace=False)
    print("\n" + report.markdown())
    # Known hosts never fail: the killed gateway's in-flight requests are retried on the other.
    assert not report.failed, report.failed[:10]
    assert report.retried, "nothing was retried: was g1 really killed under load?"
    # The lease hands over within the contract (TTL 3 s; the bound leaves 2 s of margin).
    assert report.handover_seconds is not None and report.handover_seconds <= 5.0
    # Steady state: a change is visible at every gateway well within one retry period (5 s),
    # also when the non-holder admin committed it: the holder was poked.
    steady = report.delays(report.phases[0])
    assert steady and max(steady) < 1.0, steady
    assert not report.unpublished, report.unpublished
    assert report.convergence.ok, report.convergence.detail
    by_label = {u.label: u for u in report.usage}
    assert set(by_label) == set(LABELS)
    # No request counted twice; none lost but g1's last unflushed batch when it was killed.
    assert all(u.double == 0 and u.ok for u in report.usage), report.usage
