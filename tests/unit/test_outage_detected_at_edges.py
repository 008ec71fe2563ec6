"""``detected_at`` at the edges: far in the past, in the future, naive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflows._learning_feed import MAX_DETECTION_LEAD, outage_started_at

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_detected_at_far_in_the_past_is_not_believed() -> None:
    # Before, 1970 was taken: a 56-year outage in the ledger.
    assert outage_started_at(T0, [], datetime(1970, 1, 1, tzinfo=UTC)) == T0
    assert outage_started_at(T0, [], T0 - MAX_DETECTION_LEAD - timedelta(seconds=1)) == T0
    assert outage_started_at(T0, [], T0 - MAX_DETECTION_LEAD) == T0 - MAX_DETECTION_LEAD


def test_a_detected_at_in_the_future_or_naive_far_past_is_not_believed() -> None:
    assert outage_started_at(T0, [], T0 + timedelta(days=365)) == T0
    assert outage_started_at(T0, [], datetime(1970, 1, 1)) == T0
    assert outage_started_at(T0, [], (T0 - timedelta(seconds=3)).replace(tzinfo=None)) == (
        T0 - timedelta(seconds=3)
    )
