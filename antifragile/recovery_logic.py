"""Pure decisions of a recovery: backoff delays, what follows a failed attempt, legal states.

RecoveryWorkflow calls these; they have no Temporal dependency and are unit tested alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from antifragile.models.recovery import RecoveryPolicy, RecoveryState, RecoveryStrategy

S = RecoveryState

LEGAL_TRANSITIONS: dict[RecoveryState, frozenset[RecoveryState]] = {
    S.SCHEDULED: frozenset({S.IN_PROGRESS, S.AWAITING_APPROVAL, S.FAILED, S.CANCELLED}),
    S.IN_PROGRESS: frozenset(
        {S.SUCCEEDED, S.WAITING_BACKOFF, S.AWAITING_APPROVAL, S.FAILED, S.CANCELLED}
    ),
    S.WAITING_BACKOFF: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLED}),
    S.AWAITING_APPROVAL: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
"""Every legal move of a recovery; anything else is a bug and is refused."""


class IllegalTransitionError(RuntimeError):
    """A state change the table above does not allow."""


def check_transition(current: RecoveryState, new: RecoveryState) -> RecoveryState:
    """Return ``new`` if moving there from ``current`` is legal, else raise."""
    if new not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransitionError(f"recovery cannot move from {current} to {new}")
    return new


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
    """The decision after a failed attempt: back off for ``delay_ms``, or escalate."""

    step: NextStep
    delay_ms: int = 0


def after_failed_attempt(
    strategy: RecoveryStrategy, policy: RecoveryPolicy, failures_in_round: int, *, jitter_key: str
) -> AfterFailure:
    """Decide what follows the ``failures_in_round``-th failure of the current round.

    A round is ``max_retry_attempts`` attempts; when it is used up, every strategy
    escalates to a person (AWAITING_APPROVAL), whose approval grants a fresh round.
    """
    if failures_in_round >= policy.max_retry_attempts:
        return AfterFailure(NextStep.ESCALATE)
    return AfterFailure(
        NextStep.BACKOFF,
        backoff_delay_ms(strategy, policy, failures_in_round, jitter_key=jitter_key),
    )
