"""``antifragile chaos …``: run, follow, stop and schedule chaos experiments.

Exit codes: 0 the experiment COMPLETED (or the command did what it says); 1 it ended
ABORTED, STOPPED or FAILED, or an emergency command did only part of its work (``stop
--all`` or ``resume`` with Redis or Temporal unreachable: it says what it did and did not
do); 2 bad input, a target outside the worker policy, the halt switch set, or a server
the command needs unreachable (one line naming its address).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from antifragile.chaos.logic import cap_duration, policy_refusal
from antifragile.chaos.plane import FaultPlane
from antifragile.cli._common import (
    ServerUnreachable,
    approval_signal,
    connection_reason,
    console,
    display_url,
    err_console,
    fail,
    first_value,
    load_settings,
    parse_duration_s,
    print_json,
    reaching_redis,
    run,
)
from antifragile.constants import (
    KIND_CHAOS,
    SIGNAL_APPROVE,
    SIGNAL_EMERGENCY_STOP,
    SIGNAL_REJECT,
)
from antifragile.models.chaos import (
    ChaosExperimentInput,
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    EmergencyStopSignal,
    HaltStatus,
)
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType, ResourceType, load_scenario
from antifragile.models.common import Decision
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

if TYPE_CHECKING:  # bound at run time by _import_temporal (see there)
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        WorkflowExecutionDescription,
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowHandle,
        WorkflowQueryFailedError,
        WorkflowQueryRejectedError,
    )
    from temporalio.exceptions import CancelledError as CancelledError_
    from temporalio.exceptions import TerminatedError
    from temporalio.exceptions import TimeoutError as TimeoutError_
    from temporalio.service import RPCError, RPCStatusCode

    from antifragile.chaos.client import (
        REBUILD_QUERY_TIMEOUT,
        RUNNING_QUERY,
        WORKFLOW_TYPE,
        experiment_details,
        experiment_summary,
        rebuild_report,
        start_experiment,
    )
    from antifragile.temporal_client import TemporalUnavailableError, connect

_temporal_lock = threading.Lock()


def _import_temporal() -> None:
    """Bind this module's Temporal names (temporalio and the chaos client), once.

    They cost ~0.3 s of imports. Every command but ``stop`` binds them before it runs (the
    group's callback); ``stop --all`` binds them in a thread while it writes the halt
    switch, so the switch is in Redis before temporalio is imported. Thread-safe.
    """
    global Client, Schedule, ScheduleActionStartWorkflow, ScheduleOverlapPolicy
    global SchedulePolicy, ScheduleSpec, WorkflowExecutionStatus, WorkflowFailureError
    global WorkflowExecutionDescription
    global WorkflowHandle, WorkflowQueryFailedError, WorkflowQueryRejectedError
    global CancelledError_, TerminatedError, TimeoutError_, RPCError, RPCStatusCode
    global REBUILD_QUERY_TIMEOUT, RUNNING_QUERY, WORKFLOW_TYPE, experiment_details
    global experiment_summary, rebuild_report, start_experiment
    global TemporalUnavailableError, connect
    with _temporal_lock:
        if "connect" in globals():
            return
        from temporalio.client import (
            Client,
            Schedule,
            ScheduleActionStartWorkflow,
            ScheduleOverlapPolicy,
            SchedulePolicy,
            ScheduleSpec,
            WorkflowExecutionDescription,
            WorkflowExecutionStatus,
            WorkflowFailureError,
            WorkflowHandle,
            WorkflowQueryFailedError,
            WorkflowQueryRejectedError,
        )
        from temporalio.exceptions import CancelledError as CancelledError_
        from temporalio.exceptions import TerminatedError
        from temporalio.exceptions import TimeoutError as TimeoutError_
        from temporalio.service import RPCError, RPCStatusCode

        from antifragile.chaos.client import (
            REBUILD_QUERY_TIMEOUT,
            RUNNING_QUERY,
            WORKFLOW_TYPE,
            experiment_details,
            experiment_summary,
            rebuild_report,
            start_experiment,
        )
        from antifragile.temporal_client import TemporalUnavailableError, connect


app = typer.Typer(
    help="Chaos experiments as durable workflows: run, follow, stop, schedule.",
    no_args_is_help=True,
)


@app.callback()
def _before_command(ctx: typer.Context) -> None:
    # `stop` binds the Temporal names itself, after starting its Redis write (see above).
    if ctx.invoked_subcommand != "stop":
        _import_temporal()


JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
SCHEDULE_PREFIX = "chaos-schedule-"
HALT_NOTE = "paused by the chaos halt switch"
REDIS_TIMEOUT_S = 3.0
"""Longest wait for Redis in a command: an emergency path never hangs on it."""
HALT_FIRST_S = 0.5
"""``stop --all``: longest wait for the halt write before the Temporal path starts."""
CLEANED = frozenset(
    {
        ChaosPhase.VERIFYING_RECOVERY,
        ChaosPhase.COMPLETED,
        ChaosPhase.ABORTED,
        ChaosPhase.STOPPED,
        ChaosPhase.FAILED,
    }
)
"""Phases in which an experiment's fault is gone."""


# --- preparing a scenario ------------------------------------------------------------


def _prepare(settings: Settings, data: dict[str, Any], source: str) -> ChaosScenario:
    """Validate a scenario against the model and the local copy of the worker policy."""
    from antifragile.models.chaos_scenario import parse_scenario

    data.setdefault("constitutional_hash", settings.constitutional_hash)
    scenario = parse_scenario(data, source)
    policy = WorkerPolicy.load(settings.policy_file)
    refusal = policy_refusal(scenario, policy.chaos.allowed_targets, policy.chaos.min_abort_below)
    if refusal:
        fail(f"{source}: {refusal}")
    cap = cap_duration(scenario.duration_s, scenario.max_duration_s, policy.chaos.max_duration_s)
    if cap.warning:
        err_console.print(f"[yellow]warning:[/yellow] {cap.warning}")
    return scenario


def _file_data(path: Path) -> dict[str, Any]:
    # Load once for validation (one clear line on error), then keep the raw fields so the
    # settings' hash fills in only when the file does not name one.
    import json

    import yaml

    load_scenario(path)  # raises ConfigError naming the field
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return dict(raw)


async def _read_halt(settings: Settings) -> HaltStatus:
    """The halt switch; an unreachable Redis is one line naming it (exit 2)."""
    plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    try:
        return await reaching_redis(settings.redis_url, plane.halt_status(), REDIS_TIMEOUT_S)
    finally:
        await _close_quietly(plane)


async def _close_quietly(plane: FaultPlane) -> None:
    with contextlib.suppress(Exception):
        await plane.close()


async def _refuse_if_halted(settings: Settings) -> None:
    halt = await _read_halt(settings)
    if halt.halted:
        fail(
            f"the chaos halt switch is set ({halt.reason or 'no reason'}"
            f"{', by ' + halt.by if halt.by else ''}); run `antifragile chaos resume` first"
        )


# --- run / start ---------------------------------------------------------------------


@app.command("run")
def run_file(
    file: Annotated[Path, typer.Argument(help="Scenario file (.yaml, .yml or .json).")],
    wait: Annotated[bool, typer.Option(help="Follow it live and print the report.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Start the experiment described in FILE."""
    settings = load_settings()
    scenario = _prepare(settings, _file_data(file), f"scenario file {file}")
    run(_launch(settings, scenario, wait, json_out))


@app.command("start")
def start(
    chaos_type: Annotated[
        ChaosType, typer.Option("--type", case_sensitive=False, help="The fault kind.")
    ],
    target: Annotated[str, typer.Option(help="Guarded dependency (guard name).")],
    name: Annotated[str | None, typer.Option(help="Experiment name.")] = None,
    blast_radius: Annotated[
        str, typer.Option(help="Comma-separated targets the fault may touch.")
    ] = "",
    duration: Annotated[str, typer.Option(help="How long, e.g. 30s or 2m.")] = "30s",
    latency_ms: Annotated[int | None, typer.Option(help="LATENCY delay.")] = None,
    jitter_ms: Annotated[int | None, typer.Option(help="LATENCY ± spread.")] = None,
    error_rate: Annotated[float | None, typer.Option(help="ERROR share 0..1.")] = None,
    timeout_ms: Annotated[
        int | None, typer.Option(help="TIMEOUT hang without a guard timeout.")
    ] = None,
    resource_type: Annotated[
        ResourceType | None, typer.Option(case_sensitive=False, help="CONNECTIONS|MEMORY|CPU")
    ] = None,
    resource_level: Annotated[float | None, typer.Option(help="Share held, 0..1.")] = None,
    injection_rate: Annotated[float | None, typer.Option(help="Share of calls affected.")] = None,
    instance_fraction: Annotated[float | None, typer.Option(help="Share of instances.")] = None,
    abort_below: Annotated[float | None, typer.Option(help="Health guard threshold.")] = None,
    require_approval: Annotated[bool, typer.Option(help="Wait for approve.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Every phase, no fault.")] = False,
    allow_unguarded: Annotated[
        bool,
        typer.Option("--allow-unguarded", help="Inject even if no live process guards the target."),
    ] = False,
    by: Annotated[str, typer.Option("--by", help="Who asks.")] = "cli",
    wait: Annotated[bool, typer.Option(help="Follow it live and print the report.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Start an experiment from flags."""
    settings = load_settings()
    data: dict[str, Any] = {
        "name": name or f"{chaos_type.value.lower().replace('_', '-')}-{target}",
        "chaos_type": chaos_type.value,
        "target": target,
        "duration_s": parse_duration_s(duration, "--duration"),
        "require_approval": require_approval,
        "dry_run": dry_run,
        "allow_unguarded": allow_unguarded,
        "requested_by": by,
    }
    if blast_radius:
        data["blast_radius"] = [t.strip() for t in blast_radius.split(",") if t.strip()]
    optional = {
        "latency_ms": latency_ms,
        "jitter_ms": jitter_ms,
        "error_rate": error_rate,
        "timeout_ms": timeout_ms,
        "resource_type": resource_type.value if resource_type else None,
        "resource_level": resource_level,
        "injection_rate": injection_rate,
        "instance_fraction": instance_fraction,
        "abort_below_health": abort_below,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    scenario = _prepare(settings, data, "chaos start")
    run(_launch(settings, scenario, wait, json_out))


async def _launch(settings: Settings, scenario: ChaosScenario, wait: bool, json_out: bool) -> None:
    await _refuse_if_halted(settings)
    client = await connect(settings)
    handle = await start_experiment(client, scenario, task_queue=settings.task_queue)
    url = settings.workflow_url(handle.id, handle.result_run_id)
    if not wait:
        if json_out:
            print_json({"experiment_id": handle.id, "run_id": handle.result_run_id, "url": url})
        else:
            console.print(f"chaos experiment [bold]{handle.id}[/bold] started\n  {url}")
            if (
                scenario.require_approval
                or WorkerPolicy.load(settings.policy_file).chaos.require_approval
            ):
                console.print(
                    f"  it waits for an approval: antifragile chaos approve {handle.id} --by NAME"
                )
        return
    if not json_out:
        err_console.print(f"following {handle.id} … {url}")
    report = await _follow(handle, quiet=json_out)
    _finish(report, json_out)


async def _follow(handle: WorkflowHandle[Any, Any], *, quiet: bool) -> ChaosReport:
    """Print phase, time left and health as they change; return the final report.

    Raises:
        CommandFailed: (exit 1, one line) the workflow was terminated, failed or timed out
            without a report; ``chaos report ID`` rebuilds one.
    """
    result = asyncio.ensure_future(handle.result())
    last = ""
    told_approval = False
    while not result.done():
        try:
            status: ChaosStatus | None = await handle.query("status", result_type=ChaosStatus)
        except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
            status = None
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
        fail(f"{handle.id} {_ended_without_report(exc)}", code=1)
    if not isinstance(report, ChaosReport):
        report = ChaosReport.model_validate(report)
    return report


def _ended_without_report(exc: WorkflowFailureError) -> str:
    """One line for a followed experiment that ended without a report."""
    cause = exc.cause
    if isinstance(cause, TerminatedError):
        why = f" ({cause.message})" if cause.message else ""
        what = f"was terminated{why}"
    elif isinstance(cause, TimeoutError_):
        what = "timed out"
    elif isinstance(cause, CancelledError_):
        what = "was cancelled"
    else:
        what = f"failed: {getattr(cause, 'message', None) or cause or exc}"
    return f"{what}; `antifragile chaos report ID` rebuilds its report"


def _finish(report: ChaosReport, json_out: bool) -> None:
    if json_out:
        print_json(report)
    else:
        render_report(report)
    if report.outcome is None:
        where = report.reason or (f"phase {report.phases[-1].phase.value}" if report.phases else "")
        fail(f"{report.experiment_id} has not ended yet ({where})", code=1)
    if report.outcome is not ChaosOutcome.COMPLETED:
        fail(f"{report.experiment_id} ended {report.outcome.value}: {report.reason}", code=1)


# --- rendering -----------------------------------------------------------------------


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


# --- inspecting ----------------------------------------------------------------------


async def _handle(client: Client, experiment_id: str) -> WorkflowHandle[Any, Any]:
    handle = client.get_workflow_handle(experiment_id, result_type=ChaosReport)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"no chaos experiment {experiment_id!r}")
        raise
    kind = desc.search_attributes.get("AfKind")
    if kind and KIND_CHAOS not in kind:
        fail(f"{experiment_id!r} is not a chaos experiment")
    return handle


@app.command("list")
def list_(
    running: Annotated[bool, typer.Option("--running", help="Only running ones.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """List chaos experiments, newest first."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        query = RUNNING_QUERY if running else f'AfKind="{KIND_CHAOS}"'
        rows: list[dict[str, Any]] = []
        async for wf in client.list_workflows(query, limit=200):
            sa = wf.search_attributes
            rows.append(
                {
                    "experiment_id": wf.id,
                    "target": first_value(sa.get("AfService")),
                    "chaos_type": first_value(sa.get("AfChaosType")),
                    "phase": first_value(sa.get("AfState")),
                    "workflow_status": wf.status.name if wf.status else None,
                    "started": wf.start_time.isoformat(),
                }
            )
        if json_out:
            print_json(rows)
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

    run(_go())


@app.command("status")
def status(experiment_id: str, json_out: JsonFlag = False) -> None:
    """Phase, time left, where the fault is active, lowest health, journal."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle, desc = await _experiment(client, experiment_id)
        st: ChaosStatus | None = None
        if desc.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            st = await _query_status(handle)
        if st is None:
            # Ended without a report (its last phase is stale), or no worker answers:
            # say how it really ended, or that it is still running.
            st = _status_of(await _rebuilt(client, settings, experiment_id))
        if json_out:
            print_json(st)
        else:
            render_status(st, settings)

    run(_go())


@app.command("report")
def report(experiment_id: str, json_out: JsonFlag = False) -> None:
    """The experiment's report (so far, if it still runs). Exit 1 unless COMPLETED."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle, desc = await _experiment(client, experiment_id)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            rep: ChaosReport = await handle.result()
        elif desc.status == WorkflowExecutionStatus.RUNNING:
            try:
                rep = await handle.query(
                    "report", result_type=ChaosReport, rpc_timeout=REBUILD_QUERY_TIMEOUT
                )
            except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
                rep = await _rebuilt(client, settings, experiment_id)  # a lost worker
        else:  # terminated, failed, timed out: rebuilt from history and Redis
            rep = await _rebuilt(client, settings, experiment_id)
        _finish(rep, json_out)

    run(_go())


async def _experiment(
    client: Client, experiment_id: str
) -> tuple[WorkflowHandle[Any, Any], WorkflowExecutionDescription]:
    """The handle and description of a chaos experiment; anything else is one line, exit 2.

    A workflow terminated before its first task has no ``AfKind`` yet: its type decides.
    """
    handle = await _handle(client, experiment_id)
    desc = await handle.describe()
    if desc.workflow_type != WORKFLOW_TYPE:
        fail(f"{experiment_id!r} is not a chaos experiment (workflow type {desc.workflow_type})")
    return handle, desc


async def _query_status(handle: WorkflowHandle[Any, Any]) -> ChaosStatus | None:
    """The ``status`` query, or None when no worker answers in time (a lost worker)."""
    try:
        status: ChaosStatus = await handle.query(
            "status", result_type=ChaosStatus, rpc_timeout=REBUILD_QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None
    return status


async def _rebuilt(client: Client, settings: Settings, experiment_id: str) -> ChaosReport:
    plane = FaultPlane.from_url(settings.redis_url, timeout_s=3.0)
    try:
        return await rebuild_report(client, experiment_id, plane=plane)
    except ValueError as exc:  # pydantic's ValidationError too: not an experiment's input
        fail(f"{experiment_id}: no chaos experiment input in its history ({type(exc).__name__})")
    finally:
        await plane.close()


def _status_of(report: ChaosReport) -> ChaosStatus:
    """A status line-up of an ended experiment, from its (rebuilt) report."""
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


# --- approving -----------------------------------------------------------------------


def _decide(experiment_id: str, by: str, note: str, decision: Decision) -> None:
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle, desc = await _experiment(client, experiment_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            ended = desc.status.name if desc.status else "closed"
            fail(f"nothing awaits approval in {experiment_id} (it has ended: {ended})")
        found = await _query_status(handle)
        if found is None:
            fail(f"{experiment_id}: no worker answered; is a worker running on its task queue?")
        before = found
        if not before.approval_needed and before.phase is not ChaosPhase.VALIDATING:
            fail(f"nothing awaits approval in {experiment_id} (phase {before.phase.value})")
        signal = await approval_signal(handle, approver=by, note=note, decision=decision.value)
        name = SIGNAL_APPROVE if decision is Decision.APPROVED else SIGNAL_REJECT
        await handle.signal(name, signal)
        # The worker checks the approver (and signature) against its policy: wait for it.
        deadline = asyncio.get_running_loop().time() + 15.0
        while asyncio.get_running_loop().time() < deadline:
            after: ChaosStatus = await handle.query("status", result_type=ChaosStatus)
            if len(after.decisions) > len(before.decisions):
                record = after.decisions[-1]
                if record.decision is Decision.REFUSED:
                    fail(f"{by} was refused: {record.reason}")
                if record.decision is Decision.IGNORED:
                    fail(f"{experiment_id}: decision ignored ({record.reason})")
                for _ in range(20):  # an approval moves the phase a moment later
                    if after.phase is not ChaosPhase.AWAITING_APPROVAL:
                        break
                    await asyncio.sleep(0.1)
                    after = await handle.query("status", result_type=ChaosStatus)
                console.print(
                    f"{record.decision.value} by {record.approver}: {experiment_id} is now "
                    f"{after.phase.value}"
                )
                return
            await asyncio.sleep(0.1)
        console.print(f"signal sent; {experiment_id} has not recorded the decision yet")

    run(_go())


@app.command("approve")
def approve(
    experiment_id: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Approve EXPERIMENT_ID's injection (AWAITING_APPROVAL only); signed with
    ANTIFRAGILE_APPROVER_KEY when set."""
    _decide(experiment_id, by, note, Decision.APPROVED)


@app.command("reject")
def reject(
    experiment_id: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Reject EXPERIMENT_ID: it ends FAILED without injecting anything."""
    _decide(experiment_id, by, note, Decision.REJECTED)


# --- stopping ------------------------------------------------------------------------


async def _fault_words(handle: WorkflowHandle[Any, Any]) -> str:
    """What became of the fault, for ``chaos stop``: never "removed" if none was injected."""
    try:
        st: ChaosStatus = await handle.query("status", result_type=ChaosStatus)
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return "fault removed or expired (status not readable)"
    if st.injection_failed:
        return f"nothing was injected (injection failed: {st.injection_failed})"
    if st.injected_at is None:
        return "nothing was injected"
    return "fault removed"


async def _wait_cleaned(handles: list[WorkflowHandle[Any, Any]], timeout_s: float) -> list[str]:
    """Wait until every experiment's fault is gone; returns those still not cleaned."""
    pending = {h.id: h for h in handles}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending and asyncio.get_running_loop().time() < deadline:
        for wid, h in list(pending.items()):
            try:
                desc = await h.describe()
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    del pending[wid]
                    continue
                st: ChaosStatus = await h.query("status", result_type=ChaosStatus)
                if st.phase in CLEANED:
                    del pending[wid]
            except RPCError:
                continue
        if pending:
            await asyncio.sleep(0.2)
    return sorted(pending)


@dataclass
class _TemporalStop:
    """What ``stop --all`` did through Temporal."""

    signalled: list[str] = field(default_factory=list)
    not_signalled: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    paused: int = 0
    reached: bool = True
    """False: Temporal did not answer, nothing was signalled or paused."""
    error: str = ""
    """Why it could not do (all of) it; empty when it could."""


async def _write_halt(settings: Settings, reason: str, by: str) -> str:
    """Set the halt switch; returns why it could not ("" when it was written)."""
    plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    try:
        await reaching_redis(settings.redis_url, plane.set_halt(reason, by=by), REDIS_TIMEOUT_S)
        return ""
    except ServerUnreachable as exc:
        return str(exc)
    except Exception as exc:  # an emergency path: whatever failed, the Temporal path runs on
        return f"Redis at {display_url(settings.redis_url)}: {connection_reason(exc)}"
    finally:
        await _close_quietly(plane)


async def _stop_through_temporal(
    settings: Settings,
    signal: EmergencyStopSignal,
    reason: str,
    wait_s: float,
    halt_written: asyncio.Event | None = None,
) -> _TemporalStop:
    """Pause the chaos schedules and signal ``emergency_stop`` to every running experiment.

    Args:
        halt_written: Set once the halt switch's write ended (either way): temporalio is
            imported only then, or after ``HALT_FIRST_S``, whichever comes first, so that a
            reachable Redis gets the switch ~0.3 s sooner and a hung one delays Temporal
            by at most that much.

    Never raises for an unreachable or failing server: what was not done is in ``error``.
    """
    out = _TemporalStop()
    if halt_written is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(halt_written.wait(), HALT_FIRST_S)
    try:
        # In a thread: the event loop (a Redis write still going) keeps running meanwhile.
        await asyncio.to_thread(_import_temporal)
        client = await connect(settings)
    except TemporalUnavailableError as exc:
        out.reached, out.error = False, str(exc)
        return out
    except Exception as exc:  # e.g. an unreadable TLS file: the halt switch still goes out
        out.reached = False
        out.error = f"cannot reach Temporal at {settings.temporal_address}: {exc}"
        return out
    problems: list[str] = []
    handles: list[WorkflowHandle[Any, Any]] = []

    async def _pause() -> None:
        try:
            out.paused = await _pause_schedules(client, reason)
        except Exception as exc:
            why = exc.message if isinstance(exc, RPCError) else connection_reason(exc)
            problems.append(f"schedules not paused: {why}")

    async def _signal(wf_id: str, run_id: str | None) -> None:
        h = client.get_workflow_handle(wf_id, run_id=run_id)
        try:
            await h.signal(SIGNAL_EMERGENCY_STOP, signal)
        except Exception as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                return  # it ended meanwhile
            why = exc.message if isinstance(exc, RPCError) else connection_reason(exc)
            out.not_signalled.append(wf_id)
            problems.append(f"{wf_id} not signalled: {why}")
            return
        handles.append(h)
        out.signalled.append(wf_id)

    async def _stop_running() -> None:
        try:
            running = [wf async for wf in client.list_workflows(RUNNING_QUERY, limit=1000)]
        except Exception as exc:
            why = exc.message if isinstance(exc, RPCError) else connection_reason(exc)
            out.reached = False
            problems.append(f"running experiments not listed at {settings.temporal_address}: {why}")
            return
        # All at once: the stop reaches the last experiment as soon as the first.
        await asyncio.gather(*(_signal(wf.id, wf.run_id) for wf in running))

    # Schedules are paused alongside, never ahead of the experiments' stop.
    await asyncio.gather(_stop_running(), _pause())
    out.left = await _wait_cleaned(handles, wait_s)
    out.error = "; ".join(problems)
    return out


async def _stop_all(
    settings: Settings, signal: EmergencyStopSignal, reason: str, by: str, wait_s: float
) -> None:
    """Halt switch and Temporal, independently: either one alone still stops the faults."""
    halt_written = asyncio.Event()

    async def _halt() -> str:
        try:
            return await _write_halt(settings, reason, by)
        finally:
            halt_written.set()

    halt_error, temporal = await asyncio.gather(
        _halt(), _stop_through_temporal(settings, signal, reason, wait_s, halt_written)
    )
    temporal_down = not temporal.reached
    if halt_error and temporal_down:
        fail(f"nothing stopped: {halt_error}; {temporal.error}")
    done = ["halt switch set" if not halt_error else "halt switch NOT set"]
    if temporal_down:
        done.append(f"no experiment signalled, {temporal.paused} schedule(s) paused")
    else:
        cleaned = len(temporal.signalled) - len(temporal.left)
        done.append(
            f"{len(temporal.signalled)} experiment(s) signalled, {cleaned} cleaned up; "
            f"{temporal.paused} schedule(s) paused"
        )
    console.print("; ".join(done))
    not_done = []
    if halt_error:
        not_done.append(f"halt switch not written ({halt_error})")
    if temporal.error:
        not_done.append(temporal.error)
    if temporal.left:
        not_done.append(
            f"not cleaned up within {wait_s:g}s: {', '.join(temporal.left)} "
            "(their faults still end with their lease TTL at every call site)"
        )
    if not_done:
        fail("partial stop: " + "; ".join(not_done), code=1)


@app.command("stop")
def stop(
    experiment_id: Annotated[str | None, typer.Argument(help="Experiment to stop.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the report).")] = "",
    all_: Annotated[
        bool, typer.Option("--all", help="Halt switch + stop every running experiment.")
    ] = False,
    by: Annotated[str, typer.Option("--by", help="Who stops it.")] = "cli",
    timeout: Annotated[str, typer.Option(help="How long to wait for cleanup.")] = "60s",
) -> None:
    """Emergency stop: remove the fault now; returns once cleanup is done.

    ``--all`` sets the halt switch (Redis) and signals every running experiment
    (Temporal) independently: with one of them unreachable the other is still done, the
    command says what was and was not done, and exits 1. Both unreachable: exit 2.
    """
    if not reason.strip():
        fail("--reason: say why the experiment is stopped")
    if all_ == (experiment_id is not None):
        fail("give either an experiment id or --all")
    settings = load_settings()
    wait_s = parse_duration_s(timeout, "--timeout")
    signal = EmergencyStopSignal(reason=reason, by=by)

    async def _go() -> None:
        if all_:
            await _stop_all(settings, signal, reason, by, wait_s)
            return
        assert experiment_id is not None
        _import_temporal()
        client = await connect(settings)
        h = await _handle(client, experiment_id)
        desc = await h.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            state = desc.status.name.lower() if desc.status else "unknown"
            fail(f"{experiment_id} is not running ({state})")
        await h.signal(SIGNAL_EMERGENCY_STOP, signal)
        left = await _wait_cleaned([h], wait_s)
        if left:
            fail(f"{experiment_id} has not cleaned up within {timeout}", code=1)
        console.print(f"{experiment_id} stopped; {await _fault_words(h)}")

    run(_go())


@app.command("resume")
def resume() -> None:
    """Clear the halt switch and resume schedules it paused.

    Redis unreachable: nothing is done (exit 2). Temporal unreachable: the halt switch is
    cleared, the schedules stay paused (exit 1; run it again to resume them).
    """
    settings = load_settings()

    async def _go() -> None:
        plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
        try:
            was = await reaching_redis(settings.redis_url, plane.clear_halt(), REDIS_TIMEOUT_S)
        finally:
            await _close_quietly(plane)
        state = "cleared" if was else "was not set"
        try:
            client = await connect(settings)
            resumed = await _unpause_schedules(client)
        except (TemporalUnavailableError, RPCError) as exc:
            console.print(f"halt switch {state}; schedules not resumed")
            why = exc.message if isinstance(exc, RPCError) else str(exc)
            fail(f"schedules not resumed: {why}", code=1)
        console.print(f"halt switch {state}; {resumed} schedule(s) resumed")

    run(_go())


# --- schedules -----------------------------------------------------------------------


async def _chaos_schedules(client: Client) -> list[str]:
    ids = []
    async for s in await client.list_schedules():
        if s.id.startswith(SCHEDULE_PREFIX):
            ids.append(s.id)
    return ids


async def _pause_schedules(client: Client, reason: str) -> int:
    count = 0
    for sid in await _chaos_schedules(client):
        handle = client.get_schedule_handle(sid)
        desc = await handle.describe()
        if not desc.schedule.state.paused:
            await handle.pause(note=f"{HALT_NOTE}: {reason}")
            count += 1
    return count


async def _unpause_schedules(client: Client) -> int:
    count = 0
    for sid in await _chaos_schedules(client):
        handle = client.get_schedule_handle(sid)
        desc = await handle.describe()
        if desc.schedule.state.paused and (desc.schedule.state.note or "").startswith(HALT_NOTE):
            await handle.unpause(note="chaos halt switch cleared")
            count += 1
    return count


@app.command("schedule")
def schedule(
    file: Annotated[Path, typer.Argument(help="Scenario file (.yaml, .yml or .json).")],
    cron: Annotated[str, typer.Option(help='Cron expression, e.g. "0 10 * * 2".')],
) -> None:
    """Run FILE as a recurring game day (a Temporal Schedule)."""
    settings = load_settings()
    scenario = _prepare(settings, _file_data(file), f"scenario file {file}")
    if len(cron.split()) not in (5, 6, 7):
        fail(f'--cron: expected a cron expression like "0 10 * * 2", got {cron!r}')

    async def _go() -> None:
        client = await connect(settings)
        sid = f"{SCHEDULE_PREFIX}{scenario.name}"
        halted = (await _read_halt(settings)).halted
        action = ScheduleActionStartWorkflow(
            WORKFLOW_TYPE,
            ChaosExperimentInput(scenario=scenario),
            id=f"chaos-{scenario.name}-scheduled",
            task_queue=settings.task_queue,
            static_summary=experiment_summary(scenario),
            static_details=experiment_details(scenario),
        )
        try:
            await client.create_schedule(
                sid,
                Schedule(
                    action=action,
                    spec=ScheduleSpec(cron_expressions=[cron]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
                ),
                # The server keeps the cron only as calendars: remember it as written.
                memo={"cron": cron, "scenario": scenario.name},
            )
        except Exception as exc:
            text = str(exc)
            if "already" in text.lower():
                fail(f"a schedule named {scenario.name!r} exists; unschedule it first")
            if "cron" in text.lower() or "invalid" in text.lower():
                fail(f"--cron: {text}")
            raise
        if halted:
            await client.get_schedule_handle(sid).pause(note=f"{HALT_NOTE}: set at creation")
        console.print(
            f"schedule [bold]{sid}[/bold] created ({cron})"
            + (" — paused: the halt switch is set" if halted else "")
        )

    run(_go())


@app.command("schedules")
def schedules(json_out: JsonFlag = False) -> None:
    """List chaos schedules."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        rows: list[dict[str, Any]] = []
        for sid in await _chaos_schedules(client):
            desc = await client.get_schedule_handle(sid).describe()
            nxt = desc.info.next_action_times[:1]
            rows.append(
                {
                    "name": sid.removeprefix(SCHEDULE_PREFIX),
                    "schedule_id": sid,
                    "cron": str((await desc.memo()).get("cron", "")),
                    "paused": desc.schedule.state.paused,
                    "note": desc.schedule.state.note or "",
                    "next_run": nxt[0].isoformat() if nxt else None,
                    "runs": desc.info.num_actions,
                }
            )
        if json_out:
            print_json(rows)
            return
        table = Table()
        for col in ("name", "cron", "paused", "next run", "runs", "note"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["name"],
                r["cron"],
                str(r["paused"]),
                str(r["next_run"] or "-")[:19],
                str(r["runs"]),
                r["note"],
            )
        console.print(table)

    run(_go())


@app.command("unschedule")
def unschedule(name: str) -> None:
    """Delete the chaos schedule NAME."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle = client.get_schedule_handle(f"{SCHEDULE_PREFIX}{name}")
        try:
            await handle.delete()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                fail(f"no chaos schedule named {name!r}")
            raise
        console.print(f"schedule {name} deleted")

    run(_go())


__all__ = ["app", "render_report", "render_status"]
