"""Client side of the fleet-wide recovery queue: requests, signal batching, intakes, the queue.

Also what needs the queue and the recoveries together: where a service's recovery stands
(queued or running) and the list of recoveries with the queued requests first.

Shared by the CLI, the runtime bridge and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    DEFAULT_TASK_QUEUE,
    INTAKE_WORKFLOW_TYPE,
    KIND_INTAKE,
    KIND_ORCHESTRATOR,
    ORCHESTRATOR_WORKFLOW_TYPE,
    QUERY_QUEUE,
    SA_KIND,
    SIGNAL_JOIN,
    SIGNAL_REQUEST_RECOVERIES,
    UPDATE_ENQUEUE,
    intake_shard,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import (
    EnqueueBatch,
    EnqueueRecovery,
    EnqueueResult,
    OrchestratorInput,
    QueueQuery,
    QueueView,
    RequestState,
)
from antifragile.models.recovery import JoinSignal, RecoveryRequest, RecoveryState, RecoveryStatus
from antifragile.models.recovery_intake import IntakeInput
from antifragile.orchestrator.explain import ignored_settings
from antifragile.recovery.client import (
    RecoveryStateError,
    recovery_status,
    running_with_priority,
)

ORCHESTRATOR_SUMMARY = "Recovery orchestrator: fleet-wide priority queue of recoveries"
ORCHESTRATOR_DETAILS = (
    "Admits recoveries by priority (lower first, then first come first served) within "
    "the worker policy's `max_concurrent` slots, `max_admissions_per_minute` and "
    "`retry_budget`.\n\n"
    "**Slots follow work, not waiting:** a recovery that waits for a person gives its slot "
    "back at once; approved, it is queued again with its original arrival (ahead of later "
    "requests of the same priority) and resumes when a slot is free.\n\n"
    "**Retry budget:** when more than `retry_budget` of the attempts of the last "
    "`budget_window_s` failed (at least `budget_min_samples` of them), new admissions "
    "pause until the ratio drops; running recoveries go on.\n\n"
    "Query `queue` for running, waiting and awaiting-approval recoveries."
)


async def running_request(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> RecoveryRequest | None:
    """The request the current run of a recovery runs (its input), read from history.

    Reading history needs no worker (a query would). None when it cannot be read.
    """
    try:
        async for event in handle.fetch_history_events(page_size=1):
            started = event.workflow_execution_started_event_attributes
            if not started.input.payloads:
                return None
            [request] = await client.data_converter.decode(
                list(started.input.payloads), [RecoveryRequest]
            )
            return request if isinstance(request, RecoveryRequest) else None
    except (RPCError, ValueError):
        return None
    return None


async def request_recovery(
    client: Client,
    request: RecoveryRequest,
    *,
    task_queue: str,
    orchestrator_id: str | None = None,
    want_position: bool = True,
    direct: bool = False,
) -> EnqueueResult:
    """Ask for a recovery through the orchestrator (starting the orchestrator if needed).

    A request for a service whose recovery is already running joins it (``join`` with
    the request's priority, as :func:`start_recovery` does) instead of queueing; one for
    a service already waiting is merged by the orchestrator, keeping the more urgent
    priority. Never a duplicate.

    ``want_position`` True (the CLI) enqueues with update-with-start, which answers with
    the position. False (storms, the runtime bridge) hands the request to the service's
    intake (:func:`~antifragile.constants.intake_workflow_id`, one of
    :data:`~antifragile.constants.INTAKE_SHARDS`) with signal-with-start: durable once
    this returns, no per-workflow update limit, no position. The intakes forward to the
    orchestrator in batches, so however many processes report at once, the orchestrator
    gets a few signals (each workflow task of a Python workflow must finish within 2 s,
    and every signal costs the SDK about 0.2 ms). Such requests from this process also
    travel together: those made while a signal is in flight go in the next one
    (``request_recoveries``, up to :data:`MAX_SIGNAL_BATCH` each).

    ``direct`` (with ``want_position`` False) skips the intake: one signal-with-start
    of the orchestrator itself, a workflow task and a forward sooner (~15 ms). Only
    for a request known to be rare fleet-wide (the bridge takes a fleet-wide token for
    it, at most one a second): anything else goes through the intakes, which are what
    keeps a storm a few signals to the orchestrator.

    ``orchestrator_id`` defaults to the task queue's orchestrator
    (:func:`~antifragile.constants.orchestrator_workflow_id`: ``recovery-orchestrator``
    for the default queue).

    In a storm the server refuses more than a few concurrent updates per workflow; the
    request then goes as a signal-with-start (state ``accepted``, position unknown).

    A request that joins or merges reports what it did not change: ``previous_priority``
    and ``ignored`` (its settings that differ from the existing recovery's, e.g. another
    strategy: one recovery runs per service and keeps its own settings).

    Returns:
        Where the request stands: queued (with its position), merged, running, joined,
        awaiting approval (joined a recovery waiting for a person) or accepted.

    Raises:
        temporalio.client.WorkflowUpdateFailedError: the orchestrator refused it (full).
    """
    orchestrator_id = orchestrator_id or orchestrator_workflow_id(task_queue)
    found = await running_with_priority(client, request.service)
    if found is not None:
        running, previous = found
        await running.signal(
            SIGNAL_JOIN,
            JoinSignal(
                priority=request.priority, reason=request.reason, requested_by=request.requested_by
            ),
        )
        kept = await running_request(client, running) if want_position else None
        return EnqueueResult(
            service=request.service,
            state=RequestState.JOINED,
            priority=request.priority if previous is None else min(previous, request.priority),
            previous_priority=previous,
            ignored=ignored_settings(kept, request),
        )
    if not want_position:
        if direct:
            await signal_orchestrator(
                client, [request], orchestrator_id=orchestrator_id, task_queue=task_queue
            )
            return EnqueueResult(
                service=request.service, state=RequestState.ACCEPTED, priority=request.priority
            )
        return await _signal_request(client, request, orchestrator_id, task_queue)
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        ORCHESTRATOR_WORKFLOW_TYPE,
        OrchestratorInput(),
        **_orchestrator_start(orchestrator_id, task_queue),
    )
    try:
        result: EnqueueResult = await client.execute_update_with_start_workflow(
            UPDATE_ENQUEUE,
            EnqueueRecovery(request=request),
            start_workflow_operation=start,
            result_type=EnqueueResult,
            # Fail fast rather than retry for long: a signal does the job just as well.
            rpc_timeout=timedelta(seconds=10),
        )
        return result
    except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        # The server admits only a few in-flight updates per workflow (10 by default) and
        # aborts those caught by a continue-as-new: in a storm, hand the request over as
        # a signal instead. It is just as durable, only the position is unknown, and if
        # the update did land after all the signal merges into it. The same when no
        # worker took the update within the RPC timeout (the SDK raises its own error
        # then): the orchestrator gets the signal whenever a worker runs it.
        if isinstance(exc, RPCError) and exc.status in _NEVER_RETRY:
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # cancelled (Ctrl-C), not timed out
        # Collect the start operation's own copy of the error (else asyncio logs it).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(start.workflow_handle(), timeout=1)
    return await _signal_request(client, request, orchestrator_id, task_queue)


async def _signal_request(
    client: Client, request: RecoveryRequest, orchestrator_id: str, task_queue: str
) -> EnqueueResult:
    await _batcher(client, orchestrator_id, task_queue).submit(request)
    return EnqueueResult(
        service=request.service, state=RequestState.ACCEPTED, priority=request.priority
    )


MAX_SIGNAL_BATCH = 250
"""Most requests in one ``request_recoveries`` signal (about 100 KB of payload)."""


async def signal_orchestrator(
    client: Client, requests: list[RecoveryRequest], *, orchestrator_id: str, task_queue: str
) -> None:
    """Hand requests to the orchestrator in order, starting it if it is not running.

    One ``request_recoveries`` signal-with-start per :data:`MAX_SIGNAL_BATCH` requests;
    durable once this returns. The intakes use it to forward what they received.
    """
    for start in range(0, len(requests), MAX_SIGNAL_BATCH):
        await _signal_with_start(
            client,
            ORCHESTRATOR_WORKFLOW_TYPE,
            OrchestratorInput(),
            EnqueueBatch(requests=requests[start : start + MAX_SIGNAL_BATCH]),
            _orchestrator_start(orchestrator_id, task_queue),
        )


START_RACE_ATTEMPTS = 5
"""Tries of a signal-with-start answered "already started" (see :func:`_signal_with_start`)."""


async def _signal_with_start(
    client: Client, workflow: str, arg: Any, batch: EnqueueBatch, options: dict[str, Any]
) -> None:
    """``request_recoveries`` signal-with-start, retried when it lost a race to start.

    Many processes starting the same workflow at once can see "already started" (the
    time-skipping test server does; the signal was not delivered then): the workflow
    exists by now, so the next try signals it.
    """
    for attempt in range(START_RACE_ATTEMPTS):
        try:
            await client.start_workflow(
                workflow,
                arg,
                start_signal=SIGNAL_REQUEST_RECOVERIES,
                start_signal_args=[batch],
                **options,
            )
            return
        except WorkflowAlreadyStartedError:
            if attempt == START_RACE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))


class _SignalBatcher:
    """Sends the fire-and-forget requests of this process to the intakes in batches.

    Why: the SDK delivers every signal buffered while a workflow task runs in one
    activation, and a Python workflow must finish an activation within 2 s (deadlock
    detection). A storm is spread over the intakes by service, and each process sends
    one signal per intake per round instead of one per service.

    No linger: requests that arrive while a round is in flight form the next round, so a
    lone request (the bridge) goes out at once and a burst coalesces by itself. Each
    caller returns only when the signal carrying its request was accepted (durable).
    """

    def __init__(self, client: Client, orchestrator_id: str, task_queue: str) -> None:
        self._client = client
        self._orchestrator_id = orchestrator_id
        self._task_queue = task_queue
        self._pending: list[tuple[RecoveryRequest, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, request: RecoveryRequest) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())
        await future

    async def _send_all(self) -> None:
        await asyncio.sleep(0)  # let the callers that are ready now join this round
        while self._pending:
            shards: dict[int, list[tuple[RecoveryRequest, asyncio.Future[None]]]] = {}
            for item in self._pending:
                shards.setdefault(intake_shard(item[0].service), []).append(item)
            self._pending.clear()
            batches = [
                (shard, items[start : start + MAX_SIGNAL_BATCH])
                for shard, items in shards.items()
                for start in range(0, len(items), MAX_SIGNAL_BATCH)
            ]
            await asyncio.gather(*(self._send(shard, batch) for shard, batch in batches))

    async def _send(
        self, shard: int, batch: list[tuple[RecoveryRequest, asyncio.Future[None]]]
    ) -> None:
        try:
            await _signal_with_start(
                self._client,
                INTAKE_WORKFLOW_TYPE,
                IntakeInput(orchestrator_id=self._orchestrator_id, task_queue=self._task_queue),
                EnqueueBatch(requests=[r for r, _ in batch]),
                _intake_start(self._orchestrator_id, shard, self._task_queue),
            )
        except BaseException as exc:  # every waiting caller learns why, then it moves on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


_BATCHERS: weakref.WeakKeyDictionary[
    Client, dict[tuple[asyncio.AbstractEventLoop, str, str], _SignalBatcher]
] = weakref.WeakKeyDictionary()


def _batcher(client: Client, orchestrator_id: str, task_queue: str) -> _SignalBatcher:
    per_client = _BATCHERS.setdefault(client, {})
    key = (asyncio.get_running_loop(), orchestrator_id, task_queue)
    batcher = per_client.get(key)
    if batcher is None:
        batcher = per_client[key] = _SignalBatcher(client, orchestrator_id, task_queue)
    return batcher


_NEVER_RETRY = frozenset(
    {
        RPCStatusCode.INVALID_ARGUMENT,
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNAUTHENTICATED,
        RPCStatusCode.UNIMPLEMENTED,
    }
)
"""Errors that a signal would meet too; anything else (update limits, an update aborted
by continue-as-new, a busy server) falls back to signal-with-start."""


def _orchestrator_start(orchestrator_id: str, task_queue: str) -> dict[str, Any]:
    """Options of every (signal- or update-) with-start of the orchestrator."""
    return _start_options(
        orchestrator_id, task_queue, KIND_ORCHESTRATOR, ORCHESTRATOR_SUMMARY, ORCHESTRATOR_DETAILS
    )


def _start_options(
    workflow_id: str, task_queue: str, kind: str, summary: str, details: str
) -> dict[str, Any]:
    """Start options of the queue's singletons: joined if running, readable in the UI."""
    return {
        "id": workflow_id,
        "task_queue": task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "static_summary": summary,
        "static_details": details,
        "search_attributes": TypedSearchAttributes([SearchAttributePair(SA_KIND, kind)]),
    }


INTAKE_SUMMARY = "Recovery intake: forwards fire-and-forget requests to {orchestrator}"
INTAKE_DETAILS = (
    "Receives the recovery requests of in-process bridges and storms for its share of "
    "services and forwards them to the orchestrator in batches, so the orchestrator gets "
    "a few signals however many processes report. Ends after a minute idle; the next "
    "request starts it again. Query `intake` for what it holds."
)


def _intake_start(orchestrator_id: str, shard: int, task_queue: str) -> dict[str, Any]:
    """Options of the signal-with-start of an intake."""
    return _start_options(
        intake_workflow_id(orchestrator_id, shard),
        task_queue,
        KIND_INTAKE,
        INTAKE_SUMMARY.format(orchestrator=orchestrator_id),
        INTAKE_DETAILS,
    )


async def orchestrator_queue(
    client: Client,
    *,
    task_queue: str = DEFAULT_TASK_QUEUE,
    orchestrator_id: str | None = None,
    service: str | None = None,
) -> QueueView:
    """The orchestrator's ``queue`` query: running, waiting and awaiting-approval recoveries.

    Also why admissions wait; with ``service``, also where it stands (``QueueView.lookup``),
    however long the queue.
    """
    orchestrator_id = orchestrator_id or orchestrator_workflow_id(task_queue)
    handle = client.get_workflow_handle(orchestrator_id)
    if service is None:
        view: QueueView = await handle.query(QUERY_QUEUE, result_type=QueueView)
    else:
        view = await handle.query(QUERY_QUEUE, QueueQuery(service=service), result_type=QueueView)
    return view


async def queue_or_none(
    client: Client, *, task_queue: str = DEFAULT_TASK_QUEUE, service: str | None = None
) -> QueueView | None:
    """:func:`orchestrator_queue`, or None when the orchestrator was never started."""
    try:
        return await orchestrator_queue(client, task_queue=task_queue, service=service)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def find_recovery(
    client: Client, service: str, *, task_queue: str = DEFAULT_TASK_QUEUE
) -> RecoveryStatus | QueueView:
    """Where ``service``'s recovery stands: its status, or the queue while it waits.

    A request waiting for a slot has no running recovery yet (admission starts a new run),
    so when the latest run is not running the queue is asked first.

    Returns:
        The queue (``lookup`` says the service waits) when its request waits for a slot;
        otherwise the latest recovery's status.

    Raises:
        RecoveryStateError: Neither a queued request nor any recovery of ``service``.
    """
    handle = client.get_workflow_handle(recovery_workflow_id(service))
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        desc = None
    if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
        # Not running: it may be waiting in the queue for a slot (a new run).
        view = await queue_or_none(client, task_queue=task_queue, service=service)
        if view is not None and view.lookup is not None and view.lookup.state == "waiting":
            return view
    if desc is None:
        raise RecoveryStateError(f"no recovery found for service {service!r}")
    return await recovery_status(handle)


@dataclass(frozen=True)
class RecoveryListing:
    """Result of :func:`list_recoveries`.

    Attributes:
        view: The orchestrator's queue (its head is listed as QUEUED), None when it was not
            read (a state filter) or there is no orchestrator.
        recoveries: Recovery workflows, newest first.
    """

    view: QueueView | None
    recoveries: list[WorkflowExecution] = field(default_factory=list)


async def list_recoveries(
    client: Client,
    *,
    task_queue: str = DEFAULT_TASK_QUEUE,
    state: RecoveryState | None = None,
    limit: int = 500,
) -> RecoveryListing:
    """The queue's waiting requests and the recoveries (only those in ``state``, if given).

    Args:
        client: A connected client.
        task_queue: Where the orchestrator runs.
        state: Only recoveries in this state (the queue is then not read).
        limit: At most this many recoveries. Default 500.

    Returns:
        The queue (None with ``state``, or without an orchestrator) and the recoveries.
    """
    query = 'AfKind="recovery"'
    if state:
        query += f' AND AfState="{state.value}"'
    view = None if state else await queue_or_none(client, task_queue=task_queue)
    recoveries = [wf async for wf in client.list_workflows(query, limit=limit)]
    return RecoveryListing(view=view, recoveries=recoveries)
