"""ChaosExperimentWorkflow: one chaos experiment, durable from validation to report.

VALIDATING → AWAITING_APPROVAL (if required) → STEADY_STATE_BEFORE → INJECTING →
RUNNING (durable timer, lease renewed every third of its TTL) → CLEANING_UP →
VERIFYING_RECOVERY → COMPLETED | ABORTED (health guard) | STOPPED (emergency stop,
halt switch, cancellation) | FAILED (validation, hash, rejection, failed activity).

Cleanup is not an afterthought of the happy path: ``run`` catches every way the
experiment can end early (an ``_End``, a cancellation from the CLI or UI, a failed
activity), then always runs ``_cleanup`` — an idempotent ``remove_fault`` that, if Redis
stays unreachable, waits out the lease TTL so "cleaned up" is true either way
(:mod:`workflows._chaos_cleanup`). A terminated workflow runs no code at all: then
ChaosGuardianWorkflow, a child started before injection with ParentClosePolicy.ABANDON,
sees the experiment gone and removes the lease; and if the workers are gone too, the
lease TTL removes the fault from every process by itself. The report is built from the
journal kept all along (:class:`~antifragile.models.chaos.ChaosJournal`; ``status`` and
the report are its projections, :mod:`antifragile.chaos.journal`), so it is complete
for every outcome.

Once the experiment is ending (patch ``chaos-shielded-ending``), cleanup, recovery
verification, impact and report run in a task of their own: a cancel (or a second one)
reaches only the workflow's main task, which notes it and keeps waiting, so nothing cuts
the ending short. A removal Redis cannot confirm is waited out (lease TTL) and then asked
again until Redis answers or ``CONFIRM_WINDOW_S`` passes; a health measurement that fails
while verifying recovery is noted and retried until ``recovery_timeout_s``, never fatal.

A cancel that lands while an activity runs is spent on that activity by the SDK (patch
``chaos-cancel-in-activity``, :mod:`workflows._chaos_cancel`): the run checks
``workflow.cancellation_reason()`` at every stop check and treats an activity cancelled
by it as the cancel, so it ends STOPPED instead of running on or ending FAILED. A start
input whose ``experiment_id`` is not the workflow id is refused, and a Temporal failure
that is not an activity's (the guardian's start, patch ``chaos-other-failures``) ends
with cleanup and a report like any other.

Approvals (:mod:`workflows._approval`): a decision that arrives before AWAITING_APPROVAL
is kept (validation may find that the policy requires approval) and decided there; if
nothing requires approval it is recorded ignored. The first accepted decision counts;
any queued behind it is recorded ignored at once; later ones are ignored with the phase
they arrived in. Every activity call, with its options, is in
:mod:`workflows._chaos_commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from antifragile.chaos.journal import (
        add_call_sample,
        add_event,
        add_sample,
        chaos_report,
        chaos_status,
        enter_phase,
    )
    from antifragile.chaos.logic import (
        accepts_decisions,
        check_recovery,
        health_check_interval_s,
        health_trips_guard,
        lease_renewal_interval_s,
        measured_sample,
        missing_lease_reason,
        sample_health,
        signalled_sample,
    )
    from antifragile.chaos.ui import (
        cancelled_reason,
        chaos_details,
        experiment_id_refusal,
        injected_note,
        stop_reason,
        validated_note,
    )
    from antifragile.constants import (
        CHAOS_WORKFLOW_TYPE,
        KIND_CHAOS,
        QUERY_REPORT,
        QUERY_STATUS,
        SA_CHAOS_TYPE,
        SA_KIND,
        SA_SERVICE,
        SA_STATE,
        SIGNAL_APPROVE,
        SIGNAL_EMERGENCY_STOP,
        SIGNAL_HEALTH_CHANGED,
        SIGNAL_REJECT,
    )
    from antifragile.models.chaos import (
        ChaosExperimentInput,
        ChaosJournal,
        ChaosOutcome,
        ChaosPhase,
        ChaosReport,
        ChaosStatus,
        EmergencyStopSignal,
        HealthSample,
        PhaseRecord,
    )
    from antifragile.models.common import (
        ApprovalRecord,
        ApprovalSignal,
        Decision,
        HealthChangedSignal,
    )

from workflows import _chaos_commands as commands
from workflows._approval import ApprovalGate
from workflows._chaos_cancel import cancelled_activity, raise_spent_cancel, shielded
from workflows._chaos_cleanup import remove_lease
from workflows._failures import cause_message
from workflows._learning_feed import experiment_observation, record_observation

VERIFY_INTERVAL_S = 1.0
FLUSH_GRACE_S = 1.0
"""Call sites publish their counters every 0.5 s: wait this long after removal."""
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


@workflow.defn(name=CHAOS_WORKFLOW_TYPE)
class ChaosExperimentWorkflow:
    """One chaos experiment (workflow id ``chaos-{name}-{short id}``)."""

    @workflow.init
    def __init__(self, data: ChaosExperimentInput) -> None:
        if not data.experiment_id:  # scheduled runs: the schedule names the workflow
            data = data.model_copy(update={"experiment_id": workflow.info().workflow_id})
        self._s = data.scenario
        started = workflow.now()
        self._j = ChaosJournal(
            experiment_id=data.experiment_id,
            scenario=data.scenario,
            started_at=started,
            phases=[PhaseRecord(phase=ChaosPhase.VALIDATING, entered_at=started)],
            duration_s=data.scenario.duration_s,
        )
        self._gate = ApprovalGate(
            decisions=self._j.decisions,
            used_signatures=[],
            retry_policy=commands.SHORT_RETRY,
            timeout=commands.ACTIVITY_TIMEOUT,
            on_record=self._noted_decision,
        )
        self._wake = False

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
            if cancelled_activity(err):
                outcome, reason = self._cancelled_outcome()
            else:
                outcome, reason = ChaosOutcome.FAILED, f"activity failed: {cause_message(err)}"
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
            self._j.shielded_ending = True
            return await shielded(self._end(outcome, reason), self._note)
        await self._cleanup()
        await self._dismiss_guardian()
        if self._j.lease_maybe_written:
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
        reason = cancelled_reason(workflow.cancellation_reason(), self._j.stop)
        self._note(f"cancellation received; cleaning up ({reason})")
        return ChaosOutcome.STOPPED, reason

    async def _end(self, outcome: ChaosOutcome, reason: str) -> ChaosReport:
        """Cleanup, recovery verification, impact and report (shielded ending)."""
        await self._cleanup()
        await self._dismiss_guardian()
        if self._j.lease_maybe_written and self._j.cleanup.method != "injection_failed":
            await self._verify_recovery(outcome)
            await self._collect_impact()
        return await self._finish(outcome, reason)

    # --- phases ----------------------------------------------------------------------

    async def _validate(self) -> None:
        s = self._s
        try:
            await commands.validate_hash(s)
            checked = await commands.validate_scenario(s)
        except ActivityError as err:
            if cancelled_activity(err):
                raise asyncio.CancelledError() from None
            raise _End(ChaosOutcome.FAILED, cause_message(err)) from None
        self._j.duration_s = checked.effective_duration_s
        self._j.lease_ttl_s = checked.lease_ttl_s
        self._j.policy_approval = checked.require_approval
        self._j.validated = True
        if checked.require_approval and not s.require_approval:
            self._note("the worker policy requires approval (chaos.require_approval)")
        for warning in checked.warnings:
            self._j.warnings.append(warning)
            self._note(f"warning: {warning}")
        self._note(validated_note(self._j))

    def _check_experiment_id(self) -> None:
        """Refuse an ``experiment_id`` that is not this workflow's id.

        The lease key, the guardian's id and the conflict check all follow ``experiment_id``:
        one that is not this workflow's id (a hand-crafted start) would take over another
        experiment's fault, and remove it at its end.
        """
        wid = workflow.info().workflow_id
        if self._j.experiment_id != wid:
            raise _End(ChaosOutcome.FAILED, experiment_id_refusal(self._j.experiment_id, wid))

    def _needs_approval(self) -> bool:
        return self._s.require_approval or self._j.policy_approval

    def _ignore_early_decisions(self, why: str = "this experiment needs no approval") -> None:
        self._gate.ignore_waiting(why)

    async def _await_approval(self) -> None:
        self._move(ChaosPhase.AWAITING_APPROVAL)
        self._note("waiting for approve/reject")
        info = workflow.info()
        while True:
            await workflow.wait_condition(lambda: self._gate.waiting or self._j.stop is not None)
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
        halt = await commands.check_halt(self._j.experiment_id)
        if halt.halted:
            raise _End(ChaosOutcome.STOPPED, f"halt switch set: {halt.reason or 'no reason'}")
        sample = await self._measure("steady state before injection")
        if sample is not None:
            self._j.baseline = sample_health(sample)
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
            await commands.start_guardian(self._j)  # a failed start: no lease, nothing to clean
            self._j.guardian_started = True
            raise_spent_cancel()  # a cancel the child's start spent: inject nothing
        # From here the lease may exist even if the activity fails: cleanup must run.
        self._j.lease_maybe_written = not s.dry_run
        sent = workflow.now()
        try:
            # A cancelled injection finishes before cleanup runs (WAIT_CANCELLATION_COMPLETED).
            result = await commands.inject_fault(self._j)
        except ActivityError as err:
            self._j.lease_until = workflow.now() + timedelta(seconds=self._j.lease_ttl_s)
            if cancelled_activity(err):
                raise asyncio.CancelledError() from None
            self._j.injection_failed = cause_message(err)
            raise _End(ChaosOutcome.FAILED, f"injection failed: {cause_message(err)}") from None
        now = workflow.now()
        self._j.instances_guarding = result.instances_guarding
        if result.warning:  # a dry run the preflight would have refused
            self._j.warnings.append(result.warning)
            self._note(f"warning: {result.warning}")
        if result.halted:
            self._j.lease_maybe_written = False
            raise _End(ChaosOutcome.STOPPED, result.detail or "halt switch set")
        self._j.injected_at = now
        self._j.ends_at = now + timedelta(seconds=self._j.duration_s)
        self._j.placement = result.placement
        if result.injected:
            self._j.lease_until = now + timedelta(seconds=self._j.lease_ttl_s)
            self._j.lease_expires_earliest = sent + timedelta(seconds=self._j.lease_ttl_s)
        self._note(injected_note(result, s.blast_radius))

    async def _dismiss_guardian(self) -> None:
        if not self._j.guardian_started:
            return
        try:
            await commands.dismiss_guardian(self._j.experiment_id)
        except Exception as exc:  # gone already: it then removed the lease (idempotent)
            self._note(f"guardian not reached: {exc}")

    async def _running(self) -> None:
        self._move(ChaosPhase.RUNNING)
        assert self._j.ends_at is not None
        end = self._j.ends_at
        now = workflow.now()
        renew_every = timedelta(seconds=lease_renewal_interval_s(self._j.lease_ttl_s))
        health_every = timedelta(seconds=health_check_interval_s(self._j.duration_s))
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
                    lambda: self._j.stop is not None or self._j.trip is not None,
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
                if self._j.lease_maybe_written:
                    await self._renew()
                next_renew = workflow.now() + renew_every
            if now >= next_health:
                sample = await self._measure("while running")
                if sample is not None and health_trips_guard(
                    sample.score, sample.healthy, self._s.abort_below_health
                ):
                    self._j.trip = f"health guard: {sample.detail}"
                next_health = workflow.now() + health_every

    async def _renew(self) -> None:
        sent = workflow.now()
        try:
            result = await commands.renew_lease(self._j)
        except ActivityError as err:
            if cancelled_activity(err):
                raise asyncio.CancelledError() from None
            raise _End(ChaosOutcome.FAILED, f"lease renewal failed: {cause_message(err)}") from None
        if result.halted:
            raise _End(ChaosOutcome.STOPPED, "halt switch set")
        if result.missing:
            raise _End(
                ChaosOutcome.STOPPED, missing_lease_reason(sent, self._j.lease_expires_earliest)
            )
        self._j.lease_until = workflow.now() + timedelta(seconds=self._j.lease_ttl_s)
        self._j.lease_expires_earliest = sent + timedelta(seconds=self._j.lease_ttl_s)

    async def _cleanup(self) -> None:
        """Remove the fault: idempotent, and complete even when Redis is unreachable."""
        if self._j.phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING):
            self._move(ChaosPhase.CLEANING_UP)  # dry runs too: no path skips the phase
        await remove_lease(self._j, self._note)

    async def _verify_recovery(self, outcome: ChaosOutcome) -> None:
        self._move(ChaosPhase.VERIFYING_RECOVERY)
        assert self._j.removed_at is not None
        deadline = self._j.removed_at + timedelta(seconds=self._s.recovery_timeout_s)
        failure = ""
        while True:
            try:
                sample = await self._measure("after removal")
            except ActivityError as err:
                if not self._j.shielded_ending:
                    raise
                # Redis unreachable (often the same outage that broke a renewal): the
                # fault is gone either way; keep trying until the recovery deadline.
                sample, first = None, not failure
                failure = cause_message(err)
                if first:
                    self._note(f"health not measured: {failure}")
                if workflow.now() >= deadline:
                    self._j.warnings.append(
                        f"recovery not verified: health not measured ({failure})"
                    )
                    break
                await workflow.sleep(
                    timedelta(seconds=VERIFY_INTERVAL_S), summary="wait before measuring again"
                )
                continue
            if sample is None:
                self._note("no health source: recovery not measured")
                break
            check = check_recovery(self._j, sample, workflow.now())
            if check.recovered is not None:
                self._j.recovered = check.recovered
                if check.time_to_recover_s is not None:
                    self._j.time_to_recover_s = check.time_to_recover_s
                if check.warning:
                    self._j.warnings.append(check.warning)
                self._note(check.note)
                break
            self._wake = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=timedelta(seconds=VERIFY_INTERVAL_S),
                    timeout_summary="wait before the next health check",
                )

    async def _collect_impact(self) -> None:
        assert self._j.removed_at is not None
        elapsed = workflow.now() - self._j.removed_at
        if elapsed < timedelta(seconds=FLUSH_GRACE_S):
            await workflow.sleep(
                timedelta(seconds=FLUSH_GRACE_S) - elapsed, summary="let counters flush"
            )
        try:
            self._j.impact = await commands.collect_impact(self._j)
            self._j.impact_collected = True
        except ActivityError as err:
            self._j.warnings.append(f"impact not collected: {cause_message(err)}")

    async def _measure(self, when: str) -> HealthSample | None:
        """Fleet health (Redis snapshots) and the steady-state probe, as one sample."""
        s = self._s
        health = await commands.measure_health(s, when)
        probe: tuple[bool, str] | None = None
        if s.steady_state_probe:
            try:
                result = await commands.probe_steady_state(s, s.steady_state_probe, when)
                probe = result.healthy, result.detail
            except ActivityError as err:
                if cancelled_activity(err):
                    raise asyncio.CancelledError() from None
                probe = False, cause_message(err)
        sample = measured_sample(health, probe, s.steady_state_probe, workflow.now())
        if sample is not None:
            add_sample(self._j, sample)
        # No command: old histories (no counters in the result) replay as before.
        add_call_sample(self._j, health.calls, s.target, workflow.now())
        return sample

    async def _finish(self, outcome: ChaosOutcome, reason: str) -> ChaosReport:
        self._ignore_early_decisions("the experiment ended before any approval counted")
        self._j.outcome, self._j.reason = outcome, reason
        self._move(ChaosPhase(outcome.value))
        self._note(f"{outcome.value}: {reason}")
        await workflow.wait_condition(workflow.all_handlers_finished)
        report = self.report()  # final: recording below is best effort and changes nothing
        observation = experiment_observation(self._j, outcome)
        if observation is not None:
            await record_observation(observation)
        return report

    # --- bookkeeping -----------------------------------------------------------------

    def _check_stop(self) -> None:
        raise_spent_cancel()
        if self._j.stop is not None:
            raise _End(ChaosOutcome.STOPPED, stop_reason(self._j.stop))

    def _check_trip(self) -> None:
        if self._j.trip is not None:
            raise _End(ChaosOutcome.ABORTED, self._j.trip)

    def _move(self, new: ChaosPhase) -> None:
        if new is self._j.phase:
            return
        enter_phase(self._j, new, workflow.now())
        self._publish()

    def _note(self, message: str) -> None:
        add_event(self._j, message, workflow.now())
        workflow.logger.info("chaos %s: %s", self._j.experiment_id, message)

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
                SA_STATE.value_set(self._j.phase.value),
            ]
        )
        workflow.set_current_details(chaos_details(self._j))

    # --- messages --------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_EMERGENCY_STOP)
    def emergency_stop(self, signal: EmergencyStopSignal) -> None:
        """Remove the fault now and end STOPPED (the first stop counts)."""
        if self._j.stop is None and not self._j.phase.terminal:
            self._j.stop = signal
            self._note(f"emergency stop by {signal.by or 'unknown'}: {signal.reason}")

    @workflow.signal(name=SIGNAL_HEALTH_CHANGED)
    def health_changed(self, signal: HealthChangedSignal) -> None:
        """A process reported a blast-radius dependency's health (from the bridge)."""
        if self._j.phase.terminal or signal.service not in self._s.blast_radius:
            return
        sample = signalled_sample(signal, workflow.now())
        add_sample(self._j, sample)
        live = self._j.phase in (ChaosPhase.INJECTING, ChaosPhase.RUNNING)
        trips = health_trips_guard(signal.score, signal.healthy, self._s.abort_below_health)
        if live and trips and self._j.trip is None:
            self._j.trip = f"health guard: {sample.detail} from {sample.source}"
        if self._j.phase is ChaosPhase.VERIFYING_RECOVERY:
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
        self._gate.offer(
            decision,
            signal,
            accepting=accepts_decisions(self._j),
            ignored_why=f"nothing awaits approval ({self._j.phase.value})",
        )

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> ChaosStatus:
        """Phase, time left, where the fault is active, lowest health, journal."""
        return chaos_status(self._j, workflow.now())

    @workflow.query(name=QUERY_REPORT)
    def report(self) -> ChaosReport:
        """The experiment's report so far (the result once it has ended)."""
        return chaos_report(self._j, workflow.now())
