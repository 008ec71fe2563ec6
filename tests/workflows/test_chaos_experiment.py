"""ChaosExperimentWorkflow on the time-skipping server, with the real activities and a real
Redis (the session's): every phase path ends with the lease gone from Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chaos import ChaosActivities
from activities.common import CommonActivities
from antifragile.chaos.client import start_experiment
from antifragile.chaos.plane import FaultPlane, fault_key
from antifragile.constants import REDIS_HALT_KEY, REDIS_HEALTH_KEY_PREFIX
from antifragile.models.chaos import (
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    EmergencyStopSignal,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.common import ApprovalSignal, Decision, HealthChangedSignal
from antifragile.policy import ChaosPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.testing import eventually
from tests.helpers import time_skipping_server
from workers.main import workflow_runner
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow

pytestmark = pytest.mark.timeout(90)

P = ChaosPhase
FULL_PATH = [
    P.VALIDATING,
    P.STEADY_STATE_BEFORE,
    P.INJECTING,
    P.RUNNING,
    P.CLEANING_UP,
    P.VERIFYING_RECOVERY,
]


_STARTED: list[str] = []


async def start(
    client: Any, sc: ChaosScenario, task_queue: str
) -> WorkflowHandle[Any, ChaosReport]:
    """start_experiment, remembering the id so the guardian can be ended after the test."""
    handle = await start_experiment(client, sc, task_queue=task_queue)
    _STARTED.append(handle.id)
    return handle


async def end_guardians(client: Any) -> None:
    """End guardians still running: with their worker gone, their pending tasks would keep
    the shared time-skipping server from skipping time for every later test."""
    while _STARTED:
        guardian = client.get_workflow_handle(f"{_STARTED.pop()}-guardian")
        try:
            if (await guardian.describe()).status == WorkflowExecutionStatus.RUNNING:
                await guardian.terminate("test over")
        except RPCError:
            pass  # never started (no injection)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: experiments leave guardian children
    behind, and their timers must never slow the time skipping of other modules' tests."""
    async with time_skipping_server() as environment:
        yield environment


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.delete(REDIS_HALT_KEY)
    yield client
    await client.delete(REDIS_HALT_KEY)
    await client.aclose()


@pytest.fixture
def running(env: WorkflowEnvironment, redis_url: str) -> Callable[..., Any]:
    @asynccontextmanager
    async def _run(
        policy: WorkerPolicy | None = None,
        environment: WorkflowEnvironment | None = None,
        **settings: Any,
    ) -> AsyncIterator[str]:
        server = environment or env
        queue = f"tq-{uuid.uuid4().hex[:8]}"
        cfg = Settings(**{"redis_url": redis_url, **settings})
        pol = policy or WorkerPolicy()
        common = CommonActivities(cfg, pol)
        chaos = ChaosActivities(cfg, pol)
        async with Worker(
            server.client,
            task_queue=queue,
            workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
            workflow_runner=workflow_runner(strict=True),
            activities=[
                common.validate_constitutional_hash,
                common.authorize_approver,
                common.probe_service,
                chaos.validate_chaos_scenario,
                chaos.check_halt_switch,
                chaos.inject_fault,
                chaos.renew_fault_lease,
                chaos.remove_fault,
                chaos.measure_health,
                chaos.collect_experiment_impact,
                chaos.check_experiment_running,
            ],
        ):
            try:
                yield queue
            finally:
                await end_guardians(server.client)
        await chaos.plane.close()

    return _run


def scenario(**kw: Any) -> ChaosScenario:
    name = f"exp-{uuid.uuid4().hex[:6]}"
    base: dict[str, Any] = {
        "name": name,
        "chaos_type": "LATENCY",
        "target": f"dep-{name}",
        "duration_s": 30,
        # No guarded process runs in these tests: the preflight has its own tests.
        "allow_unguarded": True,
    }
    base.update(kw)
    return ChaosScenario.model_validate(base)


async def wait_phase(
    handle: WorkflowHandle[Any, Any], phase: ChaosPhase, timeout: float = 15
) -> ChaosStatus:

    async def reached() -> ChaosStatus:
        status = await handle.query("status", result_type=ChaosStatus)
        assert status.phase is phase, f"phase stayed {status.phase}, wanted {phase}"
        return status

    found: ChaosStatus = await eventually(reached, timeout)
    return found


def phases(report: ChaosReport) -> list[ChaosPhase]:
    return [p.phase for p in report.phases]


async def test_completed_path_injects_renews_and_removes_the_lease(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(duration_s=40)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=6))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        status = await wait_phase(handle, P.RUNNING)
        assert status.faults_active and status.faults_active[0].targets == [sc.target]
        assert status.time_left_s is not None and 0 < status.time_left_s <= 40
        lease = json.loads(await redis_client.get(fault_key(handle.id)))
        assert lease["chaos_type"] == "LATENCY" and lease["ttl_ms"] == 6000
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert phases(report) == [*FULL_PATH, P.COMPLETED]
    assert await redis_client.exists(fault_key(handle.id)) == 0
    assert report.cleanup.method == "removed" and report.cleanup.lease_removed
    assert report.injected_at and report.removed_at
    ran = (report.removed_at - report.injected_at).total_seconds()
    assert 40 <= ran < 45
    # 40 s with a 6 s TTL: renewed every 2 s, so the lease never ran out meanwhile.
    history = await handle.fetch_history()
    renewals = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "renew_fault_lease"
    ]
    assert len(renewals) >= 15
    desc = await handle.describe()
    sa = desc.typed_search_attributes
    # TemporalChangeVersion is the SDK's own record of workflow.patched markers.
    assert {p.key.name: p.value for p in sa if p.key.name != "TemporalChangeVersion"} == {
        "AfKind": "chaos",
        "AfService": sc.target,
        "AfChaosType": "LATENCY",
        "AfState": "COMPLETED",
    }


async def test_health_signal_below_threshold_aborts_and_cleans_up(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(chaos_type="ERROR", error_rate=0.5, abort_below_health=0.6)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        await handle.signal(
            "health_changed",
            HealthChangedSignal(service=sc.target, healthy=True, score=0.8, source="a"),
        )
        await handle.signal(
            "health_changed",
            HealthChangedSignal(service=sc.target, healthy=False, score=0.4, source="b"),
        )
        report = await handle.result()
    assert report.outcome is ChaosOutcome.ABORTED
    assert "health guard" in report.reason and "0.40" in report.reason
    assert phases(report) == [*FULL_PATH, P.ABORTED]
    assert report.health_lowest == 0.4
    assert [h.score for h in report.health_timeline] == [0.8, 0.4]
    assert await redis_client.exists(fault_key(handle.id)) == 0


async def test_fleet_health_in_redis_trips_the_guard_and_recovery_is_timed(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(duration_s=60)
    key = f"{REDIS_HEALTH_KEY_PREFIX}wf-test-{uuid.uuid4().hex[:6]}"
    await redis_client.set(key, json.dumps({"breakers": {sc.target: "CLOSED"}}))
    try:
        async with running() as queue:
            handle = await start(env.client, sc, task_queue=queue)
            await wait_phase(handle, P.RUNNING)
            await redis_client.set(key, json.dumps({"breakers": {sc.target: "OPEN"}}))
            await wait_phase(handle, P.VERIFYING_RECOVERY, timeout=30)
            await redis_client.set(key, json.dumps({"breakers": {sc.target: "HALF_OPEN"}}))
            report = await handle.result()
    finally:
        await redis_client.delete(key)
    assert report.outcome is ChaosOutcome.ABORTED
    assert report.health_lowest == 0.0
    assert report.recovered is True and report.time_to_recover_s is not None
    assert report.health_timeline[0].score == 1.0


async def test_a_broken_target_in_a_healthy_enough_process_does_not_trip_the_guard(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(duration_s=20)  # abort_below_health 0.5 (the default)
    key = f"{REDIS_HEALTH_KEY_PREFIX}wf-test-{uuid.uuid4().hex[:6]}"

    def snap(score: float, target_state: str) -> str:
        details = {sc.target: {"state": target_state}, "other": {"state": "CLOSED"}}
        return json.dumps({"health_score": score, "circuit_details": details})

    await redis_client.set(key, snap(1.0, "CLOSED"))
    try:
        async with running() as queue:
            handle = await start(env.client, sc, task_queue=queue)
            await wait_phase(handle, P.RUNNING)
            # The fault did what it is for: the target's breaker is open, the process
            # (two breakers) is at 0.5. Not below the guard: the experiment goes on.
            await redis_client.set(key, snap(0.5, "OPEN"))
            await wait_phase(handle, P.VERIFYING_RECOVERY, timeout=60)
            # Verification waits for the target's own breaker, not just the process.
            await asyncio.sleep(0.5)
            assert (await handle.query("status", result_type=ChaosStatus)).phase is (
                P.VERIFYING_RECOVERY
            )
            await redis_client.set(key, snap(1.0, "CLOSED"))
            report = await handle.result()
    finally:
        await redis_client.delete(key)
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.health_lowest == 0.5
    assert report.recovered is True


async def test_emergency_stop_removes_the_fault_and_ends_stopped(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(chaos_type="CIRCUIT_BREAKER", duration_s=120)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        assert await redis_client.exists(fault_key(handle.id)) == 1
        await handle.signal("emergency_stop", EmergencyStopSignal(reason="pager", by="oncall"))
        report = await handle.result()
    assert report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "emergency stop by oncall: pager"
    assert phases(report) == [*FULL_PATH, P.STOPPED]
    assert report.cleanup.lease_removed
    assert await redis_client.exists(fault_key(handle.id)) == 0
    assert any("emergency stop by oncall" in e.message for e in report.events)


async def test_cancellation_still_cleans_up_and_reports(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(chaos_type="NETWORK_PARTITION", duration_s=120)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        await handle.cancel()
        report = await handle.result()
    assert report.outcome is ChaosOutcome.STOPPED
    assert report.reason.startswith("cancelled")
    assert phases(report) == [*FULL_PATH, P.STOPPED]
    assert report.cleanup.method == "removed"
    assert await redis_client.exists(fault_key(handle.id)) == 0


async def test_hash_mismatch_fails_in_validation_and_injects_nothing(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(constitutional_hash="deadbeefdeadbeef")
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        report = await handle.result()
    assert report.outcome is ChaosOutcome.FAILED
    assert "constitutional hash mismatch" in report.reason
    assert "deadbeefdeadbeef" not in report.reason  # at most 8 hex digits shown
    assert phases(report) == [P.VALIDATING, P.FAILED]
    assert report.cleanup.method == "nothing_injected"
    assert await redis_client.exists(fault_key(handle.id)) == 0


async def test_target_outside_the_policy_fails_validation(
    env: WorkflowEnvironment, running
) -> None:
    sc = scenario(blast_radius=["payments"])
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(allowed_targets=[sc.target]))
    async with running(policy) as queue:
        report = await (await start(env.client, sc, task_queue=queue)).result()
    assert report.outcome is ChaosOutcome.FAILED
    assert "payments" in report.reason and "allowed_targets" in report.reason


async def test_approval_gate_refuses_strangers_then_runs_when_approved(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(require_approval=True, duration_s=10)
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=["alice"]))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        status = await wait_phase(handle, P.AWAITING_APPROVAL)
        assert status.faults_active == []
        assert await redis_client.exists(fault_key(handle.id)) == 0
        await handle.signal("approve", ApprovalSignal(approver="mallory"))
        await handle.signal("approve", ApprovalSignal(approver="alice", note="game day"))
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert [(d.approver, d.decision) for d in report.decisions] == [
        ("mallory", Decision.REFUSED),
        ("alice", Decision.APPROVED),
    ]
    assert phases(report) == [
        P.VALIDATING,
        P.AWAITING_APPROVAL,
        *FULL_PATH[1:],
        P.COMPLETED,
    ]


async def test_rejection_ends_failed_without_injecting(env: WorkflowEnvironment, running) -> None:
    sc = scenario(require_approval=True)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.AWAITING_APPROVAL)
        await handle.signal("reject", ApprovalSignal(approver="lead", note="not today"))
        report = await handle.result()
    assert report.outcome is ChaosOutcome.FAILED
    assert report.reason == "rejected by lead: not today"
    assert phases(report) == [P.VALIDATING, P.AWAITING_APPROVAL, P.FAILED]
    assert report.injected_at is None


async def test_duration_is_capped_with_a_warning(env: WorkflowEnvironment, running) -> None:
    sc = scenario(duration_s=500)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(max_duration_s=60))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.requested_duration_s == 500 and report.effective_duration_s == 60
    assert report.warnings == [
        "duration_s 500s capped to 60s by the worker policy's chaos.max_duration_s"
    ]
    assert report.injected_at and report.removed_at
    assert 60 <= (report.removed_at - report.injected_at).total_seconds() < 65


async def test_halt_switch_stops_before_injection(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis, redis_url: str
) -> None:
    plane = FaultPlane.from_url(redis_url)
    await plane.set_halt("freeze", by="test")
    try:
        async with running() as queue:
            handle = await start(env.client, scenario(), task_queue=queue)
            report = await handle.result()
    finally:
        await plane.clear_halt()
        await plane.close()
    assert report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "halt switch set: freeze"
    assert P.INJECTING not in phases(report)


async def test_lease_removed_from_outside_stops_the_experiment(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(duration_s=120)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        await redis_client.delete(fault_key(handle.id))
        report = await handle.result()
    assert report.outcome is ChaosOutcome.STOPPED
    assert "removed from outside" in report.reason
    assert report.cleanup.method == "already_gone"


async def test_dry_run_walks_every_phase_without_a_lease(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(dry_run=True, duration_s=10)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        status = await wait_phase(handle, P.RUNNING)
        assert status.faults_active == []
        assert await redis_client.exists(fault_key(handle.id)) == 0
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.cleanup.method == "nothing_injected"
    assert phases(report) == [*FULL_PATH[:5], P.COMPLETED]


async def test_unhealthy_steady_state_probe_aborts_before_injection(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(steady_state_probe="tcp://127.0.0.1:9")  # nothing listens on port 9
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        report = await handle.result()
    assert report.outcome is ChaosOutcome.ABORTED
    assert report.reason.startswith("steady state not met before injection")
    assert phases(report) == [P.VALIDATING, P.STEADY_STATE_BEFORE, P.ABORTED]
    assert report.injected_at is None


async def test_healthy_steady_state_probe_lets_the_experiment_run(
    env: WorkflowEnvironment, running, redis_url: str
) -> None:
    sc = scenario(steady_state_probe=redis_url, duration_s=10)
    async with running() as queue:
        report = await (await start(env.client, sc, task_queue=queue)).result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.recovered is True and (report.time_to_recover_s or 0) < 1
    assert all(h.healthy for h in report.health_timeline)


async def test_hash_mismatch_at_renewal_fails_and_still_cleans_up(
    env: WorkflowEnvironment, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """The worker's hash changes mid-run (a redeployment): renewal is refused, the
    experiment ends FAILED, and cleanup (which needs no hash) removes the lease."""
    sc = scenario(duration_s=120)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=6))
    settings = Settings(redis_url=redis_url)
    common, chaos = CommonActivities(settings, policy), ChaosActivities(settings, policy)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
        workflow_runner=workflow_runner(strict=True),
        activities=[
            common.validate_constitutional_hash,
            common.authorize_approver,
            chaos.validate_chaos_scenario,
            chaos.check_halt_switch,
            chaos.inject_fault,
            chaos.renew_fault_lease,
            chaos.remove_fault,
            chaos.measure_health,
            chaos.collect_experiment_impact,
            chaos.check_experiment_running,
        ],
    ):
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        assert await redis_client.exists(fault_key(handle.id)) == 1
        chaos._settings = settings.model_copy(update={"constitutional_hash": "0123456789abcdef"})
        report = await handle.result()
        await end_guardians(env.client)
    await chaos.plane.close()
    assert report.outcome is ChaosOutcome.FAILED
    assert "constitutional hash mismatch" in report.reason
    assert phases(report)[-3:] == [P.CLEANING_UP, P.VERIFYING_RECOVERY, P.FAILED]
    assert report.cleanup.method == "removed"
    assert await redis_client.exists(fault_key(handle.id)) == 0


async def test_termination_runs_no_code_but_the_guardian_removes_the_lease(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    """Terminate runs no workflow code: the guardian child (ABANDON) removes the lease."""
    sc = scenario(duration_s=120)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=6))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        started = asyncio.get_running_loop().time()
        await handle.terminate(reason="operator pulled the plug")
        guardian = env.client.get_workflow_handle(f"{handle.id}-guardian")
        result = await guardian.result()
        real_s = asyncio.get_running_loop().time() - started
    assert result["removed"] is True and result["reason"] == "experiment terminated"
    assert await redis_client.exists(fault_key(handle.id)) == 0
    assert real_s < 5  # before the 6 s TTL could have expired it


async def test_without_workers_the_lease_ttl_is_the_last_line(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    """Terminated and no worker left to run the guardian: Redis expires the lease."""
    sc = scenario(duration_s=120)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=1))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
    await handle.terminate(reason="operator pulled the plug")
    assert 0 < await redis_client.pttl(fault_key(handle.id)) <= 1000

    async def expired() -> bool:
        return await redis_client.exists(fault_key(handle.id)) == 0

    # Real time: Redis expires the key, no controller involved.
    await eventually(expired, timeout=5)
    await end_guardians(env.client)


# --- interrupts during the ending (issue 12, item 1) ------------------------------------


def _stop_time(report: ChaosReport) -> Any:
    [event] = [e for e in report.events if e.message.startswith("emergency stop by")]
    return event.at


@pytest.mark.parametrize("delay_ms", [0, 10, 30, 60, 120, 250])
async def test_cancel_after_an_emergency_stop_cannot_cut_cleanup_or_the_report_short(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis, delay_ms: int
) -> None:
    """A stop, then a cancel ``delay_ms`` later: the lease is removed (confirmed) within
    1 s of the stop and the run ends with a complete report, never CANCELED."""
    sc = scenario(duration_s=120)
    async with running() as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        assert await redis_client.exists(fault_key(handle.id)) == 1
        await handle.signal("emergency_stop", EmergencyStopSignal(reason="pager", by="oncall"))
        await asyncio.sleep(delay_ms / 1000)
        await handle.cancel()
        await handle.signal("emergency_stop", EmergencyStopSignal(reason="again", by="b"))
        report = await handle.result()
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert report.outcome is ChaosOutcome.STOPPED
    assert report.reason.startswith("emergency stop by oncall: pager")
    assert report.cleanup.method == "removed" and report.cleanup.lease_removed
    assert report.cleanup.confirmed is True
    assert await redis_client.exists(fault_key(handle.id)) == 0
    assert report.cleanup.at is not None
    assert (report.cleanup.at - _stop_time(report)).total_seconds() < 1.0
    assert phases(report)[-3:] == [P.CLEANING_UP, P.VERIFYING_RECOVERY, P.STOPPED]
    assert report.fault_active_s is not None and report.fault_active_s < 60


# --- Redis outage during an experiment (issue 12, items 2 and 9) ------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def own_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of the test's own: a workflow terminated with an activity in
    flight (other tests do that) can keep a shared test server from skipping time, and
    these tests wait out minutes of retries and timers."""
    async with time_skipping_server() as environment:
        yield environment


@pytest.fixture
def own_redis(tmp_path: Any) -> Any:
    """A redis-server of this test's own, to kill and bring back on the same port."""
    from antifragile.stack.processes import start_redis

    servers = [start_redis(log_path=tmp_path / "redis.log")]

    class Own:
        port = servers[0].port
        url = f"redis://127.0.0.1:{servers[0].port}/0"

        @staticmethod
        def kill() -> None:
            servers[-1].kill()

        @staticmethod
        def restart() -> None:
            servers.append(start_redis(Own.port, log_path=tmp_path / "redis.log"))

    yield Own
    for server in servers:
        server.stop()


async def test_redis_killed_mid_experiment_ends_with_an_outcome_and_a_complete_report(
    own_env: WorkflowEnvironment, running, own_redis: Any
) -> None:
    """The stack's Redis dies while the fault runs and stays down through the ending:
    renewal fails, removal cannot be confirmed, the health measurement fails during
    recovery verification. The workflow still completes with a report: an outcome, a
    reason, the fault's real life (its lease's expiry, not the planned 120 s)."""
    sc = scenario(duration_s=120, recovery_timeout_s=10)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=3))
    async with running(policy, own_env, redis_url=own_redis.url) as queue:
        handle = await start(own_env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        own_redis.kill()
        report = await handle.result()
        own_redis.restart()
        status = await handle.query("status", result_type=ChaosStatus)
        queried = await handle.query("report", result_type=ChaosReport)
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert report.outcome is ChaosOutcome.FAILED and report.reason
    assert "lease renewal failed" in report.reason or "activity failed" in report.reason
    assert phases(report)[-3:] == [P.CLEANING_UP, P.VERIFYING_RECOVERY, P.FAILED]
    assert report.cleanup.method == "expired" and report.cleanup.confirmed is False
    assert report.fault_active_s is not None and report.fault_active_s < 10
    assert report.recovered is None and report.time_to_recover_s is None
    assert any("recovery not verified" in w for w in report.warnings)
    assert any("impact not collected" in w for w in report.warnings)
    assert status.phase is P.FAILED and status.stop_reason == report.reason
    assert queried.outcome is ChaosOutcome.FAILED


async def test_redis_back_during_cleanup_confirms_the_lease_is_gone(
    own_env: WorkflowEnvironment, running, own_redis: Any
) -> None:
    sc = scenario(duration_s=120, recovery_timeout_s=5)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=3))
    async with running(policy, own_env, redis_url=own_redis.url) as queue:
        handle = await start(own_env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        own_redis.kill()
        await wait_phase(handle, P.CLEANING_UP, timeout=30)
        own_redis.restart()
        report = await handle.result()
    client = aioredis.from_url(own_redis.url)
    try:
        assert await client.exists(fault_key(handle.id)) == 0
    finally:
        await client.aclose()
    assert report.outcome is ChaosOutcome.FAILED and report.reason
    # Back within the first removal window (already_gone) or after the TTL (expired).
    assert report.cleanup.method in ("already_gone", "expired")
    assert report.cleanup.confirmed is True
    assert report.fault_active_s is not None and report.fault_active_s < 10


# --- the worker policy requires safety (issue 12, item 4) -------------------------------


async def test_policy_requires_approval_even_when_the_scenario_does_not(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(duration_s=5)  # require_approval false in the request
    policy = WorkerPolicy(
        chaos=ChaosPolicyConfig(require_approval=True),
        recovery=RecoveryPolicyConfig(approvers=["alice"]),
    )
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        status = await wait_phase(handle, P.AWAITING_APPROVAL)
        assert status.approval_needed and status.faults_active == []
        assert await redis_client.exists(fault_key(handle.id)) == 0
        await handle.signal("approve", ApprovalSignal(approver="alice"))
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert [(d.approver, d.decision) for d in report.decisions] == [("alice", Decision.APPROVED)]
    assert any("chaos.require_approval" in e.message for e in report.events)


async def test_policy_min_abort_below_refuses_a_switched_off_health_guard(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario(abort_below_health=0.0)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(min_abort_below=0.3))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        report = await handle.result()
    assert report.outcome is ChaosOutcome.FAILED
    assert "chaos.min_abort_below" in report.reason and "switches the health guard off" in (
        report.reason
    )
    assert phases(report) == [P.VALIDATING, P.FAILED]
    assert await redis_client.exists(fault_key(handle.id)) == 0


def _inject_input(sc: ChaosScenario, approved_by: list[str] | None = None) -> Any:
    from antifragile.models.chaos import InjectFaultInput

    return InjectFaultInput(
        experiment_id=f"chaos-direct-{uuid.uuid4().hex[:8]}",
        scenario=sc,
        ttl_s=5,
        approved_by=approved_by or [],
    )


async def test_the_worker_activities_enforce_the_policy_not_only_the_workflow(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """A request that skipped the workflow's gates (an old or forged workflow) is refused
    by the activities themselves, each refusal naming the policy field."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from antifragile.models.chaos import RenewLeaseInput

    settings = Settings(redis_url=redis_url)
    acts = ActivityEnvironment()

    async def refusal(policy: WorkerPolicy, fn_name: str, arg: Any) -> str:
        chaos = ChaosActivities(settings, policy)
        try:
            with pytest.raises(ApplicationError) as caught:
                await acts.run(getattr(chaos, fn_name), arg)
        finally:
            await chaos.plane.close()
        assert caught.value.non_retryable
        return str(caught.value)

    approval = WorkerPolicy(chaos=ChaosPolicyConfig(require_approval=True))
    text = await refusal(approval, "inject_fault", _inject_input(scenario()))
    assert "chaos.require_approval" in text
    guard = WorkerPolicy(chaos=ChaosPolicyConfig(min_abort_below=0.4))
    text = await refusal(guard, "inject_fault", _inject_input(scenario(abort_below_health=0.2)))
    assert "chaos.min_abort_below" in text
    hashes = WorkerPolicy(chaos=ChaosPolicyConfig(require_hash_validation=True))
    forged = scenario(require_hash_validation=False, constitutional_hash="0123456789abcdef")
    text = await refusal(hashes, "inject_fault", _inject_input(forged))
    assert "chaos.require_hash_validation" in text and "constitutional hash mismatch" in text
    renew = RenewLeaseInput(
        experiment_id="chaos-x-1",
        ttl_s=5,
        constitutional_hash="0123456789abcdef",
        require_hash_validation=False,
    )
    text = await refusal(hashes, "renew_fault_lease", renew)
    assert "chaos.require_hash_validation" in text
    # With the approval the workflow accepted, the same policy lets it through.
    ok = ChaosActivities(settings, approval)
    try:
        inp = _inject_input(scenario(), approved_by=["alice"])
        result = await acts.run(ok.inject_fault, inp)
        assert result.injected
    finally:
        await redis_client.delete(fault_key(inp.experiment_id))
        await ok.plane.close()


# --- signed approvals (issue 12, item 10) ----------------------------------------------


async def test_signed_approvals_are_checked_against_the_workflow_and_run(
    env: WorkflowEnvironment, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from antifragile.cli._common import approval_signal

    key = "k" * 32
    monkeypatch.setenv("AF_TEST_ALICE_KEY", key)
    sc = scenario(require_approval=True, duration_s=5)
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig(approvers={"alice": {"key_env": "AF_TEST_ALICE_KEY"}})
    )
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.AWAITING_APPROVAL)
        await handle.signal("approve", ApprovalSignal(approver="alice"))  # unsigned
        forged = await approval_signal(
            handle, approver="alice", note="", decision="approved", key="x" * 32
        )
        await handle.signal("approve", forged)
        # Signed for "rejected", sent as an approval: the signature binds the decision.
        swapped = await approval_signal(
            handle, approver="alice", note="", decision="rejected", key=key
        )
        await handle.signal("approve", swapped)
        good = await approval_signal(
            handle, approver="alice", note="go", decision="approved", key=key
        )
        await handle.signal("approve", good)
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert [d.decision for d in report.decisions] == [
        Decision.REFUSED,
        Decision.REFUSED,
        Decision.REFUSED,
        Decision.APPROVED,
    ]
    assert all(d.reason for d in report.decisions[:3])


# --- preflight: who guards the target (issue 12, item 11) -------------------------------


async def _register(url: str, instance: str, breakers: dict[str, str] | None) -> None:
    import time

    from antifragile.chaos.plane import INSTANCES_KEY

    client = aioredis.from_url(url, decode_responses=True)
    try:
        await client.zadd(INSTANCES_KEY, {instance: time.time()})
        if breakers is not None:
            await client.set(
                f"{REDIS_HEALTH_KEY_PREFIX}{instance}",
                json.dumps({"health_score": 1.0, "circuit_details": breakers}),
            )
    finally:
        await client.aclose()


async def test_a_target_nobody_guards_is_refused_with_one_line(
    env: WorkflowEnvironment, running, own_redis: Any
) -> None:
    await _register(own_redis.url, "svc-1", {"demo-db": {"state": "CLOSED"}})
    sc = scenario(target="demo-dbb", allow_unguarded=False, duration_s=5)  # a typo
    async with running(redis_url=own_redis.url) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        report = await handle.result()
        status = await handle.query("status", result_type=ChaosStatus)
    assert report.outcome is ChaosOutcome.FAILED
    assert "no live process guards demo-dbb" in report.reason
    assert "--allow-unguarded" in report.reason and "\n" not in report.reason
    assert report.cleanup.method == "injection_failed" and not report.cleanup.lease_removed
    assert report.injection_failed and status.injection_failed
    assert report.injected_at is None and report.fault_active_s is None
    assert P.VERIFYING_RECOVERY not in phases(report)


async def test_guarded_target_runs_and_the_report_counts_the_instances(
    env: WorkflowEnvironment, running, own_redis: Any
) -> None:
    sc = scenario(target="demo-db", allow_unguarded=False, duration_s=5)
    await _register(own_redis.url, "svc-1", {"demo-db": {"state": "CLOSED"}})
    await _register(own_redis.url, "svc-2", {"demo-db": {"state": "CLOSED"}})
    await _register(own_redis.url, "svc-3", {"other": {"state": "CLOSED"}})
    async with running(redis_url=own_redis.url) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        status = await wait_phase(handle, P.RUNNING)
        assert status.instances_guarding == 2
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.instances_guarding == 2
    assert report.instances_saw_fault == 0  # nobody called through the guard
    # Health stayed at its steady state: there was nothing to recover from.
    assert report.health_dropped is False and report.time_to_recover_s is None


async def test_allow_unguarded_injects_anyway(
    env: WorkflowEnvironment, running, own_redis: Any
) -> None:
    sc = scenario(target="about-to-start", allow_unguarded=True, duration_s=5)
    async with running(redis_url=own_redis.url) as queue:
        report = await (await start(env.client, sc, task_queue=queue)).result()
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.instances_guarding == 0 and report.cleanup.method == "removed"


# --- a report rebuilt for a run that ended without one (issue 12, item 9) ---------------


async def test_a_terminated_run_without_workers_gets_a_rebuilt_report(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis, redis_url: str
) -> None:
    """Worker gone, workflow terminated: no code of it ever runs again. The report is
    rebuilt from its history (input, injection, renewals) and Redis (lease, counters)."""
    from antifragile.chaos.plane import impact_key
    from antifragile.chaos.report import rebuild_report

    sc = scenario(duration_s=120)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=2))
    async with running(policy) as queue:
        handle = await start(env.client, sc, task_queue=queue)
        await wait_phase(handle, P.RUNNING)
        await redis_client.hset(impact_key(handle.id, "affected"), "svc-1", 7)
        await redis_client.hset(impact_key(handle.id, "seen"), "svc-1", 9)
        await redis_client.hset(impact_key(handle.id, "refused"), "svc-1", 5)
        await redis_client.hset(impact_key(handle.id, "openings"), "svc-1/demo-db: OPEN", 6)
    await handle.terminate(reason="worker lost")
    plane = FaultPlane.from_url(redis_url)
    try:
        report = await rebuild_report(env.client, handle.id, plane=plane)
        await asyncio.sleep(2.2)  # real time: Redis expires the lease by its TTL
        later = await rebuild_report(env.client, handle.id, plane=plane)
    finally:
        await plane.close()
        await end_guardians(env.client)
    assert report.rebuilt and report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "terminated: worker lost"
    assert report.name == sc.name and report.injected_at is not None
    assert report.calls_affected == {"svc-1": 7} and report.instances_saw_fault == 1
    assert report.calls_refused == {"svc-1": 5}
    assert report.breaker_openings == {"svc-1/demo-db: OPEN": 6}
    assert any("no worker answered" in w for w in report.warnings)
    assert report.cleanup.method == "expired"
    assert later.cleanup.confirmed is True and later.fault_active_s is not None
    assert later.fault_active_s < 10  # the lease's life, not the planned 120 s


async def test_a_conflicting_injection_is_reported_failed_never_as_fault_removed(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    first_sc = scenario(duration_s=60)
    second_sc = scenario(target=first_sc.target, duration_s=60)
    async with running() as queue:
        first = await start(env.client, first_sc, task_queue=queue)
        await wait_phase(first, P.RUNNING)
        second = await start(env.client, second_sc, task_queue=queue)
        report = await second.result()
        assert await redis_client.exists(fault_key(first.id)) == 1  # untouched
        await first.signal("emergency_stop", EmergencyStopSignal(reason="done", by="t"))
        await first.result()
    assert report.outcome is ChaosOutcome.FAILED
    assert "already injects a fault" in report.reason
    assert report.cleanup.method == "injection_failed" and not report.cleanup.lease_removed
    assert report.injected_at is None and report.fault_active_s is None
    assert "already injects a fault" in report.injection_failed
