"""``antifragile recovery …``: start, follow, approve and cancel recoveries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.cli._common import (
    console,
    err_console,
    fail,
    first_value,
    load_settings,
    parse_duration_s,
    parse_model,
    print_json,
    run,
)
from antifragile.constants import (
    QUERY_STATUS,
    SIGNAL_APPROVE,
    SIGNAL_REJECT,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.common import ApprovalSignal, Decision
from antifragile.models.orchestrator import EnqueueResult, QueueView, RequestState
from antifragile.models.recovery import (
    RecoveryRequest,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.orchestrator_logic import format_duration, why_waiting
from antifragile.recovery_client import orchestrator_queue, request_recovery
from antifragile.settings import Settings
from antifragile.temporal_client import connect

app = typer.Typer(
    help="Start, follow, approve and cancel durable recoveries.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


async def _handle(client: Client, service: str) -> WorkflowHandle[Any, Any]:
    """The latest recovery of ``service``; exit 2 when there is none."""
    handle = client.get_workflow_handle(recovery_workflow_id(service))
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"no recovery found for service {service!r}")
        raise
    return handle


async def _status(handle: WorkflowHandle[Any, Any]) -> RecoveryStatus:
    status: RecoveryStatus = await handle.query(QUERY_STATUS, result_type=RecoveryStatus)
    return status


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    delta = (value - datetime.now(UTC)).total_seconds()
    rel = f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"
    return f"{value:%H:%M:%S} UTC ({rel})"


def render_status(status: RecoveryStatus, settings: Settings) -> None:
    """Print a recovery's status as rich tables."""
    head = Table.grid(padding=(0, 2))
    head.add_row("service", status.service)
    head.add_row("state", f"[bold]{status.state.value}[/bold]")
    head.add_row("strategy", status.strategy.value)
    head.add_row("priority", str(status.priority))
    head.add_row(
        "attempts", f"{status.attempt} (round: {status.attempts_in_round} of {status.max_attempts})"
    )
    head.add_row("next attempt", _when(status.next_attempt_at))
    head.add_row("outcome" if status.state.terminal else "waiting for", status.waiting_for or "-")
    head.add_row("last error", status.last_error or "-")
    head.add_row("probe", status.probe)
    head.add_row("ui", settings.workflow_url(recovery_workflow_id(status.service)))
    console.print(head)
    if status.attempts:
        table = Table(title="attempts", title_justify="left")
        for col in ("#", "started", "duration", "outcome", "detail"):
            table.add_column(col)
        for a in status.attempts:
            table.add_row(
                str(a.number),
                f"{a.started_at:%H:%M:%S}",
                f"{a.duration_ms} ms",
                a.outcome,
                a.detail,
            )
        console.print(table)
    if status.decisions:
        table = Table(title="decisions", title_justify="left")
        for col in ("at", "by", "decision", "note", "why"):
            table.add_column(col)
        for d in status.decisions:
            table.add_row(f"{d.at:%H:%M:%S}", d.approver, d.decision.value, d.note, d.reason)
        console.print(table)


@app.command("start")
def start(
    service: Annotated[str, typer.Argument(help="Service to recover.")],
    probe: Annotated[str, typer.Option(help="tcp://h:p, http(s)://… or redis://h:p/db")],
    strategy: Annotated[RecoveryStrategy, typer.Option(case_sensitive=False)] = (
        RecoveryStrategy.EXPONENTIAL_BACKOFF
    ),
    priority: Annotated[int, typer.Option(help="Lower is more urgent.")] = 1,
    max_attempts: Annotated[int, typer.Option(help="Attempts per round.")] = 5,
    initial_delay: Annotated[str, typer.Option(help="Delay after the first failure.")] = "1s",
    max_delay: Annotated[str, typer.Option(help="Largest delay.")] = "60s",
    multiplier: Annotated[float, typer.Option(help="Exponential growth factor.")] = 2.0,
    action: Annotated[str, typer.Option(help="none | webhook:URL | command:NAME")] = "none",
    reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "",
    requested_by: Annotated[str, typer.Option("--by", help="Who asks.")] = "cli",
    wait: Annotated[
        bool, typer.Option(help="Wait for the recovery to be admitted, start and end.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Request the recovery of SERVICE through the fleet-wide orchestrator queue.

    The request waits for a slot in priority order (lower --priority first); a request
    for a service already waiting is merged, one for a running recovery joins it.
    """
    settings = load_settings()
    request = parse_model(
        RecoveryRequest,
        {
            "service": service,
            "strategy": strategy,
            "priority": priority,
            "probe": probe,
            "action": action,
            "reason": reason,
            "requested_by": requested_by,
            "constitutional_hash": settings.constitutional_hash,
            "policy": {
                "max_retry_attempts": max_attempts,
                "initial_delay_ms": int(parse_duration_s(initial_delay, "--initial-delay") * 1000),
                "max_delay_ms": int(parse_duration_s(max_delay, "--max-delay") * 1000),
                "backoff_multiplier": multiplier,
            },
        },
        "recovery request",
    )
    run(_start(settings, request, wait, json_out))


async def _start(settings: Settings, request: RecoveryRequest, wait: bool, json_out: bool) -> None:
    client = await connect(settings)
    workflow_id = recovery_workflow_id(request.service)
    before = await _run_id(client, workflow_id)
    result = await request_recovery(client, request, task_queue=settings.task_queue)
    if not wait:
        if json_out:
            print_json(
                {
                    **result.model_dump(mode="json"),
                    "workflow_id": workflow_id,
                    "url": _url(settings),
                }
            )
        else:
            console.print(_describe_request(result))
        return
    if not json_out:
        err_console.print(_describe_request(result))
    run_id = before if result.state is RequestState.JOINED else None
    while run_id is None:
        # Admission starts a new run of recovery-{service}: wait for it to appear.
        current = await _run_id(client, workflow_id)
        if current is not None and current != before:
            run_id = current
            break
        await asyncio.sleep(1.0)
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    if not json_out:
        err_console.print(
            f"admitted; waiting for {workflow_id} … {settings.workflow_url(workflow_id, run_id)}"
        )
    try:
        await handle.result()
    except WorkflowFailureError as exc:
        status = await _status(handle)
        _print_status(status, settings, json_out)
        cause = exc.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
        if isinstance(cause, CancelledError):
            reason = "cancelled"
        fail(f"recovery of {request.service} ended {status.state.value}: {reason}", code=1)
    _print_status(await _status(handle), settings, json_out)


async def _run_id(client: Client, workflow_id: str) -> str | None:
    """Run id of the latest run of ``workflow_id`` (None when it never ran)."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.run_id


def _url(settings: Settings) -> str:
    return settings.workflow_url(orchestrator_workflow_id(settings.task_queue))


def _describe_request(result: EnqueueResult) -> str:
    service = f"[bold]{result.service}[/bold]"
    if result.state is RequestState.JOINED:
        line = f"{service} is already recovering: joined it" + _join_detail(result)
    elif result.state is RequestState.RUNNING:
        line = f"{service} already holds a recovery slot: joined it" + _join_detail(result)
    elif result.state is RequestState.AWAITING_APPROVAL:
        line = (
            f"{service}'s recovery waits for a person (no slot held): joined it"
            + _join_detail(result)
            + f"\n  approve it with `antifragile recovery approve {result.service} --by NAME`"
        )
    elif result.state is RequestState.ACCEPTED:
        return f"{service} handed to the busy orchestrator (priority {result.priority})"
    else:
        verb = (
            "queued" if result.state is RequestState.QUEUED else "merged into its waiting request"
        )
        line = (
            f"{service} {verb}: position {result.position} of {result.waiting}, priority "
            f"{result.priority}; running {result.running}/{result.max_concurrent}"
        )
        if result.state is RequestState.MERGED:
            line += _ignored_lines(result)
    if result.paused_reason and result.state in (RequestState.QUEUED, RequestState.MERGED):
        line += f"\n  admissions wait: {result.paused_reason}"
    return line


def _join_detail(result: EnqueueResult) -> str:
    """What a joining request kept (priority) and what it ignored (other settings)."""
    previous = result.previous_priority
    if previous is None or previous == result.priority:
        kept = f" (priority {result.priority})"
    else:
        kept = f" (priority {result.priority}, was {previous})"
    return kept + _ignored_lines(result)


def _ignored_lines(result: EnqueueResult) -> str:
    if not result.ignored:
        return ""
    parts = [f"{i.setting} {i.requested} (it keeps {i.kept})" for i in result.ignored]
    return (
        "\n  ignored, one recovery per service keeps its own settings: "
        + "; ".join(parts)
        + "\n  to change them, cancel it and start again"
    )


def _print_status(status: RecoveryStatus, settings: Settings, json_out: bool) -> None:
    if json_out:
        print_json(status)
    else:
        render_status(status, settings)


@app.command("status")
def status(service: str, json_out: JsonFlag = False) -> None:
    """Show SERVICE's recovery: state, attempts, next attempt, decisions (or its place in
    the queue while it waits for a slot)."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle = client.get_workflow_handle(recovery_workflow_id(service))
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            desc = None
        if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
            # Not running: it may be waiting in the queue for a slot (a new run).
            view = await _queue_view(client, settings, service)
            if view is not None and view.lookup is not None and view.lookup.state == "waiting":
                _print_queued(view, service, json_out)
                return
        if desc is None:
            fail(f"no recovery found for service {service!r}")
        _print_status(await _status(handle), settings, json_out)

    run(_go())


async def _queue_view(client: Client, settings: Settings, service: str | None) -> QueueView | None:
    """The orchestrator's queue (with ``service`` looked up); None without an orchestrator."""
    try:
        return await orchestrator_queue(client, task_queue=settings.task_queue, service=service)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def _print_queued(view: QueueView, service: str, json_out: bool) -> None:
    """A service whose request waits for a slot: position, wait so far, why."""
    where = view.lookup
    assert where is not None
    now = datetime.now(UTC)
    waited = (now - where.since).total_seconds() if where.since else 0.0
    why = why_waiting(view, now)
    if json_out:
        print_json(
            {
                "service": service,
                "state": "QUEUED",
                "position": where.position,
                "waiting_total": view.waiting_total,
                "priority": where.priority,
                "enqueued_at": where.since.isoformat() if where.since else None,
                "waited_s": round(waited, 1),
                "resumed_after_approval": where.resumed,
                "why_waiting": why,
            }
        )
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("service", service)
    head.add_row("state", "[bold]QUEUED[/bold] (waiting for a recovery slot)")
    head.add_row("position", f"{where.position} of {view.waiting_total}")
    head.add_row("priority", str(where.priority))
    since = f" (since {where.since:%H:%M:%S} UTC)" if where.since else ""
    head.add_row("waiting for", f"{format_duration(waited)}{since}")
    head.add_row("why waiting", why or "-")
    console.print(head)


@app.command("list")
def list_(
    state: Annotated[RecoveryState | None, typer.Option(case_sensitive=False)] = None,
    json_out: JsonFlag = False,
) -> None:
    """List recoveries, newest first (optionally only those in STATE); requests still
    waiting in the queue for a slot come first, as QUEUED."""
    settings = load_settings()
    query = 'AfKind="recovery"'
    if state:
        query += f' AND AfState="{state.value}"'

    async def _go() -> None:
        client = await connect(settings)
        rows: list[dict[str, Any]] = []
        view = None if state else await _queue_view(client, settings, None)
        for w in view.waiting if view else []:
            rows.append(
                {
                    "service": w.service,
                    "state": "QUEUED",
                    "strategy": None,
                    "priority": w.priority,
                    "workflow_status": None,
                    "started": None,
                    "enqueued_at": w.enqueued_at.isoformat(),
                    "position": w.position,
                    "workflow_id": recovery_workflow_id(w.service),
                    "run_id": None,
                }
            )
        async for wf in client.list_workflows(query, limit=500):
            sa = wf.search_attributes
            rows.append(
                {
                    "service": first_value(sa.get("AfService")),
                    "state": first_value(sa.get("AfState")),
                    "strategy": first_value(sa.get("AfStrategy")),
                    "priority": first_value(sa.get("AfPriority")),
                    "workflow_status": wf.status.name if wf.status else None,
                    "started": wf.start_time.isoformat(),
                    "workflow_id": wf.id,
                    "run_id": wf.run_id,
                }
            )
        if json_out:
            print_json(rows)
            return
        table = Table()
        for col in ("service", "state", "strategy", "priority", "started", "workflow"):
            table.add_column(col)
        for r in rows:
            if r["state"] == "QUEUED":
                table.add_row(
                    str(r["service"]),
                    f"QUEUED #{r['position']}",
                    "-",
                    str(r["priority"]),
                    "-",
                    f"waiting since {r['enqueued_at'][11:19]}",
                )
                continue
            table.add_row(
                str(r["service"]),
                str(r["state"]),
                str(r["strategy"]),
                str(r["priority"]),
                r["started"][:19],
                str(r["workflow_status"]),
            )
        if view is not None and view.waiting_total > len(view.waiting):
            more = view.waiting_total - len(view.waiting)
            table.caption = f"… and {more} more queued (antifragile recovery queue)"
        console.print(table)

    run(_go())


def _decide(service: str, by: str, note: str, decision: Decision) -> None:
    settings = load_settings()
    signal = parse_model(ApprovalSignal, {"approver": by, "note": note}, "decision")

    async def _go() -> None:
        client = await connect(settings)
        handle = await _handle(client, service)
        before = await _status(handle)
        if before.state is not RecoveryState.AWAITING_APPROVAL:
            fail(f"nothing awaits approval for {service} (state {before.state.value})")
        name = SIGNAL_APPROVE if decision is Decision.APPROVED else SIGNAL_REJECT
        await handle.signal(name, signal)
        # The workflow checks the approver against the worker policy: wait for its verdict.
        for _ in range(100):
            after = await _status(handle)
            if len(after.decisions) > len(before.decisions):
                record = after.decisions[-1]
                if record.decision is Decision.REFUSED:
                    fail(f"{by} was refused: {record.reason}")
                # An approval starts a round a moment after it is recorded: report that.
                for _ in range(20):
                    if after.state is not RecoveryState.AWAITING_APPROVAL:
                        break
                    await asyncio.sleep(0.1)
                    after = await _status(handle)
                console.print(
                    f"{record.decision.value} by {record.approver}: recovery of "
                    f"{service} is now {after.state.value}"
                )
                return
            await asyncio.sleep(0.1)
        console.print(f"signal sent; {service} has not recorded the decision yet")

    run(_go())


@app.command("approve")
def approve(
    service: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Approve a round of attempts for SERVICE (AWAITING_APPROVAL only)."""
    _decide(service, by, note, Decision.APPROVED)


@app.command("reject")
def reject(
    service: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Reject SERVICE's recovery: it ends FAILED."""
    _decide(service, by, note, Decision.REJECTED)


@app.command("cancel")
def cancel(service: str) -> None:
    """Cancel SERVICE's running recovery: it ends CANCELLED."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        handle = await _handle(client, service)
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            fail(
                f"the recovery of {service} is not running ({desc.status.name.lower()})"
                if desc.status
                else f"the recovery of {service} is not running"
            )
        await handle.cancel()
        console.print(f"cancellation requested for {handle.id}")

    run(_go())


@app.command("queue")
def queue(json_out: JsonFlag = False) -> None:
    """Show the orchestrator's queue: running and waiting recoveries, and any pause."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings)
        try:
            view = await orchestrator_queue(client, task_queue=settings.task_queue)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                fail("no recovery orchestrator yet: `antifragile recovery start` creates it")
            raise
        if json_out:
            now = datetime.now(UTC)
            print_json(
                {
                    **view.model_dump(mode="json"),
                    "read_at": now,
                    "why_waiting": why_waiting(view, now),
                }
            )
        else:
            render_queue(view)

    run(_go())


def render_queue(view: QueueView, now: datetime | None = None) -> None:
    """Print the orchestrator's queue as rich tables; durations are computed at ``now``
    (default: the moment of printing) from the view's timestamps."""
    now = now or datetime.now(UTC)
    head = Table.grid(padding=(0, 2))
    state = "PAUSED" if view.paused else ("THROTTLED" if view.pause_reason else "ACTIVE")
    head.add_row("state", f"[bold]{state}[/bold]")
    head.add_row("running", f"{len(view.running)} of {view.max_concurrent} slots")
    head.add_row("waiting", str(view.waiting_total))
    head.add_row("awaiting approval", f"{len(view.awaiting_approval)} (no slot held)")
    head.add_row("why waiting", why_waiting(view, now) or "-")
    limits = view.limits
    head.add_row(
        "limits",
        f"{limits.max_admissions_per_minute}/min admissions, retry budget "
        f"{limits.retry_budget:.0%} of attempts over {format_duration(limits.budget_window_s)}"
        f", aging 1 level per {format_duration(limits.aging_interval_s)}",
    )
    if view.budget is not None:
        head.add_row(
            "retry budget",
            f"{view.budget.failed} of {view.budget.attempts} attempts failed in the window"
            f" (pauses above {limits.retry_budget:.0%} once {view.budget.min_samples} made)",
        )
    finished = ", ".join(f"{k} {v}" for k, v in sorted(view.finished.items())) or "none"
    head.add_row("admitted", f"{view.admitted_total} (finished: {finished})")
    console.print(head)
    table = Table(title="running", title_justify="left")
    for col in ("service", "priority", "running for", "waited", "workflow"):
        table.add_column(col)
    for r in view.running:
        table.add_row(
            r.service + (" (resumed)" if r.resumed else ""),
            str(r.priority),
            format_duration((now - r.admitted_at).total_seconds()),
            format_duration((r.admitted_at - r.enqueued_at).total_seconds()),
            r.workflow_id,
        )
    console.print(table)
    table = Table(title="waiting", title_justify="left")
    for col in ("#", "service", "priority", "effective", "waiting for", "by", "reason"):
        table.add_column(col)
    for w in view.waiting:
        table.add_row(
            str(w.position),
            w.service + (" (approved, resuming)" if w.resumed else ""),
            str(w.priority),
            f"{w.effective_priority:g}",
            format_duration((now - w.enqueued_at).total_seconds()),
            w.requested_by or "-",
            w.reason or "-",
        )
    console.print(table)
    if view.waiting_total > len(view.waiting):
        console.print(f"… and {view.waiting_total - len(view.waiting)} more waiting")
    table = Table(title="awaiting approval (no slot held)", title_justify="left")
    for col in ("service", "priority", "waiting for a person", "why", "approve with"):
        table.add_column(col)
    for a in view.awaiting_approval:
        table.add_row(
            a.service,
            str(a.priority),
            format_duration((now - a.since).total_seconds()),
            a.reason or "-",
            f"antifragile recovery approve {a.service} --by NAME",
        )
    console.print(table)
