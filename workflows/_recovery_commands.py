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

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        ACTIVITY_PROBE_SERVICE,
        ACTIVITY_RUN_RECOVERY_ACTION,
        ACTIVITY_VALIDATE_HASH,
    )
    from antifragile.models.recovery import (
        ProbeInput,
        ProbeResult,
        RecoveryActionInput,
        RecoveryActionResult,
        RecoveryRequest,
        ValidateHashInput,
        ValidateHashResult,
    )

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
