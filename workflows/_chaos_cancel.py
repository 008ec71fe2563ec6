"""How a chaos experiment reads a cancel: one an activity spent, an ending no cancel cuts.

A helper of ChaosExperimentWorkflow, not a durable process of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

T = TypeVar("T")

CANCEL_IN_ACTIVITY = "chaos-cancel-in-activity"
"""Patch: a cancel that lands while an activity runs ends the experiment STOPPED. The SDK
spends such a cancel on the activity: one that completes anyway (inject, renew) returned
normally and the run went on for its full duration; one cancelled (TRY_CANCEL) raised an
``ActivityError`` and the run ended FAILED or, from the probe, ABORTED."""


def cancelled_activity(err: ActivityError) -> bool:
    """The activity failed because the workflow was cancelled (patched behaviour)."""
    return (
        is_cancelled_exception(err)
        and workflow.cancellation_reason() is not None
        and workflow.patched(CANCEL_IN_ACTIVITY)
    )


def raise_spent_cancel() -> None:
    """Raise the cancel an activity spent (see :data:`CANCEL_IN_ACTIVITY`).

    Raises:
        asyncio.CancelledError: The workflow was cancelled (patched runs).
    """
    if workflow.cancellation_reason() is not None and workflow.patched(CANCEL_IN_ACTIVITY):
        raise asyncio.CancelledError()


async def shielded(ending: Coroutine[Any, Any, T], note: Callable[[str], None]) -> T:
    """Run ``ending`` in its own task, so a cancel never cuts it short.

    A cancel reaches only the workflow's main task (the caller's), which notes it and keeps
    waiting, so ``ending`` always runs to its end.
    """
    task = asyncio.create_task(ending)
    while not task.done():
        try:
            await workflow.wait([task])
        except asyncio.CancelledError:
            why = workflow.cancellation_reason()
            note(
                "cancellation received while ending"
                + (f" ({why})" if why else "")
                + ": cleanup and report go on"
            )
    return task.result()
