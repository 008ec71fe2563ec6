"""RecoveryWorkflow: recover one service, durably, with every decision in history.

Each attempt: validate the constitutional hash → run the action → run the probe.
Healthy ends it SUCCEEDED; otherwise the strategy's delay passes on a durable timer
(cut short by ``health_changed``) and the next attempt runs. When a round of
``max_retry_attempts`` is used up the recovery waits for a person: ``approve`` grants a
fresh round, ``reject`` ends it FAILED. MANUAL starts by waiting for approval.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        KIND_RECOVERY,
        SA_KIND,
        SA_PRIORITY,
        SA_SERVICE,
        SA_STATE,
        SA_STRATEGY,
        SIGNAL_APPROVE,
        SIGNAL_HEALTH_CHANGED,
        SIGNAL_JOIN,
        SIGNAL_REJECT,
    )
    from antifragile.models.common import (
        ApprovalRecord,
        ApprovalSignal,
        Decision,
        HealthChangedSignal,
    )
    from antifragile.models.recovery import (
        AttemptRecord,
        AuthorizeApproverInput,
        AuthorizeApproverResult,
        JoinSignal,
        ProbeInput,
        ProbeResult,
        RecoveryActionInput,
        RecoveryActionResult,
        RecoveryRequest,
        RecoveryResult,
        RecoveryResume,
        RecoveryState,
        RecoveryStatus,
        RecoveryStrategy,
        ValidateHashInput,
        ValidateHashResult,
    )
    from antifragile.recovery_logic import NextStep, after_failed_attempt, check_transition

SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
# Attempts carried in history are capped: the full count stays exact in `attempt`.
MAX_ATTEMPT_RECORDS = 200


class _Finished(Exception):
    """Internal: the recovery reached a terminal state with this message."""

    def __init__(self, state: RecoveryState, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


@workflow.defn
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
        self._decisions: list[ApprovalRecord] = list(resume.decisions)
        self._failures_in_round = resume.attempts_in_round
        self._awaiting_approval = resume.awaiting_approval or (
            request.resume is None and request.strategy is RecoveryStrategy.MANUAL
        )
        self._inbox: list[tuple[Decision, ApprovalSignal]] = []
        self._wake = False
        self._next_attempt_at: datetime | None = None
        self._waiting_for = ""
        self._last_error = ""
        self._joins = 0
        self._published: tuple[str, int] | None = None

    # --- run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: RecoveryRequest) -> RecoveryResult:
        """Recover ``request.service``; raises ApplicationError when it ends FAILED."""
        self._publish()
        try:
            await self._validate_hash()
            while True:
                if self._awaiting_approval:
                    await self._await_approval()
                if await self._attempt():
                    raise _Finished(
                        RecoveryState.SUCCEEDED,
                        f"{request.service} is healthy after attempt {self._attempt_count}",
                    )
                step = after_failed_attempt(
                    request.strategy,
                    request.policy,
                    self._failures_in_round,
                    jitter_key=request.service,
                )
                if step.step is NextStep.ESCALATE:
                    self._awaiting_approval = True
                    continue
                await self._backoff(step.delay_ms)
                if workflow.info().is_continue_as_new_suggested():
                    await self._continue_as_new()
        except _Finished as done:
            return await self._finish(done.state, done.message)
        except asyncio.CancelledError:
            self._move(RecoveryState.CANCELLED)
            self._waiting_for = "cancelled"
            self._publish()
            raise

    # --- steps -----------------------------------------------------------------------

    async def _validate_hash(self) -> None:
        try:
            await workflow.execute_activity(
                "validate_constitutional_hash",
                ValidateHashInput(
                    constitutional_hash=self._request.constitutional_hash,
                    context=f"recovery {self._request.service}",
                ),
                result_type=ValidateHashResult,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHORT_RETRY,
                summary="validate constitutional hash",
            )
        except ActivityError as err:
            _reraise_cancellation(err)
            raise _Finished(RecoveryState.FAILED, _cause_message(err)) from None

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
        outcome, detail = "healthy", ""
        try:
            action = await workflow.execute_activity(
                "run_recovery_action",
                RecoveryActionInput(
                    service=self._request.service,
                    action=self._request.action,
                    attempt=number,
                    reason=self._request.reason,
                ),
                result_type=RecoveryActionResult,
                start_to_close_timeout=timedelta(seconds=90),
                # An action may not be idempotent: never repeat it behind the user's back.
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"attempt {number}: {self._request.action}",
            )
        except ActivityError as err:
            _reraise_cancellation(err)
            raise _Finished(RecoveryState.FAILED, _cause_message(err)) from None
        if not action.ok:
            outcome, detail = "action_failed", action.detail
        else:
            try:
                probe = await workflow.execute_activity(
                    "probe_service",
                    ProbeInput(
                        service=self._request.service,
                        url=self._request.probe,
                        timeout_s=self._request.probe_timeout_s,
                    ),
                    result_type=ProbeResult,
                    start_to_close_timeout=timedelta(seconds=self._request.probe_timeout_s + 10),
                    retry_policy=SHORT_RETRY,
                    summary=f"attempt {number}: probe {self._request.probe}",
                )
                outcome, detail = ("healthy" if probe.healthy else "unhealthy"), probe.detail
            except ActivityError as err:
                _reraise_cancellation(err)
                # A probe that cannot even run proves nothing: count it as unhealthy.
                outcome, detail = "unhealthy", _cause_message(err)
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
        if outcome == "healthy":
            return True
        self._failures_in_round += 1
        self._last_error = detail
        return False

    async def _backoff(self, delay_ms: int) -> None:
        self._move(RecoveryState.WAITING_BACKOFF)
        if delay_ms <= 0:
            return
        self._next_attempt_at = workflow.now() + timedelta(milliseconds=delay_ms)
        self._waiting_for = (
            f"backoff after failed attempt {self._attempt_count}; next attempt at "
            f"{self._next_attempt_at:%Y-%m-%d %H:%M:%S} UTC, sooner if health_changed arrives"
        )
        self._publish()
        self._wake = False
        try:
            await workflow.wait_condition(
                lambda: self._wake,
                timeout=timedelta(milliseconds=delay_ms),
                timeout_summary=f"backoff {delay_ms} ms before attempt {self._attempt_count + 1}",
            )
            workflow.logger.info("health_changed cut the backoff short")
        except TimeoutError:
            pass
        self._wake = False

    async def _await_approval(self) -> None:
        self._move(RecoveryState.AWAITING_APPROVAL)
        self._next_attempt_at = None
        if self._attempt_count:
            self._waiting_for = (
                f"approval: {self._failures_in_round} attempts failed "
                f"(last: {self._last_error or 'unhealthy'}); approve for "
                f"{self._request.policy.max_retry_attempts} more, or reject"
            )
        else:
            self._waiting_for = "approval before the first attempt (manual strategy)"
        self._publish()
        while True:
            await workflow.wait_condition(lambda: bool(self._inbox))
            decision, signal = self._inbox.pop(0)
            check = await workflow.execute_activity(
                "authorize_approver",
                AuthorizeApproverInput(approver=signal.approver),
                result_type=AuthorizeApproverResult,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=SHORT_RETRY,
                summary=f"authorize {signal.approver}",
            )
            if not check.allowed:
                self._record(signal, Decision.REFUSED, check.reason)
                continue
            self._record(signal, decision)
            if decision is Decision.REJECTED:
                raise _Finished(
                    RecoveryState.FAILED,
                    f"rejected by {signal.approver}" + (f": {signal.note}" if signal.note else ""),
                )
            self._awaiting_approval = False
            self._failures_in_round = 0
            return

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
        if state is RecoveryState.FAILED:
            raise ApplicationError(message, result, type="RecoveryFailed", non_retryable=True)
        return result

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        resume = RecoveryResume(
            attempts=self._attempts[-20:],
            decisions=self._decisions[-50:],
            attempts_in_round=self._failures_in_round,
            awaiting_approval=self._awaiting_approval,
            priority=self._priority,
        )
        workflow.continue_as_new(self._request.model_copy(update={"resume": resume}))

    # --- bookkeeping -----------------------------------------------------------------

    def _move(self, new: RecoveryState) -> None:
        if new is not self._state:
            self._state = check_transition(self._state, new)

    def _record(self, signal: ApprovalSignal, decision: Decision, reason: str = "") -> None:
        self._decisions.append(
            ApprovalRecord(
                approver=signal.approver,
                decision=decision,
                note=signal.note,
                at=workflow.now(),
                reason=reason,
            )
        )
        workflow.logger.info("decision %s by %s %s", decision, signal.approver, reason)

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
        lines = [
            f"**{self._state.value}** — {req.service} ({req.strategy.value}, priority "
            f"{self._priority})",
            f"Attempts: {self._attempt_count} (this round {self._failures_in_round} of "
            f"{req.policy.max_retry_attempts})",
            f"Waiting for: {self._waiting_for or '-'}",
        ]
        if self._last_error:
            lines.append(f"Last error: {self._last_error}")
        workflow.set_current_details("\n\n".join(lines))

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
        if self._state is RecoveryState.AWAITING_APPROVAL or self._awaiting_approval:
            self._inbox.append((decision, signal))
        else:
            self._record(
                signal, Decision.IGNORED, f"nothing awaits approval (state {self._state.value})"
            )

    @workflow.signal(name=SIGNAL_HEALTH_CHANGED)
    def health_changed(self, signal: HealthChangedSignal) -> None:
        """A process saw the service healthy again: probe now instead of sleeping on."""
        if signal.healthy:
            self._wake = True

    @workflow.signal(name=SIGNAL_JOIN)
    def join(self, signal: JoinSignal) -> None:
        """Another request for this service: keep one recovery, at the more urgent priority."""
        self._joins += 1
        if signal.priority < self._priority:
            self._priority = signal.priority
            if not self._state.terminal:
                self._publish()

    @workflow.query(name="status")
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
            decisions=list(self._decisions),
            joins=self._joins,
            reason=req.reason,
            requested_by=req.requested_by,
        )


def _reraise_cancellation(err: ActivityError) -> None:
    """An activity cancelled because the workflow was cancelled is the workflow's cancel."""
    if isinstance(err.cause, CancelledError):
        raise asyncio.CancelledError() from err


def _cause_message(err: ActivityError) -> str:
    cause = err.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or err)
