"""Client side of a dependency's ledger (``profile-{dependency}``): record and read.

:func:`record_observations` is how anything outside a workflow feeds a ledger (the runtime
bridge's coalesced traffic windows; the ``record_dependency_observations`` activity of
experiments and recoveries calls it too): a signal-with-start, so the ledger exists on
first use. :func:`get_profile` reads it. Every client passed in must use the pydantic data
converter (:func:`antifragile.temporal_client.connect` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    DEFAULT_TASK_QUEUE,
    KIND_PROFILE,
    PROFILE_WORKFLOW_TYPE,
    QUERY_PROFILE,
    SA_KIND,
    SIGNAL_RECORD_OBSERVATIONS,
    profile_workflow_id,
)
from antifragile.models.learning import (
    MAX_OBSERVATIONS_PER_BATCH,
    ExperimentObservation,
    OutageObservation,
    ProfileInput,
    ProfileView,
    RecordObservations,
    TrafficObservation,
)

AnyObservation = ExperimentObservation | OutageObservation | TrafficObservation

PROFILE_SUMMARY = "Ledger of {dependency}: what experiments, outages and traffic showed"
PROFILE_DETAILS = (
    "Keeps the observations of one dependency (chaos experiments, real outages and "
    "coalesced traffic windows), de-duplicated and bounded, continuing as new with them. "
    "Score and advice are recomputed from them. Query `profile` for what it holds; "
    "signal `record_observations` to add some."
)


async def record_observations(
    client: Client,
    dependency: str,
    observations: Sequence[AnyObservation],
    task_queue: str = DEFAULT_TASK_QUEUE,
) -> int:
    """Add observations to ``profile-{dependency}``, starting the ledger if needed.

    Each batch of at most :data:`~antifragile.models.learning.MAX_OBSERVATIONS_PER_BATCH`
    is one signal-with-start (``id_conflict_policy=USE_EXISTING``): a running ledger takes
    the signal, otherwise one is started on ``task_queue`` with the signal. Sending the same
    observations twice is harmless: the ledger keeps one per ``(kind, source_id)``.

    Args:
        client: A Temporal client with the pydantic data converter.
        dependency: Whose ledger.
        observations: What to record; every one's ``dependency`` must be ``dependency``.
        task_queue: Where a new ledger runs (a worker there must run
            DependencyProfileWorkflow). Default :data:`~antifragile.constants.DEFAULT_TASK_QUEUE`.

    Returns:
        Signals sent (0 for no observations: nothing is started).

    Raises:
        ValueError: ``dependency`` is empty, or an observation is another dependency's.
        temporalio.service.RPCError: Temporal refused the start or the signal.
    """
    if not dependency:
        raise ValueError("dependency must not be empty")
    for observation in observations:
        if observation.dependency != dependency:
            raise ValueError(
                f"observation {observation.kind}/{observation.source_id} is for "
                f"{observation.dependency!r}, not {dependency!r}"
            )
    batches = [
        list(observations[i : i + MAX_OBSERVATIONS_PER_BATCH])
        for i in range(0, len(observations), MAX_OBSERVATIONS_PER_BATCH)
    ]
    for batch in batches:
        await client.start_workflow(
            PROFILE_WORKFLOW_TYPE,
            ProfileInput(dependency=dependency),
            id=profile_workflow_id(dependency),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_RECORD_OBSERVATIONS,
            start_signal_args=[RecordObservations(observations=batch)],
            static_summary=PROFILE_SUMMARY.format(dependency=dependency),
            static_details=PROFILE_DETAILS,
            # AfKind only: a search by AfService finds a service's recoveries and
            # experiments, not its ledger (the dependency is in the workflow id).
            search_attributes=TypedSearchAttributes([SearchAttributePair(SA_KIND, KIND_PROFILE)]),
        )
    return len(batches)


async def get_profile(
    client: Client, dependency: str, rpc_timeout: timedelta | None = None
) -> ProfileView | None:
    """The ``profile`` query of ``profile-{dependency}``.

    Args:
        client: A Temporal client with the pydantic data converter.
        dependency: Whose ledger.
        rpc_timeout: How long the query may take (None: the client's default). A ledger
            whose task queue has no worker never answers.

    Returns:
        The ledger as it stands; None when it was never started (nothing observed yet).

    Raises:
        temporalio.service.RPCError: Temporal refused the query (other than not found).
        temporalio.client.WorkflowQueryFailedError: The query failed in the workflow.
    """
    handle = client.get_workflow_handle(profile_workflow_id(dependency))
    try:
        view: ProfileView = await handle.query(
            QUERY_PROFILE, result_type=ProfileView, rpc_timeout=rpc_timeout
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return view
