"""Activities of learning from stress: feeding a dependency's ledger from a workflow."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from antifragile.constants import ACTIVITY_RECORD_OBSERVATIONS, profile_workflow_id
from antifragile.learning.client import record_observations
from antifragile.models.learning import RecordObservationsInput, RecordObservationsResult

BAD_OBSERVATIONS_ERROR = "BadObservations"
"""ApplicationError type (non-retryable) of observations addressed to another ledger."""


@activity.defn(name=ACTIVITY_RECORD_OBSERVATIONS)
async def record_dependency_observations(data: RecordObservationsInput) -> RecordObservationsResult:
    """Signal-with-start ``profile-{dependency}`` with the observations.

    The ledger is started on ``data.task_queue`` if it is not running. Re-sending after a
    lost answer is harmless: the ledger keeps one observation per ``(kind, source_id)``.

    Raises:
        ApplicationError: Non-retryable (``BadObservations``) when an observation is for
            another dependency. Temporal errors (server unreachable, refused) propagate and
            are retried by the caller's retry policy.
    """
    try:
        batches = await record_observations(
            activity.client(), data.dependency, data.observations, task_queue=data.task_queue
        )
    except ValueError as exc:
        raise ApplicationError(str(exc), type=BAD_OBSERVATIONS_ERROR, non_retryable=True) from None
    return RecordObservationsResult(
        workflow_id=profile_workflow_id(data.dependency), batches=batches
    )
