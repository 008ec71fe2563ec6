"""The journal of a chaos experiment: its upkeep and its projections (pure).

ChaosExperimentWorkflow keeps one :class:`~antifragile.models.chaos.ChaosJournal` and
changes it only through these functions and plain assignments; the ``status`` query and
the report are projections of it. Nothing here touches Temporal or the clock: the
workflow passes ``now`` (workflow time), so every rule is unit tested alone.
"""

from __future__ import annotations

from datetime import datetime

from antifragile.chaos.logic import (
    below_steady_state,
    check_phase_transition,
    instances_that_saw,
    sample_health,
)
from antifragile.models.chaos import (
    ChaosEvent,
    ChaosJournal,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    HealthSample,
    PhaseRecord,
)
from antifragile.models.chaos_calls import CallSample, InstanceCalls
from antifragile.models.learning import latency_bounds_ms

MAX_HEALTH_SAMPLES = 300
"""Health samples a journal keeps (oldest dropped): histories and payloads stay small."""
MAX_EVENTS = 300
"""Journal lines a journal keeps (oldest dropped)."""
MAX_CALL_SAMPLES = 720
"""Call samples a journal keeps; beyond, every second one of the older half is dropped."""


def _grow(counts: list[int], n: int) -> list[int]:
    return counts + [0] * (n - len(counts)) if len(counts) < n else counts


def _quantile_ms(counts: list[int], num: int, den: int) -> float | None:
    """Nearest-rank quantile ``num/den`` of bucket ``counts``: the bucket's upper bound.

    As :func:`antifragile.learning.histogram.quantile_ms` (Hyndman & Fan 1996, definition
    1), in integers: rank ``max(1, ceil(num × n / den))``.
    """
    n = sum(counts)
    if n <= 0:
        return None
    rank = max(1, -(-num * n // den))
    bounds = latency_bounds_ms()
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return bounds[min(i, len(bounds) - 1)]
    return bounds[-1]  # pragma: no cover - the rank is at most n


MAX_TRACKED_COUNTERS = 64
"""Counter sets (instance, since) a journal remembers between health checks (most recent
first): an instance missing from one check, or two processes sharing an instance id
(their snapshots alternate in one key), resume from their own last values."""


def _tracked(journal: ChaosJournal) -> dict[tuple[str, float], InstanceCalls]:
    tracked: dict[tuple[str, float], InstanceCalls] = {}
    for c in journal.last_calls:  # most recent first
        tracked.setdefault((c.instance, c.since), c)
    return tracked


def add_call_sample(
    journal: ChaosJournal, calls: list[InstanceCalls], target: str, now: datetime
) -> CallSample | None:
    """Add a call sample of ``target`` from the counters a health check returned.

    A process's counters are identified by ``(instance, since)``: ``since`` changes when
    the process restarts, and two processes sharing an instance id (whose snapshots
    overwrite each other in one key) differ in it. Per counter set, the increase since
    its last values (remembered for :data:`MAX_TRACKED_COUNTERS` sets, so a set missing
    from a check resumes where it was) is ``current - last``; a counter that went down
    with the same ``since`` is not a restart (the value is not trusted: it adds
    nothing and becomes the new base). A set not seen before counts from 0 when it
    started counting after the previous sample (a restart or a new process: all its
    calls are in the interval; this compares the runtime's clock with workflow time),
    otherwise it is the base only (it was running before: its earlier calls are not
    the experiment's). The same set twice in one check counts once (the larger values).
    The sample's counts are the previous sample's plus the increases; the latency
    quantiles are those of the interval's calls. Beyond :data:`MAX_CALL_SAMPLES`, every
    second sample of the older half is dropped (counts are cumulative: nothing is lost
    but resolution).

    The interval's latency buckets are also added to ``journal.fault_latency`` when the
    interval lay wholly under the fault (see :func:`_under_fault`).

    Returns:
        The sample added; None when no instance published counters for ``target``.
    """
    seen: dict[tuple[str, float], InstanceCalls] = {}
    for c in calls:
        if c.dependency != target:
            continue
        key = (c.instance, c.since)
        other = seen.get(key)
        if other is None or (c.calls, c.failures, c.refused) > (
            other.calls,
            other.failures,
            other.refused,
        ):
            seen[key] = c
    if not seen:
        return None
    before = _tracked(journal)
    ok = failed = refused = 0
    interval: list[int] = []
    last = journal.calls[-1] if journal.calls else None
    for key, c in seen.items():
        prev = before.get(key)
        if prev is None:
            if last is None or c.since < last.at.timestamp():
                continue  # running before the previous sample: the base only
            prev = InstanceCalls(
                instance=c.instance, dependency=target, since=c.since, calls=0, failures=0
            )
        if c.calls < prev.calls or c.failures < prev.failures or c.refused < prev.refused:
            continue  # went down without a restart: not trusted, the new base
        d_calls, d_failed = c.calls - prev.calls, c.failures - prev.failures
        failed += d_failed
        ok += max(0, d_calls - d_failed)
        refused += c.refused - prev.refused
        width = max(len(c.latency), len(prev.latency))
        cur_l, base_l = _grow(list(c.latency), width), _grow(list(prev.latency), width)
        interval = _grow(interval, width)
        for k in range(width):
            interval[k] += max(0, cur_l[k] - base_l[k])
    sample = CallSample(
        at=now,
        ok=(last.ok if last else 0) + ok,
        failed=(last.failed if last else 0) + failed,
        refused=(last.refused if last else 0) + refused,
        p50_ms=_quantile_ms(interval, 1, 2),
        p99_ms=_quantile_ms(interval, 99, 100),
        instances=len({instance for instance, _ in seen}),
    )
    if last is not None and _under_fault(journal, last.at, now):
        total = _grow(list(journal.fault_latency), len(interval))
        for k, count in enumerate(interval):
            total[k] += count
        journal.fault_latency = total
    kept = list(seen.values())
    kept += [c for key, c in before.items() if key not in seen]
    journal.last_calls = kept[:MAX_TRACKED_COUNTERS]
    journal.calls.append(sample)
    if len(journal.calls) > MAX_CALL_SAMPLES:
        half = len(journal.calls) // 2
        journal.calls[:half] = journal.calls[:half:2]
    return sample


def _under_fault(journal: ChaosJournal, start: datetime, end: datetime) -> bool:
    """The interval ``(start, end]`` lay wholly under the fault (injected, not yet ended).

    An interval that straddles the injection or the end mixes calls with and without the
    fault, so it is left out of ``fault_latency`` (a histogram cannot be split in time).
    """
    if journal.injected_at is None or journal.scenario.dry_run:
        return False
    ended = journal.cleanup.fault_ended_at or journal.removed_at
    return journal.injected_at <= start and (ended is None or end <= ended)


def enter_phase(journal: ChaosJournal, new: ChaosPhase, now: datetime) -> None:
    """Move to ``new`` at ``now``: close the open phase record, open one for ``new``.

    Raises:
        IllegalTransitionError: The move is not in :data:`LEGAL_TRANSITIONS`.
    """
    journal.phase = check_phase_transition(journal.phase, new)
    journal.phases[-1].left_at = now
    journal.phases.append(PhaseRecord(phase=new, entered_at=now))


def add_event(journal: ChaosJournal, message: str, now: datetime) -> None:
    """Add a journal line in the current phase (the oldest beyond :data:`MAX_EVENTS` go)."""
    journal.events.append(ChaosEvent(at=now, phase=journal.phase, message=message))
    del journal.events[:-MAX_EVENTS]


def add_sample(journal: ChaosJournal, sample: HealthSample) -> None:
    """Append a health sample; update lowest and latest score and "health dropped".

    A drop counts only after injection of a real fault: below the steady-state baseline
    (the targets' own score when the sample has it), or unhealthy.
    """
    journal.health.append(sample)
    del journal.health[:-MAX_HEALTH_SAMPLES]
    if journal.injected_at is not None and not journal.scenario.dry_run:
        dropped = below_steady_state(journal.baseline, sample_health(sample), sample.healthy)
        journal.health_dropped = bool(journal.health_dropped) or dropped
    if sample.score is not None:
        journal.last_health = sample.score
        low = journal.lowest_health
        journal.lowest_health = sample.score if low is None else min(low, sample.score)


def fault_active_s(journal: ChaosJournal, now: datetime) -> float | None:
    """Seconds the fault really applied: injection until removal or lease expiry.

    So far, while it runs. None for a dry run or before injection.
    """
    if journal.injected_at is None or journal.scenario.dry_run:
        return None
    end = journal.cleanup.fault_ended_at or journal.removed_at
    if end is None:  # still running: so far
        end = now
    return round(max(0.0, (end - journal.injected_at).total_seconds()), 3)


def chaos_status(journal: ChaosJournal, now: datetime) -> ChaosStatus:
    """The ``status`` query at workflow time ``now``.

    Phase, time left, where the fault is active, lowest health, decisions and journal lines.
    """
    j, s = journal, journal.scenario
    time_left = None
    if j.ends_at is not None and j.phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING):
        time_left = max(0.0, (j.ends_at - now).total_seconds())
    return ChaosStatus(
        experiment_id=j.experiment_id,
        name=s.name,
        chaos_type=s.chaos_type,
        target=s.target,
        blast_radius=list(s.blast_radius),
        parameters=s.parameters_description(),
        phase=j.phase,
        dry_run=s.dry_run,
        started_at=j.started_at,
        injected_at=j.injected_at,
        ends_at=j.ends_at,
        time_left_s=time_left,
        duration_s=j.duration_s,
        faults_active=[j.placement] if j.placement and not s.dry_run else [],
        lowest_health=j.lowest_health,
        last_health=j.last_health,
        stop_reason=j.reason,
        warnings=list(j.warnings),
        decisions=list(j.decisions),
        events=list(j.events),
        approval_needed=j.phase is ChaosPhase.AWAITING_APPROVAL,
        instances_guarding=j.instances_guarding,
        injection_failed=j.injection_failed,
    )


def chaos_report(journal: ChaosJournal, now: datetime) -> ChaosReport:
    """The report: the workflow's result once it has ended, the ``report`` query before.

    Before the end, ``ended_at`` is ``now`` and ``outcome`` is None.
    """
    j, s, impact = journal, journal.scenario, journal.impact
    return ChaosReport(
        experiment_id=j.experiment_id,
        name=s.name,
        chaos_type=s.chaos_type,
        target=s.target,
        blast_radius=list(s.blast_radius),
        outcome=j.outcome,
        reason=j.reason,
        dry_run=s.dry_run,
        requested_duration_s=s.duration_s,
        effective_duration_s=j.duration_s,
        started_at=j.started_at,
        injected_at=j.injected_at,
        removed_at=j.removed_at,
        ended_at=now,
        phases=[p.model_copy() for p in j.phases],
        health_lowest=j.lowest_health,
        health_timeline=list(j.health),
        call_samples=list(j.calls),
        calls_affected=dict(impact.calls_affected),
        calls_seen=dict(impact.calls_seen),
        breakers_opened=list(impact.breakers_opened),
        breaker_openings=dict(impact.breaker_openings),
        calls_refused=dict(impact.calls_refused),
        recovery_workflows=list(impact.recovery_workflows),
        time_to_recover_s=j.time_to_recover_s,
        recovered=j.recovered,
        cleanup=j.cleanup,
        warnings=list(j.warnings),
        decisions=list(j.decisions),
        events=list(j.events),
        fault_active_s=fault_active_s(j, now),
        instances_guarding=j.instances_guarding,
        instances_saw_fault=(
            instances_that_saw(impact.calls_seen, impact.calls_affected, impact.breakers_opened)
            if j.impact_collected
            else None
        ),
        health_dropped=j.health_dropped,
        injection_failed=j.injection_failed,
    )
