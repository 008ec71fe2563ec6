"""The circuit breaker's vocabulary: states and their legal moves, the refusal error, events.

The events are what listeners and readers receive (a :class:`StateChange`, a
:class:`BreakerSnapshot`).

Shared by the breaker (:mod:`antifragile.inprocess.breaker`) and everything that
watches one (guards, health, the bridge, metrics), without importing the breaker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from antifragile._fsm import TransitionTable
from antifragile.errors import AntifragileError

Clock = Callable[[], float]
"""A callable returning monotonic seconds (``time.monotonic`` by default)."""


class CircuitState(StrEnum):
    """State of a circuit breaker."""

    CLOSED = "CLOSED"
    """Calls pass; failures are counted."""
    OPEN = "OPEN"
    """Calls are refused until ``open_duration_s`` has passed."""
    HALF_OPEN = "HALF_OPEN"
    """At most ``half_open_max_calls`` trial calls pass; success closes, failure reopens."""
    FORCED_OPEN = "FORCED_OPEN"
    """Opened by an operator or a chaos experiment; only ``reset()`` closes it."""


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN

LEGAL_TRANSITIONS: TransitionTable[CircuitState] = TransitionTable(
    "circuit",
    {
        _CLOSED: frozenset({_OPEN, _FORCED_OPEN}),
        _OPEN: frozenset({_HALF_OPEN, _FORCED_OPEN, _CLOSED}),
        _HALF_OPEN: frozenset({_CLOSED, _OPEN, _FORCED_OPEN}),
        _FORCED_OPEN: frozenset({_CLOSED}),
    },
)
"""Every move a breaker may make; anything else is refused (``IllegalTransitionError``)."""


class CircuitOpenError(AntifragileError):
    """A call was refused because the breaker is open (or half-open and full).

    Attributes:
        name: The breaker's name.
        state: The state that refused the call.
        retry_after_s: Seconds until the breaker lets a trial call through, if known.
    """

    def __init__(self, name: str, state: CircuitState, retry_after_s: float | None) -> None:
        # A refused call is the hot path of an open breaker (a busy service may be
        # refused thousands of times a second), so the message is only formatted when
        # someone reads it, and BaseException.__new__ has already stored the arguments
        # as ``args`` (which also keeps the error picklable): three attribute stores.
        self.name = name
        self.state = state
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        hint = f", retry in {self.retry_after_s:.3f}s" if self.retry_after_s is not None else ""
        return f"circuit {self.name!r} is {self.state.value}{hint}"


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a state-change listener receives.

    Attributes:
        name: Breaker name.
        old: State before.
        new: State after.
        reason: Why (``consecutive failures``, ``failure rate``, ``open duration elapsed``,
            ``trial call succeeded``, ``forced``, ``reset`` ...).
        at: Breaker clock reading at the change.
    """

    name: str
    old: CircuitState
    new: CircuitState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A side-effect-free reading of one breaker (safe for metrics and health).

    Attributes:
        name: Breaker name.
        state: Current state (as stored: never advanced by the read).
        generation: Transitions so far; the token of calls admitted now while CLOSED.
        consecutive_failures: Failures since the last success.
        calls_in_window: Outcomes the sliding window holds.
        failures_in_window: Failures among them.
        retry_after_s: Seconds until an OPEN breaker admits a trial (0.0 when due);
            None unless OPEN.
        half_open_in_flight: Trial permits held in the current HALF_OPEN round.
    """

    name: str
    state: CircuitState
    generation: int
    consecutive_failures: int
    calls_in_window: int
    failures_in_window: int
    retry_after_s: float | None
    half_open_in_flight: int

    @property
    def failure_rate(self) -> Fraction:
        """Exact failure share of the window (0 when empty)."""
        if not self.calls_in_window:
            return Fraction(0)
        return Fraction(self.failures_in_window, self.calls_in_window)


StateListener = Callable[[StateChange], Any]
"""A sync function or coroutine function receiving a :class:`StateChange`."""
