"""Pure parts of the traffic harvester: coalescing, completeness, wake-up times, faults."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from antifragile.models.learning import LatencyHistogram, TrafficObservation
from workers.traffic_harvest import coalesce, harvestable, next_wake, windows_to_send

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0 = START.timestamp()


def window(
    instance: str,
    calls: int,
    failures: int = 0,
    counts: list[int] | None = None,
    dependency: str = "db",
    start: datetime = START,
) -> TrafficObservation:
    return TrafficObservation(
        dependency=dependency,
        source_id=f"{instance}/{start.isoformat()}",
        window_start=start,
        window_s=60.0,
        calls=calls,
        failures=failures,
        breaker_openings=1 if failures else 0,
        latency=LatencyHistogram(counts=counts if counts is not None else [calls]),
    )


def test_coalesce_sums_and_merges_one_per_dependency_and_window() -> None:
    out = coalesce(
        [window("a", 3, 1, [1, 2]), window("b", 4, 0, [0, 0, 4]), window("c", 2, dependency="x")]
    )
    assert [(o.dependency, o.calls, o.failures, o.breaker_openings) for o in out] == [
        ("db", 7, 1, 1),
        ("x", 2, 0, 0),
    ]
    assert out[0].latency.counts == [1, 2, 4]
    assert out[0].source_id == START.isoformat()


def test_harvestable_only_between_end_plus_grace_and_next_end() -> None:
    o = window("a", 1)
    assert not harvestable(o, T0 + 60 + 9.999, 10)
    assert harvestable(o, T0 + 60 + 10, 10)
    assert harvestable(o, T0 + 119.999, 10)
    assert not harvestable(o, T0 + 120, 10)


def test_next_wake_is_the_next_window_end_plus_grace() -> None:
    assert next_wake(T0, 60, 10) == T0 + 10
    assert next_wake(T0 + 10, 60, 10) == T0 + 70
    assert next_wake(T0 + 5, 60, 10) == T0 + 10


def snapshot(instance: str, calls: int, fault: bool = False) -> dict[str, Any]:
    doc = window(instance, calls).model_dump(mode="json")
    under = dict(doc, kind="under_fault", experiments=["e1"]) if fault else None
    return {
        "instance": instance,
        "traffic": {
            "window_s": 60.0,
            "dependencies": {"db": {"previous": doc, "previous_under_fault": under}},
        },
    }


def test_windows_to_send_leaves_out_a_window_any_instance_had_a_fault_in() -> None:
    now = T0 + 75
    sent, faulted, _ = windows_to_send([snapshot("a", 3), snapshot("b", 4)], now, 10)
    assert [o.calls for o in sent] == [7] and faulted == 0
    sent, faulted, _ = windows_to_send([snapshot("a", 3), snapshot("b", 4, fault=True)], now, 10)
    assert sent == [] and faulted == 1
    assert windows_to_send([snapshot("a", 3)], T0 + 65, 10) == ([], 0, 0)  # grace not over


@pytest.mark.parametrize(("window_s", "grace_s"), [(0, 0), (60, 60), (60, -1)])
def test_bad_window_or_grace_names_the_field(window_s: float, grace_s: float) -> None:
    from workers.traffic_harvest import TrafficHarvester

    with pytest.raises(ValueError, match=r"window_s|grace_s"):
        TrafficHarvester(None, "redis://x", "q", window_s=window_s, grace_s=grace_s)  # type: ignore[arg-type]


def _snap(instance: str, calls: int, window_s: float, start: datetime = START) -> dict[str, Any]:
    doc = window(instance, calls, start=start).model_dump(mode="json")
    doc["window_s"] = window_s
    return {
        "instance": instance,
        "traffic": {"window_s": window_s, "dependencies": {"db": {"previous": doc}}},
    }


def test_instances_that_disagree_on_the_window_length_are_never_mixed() -> None:
    """An instance with 50 s windows in a 60 s fleet: its window is left out and counted.

    Before, both windows went out with one source id (the start): the ledger kept whichever
    came first and the other's calls were lost silently; windows of other lengths also
    overlapped the fleet's (calls counted in two baseline windows).
    """
    now = T0 + 75  # both complete: 60 s one in [70, 120), 50 s one in [60, 100)
    harvest = windows_to_send([_snap("a", 3, 60.0), _snap("b", 4, 50.0)], now, 10, window_s=60.0)
    assert [(o.calls, o.window_s) for o in harvest.windows] == [(3, 60.0)]
    assert harvest.other_length == 1
    assert len({o.source_id for o in harvest.windows}) == len(harvest.windows)
