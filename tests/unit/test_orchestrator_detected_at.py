"""A merged recovery request keeps the earliest ``detected_at`` (when the outage began)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from antifragile.models.orchestrator import OrchestratorLimits
from antifragile.models.recovery import RecoveryRequest
from antifragile.orchestrator.logic import OrchestratorCore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def req(detected_at: datetime | None) -> RecoveryRequest:
    return RecoveryRequest(service="db", probe="tcp://127.0.0.1:9", detected_at=detected_at)


def core() -> OrchestratorCore:
    limits = {"aging_interval_s": 0, "max_admissions_per_minute": 10_000, "max_concurrent": 1}
    return OrchestratorCore(limits=OrchestratorLimits.model_validate(limits))


def kept(c: OrchestratorCore) -> datetime | None:
    return c.queue.get("db").request.detected_at  # type: ignore[union-attr]


def test_a_later_request_whose_breaker_opened_earlier_moves_detected_at_back() -> None:
    c = core()
    c.enqueue(req(T0 - timedelta(seconds=2)), T0)
    c.enqueue(req(T0 - timedelta(seconds=9)), T0 + timedelta(seconds=1))
    assert kept(c) == T0 - timedelta(seconds=9)
    c.enqueue(req(T0 - timedelta(seconds=5)), T0 + timedelta(seconds=2))
    c.enqueue(req(None), T0 + timedelta(seconds=3))
    assert kept(c) == T0 - timedelta(seconds=9)


def test_a_first_request_without_detected_at_takes_a_merged_ones() -> None:
    c = core()
    c.enqueue(req(None), T0)
    c.enqueue(req(T0 - timedelta(seconds=3)), T0)
    assert kept(c) == T0 - timedelta(seconds=3)


def test_naive_and_aware_times_are_compared_as_utc() -> None:
    c = core()
    c.enqueue(req(T0 - timedelta(seconds=2)), T0)
    c.enqueue(req((T0 - timedelta(seconds=4)).replace(tzinfo=None)), T0)
    assert kept(c) == T0 - timedelta(seconds=4)
    c.enqueue(req((T0 - timedelta(seconds=1)).replace(tzinfo=None)), T0)
    assert kept(c) == T0 - timedelta(seconds=4)
