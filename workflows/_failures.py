"""How the workflows read a failed activity: its message, refusal or cancellation.

Shared by RecoveryWorkflow and ChaosExperimentWorkflow; not a durable process of its own.
"""

from __future__ import annotations

import asyncio

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError


def cause_message(err: ActivityError) -> str:
    """The activity's own error message (an ApplicationError's), else the cause's text."""
    cause = err.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or err)


def is_refusal(err: ActivityError) -> bool:
    """The activity refused (non-retryable: hash mismatch, action not allowed), not crashed."""
    cause = err.cause
    return isinstance(cause, ApplicationError) and cause.non_retryable


def reraise_cancellation(err: ActivityError) -> None:
    """An activity cancelled because the workflow was cancelled is the workflow's cancel.

    Raises:
        asyncio.CancelledError: ``err`` is such a cancellation.
    """
    if isinstance(err.cause, CancelledError):
        raise asyncio.CancelledError() from err
