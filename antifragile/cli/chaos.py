"""``antifragile chaos …``: run, follow, stop and schedule chaos experiments.

Exit codes: 0 the experiment COMPLETED (or the command did what it says); 1 it ended
ABORTED, STOPPED or FAILED, or an emergency command did only part of its work (``stop
--all`` or ``resume`` with Redis or Temporal unreachable: it says what it did and did not
do); 2 bad input, a target outside the worker policy, the halt switch set, or a server
the command needs unreachable (one line naming its address).

Each command parses its input, calls :mod:`antifragile.chaos.client` (or its
``schedules`` and ``report`` neighbours) and prints with :mod:`antifragile.cli._render.chaos`.
temporalio (~0.3 s of imports) is imported by the command that talks to Temporal, when
it does: ``chaos --help`` never imports it, and ``stop --all`` writes the halt switch first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from antifragile.chaos.client import (
    REDIS_TIMEOUT_S,
    RUNNING_QUERY,
    STATUS_QUERY_TIMEOUT,
    find_experiment,
    query_status,
    resume_fleet,
    start_experiment,
    stop_all_experiments,
    stop_experiment,
)
from antifragile.chaos.plane import FaultPlane
from antifragile.chaos.scenario import checked_scenario, scenario_file_data
from antifragile.cli._common import (
    approval_signal,
    console,
    err_console,
    fail,
    first_value,
    is_redis_connection_error,
    load_settings,
    parse_duration_s,
    print_json,
    reaching_redis,
    redis_unreachable,
    run_command,
)
from antifragile.cli._render.chaos import (
    experiment_learning,
    follow_experiment,
    halt_error_text,
    render_experiments,
    render_fleet_stop,
    render_report,
    render_resume,
    render_schedule_created,
    render_schedules,
    render_status,
    schedule_rows,
    stop_words,
    temporal_error_text,
)
from antifragile.constants import KIND_CHAOS, QUERY_STATUS, SIGNAL_APPROVE, SIGNAL_REJECT
from antifragile.models.chaos import (
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    EmergencyStopSignal,
    HaltStatus,
)
from antifragile.models.chaos_fleet import SCHEDULE_PREFIX
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType, ResourceType
from antifragile.models.common import Decision
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client

app = typer.Typer(
    help="Chaos experiments as durable workflows: run, follow, stop, schedule.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


async def _connect(settings: Settings) -> Client:
    """Connect to Temporal (temporalio is imported here, by the commands that need it)."""
    from antifragile.cli._common import cli_runtime
    from antifragile.temporal_client import connect

    return await connect(settings, runtime=cli_runtime())


@contextlib.contextmanager
def _naming_redis(settings: Settings) -> Iterator[None]:
    """An unreachable Redis inside the block is one line naming it (exit 2)."""
    try:
        yield
    except Exception as exc:
        if is_redis_connection_error(exc):
            raise redis_unreachable(settings.redis_url, exc) from None
        raise


# --- preparing a scenario ------------------------------------------------------------


def _prepare(settings: Settings, data: dict[str, Any], source: str) -> ChaosScenario:
    """Validate a scenario against the model and the local copy of the worker policy."""
    data.setdefault("constitutional_hash", settings.constitutional_hash)
    scenario, warning = checked_scenario(data, source, WorkerPolicy.load(settings.policy_file))
    if warning:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    return scenario


async def _read_halt(settings: Settings) -> HaltStatus:
    """The halt switch; an unreachable Redis is one line naming it (exit 2)."""
    plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    try:
        return await reaching_redis(settings.redis_url, plane.halt_status(), REDIS_TIMEOUT_S)
    finally:
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
    scenario = _prepare(settings, scenario_file_data(file), f"scenario file {file}")
    # The halt switch is checked (Redis) before Temporal is reached: _launch connects itself.
    run_command(lambda _: _launch(settings, scenario, wait, json_out), settings, temporal=False)


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
    # The halt switch is checked (Redis) before Temporal is reached: _launch connects itself.
    run_command(lambda _: _launch(settings, scenario, wait, json_out), settings, temporal=False)


async def _launch(settings: Settings, scenario: ChaosScenario, wait: bool, json_out: bool) -> None:
    await _refuse_if_halted(settings)
    client = await _connect(settings)
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
    report = await follow_experiment(handle, quiet=json_out)
    _finish(report, json_out)


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


# --- inspecting ----------------------------------------------------------------------


@app.command("list")
def list_(
    running: Annotated[bool, typer.Option("--running", help="Only running ones.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """List chaos experiments, newest first."""
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
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
        else:
            render_experiments(rows)

    run_command(_go, settings)


@app.command("status")
def status(experiment_id: str, json_out: JsonFlag = False) -> None:
    """Phase, time left, where the fault is active, lowest health, journal."""
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
        from antifragile.chaos.report import experiment_status

        plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
        try:
            st = await experiment_status(client, experiment_id, plane=plane)
        finally:
            await plane.close()
        if json_out:
            print_json(st)
        else:
            render_status(st, settings)

    run_command(_go, settings)


@app.command("report")
def report(
    experiment_id: str,
    json_out: JsonFlag = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write it as one offline HTML page.")
    ] = None,
) -> None:
    """The experiment's report (so far, if it still runs). Exit 1 unless COMPLETED."""
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
        from antifragile.chaos.report import experiment_report

        plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
        try:
            rep = await experiment_report(client, experiment_id, plane=plane)
        finally:
            await plane.close()
        learning = await experiment_learning(client, rep)  # the target's ledger, or a note
        rep = rep.model_copy(update={"learning": learning})
        if html is not None:
            _write_html(rep, html)
        _finish(rep, json_out)

    run_command(_go, settings)


def _write_html(rep: ChaosReport, path: Path) -> None:
    from antifragile.chaos.html_report import ChartsUnavailableError, write_html

    try:
        size = write_html(rep, path)
    except ChartsUnavailableError as exc:
        fail(f"--html: {exc}")
    except OSError as exc:
        fail(f"--html: cannot write {path}: {exc.strerror or exc}")
    err_console.print(f"HTML report written to {path} ({size / 1024:.0f} KiB)")


# --- approving -----------------------------------------------------------------------


def _decide(experiment_id: str, by: str, note: str, decision: Decision) -> None:
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
        from temporalio.client import WorkflowExecutionStatus

        handle, desc = await find_experiment(client, experiment_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            ended = desc.status.name if desc.status else "closed"
            fail(f"nothing awaits approval in {experiment_id} (it has ended: {ended})")
        found = await query_status(handle, rpc_timeout=STATUS_QUERY_TIMEOUT)
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
            after: ChaosStatus = await handle.query(QUERY_STATUS, result_type=ChaosStatus)
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
                    after = await handle.query(QUERY_STATUS, result_type=ChaosStatus)
                console.print(
                    f"{record.decision.value} by {record.approver}: {experiment_id} is now "
                    f"{after.phase.value}"
                )
                return
            await asyncio.sleep(0.1)
        console.print(f"signal sent; {experiment_id} has not recorded the decision yet")

    run_command(_go, settings)


@app.command(
    "approve",
    short_help="Approve EXPERIMENT_ID's injection (AWAITING_APPROVAL only); signed with "
    "ANTIFRAGILE_APPROVER_KEY when set.",
)
def approve(
    experiment_id: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Approve EXPERIMENT_ID's injection (AWAITING_APPROVAL only).

    Signed with ANTIFRAGILE_APPROVER_KEY when set.
    """
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

    # Temporal is reached only for one experiment: `--all` writes the halt switch first and
    # reaches Temporal itself (it must work when Temporal is down).
    async def _go(settings: Settings) -> None:
        if all_:
            result = await stop_all_experiments(settings, signal, wait_s=wait_s)
            if result.nothing_stopped:
                temporal_error = temporal_error_text(result.temporal, settings)
                fail(f"nothing stopped: {halt_error_text(result, settings)}; {temporal_error}")
            not_done = render_fleet_stop(result, settings)
            if not_done:
                fail("partial stop: " + not_done, code=1)
            return
        assert experiment_id is not None
        client = await _connect(settings)
        stopped = await stop_experiment(client, experiment_id, signal, wait_s=wait_s)
        if not stopped.cleaned:
            fail(f"{experiment_id} has not cleaned up within {timeout}", code=1)
        console.print(f"{experiment_id} stopped; {stop_words(stopped)}")

    run_command(_go, settings, temporal=False)


@app.command("resume")
def resume() -> None:
    """Clear the halt switch and resume schedules it paused.

    Redis unreachable: nothing is done (exit 2). Temporal unreachable: the halt switch is
    cleared, the schedules stay paused (exit 1; run it again to resume them).
    """
    settings = load_settings()

    async def _go(settings: Settings) -> None:
        with _naming_redis(settings):
            result = await resume_fleet(settings)
        not_done = render_resume(result)
        if not_done:
            fail(not_done, code=1)

    run_command(_go, settings, temporal=False)


# --- schedules -----------------------------------------------------------------------


@app.command("schedule")
def schedule(
    file: Annotated[Path, typer.Argument(help="Scenario file (.yaml, .yml or .json).")],
    cron: Annotated[str, typer.Option(help='Cron expression, e.g. "0 10 * * 2".')],
) -> None:
    """Run FILE as a recurring game day (a Temporal Schedule)."""
    settings = load_settings()
    scenario = _prepare(settings, scenario_file_data(file), f"scenario file {file}")
    if len(cron.split()) not in (5, 6, 7):
        fail(f'--cron: expected a cron expression like "0 10 * * 2", got {cron!r}')

    async def _go(client: Client, settings: Settings) -> None:
        from antifragile.chaos.schedules import InvalidCronError, create_schedule

        plane = FaultPlane.from_url(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
        try:
            with _naming_redis(settings):
                created = await create_schedule(
                    client, plane, scenario, cron, task_queue=settings.task_queue
                )
        except InvalidCronError as exc:
            fail(f"--cron: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await plane.close()
        render_schedule_created(created)

    run_command(_go, settings)


@app.command("schedules")
def schedules(json_out: JsonFlag = False) -> None:
    """List chaos schedules."""
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
        from antifragile.chaos.schedules import list_schedules

        found = await list_schedules(client)
        if json_out:
            print_json(schedule_rows(found))
        else:
            render_schedules(found)

    run_command(_go, settings)


@app.command("unschedule")
def unschedule(
    name: Annotated[
        str,
        typer.Argument(help="Scenario name, or the schedule id chaos-schedule-NAME."),
    ],
) -> None:
    """Delete the chaos schedule NAME (as printed by `chaos schedule`, prefix or not)."""
    settings = load_settings()

    async def _go(client: Client, settings: Settings) -> None:
        from antifragile.chaos.schedules import ScheduleError, delete_schedule, schedule_id

        bare = name.removeprefix(SCHEDULE_PREFIX)
        try:
            await delete_schedule(client, bare)
            deleted = bare
        except ScheduleError:
            if bare == name:
                raise
            # A scenario whose own name starts with the prefix.
            await delete_schedule(client, name)
            deleted = name
        console.print(f"schedule {schedule_id(deleted)} deleted")

    run_command(_go, settings)


__all__ = ["app"]
