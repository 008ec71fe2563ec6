"""Client-side operations on one recovery: start it directly, find its running run.

The fleet-wide queue (requests, batching, intakes) is :mod:`antifragile.orchestrator.client`.
"""

from __future__ import annotations

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
    SA_PRIORITY,
    SIGNAL_JOIN,
    recovery_workflow_id,
)
from antifragile.models.recovery import JoinSignal, RecoveryRequest, RecoveryResult
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
        "RecoveryWorkflow",
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
