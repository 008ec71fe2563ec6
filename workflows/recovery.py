"""RecoveryWorkflow: recover one service, durably, with every decision in history.

Each attempt: validate the constitutional hash → run the action → run the probe.
Healthy ends it SUCCEEDED; otherwise the strategy's delay passes on a durable timer
(cut short by ``health_changed``) and the next attempt runs. When a round of
``max_retry_attempts`` is used up the recovery waits for a person: ``approve`` grants a
fresh round, ``reject`` ends it FAILED. MANUAL starts by waiting for approval. ADAPTIVE
(alone) reads its ledger each round and waits for the learned attempt times.

Since patch ``recovery-v2`` (older runs keep their old path and replay unchanged):

- A healthy ``health_changed`` is remembered from whenever it arrives until a probe that
  began after it has run (:class:`~antifragile.recovery.logic.WakeTracker`): one that lands
  during hash validation, the action or the probe cuts the next backoff short.
- While it waits for a person, a pending wake-up and a watch probe every ``max_delay_ms``
  (>= 10 s) run the probe; healthy ends it SUCCEEDED, "recovered while awaiting approval".
- An action or probe cut by a worker crash is retried elsewhere in the same attempt (same
  idempotency key), else the attempt failed. Only a refusal or a rejection ends it FAILED.
- Orchestrated (a child of the orchestrator): it tells the orchestrator, by workflow id
  only, when it waits for a person (``recovery_waiting``: its slot is free), when approved
  (``recovery_resuming``; then it waits for ``slot_granted``), and after every attempt
  (``attempt_finished``, for the retry budget).
- Approvals are checked with workflow id, first run id, decision and signature; a signature
  works once (digests kept across continue-as-new).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        KIND_RECOVERY,
        QUERY_STATUS,
        RECOVERY_WORKFLOW_TYPE,
        SA_KIND,
        SA_PRIORITY,
        SA_SERVICE,
        SA_STATE,
        SA_STRATEGY,
        SIGNAL_APPROVE,
        SIGNAL_ATTEMPT_FINISHED,
        SIGNAL_HEALTH_CHANGED,
        SIGNAL_JOIN,
        SIGNAL_RECOVERY_RESUMING,
        SIGNAL_RECOVERY_WAITING,
        SIGNAL_REJECT,
        SIGNAL_SLOT_GRANTED,
    )
    from antifragile.models.common import (
        ApprovalRecord,
        ApprovalSignal,
        Decision,
        HealthChangedSignal,
    )
    from antifragile.models.recovery import (
        AttemptRecord,
        JoinSignal,
        RecoveryRequest,
        RecoveryResult,
        RecoveryResume,
        RecoveryState,
        RecoveryStatus,
        RecoveryStrategy,
    )
    from antifragile.models.slots import (
        AttemptFinished,
        RecoveryResuming,
        RecoveryWaiting,
        SlotGranted,
    )
    from antifragile.recovery.logic import (
        AdaptiveSchedule,
        NextStep,
        WaitStep,
        WakeTracker,
        after_failed_attempt,
        check_transition,
        idempotency_key,
        next_step_awaiting_approval,
        watch_interval_ms,
    )
    from antifragile.recovery.ui import awaiting_approval_text, recovery_current_details

from workflows import _recovery_commands as commands
from workflows._approval import ApprovalGate
from workflows._failures import cause_message, is_refusal, reraise_cancellation
from workflows._learning_feed import record_outage

PATCH_V2 = "recovery-v2"
"""Patch of remembered wake-ups, watch probes, crash-safe steps and orchestrator signals
(decided once, at the start of a run: runs whose history predates it keep the old path)."""

# Attempts carried in history are capped: the full count stays exact in `attempt`.
MAX_ATTEMPT_RECORDS = 200
# Signatures are valid for minutes; remembering the last ones is enough to refuse reuse.
MAX_USED_SIGNATURES = 200


class _Finished(Exception):
    """Internal: the recovery reached a terminal state with this message."""

    def __init__(self, state: RecoveryState, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


@workflow.defn(name=RECOVERY_WORKFLOW_TYPE)
class RecoveryWorkflow:
    """Durable recovery of one service (workflow id ``recovery-{service}``)."""

    @workflow.init
    def __init__(self, request: RecoveryRequest) -> None:
        resume = request.resume or RecoveryResume(priority=request.priority)
        self._request = request
        self._state = RecoveryState.SCHEDULED
        self._priority = resume.priority
        self._attempts: list[AttemptRecord] = list(resume.attempts)
        self._attempt_count = len(resume.attempts)
        self._failures_in_round = resume.attempts_in_round
        self._awaiting_approval = resume.awaiting_approval or (
            request.resume is None and request.strategy is RecoveryStrategy.MANUAL
        )
        self._gate = ApprovalGate(
            decisions=list(resume.decisions),
            used_signatures=list(resume.used_signatures),
            retry_policy=commands.UNTIL_ANSWERED,
            timeout=commands.CHECK_TIMEOUT,
            on_record=_log_decision,
            max_used_signatures=MAX_USED_SIGNATURES,
        )
        self._wakes = WakeTracker()
        if resume.wake_pending:
            self._wakes.wake()
        self._waiting_reported = resume.waiting_reported
        self._watch_probes = resume.watch_probes
        self._recovered_while_waiting = False
        self._slot: SlotGranted | None = None
        self._parent_id: str | None = None
        self._v2 = False
        self._next_attempt_at: datetime | None = None
        self._waiting_for = ""
        self._last_error = ""
        self._joins = 0
        self._published: tuple[str, int] | None = None
        self._healthy_at: datetime | None = None  # the first passing probe (learning)
        self._learned: AdaptiveSchedule | None = None  # ADAPTIVE: this round's plan

    # --- run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: RecoveryRequest) -> RecoveryResult:
        """Recover ``request.service``; raises ApplicationError when it ends FAILED."""
        self._v2 = workflow.patched(PATCH_V2)
        parent = workflow.info().parent
        if self._v2 and parent is not None:
            # Only the orchestrator starts recoveries as children. By workflow id, never
            # run id: the orchestrator continues as new.
            self._parent_id = parent.workflow_id
        self._publish()
        adaptive = request.strategy is RecoveryStrategy.ADAPTIVE  # a plan per round
        try:
            await self._validate_hash()
            while True:
                if self._awaiting_approval:
                    if self._v2:
                        await self._await_approval_v2()
                    else:
                        await self._await_approval_v1()
                if await self._attempt():
                    raise _Finished(
                        RecoveryState.SUCCEEDED,
                        f"{request.service} is healthy after attempt {self._attempt_count}",
                    )
                # Read after a round's first failure: a slow ledger never delays a probe.
                if adaptive and (self._learned is None or self._failures_in_round <= 1):
                    self._learned = await commands.learned_schedule(request, self._attempts)
                step = after_failed_attempt(
                    request.strategy,
                    request.policy,
                    self._failures_in_round,
                    jitter_key=request.service,
                    wake_pending=self._v2 and self._wakes.pending,
                    learned=self._learned,
                    elapsed_ms=commands.elapsed_us(self._attempts) // 1000,
                )
                if step.step is NextStep.ESCALATE:
                    self._awaiting_approval = True
                    continue
                if step.cut_short:
                    self._move(RecoveryState.WAITING_BACKOFF)
                    workflow.logger.info(
                        "a health_changed during attempt %d cuts the %d ms backoff short",
                        self._attempt_count,
                        step.nominal_ms,
                    )
                else:
                    await self._backoff(step.delay_ms)
                if workflow.info().is_continue_as_new_suggested():
                    await self._continue_as_new()
        except _Finished as done:
            return await self._finish(done.state, done.message)
        except asyncio.CancelledError:
            self._move(RecoveryState.CANCELLED)
            self._waiting_for = "cancelled"
            self._publish()
            await record_outage(self.status(), self._healthy_at, self._request.detected_at)
            raise

    # --- steps -----------------------------------------------------------------------

    async def _validate_hash(self) -> None:
        try:
            await commands.validate_hash(self._request)
        except ActivityError as err:
            reraise_cancellation(err)
            raise _Finished(RecoveryState.FAILED, cause_message(err)) from None

    async def _attempt(self) -> bool:
        """One attempt; True when the probe says the service is healthy."""
        await self._validate_hash()
        self._move(RecoveryState.IN_PROGRESS)
        self._attempt_count += 1
        number = self._attempt_count
        self._next_attempt_at = None
        self._waiting_for = f"attempt {number}: action {self._request.action}, then probe"
        self._publish()
        started = workflow.now()
        info = workflow.info()
        outcome, detail = "healthy", ""
        try:
            key = idempotency_key(info.workflow_id, info.first_execution_run_id, number)
            action = await commands.run_action(self._request, number, key)
            if not action.ok:
                outcome, detail = "action_failed", action.detail
        except ActivityError as err:
            reraise_cancellation(err)
            if not self._v2 or is_refusal(err):
                raise _Finished(RecoveryState.FAILED, cause_message(err)) from None
            # Crashed or timed out on every try: this attempt failed, the recovery goes on.
            outcome, detail = "action_failed", f"action did not complete: {cause_message(err)}"
        if outcome == "healthy":
            healthy, detail = await self._probe(f"attempt {number}: probe {self._request.probe}")
            outcome = "healthy" if healthy else "unhealthy"
        duration = int((workflow.now() - started).total_seconds() * 1000)
        self._attempts.append(
            AttemptRecord(
                number=number,
                started_at=started,
                duration_ms=duration,
                outcome=outcome,
                detail=detail,
            )
        )
        del self._attempts[:-MAX_ATTEMPT_RECORDS]
        if outcome != "healthy":
            self._failures_in_round += 1
            self._last_error = detail
        await self._tell_orchestrator(
            SIGNAL_ATTEMPT_FINISHED,
            AttemptFinished(
                service=self._request.service,
                workflow_id=info.workflow_id,
                attempt=number,
                succeeded=outcome == "healthy",
                at=workflow.now(),
            ),
        )
        return outcome == "healthy"

    async def _probe(self, summary: str) -> tuple[bool, str]:
        """Run the probe; (healthy, detail). Wake-ups that arrived before it are spent."""
        token = self._wakes.probe_started()
        try:
            probe = await commands.probe(self._request, summary, v2=self._v2)
            result = probe.healthy, probe.detail
        except ActivityError as err:
            reraise_cancellation(err)
            # A probe that cannot even run proves nothing: count it as unhealthy.
            result = False, cause_message(err)
        self._wakes.probe_finished(token)
        if result[0] and self._healthy_at is None:
            self._healthy_at = workflow.now()
        return result

    async def _backoff(self, delay_ms: int) -> None:
        self._move(RecoveryState.WAITING_BACKOFF)
        if delay_ms <= 0:
            return
        self._next_attempt_at = workflow.now() + timedelta(milliseconds=delay_ms)
        note = f"; {self._learned.reason}" if self._learned is not None else ""
        self._waiting_for = (
            f"backoff after failed attempt {self._attempt_count}; next attempt at "
            f"{self._next_attempt_at:%Y-%m-%d %H:%M:%S} UTC, sooner if health_changed "
            f"arrives{note}"
        )
        self._publish()
        if not self._v2:
            # Old path: a wake-up counted only if it arrived during the backoff itself.
            self._wakes.forget()
        try:
            await workflow.wait_condition(
                lambda: self._wakes.pending,
                timeout=timedelta(milliseconds=delay_ms),
                timeout_summary=f"backoff {delay_ms} ms before attempt {self._attempt_count + 1}"
                + note,
            )
            workflow.logger.info("health_changed cut the backoff short")
        except TimeoutError:
            pass
        if not self._v2:
            self._wakes.forget()

    def _enter_awaiting_approval(self) -> str:
        """Move to AWAITING_APPROVAL; returns why, one line."""
        self._move(RecoveryState.AWAITING_APPROVAL)
        self._next_attempt_at = None
        reason, self._waiting_for = awaiting_approval_text(
            self._request, self._attempt_count, self._failures_in_round, self._last_error
        )
        self._publish()
        return reason

    async def _await_approval_v1(self) -> None:
        self._enter_awaiting_approval()
        while True:
            await workflow.wait_condition(lambda: self._gate.waiting)
            if await self._authorized():
                break
        self._awaiting_approval = False
        self._failures_in_round = 0

    async def _await_approval_v2(self) -> None:
        """Wait for a person, holding no slot; watch probes may end it SUCCEEDED."""
        reason = self._enter_awaiting_approval()
        waiting_for = self._waiting_for
        if self._parent_id is not None and not self._waiting_reported:
            self._waiting_reported = True
            await self._tell_orchestrator(
                SIGNAL_RECOVERY_WAITING,
                RecoveryWaiting(
                    service=self._request.service,
                    workflow_id=workflow.info().workflow_id,
                    reason=reason,
                ),
            )
        interval = watch_interval_ms(self._request.policy)
        next_watch = _now_ms() + interval
        while True:
            step = next_step_awaiting_approval(
                decisions_waiting=self._gate.waiting,
                wake_pending=self._wakes.pending,
                now_ms=_now_ms(),
                next_watch_ms=next_watch,
            )
            if step.step is WaitStep.SLEEP:
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._gate.waiting or self._wakes.pending,
                        timeout=timedelta(milliseconds=step.sleep_ms),
                        timeout_summary="watch probe while awaiting approval",
                    )
                continue
            if step.step is WaitStep.PROBE:
                self._watch_probes += 1
                healthy, detail = await self._probe(
                    f"watch probe {self._watch_probes} while awaiting approval"
                )
                if healthy:
                    self._recovered_while_waiting = True
                    raise _Finished(
                        RecoveryState.SUCCEEDED,
                        f"{self._request.service} recovered while awaiting approval: watch "
                        f"probe {self._watch_probes} found it healthy ({detail}); no approval "
                        "needed",
                    )
                next_watch = _now_ms() + interval
                due = workflow.now() + timedelta(milliseconds=interval)
                self._waiting_for = (
                    f"{waiting_for}; watch probe {self._watch_probes}: {detail}; next watch "
                    f"probe at {due:%Y-%m-%d %H:%M:%S} UTC, sooner if health_changed arrives"
                )
                self._publish()
                if not self._gate.waiting and workflow.info().is_continue_as_new_suggested():
                    await self._continue_as_new()
                continue
            if await self._authorized():
                break
        self._awaiting_approval = False
        self._failures_in_round = 0
        self._waiting_reported = False
        if self._parent_id is not None:
            await self._wait_for_slot()

    async def _authorized(self) -> bool:
        """Check the oldest decision with the worker policy; True when an approval took effect.

        Raises:
            _Finished: an authorized rejection ends the recovery FAILED.
        """
        decided = await self._gate.authorize_next(workflow.info().first_execution_run_id)
        if decided is None:
            return False
        decision, signal = decided
        if decision is Decision.REJECTED:
            raise _Finished(
                RecoveryState.FAILED,
                f"rejected by {signal.approver}" + (f": {signal.note}" if signal.note else ""),
            )
        return True

    async def _wait_for_slot(self) -> None:
        """Approved and orchestrated: queue for a slot again and wait until it is granted."""
        self._move(RecoveryState.SCHEDULED)
        self._slot = None
        self._waiting_for = (
            f"a slot: approved, queued again at priority {self._priority} (slots are held "
            "by running attempts only)"
        )
        self._publish()
        told = await self._tell_orchestrator(
            SIGNAL_RECOVERY_RESUMING,
            RecoveryResuming(
                service=self._request.service,
                workflow_id=workflow.info().workflow_id,
                priority=self._priority,
            ),
        )
        if told:
            await workflow.wait_condition(lambda: self._slot is not None)

    async def _tell_orchestrator(self, name: str, payload: object) -> bool:
        """Signal the orchestrator (orchestrated recoveries only); True when delivered.

        A missing orchestrator never stops a recovery: it is logged and the recovery goes
        on as if started directly.
        """
        if self._parent_id is None:
            return False
        try:
            await workflow.get_external_workflow_handle(self._parent_id).signal(name, payload)
        except FailureError as err:
            if isinstance(err, CancelledError):
                raise asyncio.CancelledError() from err
            workflow.logger.warning("could not signal %s to the orchestrator: %s", name, err)
            return False
        return True

    async def _finish(self, state: RecoveryState, message: str) -> RecoveryResult:
        self._move(state)
        self._waiting_for = message
        self._next_attempt_at = None
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        result = RecoveryResult(
            service=self._request.service,
            state=state,
            attempts=self._attempt_count,
            message=message,
            status=self.status(),
        )
        await record_outage(result.status, self._healthy_at, self._request.detected_at)
        if state is RecoveryState.FAILED:
            raise ApplicationError(message, result, type="RecoveryFailed", non_retryable=True)
        return result

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        resume = RecoveryResume(
            attempts=self._attempts[-20:],
            decisions=self._gate.decisions[-50:],
            attempts_in_round=self._failures_in_round,
            awaiting_approval=self._awaiting_approval,
            priority=self._priority,
            waiting_reported=self._waiting_reported,
            wake_pending=self._wakes.pending,
            used_signatures=self._gate.used_signatures,
            watch_probes=self._watch_probes,
        )
        workflow.continue_as_new(self._request.model_copy(update={"resume": resume}))

    # --- bookkeeping -----------------------------------------------------------------

    def _move(self, new: RecoveryState) -> None:
        if new is not self._state:
            self._state = check_transition(self._state, new)

    def _publish(self) -> None:
        """Keep the UI's search attributes and current details in step with the state."""
        req = self._request
        # Upsert only what changed: every upsert is a history event, and histories
        # must stay small (the details below cost no event).
        current = (self._state.value, self._priority)
        if self._published is None:
            workflow.upsert_search_attributes(
                [
                    SA_KIND.value_set(KIND_RECOVERY),
                    SA_SERVICE.value_set(req.service),
                    SA_STATE.value_set(self._state.value),
                    SA_STRATEGY.value_set(req.strategy.value),
                    SA_PRIORITY.value_set(self._priority),
                ]
            )
        elif current != self._published:
            workflow.upsert_search_attributes(
                [SA_STATE.value_set(self._state.value), SA_PRIORITY.value_set(self._priority)]
            )
        self._published = current
        details = recovery_current_details(
            req,
            state=self._state,
            priority=self._priority,
            attempts=self._attempt_count,
            attempts_in_round=self._failures_in_round,
            waiting_for=self._waiting_for,
            watch_probes=self._watch_probes,
            last_error=self._last_error,
        )
        workflow.set_current_details(details)

    # --- messages --------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, signal: ApprovalSignal) -> None:
        """A person approves a round of attempts (refused if not a policy approver)."""
        self._decide(Decision.APPROVED, signal)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, signal: ApprovalSignal) -> None:
        """A person rejects the recovery, which then ends FAILED."""
        self._decide(Decision.REJECTED, signal)

    def _decide(self, decision: Decision, signal: ApprovalSignal) -> None:
        self._gate.offer(
            decision,
            signal,
            accepting=self._state is RecoveryState.AWAITING_APPROVAL or self._awaiting_approval,
            ignored_why=f"nothing awaits approval (state {self._state.value})",
        )

    @workflow.signal(name=SIGNAL_HEALTH_CHANGED)
    def health_changed(self, signal: HealthChangedSignal) -> None:
        """A process saw the service healthy again: probe now instead of sleeping on."""
        if signal.healthy:
            self._wakes.wake()

    @workflow.signal(name=SIGNAL_SLOT_GRANTED)
    def slot_granted(self, signal: SlotGranted) -> None:
        """The orchestrator gives a resumed recovery its slot again: the next attempt runs."""
        self._slot = signal

    @workflow.signal(name=SIGNAL_JOIN)
    def join(self, signal: JoinSignal) -> None:
        """Another request for this service: keep one recovery, at the more urgent priority."""
        self._joins += 1
        if signal.priority < self._priority:
            self._priority = signal.priority
            if not self._state.terminal:
                self._publish()

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> RecoveryStatus:
        """Everything a person needs to know about this recovery right now."""
        req = self._request
        return RecoveryStatus(
            service=req.service,
            state=self._state,
            strategy=req.strategy,
            priority=self._priority,
            probe=req.probe,
            attempt=self._attempt_count,
            max_attempts=req.policy.max_retry_attempts,
            attempts_in_round=self._failures_in_round,
            next_attempt_at=self._next_attempt_at,
            waiting_for=self._waiting_for,
            last_error=self._last_error,
            attempts=list(self._attempts),
            decisions=list(self._gate.decisions),
            joins=self._joins,
            reason=req.reason,
            requested_by=req.requested_by,
            watch_probes=self._watch_probes,
            recovered_while_awaiting_approval=self._recovered_while_waiting,
            orchestrated=self._parent_id is not None,
        )


def _log_decision(record: ApprovalRecord) -> None:
    workflow.logger.info("decision %s by %s %s", record.decision, record.approver, record.reason)


def _now_ms() -> int:
    """Workflow time in integer milliseconds (decisions compare integers exactly)."""
    return int(workflow.now().timestamp() * 1000)
