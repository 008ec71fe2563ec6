"""The change desk of a dependency's ledger: apply advice, revert, and the audit record.

A helper of :class:`~workflows.dependency_profile.DependencyProfileWorkflow`, not a
durable process. Requests (``apply_advice``, ``revert_config``, and the ledger's own
``auto`` ones) wait in an inbox; the workflow takes them one by one:

1. A person's request is authorized by the ``authorize_approver`` activity (the worker
   policy's approvers, signatures with decision ``"apply"`` or ``"revert"``); refused:
   recorded REFUSED with the policy's reason.
2. Apply: ``read_dependency_config`` reads the version in force (settings, number) and the
   worker's adaptation band; the workflow recomputes the advice from its observations
   against those settings and decides the values
   (:func:`~antifragile.learning.adaptation.plan_apply`, and for ``auto``
   :func:`~antifragile.learning.adaptation.within_band`): the decision is in history.
3. ``publish_dependency_config`` publishes them (or reverts), once per request id; a
   refusal by the policy's bounds is recorded REFUSED; Redis down, retried for a bounded
   time (:data:`CONFIG_RETRY`), then FAILED.

Every request ends as one :class:`~antifragile.models.adaptation.ConfigChange`; a request
id already recorded or waiting is ignored (clients re-send signals). The record keeps the
newest :data:`MAX_CHANGES` and is carried over continue-as-new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        ACTIVITY_AUTHORIZE_APPROVER,
        ACTIVITY_PUBLISH_CONFIG,
        ACTIVITY_READ_CONFIG,
    )
    from antifragile.learning.adaptation import auto_paused, in_force, plan_apply, within_band
    from antifragile.models.adaptation import (
        AUTO_BY,
        ApplyAdviceSignal,
        ChangeOutcome,
        ConfigChange,
        PublishConfigInput,
        PublishConfigResult,
        ReadConfigInput,
        ReadConfigResult,
        RevertConfigSignal,
    )
    from antifragile.models.learning import Advice, CurrentSettings, DependencySettings
    from antifragile.models.recovery import AuthorizeApproverInput, AuthorizeApproverResult

MAX_CHANGES = 50
"""Changes a ledger keeps (the newest); a request id older than these is forgotten."""
MAX_USED_SIGNATURES = 200
"""Digests of accepted signatures kept (each signature counts once)."""
CONFIG_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout of one read or publish attempt."""
CONFIG_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=8),
    maximum_attempts=5,
)
"""Redis down: 5 attempts, 1+2+4+8 s apart (about 15 s plus the attempts), then FAILED."""
AUTHORIZE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=5)


@dataclass
class _Request:
    action: str  # "apply" | "revert"
    request_id: str
    by: str
    note: str
    settings: list[str]
    signature: str
    signed_at: datetime | None
    requested_at: datetime
    auto: bool = False


class ChangeDesk:
    """The inbox of change requests, their decision and their record.

    Args:
        dependency: The ledger's dependency.
        changes: The record (carried over continue-as-new); the desk appends to it.
        used_signatures: Accepted signature digests (carried); the desk appends.
        advice_against: ``(settings in force, now) -> advice`` from the ledger's
            observations (pure).
        held: ``() -> number of held observations``.
        on_record: Called after each recorded change (the owner's details).
    """

    def __init__(
        self,
        dependency: str,
        changes: list[ConfigChange],
        used_signatures: list[str],
        advice_against: Callable[[CurrentSettings, datetime], list[Advice]],
        held: Callable[[], int],
        on_record: Callable[[ConfigChange], None],
    ) -> None:
        self.dependency = dependency
        self.changes = changes
        self.used_signatures = used_signatures
        self._advice_against = advice_against
        self._held = held
        self._on_record = on_record
        self._inbox: list[_Request] = []

    @property
    def waiting(self) -> bool:
        """A request waits in the inbox."""
        return bool(self._inbox)

    def find(self, request_id: str) -> ConfigChange | None:
        """The recorded change of ``request_id`` (None: not recorded, or forgotten)."""
        for change in reversed(self.changes):
            if change.request_id == request_id:
                return change
        return None

    @property
    def auto_pending(self) -> bool:
        """An ``auto`` request waits in the inbox."""
        return any(r.auto for r in self._inbox)

    @property
    def last_auto_failed(self) -> bool:
        """The newest recorded ``auto`` change ended FAILED (Redis not written)."""
        for change in reversed(self.changes):
            if change.by == AUTO_BY:
                return change.outcome is ChangeOutcome.FAILED
        return False

    def _known(self, request_id: str) -> bool:
        return self.find(request_id) is not None or any(
            r.request_id == request_id for r in self._inbox
        )

    def offer(self, action: str, signal: ApplyAdviceSignal | RevertConfigSignal) -> None:
        """A person's request arrived: queue it unless its id is known (answered once)."""
        if self._known(signal.request_id):
            return
        settings = list(signal.settings) if isinstance(signal, ApplyAdviceSignal) else []
        self._inbox.append(
            _Request(
                action=action,
                request_id=signal.request_id,
                by=signal.approver,
                note=signal.note,
                settings=settings,
                signature=signal.signature,
                signed_at=signal.signed_at,
                requested_at=workflow.now(),
            )
        )

    def offer_auto(self, request_id: str) -> None:
        """The advice changed: queue the ledger's own request (policy ``adaptation.auto``)."""
        if self._known(request_id):
            return
        self._inbox.append(
            _Request(
                action="apply",
                request_id=request_id,
                by=AUTO_BY,
                note="advice changed; in-band values applied by the policy's adaptation.auto",
                settings=[],
                signature="",
                signed_at=None,
                requested_at=workflow.now(),
                auto=True,
            )
        )

    async def process_next(self) -> None:
        """Decide the oldest request and record it.

        An auto request with nothing to do (policy off, nothing in band, paused) is not
        recorded; one that could not read or write Redis is, FAILED.
        """
        request = self._inbox.pop(0)
        change = ConfigChange(
            request_id=request.request_id,
            action="apply" if request.action == "apply" else "revert",
            by=request.by,
            note=request.note,
            requested_at=request.requested_at,
            outcome=ChangeOutcome.REFUSED,
        )
        if not request.auto:
            reason = await self._authorize(request)
            if reason is not None:
                self._record(change.model_copy(update={"reason": reason}))
                return
        if request.action == "revert":
            self._record(await self._publish(request, change, None))
            return
        try:
            read = await workflow.execute_activity(
                ACTIVITY_READ_CONFIG,
                ReadConfigInput(dependency=self.dependency),
                result_type=ReadConfigResult,
                start_to_close_timeout=CONFIG_TIMEOUT,
                retry_policy=CONFIG_RETRY,
                summary=f"read config of {self.dependency}",
            )
        except ActivityError as exc:
            # Recorded for auto requests too: the record says the change was lost to an
            # outage, and the next batch offers it again (``last_auto_failed``).
            failed = f"could not read the version in force: {_cause(exc)}"
            self._record(
                change.model_copy(update={"outcome": ChangeOutcome.FAILED, "reason": failed})
            )
            return
        if request.auto and not read.band.auto:
            return  # the policy does not let the ledger apply advice itself
        version = read.version
        if request.auto and auto_paused(read.band, version):
            return  # a person's revert is in force: not redone by the ledger
        published = DependencySettings() if version is None else version.settings
        advice = self._advice_against(in_force(version), workflow.now())
        try:
            plan = plan_apply(advice, published, request.settings)
        except ValueError as exc:
            self._record(change.model_copy(update={"reason": str(exc)}))
            return
        if request.auto:
            plan = within_band(plan, read.band, self._held())
        change = change.model_copy(
            update={
                "previous_version": None if version is None else version.version,
                "before": published,
                "applied": sorted(plan.applied),
                "not_applied": dict(sorted(plan.not_applied.items())),
            }
        )
        if not plan.changes:
            if request.auto:
                return
            why = "nothing to apply: no live-appliable advice differs from the settings in force"
            self._record(
                change.model_copy(update={"outcome": ChangeOutcome.UNCHANGED, "reason": why})
            )
            return
        self._record(await self._publish(request, change, plan.settings, plan.applied))

    async def _authorize(self, request: _Request) -> str | None:
        """None when the policy allows the requester; else why not."""
        check = await workflow.execute_activity(
            ACTIVITY_AUTHORIZE_APPROVER,
            AuthorizeApproverInput(
                approver=request.by,
                workflow_id=workflow.info().workflow_id,
                first_run_id=workflow.info().first_execution_run_id,
                decision=request.action,
                signature=request.signature,
                signed_at=request.signed_at,
                used_signatures=list(self.used_signatures),
            ),
            result_type=AuthorizeApproverResult,
            start_to_close_timeout=CONFIG_TIMEOUT,
            retry_policy=AUTHORIZE_RETRY,
            summary=f"authorize {request.by}",
        )
        if not check.allowed:
            return check.reason or "refused by the worker policy"
        if check.signature_digest:
            self.used_signatures.append(check.signature_digest)
            del self.used_signatures[:-MAX_USED_SIGNATURES]
        return None

    async def _publish(
        self,
        request: _Request,
        change: ConfigChange,
        settings: DependencySettings | None,
        applied: dict[str, tuple[float | None, float]] | None = None,
    ) -> ConfigChange:
        """Publish ``settings`` (None: revert) and return ``change`` with its outcome."""
        if applied:
            what = ", ".join(f"{s} {_g(o)} -> {n:g}" for s, (o, n) in sorted(applied.items()))
        else:
            what = "revert of the version in force"
        why = f"{what}" + (f" ({request.note})" if request.note else "")
        try:
            result = await workflow.execute_activity(
                ACTIVITY_PUBLISH_CONFIG,
                PublishConfigInput(
                    dependency=self.dependency,
                    request_id=request.request_id,
                    by=request.by,
                    why=why,
                    settings=settings,
                ),
                result_type=PublishConfigResult,
                start_to_close_timeout=CONFIG_TIMEOUT,
                retry_policy=CONFIG_RETRY,
                summary=f"publish config of {self.dependency}",
            )
        except ActivityError as exc:
            reason = (
                f"Redis not written after {CONFIG_RETRY.maximum_attempts} attempts: {_cause(exc)}"
            )
            return change.model_copy(update={"outcome": ChangeOutcome.FAILED, "reason": reason})
        if result.refused or result.version is None:
            return change.model_copy(update={"reason": result.reason or "refused"})
        version = result.version
        update: dict[str, object] = {
            "outcome": ChangeOutcome.APPLIED,
            "reason": what,
            "version": version.version,
            "previous_version": version.previous,
            "after": version.settings,
        }
        if settings is None:
            update["before"] = result.undone
        return change.model_copy(update=update)

    def _record(self, change: ConfigChange) -> None:
        final = change.model_copy(update={"decided_at": workflow.now()})
        self.changes.append(final)
        del self.changes[:-MAX_CHANGES]
        self._on_record(final)


def _g(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}"


def _cause(exc: ActivityError) -> str:
    """The innermost message of an activity's failure (one line)."""
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    return str(inner).splitlines()[0] if str(inner) else type(inner).__name__


def change_line(change: ConfigChange) -> str:
    """One Markdown line of a change, for the ledger's current details."""
    at = "" if change.decided_at is None else f" at {change.decided_at:%Y-%m-%d %H:%M:%S} UTC"
    version = "" if change.version is None else f", version {change.version}"
    return (
        f"Latest change: {change.action} by {change.by}{at}: **{change.outcome.value}**"
        f"{version} ({change.reason})."
    )
