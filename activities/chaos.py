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
    approval_refusal,
    cap_duration,
    instance_selected,
    placement_words,
    policy_refusal,
    preflight_guards,
    select_instances,
    unguarded_refusal,
)
from antifragile.chaos.plane import FaultConflictError, FaultPlane
from antifragile.constants import (
    ACTIVITY_CHECK_EXPERIMENT_RUNNING,
    ACTIVITY_CHECK_HALT_SWITCH,
    ACTIVITY_COLLECT_EXPERIMENT_IMPACT,
    ACTIVITY_INJECT_FAULT,
    ACTIVITY_MEASURE_HEALTH,
    ACTIVITY_REMOVE_FAULT,
    ACTIVITY_RENEW_FAULT_LEASE,
    ACTIVITY_VALIDATE_CHAOS_SCENARIO,
    KIND_RECOVERY,
)
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
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

log = logging.getLogger(__name__)

SCENARIO_REFUSED_ERROR = "ChaosScenarioRefused"
"""ApplicationError type when the worker policy refuses a scenario (non-retryable)."""

FAULT_CONFLICT_ERROR = "ChaosFaultConflict"
"""ApplicationError type when another experiment already faults a target."""

UNGUARDED_TARGET_ERROR = "ChaosUnguardedTarget"
"""ApplicationError type when no live process guards the blast radius (preflight)."""

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

    def _check_hash(self, given: str, requested: bool = True) -> None:
        """Compare the request's hash with the worker's (constant time).

        Args:
            given: The hash the request carries.
            requested: The request itself asked for the check; when only the worker
                policy's ``chaos.require_hash_validation`` does, the refusal names it.
        """
        if not hash_matches(given, self._settings.constitutional_hash):
            by = (
                ""
                if requested
                else " (required by the worker policy's chaos.require_hash_validation)"
            )
            raise ApplicationError(
                mismatch_message(given) + by,
                type=HASH_MISMATCH_ERROR,
                non_retryable=True,
            )

    def _refuse_by_policy(self, scenario: ChaosScenario) -> None:
        chaos = self._policy.chaos
        refusal = policy_refusal(scenario, chaos.allowed_targets, chaos.min_abort_below)
        if refusal:
            raise ApplicationError(refusal, type=SCENARIO_REFUSED_ERROR, non_retryable=True)

    @activity.defn(name=ACTIVITY_VALIDATE_CHAOS_SCENARIO)
    async def validate_chaos_scenario(self, data: ValidateScenarioInput) -> ValidateScenarioResult:
        """Check a scenario against the worker policy; cap its duration.

        The result carries ``chaos.require_approval``, so the workflow gates even a
        scenario that does not ask for approval.

        Raises:
            ApplicationError: non-retryable, when a blast-radius target is not allowed or
                ``abort_below_health`` is below ``chaos.min_abort_below``.
        """
        scenario = data.scenario
        self._refuse_by_policy(scenario)
        cap = cap_duration(
            scenario.duration_s, scenario.max_duration_s, self._policy.chaos.max_duration_s
        )
        return ValidateScenarioResult(
            effective_duration_s=cap.effective_s,
            lease_ttl_s=self._policy.chaos.lease_ttl_s,
            warnings=[cap.warning] if cap.warning else [],
            require_approval=self._policy.chaos.require_approval,
        )

    @activity.defn(name=ACTIVITY_CHECK_HALT_SWITCH)
    async def check_halt_switch(self, data: CheckHaltInput) -> HaltStatus:
        """Read the fleet-wide halt switch."""
        return await self.plane.halt_status()

    @activity.defn(name=ACTIVITY_INJECT_FAULT)
    async def inject_fault(self, data: InjectFaultInput) -> InjectFaultResult:
        """Write the fault lease (TTL) and publish it; nothing while halted or dry-run.

        The worker policy is enforced here too, whatever the workflow decided:
        ``chaos.allowed_targets``, ``chaos.min_abort_below``, ``chaos.require_approval``
        (``approved_by`` must name an approver) and ``chaos.require_hash_validation``.
        Preflight: the fleet registry must show a live process guarding the blast radius
        unless the scenario says ``allow_unguarded`` (dry runs only warn).

        Raises:
            ApplicationError: non-retryable on a hash mismatch, a policy refusal (naming
                the policy field), a target already faulted by another experiment, no live
                process guarding the target, or ``instance_count`` with no known instance.
        """
        scenario = data.scenario
        chaos = self._policy.chaos
        self._refuse_by_policy(scenario)
        refusal = approval_refusal(
            data.approved_by, chaos.require_approval, self._policy.recovery.approvers
        )
        if refusal:
            raise ApplicationError(refusal, type=SCENARIO_REFUSED_ERROR, non_retryable=True)
        if scenario.require_hash_validation or chaos.require_hash_validation:
            self._check_hash(scenario.constitutional_hash, scenario.require_hash_validation)
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
        guarding, unguarded = await self._preflight(data.experiment_id, scenario, instances)
        if scenario.dry_run:
            return InjectFaultResult(
                injected=False,
                placement=placement,
                detail="dry run: no lease written",
                instances_guarding=guarding,
                warning=f"dry run: {unguarded}" if unguarded else "",
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
            injected=True,
            placement=placement,
            detail=f"lease ttl {spec.ttl_ms} ms",
            instances_guarding=guarding,
        )

    async def _preflight(
        self, experiment_id: str, scenario: ChaosScenario, instances: list[str] | None
    ) -> tuple[int, str]:
        """Count the live processes guarding the blast radius; refuse when there are none.

        Returns the count and the refusal a dry run or ``allow_unguarded`` lets through
        ("" when guarded).
        """
        live = await self.plane.known_instances()
        snapshots = await self.plane.instance_snapshots(live)
        selected = {
            i
            for i in live
            if instance_selected(i, experiment_id, instances, scenario.instance_fraction)
        }
        pre = preflight_guards(live, snapshots, scenario.blast_radius, selected)
        refusal = unguarded_refusal(pre, scenario.blast_radius)
        if refusal and not scenario.allow_unguarded and not scenario.dry_run:
            raise ApplicationError(refusal, type=UNGUARDED_TARGET_ERROR, non_retryable=True)
        return pre.count, "" if scenario.allow_unguarded else (refusal or "")

    @activity.defn(name=ACTIVITY_RENEW_FAULT_LEASE)
    async def renew_fault_lease(self, data: RenewLeaseInput) -> RenewLeaseResult:
        """Reset the lease's TTL after checking the hash; refused while halted."""
        if data.require_hash_validation or self._policy.chaos.require_hash_validation:
            self._check_hash(data.constitutional_hash, data.require_hash_validation)
        outcome = await self.plane.renew(data.experiment_id, max(1, int(data.ttl_s * 1000)))
        return RenewLeaseResult(
            renewed=outcome.renewed, halted=outcome.halted, missing=outcome.missing
        )

    @activity.defn(name=ACTIVITY_REMOVE_FAULT)
    async def remove_fault(self, data: RemoveFaultInput) -> RemoveFaultResult:
        """Delete the lease and tell every process; idempotent."""
        removed = await self.plane.remove(data.experiment_id)
        return RemoveFaultResult(removed=removed)

    @activity.defn(name=ACTIVITY_MEASURE_HEALTH)
    async def measure_health(self, data: MeasureHealthInput) -> HealthMeasurement:
        """Lowest health of the targets over the fleet's Redis snapshots."""
        fleet = await self.plane.fleet_health(data.targets)
        return HealthMeasurement(
            score=fleet.score,
            instances=fleet.instances,
            detail=fleet.detail,
            targets_score=fleet.targets_score,
            calls=fleet.calls,
        )

    @activity.defn(name=ACTIVITY_CHECK_EXPERIMENT_RUNNING)
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

    @activity.defn(name=ACTIVITY_COLLECT_EXPERIMENT_IMPACT)
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
            breaker_openings=impact.openings,
            calls_refused=impact.refused,
        )


def _first(value: object) -> object:
    return value[0] if isinstance(value, list) and value else value
