"""The chaos controller's client: start, find and stop experiments, halt and resume the fleet.

For the CLI, the demo and Python users alike; every operation returns a result model.

- One experiment: :func:`start_experiment`, :func:`find_experiment`,
  :func:`query_status`, :func:`stop_experiment`.
- The fleet: :func:`stop_all_experiments` (the halt switch, ``emergency_stop`` to every
  running experiment, the schedules paused), :func:`resume_fleet`.
- Game-day schedules: :mod:`antifragile.chaos.schedules`; reports of experiments that
  ended without one: :mod:`antifragile.chaos.report`.

temporalio is imported only by the functions that talk to Temporal, never at import
time: :func:`stop_all_experiments` writes the halt switch before temporalio (~0.3 s of
imports) is loaded, so the emergency stop reaches Redis as soon as the process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from antifragile.chaos.plane import FaultPlane
from antifragile.constants import (
    CHAOS_WORKFLOW_TYPE,
    KIND_CHAOS,
    QUERY_STATUS,
    SIGNAL_EMERGENCY_STOP,
    chaos_workflow_id,
)
from antifragile.errors import AntifragileError
from antifragile.models.chaos import (
    ChaosExperimentInput,
    ChaosReport,
    ChaosStatus,
    EmergencyStopSignal,
)
from antifragile.models.chaos_fleet import (
    CLEANED_PHASES,
    SCHEDULE_PREFIX,
    FleetStopResult,
    ResumeResult,
    StopResult,
    TemporalStop,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle

RUNNING_QUERY = f'AfKind="{KIND_CHAOS}" AND ExecutionStatus="Running"'
"""Visibility query of every running chaos experiment."""

HALT_NOTE = "paused by the chaos halt switch"
"""Start of the note of every schedule the halt switch paused (``resume`` unpauses those)."""

REDIS_TIMEOUT_S = 3.0
"""Longest wait for Redis in a fleet operation: an emergency path never hangs on it."""

HALT_FIRST_S = 0.5
""":func:`stop_all_experiments`: longest wait for the halt write before temporalio loads."""

STATUS_QUERY_TIMEOUT = timedelta(seconds=3)
"""How long a ``status`` or ``report`` query waits for a worker before giving up."""


class ExperimentNotFoundError(AntifragileError):
    """No chaos experiment has that id (or the workflow is not a chaos experiment)."""


class ExperimentNotRunningError(AntifragileError):
    """The experiment has ended: there is nothing left to stop or decide."""


def new_experiment_id(scenario: ChaosScenario) -> str:
    """A fresh workflow id ``chaos-{name}-{8 hex}`` (never reused: leases key on it)."""
    return chaos_workflow_id(scenario.name, uuid.uuid4().hex[:8])


def experiment_summary(scenario: ChaosScenario) -> str:
    """The one-line summary the Temporal UI shows for an experiment."""
    dry = " (dry run)" if scenario.dry_run else ""
    return (
        f"Chaos {scenario.chaos_type.value} on {scenario.target} for {scenario.duration_s:g}s"
        f" — {scenario.parameters_description()}{dry}"
    )


def experiment_details(scenario: ChaosScenario) -> str:
    """The static details (Markdown) the Temporal UI shows for an experiment."""
    s = scenario
    lines = [
        f"**Experiment:** {s.name}" + (f" — {s.description}" if s.description else ""),
        f"**Fault:** {s.chaos_type.value}: {s.parameters_description()}",
        f"**Blast radius:** {', '.join(s.blast_radius)} ({s.instances_description})",
        f"**Duration:** {s.duration_s:g}s (cap {s.max_duration_s:g}s)",
        f"**Health guard:** abort below {s.abort_below_health:g}"
        + (f"; steady-state probe {s.steady_state_probe}" if s.steady_state_probe else ""),
        f"**Approval:** {'required' if s.require_approval else 'not required'}",
        f"**Requested by:** {s.requested_by or '-'}",
        "Signals: `emergency_stop` {reason, by}, `approve`/`reject` {approver, note}; "
        "query `status`.",
    ]
    return "\n\n".join(lines)


async def start_experiment(
    client: Client,
    scenario: ChaosScenario,
    *,
    task_queue: str,
    experiment_id: str | None = None,
) -> WorkflowHandle[Any, ChaosReport]:
    """Start a ChaosExperimentWorkflow for ``scenario``; returns its handle."""
    workflow_id = experiment_id or new_experiment_id(scenario)
    return await client.start_workflow(
        CHAOS_WORKFLOW_TYPE,
        ChaosExperimentInput(scenario=scenario, experiment_id=workflow_id),
        id=workflow_id,
        task_queue=task_queue,
        result_type=ChaosReport,
        static_summary=experiment_summary(scenario),
        static_details=experiment_details(scenario),
    )


# --- one experiment ------------------------------------------------------------------


async def experiment_handle(client: Client, experiment_id: str) -> WorkflowHandle[Any, ChaosReport]:
    """The handle of the chaos experiment ``experiment_id``.

    Raises:
        ExperimentNotFoundError: no workflow has that id, or it is not a chaos experiment.
    """
    from temporalio.service import RPCError, RPCStatusCode

    handle = client.get_workflow_handle(experiment_id, result_type=ChaosReport)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ExperimentNotFoundError(f"no chaos experiment {experiment_id!r}") from None
        raise
    kind = desc.search_attributes.get("AfKind")
    if kind and KIND_CHAOS not in kind:
        raise ExperimentNotFoundError(f"{experiment_id!r} is not a chaos experiment")
    return handle


async def find_experiment(
    client: Client, experiment_id: str
) -> tuple[WorkflowHandle[Any, ChaosReport], WorkflowExecutionDescription]:
    """The handle and description of the chaos experiment ``experiment_id``.

    A workflow terminated before its first task has no ``AfKind`` yet: its type decides.

    Raises:
        ExperimentNotFoundError: no workflow has that id, or it is not a chaos experiment.
    """
    handle = await experiment_handle(client, experiment_id)
    desc = await handle.describe()
    if desc.workflow_type != CHAOS_WORKFLOW_TYPE:
        raise ExperimentNotFoundError(
            f"{experiment_id!r} is not a chaos experiment (workflow type {desc.workflow_type})"
        )
    return handle, desc


async def query_status(
    handle: WorkflowHandle[Any, Any], *, rpc_timeout: timedelta | None = None
) -> ChaosStatus | None:
    """The experiment's ``status`` query; None when no worker answers (a lost worker).

    Args:
        handle: The experiment's workflow handle.
        rpc_timeout: How long to wait for an answer; None: the client's default.
    """
    from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
    from temporalio.service import RPCError

    try:
        status: ChaosStatus = await handle.query(
            QUERY_STATUS, result_type=ChaosStatus, rpc_timeout=rpc_timeout
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    return status


async def wait_cleaned(handles: list[WorkflowHandle[Any, Any]], timeout_s: float) -> list[str]:
    """Wait until every experiment's fault is gone (or it ended).

    Args:
        handles: The experiments' handles.
        timeout_s: Longest wait, seconds.

    Returns:
        The ids of those still not cleaned up, sorted.
    """
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    pending = {h.id: h for h in handles}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending and asyncio.get_running_loop().time() < deadline:
        for wid, h in list(pending.items()):
            try:
                desc = await h.describe()
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    del pending[wid]
                    continue
                st: ChaosStatus = await h.query(QUERY_STATUS, result_type=ChaosStatus)
                if st.phase in CLEANED_PHASES:
                    del pending[wid]
            except RPCError:
                continue
        if pending:
            await asyncio.sleep(0.2)
    return sorted(pending)


async def stop_experiment(
    client: Client, experiment_id: str, signal: EmergencyStopSignal, *, wait_s: float
) -> StopResult:
    """Emergency-stop one experiment: signal ``emergency_stop``, wait for its cleanup.

    Args:
        client: A Temporal client (pydantic data converter).
        experiment_id: The experiment's workflow id.
        signal: Why, and who stops it (kept in its report).
        wait_s: Longest wait for the fault to be gone, seconds.

    Returns:
        Whether it cleaned up within ``wait_s``, and whether anything had been injected.

    Raises:
        ExperimentNotFoundError: no such chaos experiment.
        ExperimentNotRunningError: it has already ended.
    """
    from temporalio.client import WorkflowExecutionStatus

    handle = await experiment_handle(client, experiment_id)
    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.RUNNING:
        state = desc.status.name.lower() if desc.status else "unknown"
        raise ExperimentNotRunningError(f"{experiment_id} is not running ({state})")
    await handle.signal(SIGNAL_EMERGENCY_STOP, signal)
    if await wait_cleaned([handle], wait_s):
        return StopResult(experiment_id=experiment_id, cleaned=False)
    st = await query_status(handle)
    if st is None:
        return StopResult(experiment_id=experiment_id, cleaned=True)
    return StopResult(
        experiment_id=experiment_id,
        cleaned=True,
        injected=st.injected_at is not None and not st.injection_failed,
        injection_failed=st.injection_failed or "",
    )


# --- the fleet -----------------------------------------------------------------------


async def chaos_schedule_ids(client: Client) -> list[str]:
    """The ids of every chaos schedule."""
    return [s.id async for s in await client.list_schedules() if s.id.startswith(SCHEDULE_PREFIX)]


async def pause_schedules(client: Client, reason: str) -> int:
    """Pause every running chaos schedule for the halt switch; returns how many."""
    count = 0
    for sid in await chaos_schedule_ids(client):
        handle = client.get_schedule_handle(sid)
        desc = await handle.describe()
        if not desc.schedule.state.paused:
            await handle.pause(note=f"{HALT_NOTE}: {reason}")
            count += 1
    return count


async def unpause_schedules(client: Client) -> int:
    """Unpause the chaos schedules the halt switch paused; returns how many."""
    count = 0
    for sid in await chaos_schedule_ids(client):
        handle = client.get_schedule_handle(sid)
        desc = await handle.describe()
        if desc.schedule.state.paused and (desc.schedule.state.note or "").startswith(HALT_NOTE):
            await handle.unpause(note="chaos halt switch cleared")
            count += 1
    return count


def _load_temporal() -> None:
    """Import what the Temporal path needs (~0.3 s): run in a thread by the fleet stop."""
    import temporalio.client  # noqa: F401

    import antifragile.temporal_client  # noqa: F401


async def _close_quietly(plane: FaultPlane) -> None:
    with contextlib.suppress(Exception):
        await plane.close()


async def _write_halt(
    settings: Settings, plane: FaultPlane | None, reason: str, by: str
) -> BaseException | None:
    """Set the halt switch; returns why it could not (None when it was written)."""
    own = plane is None
    plane = plane or FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    try:
        await asyncio.wait_for(plane.set_halt(reason, by=by), REDIS_TIMEOUT_S)
        return None
    except Exception as exc:  # an emergency path: whatever failed, the Temporal path runs on
        return exc
    finally:
        if own:
            await _close_quietly(plane)


async def _stop_through_temporal(
    settings: Settings, signal: EmergencyStopSignal, wait_s: float, halt_written: asyncio.Event
) -> TemporalStop:
    """Pause the chaos schedules and signal ``emergency_stop`` to every running experiment.

    temporalio is imported once the halt switch's write ended (either way), or after
    :data:`HALT_FIRST_S`, whichever comes first: a reachable Redis gets the switch
    ~0.3 s sooner, and a hung one delays Temporal by at most that much. Never raises for
    an unreachable or failing server: what was not done is in the result.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(halt_written.wait(), HALT_FIRST_S)
    try:
        # In a thread: the event loop (a Redis write still going) keeps running meanwhile.
        await asyncio.to_thread(_load_temporal)
        from antifragile.temporal_client import connect

        client = await connect(settings)
    except Exception as exc:  # e.g. an unreadable TLS file: the halt switch still goes out
        return TemporalStop(reached=False, connect_error=exc)
    from temporalio.service import RPCError, RPCStatusCode

    handles: list[WorkflowHandle[Any, Any]] = []
    not_signalled: dict[str, BaseException] = {}
    list_error: BaseException | None = None
    schedules_error: BaseException | None = None
    paused = 0

    async def _pause() -> None:
        nonlocal paused, schedules_error
        try:
            paused = await pause_schedules(client, signal.reason)
        except Exception as exc:
            schedules_error = exc

    async def _signal(wf_id: str, run_id: str | None) -> None:
        h = client.get_workflow_handle(wf_id, run_id=run_id)
        try:
            await h.signal(SIGNAL_EMERGENCY_STOP, signal)
        except Exception as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                return  # it ended meanwhile
            not_signalled[wf_id] = exc
            return
        handles.append(h)

    async def _stop_running() -> None:
        nonlocal list_error
        try:
            running = [wf async for wf in client.list_workflows(RUNNING_QUERY, limit=1000)]
        except Exception as exc:
            list_error = exc
            return
        # All at once: the stop reaches the last experiment as soon as the first.
        await asyncio.gather(*(_signal(wf.id, wf.run_id) for wf in running))

    # Schedules are paused alongside, never ahead of the experiments' stop.
    await asyncio.gather(_stop_running(), _pause())
    left = await wait_cleaned(handles, wait_s)
    return TemporalStop(
        reached=list_error is None,
        list_error=list_error,
        signalled=[h.id for h in handles],
        not_signalled=not_signalled,
        left=left,
        schedules_paused=paused,
        schedules_error=schedules_error,
    )


async def stop_all_experiments(
    settings: Settings,
    signal: EmergencyStopSignal,
    *,
    wait_s: float = 60.0,
    plane: FaultPlane | None = None,
) -> FleetStopResult:
    """Emergency stop of the whole fleet: the halt switch and Temporal, independently.

    The halt switch (Redis) alone ends every fault at every call site and refuses new
    injections; through Temporal every running experiment is signalled
    ``emergency_stop`` (it removes its fault and reports) and the chaos schedules are
    paused. Either one alone still stops the faults: with one server unreachable the
    other is still done, and the result says what was not.

    Args:
        settings: The Redis URL and Temporal connection.
        signal: Why, and who stops (the halt switch and every report keep it).
        wait_s: Longest wait for the signalled experiments to clean up, seconds.
            Default 60.
        plane: The fault plane to write the halt switch on; default a new one on
            ``settings.redis_url`` (closed afterwards).

    Returns:
        What was done and not done; never raises for an unreachable server.
    """
    halt_written = asyncio.Event()

    async def _halt() -> BaseException | None:
        try:
            return await _write_halt(settings, plane, signal.reason, signal.by)
        finally:
            halt_written.set()

    halt_error, temporal = await asyncio.gather(
        _halt(), _stop_through_temporal(settings, signal, wait_s, halt_written)
    )
    return FleetStopResult(halt_error=halt_error, temporal=temporal, wait_s=wait_s)


async def resume_fleet(settings: Settings, *, plane: FaultPlane | None = None) -> ResumeResult:
    """Clear the halt switch, then resume the chaos schedules it paused.

    Args:
        settings: The Redis URL and Temporal connection.
        plane: The fault plane; default a new one on ``settings.redis_url`` (closed
            afterwards).

    Returns:
        Whether the switch was set, and how many schedules run again; with Temporal
        unreachable the switch is still cleared and ``schedules_error`` says why the
        schedules were not resumed.

    Raises:
        redis.exceptions.RedisError, OSError: Redis did not answer within
            :data:`REDIS_TIMEOUT_S`: nothing was done.
    """
    from temporalio.service import RPCError

    from antifragile.temporal_client import TemporalUnavailableError, connect

    own = plane is None
    plane = plane or FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    try:
        was = await asyncio.wait_for(plane.clear_halt(), REDIS_TIMEOUT_S)
    finally:
        if own:
            await _close_quietly(plane)
    try:
        client = await connect(settings)
        resumed = await unpause_schedules(client)
    except (TemporalUnavailableError, RPCError) as exc:
        return ResumeResult(halt_was_set=was, schedules_error=exc)
    return ResumeResult(halt_was_set=was, schedules_resumed=resumed)
