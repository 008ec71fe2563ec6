"""What an experiment or a recovery tells its dependency's ledger when it ends.

Both workflows call :func:`record_observation` once, at their very end, behind patch
:data:`LEARNING_OBSERVATIONS` (histories recorded before it replay unchanged). It is best
effort: the ``record_dependency_observations`` activity (signal-with-start of
``profile-{dependency}``) gets :data:`RECORD_RETRY` tries; if it still fails, or is
cancelled, the failure is logged and the workflow ends exactly as it would have without it.

The observations are built here from what each workflow already knows (pure functions,
except :func:`recovery_started_at`, which reads the workflow's info). Not a durable process
of its own.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import ACTIVITY_RECORD_OBSERVATIONS, profile_workflow_id
    from antifragile.learning.histogram import merge
    from antifragile.models.chaos import ChaosJournal, ChaosOutcome
    from antifragile.models.learning import (
        LATENCY_BUCKETS,
        ExperimentObservation,
        LatencyHistogram,
        OutageObservation,
        RecordObservationsInput,
        RecordObservationsResult,
    )
    from antifragile.models.recovery import AttemptRecord, RecoveryState, RecoveryStatus

from workflows._failures import cause_message

LEARNING_OBSERVATIONS = "learning-observations"

MAX_DETECTION_LEAD = timedelta(hours=24)
"""A request's ``detected_at`` earlier than this before the recovery's start is not
believed (a bad clock or a stale request): the bridge sends it when the breaker opens,
so only the signal, the intakes and the fleet queue lie between them."""
"""Patch: an ending experiment or recovery records an observation in its dependency's
ledger (``profile-{dependency}``)."""
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
    non_retryable_error_types=["NotFoundError"],
)
"""Three tries, 1 s then 2 s apart: the ending waits at most ~3 s plus the tries. A worker
that does not run the recording activity (``NotFoundError``: an older worker during a
rolling deploy, or a partial test worker) gives up at once, so the ending is not delayed."""
RECORD_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout of one try (one signal-with-start)."""


async def record_observation(observation: ExperimentObservation | OutageObservation) -> bool:
    """Send ``observation`` to its dependency's ledger, best effort (patch-gated).

    Returns:
        True when recorded; False when the patch is off for this history (nothing is
        scheduled) or recording failed or was cancelled (logged; never raised).
    """
    if not workflow.patched(LEARNING_OBSERVATIONS):
        return False
    dependency = observation.dependency
    try:
        await workflow.execute_activity(
            ACTIVITY_RECORD_OBSERVATIONS,
            RecordObservationsInput(
                dependency=dependency,
                observations=[observation],
                task_queue=workflow.info().task_queue,
            ),
            result_type=RecordObservationsResult,
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"record {observation.kind} in {profile_workflow_id(dependency)}",
        )
    except ActivityError as err:
        workflow.logger.warning(
            "%s not recorded in %s: %s",
            observation.kind,
            profile_workflow_id(dependency),
            cause_message(err),
        )
        return False
    except asyncio.CancelledError:
        # The outcome was decided before recording started: a cancel now only skips it.
        workflow.logger.warning(
            "%s not recorded in %s: cancelled", observation.kind, profile_workflow_id(dependency)
        )
        return False
    return True


def experiment_observation(
    journal: ChaosJournal, outcome: ChaosOutcome
) -> ExperimentObservation | None:
    """What an ended experiment showed about its target (None: nothing to observe).

    Nothing is observed when no fault applied: a dry run, or no injection (validation,
    approval, steady state before injection, a refused or failed injection).

    Fields (all from the journal):

    - ``fault_start``: the injection (``injected_at``); ``fault_end``: when the fault
      stopped applying (``cleanup.fault_ended_at``: the removal, or the lease's expiry),
      else the removal (``removed_at``), else None.
    - ``detected_at``: the first health sample at or after the injection whose targets'
      breakers were not all CLOSED (``targets_score`` < 1: a target breaker OPEN or
      HALF_OPEN). Breaker openings are counted at the call sites without a time, so this
      is the first time one was *seen*: at most one health-check interval late. None when
      no sample showed it (no process publishes per-breaker states, or none opened).
    - ``recovered_at``: ``removed_at + time_to_recover_s`` when health was verified back
      after dropping; the first measurement after the removal when health never dropped
      (it verified the recovery at once); None when not verified.
    - ``steady_state_held``: the health guard never tripped (outcome not ABORTED).
    - ``calls_refused``: calls the guards of the blast radius refused under the fault
      (breaker open, concurrency limit), summed over instances; ``calls_failed``: calls
      the fault changed (``calls_affected``) minus those refusals, at least 0. Both are
      counted over the whole blast radius (the counters are per instance, not per guard)
      and are 0 when the impact could not be collected. For a LATENCY fault, "changed"
      means delayed: such calls did not necessarily fail.
    - ``latency``: the target's calls under the fault (``fault_latency``: the intervals
      between health checks that lay wholly under it), trailing empty buckets dropped.
    """
    j = journal
    if j.scenario.dry_run or j.injected_at is None:
        return None
    fault_end = j.cleanup.fault_ended_at or j.removed_at
    refused = sum(j.impact.calls_refused.values())
    affected = sum(j.impact.calls_affected.values())
    return ExperimentObservation(
        dependency=j.scenario.target,
        source_id=j.experiment_id,
        chaos_type=j.scenario.chaos_type.value,
        fault_start=j.injected_at,
        fault_end=fault_end,
        detected_at=_first_breaker_seen_open(j, j.injected_at),
        recovered_at=_verified_back(j),
        steady_state_held=outcome is not ChaosOutcome.ABORTED,
        calls_failed=max(affected - refused, 0),
        calls_refused=refused,
        outcome=outcome.value,
        latency=merge([LatencyHistogram(counts=j.fault_latency[:LATENCY_BUCKETS])]),
    )


def _first_breaker_seen_open(journal: ChaosJournal, since: datetime) -> datetime | None:
    for sample in journal.health:
        if sample.at >= since and sample.targets_score is not None and sample.targets_score < 1:
            return sample.at
    return None


def _verified_back(journal: ChaosJournal) -> datetime | None:
    if not journal.recovered or journal.removed_at is None:
        return None
    if journal.time_to_recover_s is not None:
        return journal.removed_at + timedelta(seconds=journal.time_to_recover_s)
    # Health never dropped: the first measurement after the removal verified it (samples
    # signalled by processes only wake the verification up).
    after = [
        s for s in journal.health if s.at >= journal.removed_at and s.source.startswith("fleet")
    ]
    return after[0].at if after else None


def outage_observation(
    service: str,
    source_id: str,
    state: RecoveryState,
    *,
    started_at: datetime,
    recovered_at: datetime | None,
    attempts: int,
    records: list[AttemptRecord],
    watch_probes: int,
) -> OutageObservation:
    """What an ended recovery showed about its service.

    Args:
        service: The recovered service.
        source_id: ``{workflow id}/{first run id}``.
        state: The final state (SUCCEEDED, FAILED or CANCELLED).
        started_at: When the recovery was requested: the workflow's start (see
            :func:`recovery_started_at`).
        recovered_at: When the first probe passed (None: none passed).
        attempts: Attempts made, over all runs.
        records: The attempt records kept (capped; trimmed at continue-as-new).
        watch_probes: Watch probes run while awaiting approval, over all runs.

    ``probes`` is every attempt's probe plus the watch probes; an attempt whose action
    failed ran no probe. Attempts whose records were trimmed away count as probed, so the
    figure is exact unless a recovery continued as new after action failures.

    ``last_failed_probe_at`` is the end (``started_at + duration_ms``) of the last
    ``unhealthy`` attempt that ended before ``recovered_at``: the dependency was still down
    then, so it came back in between (None when no kept record shows a failed probe).
    """
    unprobed = sum(1 for r in records if r.outcome == "action_failed")
    last_failed = None
    if recovered_at is not None:
        ends = [
            end
            for r in records
            if r.outcome == "unhealthy"
            and (end := r.started_at + timedelta(milliseconds=r.duration_ms)) <= recovered_at
        ]
        last_failed = max(ends, default=None)
    return OutageObservation(
        dependency=service,
        source_id=source_id,
        started_at=started_at,
        recovered_at=recovered_at,
        last_failed_probe_at=last_failed,
        attempts=attempts,
        probes=max(attempts - unprobed, 0) + watch_probes,
        outcome=state.value,
    )


async def record_outage(
    status: RecoveryStatus, recovered_at: datetime | None, detected_at: datetime | None = None
) -> bool:
    """Record an ending recovery in its service's ledger (:func:`record_observation`).

    Args:
        status: The recovery's status as it ends (its ``state`` is final: SUCCEEDED,
            FAILED or CANCELLED).
        recovered_at: When its first probe passed (None: none passed).
        detected_at: When the outage was noticed (the request's ``detected_at``: the
            service's breaker opened), see :func:`recovery_started_at`.

    Returns:
        As :func:`record_observation`.
    """
    info = workflow.info()
    observation = outage_observation(
        status.service,
        f"{info.workflow_id}/{info.first_execution_run_id}",
        status.state,
        started_at=recovery_started_at(status.attempts, detected_at),
        recovered_at=recovered_at,
        attempts=status.attempt,
        records=status.attempts,
        watch_probes=status.watch_probes,
    )
    return await record_observation(observation)


def recovery_started_at(
    records: list[AttemptRecord], detected_at: datetime | None = None
) -> datetime:
    """When the outage began, as far as the recovery knows (see :func:`outage_started_at`)."""
    info = workflow.info()
    return outage_started_at(
        info.workflow_start_time,
        records if info.continued_run_id is not None else [],
        detected_at,
    )


def outage_started_at(
    run_started: datetime, carried: list[AttemptRecord], detected_at: datetime | None
) -> datetime:
    """When an outage began: the time its time to recover is counted from (pure).

    - ``detected_at`` (the service's breaker opened; the request says so) when it is not
      after the recovery's start. The recovery itself starts later, by the bridge's
      signal, the intake's batching and the time queued in the fleet-wide queue (0.5 s
      and more, seen in tests): counting from the start would shorten every time to
      recover by that much, and the advised open duration with it. A ``detected_at``
      after the start (another host's clock running ahead), or more than
      :data:`MAX_DETECTION_LEAD` (24 h) before it (a clock far behind, a stale
      request), is not believed.
    - Else the recovery's start: ``run_started``, or the oldest attempt ``carried`` over a
      continue-as-new when older (the first run's start is not carried across runs).

    Args:
        run_started: This run's start (workflow time).
        carried: Attempt records carried into this run (empty for a first run).
        detected_at: The request's ``detected_at`` (None: unknown).
    """
    started = run_started
    if carried:
        started = min(started, carried[0].started_at)
    if detected_at is not None:
        noticed = detected_at if detected_at.tzinfo else detected_at.replace(tzinfo=UTC)
        if started - MAX_DETECTION_LEAD <= noticed <= started:
            return noticed
    return started
