"""Pure decisions of a recovery: backoff, failed attempts, states, wake-ups, approval waits.

Backoff delays, what follows a failed attempt, legal states, when a ``health_changed``
wake-up is spent, and what a recovery awaiting approval does next.

RecoveryWorkflow calls these; they have no Temporal dependency and are unit tested alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from antifragile._fsm import TransitionTable
from antifragile.models.recovery import RecoveryPolicy, RecoveryState, RecoveryStrategy

S = RecoveryState

LEGAL_TRANSITIONS: TransitionTable[RecoveryState] = TransitionTable(
    "recovery",
    {
        S.SCHEDULED: frozenset({S.IN_PROGRESS, S.AWAITING_APPROVAL, S.FAILED, S.CANCELLED}),
        S.IN_PROGRESS: frozenset(
            {S.SUCCEEDED, S.WAITING_BACKOFF, S.AWAITING_APPROVAL, S.FAILED, S.CANCELLED}
        ),
        S.WAITING_BACKOFF: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLED}),
        # SCHEDULED again: approved, an orchestrated recovery waits for a slot before its next
        # attempt. SUCCEEDED: a watch probe found the service healthy while a person was awaited.
        S.AWAITING_APPROVAL: frozenset(
            {S.IN_PROGRESS, S.SCHEDULED, S.SUCCEEDED, S.FAILED, S.CANCELLED}
        ),
        S.SUCCEEDED: frozenset(),
        S.FAILED: frozenset(),
        S.CANCELLED: frozenset(),
    },
)
"""Every legal move of a recovery; anything else is a bug and is refused."""


def check_transition(current: RecoveryState, new: RecoveryState) -> RecoveryState:
    """Return ``new`` if moving there from ``current`` is legal.

    Raises:
        IllegalTransitionError: The move is not in :data:`LEGAL_TRANSITIONS`.
    """
    return LEGAL_TRANSITIONS.check(current, new)


def jitter_fraction(key: str, attempt: int) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` and ``attempt``.

    Derived from a hash so replays, retries and tests always see the same jitter.
    """
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def backoff_delay_ms(
    strategy: RecoveryStrategy, policy: RecoveryPolicy, failures: int, *, jitter_key: str = ""
) -> int:
    """Delay after the ``failures``-th failed attempt of a round (``failures`` >= 1).

    EXPONENTIAL_BACKOFF: ``initial × multiplier^(n-1)``; LINEAR_BACKOFF: ``initial × n``;
    both capped at ``max_delay_ms``. IMMEDIATE: 0. MANUAL: an approved round is spaced
    like EXPONENTIAL_BACKOFF. With jitter on, up to ``jitter_ratio`` of the delay is
    removed, deterministically per ``jitter_key`` and attempt.
    """
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    if strategy is RecoveryStrategy.IMMEDIATE:
        return 0
    if strategy is RecoveryStrategy.LINEAR_BACKOFF:
        nominal = float(policy.initial_delay_ms) * failures
    else:
        # Cap the exponent so huge attempt numbers cannot overflow a float.
        exponent = min(failures - 1, 1024)
        try:
            nominal = policy.initial_delay_ms * policy.backoff_multiplier**exponent
        except OverflowError:
            nominal = float(policy.max_delay_ms)
    delay = min(nominal, float(policy.max_delay_ms))
    if policy.jitter and delay > 0:
        delay -= delay * policy.jitter_ratio * jitter_fraction(jitter_key, failures)
    return int(delay)


class NextStep(StrEnum):
    """What a recovery does after a failed attempt."""

    BACKOFF = "backoff"
    ESCALATE = "escalate"


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """The decision after a failed attempt: back off for ``delay_ms``, or escalate.

    Attributes:
        step: Back off, or escalate to a person.
        delay_ms: How long to back off (0 when a wake-up cut it short).
        nominal_ms: The strategy's delay before any wake-up cut it short.
        cut_short: A ``health_changed`` is pending: the next attempt runs at once.
    """

    step: NextStep
    delay_ms: int = 0
    nominal_ms: int = 0
    cut_short: bool = False


def after_failed_attempt(
    strategy: RecoveryStrategy,
    policy: RecoveryPolicy,
    failures_in_round: int,
    *,
    jitter_key: str,
    wake_pending: bool = False,
) -> AfterFailure:
    """Decide what follows the ``failures_in_round``-th failure of the current round.

    A round is ``max_retry_attempts`` attempts; when it is used up, every strategy
    escalates to a person (AWAITING_APPROVAL), whose approval grants a fresh round.
    A pending wake-up (``wake_pending``: a healthy ``health_changed`` arrived after the
    last probe began) cuts the backoff to 0; it never skips an escalation.
    """
    if failures_in_round >= policy.max_retry_attempts:
        return AfterFailure(NextStep.ESCALATE)
    nominal = backoff_delay_ms(strategy, policy, failures_in_round, jitter_key=jitter_key)
    if wake_pending and nominal > 0:
        return AfterFailure(NextStep.BACKOFF, 0, nominal, cut_short=True)
    return AfterFailure(NextStep.BACKOFF, nominal, nominal)


@dataclass(slots=True)
class WakeTracker:
    """Remembers a healthy ``health_changed`` from whenever it arrives until a probe has run.

    A wake-up is spent only by a probe that *began after it arrived*: one that lands
    during hash validation or the action is answered by that attempt's probe; one that
    lands while a probe runs (which may already have looked) survives it and cuts the next
    backoff short. Counters, not a flag, so "arrived during the probe" is exact.

    Attributes:
        arrived: Healthy wake-ups received so far (this run, plus one carried over).
        spent: ``arrived`` as it was when the last finished probe began.
    """

    arrived: int = 0
    spent: int = 0

    @property
    def pending(self) -> bool:
        """A wake-up arrived that no probe has answered yet."""
        return self.arrived > self.spent

    def wake(self) -> None:
        """A healthy ``health_changed`` arrived."""
        self.arrived += 1

    def probe_started(self) -> int:
        """A probe begins; returns the token to pass to :meth:`probe_finished`."""
        return self.arrived

    def probe_finished(self, token: int) -> None:
        """The probe begun with ``token`` has run: wake-ups before it are spent."""
        self.spent = max(self.spent, token)

    def forget(self) -> None:
        """Drop every pending wake-up.

        This is how recoveries started before wake-ups were remembered behave (their
        histories must replay unchanged).
        """
        self.spent = self.arrived


MIN_WATCH_INTERVAL_MS = 10_000
"""Shortest spacing of watch probes while a person is awaited: a strategy with
``max_delay_ms`` 0 must not probe in a busy loop (each probe is history)."""


def watch_interval_ms(policy: RecoveryPolicy) -> int:
    """Spacing of the slow watch probe while a recovery awaits approval, in ms.

    The strategy's ``max_delay_ms``, but never below ``MIN_WATCH_INTERVAL_MS``.
    """
    return max(policy.max_delay_ms, MIN_WATCH_INTERVAL_MS)


class WaitStep(StrEnum):
    """What a recovery awaiting a person does next."""

    DECIDE = "decide"
    """Check the oldest decision (approve or reject) that arrived."""
    PROBE = "probe"
    """Run a watch probe: a wake-up is pending or the watch interval has passed."""
    SLEEP = "sleep"
    """Wait for a decision, a wake-up or the next watch probe (``sleep_ms``)."""


@dataclass(frozen=True, slots=True)
class AwaitingStep:
    """The next step of a recovery awaiting approval (``sleep_ms`` only for SLEEP)."""

    step: WaitStep
    sleep_ms: int = 0


def next_step_awaiting_approval(
    *, decisions_waiting: bool, wake_pending: bool, now_ms: int, next_watch_ms: int
) -> AwaitingStep:
    """Decide what a recovery awaiting approval does now.

    Decisions come first (a rejection ends it; an approval runs an attempt, whose probe
    answers a pending wake-up too); then a pending wake-up or a due watch probe runs the
    probe; else it sleeps until the next watch probe. Times are integers (ms), compared
    exactly: a watch probe due at ``now_ms`` runs now.
    """
    if decisions_waiting:
        return AwaitingStep(WaitStep.DECIDE)
    if wake_pending or now_ms >= next_watch_ms:
        return AwaitingStep(WaitStep.PROBE)
    return AwaitingStep(WaitStep.SLEEP, next_watch_ms - now_ms)


def idempotency_key(workflow_id: str, first_run_id: str, attempt: int) -> str:
    """The idempotency key of one attempt's action: ``{workflow id}/{first run id}/{attempt}``.

    The same for every retry of the action inside one attempt (a worker crash), different
    for the next attempt. The first run id (stable across continue-as-new) tells apart two
    recoveries of one service, which share the workflow id ``recovery-{service}``.
    """
    return f"{workflow_id}/{first_run_id}/{attempt}"
