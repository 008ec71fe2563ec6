"""RecoveryWorkflow on the time-skipping server: strategies, escalation, approvals, wake-up.

The probe and action are scripted activities registered under the real names (as in
temporalio/samples-python), so each test decides when the service comes back; hash
validation and approver checks are the real activities. Integration tests use real probes.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.common import CommonActivities
from activities.recovery import RecoveryActivities
from antifragile.constants import SA_PRIORITY
from antifragile.models.common import ApprovalSignal, Decision, HealthChangedSignal
from antifragile.models.recovery import (
    ProbeInput,
    ProbeResult,
    RecoveryActionInput,
    RecoveryActionResult,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery_client import start_recovery
from antifragile.settings import Settings
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


@pytest.fixture
def env(time_skipping_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_skipping_env


@pytest.fixture
def running(env: WorkflowEnvironment) -> Callable[..., object]:
    @asynccontextmanager
    async def _run(
        service: ScriptedService, policy: WorkerPolicy | None = None
    ) -> AsyncIterator[str]:
        queue = f"tq-{uuid.uuid4().hex[:8]}"
        common = CommonActivities(Settings(), policy or WorkerPolicy())
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[RecoveryWorkflow],
            workflow_runner=workflow_runner(strict=True),
            activities=[
                common.validate_constitutional_hash,
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
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await handle.query("status", result_type=RecoveryStatus)
        if status.state is state:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"state stayed {status.state}, wanted {state}")
        await asyncio.sleep(0.05)


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
        await env.sleep(timedelta(hours=2))
        status = await handle.query("status", result_type=RecoveryStatus)
        assert status.state is RecoveryState.AWAITING_APPROVAL
        assert status.attempt == 0 and service.actions == []
        # Only the slow watch probes (every max_delay, 60 s) ran: no action, no attempt.
        assert 100 <= status.watch_probes == service.probes <= 121
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
        await first.cancel()
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
        await handle.cancel()
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
