"""Client-side operations on one recovery: start it directly, find it, read, decide, cancel.

The fleet-wide queue (requests, batching, intakes) is :mod:`antifragile.orchestrator.client`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    QUERY_STATUS,
    RECOVERY_WORKFLOW_TYPE,
    SA_PRIORITY,
    SIGNAL_APPROVE,
    SIGNAL_JOIN,
    SIGNAL_REJECT,
    recovery_workflow_id,
)
from antifragile.errors import AntifragileError
from antifragile.models.common import ApprovalRecord, Decision
from antifragile.models.recovery import (
    JoinSignal,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
)
from antifragile.recovery.ui import recovery_details, recovery_summary


async def start_recovery(
    client: Client, request: RecoveryRequest, *, task_queue: str
) -> WorkflowHandle[object, RecoveryResult]:
    """Start ``recovery-{service}`` directly, bypassing the orchestrator. Not public API.

    This is not how to ask for a recovery: it skips the orchestrator's slots
    (``max_concurrent``), admission rate and retry budget, so a storm of these would run
    every recovery at once. It is not exported by ``antifragile`` (``__all__``) and not
    documented; it exists for tests, replay recorders and benchmarks that need the
    workflow on its own. Services, tools and scripts call :func:`request_recovery`.

    Joining (a recovery of the service already runs) sends ``join`` with the request's
    priority, so a more urgent request raises the running recovery's priority.
    """
    return await client.start_workflow(
        RECOVERY_WORKFLOW_TYPE,
        request,
        id=recovery_workflow_id(request.service),
        task_queue=task_queue,
        result_type=RecoveryResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=SIGNAL_JOIN,
        start_signal_args=[
            JoinSignal(
                priority=request.priority, reason=request.reason, requested_by=request.requested_by
            )
        ],
        static_summary=recovery_summary(request),
        static_details=recovery_details(request),
    )


async def running_recovery(
    client: Client, service: str
) -> WorkflowHandle[object, RecoveryResult] | None:
    """The handle of ``recovery-{service}`` when its latest run is running, else None."""
    found = await running_with_priority(client, service)
    return found[0] if found else None


async def running_with_priority(
    client: Client, service: str
) -> tuple[WorkflowHandle[object, RecoveryResult], int | None] | None:
    """The running recovery of ``service`` and its current priority (AfPriority), if any."""
    handle = client.get_workflow_handle(recovery_workflow_id(service), result_type=RecoveryResult)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return None
    return handle, desc.typed_search_attributes.get(SA_PRIORITY)


class RecoveryStateError(AntifragileError):
    """The recovery asked about does not exist, or is not in the state an operation needs."""


async def latest_recovery(client: Client, service: str) -> WorkflowHandle[Any, Any]:
    """The handle of the latest run of ``recovery-{service}``, whatever its state.

    Raises:
        RecoveryStateError: No recovery of ``service`` was ever recorded.
    """
    handle = client.get_workflow_handle(recovery_workflow_id(service))
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RecoveryStateError(f"no recovery found for service {service!r}") from None
        raise
    return handle


async def recovery_status(handle: WorkflowHandle[Any, Any]) -> RecoveryStatus:
    """The recovery's ``status`` query: state, attempts, next attempt, decisions."""
    status: RecoveryStatus = await handle.query(QUERY_STATUS, result_type=RecoveryStatus)
    return status


DECISION_POLLS = 100
STATE_POLLS = 20
POLL_INTERVAL_S = 0.1


async def send_decision(
    handle: WorkflowHandle[Any, Any], decision: Decision, signal: Any, recorded: int
) -> tuple[ApprovalRecord, RecoveryStatus] | None:
    """Send an approve or reject and wait for the recovery to record its verdict.

    The workflow checks the approver against the worker policy, so the decision it records
    may be REFUSED. An accepted approval starts a round a moment after it is recorded: the
    status returned is read once the recovery has left AWAITING_APPROVAL (up to 2 s).

    Args:
        handle: The recovery (awaiting approval).
        decision: APPROVED or REJECTED (chooses the signal).
        signal: The ``approve``/``reject`` payload (signed or not).
        recorded: How many decisions the recovery had recorded before this one.

    Returns:
        The recorded decision and the recovery's status after it; None when nothing was
        recorded within 10 s (polled every 0.1 s).
    """
    name = SIGNAL_APPROVE if decision is Decision.APPROVED else SIGNAL_REJECT
    await handle.signal(name, signal)
    for _ in range(DECISION_POLLS):
        after = await recovery_status(handle)
        if len(after.decisions) > recorded:
            record = after.decisions[-1]
            if record.decision is Decision.REFUSED:
                return record, after
            for _ in range(STATE_POLLS):
                if after.state is not RecoveryState.AWAITING_APPROVAL:
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
                after = await recovery_status(handle)
            return record, after
        await asyncio.sleep(POLL_INTERVAL_S)
    return None


async def cancel_recovery(client: Client, service: str) -> str:
    """Request the cancellation of ``service``'s running recovery (it ends CANCELLED).

    Returns:
        The recovery's workflow id.

    Raises:
        RecoveryStateError: There is no recovery of ``service``, or it is not running.
    """
    handle = await latest_recovery(client, service)
    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise RecoveryStateError(
            f"the recovery of {service} is not running ({desc.status.name.lower()})"
            if desc.status
            else f"the recovery of {service} is not running"
        )
    await handle.cancel()
    return handle.id
