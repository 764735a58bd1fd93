"""The usage ledger: cumulative per-worker totals, staged, committed only once written."""

from __future__ import annotations

import logging

import pytest

from gateway.usage import USAGE_METER, Staged, UsageLedger, previous_month, usage_field

T0 = 1_700_000_000.0


def values(staged: Staged) -> dict[tuple[str, str], int]:
    return {(space, month): value for space, month, value in staged.writes}


def test_previous_month_and_field_names() -> None:
    assert previous_month("202403") == "202402"
    assert previous_month("202401") == "202312"
    assert usage_field("abc") == f"{USAGE_METER}:abc" == "wfp_requests:abc"
    ledger = UsageLedger(writer="w")
    assert ledger.field == "wfp_requests:w"
    assert len(UsageLedger().writer) == 12 and UsageLedger().writer != UsageLedger().writer


def test_staged_values_count_only_once_committed() -> None:
    ledger = UsageLedger(writer="w")
    first = ledger.stage({"a": 3, "b": 0}, "202402", T0)
    assert values(first) == {("a", "202402"): 3}
    assert ledger.total("a", "202402") == 0  # not written yet
    # The write failed: the counts come back with the next batch and are staged again.
    again = ledger.stage({"a": 3 + 2}, "202402", T0 + 1)
    assert values(again) == {("a", "202402"): 5}
    ledger.commit(again)
    assert ledger.total("a", "202402") == 5
    ledger.commit(again)  # committing twice changes nothing
    assert ledger.total("a", "202402") == 5
    assert "entries=1" in repr(ledger)


def test_recent_entries_are_reasserted_then_only_changed_ones() -> None:
    ledger = UsageLedger(writer="w", reassert_seconds=30)
    ledger.commit(ledger.stage({"a": 1, "b": 1}, "202402", T0))
    assert values(ledger.stage({}, "202402", T0 + 30)) == {("a", "202402"): 1, ("b", "202402"): 1}
    ledger.commit(ledger.stage({"a": 1}, "202402", T0 + 31))
    assert values(ledger.stage({}, "202402", T0 + 40)) == {("a", "202402"): 2}
    assert values(ledger.stage({}, "202402", T0 + 62)) == {}


def test_lost_reasserts_everything_until_a_full_write_is_committed() -> None:
    ledger = UsageLedger(writer="w", reassert_seconds=0)
    ledger.commit(ledger.stage({"a": 1, "b": 2}, "202402", T0))
    ledger.lost()
    assert ledger.is_lost
    full = ledger.stage({"a": 1}, "202402", T0 + 100)
    assert full.full and values(full) == {("a", "202402"): 2, ("b", "202402"): 2}
    assert ledger.is_lost  # not written yet
    ledger.commit(full)
    assert not ledger.is_lost
    assert values(ledger.stage({}, "202402", T0 + 200)) == {}


def test_months_before_the_previous_one_are_forgotten() -> None:
    ledger = UsageLedger(writer="w", reassert_seconds=0)
    ledger.commit(ledger.stage({"a": 1}, "202401", T0))
    ledger.commit(ledger.stage({"a": 2}, "202402", T0))
    ledger.lost()
    staged = ledger.stage({"a": 1}, "202403", T0)
    assert values(staged) == {("a", "202403"): 1, ("a", "202402"): 2}
    assert ledger.total("a", "202401") == 0


def test_a_full_ledger_rotates_its_writer_but_not_after_an_unknown_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = UsageLedger(writer="w", max_entries=2)
    ledger.commit(ledger.stage({"a": 1, "b": 1}, "202402", T0))
    ledger.stage({"c": 1}, "202402", T0)  # would overflow, but rotates: never committed
    assert ledger.writer != "w" and ledger.rotations == 1
    # The previous stage's outcome is unknown (it may have landed): no second rotation now,
    # or its counts, staged again, would be counted under two writer ids.
    second = ledger.writer
    staged = ledger.stage({"c": 1, "d": 1, "e": 1}, "202402", T0)
    assert ledger.writer == second and staged.writer == second
    ledger.commit(staged)
    assert len(ledger.entries) == 3  # over the bound by one batch at most
    with caplog.at_level(logging.WARNING, logger="turnout.gateway.usage"):
        rotated = ledger.stage({"f": 1}, "202402", T0)
    assert ledger.writer != second and values(rotated) == {("f", "202402"): 1}
    assert "rotated" in caplog.text
    stale = rotated
    ledger.commit(stale)
    old = ledger.writer
    ledger.stage({"g": 1, "h": 1}, "202402", T0)  # rotates again
    ledger.commit(stale)  # a staged value of an older writer is ignored
    assert ledger.writer != old and ledger.total("f", "202402") == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        UsageLedger(max_entries=0)
