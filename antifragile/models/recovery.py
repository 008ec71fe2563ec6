"""Contracts of the recovery workflow: input, result, signals, query, activities."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator, model_validator

from antifragile.models.common import (
    ApprovalRecord,
    ProbeURL,
    ServiceName,
    StrictModel,
    check_action,
)
from antifragile.settings import DEFAULT_CONSTITUTIONAL_HASH


class RecoveryStrategy(StrEnum):
    """How a recovery spaces its attempts."""

    EXPONENTIAL_BACKOFF = "exponential_backoff"
    LINEAR_BACKOFF = "linear_backoff"
    IMMEDIATE = "immediate"
    MANUAL = "manual"
    ADAPTIVE = "adaptive"
    """Opt-in: attempts at the times the dependency's learned times to recover make
    cheapest (its ledger ``profile-{service}``); exponential backoff until it knows enough
    (``antifragile.recovery.logic.adaptive_schedule``)."""


class RecoveryState(StrEnum):
    """Where a recovery is; also the value of the ``AfState`` search attribute."""

    SCHEDULED = "SCHEDULED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    IN_PROGRESS = "IN_PROGRESS"
    WAITING_BACKOFF = "WAITING_BACKOFF"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED."""
        return self in (RecoveryState.SUCCEEDED, RecoveryState.FAILED, RecoveryState.CANCELLED)


class RecoveryPolicy(StrictModel):
    """Retry limits and backoff shape of one recovery.

    Attributes:
        max_retry_attempts: Failed attempts before an automatic strategy escalates to
            manual approval; also the attempts one approval grants. Default 5.
        backoff_multiplier: Growth factor of EXPONENTIAL_BACKOFF. Default 2.0.
        initial_delay_ms: Delay after the first failed attempt. Default 1000.
        max_delay_ms: Upper bound of any delay. Default 60000.
        jitter: Spread delays by up to ``jitter_ratio`` below the nominal value.
            Default off. Deterministic: the same service and attempt always get the
            same delay, so replays and tests are exact.
        jitter_ratio: Largest share of a delay jitter may remove. Default 0.2.
    """

    max_retry_attempts: int = Field(default=5, ge=1, le=1000)
    backoff_multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    initial_delay_ms: int = Field(default=1000, ge=0, le=86_400_000)
    max_delay_ms: int = Field(default=60000, ge=0, le=86_400_000)
    jitter: bool = False
    jitter_ratio: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> RecoveryPolicy:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError(
                f"max_delay_ms ({self.max_delay_ms}) must be >= initial_delay_ms "
                f"({self.initial_delay_ms})"
            )
        return self


class AttemptRecord(StrictModel):
    """One attempt: action then probe.

    Attributes:
        number: 1-based attempt number across the whole recovery.
        started_at: When the attempt began (workflow time).
        duration_ms: Action plus probe time.
        outcome: ``healthy``, ``unhealthy`` or ``action_failed``.
        detail: What the probe or action reported.
    """

    number: int
    started_at: datetime
    duration_ms: int
    outcome: str
    detail: str = ""


class RecoveryResume(StrictModel):
    """State a recovery carries across continue-as-new (never set by callers)."""

    attempts: list[AttemptRecord] = Field(default_factory=list)
    decisions: list[ApprovalRecord] = Field(default_factory=list)
    attempts_in_round: int = 0
    rounds_granted: int = 0
    awaiting_approval: bool = False
    priority: int = 1
    waiting_reported: bool = False
    """The orchestrator was told this recovery waits for a person (send it once)."""
    wake_pending: bool = False
    """A ``health_changed`` arrived that no probe has answered yet."""
    used_signatures: list[str] = Field(default_factory=list)
    """Digests of signed decisions already accepted (each signature is usable once)."""
    watch_probes: int = 0
    """Watch probes run while awaiting approval, over all runs."""


class RecoveryRequest(StrictModel):
    """Input of RecoveryWorkflow: what to recover and how.

    Attributes:
        service: Service name; the workflow id is ``recovery-{service}``.
        strategy: How attempts are spaced. Default EXPONENTIAL_BACKOFF.
        policy: Retry limits and backoff shape.
        priority: Lower is more urgent. Default 1.
        probe: URL that proves the service is back (tcp, http(s), redis).
        probe_timeout_s: How long a probe may take. Default 5.
        action: What runs before each probe: ``none``, ``webhook:NAME`` (a webhook of the
            worker policy, ``recovery.webhooks``; plain ``webhook`` is ``webhook:default``)
            or ``command:NAME`` (a command of the worker policy). Never a URL: a webhook's
            URL and headers (and their secrets) stay in the worker.
        constitutional_hash: Must match the worker's; checked before every action.
        reason: Why the recovery was requested.
        requested_by: Who or what requested it.
        detected_at: When the outage was noticed, if before the request: the wall-clock
            time the service's breaker opened (set by the runtime bridge). A ledger counts
            the outage's time to recover from it (else from the recovery's start, which
            comes later by the signal's and the fleet queue's delay). None: unknown.
        resume: Internal: state carried across continue-as-new.
    """

    service: ServiceName
    strategy: RecoveryStrategy = RecoveryStrategy.EXPONENTIAL_BACKOFF
    policy: RecoveryPolicy = Field(default_factory=RecoveryPolicy)
    priority: int = Field(default=1, ge=0, le=1000)
    probe: ProbeURL
    probe_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    action: str = "none"
    constitutional_hash: str = DEFAULT_CONSTITUTIONAL_HASH
    reason: str = Field(default="", max_length=2000)
    requested_by: str = Field(default="", max_length=200)
    detected_at: datetime | None = None
    resume: RecoveryResume | None = None

    @field_validator("action")
    @classmethod
    def _check_action(cls, value: str, info: ValidationInfo) -> str:
        return check_action(value, info)


class JoinSignal(StrictModel):
    """Payload of ``join``: another request for a service already recovering.

    Attributes:
        priority: The new request's priority; the recovery keeps the more urgent one.
        reason: Why it was requested again.
        requested_by: Who requested it.
    """

    priority: int = Field(default=1, ge=0, le=1000)
    reason: str = ""
    requested_by: str = ""


class RecoveryStatus(StrictModel):
    """Result of the ``status`` query (and the body of a recovery's result)."""

    service: str
    state: RecoveryState
    strategy: RecoveryStrategy
    priority: int
    probe: str
    attempt: int
    """Attempts made so far, across all rounds."""
    max_attempts: int
    """Attempts allowed in the current round."""
    attempts_in_round: int
    next_attempt_at: datetime | None = None
    waiting_for: str = ""
    last_error: str = ""
    attempts: list[AttemptRecord] = Field(default_factory=list)
    decisions: list[ApprovalRecord] = Field(default_factory=list)
    joins: int = 0
    reason: str = ""
    requested_by: str = ""
    watch_probes: int = 0
    """Probes run while awaiting approval (no action; they are not attempts)."""
    recovered_while_awaiting_approval: bool = False
    """It ended SUCCEEDED because a watch probe found the service healthy while a person
    was awaited: nobody needs to act."""
    orchestrated: bool = False
    """Started by the orchestrator: it holds a slot only while it runs attempts."""


class RecoveryResult(StrictModel):
    """Result of RecoveryWorkflow (carried in the failure details when it FAILED)."""

    service: str
    state: RecoveryState
    attempts: int
    message: str
    status: RecoveryStatus


# --- activities -----------------------------------------------------------------------


class ValidateHashInput(StrictModel):
    """Input of ``validate_constitutional_hash``."""

    constitutional_hash: str
    context: str = ""


class ValidateHashResult(StrictModel):
    """Result of ``validate_constitutional_hash`` (a mismatch raises instead)."""

    valid: bool


class RecoveryActionInput(StrictModel):
    """Input of ``run_recovery_action``."""

    service: str
    action: str
    attempt: int
    reason: str = ""
    idempotency_key: str = ""
    """Same for every retry of this attempt's action, new for the next attempt; passed to
    commands as ``ANTIFRAGILE_IDEMPOTENCY_KEY`` and to webhooks as ``Idempotency-Key``."""


class RecoveryActionResult(StrictModel):
    """Result of ``run_recovery_action``: ``ok`` false counts as a failed attempt."""

    ok: bool
    detail: str = ""
    duration_ms: int = 0


class ProbeInput(StrictModel):
    """Input of ``probe_service``."""

    service: str
    url: str
    timeout_s: float = 5.0


class ProbeResult(StrictModel):
    """Result of ``probe_service``: unhealthy is a result, not an error."""

    healthy: bool
    detail: str = ""
    latency_ms: float = 0.0


class AuthorizeApproverInput(StrictModel):
    """Input of ``authorize_approver``: is this decision allowed by the worker policy?

    Attributes:
        approver: The name the decision was sent under.
        workflow_id: Workflow that received it ("" in histories before signed approvals).
        first_run_id: That workflow's first run id (signatures bind it).
        decision: ``"approved"`` or ``"rejected"``.
        signature: Hex signature sent with the decision; "" when unsigned.
        signed_at: Signing time sent with the decision.
        used_signatures: Digests of signatures the workflow already accepted (usable once).
    """

    approver: str
    workflow_id: str = ""
    first_run_id: str = ""
    decision: str = ""
    signature: str = ""
    signed_at: datetime | None = None
    used_signatures: list[str] = Field(default_factory=list)


class AuthorizeApproverResult(StrictModel):
    """Result of ``authorize_approver``.

    Attributes:
        allowed: The decision may take effect.
        reason: Why it was refused; "" when allowed.
        signature_digest: When a signed decision was allowed, the digest the workflow must
            remember so the same signature is refused next time; else "".
    """

    allowed: bool
    reason: str = ""
    signature_digest: str = ""


class LearnedRecoveriesInput(StrictModel):
    """Input of ``read_learned_recoveries``: whose ledger to read.

    Attributes:
        dependency: The ledger's dependency (a recovery reads ``profile-{service}``).
        timeout_s: How long the ledger query may take, s. Default 3 (a ledger whose
            task queue has no worker never answers; the recovery must not wait on it).
    """

    dependency: str
    timeout_s: float = Field(default=3.0, gt=0.0, le=60.0)


class LearnedRecoveries(StrictModel):
    """Result of ``read_learned_recoveries``: the ledger's verified times to recover.

    Attributes:
        dependency: Whose ledger.
        recover_us: Verified times to recover, µs, the most recent ones (at most
            ``MAX_LEARNED_RECOVERIES``), in the order they happened.
        found: The ledger exists (False: nothing was ever observed).
        note: Why nothing was read (ledger missing or unreachable), else "".
    """

    dependency: str
    recover_us: list[int] = Field(default_factory=list)
    found: bool = False
    note: str = ""
