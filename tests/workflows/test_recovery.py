"""RecoveryWorkflow on the time-skipping server: strategies, escalation, approvals, wake-up.

The probe and action are scripted activities registered under the real names (as in
temporalio/samples-python), so each test decides when the service comes back; hash
validation and approver checks are the real activities. Integration tests use real probes.
"""

from __future__ import annotations

import asyncio
import http.server
import itertools
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.common import CommonActivities
from activities.recovery import RecoveryActivities
from antifragile.constants import SA_PRIORITY
from antifragile.hashing import sign_decision
from antifragile.models.common import ApprovalSignal, Decision, HealthChangedSignal
from antifragile.models.recovery import (
    ProbeInput,
    ProbeResult,
    RecoveryActionInput,
    RecoveryActionResult,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryResume,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
    ValidateHashInput,
    ValidateHashResult,
)
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from antifragile.testing import eventually
from tests.helpers import time_skipping_server
from tests.workflows.recovery_parent import RecoveryParent
from workers.main import workflow_runner
from workflows.recovery import RecoveryWorkflow


class ScriptedService:
    """Probe and action activities whose answers the test scripts."""

    def __init__(self, healthy_on_attempt: int | None) -> None:
        self.healthy_on_attempt = healthy_on_attempt
        self.probes = 0
        self.actions: list[int] = []
        self.up = False
        """Set by a test: the service is back, every probe from now on is healthy."""

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.probes += 1
        healthy = self.up or (
            self.healthy_on_attempt is not None and self.probes >= self.healthy_on_attempt
        )
        return ProbeResult(healthy=healthy, detail="ok" if healthy else "connection refused")

    @activity.defn(name="run_recovery_action")
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        self.actions.append(data.attempt)
        return RecoveryActionResult(ok=True, detail="ok")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: an activity another module left in
    flight on a shared server stops it from skipping time, and these tests skip hours."""
    async with time_skipping_server() as environment:
        yield environment


@pytest.fixture
def running(env: WorkflowEnvironment) -> Callable[..., object]:
    @asynccontextmanager
    async def _run(
        service: ScriptedService, policy: WorkerPolicy | None = None
    ) -> AsyncIterator[str]:
        queue = f"tq-{uuid.uuid4().hex[:8]}"
        common = CommonActivities(Settings(), policy or WorkerPolicy())
        validate = getattr(service, "validate_constitutional_hash", None)
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[RecoveryWorkflow, RecoveryParent],
            workflow_runner=workflow_runner(strict=True),
            activities=[
                validate or common.validate_constitutional_hash,
                common.authorize_approver,
                service.probe_service,
                service.run_recovery_action,
            ],
        ):
            yield queue

    return _run


def request(service: str | None = None, **kw: object) -> RecoveryRequest:
    return RecoveryRequest(
        service=service or f"svc-{uuid.uuid4().hex[:6]}", probe="tcp://127.0.0.1:9", **kw
    )


async def wait_state(
    handle: WorkflowHandle, state: RecoveryState, timeout: float = 10
) -> RecoveryStatus:

    async def reached() -> RecoveryStatus:
        try:
            status: RecoveryStatus | None = await handle.query("status", result_type=RecoveryStatus)
        except RPCError as err:  # an orchestrated recovery starts a moment later
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise
            status = None
        assert status is not None and status.state is state, (
            f"state stayed {status and status.state}, wanted {state}"
        )
        return status

    found: RecoveryStatus = await eventually(reached, timeout)
    return found


async def cancel_and_wait(handle: WorkflowHandle) -> None:
    """Cancel and wait until the workflow has closed while its worker still runs: a run
    left open would hold the shared time-skipping server's clock for later tests."""
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()


def gaps(result: RecoveryResult) -> list[float]:
    starts = [a.started_at for a in result.status.attempts]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RecoveryStrategy.EXPONENTIAL_BACKOFF, [10, 20, 40, 50]),
        (RecoveryStrategy.LINEAR_BACKOFF, [10, 20, 30, 40]),
        (RecoveryStrategy.IMMEDIATE, [0, 0, 0, 0]),
    ],
)
async def test_attempts_are_spaced_by_the_strategy_delays(
    env: WorkflowEnvironment, running, strategy: RecoveryStrategy, expected: list[int]
) -> None:
    service = ScriptedService(healthy_on_attempt=5)
    policy = RecoveryPolicy(initial_delay_ms=10_000, max_delay_ms=50_000, max_retry_attempts=5)
    async with running(service) as queue:
        handle = await start_recovery(
            env.client, request(strategy=strategy, policy=policy), task_queue=queue
        )
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    assert result.attempts == 5
    assert [round(g) for g in gaps(result)] == expected
    assert service.actions == [1, 2, 3, 4, 5]


async def test_exhausted_retries_escalate_to_approval_and_approval_grants_a_new_round(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=3)
    policy = RecoveryPolicy(initial_delay_ms=1000, max_retry_attempts=2)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL, timeout=30)
        assert status.attempt == 2
        assert "approve" in status.waiting_for
        await handle.signal("approve", ApprovalSignal(approver="oncall", note="go"))
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    assert result.attempts == 3
    assert [(d.approver, d.decision) for d in result.status.decisions] == [
        ("oncall", Decision.APPROVED)
    ]


async def test_rejection_ends_the_recovery_failed_with_who_rejected(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service) as queue:
        handle = await start_recovery(
            env.client, request(policy=RecoveryPolicy(max_retry_attempts=1)), task_queue=queue
        )
        await wait_state(handle, RecoveryState.AWAITING_APPROVAL, timeout=30)
        await handle.signal("reject", ApprovalSignal(approver="lead", note="replace it"))
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        status = await handle.query("status", result_type=RecoveryStatus)
    assert isinstance(info.value.cause, ApplicationError)
    assert "rejected by lead: replace it" in info.value.cause.message
    assert status.state is RecoveryState.FAILED
    assert status.decisions[-1].decision is Decision.REJECTED


async def test_approval_from_a_name_outside_the_policy_is_refused_and_recorded(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=1)
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=["alice"]))
    async with running(service, policy) as queue:
        handle = await start_recovery(
            env.client, request(strategy=RecoveryStrategy.MANUAL), task_queue=queue
        )
        await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        await handle.signal("approve", ApprovalSignal(approver="mallory"))
        await handle.signal("approve", ApprovalSignal(approver="alice", note="ok"))
        result = await handle.result()
    decisions = [(d.approver, d.decision) for d in result.status.decisions]
    assert decisions == [("mallory", Decision.REFUSED), ("alice", Decision.APPROVED)]
    assert "not an approver" in result.status.decisions[0].reason
    assert service.probes == 1


async def test_manual_strategy_runs_no_attempt_before_approval(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service) as queue:
        handle = await start_recovery(
            env.client, request(strategy=RecoveryStrategy.MANUAL), task_queue=queue
        )
        status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        # Ten minutes, not hours: each watch probe is an activity round trip, and a long
        # skip on a loaded machine strained the shared time-skipping server. Half a minute
        # more, so the sleep never ends exactly as a watch probe (every 60 s) starts.
        await env.sleep(timedelta(minutes=10, seconds=30))
        status = await handle.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.AWAITING_APPROVAL
        assert status.attempt == 0 and service.actions == []
        # Only the slow watch probes (every max_delay, 60 s) ran: no action, no attempt.
        assert 8 <= status.watch_probes == service.probes <= 11
        assert status.waiting_for.startswith("approval before the first attempt")
        assert f"watch probe {status.watch_probes}: connection refused" in status.waiting_for
        # No skipping from here: a skipped minute would let the next watch probe find the
        # service up before the approval lands (that path has its own test).
        with env.auto_time_skipping_disabled():
            service.up = True
            await handle.signal("approve", ApprovalSignal(approver="oncall"))
            result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    assert result.attempts == 1 and service.actions == [1]
    assert not result.status.recovered_while_awaiting_approval


async def test_health_changed_wakes_a_waiting_recovery_to_probe_at_once(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=2)
    policy = RecoveryPolicy(initial_delay_ms=3_600_000, max_delay_ms=3_600_000)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        status = await wait_state(handle, RecoveryState.WAITING_BACKOFF)
        assert status.next_attempt_at is not None
        await handle.signal(
            "health_changed", HealthChangedSignal(service=status.service, healthy=True)
        )
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    assert gaps(result)[0] < 60, "the second attempt should not wait out the hour"


async def test_unhealthy_report_does_not_cut_the_backoff_short(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=2)
    policy = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        status = await wait_state(handle, RecoveryState.WAITING_BACKOFF)
        await handle.signal(
            "health_changed", HealthChangedSignal(service=status.service, healthy=False)
        )
        result = await handle.result()
    assert round(gaps(result)[0]) == 600


async def test_hash_mismatch_fails_before_any_action_runs(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=1)
    async with running(service) as queue:
        handle = await start_recovery(
            env.client, request(constitutional_hash="deadbeefdeadbeef"), task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        status = await handle.query("status", result_type=RecoveryStatus)
    message = str(info.value.cause)
    assert "constitutional hash mismatch" in message
    assert "deadbeefdeadbeef" not in message, "never show the whole hash"
    assert status.state is RecoveryState.FAILED
    assert service.actions == [] and service.probes == 0


async def test_cancellation_ends_the_recovery_cancelled(env: WorkflowEnvironment, running) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(), task_queue=queue)
        await wait_state(handle, RecoveryState.WAITING_BACKOFF)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        status = await handle.query("status", result_type=RecoveryStatus)
    assert isinstance(info.value.cause, CancelledError)
    assert status.state is RecoveryState.CANCELLED


async def test_a_second_request_joins_the_running_recovery_and_raises_its_priority(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    name = f"svc-{uuid.uuid4().hex[:6]}"
    async with running(service) as queue:
        first = await start_recovery(env.client, request(name, priority=5), task_queue=queue)
        await wait_state(first, RecoveryState.WAITING_BACKOFF)
        second = await start_recovery(env.client, request(name, priority=2), task_queue=queue)
        assert second.result_run_id == first.result_run_id
        status = await first.query("status", result_type=RecoveryStatus)
        assert status.priority == 2 and status.joins == 2
        desc = await first.describe()
        await cancel_and_wait(first)
    assert desc.typed_search_attributes.get(SA_PRIORITY) == 2


async def test_an_approval_when_nothing_awaits_one_is_recorded_as_ignored(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(), task_queue=queue)
        await wait_state(handle, RecoveryState.WAITING_BACKOFF)
        await handle.signal("approve", ApprovalSignal(approver="eager"))
        status = await handle.query("status", result_type=RecoveryStatus)
        while not status.decisions:
            status = await handle.query("status", result_type=RecoveryStatus)
        await cancel_and_wait(handle)
    assert status.decisions[0].decision is Decision.IGNORED


async def test_an_action_the_policy_does_not_define_fails_the_recovery(
    env: WorkflowEnvironment,
) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    settings, policy = Settings(), WorkerPolicy()
    common, rec = CommonActivities(settings, policy), RecoveryActivities(settings, policy)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RecoveryWorkflow],
        workflow_runner=workflow_runner(strict=True),
        activities=[
            common.validate_constitutional_hash,
            common.authorize_approver,
            common.probe_service,
            rec.run_recovery_action,
        ],
    ):
        handle = await start_recovery(
            env.client, request(action="command:rm-everything"), task_queue=queue
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert "not defined in the worker policy" in str(info.value.cause)


class SlowProbe(ScriptedService):
    """A probe that runs until it is cancelled, so a test can cancel mid-probe."""

    def __init__(self) -> None:
        super().__init__(healthy_on_attempt=None)
        self.started = asyncio.Event()

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.started.set()
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.05)


async def test_cancelling_during_a_probe_ends_the_recovery_cancelled_not_failed(
    env: WorkflowEnvironment, running
) -> None:
    service = SlowProbe()
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(), task_queue=queue)
        await asyncio.wait_for(service.started.wait(), 10)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        status = await handle.query("status", result_type=RecoveryStatus)
    assert isinstance(info.value.cause, CancelledError)
    assert status.state is RecoveryState.CANCELLED
    assert status.attempts == [], "a cancelled probe is not an unhealthy attempt"


# --- orchestrated recoveries: slots follow work, not waiting (issue 10, item 1) ------------


async def parent_log(parent: WorkflowHandle, entries: int, timeout: float = 10) -> list[str]:
    """The stand-in orchestrator's log once it has at least ``entries`` entries."""
    log: list[str] = []

    async def heard() -> bool:
        log[:] = await parent.query(RecoveryParent.log)
        assert len(log) >= entries, f"the orchestrator heard only {log}"
        return True

    await eventually(heard, timeout)
    return log


async def start_orchestrated(
    env: WorkflowEnvironment, queue: str, req: RecoveryRequest
) -> tuple[WorkflowHandle, WorkflowHandle]:
    parent = await env.client.start_workflow(
        RecoveryParent.run, req, id=f"orchestrator-{req.service}", task_queue=queue
    )
    child = env.client.get_workflow_handle(f"recovery-{req.service}", result_type=RecoveryResult)
    return parent, child


async def test_an_escalated_orchestrated_recovery_frees_its_slot_and_waits_for_one_after_approval(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    req = request(policy=RecoveryPolicy(initial_delay_ms=100, max_retry_attempts=2), priority=3)
    wid = f"recovery-{req.service}"
    async with running(service) as queue:
        parent, child = await start_orchestrated(env, queue, req)
        status = await wait_state(child, RecoveryState.AWAITING_APPROVAL, timeout=30)
        assert status.orchestrated
        assert await parent_log(parent, 3) == [
            "attempt 1 failed",
            "attempt 2 failed",
            f"waiting {wid}: 2 attempts failed",
        ]
        await child.signal("approve", ApprovalSignal(approver="oncall"))
        status = await wait_state(child, RecoveryState.SCHEDULED)
        assert "slot" in status.waiting_for
        assert (await parent_log(parent, 4))[3] == f"resuming {wid} at priority 3"
        # Approved but no slot yet: no attempt runs, however long the queue takes.
        await env.sleep(timedelta(hours=1))
        status = await child.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.SCHEDULED and status.attempt == 2
        assert service.actions == [1, 2]
        service.up = True
        await parent.signal(RecoveryParent.grant)
        log = await parent.result()
    assert log[4:] == ["granted", "attempt 3 ok", "child SUCCEEDED"]
    assert service.actions == [1, 2, 3]


async def test_an_orchestrated_manual_recovery_reports_waiting_before_any_attempt(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    req = request(strategy=RecoveryStrategy.MANUAL)
    wid = f"recovery-{req.service}"
    async with running(service) as queue:
        parent, child = await start_orchestrated(env, queue, req)
        await wait_state(child, RecoveryState.AWAITING_APPROVAL)
        assert await parent_log(parent, 1) == [f"waiting {wid}: manual strategy"]
        await child.signal("approve", ApprovalSignal(approver="oncall"))
        await parent_log(parent, 2)
        service.up = True
        await parent.signal(RecoveryParent.grant)
        log = await parent.result()
    assert log == [
        f"waiting {wid}: manual strategy",
        f"resuming {wid} at priority 1",
        "granted",
        "attempt 1 ok",
        "child SUCCEEDED",
    ]


async def test_a_recovery_started_directly_signals_nothing_and_waits_for_no_slot(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service) as queue:
        handle = await start_recovery(
            env.client, request(strategy=RecoveryStrategy.MANUAL), task_queue=queue
        )
        status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        assert not status.orchestrated
        service.up = True
        await handle.signal("approve", ApprovalSignal(approver="oncall"))
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 1
    history = await handle.fetch_history()
    assert not [
        e
        for e in history.events
        if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
    ]


async def test_a_healthy_report_while_awaiting_approval_ends_it_recovered_without_a_person(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    req = request(policy=RecoveryPolicy(max_retry_attempts=1))
    wid = f"recovery-{req.service}"
    async with running(service) as queue:
        parent, child = await start_orchestrated(env, queue, req)
        await wait_state(child, RecoveryState.AWAITING_APPROVAL)
        service.up = True
        await child.signal("health_changed", HealthChangedSignal(service=req.service, healthy=True))
        log = await parent.result()
        result = await child.result()
    # The watch probe is not an attempt: the retry budget hears of attempt 1 only.
    assert log == ["attempt 1 failed", f"waiting {wid}: 1 attempt failed", "child SUCCEEDED"]
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 1
    assert "recovered while awaiting approval" in result.message
    assert result.status.recovered_while_awaiting_approval
    assert result.status.watch_probes == 1 and result.status.decisions == []
    assert service.actions == [1]


async def test_a_slow_watch_probe_every_max_delay_finds_a_service_that_came_back(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    policy = RecoveryPolicy(max_retry_attempts=1, initial_delay_ms=1000, max_delay_ms=300_000)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        service.up = True
        await env.sleep(timedelta(seconds=250))
        status = await handle.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.AWAITING_APPROVAL and status.watch_probes == 0
        await env.sleep(timedelta(seconds=100))
        status = await wait_state(handle, RecoveryState.SUCCEEDED)
    assert status.recovered_while_awaiting_approval and status.watch_probes == 1
    assert status.attempt == 1 and service.probes == 2


# --- no lost wake-ups (issue 10, item 2) ---------------------------------------------------


class WakeDuring(ScriptedService):
    """The service comes back, and says so with ``health_changed``, during one step.

    ``step`` is ``hash``, ``action`` or ``probe``; ``call`` which call of it (1-based). The
    signal is sent from inside the activity and acknowledged before it returns, so it
    lands exactly while that step runs. A probe that is running when the service comes
    back has already looked: it still reports unhealthy.
    """

    def __init__(self, client: object, step: str, call: int) -> None:
        super().__init__(healthy_on_attempt=None)
        self.client = client
        self.step, self.call = step, call
        self.calls: dict[str, int] = {"hash": 0, "action": 0, "probe": 0}

    async def _maybe_wake(self, step: str) -> None:
        self.calls[step] += 1
        if (step, self.calls[step]) == (self.step, self.call):
            self.up = True
            handle = self.client.get_workflow_handle(activity.info().workflow_id)  # type: ignore[attr-defined]
            await handle.signal("health_changed", HealthChangedSignal(service="x", healthy=True))

    @activity.defn(name="validate_constitutional_hash")
    async def validate_constitutional_hash(self, data: ValidateHashInput) -> ValidateHashResult:
        await self._maybe_wake("hash")
        return ValidateHashResult(valid=True)

    @activity.defn(name="run_recovery_action")
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        self.actions.append(data.attempt)
        await self._maybe_wake("action")
        return RecoveryActionResult(ok=True, detail="ok")

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.probes += 1
        healthy = self.up
        await self._maybe_wake("probe")
        return ProbeResult(healthy=healthy, detail="ok" if healthy else "connection refused")


HOUR = RecoveryPolicy(initial_delay_ms=3_600_000, max_delay_ms=3_600_000)


@pytest.mark.parametrize(
    ("step", "call"),
    [
        ("hash", 2),  # call 1 is the check before the first attempt; 2 is attempt 1's
        ("hash", 3),  # attempt 2's, after a full backoff
        ("action", 1),
        ("action", 2),
    ],
)
async def test_a_wake_up_during_hash_validation_or_the_action_is_answered_by_that_attempts_probe(
    env: WorkflowEnvironment, running, step: str, call: int
) -> None:
    service = WakeDuring(env.client, step, call)
    # Before the step, the service is down: attempt 1 fails when the wake-up comes later.
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=HOUR), task_queue=queue)
        result = await handle.result()
    attempt = call - 1 if step == "hash" else call
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == attempt
    assert [a.outcome for a in result.status.attempts][-1] == "healthy"
    assert service.probes == attempt, "the probe after the wake-up answered it"


async def test_a_wake_up_during_the_probe_cuts_the_next_backoff_short(
    env: WorkflowEnvironment, running
) -> None:
    service = WakeDuring(env.client, "probe", 1)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=HOUR), task_queue=queue)
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 2
    assert [a.outcome for a in result.status.attempts] == ["unhealthy", "healthy"]
    assert gaps(result)[0] < 60, "the hour-long backoff should have been cut short"


async def test_a_wake_up_during_a_watch_probe_runs_another_probe_at_once(
    env: WorkflowEnvironment, running
) -> None:
    service = WakeDuring(env.client, "probe", 2)  # probe 2 is the first watch probe
    policy = RecoveryPolicy(max_retry_attempts=1, initial_delay_ms=1000, max_delay_ms=3_600_000)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        await handle.signal("health_changed", HealthChangedSignal(service="x", healthy=False))
        # The first watch probe is due in an hour; it runs unhealthy while the service
        # comes back, and the wake-up it misses runs a second probe right after it: the
        # clock is not moved again, so an hour's wait would never end here.
        await env.sleep(timedelta(hours=1, seconds=1))
        status = await wait_state(handle, RecoveryState.SUCCEEDED)
    assert status.recovered_while_awaiting_approval
    assert status.watch_probes == 2 and service.probes == 3


# --- crash-safe steps (issue 10, item 3) ---------------------------------------------------


class CrashingAction(ScriptedService):
    """The action's worker "dies" on its first try (no heartbeat, no answer); the retry
    on a live worker completes. Records the idempotency key each try received."""

    def __init__(self, fail_every_try: bool = False) -> None:
        super().__init__(healthy_on_attempt=None)
        self.up = True
        self.fail_every_try = fail_every_try
        self.tries: list[tuple[int, int, str]] = []

    @activity.defn(name="run_recovery_action")
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        info = activity.info()
        self.tries.append((data.attempt, info.attempt, data.idempotency_key))
        if self.fail_every_try:
            raise RuntimeError("worker lost")
        if info.attempt == 1:
            await asyncio.sleep(3600)  # a dead worker: never heartbeats, never answers
        self.actions.append(data.attempt)
        return RecoveryActionResult(ok=True, detail="ok")


async def test_an_action_whose_worker_dies_is_retried_in_the_same_attempt_with_the_same_key(
    env: WorkflowEnvironment, running
) -> None:
    service = CrashingAction()
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(), task_queue=queue)
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 1
    (a1, try1, key1), (a2, try2, key2) = service.tries
    assert (a1, try1, a2, try2) == (1, 1, 1, 2)
    assert key1 == key2 == f"{handle.id}/{handle.result_run_id}/1"


async def test_an_action_that_never_completes_counts_as_a_failed_attempt_not_a_failed_recovery(
    env: WorkflowEnvironment, running
) -> None:
    service = CrashingAction(fail_every_try=True)
    policy = RecoveryPolicy(max_retry_attempts=2, initial_delay_ms=100, max_delay_ms=100)
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(policy=policy), task_queue=queue)
        status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL, timeout=60)
        await cancel_and_wait(handle)
    assert [a.outcome for a in status.attempts] == ["action_failed", "action_failed"]
    assert "action did not complete" in status.attempts[0].detail
    keys = {(attempt, key) for attempt, _, key in service.tries}
    assert len(service.tries) == 6 and len(keys) == 2, "3 tries per attempt, one key each"


async def test_actions_carry_one_idempotency_key_per_attempt_to_commands_and_webhooks(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    ledger = tmp_path / "keys.log"
    received: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.headers.get("Idempotency-Key", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    note = [
        sys.executable,
        "-c",
        f"import os; open({str(ledger)!r}, 'a').write(os.environ['ANTIFRAGILE_IDEMPOTENCY_KEY']"
        " + '\\n')",
    ]
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig(
            commands={"note": note}, webhook_url=f"http://127.0.0.1:{server.server_port}/hook"
        )
    )
    settings = Settings()
    common, rec = CommonActivities(settings, policy), RecoveryActivities(settings, policy)
    handles = []
    try:
        for action in ("command:note", "webhook"):
            service = ScriptedService(healthy_on_attempt=2)
            queue = f"tq-{uuid.uuid4().hex[:8]}"
            async with Worker(
                env.client,
                task_queue=queue,
                workflows=[RecoveryWorkflow],
                workflow_runner=workflow_runner(strict=True),
                activities=[
                    common.validate_constitutional_hash,
                    common.authorize_approver,
                    service.probe_service,
                    rec.run_recovery_action,
                ],
            ):
                handle = await start_recovery(
                    env.client,
                    request(action=action, strategy=RecoveryStrategy.IMMEDIATE),
                    task_queue=queue,
                )
                assert (await handle.result()).attempts == 2
                handles.append(handle)
    finally:
        server.shutdown()
    for keys, handle in ((ledger.read_text().split(), handles[0]), (received, handles[1])):
        assert keys == [f"{handle.id}/{handle.result_run_id}/{n}" for n in (1, 2)]


# --- signed approvals (issue 10: approvals you can trust) ----------------------------------


APPROVER_KEY = "a-test-key-of-32-bytes-for-alice"


async def test_unsigned_forged_and_reused_approvals_are_refused_and_recorded(
    env: WorkflowEnvironment, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AF_TEST_ALICE_KEY", APPROVER_KEY)
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig(approvers={"alice": {"key_env": "AF_TEST_ALICE_KEY"}})
    )
    service = ScriptedService(healthy_on_attempt=None)
    async with running(service, policy) as queue:
        handle = await start_recovery(
            env.client,
            request(policy=RecoveryPolicy(max_retry_attempts=1)),
            task_queue=queue,
        )

        def signed(decision: str, key: str = APPROVER_KEY) -> ApprovalSignal:
            at = datetime.now(UTC)
            signature = sign_decision(
                key.encode(),
                workflow_id=handle.id,
                first_run_id=handle.result_run_id or "",
                decision=decision,
                approver="alice",
                signed_at=at,
            )
            return ApprovalSignal(approver="alice", signature=signature, signed_at=at)

        async def decided(count: int) -> RecoveryStatus:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                status = await handle.query("status", result_type=RecoveryStatus)
                if len(status.decisions) >= count or asyncio.get_running_loop().time() > deadline:
                    return status
                await asyncio.sleep(0.05)

        await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        good = signed("approved")
        await handle.signal("approve", ApprovalSignal(approver="alice"))  # unsigned
        await handle.signal("approve", signed("approved", key="m" * 32))  # forged
        await handle.signal("approve", signed("rejected"))  # signed for another decision
        await handle.signal("approve", good)
        await decided(4)
        # The approved round (one attempt) fails and escalates again: the same signature
        # cannot approve twice.
        status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        while status.attempt < 2:
            status = await wait_state(handle, RecoveryState.AWAITING_APPROVAL)
        await handle.signal("approve", good)
        await decided(5)
        await handle.signal("reject", signed("rejected"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query("status", result_type=RecoveryStatus)
    assert [d.decision for d in status.decisions] == [
        Decision.REFUSED,
        Decision.REFUSED,
        Decision.REFUSED,
        Decision.APPROVED,
        Decision.REFUSED,
        Decision.REJECTED,
    ]
    reasons = [d.reason for d in status.decisions]
    assert "must sign" in reasons[0]
    assert reasons[1] and reasons[2] and APPROVER_KEY not in " ".join(reasons)
    assert "already used" in reasons[4]
    assert status.attempt == 2 and status.state is RecoveryState.FAILED


class CrashingProbe(ScriptedService):
    """The probe's worker "dies" on its first try; the retry on a live worker answers."""

    def __init__(self) -> None:
        super().__init__(healthy_on_attempt=None)
        self.up = True
        self.tries: list[int] = []

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.tries.append(activity.info().attempt)
        if activity.info().attempt == 1:
            await asyncio.sleep(3600)  # a dead worker: never heartbeats, never answers
        return await super().probe_service(data)


async def test_a_probe_whose_worker_dies_is_retried_in_the_same_attempt(
    env: WorkflowEnvironment, running
) -> None:
    service = CrashingProbe()
    async with running(service) as queue:
        handle = await start_recovery(env.client, request(), task_queue=queue)
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    assert [(a.number, a.outcome) for a in result.status.attempts] == [(1, "healthy")]
    assert service.tries == [1, 2] and service.actions == [1], "the action ran once"


async def test_a_run_continued_as_new_while_awaiting_approval_keeps_what_it_carried(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    carried = RecoveryResume(
        attempts_in_round=1, awaiting_approval=True, waiting_reported=True, priority=4
    )
    req = request(policy=RecoveryPolicy(max_retry_attempts=1)).model_copy(
        update={"resume": carried}
    )
    wid = f"recovery-{req.service}"
    async with running(service) as queue:
        parent, child = await start_orchestrated(env, queue, req)
        await wait_state(child, RecoveryState.AWAITING_APPROVAL)
        await child.signal("approve", ApprovalSignal(approver="oncall"))
        # The orchestrator already knew it waited: only the resume is new to it.
        assert await parent_log(parent, 1) == [f"resuming {wid} at priority 4"]
        service.up = True
        await parent.signal(RecoveryParent.grant)
        log = await parent.result()
    assert log == [f"resuming {wid} at priority 4", "granted", "attempt 1 ok", "child SUCCEEDED"]


async def test_a_wake_up_carried_over_continue_as_new_runs_the_probe_at_once(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    service.up = True
    carried = RecoveryResume(awaiting_approval=True, wake_pending=True, watch_probes=3)
    policy = RecoveryPolicy(initial_delay_ms=3_600_000, max_delay_ms=3_600_000)
    req = request(policy=policy).model_copy(update={"resume": carried})
    async with running(service) as queue:
        handle = await start_recovery(env.client, req, task_queue=queue)
        # The clock does not move while the test polls: only an immediate probe ends it.
        status = await wait_state(handle, RecoveryState.SUCCEEDED)
    assert status.recovered_while_awaiting_approval
    assert status.watch_probes == 4 and status.attempt == 0


async def test_an_orchestrated_recovery_whose_orchestrator_is_gone_goes_on_without_a_slot(
    env: WorkflowEnvironment, running
) -> None:
    service = ScriptedService(healthy_on_attempt=None)
    req = request(strategy=RecoveryStrategy.MANUAL)
    async with running(service) as queue:
        parent, child = await start_orchestrated(env, queue, req)
        await wait_state(child, RecoveryState.AWAITING_APPROVAL)
        await parent_log(parent, 1)
        await parent.terminate(reason="orchestrator lost")
        service.up = True
        await child.signal("approve", ApprovalSignal(approver="oncall"))
        result = await child.result()
    # Nobody can grant a slot: the recovery is not left waiting for ever.
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 1
