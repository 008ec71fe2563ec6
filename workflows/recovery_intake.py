"""RecoveryIntakeWorkflow: takes fire-and-forget recovery requests, forwards them in batches.

Why it exists. Every signal a Python workflow receives costs the SDK about 0.2 ms, every
signal that arrives while a workflow task runs is delivered in the next activation, and an
activation must finish within 2 s (deadlock detection), or it fails and is retried with
the same signals, for ever. If 10,000 processes each signalled the orchestrator at once,
one activation would hold them all. Instead each process signals the intake of the
service (``{orchestrator id}-intake-{shard}``, one of
:data:`~antifragile.constants.INTAKE_SHARDS`, chosen by a stable hash of the service
name): a storm is split sixteen ways, and each intake hands what it holds to the
orchestrator with one activity, one ``request_recoveries`` signal per 250 requests.

Order. Requests are forwarded in the order the intake received them; the orchestrator
orders by priority, then by arrival at the orchestrator.

Life. An intake is started by the first request (signal-with-start), ends after
:data:`IDLE_TIMEOUT` with nothing to forward, and is started again by the next request;
a signal that arrives as it ends is not lost (the server refuses the completion and the
run goes on). It continues as new before its history grows large, carrying what it holds.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        ACTIVITY_FORWARD_RECOVERY_REQUESTS,
        INTAKE_WORKFLOW_TYPE,
        QUERY_INTAKE,
        SIGNAL_REQUEST_RECOVERIES,
    )
    from antifragile.models.orchestrator import EnqueueBatch
    from antifragile.models.recovery_intake import (
        ForwardRequestsInput,
        ForwardRequestsResult,
        IntakeInput,
        IntakeResult,
        IntakeStatus,
    )

IDLE_TIMEOUT = timedelta(seconds=60)
"""An intake with nothing to forward for this long ends (the next request restarts it)."""
FORWARD_BATCH = 1000
"""Most requests one ``forward_recovery_requests`` activity hands over (four signals)."""
MAX_CARRIED = 2_000
"""Continue-as-new only while holding at most this many (the carried input stays small);
above it the run forwards first, which takes a few activities."""
FORWARD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)
)


@workflow.defn(name=INTAKE_WORKFLOW_TYPE)
class RecoveryIntakeWorkflow:
    """Forwards the fire-and-forget requests of its share of services to the orchestrator."""

    @workflow.init
    def __init__(self, data: IntakeInput) -> None:
        self._in = data
        self._pending = list(data.pending)
        self._forwarded = data.forwarded
        self._forwards = 0

    @workflow.run
    async def run(self, data: IntakeInput) -> IntakeResult:
        """Forward what arrives until idle; continue as new before the history is large."""
        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=IDLE_TIMEOUT)
            except TimeoutError:
                if not self._pending:  # a request can arrive with the timer's firing
                    break
            batch = self._pending[:FORWARD_BATCH]
            result = await workflow.execute_activity(
                ACTIVITY_FORWARD_RECOVERY_REQUESTS,
                ForwardRequestsInput(
                    orchestrator_id=data.orchestrator_id,
                    task_queue=data.task_queue,
                    requests=batch,
                ),
                result_type=ForwardRequestsResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=FORWARD_RETRY,
                summary=f"forward {len(batch)} request(s)",
            )
            # Signals received meanwhile were appended: the batch is still the head.
            del self._pending[: len(batch)]
            self._forwarded += result.forwarded
            self._forwards += 1
            self._publish()
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    IntakeInput(
                        orchestrator_id=data.orchestrator_id,
                        task_queue=data.task_queue,
                        pending=self._pending,
                        forwarded=self._forwarded,
                        max_history_events=data.max_history_events,
                    )
                )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return IntakeResult(forwarded=self._forwarded)

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        large = info.is_continue_as_new_suggested() or (
            info.get_current_history_length() >= self._in.max_history_events
        )
        return large and len(self._pending) <= MAX_CARRIED

    def _publish(self) -> None:
        workflow.set_current_details(
            f"Forwarded {self._forwarded} request(s) to {self._in.orchestrator_id} "
            f"({self._forwards} batch(es) this run); holding {len(self._pending)}."
        )

    @workflow.signal(name=SIGNAL_REQUEST_RECOVERIES)
    def request_recoveries(self, data: EnqueueBatch) -> None:
        """Requests to forward, in arrival order (one signal per process and round)."""
        self._pending.extend(data.requests)

    @workflow.query(name=QUERY_INTAKE)
    def intake(self) -> IntakeStatus:
        """What this intake holds and has forwarded."""
        return IntakeStatus(
            orchestrator_id=self._in.orchestrator_id,
            pending=len(self._pending),
            forwarded=self._forwarded,
            forwards=self._forwards,
        )
