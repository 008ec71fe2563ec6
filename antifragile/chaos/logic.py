"""Pure decisions of a chaos experiment: phases, caps, health guard, instances, verdicts.

Verdicts cover cleanup and recovery. (Its journal's upkeep and projections are
:mod:`antifragile.chaos.journal`.)

ChaosExperimentWorkflow, the activities and the fault plane call these; nothing here
touches Temporal, Redis or the clock (the caller passes ``now``), so every rule is unit
tested alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from antifragile._fsm import TransitionTable
from antifragile.models.chaos import (
    ChaosJournal,
    ChaosOutcome,
    ChaosPhase,
    CleanupRecord,
    HealthMeasurement,
    HealthSample,
)
from antifragile.models.chaos_scenario import HARD_MAX_DURATION_S, ChaosScenario
from antifragile.models.common import HealthChangedSignal

P = ChaosPhase

_ENDINGS = frozenset({P.ABORTED, P.STOPPED, P.FAILED})
"""A run can end early from any live phase (health guard, emergency stop, failure)."""

LEGAL_TRANSITIONS: TransitionTable[ChaosPhase] = TransitionTable(
    "chaos experiment",
    {
        P.VALIDATING: frozenset({P.AWAITING_APPROVAL, P.STEADY_STATE_BEFORE}) | _ENDINGS,
        P.AWAITING_APPROVAL: frozenset({P.STEADY_STATE_BEFORE}) | _ENDINGS,
        P.STEADY_STATE_BEFORE: frozenset({P.INJECTING}) | _ENDINGS,
        # INJECTING may go straight to cleanup: the lease may exist even if the activity failed.
        P.INJECTING: frozenset({P.RUNNING, P.CLEANING_UP}) | _ENDINGS,
        P.RUNNING: frozenset({P.CLEANING_UP}),
        # Straight to COMPLETED only when nothing was injected (a dry run): nothing to verify.
        P.CLEANING_UP: frozenset({P.VERIFYING_RECOVERY, P.COMPLETED}) | _ENDINGS,
        P.VERIFYING_RECOVERY: frozenset({P.COMPLETED}) | _ENDINGS,
        P.COMPLETED: frozenset(),
        P.ABORTED: frozenset(),
        P.STOPPED: frozenset(),
        P.FAILED: frozenset(),
    },
)
"""Every legal phase move. RUNNING can only leave through CLEANING_UP: no path skips it."""


def check_phase_transition(current: ChaosPhase, new: ChaosPhase) -> ChaosPhase:
    """Return ``new`` if moving there from ``current`` is legal.

    Raises:
        IllegalTransitionError: The move is not in :data:`LEGAL_TRANSITIONS`.
    """
    return LEGAL_TRANSITIONS.check(current, new)


def outcome_phase(outcome: ChaosOutcome) -> ChaosPhase:
    """The terminal phase of an outcome."""
    return ChaosPhase(outcome.value)


@dataclass(frozen=True, slots=True)
class DurationCap:
    """The duration an experiment will run, and a warning when it was capped."""

    effective_s: float
    warning: str | None


def cap_duration(requested_s: float, scenario_max_s: float, policy_max_s: float) -> DurationCap:
    """Cap ``requested_s`` at the scenario's, the policy's and the hard 300 s limit.

    A capped duration is not an error: the experiment runs for the cap and the warning
    is shown to the user and kept in the report.
    """
    limit = min(scenario_max_s, policy_max_s, HARD_MAX_DURATION_S)
    if requested_s <= limit:
        return DurationCap(requested_s, None)
    names = []
    if limit == scenario_max_s:
        names.append("the scenario's max_duration_s")
    if limit == policy_max_s:
        names.append("the worker policy's chaos.max_duration_s")
    if limit == HARD_MAX_DURATION_S:
        names.append("the hard limit")
    return DurationCap(
        limit,
        f"duration_s {requested_s:g}s capped to {limit:g}s by {' and '.join(names)}",
    )


def targets_refused(blast_radius: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Blast-radius targets the policy does not allow (empty allowed list: all allowed)."""
    allowed_set = set(allowed)
    if not allowed_set:
        return []
    return [t for t in blast_radius if t not in allowed_set]


def policy_refusal(
    scenario: ChaosScenario, allowed_targets: Iterable[str], min_abort_below: float = 0.0
) -> str | None:
    """Why the worker policy refuses ``scenario``, or None when it may run.

    Args:
        scenario: The experiment asked for.
        allowed_targets: The policy's ``chaos.allowed_targets`` (empty: any target).
        min_abort_below: The policy's ``chaos.min_abort_below``: the health guard may not
            be switched off or set below it (compared exactly).
    """
    allowed = list(allowed_targets)
    refused = targets_refused(scenario.blast_radius, allowed)
    if refused:
        return (
            f"blast_radius: {', '.join(refused)} not in the worker policy's "
            f"chaos.allowed_targets ({', '.join(allowed)})"
        )
    if scenario.abort_below_health < min_abort_below:
        off = " (switches the health guard off)" if scenario.abort_below_health <= 0 else ""
        return (
            f"abort_below_health {scenario.abort_below_health:g}{off} is below the worker "
            f"policy's chaos.min_abort_below ({min_abort_below:g})"
        )
    return None


def approval_refusal(
    approved_by: Iterable[str], require_approval: bool, approvers: Iterable[str]
) -> str | None:
    """Why an injection must be refused for want of approval, or None.

    Args:
        approved_by: Approvers whose approval the workflow accepted.
        require_approval: The policy's ``chaos.require_approval``.
        approvers: The policy's approvers (empty: any named approver counts).
    """
    if not require_approval:
        return None
    allowed = set(approvers)
    valid = [a for a in approved_by if a.strip() and (not allowed or a in allowed)]
    if not valid:
        return (
            "the worker policy's chaos.require_approval is set and nobody approved this "
            "experiment (antifragile chaos approve ID --by NAME)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Preflight:
    """Which live processes of the fleet registry guard an experiment's blast radius.

    Attributes:
        guarding: Live instances whose health snapshot lists a blast-radius breaker.
        unknown: Live instances that publish no per-breaker snapshot: they may guard it.
        live: Every live instance of the registry.
        selected: Live instances the experiment's instance selection picks.
    """

    guarding: tuple[str, ...]
    unknown: tuple[str, ...]
    live: int
    selected: int | None = None

    @property
    def count(self) -> int:
        """Instances that will (or may) enforce the fault."""
        return len(self.guarding) + len(self.unknown)


def snapshot_breakers(snapshot: dict[str, object] | None) -> set[str] | None:
    """Breaker names a health snapshot lists (None: it lists none, or there is none)."""
    if not snapshot:
        return None
    for field in ("circuit_details", "breakers"):
        breakers = snapshot.get(field)
        if isinstance(breakers, dict):
            return {str(name) for name in breakers}
    return None


def preflight_guards(
    live: Iterable[str],
    snapshots: dict[str, dict[str, object] | None],
    blast_radius: Iterable[str],
    selected: set[str] | None = None,
) -> Preflight:
    """Split the live instances into those that guard ``blast_radius`` and the unknown.

    Args:
        live: Instances the fault plane saw recently (``af:chaos:instances``).
        snapshots: Each instance's health snapshot (``af:health:{instance}``), None if none.
        blast_radius: The experiment's targets.
        selected: Only these instances enforce the fault (None: every instance).
    """
    targets = set(blast_radius)
    guarding: list[str] = []
    unknown: list[str] = []
    instances = sorted(set(live))
    for instance in instances:
        if selected is not None and instance not in selected:
            continue
        names = snapshot_breakers(snapshots.get(instance))
        if names is None:
            unknown.append(instance)
        elif names & targets:
            guarding.append(instance)
    chosen = len(instances) if selected is None else len(set(instances) & selected)
    return Preflight(tuple(guarding), tuple(unknown), len(instances), chosen)


def unguarded_refusal(pre: Preflight, blast_radius: Iterable[str]) -> str | None:
    """The one-line refusal when no live process guards the blast radius, else None."""
    if pre.count > 0:
        return None
    where = ", ".join(blast_radius)
    seen = f"{pre.live} live process(es), none guarding it" if pre.live else "no live process"
    if pre.live and pre.selected is not None and pre.selected < pre.live:
        seen = f"{pre.live} live process(es), {pre.selected} selected, none of them guarding it"
    return (
        f"no live process guards {where} ({seen} in the fleet registry); check the target "
        "name, or pass --allow-unguarded (allow_unguarded: true) to inject anyway"
    )


def below_steady_state(baseline: float | None, score: float | None, healthy: bool) -> bool:
    """True when an observation shows health below the steady state before injection.

    ``baseline`` None means no score was measured before: a full 1.0 is assumed. An
    explicit unhealthy verdict counts as a drop; a missing score alone does not.
    """
    if not healthy:
        return True
    if score is None:
        return False
    return score < (1.0 if baseline is None else baseline)


def lease_renewal_interval_s(ttl_s: float) -> float:
    """Renew a lease every third of its TTL: two renewals may fail before it expires."""
    return ttl_s / 3.0


def health_check_interval_s(duration_s: float) -> float:
    """How often RUNNING polls fleet health: a few times per run, 1-5 s apart."""
    return max(1.0, min(5.0, duration_s / 4.0))


def health_trips_guard(score: float | None, healthy: bool, threshold: float) -> bool:
    """The health guard: True when this observation must abort the experiment.

    A score below ``threshold`` trips it. Without a score, an explicit unhealthy verdict
    trips it only when the threshold is above zero (a threshold of 0 disables the guard).
    """
    if threshold <= 0.0:
        return False
    if score is not None:
        return score < threshold
    return not healthy


def health_is_back(score: float | None, healthy: bool, threshold: float) -> bool:
    """VERIFYING_RECOVERY: health counts as back when the guard would not trip."""
    return not health_trips_guard(score, healthy, threshold)


def stable_fraction(*parts: str) -> float:
    """A stable number in [0, 1) derived from ``parts`` (same on every process)."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def instance_selected(
    instance_id: str,
    experiment_id: str,
    instances: Iterable[str] | None,
    fraction: float | None,
) -> bool:
    """Whether ``instance_id`` enforces an experiment's fault.

    An explicit instance list wins; else a fraction picks instances by a stable hash of
    experiment and instance (each process decides alone, and always the same way); with
    neither, every instance is selected.
    """
    if instances is not None:
        return instance_id in set(instances)
    if fraction is not None:
        return stable_fraction(experiment_id, instance_id) < fraction
    return True


def select_instances(known: Iterable[str], count: int, experiment_id: str) -> list[str]:
    """Choose ``count`` of the ``known`` instances, stably for the experiment.

    The order is a hash of experiment and instance, so a retried activity picks the same
    instances and different experiments spread over different ones.
    """
    ranked = sorted(set(known), key=lambda i: (stable_fraction(experiment_id, i), i))
    return sorted(ranked[:count])


def placement_words(instances: list[str] | None, fraction: float | None) -> str:
    """Human words for where a fault is enforced."""
    if instances is not None:
        return ", ".join(instances) if instances else "no instance"
    if fraction is not None:
        return f"{fraction:.0%} of instances"
    return "all instances"


def short_id(seed: str) -> str:
    """An 8-hex-digit id from ``seed`` (the workflow id suffix)."""
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


def instances_that_saw(
    calls_seen: Iterable[str], calls_affected: Iterable[str], breakers_opened: Iterable[str]
) -> int:
    """How many instances the fault reached: those that counted calls, or had a breaker opened.

    Both count because a forced-open breaker refuses calls before they are counted.

    ``breakers_opened`` entries read ``instance/target: STATE``.
    """
    names = set(calls_seen) | set(calls_affected)
    names |= {entry.split("/", 1)[0] for entry in breakers_opened if "/" in entry}
    return len(names)


def guardian_check_every_s(ttl_s: float) -> float:
    """How often the guardian checks that its experiment runs, in seconds.

    Half the lease TTL, at least every second.
    """
    return max(1.0, ttl_s / 2)


def guardian_give_up_after_s(duration_s: float, recovery_timeout_s: float, ttl_s: float) -> float:
    """When the guardian removes the lease whatever it sees, in seconds.

    The longest legitimate life of an experiment: run + verification + cleanup retries +
    60 s slack.
    """
    return duration_s + recovery_timeout_s + 4 * ttl_s + 60


def missing_lease_reason(sent: datetime, earliest_expiry: datetime | None) -> str:
    """Why the run stops when a renewal finds no lease.

    A renewal sent after the lease could already have run out (no worker, or no Temporal
    server, for that long) says so; otherwise the lease was removed from outside.
    """
    if earliest_expiry is not None and sent >= earliest_expiry:
        late = (sent - earliest_expiry).total_seconds()
        return (
            f"fault lease expired before it was renewed ({late:.1f}s late: "
            "no worker or Temporal server in time)"
        )
    return "fault lease removed from outside the experiment"


def cleanup_record(
    journal: ChaosJournal,
    *,
    removed: bool,
    method: str,
    detail: str,
    confirmed: bool | None,
    now: datetime,
) -> CleanupRecord:
    """What a cleanup that wrote off a (possible) lease at ``now`` did.

    Args:
        journal: The experiment (lease expiry, injection, whether its ending is shielded).
        removed: The removal deleted a lease.
        method: ``removed``, ``already_gone`` or ``expired`` (Redis unreachable).
        detail: Errors met on the way.
        confirmed: The fault plane confirmed no lease is left (None: not asked).
        now: Workflow time the cleanup finished.

    Returns:
        The record; a lease gone by itself ended no later than its expiry, and a failed
        injection that wrote nothing is ``injection_failed`` (shielded endings).
    """
    ended = now
    if method in ("expired", "already_gone") and journal.lease_until is not None:
        ended = min(now, journal.lease_until)  # gone by itself: no later than its expiry
    if journal.shielded_ending and journal.injection_failed and not removed:
        # The injection failed before writing anything: there was no fault to remove.
        method, ended = "injection_failed", now
        # The reason is the report's already: do not repeat it here.
        detail = detail or "nothing to remove: the injection wrote no lease"
    return CleanupRecord(
        attempted=True,
        lease_removed=removed,
        method=method,
        at=now,
        detail=detail,
        confirmed=confirmed,
        fault_ended_at=ended if journal.injected_at is not None else None,
    )


def measured_sample(
    health: HealthMeasurement, probe: tuple[bool, str] | None, probe_url: str | None, now: datetime
) -> HealthSample | None:
    """One sample from fleet health and, when the scenario has one, its steady-state probe.

    ``probe``: healthy and what it said. None when neither gave anything.
    """
    healthy = True
    details = [health.detail] if health.score is not None else []
    if probe is not None:
        healthy, text = probe
        details.append(f"probe {probe_url}: {text}")
    elif health.score is None:
        return None
    return HealthSample(
        at=now,
        score=health.score,
        targets_score=health.targets_score,
        healthy=healthy,
        source="fleet" if probe is None else "fleet+probe",
        detail="; ".join(details),
    )


def sample_health(sample: HealthSample) -> float | None:
    """The score a sample stands for: the targets' own breakers' if present, else the process's.

    A recovery means the targets', not only the process around them.
    """
    return sample.targets_score if sample.targets_score is not None else sample.score


@dataclass(frozen=True, slots=True)
class RecoveryCheck:
    """One health check after the fault's removal.

    Attributes:
        recovered: True: health is back; False: not back by the recovery timeout; None:
            not decided yet, check again.
        time_to_recover_s: Seconds from removal until back, when health had dropped.
        note: The journal line (decided checks only).
        warning: A warning for the report ("" if none).
    """

    recovered: bool | None
    time_to_recover_s: float | None = None
    note: str = ""
    warning: str = ""


def check_recovery(journal: ChaosJournal, sample: HealthSample, now: datetime) -> RecoveryCheck:
    """Judge one sample taken after removal (``journal.removed_at`` must be set)."""
    s, removed_at = journal.scenario, journal.removed_at
    assert removed_at is not None
    if health_is_back(sample_health(sample), sample.healthy, s.abort_below_health):
        if not journal.health_dropped:
            return RecoveryCheck(
                True, note="health never dropped below its steady state: nothing to recover"
            )
        took = round((now - removed_at).total_seconds(), 3)
        return RecoveryCheck(True, took, f"health back after {took:g}s")
    if now >= removed_at + timedelta(seconds=s.recovery_timeout_s):
        return RecoveryCheck(
            False,
            note="health not back before the recovery timeout",
            warning=f"health not back within recovery_timeout_s={s.recovery_timeout_s:g}",
        )
    return RecoveryCheck(None)


def signalled_sample(signal: HealthChangedSignal, now: datetime) -> HealthSample:
    """The sample a ``health_changed`` signal from a process carries."""
    verdict = signal.status or ("healthy" if signal.healthy else "unhealthy")
    score = f" score {signal.score:.2f}" if signal.score is not None else ""
    return HealthSample(
        at=now,
        score=signal.score,
        healthy=signal.healthy,
        source=f"signal:{signal.source}" if signal.source else "signal",
        detail=f"{signal.service} {verdict}{score}",
    )


def accepts_decisions(journal: ChaosJournal) -> bool:
    """An approve/reject arriving now is kept for the approval phase.

    While validating, the worker policy may still require approval, so a decision is kept
    until validation says otherwise; in AWAITING_APPROVAL it is decided.
    """
    if journal.phase is ChaosPhase.AWAITING_APPROVAL:
        return True
    return journal.phase is ChaosPhase.VALIDATING and (
        journal.scenario.require_approval or not journal.validated
    )
