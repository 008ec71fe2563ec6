"""The health score and status of a set of breakers: pure, exact arithmetic.

Health score = (closed x 1 + half_open x 0.5) / total weight, in [0, 1]; 1 when nothing is
weighed (DESIGN "Names kept": the enhanced agent bus's formula). HEALTHY at or above the
degraded threshold (0.7), DEGRADED at or above the critical threshold (0.5), else CRITICAL;
compared exactly, as fractions.
"""

from __future__ import annotations

from enum import StrEnum
from fractions import Fraction


class SystemHealthStatus(StrEnum):
    """Overall health of a process (or fleet)."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"
    """A fleet member whose health snapshot expired: it published health (it is in
    ``af:health-members``) but its ``af:health:{instance}`` key is gone without a clean
    stop - the process died, hangs, or lost Redis. ``antifragile health`` lists it with
    this status. A process never reports UNKNOWN about itself."""


_HALF = Fraction(1, 2)
_ONE = Fraction(1)
_ZERO = Fraction(0)


def exact(value: float | int | Fraction) -> Fraction:
    """``value`` as the exact rational a person wrote: ``0.3`` is 3/10, not a binary double.

    The binary double of ``0.3`` is 0.299999999999999988897769753748... A float is read
    through its shortest round-trip decimal (``repr``), so weights and thresholds written
    as decimals compare exactly as written.
    """
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(repr(float(value)))


def exact_score(
    closed_weight: float | Fraction,
    half_open_weight: float | Fraction,
    total_weight: float | Fraction,
) -> Fraction:
    """The weighted health score as an exact fraction in [0, 1]; 1 when nothing is weighed."""
    total = exact(total_weight)
    if total <= 0:
        return _ONE
    score = (exact(closed_weight) + _HALF * exact(half_open_weight)) / total
    return max(_ZERO, min(_ONE, score))


def health_score(
    closed_weight: float | Fraction,
    half_open_weight: float | Fraction,
    total_weight: float | Fraction,
) -> float:
    """Weighted health score in [0, 1]; 1.0 when there is nothing to weigh.

    Computed exactly, then rounded once to the nearest float: four breakers of weight 0.3,
    two of them open, score exactly 0.5 (never 0.4999999999999999).
    """
    return float(exact_score(closed_weight, half_open_weight, total_weight))


def status_for_score(
    score: float | Fraction, degraded_threshold: float = 0.7, critical_threshold: float = 0.5
) -> SystemHealthStatus:
    """HEALTHY at or above ``degraded_threshold``, DEGRADED at or above ``critical_threshold``.

    The comparison is exact (see :func:`exact`): a score of 0.7 is HEALTHY at the 0.7
    threshold, and 0.5 is DEGRADED at 0.5.
    """
    s = exact(score)
    if s >= exact(degraded_threshold):
        return SystemHealthStatus.HEALTHY
    if s >= exact(critical_threshold):
        return SystemHealthStatus.DEGRADED
    return SystemHealthStatus.CRITICAL
