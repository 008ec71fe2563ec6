"""Circuit breaker configuration: thresholds, exact failure rates, validation.

A :class:`CircuitBreakerConfig` is immutable and validated on construction; a breaker
replaces its configuration whole (:meth:`CircuitBreaker.reconfigure`).

**Exact thresholds.** ``failure_rate_threshold`` is held as a fraction: the decimal a
float stands for, to 15 significant digits (``0.55`` is 11/20, never
0.55000000000000004441; ``0.1 + 0.2`` is 3/10; see :func:`exact_rate`), and the window
opens the breaker when ``failures * den >= num * calls`` (integers).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from antifragile.errors import ConfigError


def exact_rate(value: float | int | str | Decimal | Fraction) -> Fraction:
    """The exact fraction a threshold means: ``0.55`` -> 11/20, ``"7/25"`` -> 7/25.

    A float is read as the decimal it stands for, rounded to 15 significant digits - the
    precision every float keeps (any decimal of up to 15 significant digits converts to
    a float and back unchanged) - never as its binary approximation. So ``0.55`` is
    11/20, and a threshold computed in floats means the decimal it approximates:
    ``0.1 + 0.2`` (0.30000000000000004) is 3/10, ``0.7 * 0.8`` (0.5599999999999999) is
    14/25. For more digits than that, pass a string, ``Decimal`` or ``Fraction``.

    Raises:
        ValueError: not a finite number.
        TypeError: not a number or a string.
    """
    if isinstance(value, bool):
        raise TypeError("a threshold is a number, not a bool")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(format(value, ".15g"))
    if isinstance(value, int | Decimal | str):
        return Fraction(value)
    raise TypeError(f"a threshold is a number or a decimal string, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Thresholds of one circuit breaker. Immutable; validated on construction.

    Replace a breaker's configuration whole with :meth:`CircuitBreaker.reconfigure`
    (``dataclasses.replace(breaker.config, field=value)`` builds the new one).

    Attributes:
        failure_threshold: Consecutive failures that open the breaker. Default 5.
        failure_rate_threshold: Share of failures in the sliding window that opens the
            breaker (0 < x <= 1), compared exactly: a float is read as the decimal it
            stands for, to 15 significant digits (``0.1 + 0.2`` is 3/10); a decimal
            string (``"0.55"``), ``Decimal`` or ``Fraction`` is accepted too (and kept to
            every digit). Default 0.5.
        window_size: Number of most recent calls in the sliding window. Default 100.
        minimum_calls: Calls the window must hold before the failure rate counts.
            Default 20.
        slow_call_duration_s: A call slower than this counts as a failure; ``None``
            turns slow-call detection off (and the clock is then never read on the
            success path). Default None.
        open_duration_s: Seconds OPEN before a trial call is allowed. Default 30.
        half_open_max_calls: Concurrent trial calls allowed while HALF_OPEN. Default 1.
        half_open_max_wait_s: Seconds a HALF_OPEN round may keep trial calls in flight,
            measured from its first trial's admission (with one trial, the time it holds
            its permit); a trial still running after this reopens the breaker
            (resilience4j's ``maxWaitDurationInHalfOpenState``). The clock restarts when
            no trial is in flight. ``None`` waits for ever. Default 60.
        failure_exceptions: Exception types that count as failures. Default
            ``(Exception,)``; an error injected by a chaos fault counts as a failure
            whatever its type. Other exceptions count as successes (the dependency
            answered), except non-``Exception`` ones such as
            ``asyncio.CancelledError``, which count as nothing (a call cancelled after
            running longer than ``slow_call_duration_s`` is a slow call: a failure).
        ignored_exceptions: Exception types that count as nothing, even if they match
            ``failure_exceptions`` (e.g. a 404 error class). Default none.
        failure_rate_fraction: The exact fraction of ``failure_rate_threshold`` (derived).

    Raises:
        ConfigError: a field has the wrong type (a count that is not an integer, a
            duration that is not a finite number) or is out of range; the one-line
            message names the field and the value.
    """

    failure_threshold: int = 5
    failure_rate_threshold: float | str | Decimal | Fraction = 0.5
    window_size: int = 100
    minimum_calls: int = 20
    slow_call_duration_s: float | None = None
    open_duration_s: float = 30.0
    half_open_max_calls: int = 1
    half_open_max_wait_s: float | None = 60.0
    failure_exceptions: tuple[type[BaseException], ...] = field(default=(Exception,))
    ignored_exceptions: tuple[type[BaseException], ...] = field(default=())
    failure_rate_fraction: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"CircuitBreakerConfig.{name}: {rule} (got {value!r})")

        def whole(name: str, rule: str, minimum: int) -> None:
            value = getattr(self, name)
            # bool is an int subclass, but True is no count; a float count is a mistake.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise bad(name, value, f"must be an integer {rule}")
            if value < minimum:
                raise bad(name, value, rule)

        def seconds(name: str, optional: bool) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            rule = "must be a finite number of seconds > 0" + (" or None" if optional else "")
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
                or not float(value) > 0
            ):
                raise bad(name, value, rule)

        whole("failure_threshold", ">= 1", 1)
        try:
            rate = exact_rate(self.failure_rate_threshold)
        except (ValueError, TypeError, ArithmeticError):
            raise bad(
                "failure_rate_threshold", self.failure_rate_threshold, "must be a number"
            ) from None
        if not 0 < rate <= 1:
            raise bad("failure_rate_threshold", self.failure_rate_threshold, "must be in (0, 1]")
        object.__setattr__(self, "failure_rate_fraction", rate)
        whole("window_size", ">= 1", 1)
        whole("minimum_calls", "in [1, window_size]", 1)
        if self.minimum_calls > self.window_size:
            rule = f"must be in [1, window_size] = [1, {self.window_size}]"
            raise bad("minimum_calls", self.minimum_calls, rule)
        seconds("slow_call_duration_s", optional=True)
        seconds("open_duration_s", optional=False)
        whole("half_open_max_calls", ">= 1", 1)
        seconds("half_open_max_wait_s", optional=True)
        for name in ("failure_exceptions", "ignored_exceptions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise bad(name, value, "must be a tuple of exception types")
