"""Interrupts that land while an activity of the experiment is in flight (issue 12, item 1).

A cancel that arrives while an activity runs is not raised into the workflow at once: the
SDK asks the server to cancel the activity and keeps waiting for it. An activity that does
not heartbeat then completes normally and the cancel is spent; an activity cancelled with
TRY_CANCEL resolves as an ``ActivityError`` whose cause is a cancellation. Either way the
experiment must end STOPPED ("cancelled") promptly, with the fault removed and a report,
never run on for its full duration or be reported FAILED/ABORTED.

The real activities run; a gate holds the chosen one until the test has cancelled.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chaos import ChaosActivities
from activities.common import CommonActivities
from antifragile.chaos.plane import fault_key
from antifragile.models.chaos import (
    ChaosOutcome,
    ChaosPhase,
    ChaosStatus,
    EmergencyStopSignal,
    HealthMeasurement,
    InjectFaultInput,
    InjectFaultResult,
    MeasureHealthInput,
    RenewLeaseInput,
    RenewLeaseResult,
    ValidateScenarioInput,
    ValidateScenarioResult,
)
from antifragile.models.common import ApprovalSignal, Decision
from antifragile.models.recovery import AuthorizeApproverInput, AuthorizeApproverResult
from antifragile.policy import ChaosPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from tests.workflows.test_chaos_experiment import (  # noqa: F401 (the env fixture)
    end_guardians,
    env,
    own_env,
    own_redis,
    phases,
    scenario,
    start,
    wait_phase,
)
from workers.main import workflow_runner
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow

pytestmark = pytest.mark.timeout(120)

P = ChaosPhase


class Gated(ChaosActivities):
    """The real chaos activities; the one named ``gate_on`` waits for ``release`` (its
    n-th call, counting from 1) after setting ``entered``."""

    def __init__(self, settings: Settings, policy: WorkerPolicy, gate_on: str, nth: int = 1):
        super().__init__(settings, policy)
        self.gate_on, self.nth = gate_on, nth
        self.calls: dict[str, int] = {}
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.common = CommonActivities(settings, policy)

    async def _gate(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.gate_on and self.calls[name] == self.nth:
            self.entered.set()
            await self.release.wait()

    @activity.defn(name="validate_chaos_scenario")
    async def gated_validate(self, data: ValidateScenarioInput) -> ValidateScenarioResult:
        await self._gate("validate_chaos_scenario")
        return await self.validate_chaos_scenario(data)

    @activity.defn(name="inject_fault")
    async def gated_inject(self, data: InjectFaultInput) -> InjectFaultResult:
        await self._gate("inject_fault")
        return await self.inject_fault(data)

    @activity.defn(name="renew_fault_lease")
    async def gated_renew(self, data: RenewLeaseInput) -> RenewLeaseResult:
        await self._gate("renew_fault_lease")
        return await self.renew_fault_lease(data)

    @activity.defn(name="authorize_approver")
    async def gated_authorize(self, data: AuthorizeApproverInput) -> AuthorizeApproverResult:
        await self._gate("authorize_approver")
        return await self.common.authorize_approver(data)

    @activity.defn(name="measure_health")
    async def gated_measure(self, data: MeasureHealthInput) -> HealthMeasurement:
        await self._gate("measure_health")
        return await self.measure_health(data)


@asynccontextmanager
async def gated_worker(
    server: WorkflowEnvironment,
    redis_url: str,
    gate_on: str,
    nth: int = 1,
    queue: str = "",
    **policy: Any,
) -> AsyncIterator[tuple[str, Gated]]:
    queue = queue or f"tq-{uuid.uuid4().hex[:8]}"
    cfg = Settings(redis_url=redis_url)
    pol = WorkerPolicy(chaos=ChaosPolicyConfig(**policy))
    common = CommonActivities(cfg, pol)
    chaos = Gated(cfg, pol, gate_on, nth)
    async with Worker(
        server.client,
        task_queue=queue,
        workflows=[ChaosExperimentWorkflow, ChaosGuardianWorkflow],
        workflow_runner=workflow_runner(strict=True),
        activities=[
            common.validate_constitutional_hash,
            chaos.gated_authorize,
            common.probe_service,
            chaos.gated_validate,
            chaos.check_halt_switch,
            chaos.gated_inject,
            chaos.gated_renew,
            chaos.remove_fault,
            chaos.gated_measure,
            chaos.collect_experiment_impact,
            chaos.check_experiment_running,
        ],
    ):
        try:
            yield queue, chaos
        finally:
            chaos.release.set()
            await end_guardians(server.client)
    await chaos.plane.close()


async def _entered(gate: Gated) -> None:
    await asyncio.wait_for(gate.entered.wait(), timeout=60)


def _no_failed_workflow_task(history: Any) -> None:
    """No workflow task failed because of the workflow's code. UNHANDLED_COMMAND is the
    server declining a completion because a new event (the cancel) arrived meanwhile: the
    worker simply runs the next task with it."""
    from temporalio.api.enums.v1 import WorkflowTaskFailedCause

    unhandled = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    failed = [
        e.workflow_task_failed_event_attributes
        for e in history.events
        if e.HasField("workflow_task_failed_event_attributes")
    ]
    assert [f for f in failed if f.cause != unhandled] == []


@pytest.mark.parametrize(
    ("gate_on", "nth"),
    [
        ("validate_chaos_scenario", 1),  # during validation (TRY_CANCEL)
        ("measure_health", 1),  # during the steady state before injection (TRY_CANCEL)
        ("inject_fault", 1),  # during injection (waits for the activity)
        ("renew_fault_lease", 1),  # while RUNNING, during a renewal (waits)
        ("measure_health", 2),  # while RUNNING, during a health check (TRY_CANCEL)
    ],
)
async def test_a_cancel_while_an_activity_runs_ends_stopped_with_the_fault_removed(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
    gate_on: str,
    nth: int,
) -> None:
    sc = scenario(duration_s=120)
    redis = aioredis.from_url(redis_url)
    try:
        async with gated_worker(env, redis_url, gate_on, nth, lease_ttl_s=6) as (queue, gate):
            handle = await start(env.client, sc, task_queue=queue)
            await _entered(gate)
            await handle.cancel()
            await asyncio.sleep(0.2)  # the cancel reaches the workflow first
            gate.release.set()
            report = await handle.result()
            assert await redis.exists(fault_key(handle.id)) == 0
        history = await handle.fetch_history()
    finally:
        await redis.aclose()
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    _no_failed_workflow_task(history)
    assert report.outcome is ChaosOutcome.STOPPED, report.reason
    assert report.reason.startswith("cancelled"), report.reason
    assert not report.injection_failed
    injected = gate_on in ("inject_fault", "renew_fault_lease") or nth == 2
    if injected:
        assert report.cleanup.method == "removed" and report.cleanup.lease_removed
        # Stopped at the cancel, not after the planned 120 s.
        assert report.fault_active_s is not None and report.fault_active_s < 60
    else:
        assert report.cleanup.method == "nothing_injected"
        assert P.INJECTING not in phases(report)


async def test_a_cancel_while_an_approval_is_checked_ends_stopped(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """The approver's authorization is an activity too (TRY_CANCEL)."""
    sc = scenario(duration_s=30, require_approval=True)
    async with gated_worker(env, redis_url, "authorize_approver") as (queue, gate):
        handle = await start(env.client, sc, task_queue=queue)
        await handle.signal("approve", ApprovalSignal(approver="alice"))
        await _entered(gate)
        await handle.cancel()
        await asyncio.sleep(0.2)
        gate.release.set()
        report = await handle.result()
    assert report.outcome is ChaosOutcome.STOPPED, report.reason
    assert report.reason.startswith("cancelled")
    assert report.cleanup.method == "nothing_injected"


async def test_a_hand_crafted_input_naming_another_experiment_is_refused(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """``temporal workflow start --input`` with the ``experiment_id`` of a running
    experiment: the lease key, the guardian's id and the conflict check all follow that
    id, so the forged run would take over (and at its end remove) the other's fault. It is
    refused before validation, with a report; the other experiment is untouched."""
    from antifragile.models.chaos import ChaosExperimentInput, EmergencyStopSignal

    first_sc = scenario(duration_s=60)
    forged_sc = scenario(target=first_sc.target, duration_s=5, chaos_type="ERROR")
    redis = aioredis.from_url(redis_url)
    try:
        async with gated_worker(env, redis_url, "none") as (queue, _gate):
            first = await start(env.client, first_sc, task_queue=queue)
            await wait_phase(first, P.RUNNING)
            before = await redis.get(fault_key(first.id))
            forged = await env.client.start_workflow(
                ChaosExperimentWorkflow.run,
                ChaosExperimentInput(scenario=forged_sc, experiment_id=first.id),
                id=f"chaos-forged-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
            report = await forged.result()
            assert await redis.get(fault_key(first.id)) == before
            await first.signal("emergency_stop", EmergencyStopSignal(reason="done", by="t"))
            first_report = await first.result()
    finally:
        await redis.aclose()
    assert report.outcome is ChaosOutcome.FAILED
    assert "experiment_id" in report.reason and "\n" not in report.reason
    assert report.cleanup.method == "nothing_injected"
    assert phases(report) == [P.VALIDATING, P.FAILED]
    assert first_report.outcome is ChaosOutcome.STOPPED and first_report.cleanup.lease_removed


async def test_a_cancel_in_the_first_workflow_task_still_gives_a_report(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """Start and cancel at once: the cancel can arrive with the start, before any code of
    the experiment ran. It ends STOPPED with a report, nothing injected."""
    sc = scenario(duration_s=30)
    async with gated_worker(env, redis_url, "validate_chaos_scenario") as (queue, gate):
        handle = await start(env.client, sc, task_queue=queue)
        await handle.cancel()
        gate.release.set()
        report = await handle.result()
        history = await handle.fetch_history()
    _no_failed_workflow_task(history)
    assert report.outcome is ChaosOutcome.STOPPED, report.reason
    assert report.cleanup.method == "nothing_injected"


async def test_an_approval_then_a_reject_queued_behind_it_is_ignored_at_once(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """Approve and reject arrive together (early, while validating, or while the approval
    is being authorized): the first decision counts; the one queued behind it is recorded
    as ignored at once, with why, not at the end as "ended before any approval counted"."""
    sc = scenario(duration_s=10, require_approval=True)
    async with gated_worker(env, redis_url, "authorize_approver") as (queue, gate):
        handle = await start(env.client, sc, task_queue=queue)
        await handle.signal("approve", ApprovalSignal(approver="alice"))
        await handle.signal("reject", ApprovalSignal(approver="bob", note="too late"))
        await _entered(gate)
        gate.release.set()
        status = await wait_phase(handle, P.RUNNING)
        report = await handle.result()
    decided = [(d.approver, d.decision, d.reason) for d in status.decisions]
    assert decided == [
        ("alice", Decision.APPROVED, ""),
        ("bob", Decision.IGNORED, "already approved by alice"),
    ]
    assert report.outcome is ChaosOutcome.COMPLETED
    assert [(d.approver, d.decision) for d in report.decisions] == [
        ("alice", Decision.APPROVED),
        ("bob", Decision.IGNORED),
    ]


async def test_a_terminated_dry_run_is_rebuilt_without_a_lease(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """A dry run writes no lease: its rebuilt report must not say one expired."""
    from antifragile.chaos.plane import FaultPlane
    from antifragile.chaos.report import rebuild_report

    sc = scenario(duration_s=120, dry_run=True)
    plane = FaultPlane.from_url(redis_url)
    try:
        async with gated_worker(env, redis_url, "none") as (queue, _gate):
            handle = await start(env.client, sc, task_queue=queue)
            await wait_phase(handle, P.RUNNING)
            await handle.terminate(reason="operator")
            report = await rebuild_report(env.client, handle.id, plane=plane)
    finally:
        await plane.close()
    assert report.rebuilt and report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "terminated: operator"
    assert report.cleanup.method == "nothing_injected", report.cleanup
    assert not report.cleanup.lease_removed
    assert report.fault_active_s is None and report.removed_at is None
    # The phases end where the workflow did, closed.
    assert phases(report)[-2:][-1] is P.STOPPED and report.phases[-2].left_at is not None


async def test_a_signature_made_for_another_experiment_is_refused(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice signs an approval of experiment A; it is replayed to experiment B."""
    from antifragile.cli._common import approval_signal
    from antifragile.policy import RecoveryPolicyConfig

    key = "k" * 32
    monkeypatch.setenv("AF_TEST_ALICE_KEY_2", key)
    approvers = {"alice": {"key_env": "AF_TEST_ALICE_KEY_2"}}
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    cfg = Settings(redis_url=redis_url)
    pol = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=approvers))
    common, chaos = CommonActivities(cfg, pol), ChaosActivities(cfg, pol)
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
        ],
    ):
        a = await start(env.client, scenario(duration_s=5, require_approval=True), queue)
        b = await start(env.client, scenario(duration_s=5, require_approval=True), queue)
        await wait_phase(a, P.AWAITING_APPROVAL)
        await wait_phase(b, P.AWAITING_APPROVAL)
        for_a = await approval_signal(a, approver="alice", note="", decision="approved", key=key)
        await b.signal("approve", for_a)
        await b.signal("reject", ApprovalSignal(approver="bob", note="stranger"))
        await a.signal("approve", for_a)
        report_a = await a.result()
        for _ in range(200):
            status = await b.query("status", result_type=ChaosStatus)
            if len(status.decisions) == 2:
                break
            await asyncio.sleep(0.05)
        await b.signal("emergency_stop", EmergencyStopSignal(reason="test over", by="t"))
        report_b = await b.result()
    await chaos.plane.close()
    await end_guardians(env.client)
    assert [d.decision for d in report_b.decisions] == [Decision.REFUSED, Decision.REFUSED]
    assert "another" in report_b.decisions[0].reason or "signature" in report_b.decisions[0].reason
    assert report_b.outcome is ChaosOutcome.STOPPED and report_b.injected_at is None
    assert report_a.outcome is ChaosOutcome.COMPLETED
    assert [d.decision for d in report_a.decisions] == [Decision.APPROVED]


@pytest.mark.parametrize("required", [True, False])
async def test_an_approval_sent_before_any_worker_ran_is_remembered_or_ignored_with_why(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
    required: bool,
) -> None:
    """Decided: an approval that arrives before AWAITING_APPROVAL (here before the workflow
    ran any code) is kept, because validation may still find that the worker policy
    requires approval; it counts once the experiment awaits approval. When neither the
    scenario nor the policy requires approval it is recorded ignored, with why."""
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    sc = scenario(duration_s=5, require_approval=required)
    handle = await start(env.client, sc, queue)
    await handle.signal("approve", ApprovalSignal(approver="alice", note="early"))
    async with gated_worker(env, redis_url, "none", queue=queue):
        report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED
    [decision] = report.decisions
    assert (decision.approver, decision.note) == ("alice", "early")
    if required:
        assert decision.decision is Decision.APPROVED
        assert P.AWAITING_APPROVAL in phases(report)
    else:
        assert decision.decision is Decision.IGNORED
        assert decision.reason == "this experiment needs no approval"


async def test_a_dry_run_on_a_target_nobody_guards_runs_but_warns(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """``--dry-run`` walks every phase even when nobody guards the target (the preflight
    refusal would be wrong for a rehearsal), but says so in the report's warnings."""
    sc = scenario(target=f"typo-{uuid.uuid4().hex[:6]}", allow_unguarded=False, dry_run=True)
    async with gated_worker(env, redis_url, "none") as (queue, _gate):
        report = await (await start(env.client, sc, queue)).result()
    assert report.outcome is ChaosOutcome.COMPLETED
    [warning] = [w for w in report.warnings if "no live process guards" in w]
    assert warning.startswith("dry run: ") and sc.target in warning
    assert report.instances_guarding == 0


async def test_redis_unreachable_at_injection_ends_failed_with_one_clear_report(
    own_env: WorkflowEnvironment,  # noqa: F811
    own_redis: Any,  # noqa: F811
) -> None:
    """Redis dies between the steady-state check and the injection (the preflight reads
    the fleet registry): one outcome, FAILED, and a report that says nothing was injected
    and that Redis could not confirm it; never a stuck workflow."""
    sc = scenario(duration_s=30)
    async with gated_worker(own_env, own_redis.url, "inject_fault", lease_ttl_s=3) as (
        queue,
        gate,
    ):
        handle = await start(own_env.client, sc, queue)
        await _entered(gate)
        own_redis.kill()
        gate.release.set()
        report = await asyncio.wait_for(handle.result(), 90)
        history = await handle.fetch_history()
    _no_failed_workflow_task(history)
    assert report.outcome is ChaosOutcome.FAILED
    assert report.reason.startswith("injection failed: ") and "\n" not in report.reason
    assert report.injected_at is None and report.fault_active_s is None
    assert report.cleanup.method == "injection_failed" and not report.cleanup.lease_removed
    assert report.cleanup.confirmed is False  # Redis never answered again
    assert P.VERIFYING_RECOVERY not in phases(report)


async def test_stand_down_sent_to_an_experiment_changes_nothing(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """``stand_down`` is the guardian's signal; sent to the experiment by mistake (UI,
    ``temporal workflow signal``) it is not handled and the run goes on to its end."""
    sc = scenario(duration_s=10)
    async with gated_worker(env, redis_url, "none") as (queue, _gate):
        handle = await start(env.client, sc, queue)
        await wait_phase(handle, P.RUNNING)
        await handle.signal("stand_down")
        report = await handle.result()
        history = await handle.fetch_history()
    _no_failed_workflow_task(history)
    assert report.outcome is ChaosOutcome.COMPLETED
    assert report.cleanup.method == "removed" and report.cleanup.lease_removed


async def test_terminated_while_awaiting_approval_is_rebuilt_with_nothing_injected(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    from antifragile.chaos.plane import FaultPlane
    from antifragile.chaos.report import rebuild_report

    sc = scenario(duration_s=10, require_approval=True)
    plane = FaultPlane.from_url(redis_url)
    try:
        async with gated_worker(env, redis_url, "none") as (queue, _gate):
            handle = await start(env.client, sc, queue)
            await wait_phase(handle, P.AWAITING_APPROVAL)
            await handle.terminate(reason="changed my mind")
            report = await rebuild_report(env.client, handle.id, plane=plane)
    finally:
        await plane.close()
    assert report.rebuilt and report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "terminated: changed my mind"
    assert report.cleanup.method == "nothing_injected" and report.injected_at is None
    assert report.fault_active_s is None and report.removed_at is None
    # The phases end where the workflow did, closed.
    assert phases(report)[-2:][-1] is P.STOPPED and report.phases[-2].left_at is not None


async def test_a_taken_guardian_id_ends_failed_with_cleanup_and_a_report(
    env: WorkflowEnvironment,  # noqa: F811
    redis_url: str,
) -> None:
    """Someone runs a workflow under the guardian's id (``{experiment}-guardian``) before
    the experiment injects: the guardian cannot start. The experiment must not inject
    without its guardian, and must still end with a report (it failed the workflow)."""
    sc = scenario(duration_s=10)
    redis = aioredis.from_url(redis_url)
    try:
        async with gated_worker(env, redis_url, "none") as (queue, _gate):
            eid = f"chaos-{sc.name}-{uuid.uuid4().hex[:8]}"
            squatter = await env.client.start_workflow(
                "Nothing", id=f"{eid}-guardian", task_queue="nobody"
            )
            from antifragile.chaos.client import start_experiment

            handle = await start_experiment(env.client, sc, task_queue=queue, experiment_id=eid)
            report = await handle.result()
            await squatter.terminate("test over")
            assert await redis.exists(fault_key(eid)) == 0
    finally:
        await redis.aclose()
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    assert report.outcome is ChaosOutcome.FAILED
    assert "WorkflowAlreadyStarted" in report.reason, report.reason
    assert report.injected_at is None and not report.cleanup.lease_removed
    assert report.cleanup.method == "nothing_injected"
    assert P.VERIFYING_RECOVERY not in phases(report)
