"""Contracts of the chaos experiment workflow: input, result, signals, query, activities.

The scenario itself lives in :mod:`antifragile.models.chaos_scenario`; the fault lease the
controller writes to Redis (:class:`FaultSpec`) is defined here because activities
write it and every service process reads it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from antifragile.models.chaos_calls import CallSample, InstanceCalls
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType, ErrorKind, ResourceType
from antifragile.models.common import ApprovalRecord, StrictModel
from antifragile.models.learning import Advice, ExperimentObservation


class ChaosPhase(StrEnum):
    """Where an experiment is; also the value of the ``AfState`` search attribute."""

    VALIDATING = "VALIDATING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    STEADY_STATE_BEFORE = "STEADY_STATE_BEFORE"
    INJECTING = "INJECTING"
    RUNNING = "RUNNING"
    CLEANING_UP = "CLEANING_UP"
    VERIFYING_RECOVERY = "VERIFYING_RECOVERY"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, ABORTED, STOPPED and FAILED."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {ChaosPhase.COMPLETED, ChaosPhase.ABORTED, ChaosPhase.STOPPED, ChaosPhase.FAILED}
)


# --- the fault lease (Redis wire format) ---------------------------------------------


class FaultSpec(StrictModel):
    """One active fault as stored in its Redis lease ``af:fault:{experiment_id}``.

    Attributes:
        experiment_id: Workflow id of the experiment that owns the lease.
        chaos_type: The fault kind.
        target: The experiment's target.
        blast_radius: Guards that enforce the fault; no other guard is touched.
        latency_ms: LATENCY delay. jitter_ms: LATENCY ± spread.
        error_rate: ERROR share of affected calls that raise.
        error_kind: ERROR exception kind.
        timeout_ms: TIMEOUT hang when the guard has no timeout of its own.
        resource_type: RESOURCE_EXHAUSTION resource. resource_level: its share held.
        injection_rate: Share of calls affected.
        instances: Exactly these instances enforce the fault; None: see fraction.
        instance_fraction: Share of instances (stable hash); None with no
            ``instances``: every instance.
        ttl_ms: Lease time to live; a process drops the fault when it passes unrenewed.
    """

    experiment_id: str
    chaos_type: ChaosType
    target: str
    blast_radius: list[str]
    latency_ms: int = 0
    jitter_ms: int = 0
    error_rate: float = 1.0
    error_kind: ErrorKind = ErrorKind.RUNTIME
    timeout_ms: int = 30_000
    resource_type: ResourceType | None = None
    resource_level: float = 0.0
    injection_rate: float = 1.0
    instances: list[str] | None = None
    instance_fraction: float | None = None
    ttl_ms: int = Field(default=15_000, gt=0)


class FaultPlacement(StrictModel):
    """Where a fault is active: targets and which instances."""

    targets: list[str]
    instances: str = "all instances"
    """Human words: ``all instances``, ``50% of instances`` or the instance names."""


# --- workflow input / result ---------------------------------------------------------


class ChaosExperimentInput(StrictModel):
    """Input of ChaosExperimentWorkflow.

    Attributes:
        scenario: What to inject, where, for how long, with which guards.
        experiment_id: The workflow id (``chaos-{name}-{short id}``), fixed by the starter;
            empty for runs started by a Temporal Schedule (the run's workflow id is used).
    """

    scenario: ChaosScenario
    experiment_id: str = ""
    """Empty (scheduled runs): the workflow id the run got."""


class ChaosOutcome(StrEnum):
    """How an experiment ended (the terminal phase)."""

    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class PhaseRecord(StrictModel):
    """One phase the experiment went through."""

    phase: ChaosPhase
    entered_at: datetime
    left_at: datetime | None = None


class HealthSample(StrictModel):
    """One health observation during an experiment.

    Attributes:
        at: Workflow time of the observation.
        score: Health score 0..1 (None: the source gave no score).
        healthy: The source's verdict.
        source: ``signal:{instance}``, ``fleet`` (Redis snapshots) or ``probe``.
        detail: What the source said.
    """

    at: datetime
    score: float | None = None
    healthy: bool = True
    source: str = ""
    detail: str = ""
    targets_score: float | None = None
    """Score of the targets' own breakers, when the source has it (fleet snapshots)."""


class ChaosEvent(StrictModel):
    """One line of the experiment's journal."""

    at: datetime
    phase: ChaosPhase
    message: str


class RecoveryRecord(StrictModel):
    """A recovery workflow that started during the experiment, and how it ended."""

    workflow_id: str
    service: str
    status: str
    """Temporal status: RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, …"""
    state: str = ""
    """The recovery's own state (AfState), e.g. SUCCEEDED."""


class CleanupRecord(StrictModel):
    """What cleanup did.

    Attributes:
        attempted: Cleanup ran (always true once a lease could have been written).
        lease_removed: The lease existed and was deleted by cleanup.
        method: ``removed``, ``already_gone``, ``expired`` (Redis unreachable: the TTL
            ran out before the experiment ended), ``injection_failed`` (the injection was
            refused or failed: nothing to remove) or ``nothing_injected``.
        at: When cleanup finished.
        detail: Errors met on the way.
    """

    attempted: bool = False
    lease_removed: bool = False
    method: str = "nothing_injected"
    at: datetime | None = None
    detail: str = ""
    confirmed: bool | None = None
    """The fault plane confirmed no lease is left (None: not asked, e.g. older runs)."""
    fault_ended_at: datetime | None = None
    """When the fault stopped applying: the removal, or the lease's expiry (method expired)."""


class ChaosStatus(StrictModel):
    """Result of the ``status`` query."""

    experiment_id: str
    name: str
    chaos_type: ChaosType
    target: str
    blast_radius: list[str]
    parameters: str
    phase: ChaosPhase
    dry_run: bool = False
    started_at: datetime
    injected_at: datetime | None = None
    ends_at: datetime | None = None
    time_left_s: float | None = None
    duration_s: float
    faults_active: list[FaultPlacement] = Field(default_factory=list)
    lowest_health: float | None = None
    last_health: float | None = None
    stop_reason: str = ""
    warnings: list[str] = Field(default_factory=list)
    decisions: list[ApprovalRecord] = Field(default_factory=list)
    events: list[ChaosEvent] = Field(default_factory=list)
    approval_needed: bool = False
    """The experiment waits for ``chaos approve``/``chaos reject`` now."""
    instances_guarding: int | None = None
    """Live processes guarding the blast radius at injection (None: not injected yet)."""
    injection_failed: str = ""
    """Why the injection failed ("" when it did not): nothing was injected."""


class ExperimentLearning(StrictModel):
    """What an experiment taught the ledger of its target (``profile-{target}``).

    Attributes:
        dependency: The target (whose ledger).
        observation: The experiment's measurements as the ledger holds them (time to
            detect, time to recover, calls failed and refused); None when it holds none.
        advice: The ledger's advice as it stands (against the library defaults).
        note: One line when something is missing (no ledger, not answering, not recorded).
        fault_latency: The observation's latency under the fault in one line (p50, p99,
            p99.9 and the calls measured; ``-``: none measured), for the renderers.
    """

    dependency: str
    observation: ExperimentObservation | None = None
    advice: list[Advice] = Field(default_factory=list)
    note: str = ""
    fault_latency: str = "-"


class ChaosReport(StrictModel):
    """Result of ChaosExperimentWorkflow, complete for every outcome.

    Attributes:
        outcome: COMPLETED, ABORTED (health guard), STOPPED (emergency stop, halt
            switch, cancellation) or FAILED (validation, hash, approval rejected).
        reason: Why it ended that way.
        phases: Phase timeline.
        health_lowest: Lowest health score seen (None: no score reported).
        health_timeline: Every health observation (capped, oldest dropped).
        calls_affected: Affected calls per instance, counted at the call sites.
        calls_seen: Calls through guards in the blast radius per instance.
        breakers_opened: ``instance/target: STATE`` of breakers that opened.
        breaker_openings: ``instance/target: STATE`` -> how many times that breaker
            opened (every opening counted; empty in reports made before it existed).
        calls_refused: Calls the guards refused (breaker open, concurrency limit)
            under the fault, per instance. Those the fault caused (a breaker it opened
            or forced open, slots it held) are also in ``calls_affected``.
        recovery_workflows: Recoveries of blast-radius services that started
            during the experiment, and how they ended.
        time_to_recover_s: Seconds from fault removal until health was back
            (None: never injected, health never dropped, or not back within
            ``recovery_timeout_s``).
        warnings: E.g. the duration was capped.
    """

    experiment_id: str
    name: str
    chaos_type: ChaosType
    target: str
    blast_radius: list[str]
    outcome: ChaosOutcome | None = None
    """None only in a ``report`` query of a run still in progress."""
    reason: str = ""
    dry_run: bool = False
    requested_duration_s: float
    effective_duration_s: float
    started_at: datetime
    injected_at: datetime | None = None
    removed_at: datetime | None = None
    ended_at: datetime
    phases: list[PhaseRecord] = Field(default_factory=list)
    health_lowest: float | None = None
    health_timeline: list[HealthSample] = Field(default_factory=list)
    calls_affected: dict[str, int] = Field(default_factory=dict)
    calls_seen: dict[str, int] = Field(default_factory=dict)
    breakers_opened: list[str] = Field(default_factory=list)
    recovery_workflows: list[RecoveryRecord] = Field(default_factory=list)
    time_to_recover_s: float | None = None
    breaker_openings: dict[str, int] = Field(default_factory=dict)
    calls_refused: dict[str, int] = Field(default_factory=dict)
    recovered: bool | None = None
    cleanup: CleanupRecord = Field(default_factory=CleanupRecord)
    warnings: list[str] = Field(default_factory=list)
    decisions: list[ApprovalRecord] = Field(default_factory=list)
    events: list[ChaosEvent] = Field(default_factory=list)
    fault_active_s: float | None = None
    """How long the fault really applied: injection until removal or lease expiry."""
    instances_guarding: int | None = None
    """Live processes guarding the blast radius when the fault was injected."""
    instances_saw_fault: int | None = None
    """Processes that counted calls under the fault (None: impact not collected)."""
    health_dropped: bool | None = None
    """Health fell below its steady state during the experiment (None: not measured)."""
    injection_failed: str = ""
    """Why the injection failed ("" when it did not)."""
    rebuilt: bool = False
    """Rebuilt by ``chaos report`` from history and Redis (the run ended without one)."""
    call_samples: list[CallSample] = Field(default_factory=list)
    """The target's calls at each health check (bounded, thinned; see CallSample)."""
    learning: ExperimentLearning | None = None
    """What the target's ledger learned from it (filled by ``chaos report``, never by the
    workflow; None when not asked)."""


# --- the workflow's state ------------------------------------------------------------


class ChaosJournal(StrictModel):
    """Everything a running ChaosExperimentWorkflow knows: the one state it mutates.

    The ``status`` query and the report are projections of it
    (:func:`antifragile.chaos.logic.chaos_status`, :func:`~antifragile.chaos.logic.chaos_report`).
    It is never a payload: it lives in the workflow's memory and is rebuilt by replay.
    Assignment is not validated (pydantic's default): only the workflow writes it.

    Attributes:
        experiment_id: The workflow id. scenario: The experiment as started.
        phase: Where the experiment is. phases: Phase timeline (last one open).
        events: Journal lines (capped). health: Every health sample (capped).
        lowest_health / last_health: Lowest and latest score seen (None: none yet).
        baseline: Steady-state score before injection. health_dropped: Health fell below
            it after injection (None: not measured).
        decisions: Approval decisions (the approval gate appends them).
        stop: The first emergency stop. trip: Why the health guard tripped (None: not).
        duration_s / lease_ttl_s: Effective duration and lease TTL, seconds (validated).
        injected_at / ends_at / removed_at: Fault injection, planned end, removal.
        lease_until: When the last written lease expires, counted from its result.
        lease_expires_earliest: The earliest it can expire (counted from its sending).
        lease_maybe_written: A lease may exist: cleanup must remove it.
        outcome / reason: How and why it ended (None / "" while it runs).
    """

    experiment_id: str
    scenario: ChaosScenario
    phase: ChaosPhase = ChaosPhase.VALIDATING
    started_at: datetime
    phases: list[PhaseRecord] = Field(default_factory=list)
    events: list[ChaosEvent] = Field(default_factory=list)
    health: list[HealthSample] = Field(default_factory=list)
    calls: list[CallSample] = Field(default_factory=list)
    """The target's calls per health check (:func:`~antifragile.chaos.journal.add_call_sample`)."""
    last_calls: list[InstanceCalls] = Field(default_factory=list)
    """The counters of the previous health check (the deltas' base)."""
    fault_latency: list[int] = Field(default_factory=list)
    """Latency bucket counts of the target's calls in the intervals between health checks
    that lay wholly under the fault (``latency_bounds_ms()`` buckets; what the experiment
    tells its ledger about latency inside experiments)."""
    lowest_health: float | None = None
    last_health: float | None = None
    baseline: float | None = None
    health_dropped: bool | None = None
    warnings: list[str] = Field(default_factory=list)
    decisions: list[ApprovalRecord] = Field(default_factory=list)
    stop: EmergencyStopSignal | None = None
    trip: str | None = None
    duration_s: float
    lease_ttl_s: float = 15.0
    validated: bool = False
    policy_approval: bool = False
    """The worker policy requires approval (chaos.require_approval)."""
    injected_at: datetime | None = None
    ends_at: datetime | None = None
    removed_at: datetime | None = None
    lease_until: datetime | None = None
    lease_expires_earliest: datetime | None = None
    lease_maybe_written: bool = False
    guardian_started: bool = False
    placement: FaultPlacement | None = None
    instances_guarding: int | None = None
    injection_failed: str = ""
    cleanup: CleanupRecord = Field(default_factory=CleanupRecord)
    impact: ExperimentImpact = Field(default_factory=lambda: ExperimentImpact())
    impact_collected: bool = False
    time_to_recover_s: float | None = None
    recovered: bool | None = None
    shielded_ending: bool = False
    """The ending runs shielded from cancels (patch ``chaos-shielded-ending``)."""
    outcome: ChaosOutcome | None = None
    reason: str = ""


# --- signals -------------------------------------------------------------------------


class EmergencyStopSignal(StrictModel):
    """Payload of ``emergency_stop``: remove the fault now and end STOPPED."""

    reason: str = Field(min_length=1, max_length=2000)
    by: str = Field(default="", max_length=200)


# --- activities ----------------------------------------------------------------------


class ValidateScenarioInput(StrictModel):
    """Input of ``validate_chaos_scenario``."""

    scenario: ChaosScenario


class ValidateScenarioResult(StrictModel):
    """What the worker policy makes of a scenario.

    Attributes:
        effective_duration_s: ``duration_s`` after every cap.
        lease_ttl_s: TTL of the fault lease (worker policy).
        warnings: E.g. the duration was capped.
    """

    effective_duration_s: float
    lease_ttl_s: float
    warnings: list[str] = Field(default_factory=list)
    require_approval: bool = False
    """The worker policy's ``chaos.require_approval``: gate even if the scenario does not."""


class CheckHaltInput(StrictModel):
    """Input of ``check_halt_switch`` (nothing to say yet; a model keeps it evolvable)."""

    context: str = ""


class HaltStatus(StrictModel):
    """The fleet-wide halt switch: while set, no fault applies and nothing injects."""

    halted: bool
    reason: str = ""
    by: str = ""
    at: datetime | None = None


class InjectFaultInput(StrictModel):
    """Input of ``inject_fault``."""

    experiment_id: str
    scenario: ChaosScenario
    ttl_s: float = Field(gt=0.0)
    approved_by: list[str] = Field(default_factory=list)
    """Approvers whose approval the workflow accepted (``chaos.require_approval``)."""


class InjectFaultResult(StrictModel):
    """What ``inject_fault`` did.

    Attributes:
        injected: The lease is written (false when halted or a dry run).
        halted: The halt switch was set: nothing was injected.
        placement: Where the fault is active.
        detail: Why not injected, or what was written.
    """

    injected: bool
    halted: bool = False
    placement: FaultPlacement | None = None
    detail: str = ""
    instances_guarding: int | None = None
    """Live processes of the fleet registry guarding the blast radius (preflight)."""
    warning: str = ""
    """What the preflight would have refused, for a dry run (which only warns)."""


class RenewLeaseInput(StrictModel):
    """Input of ``renew_fault_lease``."""

    experiment_id: str
    ttl_s: float = Field(gt=0.0)
    constitutional_hash: str
    require_hash_validation: bool = True


class RenewLeaseResult(StrictModel):
    """What ``renew_fault_lease`` found.

    Attributes:
        renewed: The lease's TTL was reset.
        halted: The halt switch is set (the lease was not renewed).
        missing: The lease was gone (expired or removed by someone else).
    """

    renewed: bool
    halted: bool = False
    missing: bool = False


class RemoveFaultInput(StrictModel):
    """Input of ``remove_fault`` (idempotent)."""

    experiment_id: str


class RemoveFaultResult(StrictModel):
    """``removed`` is true when a lease existed and was deleted."""

    removed: bool


class MeasureHealthInput(StrictModel):
    """Input of ``measure_health``: the services whose health matters."""

    targets: list[str]


class HealthMeasurement(StrictModel):
    """Fleet health of the targets, from the processes' Redis snapshots.

    Attributes:
        score: Lowest process health score over the instances guarding a target (None:
            nobody reports). The health guard compares this.
        instances: How many instances reported.
        detail: Which instance was lowest, or why there is no score.
        targets_score: Lowest score of the targets' own breakers (None: not published).
            Recovery verification waits for this.
    """

    score: float | None = None
    instances: int = 0
    detail: str = ""
    targets_score: float | None = None
    calls: list[InstanceCalls] = Field(default_factory=list)
    """Cumulative call counters of the targets, per instance (empty: none published)."""


class CollectImpactInput(StrictModel):
    """Input of ``collect_experiment_impact``."""

    experiment_id: str
    blast_radius: list[str]
    since: datetime


class ExperimentImpact(StrictModel):
    """What the experiment did to the fleet, as counted at the call sites."""

    calls_affected: dict[str, int] = Field(default_factory=dict)
    calls_seen: dict[str, int] = Field(default_factory=dict)
    breakers_opened: list[str] = Field(default_factory=list)
    recovery_workflows: list[RecoveryRecord] = Field(default_factory=list)
    detail: str = ""
    breaker_openings: dict[str, int] = Field(default_factory=dict)
    """``instance/target: STATE`` -> times that breaker opened."""
    calls_refused: dict[str, int] = Field(default_factory=dict)
    """Calls refused by the guards (breaker open, concurrency limit) per instance."""


# --- guardian ------------------------------------------------------------------------


class GuardianInput(StrictModel):
    """Input of ChaosGuardianWorkflow, the child that outlives a terminated experiment.

    Attributes:
        experiment_id: The experiment (parent workflow id) whose lease it guards.
        check_every_s: How often it checks that the experiment still runs.
        give_up_after_s: After this long it removes the lease whatever it sees (the
            experiment cannot legitimately hold a fault that long).
    """

    experiment_id: str
    check_every_s: float = Field(gt=0.0)
    give_up_after_s: float = Field(gt=0.0)


class GuardianResult(StrictModel):
    """What the guardian did when it ended."""

    removed: bool
    reason: str


class CheckExperimentInput(StrictModel):
    """Input of ``check_experiment_running``."""

    experiment_id: str


class ExperimentRunState(StrictModel):
    """Whether an experiment's workflow still runs, and its Temporal status."""

    running: bool
    status: str
