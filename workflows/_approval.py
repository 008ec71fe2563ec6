"""The approval gate shared by RecoveryWorkflow and ChaosExperimentWorkflow.

A person's ``approve``/``reject`` signal lands in the gate's inbox while the workflow can
still be decided, or is recorded IGNORED at once. When the workflow waits for a person it
takes decisions from the inbox one by one; each is checked with the worker policy by the
``authorize_approver`` activity (approver, workflow id, first run id, signature), and
recorded REFUSED or as decided. An accepted signature's digest is remembered so that it
counts once. What a decision *does* (a fresh round of attempts, an injection, the end of
the run) stays with the workflow.

This is a helper of the two workflows, not a durable process: it issues exactly the
activity the workflows issued before it existed, with the same arguments, options and
summary, so their recorded histories replay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import ACTIVITY_AUTHORIZE_APPROVER
    from antifragile.models.common import ApprovalRecord, ApprovalSignal, Decision
    from antifragile.models.recovery import AuthorizeApproverInput, AuthorizeApproverResult


class ApprovalGate:
    """The inbox of decisions, their authorization and their record (one per workflow run).

    Args:
        decisions: The decision record to append to (carried over a continue-as-new, or
            the owner's journal); the gate appends, it never copies it.
        used_signatures: Digests of signatures already accepted (carried over a
            continue-as-new); the gate appends to this list too.
        retry_policy: Retry policy of the ``authorize_approver`` activity.
        timeout: Its start-to-close timeout.
        on_record: Called with every record the gate appends (the owner's log or journal).
        max_used_signatures: Keep only this many digests (None: keep all).
    """

    def __init__(
        self,
        *,
        decisions: list[ApprovalRecord],
        used_signatures: list[str],
        retry_policy: RetryPolicy,
        timeout: timedelta,
        on_record: Callable[[ApprovalRecord], None],
        max_used_signatures: int | None = None,
    ) -> None:
        self.decisions = decisions
        self.used_signatures = used_signatures
        self._retry_policy = retry_policy
        self._timeout = timeout
        self._on_record = on_record
        self._max_used = max_used_signatures
        self._inbox: list[tuple[Decision, ApprovalSignal]] = []

    @property
    def waiting(self) -> bool:
        """A decision waits in the inbox."""
        return bool(self._inbox)

    def offer(
        self, decision: Decision, signal: ApprovalSignal, *, accepting: bool, ignored_why: str
    ) -> None:
        """A signal arrived: keep it when the workflow is ``accepting``.

        Else record it IGNORED with ``ignored_why``.
        """
        if accepting:
            self._inbox.append((decision, signal))
        else:
            self.record(signal, Decision.IGNORED, ignored_why)

    def ignore_waiting(self, why: str) -> None:
        """Record every decision still in the inbox IGNORED with ``why``, oldest first."""
        while self._inbox:
            _, signal = self._inbox.pop(0)
            self.record(signal, Decision.IGNORED, why)

    async def authorize_next(self, first_run_id: str) -> tuple[Decision, ApprovalSignal] | None:
        """Take the oldest decision and check it with the worker policy.

        Args:
            first_run_id: The run id signatures are bound to (the first run's).

        Returns:
            The decision and its signal when it counts (recorded as decided), None when
            the policy refused it (recorded REFUSED with the policy's reason).
        """
        decision, signal = self._inbox.pop(0)
        check = await workflow.execute_activity(
            ACTIVITY_AUTHORIZE_APPROVER,
            AuthorizeApproverInput(
                approver=signal.approver,
                workflow_id=workflow.info().workflow_id,
                first_run_id=first_run_id,
                decision=decision.value,
                signature=signal.signature,
                signed_at=signal.signed_at,
                used_signatures=list(self.used_signatures),
            ),
            result_type=AuthorizeApproverResult,
            start_to_close_timeout=self._timeout,
            retry_policy=self._retry_policy,
            summary=f"authorize {signal.approver}",
        )
        if not check.allowed:
            self.record(signal, Decision.REFUSED, check.reason)
            return None
        if check.signature_digest:  # a signature counts once
            self.used_signatures.append(check.signature_digest)
            if self._max_used is not None:
                del self.used_signatures[: -self._max_used]
        self.record(signal, decision)
        return decision, signal

    def record(self, signal: ApprovalSignal, decision: Decision, reason: str = "") -> None:
        """Append one decision to the record (workflow time) and tell the owner."""
        entry = ApprovalRecord(
            approver=signal.approver,
            decision=decision,
            note=signal.note,
            at=workflow.now(),
            reason=reason,
        )
        self.decisions.append(entry)
        self._on_record(entry)
