"""Pure orchestrator decisions: queue order, merge, aging, rate limit, retry budget, carry."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from antifragile.constants import INTAKE_SHARDS, intake_shard, intake_workflow_id
from antifragile.models.orchestrator import (
    OrchestratorLimits,
    QueueView,
    RecoveryOutcome,
    RequestState,
    RunningView,
)
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest, RecoveryStrategy
from antifragile.orchestrator.explain import (
    admission_order_violations,
    ignored_settings,
    why_waiting,
)
from antifragile.orchestrator.logic import (
    PACK_THRESHOLD,
    OrchestratorCore,
    pack_input,
    unpack_input,
)
from antifragile.orchestrator.queue import QueueError, effective_priority, queue_rank, to_ms

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def req(service: str, priority: int = 1) -> RecoveryRequest:
    return RecoveryRequest(service=service, priority=priority, probe="tcp://127.0.0.1:9")


def core(**limits: object) -> OrchestratorCore:
    base: dict[str, object] = {"aging_interval_s": 0, "max_admissions_per_minute": 10_000}
    base.update(limits)
    return OrchestratorCore(limits=OrchestratorLimits.model_validate(base))


def admitted(c: OrchestratorCore, now: datetime) -> list[str]:
    return [e.service for e in c.next_admissions(now).admit]


def test_lower_priority_number_goes_first_then_first_come_first_served() -> None:
    c = core(max_concurrent=10)
    for name, priority in [("a", 5), ("b", 1), ("c", 3), ("d", 1), ("e", 5)]:
        c.enqueue(req(name, priority), T0)
    assert admitted(c, T0) == ["b", "d", "c", "a", "e"]


def test_enqueue_reports_the_position_in_admission_order() -> None:
    c = core()
    assert c.enqueue(req("a", 5), T0).position == 1
    assert c.enqueue(req("b", 1), T0).position == 1
    assert c.enqueue(req("c", 3), T0).position == 2
    assert c.queue.position("a") == 3


def test_a_duplicate_is_merged_keeping_the_more_urgent_priority_and_its_arrival() -> None:
    c = core()
    c.enqueue(req("a", 5), T0)
    c.enqueue(req("b", 2), T0)
    merged = c.enqueue(req("a", 2), at(1))
    assert (merged.state, merged.priority, merged.position) == (RequestState.MERGED, 2, 1)
    assert c.enqueue(req("a", 9), at(2)).priority == 2
    assert len(c.queue) == 2 and c.queue.get("a").merges == 2  # type: ignore[union-attr]


def test_a_request_for_a_running_service_is_not_queued_again() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    assert admitted(c, T0) == ["a"]
    result = c.enqueue(req("a", 0), at(1))
    assert result.state is RequestState.RUNNING and len(c.queue) == 0


def test_never_more_admitted_than_the_free_slots() -> None:
    c = core(max_concurrent=2)
    for name in "abcd":
        c.enqueue(req(name), T0)
    assert admitted(c, T0) == ["a", "b"]
    assert admitted(c, at(1)) == []
    assert c.finish("a", RecoveryOutcome.SUCCEEDED, at(2))
    assert admitted(c, at(2)) == ["c"]


def test_a_slot_is_returned_for_every_kind_of_end_but_only_once() -> None:
    c = core(max_concurrent=1)
    for outcome in RecoveryOutcome:
        c.enqueue(req(outcome.value.replace("_", "-")), T0)
    for i, outcome in enumerate(RecoveryOutcome):
        [entry] = c.next_admissions(at(i)).admit
        assert c.finish(entry.service, outcome, at(i))
        assert not c.finish(entry.service, outcome, at(i)), "a duplicate report frees nothing"
    assert len(c.running) == 0


def test_a_stale_report_about_an_earlier_holder_keeps_the_new_holders_slot() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    c.next_admissions(T0)
    first = c.running["a"].index
    c.finish("a", RecoveryOutcome.SUCCEEDED, at(1), first)
    c.enqueue(req("a"), at(2))
    c.next_admissions(at(2))
    assert not c.finish("a", RecoveryOutcome.TERMINATED, at(3), first)
    assert "a" in c.running


def test_reprioritise_moves_a_request_and_remove_drops_it() -> None:
    c = core()
    for name in "abc":
        c.enqueue(req(name, 5), T0)
    assert c.reprioritise("c", 1).position == 1
    assert c.remove("a").waiting == 2
    assert [e.service for e in c.queue.ordered()] == ["c", "b"]
    with pytest.raises(QueueError, match="not in the recovery queue"):
        c.remove("zzz")


def test_a_running_recovery_cannot_be_reprioritised_or_removed_from_the_queue() -> None:
    c = core()
    c.enqueue(req("a"), T0)
    c.next_admissions(T0)
    with pytest.raises(QueueError, match="already running"):
        c.reprioritise("a", 0)


def test_a_full_queue_refuses_new_services_but_still_merges() -> None:
    c = core(max_waiting=2)
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    with pytest.raises(QueueError, match="full"):
        c.enqueue(req("c"), T0)
    assert c.enqueue(req("a", 0), T0).state is RequestState.MERGED


def test_aging_makes_a_long_wait_worth_priority_levels() -> None:
    c = core(max_concurrent=10, aging_interval_s=60)
    c.enqueue(req("old", 5), T0)
    c.enqueue(req("new", 1), at(4 * 60 + 1))  # old has waited just over 4 levels
    assert admitted(c, at(4 * 60 + 1)) == ["old", "new"]


def test_requests_arriving_within_one_aging_interval_keep_strict_priority() -> None:
    c = core(max_concurrent=10, aging_interval_s=600)
    c.enqueue(req("low", 2), T0)
    c.enqueue(req("high", 1), at(599))
    assert admitted(c, at(600)) == ["high", "low"]


def test_effective_priority_falls_by_one_per_aging_interval() -> None:
    assert effective_priority(5, to_ms(T0), to_ms(at(120)), 60) == pytest.approx(3.0)
    assert effective_priority(5, to_ms(T0), to_ms(at(120)), 0) == 5.0
    assert queue_rank(3, 1000, 0) == 3


def test_the_rate_limit_admits_at_most_n_per_sliding_minute() -> None:
    c = core(max_concurrent=100, max_admissions_per_minute=3)
    for i in range(7):
        c.enqueue(req(f"s{i}"), T0)
    first = c.next_admissions(T0)
    assert len(first.admit) == 3
    assert "admission rate limit" in first.reason
    assert first.wake_at_ms == to_ms(at(60))
    assert admitted(c, at(59)) == []
    assert admitted(c, at(60)) == ["s3", "s4", "s5"]
    assert admitted(c, at(120)) == ["s6"]


def test_the_retry_budget_pauses_admissions_and_resumes_after_the_cooldown() -> None:
    c = core(
        max_concurrent=100,
        retry_budget=0.25,
        budget_min_samples=4,
        budget_window_s=300,
        budget_cooldown_s=60,
    )
    for i in range(4):
        c.enqueue(req(f"f{i}"), T0)
    c.next_admissions(T0)
    c.finish("f0", RecoveryOutcome.SUCCEEDED, at(1))
    c.finish("f1", RecoveryOutcome.SUCCEEDED, at(1))
    c.finish("f2", RecoveryOutcome.FAILED, at(2))
    c.finish("f3", RecoveryOutcome.FAILED, at(3))
    c.enqueue(req("next"), at(4))
    decision = c.next_admissions(at(4))
    assert decision.paused and decision.admit == []
    assert "retry budget exceeded: 2 of 4" in decision.reason
    assert decision.wake_at_ms == to_ms(at(64))
    assert admitted(c, at(63)) == []
    # After the cool-down the old failures no longer count.
    assert admitted(c, at(64)) == ["next"]
    assert not c.paused


def test_too_few_samples_never_pause() -> None:
    c = core(max_concurrent=10, budget_min_samples=10)
    c.enqueue(req("f"), T0)
    c.next_admissions(T0)
    c.finish("f", RecoveryOutcome.FAILED, at(1))
    c.enqueue(req("g"), at(2))
    assert admitted(c, at(2)) == ["g"]


def test_failures_older_than_the_window_do_not_count() -> None:
    c = core(max_concurrent=10, budget_min_samples=2, retry_budget=0.5, budget_window_s=60)
    for name in "ab":
        c.enqueue(req(name), T0)
    c.next_admissions(T0)
    c.finish("a", RecoveryOutcome.FAILED, at(1))
    c.finish("b", RecoveryOutcome.FAILED, at(1))
    c.enqueue(req("c"), at(100))
    assert admitted(c, at(100)) == ["c"]


def test_cancel_and_terminate_are_not_retry_budget_samples() -> None:
    c = core(max_concurrent=10, budget_min_samples=1, retry_budget=0.1)
    for name in "ab":
        c.enqueue(req(name), T0)
    c.next_admissions(T0)
    c.finish("a", RecoveryOutcome.CANCELLED, at(1))
    c.finish("b", RecoveryOutcome.TERMINATED, at(1))
    c.enqueue(req("c"), at(2))
    assert admitted(c, at(2)) == ["c"]


def test_the_carry_round_trips_queue_running_and_windows() -> None:
    c = core(max_concurrent=2, max_admissions_per_minute=5)
    for i in range(5):
        c.enqueue(req(f"s{i}", 5 - i), at(i))
    c.next_admissions(at(10))
    c.finish("s4", RecoveryOutcome.FAILED, at(11))
    restored = OrchestratorCore.restore(unpack_input(pack_input(c.carry(), c.limits)), c.limits)
    assert [e.service for e in restored.queue.ordered()] == [e.service for e in c.queue.ordered()]
    assert restored.running.keys() == c.running.keys()
    assert list(restored.admission_times_ms) == list(c.admission_times_ms)
    assert restored.budget_failed == 1 and restored.next_seq == c.next_seq


def test_a_long_queue_is_carried_compressed_and_restored_intact() -> None:
    c = core()
    for i in range(PACK_THRESHOLD * 5):
        c.enqueue(req(f"svc-{i:05d}", i % 7), T0)
    packed = pack_input(c.carry(), c.limits)
    assert packed.carry is None and packed.packed_carry
    assert len(packed.packed_carry) < len(c.carry().model_dump_json()) / 5
    restored = OrchestratorCore.restore(unpack_input(packed), c.limits)
    assert [e.service for e in restored.queue.ordered()] == [e.service for e in c.queue.ordered()]


def test_audit_finds_an_admission_that_skipped_a_better_waiting_request() -> None:
    c = core(max_concurrent=1)
    for name, priority in [("a", 1), ("b", 3), ("c", 2)]:
        c.enqueue(req(name, priority), T0)
    c.next_admissions(T0)
    for _ in range(2):
        c.finish(c.recent_admissions[-1].service, RecoveryOutcome.SUCCEEDED, T0)
        c.next_admissions(T0)
    records = list(c.recent_admissions)
    assert [r.service for r in records] == ["a", "c", "b"]
    assert admission_order_violations(records) == 0
    assert admission_order_violations([records[0], records[2], records[1]]) == 1


def test_ten_thousand_queued_stay_fast_and_ordered() -> None:
    rng = random.Random(7)
    c = core(max_concurrent=50, aging_interval_s=600)
    started = time.perf_counter()
    for i in range(10_000):
        c.enqueue(req(f"svc-{i:05d}", rng.randint(0, 9)), at(i / 100))
    for i in range(0, 10_000, 7):  # merges and reprioritisations on the way
        c.enqueue(req(f"svc-{i:05d}", 0), at(100))
    admitted_total = 0
    now = at(100)
    while len(c.queue) or c.running:
        for entry in c.next_admissions(now).admit:
            admitted_total += 1
            c.finish(entry.service, RecoveryOutcome.SUCCEEDED, now)
        now += timedelta(milliseconds=10)
    elapsed = time.perf_counter() - started
    assert admitted_total == 10_000
    assert admission_order_violations(list(c.recent_admissions)) == 0
    # Generous bound: this is O(n log n) work; quadratic would take minutes.
    assert elapsed < 20, f"{elapsed:.1f}s for 10,000 requests"


def test_a_service_always_goes_to_the_same_intake_shard_in_range() -> None:
    shards = [intake_shard(f"svc-{i}") for i in range(2_000)]
    assert all(0 <= s < INTAKE_SHARDS for s in shards)
    assert len(set(shards)) == INTAKE_SHARDS  # a fleet spreads over every intake
    assert max(shards.count(s) for s in set(shards)) < 2 * 2_000 / INTAKE_SHARDS
    # CRC-32, not Python's salted hash: the same in every process, for ever.
    assert intake_shard("payments-db") == 4
    assert intake_workflow_id("recovery-orchestrator", 7) == "recovery-orchestrator-intake-07"


# --- slots follow work, not waiting ---------------------------------------------------


def attempt_core(**limits: object) -> OrchestratorCore:
    c = core(**limits)
    c.count_attempts = True
    return c


def escalate(c: OrchestratorCore, service: str, now: datetime) -> bool:
    return c.recovery_waiting(service, f"recovery-{service}", "3 attempts failed", now)


def test_a_recovery_waiting_for_a_person_frees_its_slot_at_once() -> None:
    c = core(max_concurrent=2)
    for name in ["dead1", "dead2", "live1", "live2"]:
        c.enqueue(req(name), T0)
    assert admitted(c, T0) == ["dead1", "dead2"]
    assert escalate(c, "dead1", at(5)) and escalate(c, "dead2", at(6))
    assert sorted(c.awaiting) == ["dead1", "dead2"] and c.running == {}
    assert admitted(c, at(6)) == ["live1", "live2"]
    assert c.awaiting["dead1"].reason == "3 attempts failed"
    assert c.where("dead1").state == "awaiting_approval"


def test_a_repeated_waiting_report_frees_nothing_more() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    admitted(c, T0)
    assert escalate(c, "a", at(1))
    assert admitted(c, at(1)) == ["b"]
    assert not escalate(c, "a", at(2)), "a duplicate must not free b's slot"
    assert list(c.running) == ["b"]


def test_a_close_while_awaiting_approval_leaves_the_list_without_freeing_a_slot() -> None:
    c = core(max_concurrent=1)
    for name in ["a", "b", "c"]:
        c.enqueue(req(name), T0)
    admitted(c, T0)
    index = c.running["a"].index
    escalate(c, "a", at(1))
    assert admitted(c, at(1)) == ["b"]
    # It recovered by itself (or was rejected): the close is reported with its index.
    assert c.finish("a", RecoveryOutcome.SUCCEEDED, at(2), index)
    assert "a" not in c.awaiting and list(c.running) == ["b"]
    assert admitted(c, at(2)) == [], "b still holds the only slot"
    assert not c.finish("a", RecoveryOutcome.SUCCEEDED, at(3), index), "reported once"
    assert c.finished == {"succeeded": 1}


def test_an_approved_recovery_goes_ahead_of_later_requests_of_the_same_priority() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("old", 2), T0)
    admitted(c, T0)
    escalate(c, "old", at(1))
    for name in ["x", "y"]:
        c.enqueue(req(name, 2), at(2))
    c.enqueue(req("urgent", 1), at(2))
    assert admitted(c, at(2)) == ["urgent"]
    assert not c.recovery_resuming("old", "recovery-old", 2, at(3))
    assert [e.service for e in c.queue.ordered()] == ["old", "x", "y"]
    assert c.where("old").position == 1 and c.where("old").resumed
    c.finish("urgent", RecoveryOutcome.SUCCEEDED, at(4))
    decided = c.next_admissions(at(4))
    assert [e.service for e in decided.admit] == ["old"] and decided.admit[0].resumed
    running = c.running["old"]
    assert running.resumed and running.seq == 1 and running.index == 1, "keeps its identity"
    # Its original child reports its close under the original admission number.
    assert c.finish("old", RecoveryOutcome.SUCCEEDED, at(5), 1)
    assert admitted(c, at(5)) == ["x"]


def test_a_resumed_recovery_keeps_its_rank_with_aging_too() -> None:
    c = core(max_concurrent=1, aging_interval_s=600)
    c.enqueue(req("old", 3), T0)
    admitted(c, T0)
    escalate(c, "old", at(1))
    c.enqueue(req("later", 3), at(100))
    c.recovery_resuming("old", "recovery-old", 3, at(200))
    assert [e.service for e in c.queue.ordered()] == ["old", "later"]


def test_a_resumed_recovery_waits_for_a_slot_but_not_for_a_budget_pause_or_the_rate() -> None:
    c = attempt_core(
        max_concurrent=2, budget_min_samples=2, retry_budget=0.5, max_admissions_per_minute=2
    )
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    admitted(c, T0)
    escalate(c, "a", at(1))
    c.enqueue(req("new"), at(1))
    for _ in range(2):
        c.attempt_finished(False, at(1))
    decided = c.next_admissions(at(1))
    assert decided.paused and decided.admit == []
    c.recovery_resuming("a", "recovery-a", 1, at(2))
    decided = c.next_admissions(at(2))
    assert decided.paused and [e.service for e in decided.admit] == ["a"]
    assert "new" in c.queue, "new admissions stay paused"
    # Slots are a hard cap even for approved recoveries.
    c.enqueue(req("c"), at(2))
    c.finish("a", RecoveryOutcome.SUCCEEDED, at(3))
    escalate(c, "b", at(3))
    c.recovery_resuming("b", "recovery-b", 1, at(3))
    assert [e.service for e in c.next_admissions(at(3)).admit] == ["b"]


def test_resuming_while_still_holding_the_slot_is_granted_at_once() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    admitted(c, T0)
    assert c.recovery_resuming("a", "recovery-a", 1, at(1))
    assert list(c.running) == ["a"] and len(c.queue) == 0


def test_a_resumed_recovery_cannot_be_dropped_from_the_queue_but_can_be_reprioritised() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    admitted(c, T0)
    escalate(c, "a", at(1))
    admitted(c, at(1))
    c.recovery_resuming("a", "recovery-a", 1, at(2))
    with pytest.raises(QueueError, match="cancel it"):
        c.remove("a")
    assert c.reprioritise("a", 0).position == 1
    # It is cancelled meanwhile: its close takes it out of the queue.
    assert c.finish("a", RecoveryOutcome.CANCELLED, at(3), 1)
    assert len(c.queue) == 0


def test_a_request_for_a_service_awaiting_approval_joins_it_and_keeps_the_urgent_priority() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a", 4), T0)
    admitted(c, T0)
    escalate(c, "a", at(1))
    other = RecoveryRequest(
        service="a", priority=2, probe="tcp://127.0.0.1:9", strategy=RecoveryStrategy.IMMEDIATE
    )
    result = c.enqueue(other, at(2))
    assert result.state is RequestState.AWAITING_APPROVAL and result.priority == 2
    assert result.previous_priority == 4 and len(c.queue) == 0
    assert [(i.setting, i.requested, i.kept) for i in result.ignored] == [
        ("strategy", "immediate", "exponential_backoff")
    ]
    c.recovery_resuming("a", "recovery-a", 4, at(3))
    assert c.queue.get("a").priority == 2  # type: ignore[union-attr]


def test_an_unknown_recovery_waiting_for_a_person_is_listed_and_tracked() -> None:
    c = core()
    assert not escalate(c, "stray", T0)
    assert "stray" in c.awaiting and c.tracks("stray")
    c.recovery_resuming("stray", "recovery-stray", 3, at(1))
    entry = c.queue.get("stray")
    assert entry is not None and entry.resumed and entry.priority == 3
    assert [row[0] for row in c.tracked()] == ["stray"]


def test_the_carry_keeps_recoveries_awaiting_approval_and_resumed_ones() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    admitted(c, T0)
    escalate(c, "a", at(1))
    admitted(c, at(1))
    escalate(c, "b", at(2))
    c.recovery_resuming("b", "recovery-b", 1, at(3))
    restored = OrchestratorCore.restore(unpack_input(pack_input(c.carry(), c.limits)), c.limits)
    assert list(restored.awaiting) == ["a"]
    entry = restored.queue.get("b")
    assert entry is not None and entry.resumed and entry.resume_index == 2
    assert [e.service for e in restored.queue.resumed()] == ["b"]


# --- the retry budget counts attempts -------------------------------------------------


def test_failed_attempts_above_the_budget_pause_new_admissions_and_say_until_when() -> None:
    c = attempt_core(max_concurrent=10, retry_budget=0.5, budget_min_samples=4, budget_window_s=60)
    for i in range(4):
        c.attempt_finished(i == 0, at(i))  # 3 of 4 failed
    c.enqueue(req("a"), at(10))
    c.enqueue(req("b"), at(10))
    decided = c.next_admissions(at(10))
    assert decided.paused and [e.service for e in decided.admit] == ["a"], "one probe admission"
    # Leaving the window (a sample at t counts up to t + 60 s): at 60.001 s the success
    # of 0 s leaves; 3 of 3 failed, but fewer than the minimum of 4: the pause ends then.
    assert decided.wake_at_ms == to_ms(at(60)) + 1
    assert "3 of 4 attempts failed" in decided.reason
    assert "admitting one recovery at a time until 00:01:00 UTC" in decided.reason
    assert c.next_admissions(at(60)).paused
    assert [e.service for e in c.next_admissions(at(60.001)).admit] == ["b"]


def test_the_pause_lasts_until_enough_failures_leave_the_window() -> None:
    c = attempt_core(max_concurrent=10, retry_budget=0.5, budget_min_samples=2, budget_window_s=60)
    for i, ok in enumerate([True, False, False, False, True]):
        c.attempt_finished(ok, at(i))  # 3 of 5 failed
    c.enqueue(req("a"), at(10))
    # 0 s leaves: 3 of 4 (over); 1 s leaves: 2 of 3 (over); 2 s leaves: 1 of 2 (= 50%, within).
    assert c.next_admissions(at(10)).wake_at_ms == to_ms(at(62)) + 1
    assert c.next_admissions(at(62)).paused
    assert not c.next_admissions(at(62.001)).paused


def test_successes_bring_the_ratio_down_and_admissions_resume_before_the_window_ends() -> None:
    c = attempt_core(max_concurrent=10, retry_budget=0.5, budget_min_samples=2)
    c.attempt_finished(False, T0)
    c.attempt_finished(False, at(1))
    c.enqueue(req("a"), at(2))
    c.enqueue(req("b"), at(2))
    decided = c.next_admissions(at(2))
    assert decided.paused and [e.service for e in decided.admit] == ["a"]
    c.attempt_finished(True, at(3))
    decided = c.next_admissions(at(3))
    assert decided.paused and decided.admit == [], "2 of 3 is still above 50%"
    c.attempt_finished(True, at(4))
    decided = c.next_admissions(at(4))
    assert not decided.paused and [e.service for e in decided.admit] == ["b"]
    assert c.pause_reason == ""
    assert not c.running["a"].probe, "after the pause, a probe admission is an ordinary one"


def test_the_budget_threshold_is_compared_exactly() -> None:
    c = attempt_core(retry_budget=0.1, budget_min_samples=10)
    assert not c.over_budget(1, 10), "exactly 10% is within a 10% budget"
    assert c.over_budget(2, 19)
    assert not c.over_budget(9, 9 - 1), "fewer attempts than the minimum never pause"


def test_attempts_are_not_counted_by_runs_recorded_before_the_attempt_budget() -> None:
    c = core(max_concurrent=10, budget_min_samples=1, retry_budget=0.1)
    c.attempt_finished(False, T0)
    assert len(c.budget_samples) == 0
    c2 = attempt_core(max_concurrent=10, budget_min_samples=1, retry_budget=0.1)
    c2.enqueue(req("a"), T0)
    admitted(c2, T0)
    c2.finish("a", RecoveryOutcome.FAILED, at(1))
    assert len(c2.budget_samples) == 0, "the attempt budget does not count closes"


# --- a pause bounds retries without stalling the queue: probe admissions ---------------


def outage(c: OrchestratorCore, failed: int, ok: int, now: datetime) -> None:
    """Report ``failed`` failed and ``ok`` succeeded attempts at ``now``."""
    for i in range(failed + ok):
        c.attempt_finished(i >= failed, now)


def paused_with_queue(**limits: object) -> OrchestratorCore:
    """Default budget (10%, at least 10 attempts), 3 slots, 6 of 10 attempts failed,
    requests p1..p4 waiting (priority = their number)."""
    c = attempt_core(max_concurrent=3, **limits)
    outage(c, 6, 4, T0)
    for i in (3, 1, 4, 2):
        c.enqueue(req(f"p{i}", i), T0)
    return c


def _paused_no_probe(c: OrchestratorCore) -> list[str]:
    return admitted(c, at(1))


def _paused_probe_running(c: OrchestratorCore) -> list[str]:
    admitted(c, at(1))
    return admitted(c, at(2))


def _probe_escalates(c: OrchestratorCore) -> list[str]:
    admitted(c, at(1))
    c.attempt_finished(False, at(2))
    assert escalate(c, "p1", at(2)), "an escalating probe admission frees its slot"
    return admitted(c, at(2))


def _probe_closes_failed(c: OrchestratorCore) -> list[str]:
    admitted(c, at(1))
    c.attempt_finished(False, at(2))
    c.finish("p1", RecoveryOutcome.FAILED, at(2))
    return admitted(c, at(2))


def _probe_succeeds_but_ratio_still_over(c: OrchestratorCore) -> list[str]:
    admitted(c, at(1))
    c.attempt_finished(True, at(2))  # 6 of 11: still over 10%
    c.finish("p1", RecoveryOutcome.SUCCEEDED, at(2))
    return admitted(c, at(2))


def _ratio_drops(c: OrchestratorCore) -> list[str]:
    admitted(c, at(1))
    outage(c, 0, 50, at(2))  # 6 of 60 = 10%: not above the budget
    return admitted(c, at(2))


def _slots_full(c: OrchestratorCore) -> list[str]:
    c.set_limits(c.limits.model_copy(update={"max_concurrent": 0}))
    return admitted(c, at(1))


def _rate_limit_full(c: OrchestratorCore) -> list[str]:
    c.set_limits(c.limits.model_copy(update={"max_admissions_per_minute": 1}))
    c.admission_times_ms.append(to_ms(at(0.5)))
    decided = c.next_admissions(at(1))
    assert decided.wake_at_ms == to_ms(at(60.5)), "wakes when the rate allows a probe"
    assert decided.reason.endswith("(admission rate limit: next probe admission at 00:01:00 UTC)")
    return [e.service for e in decided.admit]


@pytest.mark.parametrize(
    ("scenario", "expected", "still_paused"),
    [
        (_paused_no_probe, ["p1"], True),
        (_paused_probe_running, [], True),
        (_probe_escalates, ["p2"], True),
        (_probe_closes_failed, ["p2"], True),
        (_probe_succeeds_but_ratio_still_over, ["p2"], True),
        (_ratio_drops, ["p2", "p3"], False),
        (_slots_full, [], True),
        (_rate_limit_full, [], True),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_a_pause_admits_one_recovery_at_a_time(
    scenario: object, expected: list[str], still_paused: bool
) -> None:
    c = paused_with_queue()
    assert callable(scenario)
    assert scenario(c) == expected
    assert c.paused is still_paused
    probes = [r.service for r in c.running.values() if r.probe]
    assert len(probes) <= 1, "never more than one probe admission of a pause holds a slot"
    if not still_paused:
        assert probes == [] and c.pause_reason == ""


@pytest.mark.parametrize(
    ("failed", "ok", "paused", "admits"),
    [
        (9, 0, False, 3),  # 9 attempts: fewer than the minimum of 10, whatever failed
        (10, 0, True, 1),  # exactly the minimum: counted
        (1, 9, False, 3),  # exactly 10%: at the budget is not above it
        (2, 9, True, 1),  # 2 of 11 = 18%
        (2, 18, False, 3),  # 2 of 20 = 10% again
        (3, 26, True, 1),  # 3 of 29 = 10.3%
    ],
)
def test_the_pause_threshold_and_minimum_are_compared_exactly(
    failed: int, ok: int, paused: bool, admits: int
) -> None:
    c = attempt_core(max_concurrent=3)
    outage(c, failed, ok, T0)
    for name in "abcd":
        c.enqueue(req(name), T0)
    decided = c.next_admissions(T0)
    assert decided.paused is paused and len(decided.admit) == admits


def test_an_outage_where_every_probe_fails_moves_one_recovery_at_a_time() -> None:
    c = attempt_core(max_concurrent=5, max_admissions_per_minute=1_000)
    outage(c, 10, 0, T0)
    for i in range(20):
        c.enqueue(req(f"s{i:02d}", i), T0)
    order: list[str] = []
    for step in range(20):
        now = at(1 + step)
        decided = c.next_admissions(now)
        assert decided.paused and len(decided.admit) == 1 and len(c.running) == 1
        service = decided.admit[0].service
        order.append(service)
        for _ in range(3):
            c.attempt_finished(False, now)
        escalate(c, service, now)
    assert order == [f"s{i:02d}" for i in range(20)], "in priority order"
    assert "admitting one recovery at a time" in c.pause_reason


def test_a_new_pause_makes_its_own_probe_admission() -> None:
    c = paused_with_queue()
    assert admitted(c, at(1)) == ["p1"]
    outage(c, 0, 50, at(2))
    assert admitted(c, at(2)) == ["p2", "p3"], "pause over: p1 holds an ordinary slot"
    outage(c, 60, 0, at(3))
    c.finish("p2", RecoveryOutcome.SUCCEEDED, at(3))
    assert admitted(c, at(3)) == ["p4"], "p1 was the last pause's probe, not this one's"
    assert [r.service for r in c.running.values() if r.probe] == ["p4"]


def test_the_probe_admission_is_carried_across_continue_as_new() -> None:
    c = paused_with_queue()
    admitted(c, at(1))
    restored = OrchestratorCore.restore(c.carry(), c.limits)
    restored.count_attempts = True
    assert restored.running["p1"].probe
    assert admitted(restored, at(2)) == [], "the carried probe admission still holds its slot"


# --- a joining request says what it kept and what it ignored -------------------------


def test_a_merge_and_a_join_report_the_settings_that_were_not_applied() -> None:
    c = core(max_concurrent=1)
    c.enqueue(req("run"), T0)
    admitted(c, T0)
    c.enqueue(req("wait", 3), T0)
    different = RecoveryRequest(
        service="wait",
        priority=1,
        probe="tcp://127.0.0.1:10",
        strategy=RecoveryStrategy.IMMEDIATE,
        policy=RecoveryPolicy(max_retry_attempts=3),
        action="command:restart",
    )
    merged = c.enqueue(different, at(1))
    assert merged.state is RequestState.MERGED and merged.previous_priority == 3
    assert {i.setting for i in merged.ignored} == {"strategy", "probe", "max_attempts", "action"}
    same = c.enqueue(req("run", 0), at(1))
    assert same.state is RequestState.RUNNING and same.ignored == []
    assert same.previous_priority == 1 and same.priority == 0


def test_ignored_settings_never_show_the_constitutional_hash() -> None:
    kept = req("a")
    new = kept.model_copy(update={"constitutional_hash": "f" * 16})
    [item] = ignored_settings(kept, new)
    assert item.setting == "constitutional_hash" and "f" * 16 not in item.model_dump_json()
    assert ignored_settings(None, new) == []


# --- the queue tells the truth --------------------------------------------------------


def view_of(c: OrchestratorCore, now: datetime, **extra: object) -> QueueView:
    running = [
        RunningView(
            service=r.service,
            workflow_id=r.workflow_id,
            run_id=None,
            priority=r.priority,
            enqueued_at=r.enqueued_at,
            admitted_at=r.admitted_at,
            running_s=0,
            waited_s=0,
        )
        for r in c.running.values()
    ]
    fields: dict[str, object] = {
        "running": running,
        "waiting": [],
        "waiting_total": len(c.queue),
        "max_concurrent": c.limits.max_concurrent,
        "paused": c.paused,
        "pause_reason": c.pause_reason or c.throttle_reason,
        "throttle_reason": c.throttle_reason,
        "limits": c.limits,
        "admitted_total": c.admitted_total,
        "finished": {},
        "recent_admissions": [],
        "runs": 1,
        "history_length": 1,
    }
    fields.update(extra)
    return QueueView.model_validate(fields)


def test_why_waiting_names_the_busy_slots_with_times_computed_when_read() -> None:
    c = core(max_concurrent=2)
    for name in "abc":
        c.enqueue(req(name), T0)
    c.next_admissions(T0)
    view = view_of(c, T0)
    assert why_waiting(view, at(30)) == "all 2 slots busy: a (30s), b (30s)"
    assert why_waiting(view, at(600)) == "all 2 slots busy: a (10m), b (10m)"


def test_why_waiting_names_the_rate_limit_and_the_retry_budget() -> None:
    c = core(max_concurrent=5, max_admissions_per_minute=1)
    c.enqueue(req("a"), T0)
    c.enqueue(req("b"), T0)
    c.next_admissions(T0)
    assert why_waiting(view_of(c, T0), T0).startswith("admission rate limit: 1 admissions")
    p = attempt_core(max_concurrent=5, budget_min_samples=1, retry_budget=0.5)
    p.attempt_finished(False, T0)
    p.enqueue(req("a"), T0)
    p.enqueue(req("b"), T0)
    p.next_admissions(T0)
    shown = why_waiting(view_of(p, T0), T0)
    assert shown.startswith("retry budget exceeded: 1 of 1")
    assert "admitting one recovery at a time until" in shown
    assert shown.endswith("(probe admission running: a)")
    assert why_waiting(view_of(core(), T0), T0) == "", "nothing waits"
