"""What a call's ending means to a circuit breaker, and the sliding window counting it.

**Outcomes**, in this order (:func:`classify`): an exception of ``ignored_exceptions``
counts as nothing (a trial permit is freed, nothing is decided), and so does a refusal
by this same breaker of a call nested inside one of its own (another breaker's refusal
is a failure). An exception of ``failure_exceptions`` is a failure, and so is one
marked with :func:`count_as_failure` (an error a chaos fault injected,
:class:`~antifragile.inprocess.faults.InjectedFault`, whatever its type, or the
``TimeoutError`` of a :class:`~antifragile.inprocess.guard.Guard`'s own timeout). Any
other ``Exception`` means the dependency answered: a success. A ``BaseException`` that
is not an ``Exception`` (cancellation, ``GeneratorExit``, ``KeyboardInterrupt``) counts
as nothing - except a cancellation of a call already slower than
``slow_call_duration_s`` (the caller's own timeout gave up on a slow dependency),
which the breaker counts as a failure, as it does any slow call.

The :class:`SlidingWindow` holds the last ``window_size`` outcomes as a ring of bytes
(1 = failure) with running counts, so the failure rate is read in O(1).
"""

from __future__ import annotations

import asyncio

from antifragile.inprocess.breaker_state import CircuitOpenError

FAILURE = 0
"""The dependency failed: counted and checked against the thresholds."""
SUCCESS = 1
"""The dependency answered (returned, or raised an error that is not a failure)."""
NOTHING = 2
"""Says nothing about the dependency: only frees the call's permit."""
CANCELLED = 3
"""Nothing, unless the call was already slow when it was cancelled."""


def count_as_failure(exc: BaseException) -> BaseException:
    """Mark ``exc`` so every breaker counts it as a failure of the dependency.

    Whatever a breaker's ``failure_exceptions`` say (only ``ignored_exceptions`` still
    exclude it): for a guard's own timeout. An exception class can carry the same mark
    as a class attribute ``_breaker_failure = True`` (an injected chaos fault does).

    Returns:
        ``exc`` itself.
    """
    setattr(exc, "_breaker_failure", True)  # noqa: B010 - a mark on the instance
    return exc


def classify(
    exc: BaseException,
    failures: tuple[type[BaseException], ...],
    ignored: tuple[type[BaseException], ...],
    breaker: object,
) -> int:
    """What ``exc`` means to ``breaker`` (configured with ``failures`` and ``ignored``).

    Returns:
        :data:`FAILURE`, :data:`SUCCESS`, :data:`NOTHING` or :data:`CANCELLED`.
    """
    if isinstance(exc, ignored):
        return NOTHING
    if type(exc) is CircuitOpenError and _refused_by(exc, breaker):
        # This breaker refused a call nested inside one of its own (the outer call
        # holds the trial permit): no call was made, nothing about the dependency.
        return NOTHING
    if isinstance(exc, failures) or getattr(exc, "_breaker_failure", False):
        # _breaker_failure (count_as_failure): an injected error, or a guard's own
        # timeout - a failure of the dependency by definition, whatever its type.
        return FAILURE
    if isinstance(exc, Exception):
        return SUCCESS  # the dependency answered
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    return NOTHING  # interpreter exit, generator closed early by its consumer


def _refused_by(exc: CircuitOpenError, breaker: object) -> bool:
    # Found from the traceback (error path only) rather than stored on the error: a
    # refusal stays three attribute stores, and the error stays picklable. The
    # refusing frame is a method of the breaker that refused.
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_locals.get("self") is breaker


class SlidingWindow:
    """The last ``size`` outcomes (count-based), with running counts.

    Args:
        size: Outcomes held (>= 1).

    Attributes:
        calls: Outcomes held (at most ``size``).
        failures: Failures among them.
    """

    __slots__ = ("_pos", "_ring", "calls", "failures")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._pos = 0
        self.calls = 0
        self.failures = 0

    @property
    def full(self) -> bool:
        """True when the window holds ``size`` outcomes."""
        return self.calls == len(self._ring)

    def add(self, failed: bool) -> None:
        """Add one outcome, dropping the oldest when full."""
        ring = self._ring
        pos = self._pos
        if ring[pos]:
            self.failures -= 1
        if failed:
            ring[pos] = 1
            self.failures += 1
        else:
            ring[pos] = 0
        pos += 1
        self._pos = 0 if pos == len(ring) else pos
        if self.calls < len(ring):
            self.calls += 1

    def clear(self) -> None:
        """Forget every outcome."""
        ring = self._ring
        ring[:] = bytes(len(ring))
        self._pos = 0
        self.calls = 0
        self.failures = 0

    def resize(self, size: int) -> None:
        """Hold ``size`` outcomes from now on, keeping the most recent ones."""
        ring, calls, pos = self._ring, self.calls, self._pos
        ordered = ring[:calls] if calls < len(ring) else ring[pos:] + ring[:pos]
        kept = ordered[-size:] if len(ordered) > size else ordered
        new = bytearray(size)
        new[: len(kept)] = kept
        self._ring = new
        self.calls = len(kept)
        self._pos = len(kept) % size
        self.failures = sum(kept)
