"""``antifragile recovery …``: start, follow, approve and cancel recoveries.

Each command parses its arguments, calls a client function
(:mod:`antifragile.orchestrator.client`, :mod:`antifragile.recovery.client`) and renders
the result model (:mod:`antifragile.cli._render.recovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, NoReturn, TypeVar

import typer
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.cli._common import (
    approval_signal,
    console,
    err_console,
    fail,
    load_settings,
    parse_duration_s,
    parse_model,
    print_json,
    run_command,
    unreachable,
)
from antifragile.cli._render.recovery import (
    Progress,
    describe_request,
    print_queue,
    print_queued,
    print_status,
    render_decision,
    render_listing,
    show_queued,
    show_status,
)
from antifragile.constants import orchestrator_workflow_id, recovery_workflow_id
from antifragile.models.common import ApprovalSignal, Decision
from antifragile.models.orchestrator import RequestState
from antifragile.models.recovery import (
    RecoveryRequest,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.orchestrator.client import (
    find_recovery,
    list_recoveries,
    orchestrator_queue,
    queue_or_none,
    request_recovery,
)
from antifragile.recovery.client import (
    cancel_recovery,
    latest_recovery,
    recovery_status,
    running_recovery,
    send_decision,
)
from antifragile.settings import Settings

app = typer.Typer(
    help="Start, follow, approve and cancel durable recoveries.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]

T = TypeVar("T")


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
    progress = Progress(request.service, quiet=json_out)
    try:
        run_command(
            lambda client, _: _start(
                settings, client, request, wait, json_out, timeout_s, progress
            ),
            settings,
            quiet_core=True,
            passthrough=(RPCError,),
        )
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


POLL_S = 1.0
"""How often ``start --wait`` reads the recovery's (or the queue's) state, seconds."""

QUERY_TIMEOUT_S = 5.0
"""How long ``start --wait`` waits for the orchestrator to answer a query, seconds."""


async def _start(
    settings: Settings,
    client: Client,
    request: RecoveryRequest,
    wait: bool,
    json_out: bool,
    timeout_s: float = 3600.0,
    progress: Progress | None = None,
) -> None:
    progress = progress or Progress(request.service, quiet=json_out)
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
            console.print(describe_request(result))
        return
    if not json_out:
        err_console.print(describe_request(result))
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
                last_status = await recovery_status(handle)
                show_status(last_status, progress)
            if asyncio.get_running_loop().time() >= deadline:
                _gave_up(request.service, progress, settings, json_out, last_status)
            await asyncio.wait({ended}, timeout=POLL_S)
        await ended
    except WorkflowFailureError as exc:
        status = await recovery_status(handle)
        print_status(status, settings, json_out)
        cause = exc.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
        if isinstance(cause, CancelledError):
            reason = "cancelled"
        fail(f"recovery of {request.service} ended {status.state.value}: {reason}", code=1)
    finally:
        ended.cancel()
    print_status(await recovery_status(handle), settings, json_out)


async def _show_queued(client: Client, settings: Settings, progress: Progress) -> None:
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
    show_queued(view, progress)


def _gave_up(
    service: str,
    progress: Progress,
    settings: Settings,
    json_out: bool,
    status: RecoveryStatus | None,
) -> NoReturn:
    """--timeout passed: show where the recovery is, then exit 1 (it goes on)."""
    if status is not None:
        print_status(status, settings, json_out)
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


@app.command(
    "status",
    short_help="Show SERVICE's recovery: state, attempts, next attempt, decisions (or its "
    "place in the queue while it waits for a slot).",
)
def status(service: str, json_out: JsonFlag = False) -> None:
    """Show SERVICE's recovery: state, attempts, next attempt, decisions.

    While it waits for a slot: its place in the queue instead.
    """
    settings = load_settings()
    found = run_command(
        lambda client, _: find_recovery(client, service, task_queue=settings.task_queue),
        settings,
        quiet_core=True,
    )
    if isinstance(found, RecoveryStatus):
        print_status(found, settings, json_out)
    else:
        print_queued(found, service, json_out)


@app.command(
    "list",
    short_help="List recoveries, newest first (optionally only those in STATE); requests "
    "still waiting in the queue for a slot come first, as QUEUED.",
)
def list_(
    state: Annotated[RecoveryState | None, typer.Option(case_sensitive=False)] = None,
    json_out: JsonFlag = False,
) -> None:
    """List recoveries, newest first (optionally only those in STATE).

    Requests still waiting in the queue for a slot come first, as QUEUED.
    """
    settings = load_settings()
    listing = run_command(
        lambda client, _: list_recoveries(client, task_queue=settings.task_queue, state=state),
        settings,
        quiet_core=True,
    )
    render_listing(listing, json_out)


def _decide(service: str, by: str, note: str, decision: Decision) -> None:
    """Send an approve/reject, signed with ``ANTIFRAGILE_APPROVER_KEY`` when it is set.

    The signature (``antifragile.hashing``) binds the workflow id, its first run id, the
    decision, the approver and the time; the worker checks it when the policy gives the
    approver a key. Without a key the decision is unsigned and the name is advisory.
    """
    settings = load_settings()
    # Bad input (an empty name, a short key) is refused before anything is sent.
    parse_model(ApprovalSignal, {"approver": by, "note": note}, "decision")

    async def _go(client: Client, _: Settings) -> None:
        handle = await latest_recovery(client, service)
        before = await recovery_status(handle)
        if before.state is not RecoveryState.AWAITING_APPROVAL:
            fail(f"nothing awaits approval for {service} (state {before.state.value})")
        signal = await approval_signal(handle, approver=by, note=note, decision=decision.value)
        verdict = await send_decision(handle, decision, signal, len(before.decisions))
        if verdict is None:
            console.print(f"signal sent; {service} has not recorded the decision yet")
            return
        record, after = verdict
        if record.decision is Decision.REFUSED:
            fail(f"{by} was refused: {record.reason}")
        render_decision(service, record, after)

    run_command(_go, settings, quiet_core=True)


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
    workflow_id = run_command(lambda client, _: cancel_recovery(client, service), quiet_core=True)
    console.print(f"cancellation requested for {workflow_id}")


@app.command("queue")
def queue(json_out: JsonFlag = False) -> None:
    """Show the orchestrator's queue: running and waiting recoveries, and any pause."""
    settings = load_settings()
    view = run_command(
        lambda client, _: queue_or_none(client, task_queue=settings.task_queue),
        settings,
        quiet_core=True,
    )
    if view is None:
        fail("no recovery orchestrator yet: `antifragile recovery start` creates it")
    print_queue(view, json_out)
