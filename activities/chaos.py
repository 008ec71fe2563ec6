"""Activities of ChaosExperimentWorkflow: every side effect on the fault plane.

All of them are idempotent: a retried ``inject_fault`` rewrites the same lease, a
retried ``remove_fault`` finds nothing to remove. The constitutional hash is checked
inside ``inject_fault`` and ``renew_fault_lease`` themselves, so no fault is written or
kept alive by a request whose hash does not match the worker's.
"""

from __future__ import annotations

import logging
from datetime import UTC

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.common import HASH_MISMATCH_ERROR
from antifragile.chaos.logic import (
    cap_duration,
    placement_words,
    policy_refusal,
    select_instances,
)
from antifragile.chaos.plane import FaultConflictError, FaultPlane
from antifragile.chaos.scenario import ChaosScenario
from antifragile.constants import KIND_RECOVERY
from antifragile.hashing import hash_matches, mismatch_message
from antifragile.models.chaos import (
    CheckExperimentInput,
    CheckHaltInput,
    CollectImpactInput,
    ExperimentImpact,
    ExperimentRunState,
    FaultPlacement,
    FaultSpec,
    HaltStatus,
    HealthMeasurement,
    InjectFaultInput,
    InjectFaultResult,
    MeasureHealthInput,
    RecoveryRecord,
    RemoveFaultInput,
    RemoveFaultResult,
    RenewLeaseInput,
    RenewLeaseResult,
    ValidateScenarioInput,
    ValidateScenarioResult,
)
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

log = logging.getLogger(__name__)

SCENARIO_REFUSED_ERROR = "ChaosScenarioRefused"
"""ApplicationError type when the worker policy refuses a scenario (non-retryable)."""

FAULT_CONFLICT_ERROR = "ChaosFaultConflict"
"""ApplicationError type when another experiment already faults a target."""

MAX_RECOVERY_RECORDS = 50


def build_fault_spec(
    experiment_id: str, scenario: ChaosScenario, ttl_s: float, instances: list[str] | None
) -> FaultSpec:
    """The lease content for a scenario."""
    return FaultSpec(
        experiment_id=experiment_id,
        chaos_type=scenario.chaos_type,
        target=scenario.target,
        blast_radius=list(scenario.blast_radius),
        latency_ms=scenario.latency_ms,
        jitter_ms=scenario.jitter_ms,
        error_rate=scenario.error_rate,
        error_kind=scenario.error_kind,
        timeout_ms=scenario.timeout_ms,
        resource_type=scenario.resource_type,
        resource_level=scenario.resource_level,
        injection_rate=scenario.injection_rate,
        instances=instances,
        instance_fraction=scenario.instance_fraction,
        ttl_ms=max(1, int(ttl_s * 1000)),
    )


class ChaosActivities:
    """Fault-plane side effects, limited by the worker's settings and policy."""

    def __init__(self, settings: Settings, policy: WorkerPolicy) -> None:
        self._settings = settings
        self._policy = policy
        self._plane: FaultPlane | None = None

    @property
    def plane(self) -> FaultPlane:
        """The fault plane on the worker's Redis (one client, made on first use)."""
        if self._plane is None:
            self._plane = FaultPlane.from_url(self._settings.redis_url)
        return self._plane

    def _check_hash(self, given: str) -> None:
        if not hash_matches(given, self._settings.constitutional_hash):
            raise ApplicationError(
                mismatch_message(given),
                type=HASH_MISMATCH_ERROR,
                non_retryable=True,
            )

    @activity.defn(name="validate_chaos_scenario")
    async def validate_chaos_scenario(self, data: ValidateScenarioInput) -> ValidateScenarioResult:
        """Check a scenario against the worker policy; cap its duration.

        Raises:
            ApplicationError: non-retryable, when a blast-radius target is not allowed.
        """
        scenario = data.scenario
        refusal = policy_refusal(scenario, self._policy.chaos.allowed_targets)
        if refusal:
            raise ApplicationError(refusal, type=SCENARIO_REFUSED_ERROR, non_retryable=True)
        cap = cap_duration(
            scenario.duration_s, scenario.max_duration_s, self._policy.chaos.max_duration_s
        )
        return ValidateScenarioResult(
            effective_duration_s=cap.effective_s,
            lease_ttl_s=self._policy.chaos.lease_ttl_s,
            warnings=[cap.warning] if cap.warning else [],
        )

    @activity.defn(name="check_halt_switch")
    async def check_halt_switch(self, data: CheckHaltInput) -> HaltStatus:
        """Read the fleet-wide halt switch."""
        return await self.plane.halt_status()

    @activity.defn(name="inject_fault")
    async def inject_fault(self, data: InjectFaultInput) -> InjectFaultResult:
        """Write the fault lease (TTL) and publish it; nothing while halted or dry-run.

        Raises:
            ApplicationError: non-retryable on a hash mismatch, a target already faulted
                by another experiment, or ``instance_count`` with no known instance.
        """
        scenario = data.scenario
        if scenario.require_hash_validation:
            self._check_hash(scenario.constitutional_hash)
        instances: list[str] | None = None
        if scenario.instance_count is not None:
            known = await self.plane.known_instances()
            if not known:
                raise ApplicationError(
                    "instance_count: no instance of the fleet is known to the fault plane",
                    type=SCENARIO_REFUSED_ERROR,
                    non_retryable=True,
                )
            instances = select_instances(known, scenario.instance_count, data.experiment_id)
        spec = build_fault_spec(data.experiment_id, scenario, data.ttl_s, instances)
        placement = FaultPlacement(
            targets=list(spec.blast_radius),
            instances=placement_words(instances, scenario.instance_fraction),
        )
        halt = await self.plane.halt_status()
        if halt.halted:
            return InjectFaultResult(
                injected=False, halted=True, detail=f"halt switch set: {halt.reason}"
            )
        if scenario.dry_run:
            return InjectFaultResult(
                injected=False, placement=placement, detail="dry run: no lease written"
            )
        try:
            written = await self.plane.inject(spec)
        except FaultConflictError as exc:
            raise ApplicationError(
                str(exc), type=FAULT_CONFLICT_ERROR, non_retryable=True
            ) from None
        if not written:
            return InjectFaultResult(injected=False, halted=True, detail="halt switch set")
        activity.logger.info("fault lease %s written (ttl %s ms)", spec.experiment_id, spec.ttl_ms)
        return InjectFaultResult(
            injected=True, placement=placement, detail=f"lease ttl {spec.ttl_ms} ms"
        )

    @activity.defn(name="renew_fault_lease")
    async def renew_fault_lease(self, data: RenewLeaseInput) -> RenewLeaseResult:
        """Reset the lease's TTL after checking the hash; refused while halted."""
        if data.require_hash_validation:
            self._check_hash(data.constitutional_hash)
        outcome = await self.plane.renew(data.experiment_id, max(1, int(data.ttl_s * 1000)))
        return RenewLeaseResult(
            renewed=outcome.renewed, halted=outcome.halted, missing=outcome.missing
        )

    @activity.defn(name="remove_fault")
    async def remove_fault(self, data: RemoveFaultInput) -> RemoveFaultResult:
        """Delete the lease and tell every process; idempotent."""
        removed = await self.plane.remove(data.experiment_id)
        return RemoveFaultResult(removed=removed)

    @activity.defn(name="measure_health")
    async def measure_health(self, data: MeasureHealthInput) -> HealthMeasurement:
        """Lowest health of the targets over the fleet's Redis snapshots."""
        fleet = await self.plane.fleet_health(data.targets)
        return HealthMeasurement(
            score=fleet.score,
            instances=fleet.instances,
            detail=fleet.detail,
            targets_score=fleet.targets_score,
        )

    @activity.defn(name="check_experiment_running")
    async def check_experiment_running(self, data: CheckExperimentInput) -> ExperimentRunState:
        """Whether the experiment's workflow still runs (the guardian's question)."""
        handle = activity.client().get_workflow_handle(data.experiment_id)
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return ExperimentRunState(running=False, status="NOT_FOUND")
            raise
        status = desc.status or WorkflowExecutionStatus.RUNNING
        return ExperimentRunState(
            running=status == WorkflowExecutionStatus.RUNNING, status=status.name
        )

    @activity.defn(name="collect_experiment_impact")
    async def collect_experiment_impact(self, data: CollectImpactInput) -> ExperimentImpact:
        """Calls affected per instance, breakers opened, recoveries started meanwhile."""
        impact = await self.plane.impact(data.experiment_id)
        recoveries: list[RecoveryRecord] = []
        detail = ""
        try:
            client = activity.client()
            names = ", ".join(f'"{t}"' for t in data.blast_radius)
            since = data.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            query = (
                f'AfKind="{KIND_RECOVERY}" AND AfService IN ({names}) AND StartTime >= "{since}"'
            )
            async for wf in client.list_workflows(query, limit=MAX_RECOVERY_RECORDS):
                sa = wf.search_attributes
                service = sa.get("AfService")
                state = sa.get("AfState")
                recoveries.append(
                    RecoveryRecord(
                        workflow_id=wf.id,
                        service=str(_first(service) or ""),
                        status=wf.status.name if wf.status else "UNKNOWN",
                        state=str(_first(state) or ""),
                    )
                )
        except Exception as exc:  # visibility is best effort; the counts still count
            detail = f"recoveries not listed: {exc.__class__.__name__}: {exc}"[:300]
        return ExperimentImpact(
            calls_affected=impact.affected,
            calls_seen=impact.seen,
            breakers_opened=impact.breakers,
            recovery_workflows=recoveries,
            detail=detail,
        )


def _first(value: object) -> object:
    return value[0] if isinstance(value, list) and value else value
