"""What a recovery shows in the Temporal UI: its static summary and details (pure text).

Workflows import this module, so it stays free of clients and I/O.
"""

from __future__ import annotations

from antifragile.models.recovery import RecoveryRequest


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
