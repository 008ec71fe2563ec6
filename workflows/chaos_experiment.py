"""ChaosExperimentWorkflow: one chaos experiment, durable from validation to report.

VALIDATING → AWAITING_APPROVAL (if required) → STEADY_STATE_BEFORE → INJECTING →
RUNNING (durable timer, lease renewed every third of its TTL) → CLEANING_UP →
VERIFYING_RECOVERY → COMPLETED | ABORTED (health guard) | STOPPED (emergency stop,
halt switch, cancellation) | FAILED (validation, hash, rejection, failed activity).

Cleanup is not an afterthought of the happy path: ``run`` catches every way the
experiment can end early (an ``_End``, a cancellation from the CLI or UI, a failed
activity), then always runs ``_cleanup`` — an idempotent ``remove_fault`` that, if Redis
stays unreachable, waits out the lease TTL so "cleaned up" is true either way. A
terminated workflow runs no code at all: then ChaosGuardianWorkflow, a child started
before injection with ParentClosePolicy.ABANDON, sees the experiment gone and removes
the lease; and if the workers are gone too, the lease TTL removes the fault from every
process by itself. The report is built from the journal kept all along, so it is
complete for every outcome.

Once the experiment is ending (patch ``chaos-shielded-ending``), cleanup, recovery
verification, impact and report run in a task of their own: a cancel (or a second one)
reaches only the workflow's main task, which notes it and keeps waiting, so nothing cuts
the ending short. A removal Redis cannot confirm is waited out (lease TTL) and then asked
again until Redis answers or ``CONFIRM_WINDOW_S`` passes; a health measurement that fails
while verifying recovery is noted and retried until ``recovery_timeout_s``, never fatal.

A cancel that lands while an activity runs is spent on that activity by the SDK (patch
``chaos-cancel-in-activity``): the run checks ``workflow.cancellation_reason()`` at every
stop check and treats an activity cancelled by it as the cancel, so it ends STOPPED
instead of running on or ending FAILED. A start input whose ``experiment_id`` is not the
workflow id is refused, and a Temporal failure that is not an activity's (the guardian's
start, patch ``chaos-other-failures``) ends with cleanup and a report like any other.

Approvals: a decision that arrives before AWAITING_APPROVAL is kept (validation may find
that the policy requires approval) and decided there; if nothing requires approval it is
recorded ignored. The first accepted decision counts; any queued behind it is recorded
ignored at once; later ones are ignored with the phase they arrived in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.chaos.logic import (
        below_steady_state,
        check_phase_transition,
        health_check_interval_s,
        health_is_back,
        health_trips_guard,
        instances_that_saw,
        lease_renewal_interval_s,
    )
    from antifragile.constants import (
        KIND_CHAOS,
        SA_CHAOS_TYPE,
        SA_KIND,
        SA_SERVICE,
        SA_STATE,
        SIGNAL_APPROVE,
        SIGNAL_EMERGENCY_STOP,
        SIGNAL_HEALTH_CHANGED,
        SIGNAL_REJECT,
        SIGNAL_STAND_DOWN,
    )
    from antifragile.models.chaos import (
        ChaosEvent,
        ChaosExperimentInput,
        ChaosOutcome,
        ChaosPhase,
        ChaosReport,
        ChaosStatus,
        CheckHaltInput,
        CleanupRecord,
        CollectImpactInput,
        EmergencyStopSignal,
        ExperimentImpact,
        FaultPlacement,
        GuardianInput,
        GuardianResult,
        HaltStatus,
        HealthMeasurement,
        HealthSample,
        InjectFaultInput,
        InjectFaultResult,
        MeasureHealthInput,
        PhaseRecord,
        RemoveFaultInput,
        RemoveFaultResult,
        RenewLeaseInput,
        RenewLeaseResult,
        ValidateScenarioInput,
        ValidateScenarioResult,
    )
    from antifragile.models.common import (
        ApprovalRecord,
        ApprovalSignal,
        Decision,
        HealthChangedSignal,
    )
    from antifragile.models.recovery import (
        ProbeInput,
        ProbeResult,
        ValidateHashInput,
        ValidateHashResult,
    )

from workflows._approval import ApprovalGate

SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
PLANE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=5,
)
ACTIVITY_TIMEOUT = timedelta(seconds=10)
PROBE_TIMEOUT_S = 5.0
MAX_HEALTH_SAMPLES = 300
MAX_EVENTS = 300
VERIFY_INTERVAL_S = 1.0
FLUSH_GRACE_S = 1.0
"""Call sites publish their counters every 0.5 s: wait this long after removal."""
CONFIRM_WINDOW_S = 120.0
"""After an unconfirmed removal and the lease TTL, keep asking Redis this long."""
CANCEL_IN_ACTIVITY = "chaos-cancel-in-activity"
"""Patch: a cancel that lands while an activity runs ends the experiment STOPPED. The SDK
spends such a cancel on the activity: one that completes anyway (inject, renew) returned
normally and the run went on for its full duration; one cancelled (TRY_CANCEL) raised an
``ActivityError`` and the run ended FAILED or, from the probe, ABORTED."""
OTHER_FAILURES = "chaos-other-failures"
"""Patch: a Temporal failure that is not an activity's (the guardian child's start) ends
the experiment with cleanup and a report instead of failing the workflow."""
SHIELDED_ENDING = "chaos-shielded-ending"
"""Patch: the ending (cleanup, verification, report) runs in a task no cancel reaches,
removal is confirmed, and a failing measurement no longer fails the workflow."""


class _End(Exception):
    """Internal: the experiment ends early with this outcome."""

    def __init__(self, outcome: ChaosOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@workflow.defn
class ChaosExperimentWorkflow:
    """One chaos experiment (workflow id ``chaos-{name}-{short id}``)."""

    @workflow.init
    def __init__(self, data: ChaosExperimentInput) -> None:
        if not data.experiment_id:  # scheduled runs: the schedule names the workflow
            data = data.model_copy(update={"experiment_id": workflow.info().workflow_id})
        self._in = data
        self._s = data.scenario
        self._phase = ChaosPhase.VALIDATING
        self._started_at: datetime = workflow.now()
        self._phases: list[PhaseRecord] = [
            PhaseRecord(phase=ChaosPhase.VALIDATING, entered_at=self._started_at)
        ]
        self._events: list[ChaosEvent] = []
        self._health: list[HealthSample] = []
        self._lowest: float | None = None
        self._last: float | None = None
        self._warnings: list[str] = []
        self._gate = ApprovalGate(
            decisions=[],
            used_signatures=[],
            retry_policy=SHORT_RETRY,
            timeout=ACTIVITY_TIMEOUT,
            on_record=self._noted_decision,
        )
        self._stop: EmergencyStopSignal | None = None
        self._trip: str | None = None
        self._wake = False
        self._duration_s = self._s.duration_s
        self._ttl_s = 15.0
        self._injected_at: datetime | None = None
        self._ends_at: datetime | None = None
        self._removed_at: datetime | None = None
        self._lease_until: datetime | None = None
        # The earliest the lease can expire: its last write was *sent* no earlier than
        # this minus the TTL (``_lease_until`` counts from when the result was seen).
        self._lease_expires_earliest: datetime | None = None
        self._lease_maybe_written = False
        self._guardian_started = False
        self._placement: FaultPlacement | None = None
        self._cleanup_record = CleanupRecord()
        self._impact = ExperimentImpact()
        self._time_to_recover: float | None = None
        self._recovered: bool | None = None
        self._outcome: ChaosOutcome | None = None
        self._reason = ""
        self._shielded_ending = False
        self._policy_approval = False
        self._validated = False
        self._baseline: float | None = None
        self._dropped: bool | None = None
        self._injection_failed = ""
        self._instances_guarding: int | None = None
        self._impact_collected = False

    # --- run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, data: ChaosExperimentInput) -> ChaosReport:
        """Run the experiment; always returns a complete report (see module doc)."""
        self._note(f"experiment {self._s.name}: {self._s.chaos_type.value} on {self._s.target}")
        self._publish()
        outcome, reason = ChaosOutcome.COMPLETED, "ran for the full duration"
        try:
            self._check_experiment_id()
            await self._validate()
            if self._needs_approval():
                await self._await_approval()
            else:
                self._ignore_early_decisions()
            await self._steady_state_before()
            await self._inject()
            await self._running()
        except _End as end:
            outcome, reason = end.outcome, end.reason
        except asyncio.CancelledError:
            outcome, reason = self._cancelled_outcome()
        except ActivityError as err:
            if self._cancelled_activity(err):
                outcome, reason = self._cancelled_outcome()
            else:
                outcome, reason = ChaosOutcome.FAILED, f"activity failed: {_cause(err)}"
                self._note(reason)
        except FailureError as err:
            # Not an activity: the guardian child could not start (its id is taken), or
            # its start was cancelled. Before this patch the workflow failed (or ended
            # CANCELED) with no cleanup and no report.
            if not workflow.patched(OTHER_FAILURES):
                raise
            if is_cancelled_exception(err):
                outcome, reason = self._cancelled_outcome()
            else:
                outcome, reason = ChaosOutcome.FAILED, f"{type(err).__name__}: {err}"
                self._note(reason)
        # Every path reaches this point: nothing above returns or re-raises.
        if workflow.patched(SHIELDED_ENDING):
            self._shielded_ending = True
            return await self._shielded(self._end(outcome, reason))
        await self._cleanup()
        await self._dismiss_guardian()
        if self._lease_maybe_written:
            try:
                await self._verify_recovery(outcome)
                await self._collect_impact()
            except asyncio.CancelledError:
                # The fault is already gone: a cancel now only cuts the measuring short.
                self._note("cancelled while verifying recovery; report without it")
                if outcome is ChaosOutcome.COMPLETED:
                    outcome, reason = ChaosOutcome.STOPPED, "cancelled while verifying recovery"
        return await self._finish(outcome, reason)

    def _cancelled_outcome(self) -> tuple[ChaosOutcome, str]:
        why = workflow.cancellation_reason()
        outcome, reason = ChaosOutcome.STOPPED, f"cancelled{': ' + why if why else ''}"
        if self._stop is not None:  # the stop came first: it is why the run ends
            by = f" by {self._stop.by}" if self._stop.by else ""
            reason = f"emergency stop{by}: {self._stop.reason} (then {reason})"
        self._note(f"cancellation received; cleaning up ({reason})")
        return outcome, reason

    def _cancelled_activity(self, err: ActivityError) -> bool:
        """The activity failed because the workflow was cancelled (patched behaviour)."""
        return (
            is_cancelled_exception(err)
            and workflow.cancellation_reason() is not None
            and workflow.patched(CANCEL_IN_ACTIVITY)
        )

    def _check_cancel(self) -> None:
        """Raise the cancel an activity spent (see ``CANCEL_IN_ACTIVITY``)."""
        if workflow.cancellation_reason() is not None and workflow.patched(CANCEL_IN_ACTIVITY):
            raise asyncio.CancelledError()

    async def _shielded(self, ending: Coroutine[Any, Any, ChaosReport]) -> ChaosReport:
        """Run the ending in its own task: a cancel reaches only the workflow's main task
        (this one), so cleanup and the report always run to the end."""
        task = asyncio.create_task(ending)
        while not task.done():
            try:
                await workflow.wait([task])
            except asyncio.CancelledError:
                why = workflow.cancellation_reason()
                self._note(
                    "cancellation received while ending"
                    + (f" ({why})" if why else "")
                    + ": cleanup and report go on"
                )
        return task.result()

    async def _end(self, outcome: ChaosOutcome, reason: str) -> ChaosReport:
        """Cleanup, recovery verification, impact and report (shielded ending)."""
        await self._cleanup()
        await self._dismiss_guardian()
        if self._lease_maybe_written and self._cleanup_record.method != "injection_failed":
            await self._verify_recovery(outcome)
            await self._collect_impact()
        return await self._finish(outcome, reason)

    # --- phases ----------------------------------------------------------------------

    async def _validate(self) -> None:
        s = self._s
        try:
            await workflow.execute_activity(
                "validate_constitutional_hash",
                ValidateHashInput(
                    constitutional_hash=s.constitutional_hash, context=f"chaos {s.name}"
                ),
                result_type=ValidateHashResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary="validate constitutional hash",
            )
            checked = await workflow.execute_activity(
                "validate_chaos_scenario",
                ValidateScenarioInput(scenario=s),
                result_type=ValidateScenarioResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary="check policy and caps",
            )
        except ActivityError as err:
            if self._cancelled_activity(err):
                raise asyncio.CancelledError() from None
            raise _End(ChaosOutcome.FAILED, _cause(err)) from None
        self._duration_s = checked.effective_duration_s
        self._ttl_s = checked.lease_ttl_s
        self._policy_approval = checked.require_approval
        self._validated = True
        if checked.require_approval and not s.require_approval:
            self._note("the worker policy requires approval (chaos.require_approval)")
        for warning in checked.warnings:
            self._warnings.append(warning)
            self._note(f"warning: {warning}")
        self._note(
            f"validated: {self._duration_s:g}s on {', '.join(s.blast_radius)}, "
            f"lease TTL {self._ttl_s:g}s"
        )

    def _check_experiment_id(self) -> None:
        """The lease key, the guardian's id and the conflict check all follow
        ``experiment_id``: one that is not this workflow's id (a hand-crafted start) would
        take over another experiment's fault, and remove it at its end."""
        wid = workflow.info().workflow_id
        if self._in.experiment_id != wid:
            raise _End(
                ChaosOutcome.FAILED,
                f"experiment_id {self._in.experiment_id!r} is not this workflow's id "
                f"{wid!r}: leave it empty or equal to the workflow id",
            )

    def _needs_approval(self) -> bool:
        return self._s.require_approval or self._policy_approval

    def _ignore_early_decisions(self, why: str = "this experiment needs no approval") -> None:
        self._gate.ignore_waiting(why)

    async def _await_approval(self) -> None:
        self._move(ChaosPhase.AWAITING_APPROVAL)
        self._note("waiting for approve/reject")
        info = workflow.info()
        while True:
            await workflow.wait_condition(lambda: self._gate.waiting or self._stop is not None)
            self._check_stop()
            decided = await self._gate.authorize_next(info.first_execution_run_id or info.run_id)
            if decided is None:
                continue
            decision, signal = decided
            # Decisions queued behind this one no longer decide anything: say so now,
            # not at the end ("before any approval counted" would be untrue).
            self._ignore_early_decisions(f"already {decision.value} by {signal.approver}")
            if decision is Decision.REJECTED:
                note = f": {signal.note}" if signal.note else ""
                raise _End(ChaosOutcome.FAILED, f"rejected by {signal.approver}{note}")
            return

    async def _steady_state_before(self) -> None:
        self._move(ChaosPhase.STEADY_STATE_BEFORE)
        self._check_stop()
        halt = await workflow.execute_activity(
            "check_halt_switch",
            CheckHaltInput(context=self._in.experiment_id),
            result_type=HaltStatus,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=PLANE_RETRY,
            summary="check halt switch",
        )
        if halt.halted:
            raise _End(ChaosOutcome.STOPPED, f"halt switch set: {halt.reason or 'no reason'}")
        sample = await self._measure("steady state before injection")
        if sample is not None:
            self._baseline = (
                sample.targets_score if sample.targets_score is not None else sample.score
            )
        if sample is not None and health_trips_guard(
            sample.score, sample.healthy, self._s.abort_below_health
        ):
            raise _End(
                ChaosOutcome.ABORTED,
                f"steady state not met before injection: {sample.detail}",
            )
        self._check_stop()

    async def _inject(self) -> None:
        self._move(ChaosPhase.INJECTING)
        self._check_stop()
        s = self._s
        if not s.dry_run:
            await self._start_guardian()  # a failed start: no lease, nothing to clean
            self._check_cancel()  # a cancel the child's start spent: inject nothing
        # From here the lease may exist even if the activity fails: cleanup must run.
        self._lease_maybe_written = not s.dry_run
        sent = workflow.now()
        try:
            result = await workflow.execute_activity(
                "inject_fault",
                InjectFaultInput(
                    experiment_id=self._in.experiment_id,
                    scenario=s,
                    ttl_s=self._ttl_s,
                    approved_by=[
                        d.approver for d in self._gate.decisions if d.decision is Decision.APPROVED
                    ],
                ),
                result_type=InjectFaultResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=PLANE_RETRY,
                # A cancelled injection must finish before cleanup runs, or the lease
                # could be written after it was removed.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"inject {s.chaos_type.value} on {', '.join(s.blast_radius)}",
            )
        except ActivityError as err:
            self._lease_until = workflow.now() + timedelta(seconds=self._ttl_s)
            if self._cancelled_activity(err):
                raise asyncio.CancelledError() from None
            self._injection_failed = _cause(err)
            raise _End(ChaosOutcome.FAILED, f"injection failed: {_cause(err)}") from None
        now = workflow.now()
        self._instances_guarding = result.instances_guarding
        if result.warning:  # a dry run the preflight would have refused
            self._warnings.append(result.warning)
            self._note(f"warning: {result.warning}")
        if result.halted:
            self._lease_maybe_written = False
            raise _End(ChaosOutcome.STOPPED, result.detail or "halt switch set")
        self._injected_at = now
        self._ends_at = now + timedelta(seconds=self._duration_s)
        self._placement = result.placement
        if result.injected:
            self._lease_until = now + timedelta(seconds=self._ttl_s)
            self._lease_expires_earliest = sent + timedelta(seconds=self._ttl_s)
            guards = (
                f"; {result.instances_guarding} live instance(s) guard it"
                if result.instances_guarding is not None
                else ""
            )
            self._note(f"fault injected on {', '.join(s.blast_radius)} ({result.detail}{guards})")
        else:
            self._note(result.detail or "nothing injected")

    async def _start_guardian(self) -> None:
        """A child that survives termination of this workflow and then removes the lease."""
        eid = self._in.experiment_id
        ttl = self._ttl_s
        await workflow.start_child_workflow(
            "ChaosGuardianWorkflow",
            GuardianInput(
                experiment_id=eid,
                check_every_s=max(1.0, ttl / 2),
                # Longest legitimate life: run + verification + cleanup retries + slack.
                give_up_after_s=self._duration_s + self._s.recovery_timeout_s + 4 * ttl + 60,
            ),
            id=f"{eid}-guardian",
            result_type=GuardianResult,
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"Guardian of {eid}: removes its fault lease if it dies",
        )
        self._guardian_started = True

    async def _dismiss_guardian(self) -> None:
        if not self._guardian_started:
            return
        try:
            await workflow.get_external_workflow_handle(
                f"{self._in.experiment_id}-guardian"
            ).signal(SIGNAL_STAND_DOWN)
        except Exception as exc:  # gone already: it then removed the lease (idempotent)
            self._note(f"guardian not reached: {exc}")

    async def _running(self) -> None:
        self._move(ChaosPhase.RUNNING)
        assert self._ends_at is not None
        end = self._ends_at
        now = workflow.now()
        renew_every = timedelta(seconds=lease_renewal_interval_s(self._ttl_s))
        health_every = timedelta(seconds=health_check_interval_s(self._duration_s))
        next_renew, next_health = now + renew_every, now + health_every
        while True:
            self._check_stop()
            self._check_trip()
            now = workflow.now()
            if now >= end:
                self._note("duration elapsed")
                return
            wake = min(end, next_renew, next_health)
            try:
                await workflow.wait_condition(
                    lambda: self._stop is not None or self._trip is not None,
                    timeout=max(wake - now, timedelta(milliseconds=1)),
                    timeout_summary="experiment timer",
                )
                continue  # a stop or a trip: the checks at the top end the run
            except TimeoutError:
                pass
            now = workflow.now()
            if now >= end:
                continue
            if now >= next_renew:
                if self._lease_maybe_written:
                    await self._renew()
                next_renew = workflow.now() + renew_every
            if now >= next_health:
                sample = await self._measure("while running")
                if sample is not None and health_trips_guard(
                    sample.score, sample.healthy, self._s.abort_below_health
                ):
                    self._trip = f"health guard: {sample.detail}"
                next_health = workflow.now() + health_every

    async def _renew(self) -> None:
        s = self._s
        sent = workflow.now()
        try:
            result = await workflow.execute_activity(
                "renew_fault_lease",
                RenewLeaseInput(
                    experiment_id=self._in.experiment_id,
                    ttl_s=self._ttl_s,
                    constitutional_hash=s.constitutional_hash,
                    require_hash_validation=s.require_hash_validation,
                ),
                result_type=RenewLeaseResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                # Retries must end before the lease would: past that there is nothing to renew.
                schedule_to_close_timeout=timedelta(seconds=max(1.0, self._ttl_s * 2 / 3)),
                retry_policy=PLANE_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary="renew fault lease",
            )
        except ActivityError as err:
            if self._cancelled_activity(err):
                raise asyncio.CancelledError() from None
            raise _End(ChaosOutcome.FAILED, f"lease renewal failed: {_cause(err)}") from None
        if result.halted:
            raise _End(ChaosOutcome.STOPPED, "halt switch set")
        if result.missing:
            earliest = self._lease_expires_earliest
            if earliest is not None and sent >= earliest:
                # The renewal was sent after the lease could already have run out (no
                # worker, or no Temporal server, for that long): say so, not "removed".
                late = (sent - earliest).total_seconds()
                raise _End(
                    ChaosOutcome.STOPPED,
                    f"fault lease expired before it was renewed ({late:.1f}s late: "
                    "no worker or Temporal server in time)",
                )
            raise _End(ChaosOutcome.STOPPED, "fault lease removed from outside the experiment")
        self._lease_until = workflow.now() + timedelta(seconds=self._ttl_s)
        self._lease_expires_earliest = sent + timedelta(seconds=self._ttl_s)

    async def _cleanup(self) -> None:
        """Remove the fault: idempotent, and complete even when Redis is unreachable."""
        if self._phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING):
            self._move(ChaosPhase.CLEANING_UP)  # dry runs too: no path skips the phase
        if not self._lease_maybe_written:
            self._cleanup_record = CleanupRecord(
                attempted=True, method="nothing_injected", at=workflow.now()
            )
            self._placement = None
            return
        detail = ""
        confirmed: bool | None = None
        try:
            result = await self._remove_fault(max(5.0, self._ttl_s), "remove fault lease")
            method = "removed" if result.removed else "already_gone"
            removed = result.removed
            confirmed = True if self._shielded_ending else None
        except ActivityError as err:
            # Redis unreachable: the lease cannot outlive its TTL, and every process
            # drops the fault by itself then. Wait it out, so "cleaned up" is true.
            detail = f"remove_fault failed ({_cause(err)}); waited for the lease TTL"
            remaining = (self._lease_until or workflow.now()) - workflow.now()
            if remaining > timedelta(0):
                await workflow.sleep(remaining, summary="wait for the lease TTL")
            method, removed = "expired", False
            if self._shielded_ending:
                confirmed, note = await self._confirm_removal()
                detail += f"; {note}"
        now = workflow.now()
        self._removed_at = now
        self._placement = None
        ended = now
        if method in ("expired", "already_gone") and self._lease_until is not None:
            # Gone by itself: no later than its lease's expiry.
            ended = min(now, self._lease_until)
        if self._shielded_ending and self._injection_failed and not removed:
            # The injection failed before writing anything: there was no fault to remove.
            method, ended = "injection_failed", now
            # The reason is the report's already: do not repeat it here.
            detail = detail or "nothing to remove: the injection wrote no lease"
        self._cleanup_record = CleanupRecord(
            attempted=True,
            lease_removed=removed,
            method=method,
            at=self._removed_at,
            detail=detail,
            confirmed=confirmed,
            fault_ended_at=ended if self._injected_at is not None else None,
        )
        self._note(f"cleanup done: {method}" + (f" — {detail}" if detail else ""))

    async def _remove_fault(self, within_s: float, summary: str) -> RemoveFaultResult:
        result: RemoveFaultResult = await workflow.execute_activity(
            "remove_fault",
            RemoveFaultInput(experiment_id=self._in.experiment_id),
            result_type=RemoveFaultResult,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            schedule_to_close_timeout=timedelta(seconds=within_s),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=200),
                maximum_interval=timedelta(seconds=2),
            ),
            summary=summary,
        )
        return result

    async def _confirm_removal(self) -> tuple[bool, str]:
        """After the TTL: ask Redis again until it answers that no lease is left."""
        try:
            result = await self._remove_fault(CONFIRM_WINDOW_S, "confirm the lease is gone")
        except ActivityError as err:
            return False, (
                f"not confirmed: Redis unreachable for {CONFIRM_WINDOW_S:g}s more "
                f"({_cause(err)}); the lease TTL bounds the fault"
            )
        if result.removed:  # cannot outlive its TTL; say so if Redis ever disagrees
            return True, "confirmed late: a lease was still there and is now removed"
        return True, "confirmed: no lease left"

    async def _verify_recovery(self, outcome: ChaosOutcome) -> None:
        self._move(ChaosPhase.VERIFYING_RECOVERY)
        assert self._removed_at is not None
        deadline = self._removed_at + timedelta(seconds=self._s.recovery_timeout_s)
        failure = ""
        while True:
            try:
                sample = await self._measure("after removal")
            except ActivityError as err:
                if not self._shielded_ending:
                    raise
                # Redis unreachable (often the same outage that broke a renewal): the
                # fault is gone either way; keep trying until the recovery deadline.
                sample, first = None, not failure
                failure = _cause(err)
                if first:
                    self._note(f"health not measured: {failure}")
                if workflow.now() >= deadline:
                    self._warnings.append(f"recovery not verified: health not measured ({failure})")
                    break
                await workflow.sleep(
                    timedelta(seconds=VERIFY_INTERVAL_S), summary="wait before measuring again"
                )
                continue
            now = workflow.now()
            if sample is None:
                self._note("no health source: recovery not measured")
                break
            # Back means the targets' own breakers, not only the process around them.
            back = sample.targets_score if sample.targets_score is not None else sample.score
            if health_is_back(back, sample.healthy, self._s.abort_below_health):
                self._recovered = True
                if self._dropped:
                    self._time_to_recover = round((now - self._removed_at).total_seconds(), 3)
                    self._note(f"health back after {self._time_to_recover:g}s")
                else:
                    self._note("health never dropped below its steady state: nothing to recover")
                break
            if now >= deadline:
                self._recovered = False
                self._warnings.append(
                    f"health not back within recovery_timeout_s={self._s.recovery_timeout_s:g}"
                )
                self._note("health not back before the recovery timeout")
                break
            self._wake = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=timedelta(seconds=VERIFY_INTERVAL_S),
                    timeout_summary="wait before the next health check",
                )

    async def _collect_impact(self) -> None:
        assert self._removed_at is not None
        elapsed = workflow.now() - self._removed_at
        if elapsed < timedelta(seconds=FLUSH_GRACE_S):
            await workflow.sleep(
                timedelta(seconds=FLUSH_GRACE_S) - elapsed, summary="let counters flush"
            )
        try:
            self._impact = await workflow.execute_activity(
                "collect_experiment_impact",
                CollectImpactInput(
                    experiment_id=self._in.experiment_id,
                    blast_radius=list(self._s.blast_radius),
                    since=self._started_at,
                ),
                result_type=ExperimentImpact,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=SHORT_RETRY,
                summary="collect impact",
            )
            self._impact_collected = True
        except ActivityError as err:
            self._warnings.append(f"impact not collected: {_cause(err)}")

    async def _measure(self, when: str) -> HealthSample | None:
        """Fleet health (Redis snapshots) and the steady-state probe, as one sample."""
        s = self._s
        health = await workflow.execute_activity(
            "measure_health",
            MeasureHealthInput(targets=list(s.blast_radius)),
            result_type=HealthMeasurement,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=SHORT_RETRY,
            summary=f"measure health {when}",
        )
        healthy = True
        details = [health.detail] if health.score is not None else []
        if s.steady_state_probe:
            try:
                probe = await workflow.execute_activity(
                    "probe_service",
                    ProbeInput(
                        service=s.target, url=s.steady_state_probe, timeout_s=PROBE_TIMEOUT_S
                    ),
                    result_type=ProbeResult,
                    start_to_close_timeout=timedelta(seconds=PROBE_TIMEOUT_S + 10),
                    retry_policy=SHORT_RETRY,
                    summary=f"probe {s.steady_state_probe} {when}",
                )
                healthy, text = probe.healthy, probe.detail
            except ActivityError as err:
                if self._cancelled_activity(err):
                    raise asyncio.CancelledError() from None
                healthy, text = False, _cause(err)
            details.append(f"probe {s.steady_state_probe}: {text}")
        elif health.score is None:
            return None
        sample = HealthSample(
            at=workflow.now(),
            score=health.score,
            targets_score=health.targets_score,
            healthy=healthy,
            source="fleet" if not s.steady_state_probe else "fleet+probe",
            detail="; ".join(details),
        )
        self._add_sample(sample)
        return sample

    async def _finish(self, outcome: ChaosOutcome, reason: str) -> ChaosReport:
        self._ignore_early_decisions("the experiment ended before any approval counted")
        self._outcome, self._reason = outcome, reason
        self._move(ChaosPhase(outcome.value))
        self._note(f"{outcome.value}: {reason}")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.report()

    # --- bookkeeping -----------------------------------------------------------------

    def _check_stop(self) -> None:
        self._check_cancel()
        if self._stop is not None:
            by = f" by {self._stop.by}" if self._stop.by else ""
            raise _End(ChaosOutcome.STOPPED, f"emergency stop{by}: {self._stop.reason}")

    def _check_trip(self) -> None:
        if self._trip is not None:
            raise _End(ChaosOutcome.ABORTED, self._trip)

    def _move(self, new: ChaosPhase) -> None:
        if new is self._phase:
            return
        self._phase = check_phase_transition(self._phase, new)
        now = workflow.now()
        self._phases[-1].left_at = now
        self._phases.append(PhaseRecord(phase=new, entered_at=now))
        self._publish()

    def _note(self, message: str) -> None:
        self._events.append(ChaosEvent(at=workflow.now(), phase=self._phase, message=message))
        del self._events[:-MAX_EVENTS]
        workflow.logger.info("chaos %s: %s", self._in.experiment_id, message)

    def _add_sample(self, sample: HealthSample) -> None:
        self._health.append(sample)
        del self._health[:-MAX_HEALTH_SAMPLES]
        if self._injected_at is not None and not self._s.dry_run:
            value = sample.targets_score if sample.targets_score is not None else sample.score
            dropped = below_steady_state(self._baseline, value, sample.healthy)
            self._dropped = bool(self._dropped) or dropped
        if sample.score is not None:
            self._last = sample.score
            self._lowest = sample.score if self._lowest is None else min(self._lowest, sample.score)

    def _noted_decision(self, record: ApprovalRecord) -> None:
        reason = f" ({record.reason})" if record.reason else ""
        self._note(f"{record.decision.value} by {record.approver}{reason}")

    def _publish(self) -> None:
        """Keep the UI's search attributes and current details in step with the phase."""
        s = self._s
        workflow.upsert_search_attributes(
            [
                SA_KIND.value_set(KIND_CHAOS),
                SA_SERVICE.value_set(s.target),
                SA_CHAOS_TYPE.value_set(s.chaos_type.value),
                SA_STATE.value_set(self._phase.value),
            ]
        )
        lines = [
            f"**{self._phase.value}** — {s.chaos_type.value} on {', '.join(s.blast_radius)} "
            f"({s.parameters_description()}; {s.instances_description})",
            f"Duration: {self._duration_s:g}s" + (" (dry run)" if s.dry_run else ""),
        ]
        if self._ends_at is not None and not self._phase.terminal:
            lines.append(f"Fault ends at: {self._ends_at:%H:%M:%S} UTC")
        if self._lowest is not None:
            lines.append(
                f"Lowest health: {self._lowest:.2f} (abort below {s.abort_below_health:g})"
            )
        if self._warnings:
            lines.append("Warnings: " + "; ".join(self._warnings))
        if self._reason:
            lines.append(f"Ended: {self._reason}")
        workflow.set_current_details("\n\n".join(lines))

    # --- messages --------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_EMERGENCY_STOP)
    def emergency_stop(self, signal: EmergencyStopSignal) -> None:
        """Remove the fault now and end STOPPED (the first stop counts)."""
        if self._stop is None and not self._phase.terminal:
            self._stop = signal
            self._note(f"emergency stop by {signal.by or 'unknown'}: {signal.reason}")

    @workflow.signal(name=SIGNAL_HEALTH_CHANGED)
    def health_changed(self, signal: HealthChangedSignal) -> None:
        """A process reported a blast-radius dependency's health (from the bridge)."""
        if self._phase.terminal or signal.service not in self._s.blast_radius:
            return
        verdict = signal.status or ("healthy" if signal.healthy else "unhealthy")
        score = f" score {signal.score:.2f}" if signal.score is not None else ""
        sample = HealthSample(
            at=workflow.now(),
            score=signal.score,
            healthy=signal.healthy,
            source=f"signal:{signal.source}" if signal.source else "signal",
            detail=f"{signal.service} {verdict}{score}",
        )
        self._add_sample(sample)
        live = self._phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING)
        trips = health_trips_guard(signal.score, signal.healthy, self._s.abort_below_health)
        if live and trips and self._trip is None:
            self._trip = f"health guard: {sample.detail} from {sample.source}"
        if self._phase is ChaosPhase.VERIFYING_RECOVERY:
            self._wake = True

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, signal: ApprovalSignal) -> None:
        """A person approves the experiment (refused if not a policy approver)."""
        self._decide(Decision.APPROVED, signal)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, signal: ApprovalSignal) -> None:
        """A person rejects the experiment, which then ends FAILED without injecting."""
        self._decide(Decision.REJECTED, signal)

    def _decide(self, decision: Decision, signal: ApprovalSignal) -> None:
        # While validating, the worker policy may still require approval: keep it.
        early = self._phase is ChaosPhase.VALIDATING and (
            self._s.require_approval or not self._validated
        )
        self._gate.offer(
            decision,
            signal,
            accepting=early or self._phase is ChaosPhase.AWAITING_APPROVAL,
            ignored_why=f"nothing awaits approval ({self._phase.value})",
        )

    @workflow.query(name="status")
    def status(self) -> ChaosStatus:
        """Phase, time left, where the fault is active, lowest health, journal."""
        s = self._s
        time_left = None
        if self._ends_at is not None and self._phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING):
            time_left = max(0.0, (self._ends_at - workflow.now()).total_seconds())
        return ChaosStatus(
            experiment_id=self._in.experiment_id,
            name=s.name,
            chaos_type=s.chaos_type,
            target=s.target,
            blast_radius=list(s.blast_radius),
            parameters=s.parameters_description(),
            phase=self._phase,
            dry_run=s.dry_run,
            started_at=self._started_at,
            injected_at=self._injected_at,
            ends_at=self._ends_at,
            time_left_s=time_left,
            duration_s=self._duration_s,
            faults_active=[self._placement] if self._placement and not s.dry_run else [],
            lowest_health=self._lowest,
            last_health=self._last,
            stop_reason=self._reason,
            warnings=list(self._warnings),
            decisions=list(self._gate.decisions),
            events=list(self._events),
            approval_needed=self._phase is ChaosPhase.AWAITING_APPROVAL,
            instances_guarding=self._instances_guarding,
            injection_failed=self._injection_failed,
        )

    @workflow.query(name="report")
    def report(self) -> ChaosReport:
        """The experiment's report so far (the result once it has ended)."""
        s = self._s
        return ChaosReport(
            experiment_id=self._in.experiment_id,
            name=s.name,
            chaos_type=s.chaos_type,
            target=s.target,
            blast_radius=list(s.blast_radius),
            outcome=self._outcome,
            reason=self._reason,
            dry_run=s.dry_run,
            requested_duration_s=s.duration_s,
            effective_duration_s=self._duration_s,
            started_at=self._started_at,
            injected_at=self._injected_at,
            removed_at=self._removed_at,
            ended_at=workflow.now(),
            phases=[p.model_copy() for p in self._phases],
            health_lowest=self._lowest,
            health_timeline=list(self._health),
            calls_affected=dict(self._impact.calls_affected),
            calls_seen=dict(self._impact.calls_seen),
            breakers_opened=list(self._impact.breakers_opened),
            breaker_openings=dict(self._impact.breaker_openings),
            calls_refused=dict(self._impact.calls_refused),
            recovery_workflows=list(self._impact.recovery_workflows),
            time_to_recover_s=self._time_to_recover,
            recovered=self._recovered,
            cleanup=self._cleanup_record,
            warnings=list(self._warnings),
            decisions=list(self._gate.decisions),
            events=list(self._events),
            fault_active_s=self._fault_active_s(),
            instances_guarding=self._instances_guarding,
            instances_saw_fault=(
                instances_that_saw(
                    self._impact.calls_seen,
                    self._impact.calls_affected,
                    self._impact.breakers_opened,
                )
                if self._impact_collected
                else None
            ),
            health_dropped=self._dropped,
            injection_failed=self._injection_failed,
        )

    def _fault_active_s(self) -> float | None:
        if self._injected_at is None or self._s.dry_run:
            return None
        end = self._cleanup_record.fault_ended_at or self._removed_at
        if end is None:  # still running: so far
            end = workflow.now()
        return round(max(0.0, (end - self._injected_at).total_seconds()), 3)


def _cause(err: ActivityError) -> str:
    cause = err.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or err)
