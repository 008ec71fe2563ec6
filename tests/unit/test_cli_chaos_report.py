"""How ``chaos report`` prints a report (no server: the rendering alone)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from antifragile.cli._render.chaos import console, render_report
from antifragile.models.chaos import ChaosOutcome, ChaosReport, ChaosType, CleanupRecord

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def _report(cleanup: CleanupRecord, active: float) -> ChaosReport:
    return ChaosReport(
        experiment_id="chaos-x-1",
        name="x",
        chaos_type=ChaosType.LATENCY,
        target="demo-db",
        blast_radius=["demo-db"],
        outcome=ChaosOutcome.STOPPED,
        reason="terminated: operator",
        requested_duration_s=20,
        effective_duration_s=20,
        started_at=T0,
        injected_at=T0,
        ended_at=T0 + timedelta(seconds=5),
        cleanup=cleanup,
        fault_active_s=active,
        rebuilt=True,
    )


def _text(report: ChaosReport) -> str:
    with console.capture() as out:
        render_report(report)
    return out.get()


def test_an_unconfirmed_expiry_is_shown_as_the_bound_it_is() -> None:
    """Right after a terminate the lease is still in Redis: its expiry is a projection."""
    pending = CleanupRecord(attempted=True, method="expired", confirmed=None)
    assert "at most 20.1s (lease TTL)" in _text(_report(pending, 20.1))
    unreachable = CleanupRecord(attempted=True, method="expired", confirmed=False)
    assert "at most 20.1s (lease TTL)" in _text(_report(unreachable, 20.1))


def test_a_confirmed_removal_or_expiry_is_the_fault_s_real_life() -> None:
    for method in ("removed", "expired"):
        done = CleanupRecord(attempted=True, method=method, confirmed=True)
        text = _text(_report(done, 15.3))
        assert "15.3s" in text and "at most" not in text


def test_a_failed_injection_is_its_own_line_and_said_once() -> None:
    cleanup = CleanupRecord(
        attempted=True,
        method="injection_failed",
        confirmed=True,
        detail="nothing to remove: the injection wrote no lease",
    )
    report = _report(cleanup, 0.0).model_copy(
        update={
            "outcome": ChaosOutcome.FAILED,
            "reason": "injection failed: no live process guards demo-dbb",
            "injection_failed": "no live process guards demo-dbb",
            "injected_at": None,
            "removed_at": T0 + timedelta(seconds=1),
            "fault_active_s": None,
        }
    )
    text = _text(report)
    assert re.search(r"^injected / removed +- / -", text, re.M), text
    assert re.search(r"^injection +failed: no live process guards demo-dbb", text, re.M), text
    assert text.count("no live process guards demo-dbb") == 2  # outcome and injection
