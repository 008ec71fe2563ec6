"""The commands a chaos experiment issues: its activities and its guardian child.

Each function issues one command of ChaosExperimentWorkflow with its input, timeouts,
retries, cancellation type and UI summary, and returns the result; what the result means
is the workflow's decision. Options are part of the recorded histories' contract: change
one only behind a ``workflow.patched`` marker. Not a durable process of its own.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.chaos.logic import guardian_check_every_s, guardian_give_up_after_s
    from antifragile.chaos.ui import guardian_summary
    from antifragile.constants import (
        ACTIVITY_CHECK_HALT_SWITCH,
        ACTIVITY_COLLECT_EXPERIMENT_IMPACT,
        ACTIVITY_INJECT_FAULT,
        ACTIVITY_MEASURE_HEALTH,
        ACTIVITY_PROBE_SERVICE,
        ACTIVITY_REMOVE_FAULT,
        ACTIVITY_RENEW_FAULT_LEASE,
        ACTIVITY_VALIDATE_CHAOS_SCENARIO,
        ACTIVITY_VALIDATE_HASH,
        GUARDIAN_WORKFLOW_TYPE,
        SIGNAL_STAND_DOWN,
    )
    from antifragile.models.chaos import (
        ChaosJournal,
        CheckHaltInput,
        CollectImpactInput,
        ExperimentImpact,
        GuardianInput,
        GuardianResult,
        HaltStatus,
        HealthMeasurement,
        InjectFaultInput,
        InjectFaultResult,
        MeasureHealthInput,
        RemoveFaultInput,
        RemoveFaultResult,
        RenewLeaseInput,
        RenewLeaseResult,
        ValidateScenarioInput,
        ValidateScenarioResult,
    )
    from antifragile.models.chaos_scenario import ChaosScenario
    from antifragile.models.common import Decision
    from antifragile.models.recovery import (
        ProbeInput,
        ProbeResult,
        ValidateHashInput,
        ValidateHashResult,
    )

SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
PLANE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=5,
)
REMOVE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=2)
)
"""Removal retries until its schedule-to-close window ends (the caller sizes it)."""
ACTIVITY_TIMEOUT = timedelta(seconds=10)
PROBE_TIMEOUT_S = 5.0


async def validate_hash(scenario: ChaosScenario) -> ValidateHashResult:
    """``validate_constitutional_hash`` for the scenario's hash."""
    result: ValidateHashResult = await workflow.execute_activity(
        ACTIVITY_VALIDATE_HASH,
        ValidateHashInput(
            constitutional_hash=scenario.constitutional_hash, context=f"chaos {scenario.name}"
        ),
        result_type=ValidateHashResult,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=SHORT_RETRY,
        summary="validate constitutional hash",
    )
    return result


async def validate_scenario(scenario: ChaosScenario) -> ValidateScenarioResult:
    """``validate_chaos_scenario``: the worker policy and caps applied to the scenario."""
    result: ValidateScenarioResult = await workflow.execute_activity(
        ACTIVITY_VALIDATE_CHAOS_SCENARIO,
        ValidateScenarioInput(scenario=scenario),
        result_type=ValidateScenarioResult,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=SHORT_RETRY,
        summary="check policy and caps",
    )
    return result


async def check_halt(experiment_id: str) -> HaltStatus:
    """``check_halt_switch``: the fleet-wide halt switch."""
    result: HaltStatus = await workflow.execute_activity(
        ACTIVITY_CHECK_HALT_SWITCH,
        CheckHaltInput(context=experiment_id),
        result_type=HaltStatus,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=PLANE_RETRY,
        summary="check halt switch",
    )
    return result


async def inject_fault(journal: ChaosJournal) -> InjectFaultResult:
    """``inject_fault``: write the fault lease (TTL ``journal.lease_ttl_s``).

    The lease names the approvers recorded so far. A cancelled injection finishes before
    cleanup runs, or the lease could be written after it was removed.
    """
    s = journal.scenario
    result: InjectFaultResult = await workflow.execute_activity(
        ACTIVITY_INJECT_FAULT,
        InjectFaultInput(
            experiment_id=journal.experiment_id,
            scenario=s,
            ttl_s=journal.lease_ttl_s,
            approved_by=[d.approver for d in journal.decisions if d.decision is Decision.APPROVED],
        ),
        result_type=InjectFaultResult,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=PLANE_RETRY,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=f"inject {s.chaos_type.value} on {', '.join(s.blast_radius)}",
    )
    return result


async def renew_lease(journal: ChaosJournal) -> RenewLeaseResult:
    """``renew_fault_lease``; its retries end before the lease would.

    They end at two thirds of the TTL: past that there is nothing to renew.
    """
    s, ttl = journal.scenario, journal.lease_ttl_s
    result: RenewLeaseResult = await workflow.execute_activity(
        ACTIVITY_RENEW_FAULT_LEASE,
        RenewLeaseInput(
            experiment_id=journal.experiment_id,
            ttl_s=ttl,
            constitutional_hash=s.constitutional_hash,
            require_hash_validation=s.require_hash_validation,
        ),
        result_type=RenewLeaseResult,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        schedule_to_close_timeout=timedelta(seconds=max(1.0, ttl * 2 / 3)),
        retry_policy=PLANE_RETRY,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary="renew fault lease",
    )
    return result


async def remove_fault(experiment_id: str, within_s: float, summary: str) -> RemoveFaultResult:
    """``remove_fault`` (idempotent), retried for at most ``within_s`` seconds."""
    result: RemoveFaultResult = await workflow.execute_activity(
        ACTIVITY_REMOVE_FAULT,
        RemoveFaultInput(experiment_id=experiment_id),
        result_type=RemoveFaultResult,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        schedule_to_close_timeout=timedelta(seconds=within_s),
        retry_policy=REMOVE_RETRY,
        summary=summary,
    )
    return result


async def measure_health(scenario: ChaosScenario, when: str) -> HealthMeasurement:
    """``measure_health``: fleet health of the blast radius from Redis snapshots."""
    result: HealthMeasurement = await workflow.execute_activity(
        ACTIVITY_MEASURE_HEALTH,
        MeasureHealthInput(targets=list(scenario.blast_radius)),
        result_type=HealthMeasurement,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=SHORT_RETRY,
        summary=f"measure health {when}",
    )
    return result


async def probe_steady_state(scenario: ChaosScenario, url: str, when: str) -> ProbeResult:
    """``probe_service`` on the scenario's steady-state probe ``url``."""
    result: ProbeResult = await workflow.execute_activity(
        ACTIVITY_PROBE_SERVICE,
        ProbeInput(service=scenario.target, url=url, timeout_s=PROBE_TIMEOUT_S),
        result_type=ProbeResult,
        start_to_close_timeout=timedelta(seconds=PROBE_TIMEOUT_S + 10),
        retry_policy=SHORT_RETRY,
        summary=f"probe {url} {when}",
    )
    return result


async def collect_impact(journal: ChaosJournal) -> ExperimentImpact:
    """``collect_experiment_impact``: what the call sites counted since the start."""
    result: ExperimentImpact = await workflow.execute_activity(
        ACTIVITY_COLLECT_EXPERIMENT_IMPACT,
        CollectImpactInput(
            experiment_id=journal.experiment_id,
            blast_radius=list(journal.scenario.blast_radius),
            since=journal.started_at,
        ),
        result_type=ExperimentImpact,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=SHORT_RETRY,
        summary="collect impact",
    )
    return result


def guardian_id(experiment_id: str) -> str:
    """The workflow id of an experiment's guardian child."""
    return f"{experiment_id}-guardian"


async def start_guardian(journal: ChaosJournal) -> None:
    """Start the guardian: a child that survives the experiment and then removes its lease.

    It survives termination of the experiment through ``ParentClosePolicy.ABANDON``.
    """
    eid, ttl = journal.experiment_id, journal.lease_ttl_s
    await workflow.start_child_workflow(
        GUARDIAN_WORKFLOW_TYPE,
        GuardianInput(
            experiment_id=eid,
            check_every_s=guardian_check_every_s(ttl),
            give_up_after_s=guardian_give_up_after_s(
                journal.duration_s, journal.scenario.recovery_timeout_s, ttl
            ),
        ),
        id=guardian_id(eid),
        result_type=GuardianResult,
        parent_close_policy=ParentClosePolicy.ABANDON,
        static_summary=guardian_summary(eid),
    )


async def dismiss_guardian(experiment_id: str) -> None:
    """Signal ``stand_down`` to the guardian (raises when it is gone already)."""
    await workflow.get_external_workflow_handle(guardian_id(experiment_id)).signal(
        SIGNAL_STAND_DOWN
    )
