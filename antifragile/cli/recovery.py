"""``antifragile recovery …``: start, follow, approve and cancel recoveries."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.cli._common import (
    approval_signal,
    cli_runtime,
    console,
    err_console,
    fail,
    first_value,
    load_settings,
    parse_duration_s,
    parse_model,
    print_json,
    run,
    unreachable,
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
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.orchestrator.explain import format_duration, why_waiting
from antifragile.recovery.client import running_recovery
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
    probe: Annotated[
        str,
        typer.Option(
            help="tcp://h:p, http(s)://…, redis://h:p/db, or probe:NAME (a probe of the "
            "worker policy: credentials stay there)"
        ),
    ],
    strategy: Annotated[RecoveryStrategy, typer.Option(case_sensitive=False)] = (
        RecoveryStrategy.EXPONENTIAL_BACKOFF
    ),
    priority: Annotated[int, typer.Option(help="Lower is more urgent.")] = 1,
    max_attempts: Annotated[int, typer.Option(help="Attempts per round.")] = 5,
    initial_delay: Annotated[str, typer.Option(help="Delay after the first failure.")] = "1s",
    max_delay: Annotated[str, typer.Option(help="Largest delay.")] = "60s",
    multiplier: Annotated[float, typer.Option(help="Exponential growth factor.")] = 2.0,
    action: Annotated[
        str, typer.Option(help="none | webhook:NAME | command:NAME (names from the worker policy)")
    ] = "none",
    reason: Annotated[str, typer.Option(help="Why (kept in history).")] = "",
    requested_by: Annotated[str, typer.Option("--by", help="Who asks.")] = "cli",
    wait: Annotated[
        bool,
        typer.Option(help="Follow it live (queued, attempts, backoff, approval) until it ends."),
    ] = False,
    timeout: Annotated[
        str, typer.Option(help="With --wait: give up waiting after this long (exit 1).")
    ] = "1h",
    json_out: JsonFlag = False,
) -> None:
    """Request the recovery of SERVICE through the fleet-wide orchestrator queue.

    The request waits for a slot in priority order (lower --priority first); a request
    for a service already waiting is merged, one for a running recovery joins it.

    --wait prints a line whenever the recovery's state changes (queued and why, attempt,
    next attempt, what it waits for) and says when a person must approve. It exits 0 when
    the recovery SUCCEEDED, 1 when it ended otherwise or --timeout passed first, and 130 on
    Ctrl-C; the recovery goes on in Temporal whenever this command stops waiting.
    """
    settings = load_settings()
    timeout_s = parse_duration_s(timeout, "--timeout")
    if timeout_s <= 0:
        fail(f"--timeout: must be more than 0, got {timeout!r}")
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
    progress = _Progress(request.service, quiet=json_out)
    try:
        run(_start(settings, request, wait, json_out, timeout_s, progress))
    except RPCError as exc:
        if exc.status is not RPCStatusCode.UNAVAILABLE:
            raise
        # Temporal went away (before or while waiting): the line a fresh command would
        # print, and what became of the request.
        if progress.sent:
            after = (
                f"; stopped waiting: the recovery of {request.service} goes on when Temporal "
                f"is back (antifragile recovery status {request.service})"
            )
        elif progress.sending:
            after = f"; the request may have been queued: {_CHECK_QUEUE}"
        else:
            after = "; nothing was started"
        unreachable(settings, exc, after)
    except KeyboardInterrupt:
        # Ctrl-C stops this terminal waiting, never the recovery: say so, and how to follow.
        if progress.sent:
            err_console.print(
                f"stopped waiting; the recovery of {request.service} goes on "
                f"({progress.state or 'requested'}). Follow it: antifragile recovery status "
                f"{request.service}  ·  "
                f"{settings.workflow_url(recovery_workflow_id(request.service))}",
                markup=False,
            )
        elif progress.sending:
            # The server may have taken the request before the answer came back.
            err_console.print(
                f"interrupted while the request was being sent: it may have been queued; "
                f"{_CHECK_QUEUE}",
                markup=False,
            )
        else:
            err_console.print("interrupted before the request was sent: nothing was started")
        raise SystemExit(130) from None


_CHECK_QUEUE = "see antifragile recovery queue"


@dataclass
class _Progress:
    """What ``start --wait`` has printed, so each change is one line and nothing repeats."""

    service: str
    quiet: bool = False
    sending: bool = False
    """The request is on its way: the server may have it even if no answer came back."""
    sent: bool = False
    state: str = ""
    last: tuple[object, ...] = ()
    hinted: bool = False

    def show(self, key: tuple[object, ...], state: str, text: str) -> None:
        """Print ``HH:MM:SS  STATE  text`` when ``key`` differs from the last line's."""
        self.state = state
        if key == self.last:
            return
        self.last = key
        if not self.quiet:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            err_console.print(f"{stamp}  {state:<17}  {text}", markup=False, highlight=False)

    def need_person(self) -> None:
        """Say once per wait that a person must decide, and with which command."""
        if self.hinted or self.quiet:
            return
        self.hinted = True
        err_console.print(
            f"          a person is needed: antifragile recovery approve {self.service} "
            f"--by NAME   (or: antifragile recovery reject {self.service} --by NAME)",
            markup=False,
            highlight=False,
        )


POLL_S = 1.0
"""How often ``start --wait`` reads the recovery's (or the queue's) state, seconds."""

QUERY_TIMEOUT_S = 5.0
"""How long ``start --wait`` waits for the orchestrator to answer a query, seconds."""


async def _start(
    settings: Settings,
    request: RecoveryRequest,
    wait: bool,
    json_out: bool,
    timeout_s: float = 3600.0,
    progress: _Progress | None = None,
) -> None:
    progress = progress or _Progress(request.service, quiet=json_out)
    client = await connect(settings, runtime=cli_runtime())
    workflow_id = recovery_workflow_id(request.service)
    before = await _run_id(client, workflow_id)
    # --timeout counts from here: sending can take a while (an update no worker takes).
    deadline = asyncio.get_running_loop().time() + timeout_s
    progress.sending = True
    result = await request_recovery(client, request, task_queue=settings.task_queue)
    progress.sent = True
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
        # Admission starts a new run of recovery-{service}: until then, say where it waits.
        current = await _run_id(client, workflow_id)
        if current is not None and current != before:
            run_id = current
            break
        if (
            current is not None
            and result.state is RequestState.RUNNING
            and await running_recovery(client, request.service)
        ):
            # Admitted before this command looked ("already holds a slot"): follow that run.
            run_id = current
            break
        await _show_queued(client, settings, progress)
        if asyncio.get_running_loop().time() >= deadline:
            _gave_up(request.service, progress, settings, json_out, None)
        await asyncio.sleep(POLL_S)
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    if not json_out:
        err_console.print(
            f"admitted; following {workflow_id} … {settings.workflow_url(workflow_id, run_id)}"
        )
    ended = asyncio.ensure_future(handle.result())
    try:
        last_status: RecoveryStatus | None = None
        while not ended.done():
            with contextlib.suppress(RPCError):
                last_status = await _status(handle)
                _show_status(last_status, progress)
            if asyncio.get_running_loop().time() >= deadline:
                _gave_up(request.service, progress, settings, json_out, last_status)
            await asyncio.wait({ended}, timeout=POLL_S)
        await ended
    except WorkflowFailureError as exc:
        status = await _status(handle)
        _print_status(status, settings, json_out)
        cause = exc.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
        if isinstance(cause, CancelledError):
            reason = "cancelled"
        fail(f"recovery of {request.service} ended {status.state.value}: {reason}", code=1)
    finally:
        ended.cancel()
    _print_status(await _status(handle), settings, json_out)


async def _show_queued(client: Client, settings: Settings, progress: _Progress) -> None:
    """One progress line for a request not admitted yet: its place and why it waits."""
    try:
        # A query waits for a worker to answer: bounded, so the wait keeps its --timeout.
        view = await asyncio.wait_for(
            orchestrator_queue(client, task_queue=settings.task_queue), QUERY_TIMEOUT_S
        )
    except TimeoutError:
        progress.show(
            ("no-worker",),
            "REQUESTED",
            f"the orchestrator does not answer: is a worker running on task queue "
            f"{settings.task_queue!r}? (antifragile worker)",
        )
        return
    except RPCError:
        progress.show(("accepted",), "REQUESTED", "handed to the orchestrator; not queued yet")
        return
    entry = next((w for w in view.waiting if w.service == progress.service), None)
    if entry is None and view.waiting_total > len(view.waiting):
        # The query shows the head of a long queue only: this request is further back.
        text = (
            f"behind the first {len(view.waiting)} of {view.waiting_total} waiting; "
            f"waiting for: {_why_queued(view)}"
        )
        progress.show(("queued-far", _why_queued(view)), "QUEUED", text)
        return
    if entry is None:
        progress.show(("admitting",), "ADMITTING", "leaving the queue; its recovery starts")
        return
    text = (
        f"position {entry.position} of {view.waiting_total}, priority {entry.priority}; "
        f"waiting for: {_why_queued(view)}"
    )
    progress.show(("queued", entry.position, _why_queued(view)), "QUEUED", text)


def _why_queued(view: QueueView) -> str:
    """Why a request waits, from the queue's own account (pause, rate, or full slots)."""
    if view.pause_reason:
        return view.pause_reason
    if len(view.running) >= view.max_concurrent:
        busy = ", ".join(r.service for r in view.running[:5])
        more = f" and {len(view.running) - 5} more" if len(view.running) > 5 else ""
        return f"a free slot (all {view.max_concurrent} busy: {busy}{more})"
    return "admission (requests ahead of it go first)"


def _show_status(status: RecoveryStatus, progress: _Progress) -> None:
    """One progress line per change of state, attempt, next attempt or what it waits for."""
    parts = [f"attempt {status.attempt}" if status.attempt else "no attempt yet"]
    if status.attempts_in_round:
        parts[0] += f" ({status.attempts_in_round} of {status.max_attempts} failed this round)"
    if status.next_attempt_at is not None:
        left = (status.next_attempt_at - datetime.now(UTC)).total_seconds()
        parts.append(f"next attempt {status.next_attempt_at:%H:%M:%S} (in {max(0, left):.0f}s)")
    if status.waiting_for and not status.state.terminal:
        parts.append(f"waiting for: {status.waiting_for}")
    elif status.last_error:
        parts.append(f"last error: {status.last_error}")
    key = (status.state, status.attempt, status.next_attempt_at, status.waiting_for)
    progress.show(key, status.state.value, "; ".join(parts))
    if status.state is RecoveryState.AWAITING_APPROVAL:
        progress.need_person()
    else:
        progress.hinted = False  # a later escalation says it again


def _gave_up(
    service: str,
    progress: _Progress,
    settings: Settings,
    json_out: bool,
    status: RecoveryStatus | None,
) -> NoReturn:
    """--timeout passed: show where the recovery is, then exit 1 (it goes on)."""
    if status is not None:
        _print_status(status, settings, json_out)
    state = progress.state or "requested"
    fail(
        f"gave up waiting (--timeout): the recovery of {service} is {state} and goes on; "
        f"follow it with: antifragile recovery status {service}",
        code=1,
    )


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
        client = await connect(settings, runtime=cli_runtime())
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
        client = await connect(settings, runtime=cli_runtime())
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
    """Send an approve/reject, signed with ``ANTIFRAGILE_APPROVER_KEY`` when it is set.

    The signature (``antifragile.hashing``) binds the workflow id, its first run id, the
    decision, the approver and the time; the worker checks it when the policy gives the
    approver a key. Without a key the decision is unsigned and the name is advisory.
    """
    settings = load_settings()
    # Bad input (an empty name, a short key) is refused before anything is sent.
    parse_model(ApprovalSignal, {"approver": by, "note": note}, "decision")

    async def _go() -> None:
        client = await connect(settings, runtime=cli_runtime())
        handle = await _handle(client, service)
        before = await _status(handle)
        if before.state is not RecoveryState.AWAITING_APPROVAL:
            fail(f"nothing awaits approval for {service} (state {before.state.value})")
        signal = await approval_signal(handle, approver=by, note=note, decision=decision.value)
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
    """Approve a round of attempts for SERVICE (AWAITING_APPROVAL only).

    Signed with ANTIFRAGILE_APPROVER_KEY when it is set (required when the worker policy
    gives --by a key); otherwise the name is advisory.
    """
    _decide(service, by, note, Decision.APPROVED)


@app.command("reject")
def reject(
    service: str,
    by: Annotated[str, typer.Option("--by", help="Your name, checked against the policy.")],
    note: Annotated[str, typer.Option(help="Kept with the decision.")] = "",
) -> None:
    """Reject SERVICE's recovery: it ends FAILED (signed like approve)."""
    _decide(service, by, note, Decision.REJECTED)


@app.command("cancel")
def cancel(service: str) -> None:
    """Cancel SERVICE's running recovery: it ends CANCELLED."""
    settings = load_settings()

    async def _go() -> None:
        client = await connect(settings, runtime=cli_runtime())
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
        client = await connect(settings, runtime=cli_runtime())
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
    if view.paused and not view.waiting_total:
        # Nothing waits, but the pause still governs the next request: say so.
        head.add_row("retry budget pause", view.pause_reason)
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
            r.service
            + (" (resumed)" if r.resumed else "")
            + (" (probe admission)" if r.probe else ""),
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
