"""Faults of the call samples: restarts, duplicate instance ids, counters that go down,
garbage in a snapshot's counters (it must not reach the workflow), many samples."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.chaos.journal import MAX_CALL_SAMPLES, MAX_TRACKED_COUNTERS, add_call_sample
from antifragile.fleet_health import target_calls
from antifragile.models.chaos import ChaosJournal
from antifragile.models.chaos_calls import InstanceCalls
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BEFORE = T0.timestamp() - 3600  # a process counting since before the experiment


def journal() -> ChaosJournal:
    scenario = ChaosScenario(name="x", chaos_type=ChaosType.ERROR, target="db", error_rate=1.0)
    return ChaosJournal.model_construct(
        experiment_id="e", scenario=scenario, calls=[], last_calls=[], fault_latency=[]
    )


def ic(instance: str, calls: int, failures: int = 0, since: float = BEFORE) -> InstanceCalls:
    return InstanceCalls(
        instance=instance, dependency="db", since=since, calls=calls, failures=failures
    )


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_two_processes_sharing_an_instance_id_count_only_their_own_increases() -> None:
    # Both publish af:health:a; a check sees whichever wrote last.
    j = journal()
    add_call_sample(j, [ic("a", 1000)], "db", at(0))
    s = add_call_sample(j, [ic("a", 5000, since=BEFORE + 1)], "db", at(1))
    assert s is not None and s.ok == 0  # the other process, running before: base only
    s = add_call_sample(j, [ic("a", 1010)], "db", at(2))
    assert s is not None and s.ok == 10
    s = add_call_sample(j, [ic("a", 5020, since=BEFORE + 1)], "db", at(3))
    assert s is not None and s.ok == 30


def test_an_instance_missing_from_one_check_resumes_from_its_last_values() -> None:
    j = journal()
    add_call_sample(j, [ic("a", 100), ic("b", 10)], "db", at(0))
    add_call_sample(j, [ic("b", 11)], "db", at(1))  # a's snapshot expired for a moment
    s = add_call_sample(j, [ic("a", 150), ic("b", 12)], "db", at(2))
    assert s is not None and s.ok == 52 and s.instances == 2


def test_a_restart_between_two_checks_counts_the_new_process_from_zero() -> None:
    j = journal()
    add_call_sample(j, [ic("a", 100)], "db", at(0))
    s = add_call_sample(j, [ic("a", 7, 1, since=at(0.5).timestamp())], "db", at(1))
    assert s is not None and (s.ok, s.failed) == (6, 1)
    s = add_call_sample(j, [ic("a", 9, 1, since=at(0.5).timestamp())], "db", at(2))
    assert s is not None and (s.ok, s.failed) == (8, 1)


def test_counters_that_go_down_without_a_restart_add_nothing_and_rebase() -> None:
    j = journal()
    add_call_sample(j, [ic("a", 1000)], "db", at(0))
    s = add_call_sample(j, [ic("a", 3)], "db", at(1))
    assert s is not None and s.ok == 0  # before: 3 calls counted as new (a "reset")
    s = add_call_sample(j, [ic("a", 5)], "db", at(2))
    assert s is not None and s.ok == 2


def test_the_same_counters_twice_in_one_check_count_once() -> None:
    j = journal()
    add_call_sample(j, [ic("a", 10)], "db", at(0))
    s = add_call_sample(j, [ic("a", 20), ic("a", 20)], "db", at(1))
    assert s is not None and s.ok == 10 and s.instances == 1


def test_remembered_counters_are_bounded() -> None:
    j = journal()
    for n in range(MAX_TRACKED_COUNTERS * 3):
        add_call_sample(j, [ic(f"i{n}", 1)], "db", at(n))
    assert len(j.last_calls) <= MAX_TRACKED_COUNTERS


def snapshot(cumulative: object, instance: object = "a") -> dict[str, object]:
    return {"instance": instance, "traffic": {"dependencies": {"db": {"cumulative": cumulative}}}}


GOOD = {"since": BEFORE, "calls": 3, "failures": 1, "refused": 0, "latency": {"counts": [3]}}


@pytest.mark.parametrize(
    "garbage",
    [
        {"since": math.nan},
        {"since": math.inf},
        {"since": "NaN"},
        {"calls": -1},
        {"calls": "many"},
        {"calls": 10**30},
        {"failures": 4},  # more failures than calls
        {"refused": -5},
        {"latency": {"counts": [1] * 100_000}},
        {"latency": {"counts": [-1]}},
        {"latency": {"counts": [math.nan]}},
    ],
)
def test_garbage_counters_in_a_snapshot_are_left_out(garbage: dict[str, object]) -> None:
    assert len(target_calls(snapshot(GOOD), ["db"])) == 1
    assert target_calls(snapshot({**GOOD, **garbage}), ["db"]) == []


def test_a_snapshot_read_from_json_with_nan_never_reaches_the_workflow() -> None:
    # json.loads accepts NaN; before, the activity result carried since=null and the
    # workflow could not decode it (a workflow task failure on every health check).
    doc = json.loads(
        '{"instance": "a", "traffic": {"dependencies": {"db": {"cumulative":'
        ' {"since": NaN, "calls": 1, "failures": 0}}}}}'
    )
    calls = target_calls(doc, ["db"]) + target_calls(snapshot(GOOD), ["db"])
    conv = pydantic_data_converter.payload_converter
    back = conv.from_payloads(conv.to_payloads([calls]), [list[InstanceCalls]])
    assert back == [calls] and len(calls) == 1


def test_an_instance_calls_model_refuses_nan_and_inconsistent_counts() -> None:
    with pytest.raises(ValidationError):
        InstanceCalls(instance="a", dependency="db", since=math.nan, calls=1, failures=0)
    with pytest.raises(ValidationError):
        InstanceCalls(instance="a", dependency="db", since=0.0, calls=1, failures=2)


def test_thousands_of_samples_keep_the_counts_and_the_journal_small() -> None:
    j = journal()
    instances = [f"inst-{k:03d}" for k in range(20)]
    latency = [1] * 81
    for n in range(20_000):
        calls = [
            InstanceCalls(
                instance=i,
                dependency="db",
                since=BEFORE,
                calls=n * 3,
                failures=n,
                latency=[x * n * 3 // 81 for x in latency],
            )
            for i in instances
        ]
        add_call_sample(j, calls, "db", at(n))
    assert len(j.calls) <= MAX_CALL_SAMPLES
    last = j.calls[-1]
    assert (last.ok, last.failed) == (20 * 2 * 19_999, 20 * 19_999)
    okays = [s.ok for s in j.calls]
    assert okays == sorted(okays) and j.calls[0].at == at(0)
    size = len(j.model_dump_json())
    assert size < 256 * 1024, size  # well under Temporal's 2 MB payload limit
