"""Cleanup of a chaos experiment's fault lease: idempotent, complete even if Redis is down.

The lease is removed (``remove_fault``, idempotent). If Redis stays unreachable, the lease
cannot outlive its TTL and every process drops the fault by itself then: the cleanup waits
it out, so "cleaned up" is true either way, and (shielded endings) asks Redis again until
it confirms no lease is left or ``CONFIRM_WINDOW_S`` passes. A helper of
ChaosExperimentWorkflow, not a durable process of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from antifragile.chaos.logic import cleanup_record
    from antifragile.chaos.ui import cleanup_note
    from antifragile.models.chaos import ChaosJournal, CleanupRecord

from workflows import _chaos_commands as commands
from workflows._failures import cause_message

CONFIRM_WINDOW_S = 120.0
"""After an unconfirmed removal and the lease TTL, keep asking Redis this long."""


async def remove_lease(journal: ChaosJournal, note: Callable[[str], None]) -> None:
    """Remove the experiment's lease (if one may exist) and record how in ``journal``.

    Args:
        journal: The experiment; its ``cleanup``, ``removed_at`` and ``placement`` are set.
        note: Adds a line to the experiment's journal.
    """
    if not journal.lease_maybe_written:
        journal.cleanup = CleanupRecord(
            attempted=True, method="nothing_injected", at=workflow.now()
        )
        journal.placement = None
        return
    detail = ""
    confirmed: bool | None = None
    try:
        result = await commands.remove_fault(
            journal.experiment_id, max(5.0, journal.lease_ttl_s), "remove fault lease"
        )
        method = "removed" if result.removed else "already_gone"
        removed = result.removed
        confirmed = True if journal.shielded_ending else None
    except ActivityError as err:
        detail = f"remove_fault failed ({cause_message(err)}); waited for the lease TTL"
        remaining = (journal.lease_until or workflow.now()) - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining, summary="wait for the lease TTL")
        method, removed = "expired", False
        if journal.shielded_ending:
            confirmed, confirmation = await _confirm_removal(journal.experiment_id)
            detail += f"; {confirmation}"
    now = workflow.now()
    journal.removed_at = now
    journal.placement = None
    journal.cleanup = cleanup_record(
        journal, removed=removed, method=method, detail=detail, confirmed=confirmed, now=now
    )
    note(cleanup_note(journal.cleanup.method, journal.cleanup.detail))


async def _confirm_removal(experiment_id: str) -> tuple[bool, str]:
    """After the TTL: ask Redis again until it answers that no lease is left."""
    try:
        result = await commands.remove_fault(
            experiment_id, CONFIRM_WINDOW_S, "confirm the lease is gone"
        )
    except ActivityError as err:
        return False, (
            f"not confirmed: Redis unreachable for {CONFIRM_WINDOW_S:g}s more "
            f"({cause_message(err)}); the lease TTL bounds the fault"
        )
    if result.removed:  # cannot outlive its TTL; say so if Redis ever disagrees
        return True, "confirmed late: a lease was still there and is now removed"
    return True, "confirmed: no lease left"
