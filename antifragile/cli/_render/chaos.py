"""What the chaos commands print: tables and one-line summaries of result models.

A command parses its input, calls a client function and hands the result here.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table

from antifragile.chaos.client import query_status
from antifragile.cli._common import (
    connection_reason,
    console,
    display_url,
    err_console,
    fail,
    redis_unreachable,
)
from antifragile.learning.histogram import describe
from antifragile.models.chaos import ChaosOutcome, ChaosReport, ChaosStatus, ExperimentLearning
from antifragile.models.chaos_fleet import (
    FleetStopResult,
    ResumeResult,
    ScheduleCreated,
    ScheduleInfo,
    StopResult,
    TemporalStop,
)
from antifragile.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

LEDGER_TIMEOUT_S = 10.0
"""Seconds ``chaos report`` waits for the target's ledger before printing without it (as
``advise``: a busy worker answers a query late)."""


async def experiment_learning(
    client: Client, report: ChaosReport, timeout_s: float = LEDGER_TIMEOUT_S
) -> ExperimentLearning:
    """The experiment's observation and the advice, from the ledger ``profile-{target}``.

    Never raises for a missing or silent ledger: the ``note`` says what is missing.

    Args:
        client: A Temporal client (pydantic data converter).
        report: The experiment's report (its id and target).
        timeout_s: How long the ledger may take to answer, seconds. Default
            :data:`LEDGER_TIMEOUT_S` (a ledger whose task queue has no worker never does).
    """
    from datetime import timedelta

    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError, RPCStatusCode

    from antifragile.constants import profile_workflow_id
    from antifragile.learning.client import get_profile
    from antifragile.models.learning import ExperimentObservation

    target = report.target
    ledger = profile_workflow_id(target)
    try:
        view = await asyncio.wait_for(
            get_profile(client, target, rpc_timeout=timedelta(seconds=timeout_s)),
            timeout_s + 1,
        )
    except (TimeoutError, RPCError, WorkflowQueryFailedError) as exc:
        # The SDK reports its own rpc_timeout as CANCELLED "Timeout expired".
        silent = isinstance(exc, TimeoutError) or (
            isinstance(exc, RPCError)
            and exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)
        )
        why = (
            f"did not answer within {timeout_s:g} s (no worker on its task queue?)"
            if silent
            else f"failed: {exc}"
        )
        return ExperimentLearning(dependency=target, note=f"ledger {ledger} {why}"[:300])
    if view is None:
        return ExperimentLearning(dependency=target, note=f"no ledger {ledger} yet")
    mine = [
        o
        for o in view.observations
        if isinstance(o, ExperimentObservation) and o.source_id == report.experiment_id
    ]
    note = "" if mine else f"{ledger} holds no observation of this experiment"
    return ExperimentLearning(
        dependency=target,
        observation=mine[0] if mine else None,
        advice=view.advice,
        note=note,
        fault_latency=describe(mine[0].latency) if mine else "-",
    )


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{max(0.0, (end - start).total_seconds()):g}s"


def _learning(learning: ExperimentLearning | None) -> None:
    if learning is None:
        return
    head = Table.grid(padding=(0, 2))
    o = learning.observation
    if o is not None:
        head.add_row("time to detect", _seconds(o.fault_start, o.detected_at))
        head.add_row("time to recover", _seconds(o.fault_end, o.recovered_at))
        head.add_row("calls failed / refused", f"{o.calls_failed} / {o.calls_refused}")
        head.add_row("latency under the fault", learning.fault_latency)
    if learning.note:
        head.add_row("note", f"[yellow]{learning.note}[/yellow]")
    console.print(f"learned (ledger of {learning.dependency})")
    console.print(head)
    if learning.advice:
        table = Table(title="advice", title_justify="left")
        for col in ("setting", "current", "recommended", "reason"):
            table.add_column(col)
        for a in learning.advice:
            table.add_row(
                a.setting,
                "-" if a.current is None else f"{a.current:g}",
                "-" if a.recommended is None else f"{a.recommended:g}",
                a.reason,
            )
        console.print(table)


def _t(value: datetime | None) -> str:
    return f"{value:%H:%M:%S}" if value else "-"


def render_status(status: ChaosStatus, settings: Settings) -> None:
    """Print an experiment's status."""
    head = Table.grid(padding=(0, 2))
    head.add_row("experiment", status.experiment_id)
    head.add_row("phase", f"[bold]{status.phase.value}[/bold]")
    params = f": {status.parameters}" if status.parameters else ""  # rebuilt: unknown
    head.add_row("fault", f"{status.chaos_type.value}{params}")
    head.add_row("blast radius", ", ".join(status.blast_radius))
    active = "; ".join(f"{', '.join(f.targets)} on {f.instances}" for f in status.faults_active)
    if status.injection_failed:
        active = f"nothing: injection failed ({status.injection_failed})"
    head.add_row("active", active or "none")
    if status.instances_guarding is not None:
        head.add_row("instances", f"{status.instances_guarding} live instance(s) guard it")
    if status.approval_needed:
        head.add_row(
            "approval",
            f"needed: antifragile chaos approve {status.experiment_id} --by NAME (or chaos reject)",
        )
    head.add_row(
        "time left", f"{status.time_left_s:.0f}s" if status.time_left_s is not None else "-"
    )
    low = status.lowest_health
    head.add_row("lowest health", f"{low:.2f}" if low is not None else "-")
    if status.stop_reason:
        head.add_row("ended", status.stop_reason)
    for w in status.warnings:
        head.add_row("warning", w)
    head.add_row("ui", settings.workflow_url(status.experiment_id))
    console.print(head)
    _events(status.events[-15:])


def _openings(report: ChaosReport) -> str:
    """``instance/target: STATE xN`` for each breaker opening, every one counted.

    A report made before openings were counted has only ``breakers_opened`` (once each).
    """
    counts = report.breaker_openings
    names = sorted(set(report.breakers_opened) | set(counts))
    return ", ".join(f"{n} x{counts[n]}" if counts.get(n, 1) > 1 else n for n in names)


def _events(events: list[Any]) -> None:
    if not events:
        return
    table = Table(title="journal", title_justify="left")
    for col in ("at", "phase", "event"):
        table.add_column(col)
    for e in events:
        table.add_row(_t(e.at), e.phase.value, e.message)
    console.print(table)


def render_report(report: ChaosReport) -> None:
    """Print a chaos report."""
    head = Table.grid(padding=(0, 2))
    outcome = report.outcome.value if report.outcome else "IN PROGRESS"
    colour = "green" if report.outcome is ChaosOutcome.COMPLETED else "red"
    head.add_row("experiment", report.experiment_id + (" (rebuilt)" if report.rebuilt else ""))
    head.add_row("outcome", f"[bold {colour}]{outcome}[/bold {colour}] — {report.reason or '-'}")
    head.add_row("fault", f"{report.chaos_type.value} on {', '.join(report.blast_radius)}")
    head.add_row(
        "duration",
        f"{report.effective_duration_s:g}s planned (requested {report.requested_duration_s:g}s)",
    )
    if report.injection_failed:
        head.add_row("injection", f"[red]failed[/red]: {report.injection_failed}")
    active = report.fault_active_s
    # An expiry Redis has not confirmed yet is the lease's bound, not a measured life.
    bound = report.cleanup.method == "expired" and report.cleanup.confirmed is not True
    if active is None:
        head.add_row("fault active", "-")
    else:
        head.add_row(
            "fault active", f"at most {active:g}s (lease TTL)" if bound else f"{active:g}s"
        )
    # Nothing was written: the cleanup's time is not a removal.
    removed = None if report.injected_at is None else report.removed_at
    head.add_row("injected / removed", f"{_t(report.injected_at)} / {_t(removed)}")
    confirmed = {True: "; confirmed", False: "; NOT confirmed", None: ""}[report.cleanup.confirmed]
    head.add_row(
        "cleanup",
        report.cleanup.method
        + confirmed
        + (f" ({report.cleanup.detail})" if report.cleanup.detail else ""),
    )
    if report.instances_guarding is not None or report.instances_saw_fault is not None:
        guarding = report.instances_guarding
        saw = report.instances_saw_fault
        head.add_row(
            "instances",
            f"{'-' if guarding is None else guarding} guarding at injection, "
            f"{'-' if saw is None else saw} counted calls under the fault",
        )
    low = report.health_lowest
    head.add_row("lowest health", f"{low:.2f}" if low is not None else "-")
    ttr = report.time_to_recover_s
    if ttr is not None:
        head.add_row("time to recover", f"{ttr:g}s")
    elif report.health_dropped is False:
        head.add_row("time to recover", "- (health never dropped)")
    else:
        head.add_row("time to recover", "-")
    affected = ", ".join(f"{k}: {v}" for k, v in sorted(report.calls_affected.items()))
    head.add_row("calls affected", affected or "-")
    if report.calls_refused:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(report.calls_refused.items()))
        head.add_row("calls refused", f"{refused} (breaker open or concurrency limit)")
    head.add_row("breakers opened", _openings(report) or "-")
    recs = ", ".join(f"{r.workflow_id} {r.status} {r.state}" for r in report.recovery_workflows)
    head.add_row("recoveries", recs or "-")
    for w in report.warnings:
        head.add_row("warning", f"[yellow]{w}[/yellow]")
    console.print(head)
    phases = Table(title="phases", title_justify="left")
    for col in ("phase", "entered", "left"):
        phases.add_column(col)
    for p in report.phases:
        phases.add_row(p.phase.value, _t(p.entered_at), _t(p.left_at))
    console.print(phases)
    _events(report.events[-20:])
    _learning(report.learning)


def render_experiments(rows: list[dict[str, Any]]) -> None:
    """Print the table of ``chaos list`` (one line when there is none)."""
    if not rows:
        console.print("no chaos experiments")
        return
    table = Table()
    for col in ("experiment", "target", "type", "phase", "started", "workflow"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["experiment_id"],
            str(r["target"]),
            str(r["chaos_type"]),
            str(r["phase"]),
            r["started"][:19],
            str(r["workflow_status"]),
        )
    console.print(table)


def stop_words(result: StopResult) -> str:
    """What became of one stopped experiment's fault: never "removed" if none was injected."""
    if result.injected is None:
        return "fault removed or expired (status not readable)"
    if result.injection_failed:
        return f"nothing was injected (injection failed: {result.injection_failed})"
    if not result.injected:
        return "nothing was injected"
    return "fault removed"


def _temporal_why(exc: BaseException) -> str:
    # temporalio is loaded whenever one of its errors exists: never imported here.
    service = sys.modules.get("temporalio.service")
    if service is not None and isinstance(exc, service.RPCError):
        return str(exc.message)
    return connection_reason(exc)


def halt_error_text(result: FleetStopResult, settings: Settings) -> str:
    """Why the halt switch was not written (``""`` when it was)."""
    exc = result.halt_error
    if exc is None:
        return ""
    from antifragile.cli._common import is_redis_connection_error

    if is_redis_connection_error(exc):
        return str(redis_unreachable(settings.redis_url, exc))
    return f"Redis at {display_url(settings.redis_url)}: {connection_reason(exc)}"


def temporal_error_text(stop: TemporalStop, settings: Settings) -> str:
    """What the Temporal path of a fleet stop could not do (``""``: it did it all)."""
    if stop.connect_error is not None:
        exc = stop.connect_error
        client_module = sys.modules.get("antifragile.temporal_client")
        if client_module is not None and isinstance(exc, client_module.TemporalUnavailableError):
            return str(exc)
        return f"cannot reach Temporal at {settings.temporal_address}: {exc}"
    problems: list[str] = []
    if stop.list_error is not None:
        problems.append(
            f"running experiments not listed at {settings.temporal_address}: "
            f"{_temporal_why(stop.list_error)}"
        )
    problems += [
        f"{wid} not signalled: {_temporal_why(e)}" for wid, e in stop.not_signalled.items()
    ]
    if stop.schedules_error is not None:
        problems.append(f"schedules not paused: {_temporal_why(stop.schedules_error)}")
    return "; ".join(problems)


def render_fleet_stop(result: FleetStopResult, settings: Settings) -> str:
    """Print what ``stop --all`` did; returns what it did not do (``""``: all done)."""
    t = result.temporal
    done = ["halt switch set" if result.halt_set else "halt switch NOT set"]
    if not t.reached:
        done.append(f"no experiment signalled, {t.schedules_paused} schedule(s) paused")
    else:
        done.append(
            f"{len(t.signalled)} experiment(s) signalled, {t.cleaned} cleaned up; "
            f"{t.schedules_paused} schedule(s) paused"
        )
    console.print("; ".join(done))
    not_done = []
    if not result.halt_set:
        not_done.append(f"halt switch not written ({halt_error_text(result, settings)})")
    temporal_error = temporal_error_text(t, settings)
    if temporal_error:
        not_done.append(temporal_error)
    if t.left:
        not_done.append(
            f"not cleaned up within {result.wait_s:g}s: {', '.join(t.left)} "
            "(their faults still end with their lease TTL at every call site)"
        )
    return "; ".join(not_done)


def render_resume(result: ResumeResult) -> str:
    """Print what ``resume`` did; returns why the schedules were not resumed (or ``""``)."""
    state = "cleared" if result.halt_was_set else "was not set"
    exc = result.schedules_error
    if exc is None:
        console.print(f"halt switch {state}; {result.schedules_resumed} schedule(s) resumed")
        return ""
    console.print(f"halt switch {state}; schedules not resumed")
    message = getattr(exc, "message", None)  # an RPCError's; else the error's own line
    return f"schedules not resumed: {message if isinstance(message, str) else exc}"


def render_schedule_created(created: ScheduleCreated) -> None:
    """Print the line of ``chaos schedule``."""
    console.print(
        f"schedule [bold]{created.schedule_id}[/bold] created ({created.cron})"
        + (" — paused: the halt switch is set" if created.paused_by_halt else "")
    )


def schedule_rows(schedules: list[ScheduleInfo]) -> list[dict[str, Any]]:
    """The rows of ``chaos schedules --json`` (times as ``isoformat()``)."""
    return [
        {
            "name": s.name,
            "schedule_id": s.schedule_id,
            "cron": s.cron,
            "paused": s.paused,
            "note": s.note,
            "next_run": s.next_run.isoformat() if s.next_run else None,
            "runs": s.runs,
        }
        for s in schedules
    ]


def render_schedules(schedules: list[ScheduleInfo]) -> None:
    """Print the table of ``chaos schedules`` (one line when there is none)."""
    if not schedules:
        console.print("no chaos schedules")
        return
    table = Table()
    for col in ("name", "cron", "paused", "next run", "runs", "note"):
        table.add_column(col)
    for r in schedule_rows(schedules):
        table.add_row(
            r["name"],
            r["cron"],
            "yes" if r["paused"] else "no",
            str(r["next_run"] or "-")[:19],
            str(r["runs"]),
            r["note"],
        )
    console.print(table)


def ended_without_report(exc: WorkflowFailureError) -> str:
    """One line for a followed experiment that ended without a report."""
    from temporalio.exceptions import CancelledError, TerminatedError
    from temporalio.exceptions import TimeoutError as WorkflowTimeoutError

    cause = exc.cause
    if isinstance(cause, TerminatedError):
        why = f" ({cause.message})" if cause.message else ""
        what = f"was terminated{why}"
    elif isinstance(cause, WorkflowTimeoutError):
        what = "timed out"
    elif isinstance(cause, CancelledError):
        what = "was cancelled"
    else:
        what = f"failed: {getattr(cause, 'message', None) or cause or exc}"
    return f"{what}; `antifragile chaos report ID` rebuilds its report"


async def follow_experiment(handle: WorkflowHandle[Any, Any], *, quiet: bool) -> ChaosReport:
    """Follow ``chaos start --wait``: phase, time left and health as they change (stderr).

    Args:
        handle: The experiment's workflow.
        quiet: Print nothing while following (``--json``).

    Returns:
        The experiment's final report.

    Raises:
        CommandFailed: (exit 1, one line) the workflow was terminated, failed or timed out
            without a report; ``chaos report ID`` rebuilds one.
    """
    from temporalio.client import WorkflowFailureError

    result = asyncio.ensure_future(handle.result())
    last = ""
    told_approval = False
    while not result.done():
        status = await query_status(handle)
        if status is not None and status.approval_needed and not told_approval:
            told_approval = True
            err_console.print(
                f"approval needed: antifragile chaos approve {handle.id} --by NAME "
                f"(or antifragile chaos reject {handle.id} --by NAME)"
            )
        if status is not None and not quiet:
            left = f"{status.time_left_s:4.0f}s left" if status.time_left_s is not None else ""
            health = f"health {status.last_health:.2f}" if status.last_health is not None else ""
            low = f"(lowest {status.lowest_health:.2f})" if status.lowest_health is not None else ""
            line = "  ".join(x for x in (f"{status.phase.value:<20}", left, health, low) if x)
            if line != last:
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                err_console.print(f"{stamp}  {line}")
                last = line
        await asyncio.wait({result}, timeout=1.0)
    try:
        report = result.result()
    except WorkflowFailureError as exc:
        fail(f"{handle.id} {ended_without_report(exc)}", code=1)
    if not isinstance(report, ChaosReport):
        report = ChaosReport.model_validate(report)
    return report
