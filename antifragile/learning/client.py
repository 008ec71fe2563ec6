"""Client side of a dependency's ledger (``profile-{dependency}``): record and read.

:func:`record_observations` is how anything outside a workflow feeds a ledger (the runtime
bridge's coalesced traffic windows; the ``record_dependency_observations`` activity of
experiments and recoveries calls it too): a signal-with-start, so the ledger exists on
first use. :func:`get_profile` reads it. Every client passed in must use the pydantic data
converter (:func:`antifragile.temporal_client.connect` does).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    DEFAULT_TASK_QUEUE,
    KIND_PROFILE,
    PROFILE_WORKFLOW_TYPE,
    QUERY_CONFIG_CHANGE,
    QUERY_PROFILE,
    SA_KIND,
    SIGNAL_APPLY_ADVICE,
    SIGNAL_RECORD_OBSERVATIONS,
    SIGNAL_REVERT_CONFIG,
    profile_workflow_id,
)
from antifragile.errors import AntifragileError
from antifragile.models.adaptation import (
    ApplyAdviceSignal,
    ChangeOutcome,
    ConfigChange,
    RevertConfigSignal,
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


CHANGE_POLL_S = 0.1
"""Seconds between two reads of a change request's outcome."""
MIN_QUERY_S = 0.5
"""Shortest time one read of a change request's outcome may take, seconds."""


class ChangeNotDecided(AntifragileError):
    """A change request was not decided in time (it may still be; ``advise history``)."""


class ChangeRefused(AntifragileError):
    """A change request was decided REFUSED or FAILED; ``change`` is its record."""

    def __init__(self, message: str, change: ConfigChange) -> None:
        super().__init__(message)
        self.change = change


async def apply_advice(
    client: Client,
    dependency: str,
    *,
    by: str,
    settings: Sequence[str] = (),
    note: str = "",
    timeout: timedelta = timedelta(seconds=30),
    request_id: str = "",
) -> ConfigChange:
    """Ask ``profile-{dependency}`` to apply its advice, and wait for its decision.

    The ledger authorizes ``by`` with the worker policy, recomputes the advice against
    the version in force and publishes it (see ``workflows/_profile_changes.py``).

    Args:
        client: A Temporal client with the pydantic data converter.
        dependency: Whose ledger.
        by: Who approves (must be an approver of the worker policy when it lists some).
        settings: Advice settings to apply; empty: every live-appliable one that changes.
        note: Why; kept with the change and the version.
        timeout: How long to wait for the decision.
        request_id: The request's id (default a fresh one); re-sending one is harmless.

    Returns:
        The change, APPLIED or UNCHANGED.

    Raises:
        ChangeRefused: REFUSED (approver, bounds) or FAILED (Redis).
        ChangeNotDecided: not decided within ``timeout``.
        temporalio.service.RPCError: Temporal refused the signal (NOT_FOUND: no ledger).
    """
    signal = ApplyAdviceSignal(
        request_id=request_id or uuid.uuid4().hex, approver=by, note=note, settings=list(settings)
    )
    return await _request(client, dependency, SIGNAL_APPLY_ADVICE, signal, timeout)


async def revert_config(
    client: Client,
    dependency: str,
    *,
    by: str,
    note: str = "",
    timeout: timedelta = timedelta(seconds=30),
    request_id: str = "",
) -> ConfigChange:
    """Ask ``profile-{dependency}`` to undo the config version in force, and wait.

    Args and errors: as :func:`apply_advice`. Returns the APPLIED change (the new
    version carries the settings in force before the undone one).
    """
    signal = RevertConfigSignal(request_id=request_id or uuid.uuid4().hex, approver=by, note=note)
    return await _request(client, dependency, SIGNAL_REVERT_CONFIG, signal, timeout)


async def get_change(
    client: Client, dependency: str, request_id: str, rpc_timeout: timedelta | None = None
) -> ConfigChange | None:
    """The recorded change of ``request_id`` in ``profile-{dependency}`` (None: not yet).

    Args:
        client: A Temporal client with the pydantic data converter.
        dependency: Whose ledger.
        request_id: The change request's id.
        rpc_timeout: How long the query may take (None: the client's default). With no
            worker running the ledger the server holds a query until its deadline.
    """
    handle = client.get_workflow_handle(profile_workflow_id(dependency))
    found: list[ConfigChange] = await handle.query(
        QUERY_CONFIG_CHANGE, request_id, result_type=list[ConfigChange], rpc_timeout=rpc_timeout
    )
    return found[0] if found else None


async def _request(
    client: Client,
    dependency: str,
    signal_name: str,
    signal: ApplyAdviceSignal | RevertConfigSignal,
    timeout: timedelta,
) -> ConfigChange:
    handle = client.get_workflow_handle(profile_workflow_id(dependency))
    await handle.signal(signal_name, signal)
    deadline = time.monotonic() + timeout.total_seconds()
    unanswered = False
    while True:
        # Each query may take only what is left of the wait (at least MIN_QUERY_S): a
        # ledger without a worker never answers, and the wait must still be kept.
        left = max(deadline - time.monotonic(), MIN_QUERY_S)
        try:
            change = await get_change(
                client, dependency, signal.request_id, rpc_timeout=timedelta(seconds=left)
            )
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
                raise
            change, unanswered = None, True
        if change is not None:
            if change.outcome in (ChangeOutcome.REFUSED, ChangeOutcome.FAILED):
                raise ChangeRefused(
                    f"{dependency}: {change.action} {change.outcome.value}: {change.reason}",
                    change,
                )
            return change
        if time.monotonic() >= deadline:
            hint = " (the ledger did not answer: is a worker running?)" if unanswered else ""
            raise ChangeNotDecided(
                f"{dependency}: request {signal.request_id} not decided within "
                f"{timeout.total_seconds():g} s{hint} (see `antifragile advise history "
                f"{dependency}`)"
            )
        await asyncio.sleep(CHANGE_POLL_S)
