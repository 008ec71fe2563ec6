"""What a recovery shows in the Temporal UI: its static summary and details (pure text).

Workflows import this module, so it stays free of clients and I/O.
"""

from __future__ import annotations

from antifragile.models.recovery import RecoveryRequest, RecoveryState


def recovery_summary(request: RecoveryRequest) -> str:
    """The one-line summary the Temporal UI shows for a recovery."""
    return (
        f"Recover {request.service} ({request.strategy.value}, priority {request.priority}) "
        f"— probe {request.probe}"
    )


def recovery_details(request: RecoveryRequest) -> str:
    """The static details (Markdown) the Temporal UI shows for a recovery."""
    p = request.policy
    who = request.requested_by or "-"
    why = request.reason or "no reason given"
    lines = [
        f"**Service:** {request.service}",
        f"**Strategy:** {request.strategy.value}; up to {p.max_retry_attempts} attempts "
        f"per round, delays {p.initial_delay_ms} ms x {p.backoff_multiplier} "
        f"up to {p.max_delay_ms} ms",
        f"**Probe:** {request.probe}",
        f"**Action:** {request.action}",
        f"**Requested by:** {who} — {why}",
    ]
    return "\n\n".join(lines)


def recovery_current_details(
    request: RecoveryRequest,
    *,
    state: RecoveryState,
    priority: int,
    attempts: int,
    attempts_in_round: int,
    waiting_for: str,
    watch_probes: int,
    last_error: str,
) -> str:
    """The current details (Markdown) the Temporal UI shows for a running recovery.

    Args:
        request: The recovery's request.
        state: Where it is.
        priority: Its priority now (joins may raise it).
        attempts: Attempts so far.
        attempts_in_round: Failed attempts this round.
        waiting_for: What it waits for ("" shows as "-").
        watch_probes: Watch probes run while awaiting approval (0: line left out).
        last_error: The last failed attempt's detail ("": line left out).
    """
    lines = [
        f"**{state.value}** — {request.service} ({request.strategy.value}, priority {priority})",
        f"Attempts: {attempts} (this round {attempts_in_round} of "
        f"{request.policy.max_retry_attempts})",
        f"Waiting for: {waiting_for or '-'}",
    ]
    if watch_probes:
        lines.append(f"Watch probes while awaiting approval: {watch_probes}")
    if last_error:
        lines.append(f"Last error: {last_error}")
    return "\n\n".join(lines)


def awaiting_approval_text(
    request: RecoveryRequest, attempts: int, failed_in_round: int, last_error: str
) -> tuple[str, str]:
    """Why a recovery waits for a person, and what it waits for.

    Args:
        request: The recovery's request.
        attempts: Attempts so far (0: a manual strategy waits before the first).
        failed_in_round: Failed attempts in the round that just ended.
        last_error: The last failed attempt's detail.

    Returns:
        (reason, waiting_for): one line for the orchestrator, one for the UI and status.
    """
    if not attempts:
        return "manual strategy", "approval before the first attempt (manual strategy)"
    reason = f"{failed_in_round} attempt{'' if failed_in_round == 1 else 's'} failed"
    return reason, (
        f"approval: {failed_in_round} attempts failed "
        f"(last: {last_error or 'unhealthy'}); approve for "
        f"{request.policy.max_retry_attempts} more, or reject"
    )
