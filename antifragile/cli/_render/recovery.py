"""What the recovery commands print: rich tables, progress lines and JSON documents.

Commands parse their arguments, call a client function that returns a result model, and
hand that model to a function here; nothing here talks to a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table

from antifragile.cli._common import console, err_console, first_value, print_json
from antifragile.constants import recovery_workflow_id
from antifragile.models.common import ApprovalRecord
from antifragile.models.orchestrator import EnqueueResult, QueueView, RequestState
from antifragile.models.recovery import RecoveryState, RecoveryStatus
from antifragile.orchestrator.explain import format_duration, why_waiting
from antifragile.settings import Settings

if TYPE_CHECKING:  # the client imports temporalio: rendering never needs it at run time
    from antifragile.orchestrator.client import RecoveryListing


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    delta = (value - datetime.now(UTC)).total_seconds()
    rel = f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"
    return f"{value:%H:%M:%S} UTC ({rel})"


def render_status(status: RecoveryStatus, settings: Settings) -> None:
    """Print a recovery's status as rich tables.

    Args:
        status: The recovery's ``status`` query result.
        settings: For the link to the recovery in the Temporal UI.
    """
    head = Table.grid(padding=(0, 2))
    head.add_row("service", status.service)
    head.add_row("state", f"[bold]{status.state.value}[/bold]")
    head.add_row("strategy", status.strategy.value)
    head.add_row("priority", str(status.priority))
    if status.state.terminal:
        # Over: no round in progress, no attempt to come (a cancelled recovery kept the
        # time of an attempt that will never run).
        head.add_row("attempts", str(status.attempt))
    else:
        head.add_row(
            "attempts",
            f"{status.attempt} (round: {status.attempts_in_round} of {status.max_attempts})",
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


def print_status(status: RecoveryStatus, settings: Settings, json_out: bool) -> None:
    """Print a recovery's status: one JSON document, or :func:`render_status`'s tables."""
    if json_out:
        print_json(status)
    else:
        render_status(status, settings)


def describe_request(result: EnqueueResult) -> str:
    """What became of a recovery request, in one line (or a few, for what it ignored).

    Args:
        result: The orchestrator's answer to the request.

    Returns:
        Rich markup: queued or merged (position, priority, slots), joined, or accepted.
    """
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


@dataclass
class Progress:
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


def show_queued(view: QueueView, progress: Progress) -> None:
    """One progress line for a request not admitted yet: its place and why it waits."""
    entry = next((w for w in view.waiting if w.service == progress.service), None)
    if entry is None and view.waiting_total > len(view.waiting):
        # The query shows the head of a long queue only: this request is further back.
        text = (
            f"behind the first {len(view.waiting)} of {view.waiting_total} waiting; "
            f"waiting for: {why_queued(view)}"
        )
        progress.show(("queued-far", why_queued(view)), "QUEUED", text)
        return
    if entry is None:
        progress.show(("admitting",), "ADMITTING", "leaving the queue; its recovery starts")
        return
    text = (
        f"position {entry.position} of {view.waiting_total}, priority {entry.priority}; "
        f"waiting for: {why_queued(view)}"
    )
    progress.show(("queued", entry.position, why_queued(view)), "QUEUED", text)


def why_queued(view: QueueView) -> str:
    """Why a request waits, from the queue's own account (pause, rate, or full slots)."""
    if view.pause_reason:
        return view.pause_reason
    if len(view.running) >= view.max_concurrent:
        busy = ", ".join(r.service for r in view.running[:5])
        more = f" and {len(view.running) - 5} more" if len(view.running) > 5 else ""
        return f"a free slot (all {view.max_concurrent} busy: {busy}{more})"
    return "admission (requests ahead of it go first)"


def show_status(status: RecoveryStatus, progress: Progress) -> None:
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


def print_queued(view: QueueView, service: str, json_out: bool) -> None:
    """A service whose request waits for a slot: position, wait so far, why.

    Args:
        view: The orchestrator's queue with ``service`` looked up (``view.lookup`` set).
        service: The service asked about.
        json_out: One JSON document instead of a table.
    """
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


def render_listing(listing: RecoveryListing, json_out: bool) -> None:
    """Print ``recovery list``: queued requests first (as QUEUED), then recoveries.

    Args:
        listing: The queue's head (if read) and the recoveries found, newest first.
        json_out: One JSON list of rows instead of a table.
    """
    view = listing.view
    rows: list[dict[str, Any]] = []
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
    for wf in listing.recoveries:
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
    if not rows:
        console.print("no recoveries")
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


def render_decision(service: str, record: ApprovalRecord, after: RecoveryStatus) -> None:
    """Print what a recorded approve/reject did to ``service``'s recovery."""
    console.print(
        f"{record.decision.value} by {record.approver}: recovery of "
        f"{service} is now {after.state.value}"
    )


def print_queue(view: QueueView, json_out: bool) -> None:
    """Print ``recovery queue``: one JSON document (with why requests wait), or tables."""
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


def render_queue(view: QueueView, now: datetime | None = None) -> None:
    """Print the orchestrator's queue as rich tables.

    Args:
        view: The orchestrator's ``queue`` query result.
        now: When durations are computed from the view's timestamps (default: the moment
            of printing).
    """
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
    # Empty sections are left out: the head already says 0 running / 0 waiting.
    if view.running:
        _running(view, now)
    if view.waiting:
        _waiting(view, now)
    if view.waiting_total > len(view.waiting):
        console.print(f"… and {view.waiting_total - len(view.waiting)} more waiting")
    if view.awaiting_approval:
        _awaiting(view, now)


def _running(view: QueueView, now: datetime) -> None:
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


def _waiting(view: QueueView, now: datetime) -> None:
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


def _awaiting(view: QueueView, now: datetime) -> None:
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
