"""Contracts of the recovery orchestrator's queue: limits, carried state, updates, query.

The orchestrator (workflow id ``recovery-orchestrator``) is a durable, fleet-wide priority
queue in front of RecoveryWorkflow: a recovery runs only while it holds one of
``max_concurrent`` slots. The intake that batches fire-and-forget requests has its
contracts in :mod:`antifragile.models.recovery_intake`; the slot protocol between a
recovery and the orchestrator (its signals and the watcher of closes) in
:mod:`antifragile.models.slots`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from antifragile.models.common import ServiceName, StrictModel
from antifragile.models.recovery import RecoveryRequest


class OrchestratorLimits(StrictModel):
    """Limits and tuning of the orchestrator, read from the worker (never from a request).

    The first three come from the worker policy's ``recovery`` section; the rest are
    tuning with defaults that suit a fleet (tests shorten them).

    Attributes:
        max_concurrent: Recoveries that may run at once (slots). Default 5.
        max_admissions_per_minute: New admissions in any sliding 60 s window. Default 60.
        retry_budget: Share of failed attempts (fleet-wide, over the budget window) above
            which new admissions pause: then one new recovery at a time is admitted (a
            probe admission). Default 0.1.
        budget_window_s: How far back the retry budget looks (sliding). Default 300.
        budget_min_samples: Attempts needed in the window before the budget can pause
            anything, so one early failure does not stop the fleet. Default 10.
        budget_cooldown_s: Only for orchestrator runs recorded before the attempt budget
            (they counted finished recoveries and paused for this long). Default 60.
        aging_interval_s: Waiting this long is worth one priority level (0: no aging).
            Default 600.
        reconcile_interval_s: How often the orchestrator asks the server which of its
            running recoveries have closed, as a safety net behind the close reports it
            gets for its children. Default 60.
        max_history_events: Continue-as-new once the run's history reaches this many
            events (or when the server suggests it, whichever comes first). A storm's
            signals make events large, and a worker that lost its cache must replay the
            whole run within the workflow task timeout (a 4,600-event, 2 MB run took
            5.8 s on 2 cores). Default 2,000.
        max_waiting: Requests the queue holds; more are refused. Default 50,000.
    """

    max_concurrent: int = Field(default=5, ge=1, le=10_000)
    max_admissions_per_minute: int = Field(default=60, ge=1)
    retry_budget: float = Field(default=0.1, gt=0.0, le=1.0)
    budget_window_s: float = Field(default=300.0, gt=0.0)
    budget_min_samples: int = Field(default=10, ge=1)
    budget_cooldown_s: float = Field(default=60.0, gt=0.0)
    aging_interval_s: float = Field(default=600.0, ge=0.0)
    reconcile_interval_s: float = Field(default=60.0, gt=0.0)
    max_history_events: int = Field(default=2_000, ge=50)
    max_waiting: int = Field(default=50_000, ge=1)


class WaitingRecovery(StrictModel):
    """A request waiting for a slot.

    Attributes:
        request: What to recover (the first request; later ones are merged into it).
        priority: Current priority (lower is more urgent); merges keep the more urgent.
        seq: Arrival number; ties of rank are first come, first served.
        enqueued_at: When it first arrived (workflow time); aging counts from here.
        merges: How many later requests were merged into this one.
        resumed: True for a recovery that already runs and was approved after waiting for
            a person: its admission signals ``slot_granted`` instead of starting a child.
        resume_index: Admission number of that recovery (0: unknown to this orchestrator).
    """

    request: RecoveryRequest
    priority: int
    seq: int
    enqueued_at: datetime
    merges: int = 0
    resumed: bool = False
    resume_index: int = 0

    @property
    def service(self) -> str:
        """The service this request recovers."""
        return self.request.service


class RunningRecovery(StrictModel):
    """A recovery holding a slot.

    Attributes:
        service: The service being recovered.
        workflow_id: ``recovery-{service}``.
        run_id: First run id of the recovery (None until its start is confirmed, or when
            the orchestrator adopted a recovery someone else started).
        index: Admission number (identifies this holder of the service's slot).
        priority: Priority at admission.
        seq: Arrival number of its request.
        enqueued_at: When its request arrived.
        admitted_at: When it got its slot.
        request: The request it runs (None in runs recorded before it was kept); a later
            request for the same service is compared with it.
        resumed: True when the slot was granted to a recovery resuming after approval.
        probe: True for the probe admission of the current retry-budget pause (the one
            new recovery admitted at a time while the pause holds; see
            :mod:`antifragile.orchestrator.admission_control`). Cleared when the pause ends.
    """

    service: str
    workflow_id: str
    run_id: str | None = None
    index: int = 0
    priority: int
    seq: int
    enqueued_at: datetime
    admitted_at: datetime
    request: RecoveryRequest | None = None
    resumed: bool = False
    probe: bool = False


class AwaitingRecovery(StrictModel):
    """A recovery that waits for a person: it still runs, and holds no slot.

    Attributes:
        service: The service being recovered.
        workflow_id: ``recovery-{service}``.
        run_id: First run id of the recovery, when known.
        index: Admission number it held its slot under (0: not admitted by this
            orchestrator); a close report about it names this number.
        priority: Its priority; on approval it is queued again at it.
        seq: Arrival number of its first request: on approval it goes ahead of every
            request of the same priority that arrived after it.
        enqueued_at: When its first request arrived.
        admitted_at: When it last got a slot (None: never by this orchestrator).
        since: When it began waiting for a person.
        reason: Why it waits (from the recovery).
        request: The request it runs, when known.
    """

    service: str
    workflow_id: str
    run_id: str | None = None
    index: int = 0
    priority: int
    seq: int
    enqueued_at: datetime
    admitted_at: datetime | None = None
    since: datetime
    reason: str = ""
    request: RecoveryRequest | None = None


class RecoveryOutcome(StrEnum):
    """How a recovery that held a slot ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    TIMED_OUT = "timed_out"
    NOT_STARTED = "not_started"
    """The child could not be started (not a recovery attempt)."""
    GONE = "gone"
    """The workflow no longer exists (e.g. removed by retention)."""

    @property
    def counts_as_failure(self) -> bool:
        """True when the retry budget counts this as a failed attempt.

        Cancellation and termination are a person's decision, not evidence that
        recovering is failing, so they return the slot without touching the budget.
        """
        return self in (RecoveryOutcome.FAILED, RecoveryOutcome.TIMED_OUT)

    @property
    def counts_for_budget(self) -> bool:
        """True when the outcome is a sample of the retry budget at all."""
        return self in (
            RecoveryOutcome.SUCCEEDED,
            RecoveryOutcome.FAILED,
            RecoveryOutcome.TIMED_OUT,
        )


class BudgetSample(StrictModel):
    """One attempt, as the retry budget remembers it.

    In runs recorded before the attempt budget: one finished recovery.
    """

    at_ms: int
    failed: bool


class AdmissionRecord(StrictModel):
    """One admission, kept (the most recent ones) for the query and for audits.

    Attributes:
        index: 1-based admission number over the orchestrator's whole life.
        service: Admitted service.
        priority: Its priority at admission.
        rank: Its queue rank at admission (lower first; see :mod:`antifragile.orchestrator.queue`).
        seq: Its arrival number.
        seen_seq: The highest arrival number the orchestrator had seen at admission:
            every request with ``seq <= seen_seq`` still waiting then should rank after it.
        enqueued_at: When it arrived.
        admitted_at: When it got its slot.
        running: Recoveries running right after this admission (never above the cap).
    """

    index: int
    service: str
    priority: int
    rank: int
    seq: int
    seen_seq: int
    enqueued_at: datetime
    admitted_at: datetime
    running: int


class OrchestratorCarry(StrictModel):
    """Everything the orchestrator carries across continue-as-new.

    Attributes:
        waiting: The queue, in admission order.
        running: Recoveries holding a slot; the next run watches them to the end.
        awaiting: Recoveries waiting for a person (no slot); watched to the end too.
        admission_times_ms: Admissions of the last minute (rate limit).
        budget_samples: Finished recoveries in the budget window (retry budget).
        budget_reset_ms: Samples before this instant no longer count (set when a pause
            starts, so a cool-down is followed by fresh evidence).
        paused_until_ms: Retry-budget pause in force until this instant, if any.
        pause_reason: Why admissions are paused.
        next_seq: Next arrival number.
        admitted_total: Admissions so far.
        finished: Finished recoveries by outcome.
        recent_admissions: The most recent admissions.
        runs: Runs of the orchestrator so far (this one included).
    """

    waiting: list[WaitingRecovery] = Field(default_factory=list)
    running: list[RunningRecovery] = Field(default_factory=list)
    awaiting: list[AwaitingRecovery] = Field(default_factory=list)
    admission_times_ms: list[int] = Field(default_factory=list)
    budget_samples: list[BudgetSample] = Field(default_factory=list)
    budget_reset_ms: int = 0
    paused_until_ms: int | None = None
    pause_reason: str = ""
    next_seq: int = 1
    admitted_total: int = 0
    finished: dict[str, int] = Field(default_factory=dict)
    recent_admissions: list[AdmissionRecord] = Field(default_factory=list)
    runs: int = 1


class OrchestratorInput(StrictModel):
    """Input of RecoveryOrchestratorWorkflow.

    Clients start it with the defaults (``OrchestratorInput()``); continue-as-new fills
    in the carried state. A large carry travels compressed in ``packed_carry`` so the
    input stays far below Temporal's 2 MB payload limit even with 10,000 queued.

    Attributes:
        carry: State of the previous run, readable in the UI (small queues).
        packed_carry: The same, zlib-compressed JSON in base64 (large queues).
        limits: Limits of the previous run, used until the worker's are loaded.
    """

    carry: OrchestratorCarry | None = None
    packed_carry: str | None = None
    limits: OrchestratorLimits | None = None


# --- messages -------------------------------------------------------------------------


class EnqueueRecovery(StrictModel):
    """Payload of the ``enqueue`` update and the ``request_recovery`` signal."""

    request: RecoveryRequest


class EnqueueBatch(StrictModel):
    """Payload of the ``request_recoveries`` signal: requests in arrival order.

    Fire-and-forget requests from one process are sent together (see
    :func:`~antifragile.recovery.client.request_recovery`), so a storm costs the
    orchestrator a few signals instead of one per service.
    """

    requests: list[RecoveryRequest] = Field(min_length=1, max_length=1000)


class RequestState(StrEnum):
    """What became of a recovery request."""

    QUEUED = "queued"
    """New in the queue."""
    MERGED = "merged"
    """Merged into a request for the same service already waiting."""
    RUNNING = "running"
    """The service's recovery already holds a slot; the request joined it."""
    JOINED = "joined"
    """A recovery of the service was already running outside the queue; it was joined."""
    ACCEPTED = "accepted"
    """Handed to the orchestrator as a signal (storms, the bridge); position not known."""
    AWAITING_APPROVAL = "awaiting_approval"
    """The service's recovery waits for a person (it holds no slot); the request joined it."""


class IgnoredSetting(StrictModel):
    """A setting of a request that joined (or merged into) an existing recovery, not applied.

    The existing recovery keeps its own.

    Attributes:
        setting: Which setting (e.g. ``strategy``, ``probe``, ``max_attempts``).
        requested: The value the request asked for.
        kept: The value the existing recovery keeps.
    """

    setting: str
    requested: str
    kept: str


class EnqueueResult(StrictModel):
    """Result of ``enqueue`` (and of ``request_recovery`` on the client side).

    Attributes:
        service: The service.
        state: Queued, merged, running or joined.
        priority: The priority the request now has.
        position: 1-based place in the queue (0 when running).
        waiting: Requests waiting in total.
        running: Recoveries holding a slot.
        max_concurrent: Slots.
        paused_reason: Why admissions are paused or throttled, if they are.
        previous_priority: For a request that joined or merged: the priority the
            existing recovery (or request) had before (None otherwise).
        ignored: For a request that joined or merged: its settings that differ from the
            existing recovery's, which keeps its own (one recovery per service).
    """

    service: str
    state: RequestState
    priority: int
    position: int = 0
    waiting: int = 0
    running: int = 0
    max_concurrent: int = 0
    paused_reason: str = ""
    previous_priority: int | None = None
    ignored: list[IgnoredSetting] = Field(default_factory=list)


class Reprioritise(StrictModel):
    """Payload of the ``reprioritise`` update: change a waiting request's priority."""

    service: ServiceName
    priority: int = Field(ge=0, le=1000)


class RemoveRecovery(StrictModel):
    """Payload of the ``remove`` update: drop a waiting request."""

    service: ServiceName
    reason: str = Field(default="", max_length=2000)


class QueueChangeResult(StrictModel):
    """Result of ``reprioritise`` and ``remove``.

    Attributes:
        service: The service.
        priority: Its priority now (for ``remove``: the priority it had).
        position: Its place now (0 after ``remove``).
        waiting: Requests waiting in total.
    """

    service: str
    priority: int
    position: int = 0
    waiting: int = 0


# --- query ----------------------------------------------------------------------------


class QueueQuery(StrictModel):
    """Optional argument of the ``queue`` query.

    Attributes:
        service: Also report where this service stands (``QueueView.lookup``), however
            long the queue is.
    """

    service: str | None = None


class RunningView(StrictModel):
    """A running recovery as the ``queue`` query shows it.

    ``running_s`` and ``waited_s`` are as of ``QueueView.as_of`` (the orchestrator's last
    workflow task); readers compute durations from the timestamps at read time.
    """

    service: str
    workflow_id: str
    run_id: str | None
    priority: int
    enqueued_at: datetime
    admitted_at: datetime
    running_s: float
    waited_s: float
    resumed: bool = False
    probe: bool = False
    """Admitted as the probe admission of a retry-budget pause (one at a time)."""


class AwaitingView(StrictModel):
    """A recovery waiting for a person, as the ``queue`` query shows it (no slot held).

    Attributes:
        since: When it began waiting for a person.
        reason: Why it waits.
    """

    service: str
    workflow_id: str
    priority: int
    since: datetime
    reason: str = ""


class BudgetView(StrictModel):
    """The retry budget as of the query.

    Attributes:
        failed: Failed attempts in the window.
        attempts: Attempts in the window.
        window_s: The sliding window.
        retry_budget: The limit (failed share above which new admissions pause).
        min_samples: Attempts needed before the budget can pause anything.
    """

    failed: int
    attempts: int
    window_s: float
    retry_budget: float
    min_samples: int


class ServiceInQueue(StrictModel):
    """Where one service stands in the orchestrator (``QueueView.lookup``).

    Attributes:
        service: The service.
        state: ``waiting``, ``running``, ``awaiting_approval`` or ``unknown``.
        position: 1-based place in the queue while waiting (0 otherwise).
        priority: Its priority (0 when unknown).
        since: When it arrived (waiting), got its slot (running) or began waiting for a
            person (awaiting_approval).
        resumed: Waiting again for a slot after approval.
    """

    service: str
    state: str
    position: int = 0
    priority: int = 0
    since: datetime | None = None
    resumed: bool = False


class WaitingView(StrictModel):
    """A waiting request as the ``queue`` query shows it.

    Attributes:
        position: 1-based place in the queue.
        effective_priority: Priority after aging (see :mod:`antifragile.orchestrator.queue`).
    """

    position: int
    service: str
    priority: int
    effective_priority: float
    enqueued_at: datetime
    waited_s: float
    merges: int
    requested_by: str
    reason: str
    resumed: bool = False


class QueueView(StrictModel):
    """Result of the ``queue`` query.

    Attributes:
        running: Recoveries holding a slot.
        waiting: The first ``MAX_WAITING_VIEW`` waiting requests, in admission order.
        waiting_total: All waiting requests.
        max_concurrent: Slots.
        paused: True while the retry budget holds admissions.
        paused_until: End of the retry-budget pause.
        pause_reason: Why admissions are paused or throttled ("" when they are not).
        limits: The limits in force.
        admitted_total: Admissions so far.
        finished: Finished recoveries by outcome.
        recent_admissions: The most recent admissions, oldest first.
        runs: Runs of the orchestrator (continue-as-new count + 1).
        history_length: Events in the current run's history.
        awaiting_approval: Recoveries waiting for a person; they hold no slot.
        as_of: The orchestrator's time of this answer (its last workflow task); durations
            in the view are as of then, readers compute their own from the timestamps.
        throttle_reason: Why admissions wait for the rate limit ("" when they do not).
        budget: The retry budget's window as of ``as_of``.
        lookup: Where ``QueueQuery.service`` stands, when asked.
    """

    running: list[RunningView]
    waiting: list[WaitingView]
    waiting_total: int
    max_concurrent: int
    paused: bool
    paused_until: datetime | None = None
    pause_reason: str = ""
    limits: OrchestratorLimits
    admitted_total: int
    finished: dict[str, int]
    recent_admissions: list[AdmissionRecord]
    runs: int
    history_length: int
    awaiting_approval: list[AwaitingView] = Field(default_factory=list)
    as_of: datetime | None = None
    throttle_reason: str = ""
    budget: BudgetView | None = None
    lookup: ServiceInQueue | None = None


# --- activities -----------------------------------------------------------------------


class LoadLimitsInput(StrictModel):
    """Input of ``load_orchestrator_limits`` (nothing: the worker's policy decides)."""
