"""An experiment's status and report, from its worker or rebuilt from history and Redis.

:func:`experiment_status` and :func:`experiment_report` ask the workflow first. An
experiment that was terminated, failed, timed out, or whose worker is gone cannot answer;
:func:`rebuild_report` then puts a report together from what Temporal and the fault plane
still know.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError

from antifragile.chaos.client import (
    STATUS_QUERY_TIMEOUT,
    ExperimentNotFoundError,
    find_experiment,
    query_status,
)
from antifragile.chaos.logic import instances_that_saw
from antifragile.chaos.plane import FaultPlane
from antifragile.constants import QUERY_REPORT
from antifragile.models.chaos import (
    ChaosExperimentInput,
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    CleanupRecord,
    GuardianResult,
    InjectFaultResult,
    PhaseRecord,
    RemoveFaultResult,
    ValidateScenarioResult,
)

# --- reading one experiment ----------------------------------------------------------


async def experiment_status(
    client: Client, experiment_id: str, *, plane: FaultPlane | None = None
) -> ChaosStatus:
    """The experiment's status: its ``status`` query, else one made from a rebuilt report.

    An experiment that ended without a report (its last phase is stale) or whose worker
    does not answer within :data:`STATUS_QUERY_TIMEOUT` says how it really ended, or that
    it still runs.

    Args:
        client: A Temporal client (pydantic data converter).
        experiment_id: The experiment's workflow id.
        plane: The fault plane, read when the report is rebuilt (None: not read).

    Raises:
        ExperimentNotFoundError: no such chaos experiment (or no experiment input).
    """
    handle, desc = await find_experiment(client, experiment_id)
    st: ChaosStatus | None = None
    if desc.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
        st = await query_status(handle, rpc_timeout=STATUS_QUERY_TIMEOUT)
    if st is None:
        st = status_of(await _rebuilt(client, experiment_id, plane))
    return st


async def experiment_report(
    client: Client, experiment_id: str, *, plane: FaultPlane | None = None
) -> ChaosReport:
    """The experiment's report: its result, its ``report`` query (so far), or rebuilt.

    Args:
        client: A Temporal client (pydantic data converter).
        experiment_id: The experiment's workflow id.
        plane: The fault plane, read when the report is rebuilt (None: not read).

    Raises:
        ExperimentNotFoundError: no such chaos experiment (or no experiment input).
    """
    handle, desc = await find_experiment(client, experiment_id)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    if desc.status == WorkflowExecutionStatus.RUNNING:
        try:
            report: ChaosReport = await handle.query(
                QUERY_REPORT, result_type=ChaosReport, rpc_timeout=STATUS_QUERY_TIMEOUT
            )
            return report
        except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
            pass  # a lost worker: rebuilt below
    # Terminated, failed, timed out, or no worker answers: rebuilt from history and Redis.
    return await _rebuilt(client, experiment_id, plane)


async def _rebuilt(client: Client, experiment_id: str, plane: FaultPlane | None) -> ChaosReport:
    try:
        return await rebuild_report(client, experiment_id, plane=plane)
    except ValueError as exc:  # pydantic's ValidationError too: not an experiment's input
        raise ExperimentNotFoundError(
            f"{experiment_id}: no chaos experiment input in its history ({type(exc).__name__})"
        ) from None


def status_of(report: ChaosReport) -> ChaosStatus:
    """The status of an experiment known only by its (rebuilt) report."""
    if report.outcome is not None:
        phase = ChaosPhase(report.outcome.value)
    elif report.phases:  # still running, no worker answered: the last phase known
        phase = report.phases[-1].phase
    else:  # from history alone
        phase = ChaosPhase.RUNNING if report.injected_at else ChaosPhase.VALIDATING
    return ChaosStatus(
        experiment_id=report.experiment_id,
        name=report.name,
        chaos_type=report.chaos_type,
        target=report.target,
        blast_radius=report.blast_radius,
        parameters="",
        phase=phase,
        dry_run=report.dry_run,
        started_at=report.started_at,
        injected_at=report.injected_at,
        duration_s=report.effective_duration_s,
        lowest_health=report.health_lowest,
        stop_reason=report.reason if report.outcome is not None else "",
        warnings=report.warnings,
        decisions=report.decisions,
        events=report.events,
        instances_guarding=report.instances_guarding,
        injection_failed=report.injection_failed,
    )


# --- rebuilding a report -------------------------------------------------------------

_CLOSED_OUTCOME = {
    WorkflowExecutionStatus.TERMINATED: (ChaosOutcome.STOPPED, "terminated"),
    WorkflowExecutionStatus.CANCELED: (ChaosOutcome.STOPPED, "cancelled"),
    WorkflowExecutionStatus.FAILED: (ChaosOutcome.FAILED, "workflow failed"),
    WorkflowExecutionStatus.TIMED_OUT: (ChaosOutcome.FAILED, "workflow timed out"),
    WorkflowExecutionStatus.CONTINUED_AS_NEW: (ChaosOutcome.FAILED, "continued as new"),
}

_ENDED = (
    "workflow_execution_timed_out_event_attributes",
    "workflow_execution_canceled_event_attributes",
)


def _at(event: Any) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


async def _decode(client: Client, payloads: Any, kind: type[Any]) -> Any:
    if not payloads.payloads:  # e.g. a workflow started without input
        return None
    values = await client.data_converter.decode(list(payloads.payloads), [kind])
    return values[0] if values else None


async def rebuild_report(
    client: Client,
    experiment_id: str,
    *,
    plane: FaultPlane | None = None,
) -> ChaosReport:
    """A complete report of an experiment that ended without one, marked ``rebuilt``.

    Such an experiment was terminated, failed or timed out, or its worker is gone.

    The journal comes from the ``report`` query when a worker answers within
    :data:`STATUS_QUERY_TIMEOUT`, else from the history alone (input, injection, removal,
    renewals); the ending from the workflow's close event; cleanup from the history, the
    guardian child and the lease in Redis; the impact from the counters in Redis.

    Args:
        client: A Temporal client (pydantic data converter).
        experiment_id: The experiment's workflow id.
        plane: The fault plane, for the lease and the impact counters (None: not read).

    Raises:
        temporalio.service.RPCError: the workflow does not exist.
    """
    handle = client.get_workflow_handle(experiment_id)
    desc = await handle.describe()
    history = await handle.fetch_history()
    events = list(history.events)
    warnings: list[str] = []
    status = desc.status or WorkflowExecutionStatus.RUNNING
    outcome: ChaosOutcome | None
    outcome, reason = _CLOSED_OUTCOME.get(status, (ChaosOutcome.FAILED, status.name.lower()))
    if status == WorkflowExecutionStatus.RUNNING:
        # Still open in Temporal, and no worker answered: how it ends is not known yet.
        outcome, reason = None, "still running in Temporal, but no worker answered"
    data: ChaosExperimentInput | None = None
    scheduled: dict[int, str] = {}
    completed: dict[str, list[tuple[datetime, Any]]] = {}
    closed_at = desc.close_time
    for ev in events:
        if ev.HasField("workflow_execution_started_event_attributes"):
            data = await _decode(
                client, ev.workflow_execution_started_event_attributes.input, ChaosExperimentInput
            )
        elif ev.HasField("activity_task_scheduled_event_attributes"):
            scheduled[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        elif ev.HasField("activity_task_completed_event_attributes"):
            attrs = ev.activity_task_completed_event_attributes
            name = scheduled.get(attrs.scheduled_event_id, "")
            completed.setdefault(name, []).append((_at(ev), attrs.result))
        elif ev.HasField("workflow_execution_terminated_event_attributes"):
            why = ev.workflow_execution_terminated_event_attributes.reason
            reason = f"terminated{': ' + why if why else ''}"
            closed_at = _at(ev)
        elif ev.HasField("workflow_execution_failed_event_attributes"):
            failure = ev.workflow_execution_failed_event_attributes.failure
            reason = f"workflow failed: {failure.message}" if failure.message else reason
            closed_at = _at(ev)
        elif ev.WhichOneof("attributes") in _ENDED:
            closed_at = _at(ev)
    if data is None:
        raise ValueError(f"{experiment_id}: no workflow input in its history")
    s = data.scenario
    ended = closed_at or datetime.now(UTC)
    base: ChaosReport | None = None
    try:
        base = await handle.query(
            QUERY_REPORT, result_type=ChaosReport, rpc_timeout=STATUS_QUERY_TIMEOUT
        )
    except Exception:  # no worker, or it could not answer: history alone
        warnings.append("no worker answered: phases and health from history are missing")
    if base is None:
        base = ChaosReport(
            experiment_id=experiment_id,
            name=s.name,
            chaos_type=s.chaos_type,
            target=s.target,
            blast_radius=list(s.blast_radius),
            dry_run=s.dry_run,
            requested_duration_s=s.duration_s,
            effective_duration_s=s.duration_s,
            started_at=desc.start_time,
            ended_at=ended,
        )
    ttl_s = 15.0
    for _, payload in completed.get("validate_chaos_scenario", [])[-1:]:
        checked = await _decode(client, payload, ValidateScenarioResult)
        ttl_s = checked.lease_ttl_s
        base.effective_duration_s = checked.effective_duration_s
    injected_at = base.injected_at
    for at, payload in completed.get("inject_fault", [])[-1:]:
        result = await _decode(client, payload, InjectFaultResult)
        if result.injected:
            injected_at = injected_at or at
            base.instances_guarding = result.instances_guarding
    renewed = [at for at, _ in completed.get("renew_fault_lease", [])]
    removals = completed.get("remove_fault", [])
    cleanup = base.cleanup
    # A dry run has an injection time (its timer ran) but never a lease.
    leased = injected_at is not None and not s.dry_run
    if leased and injected_at is not None and not cleanup.attempted:
        cleanup = await _rebuild_cleanup(
            client, experiment_id, removals, renewed, injected_at, ttl_s, plane, warnings
        )
    elif not leased and not cleanup.attempted:
        cleanup = CleanupRecord(attempted=True, method="nothing_injected", at=ended)
    impact_needed = leased and not base.calls_seen and not base.calls_affected
    if impact_needed and plane is not None:
        try:
            impact = await plane.impact(experiment_id)
            base.calls_affected, base.calls_seen = impact.affected, impact.seen
            base.breakers_opened = impact.breakers
            base.breaker_openings, base.calls_refused = impact.openings, impact.refused
            base.instances_saw_fault = instances_that_saw(
                impact.seen, impact.affected, impact.breakers
            )
        except Exception as exc:
            warnings.append(f"impact not read from Redis: {type(exc).__name__}: {exc}")
    end = cleanup.fault_ended_at
    phases = [p.model_copy() for p in base.phases]
    if outcome is not None and phases and not phases[-1].phase.terminal:
        # The run stopped in this phase: close it, and end where the workflow did.
        phases[-1].left_at = phases[-1].left_at or ended
        phases.append(PhaseRecord(phase=ChaosPhase(outcome.value), entered_at=ended))
    return base.model_copy(
        update={
            "phases": phases,
            "outcome": outcome,
            "reason": reason,
            "ended_at": ended,
            "injected_at": injected_at,
            "removed_at": (base.removed_at or cleanup.at) if leased else base.removed_at,
            "cleanup": cleanup,
            "fault_active_s": (
                round(max(0.0, (end - injected_at).total_seconds()), 3)
                if end is not None and leased and injected_at is not None
                else base.fault_active_s
            ),
            "warnings": [
                *base.warnings,
                (
                    "rebuilt from history and Redis: the workflow still runs in Temporal, "
                    "but no worker answered"
                    if status == WorkflowExecutionStatus.RUNNING
                    else f"rebuilt from history and Redis: the workflow ended {status.name} "
                    "without a report"
                ),
                *warnings,
            ],
            "rebuilt": True,
        }
    )


async def _rebuild_cleanup(
    client: Client,
    experiment_id: str,
    removals: list[tuple[datetime, Any]],
    renewed: list[datetime],
    injected_at: datetime,
    ttl_s: float,
    plane: FaultPlane | None,
    warnings: list[str],
) -> CleanupRecord:
    """What happened to the lease of an experiment that ended without cleaning up."""
    for at, payload in removals[-1:]:
        result = await _decode(client, payload, RemoveFaultResult)
        return CleanupRecord(
            attempted=True,
            lease_removed=result.removed,
            method="removed" if result.removed else "already_gone",
            at=at,
            confirmed=True,
            fault_ended_at=at,
            detail="from the workflow's history",
        )
    guardian = client.get_workflow_handle(f"{experiment_id}-guardian", result_type=GuardianResult)
    try:
        gdesc = await guardian.describe()
        if gdesc.status == WorkflowExecutionStatus.COMPLETED:
            done = await guardian.result()
            if done.removed:
                at = gdesc.close_time or datetime.now(UTC)
                return CleanupRecord(
                    attempted=True,
                    lease_removed=True,
                    method="removed",
                    at=at,
                    confirmed=True,
                    fault_ended_at=at,
                    detail=f"removed by the guardian ({done.reason})",
                )
    except Exception as exc:
        warnings.append(f"guardian not read: {type(exc).__name__}: {exc}")
    # Nobody removed it: it expired with its lease, the TTL after the last write.
    last = max([injected_at, *renewed])
    expiry = last + timedelta(seconds=ttl_s)
    confirmed: bool | None = None
    detail = "expired with its lease TTL (no removal in history)"
    if plane is not None:
        try:
            left_ms = await plane.lease_ttl_ms(experiment_id)
            confirmed = left_ms is None
            if left_ms is not None:
                expiry = datetime.now(UTC) + timedelta(milliseconds=left_ms)
                detail = f"the lease is still in Redis: it expires in {left_ms / 1000:.1f}s"
        except Exception as exc:
            warnings.append(f"lease not read from Redis: {type(exc).__name__}: {exc}")
    return CleanupRecord(
        attempted=True,
        lease_removed=False,
        method="expired",
        at=expiry,
        confirmed=confirmed,
        fault_ended_at=expiry,
        detail=detail,
    )
