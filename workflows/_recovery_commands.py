"""The activities a recovery runs: hash check, action and probe, with their options.

Each function issues one activity of RecoveryWorkflow with its input, timeouts, retries,
cancellation type and UI summary, and returns the result; what the result means is the
workflow's decision. Options are part of the recorded histories' contract: change one
only behind a ``workflow.patched`` marker. Not a durable process of its own.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        ACTIVITY_PROBE_SERVICE,
        ACTIVITY_READ_LEARNED_RECOVERIES,
        ACTIVITY_RUN_RECOVERY_ACTION,
        ACTIVITY_VALIDATE_HASH,
        profile_workflow_id,
    )
    from antifragile.models.recovery import (
        AttemptRecord,
        LearnedRecoveries,
        LearnedRecoveriesInput,
        ProbeInput,
        ProbeResult,
        RecoveryActionInput,
        RecoveryActionResult,
        RecoveryRequest,
        ValidateHashInput,
        ValidateHashResult,
    )
    from antifragile.recovery.logic import AdaptiveSchedule, adaptive_schedule

from workflows._failures import cause_message, reraise_cancellation
from workflows._learning_feed import recovery_started_at

SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
# Checks that must eventually answer (hash, approver) retry until a worker does: a worker
# outage delays a recovery, it never fails one. Refusals are non-retryable errors.
UNTIL_ANSWERED = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
CHECK_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout of the hash and approver checks."""
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
"""A crashed worker's action or probe is noticed this long after its last heartbeat (the
activities heartbeat every second) and then retried on another worker."""
# Sized for worker crashes: each try waits at most HEARTBEAT_TIMEOUT to be noticed, so three
# tries survive two crashes in one attempt; then the attempt counts as failed.
CRASH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
ACTION_TIMEOUT = timedelta(seconds=90)


async def validate_hash(request: RecoveryRequest) -> ValidateHashResult:
    """``validate_constitutional_hash`` for the request's hash (retried until answered)."""
    result: ValidateHashResult = await workflow.execute_activity(
        ACTIVITY_VALIDATE_HASH,
        ValidateHashInput(
            constitutional_hash=request.constitutional_hash,
            context=f"recovery {request.service}",
        ),
        result_type=ValidateHashResult,
        start_to_close_timeout=CHECK_TIMEOUT,
        retry_policy=UNTIL_ANSWERED,
        summary="validate constitutional hash",
    )
    return result


async def run_action(
    request: RecoveryRequest, attempt: int, idempotency_key: str
) -> RecoveryActionResult:
    """``run_recovery_action`` for one attempt.

    A retry (worker crash) repeats the action with the same idempotency key, so its receiver
    can tell it from a new attempt.
    """
    result: RecoveryActionResult = await workflow.execute_activity(
        ACTIVITY_RUN_RECOVERY_ACTION,
        RecoveryActionInput(
            service=request.service,
            action=request.action,
            attempt=attempt,
            reason=request.reason,
            idempotency_key=idempotency_key,
        ),
        result_type=RecoveryActionResult,
        start_to_close_timeout=ACTION_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=CRASH_RETRY,
        summary=f"attempt {attempt}: {request.action}",
    )
    return result


async def probe(request: RecoveryRequest, summary: str, *, v2: bool) -> ProbeResult:
    """``probe_service`` on the request's probe.

    Args:
        request: The recovery.
        summary: The UI summary of this probe.
        v2: Runs since patch ``recovery-v2``: retried across worker crashes, and a
            cancelled recovery closes only once its probe has stopped (no probe outlives
            the workflow that asked for it).
    """
    result: ProbeResult = await workflow.execute_activity(
        ACTIVITY_PROBE_SERVICE,
        ProbeInput(service=request.service, url=request.probe, timeout_s=request.probe_timeout_s),
        result_type=ProbeResult,
        start_to_close_timeout=timedelta(seconds=request.probe_timeout_s + 10),
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=CRASH_RETRY if v2 else SHORT_RETRY,
        cancellation_type=(
            workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
            if v2
            else workflow.ActivityCancellationType.TRY_CANCEL
        ),
        summary=summary,
    )
    return result


LEARNED_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout of one read of the ledger (the query itself times out at 3 s)."""
LEARNED_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=2,
    non_retryable_error_types=["NotFoundError"],
)
"""Two tries, then exponential backoff: a recovery never stalls on learning. A worker
without the activity (``NotFoundError``) gives up at once."""


def elapsed_us(records: list[AttemptRecord]) -> int:
    """Time since the recovery started (its outage's measured start), µs."""
    return (workflow.now() - recovery_started_at(records)) // timedelta(microseconds=1)


async def learned_schedule(
    request: RecoveryRequest, records: list[AttemptRecord]
) -> AdaptiveSchedule:
    """An ADAPTIVE round's plan: ``read_learned_recoveries``, then the pure schedule.

    Falls back to exponential backoff (``learned`` False, the reason one line) when the
    ledger does not exist, cannot be read, or holds too few verified recoveries
    (``antifragile.recovery.logic.adaptive_schedule``). Never raises but for cancellation.

    Args:
        request: The recovery (its service names the ledger, its policy the round size).
        records: The attempt records kept (for the recovery's start, :func:`elapsed_us`).
    """
    ledger = profile_workflow_id(request.service)
    try:
        learned: LearnedRecoveries = await workflow.execute_activity(
            ACTIVITY_READ_LEARNED_RECOVERIES,
            LearnedRecoveriesInput(dependency=request.service),
            result_type=LearnedRecoveries,
            start_to_close_timeout=LEARNED_TIMEOUT,
            retry_policy=LEARNED_RETRY,
            summary=f"adaptive: read the learned times to recover from {ledger}",
        )
    except ActivityError as err:
        reraise_cancellation(err)
        return AdaptiveSchedule(
            False,
            reason=(
                f"adaptive fell back to exponential backoff: {ledger} unreadable "
                f"({cause_message(err)})"
            ),
        )
    if not learned.found:
        return AdaptiveSchedule(
            False, reason=f"adaptive fell back to exponential backoff: {learned.note}"
        )
    return adaptive_schedule(
        learned.recover_us,
        elapsed_us=max(0, elapsed_us(records)),
        max_attempts=request.policy.max_retry_attempts,
    )
