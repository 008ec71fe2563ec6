"""Admission control of the recovery queue: the admission rate limit and the retry budget.

:class:`AdmissionControl` keeps the evidence both rules need (recent admissions, recent
attempts) and decides whether new admissions pause;
:class:`~antifragile.orchestrator.logic.OrchestratorCore` builds on it and decides who is
admitted. Pure (time is passed in), so replays and unit tests give the same answers.

Rate limit
    At most ``max_admissions_per_minute`` admissions in any sliding 60 s window; when the
    window is full the next admission is due when its oldest admission leaves it.

Retry budget (Google SRE book, ch. 22)
    Every attempt of an orchestrated recovery is reported (``attempt_finished``). Among
    the attempts of the last ``budget_window_s`` (sliding), if at least
    ``budget_min_samples`` were made and the failed share is above ``retry_budget``
    (compared exactly, as fractions), *new* admissions pause; running recoveries go on.
    The pause lasts while the ratio stays above the budget: it ends as soon as fresh
    successes bring it down, or when enough failed attempts leave the window. Its "until"
    is when the ratio would drop if no further attempt were reported (old attempts
    leaving the window); every new attempt recomputes it.

    A pause bounds retries, it never stalls the queue (the SRE book's budget throttles
    retries, never to zero). While it holds, the orchestrator makes *probe admissions*:
    the highest-ranked waiting request is admitted when no probe admission made during
    this pause still holds a slot (and a slot is free, and the admission rate allows it),
    so at most one new recovery at a time runs under a pause. Its attempts count like any
    others: if they succeed they bring the ratio down and end the pause; if it escalates
    (its slot is freed) or closes, the next probe admission follows; in an outage where
    every probe fails, the queue moves one recovery at a time. When the pause ends, the
    recoveries admitted as probes become ordinary running ones (a later pause makes its
    own probe admission).

    Orchestrator runs recorded before this rule (without the ``attempt-retry-budget``
    patch) counted finished recoveries instead (FAILED and TIMED_OUT failed, SUCCEEDED
    succeeded) and paused for ``budget_cooldown_s``, then forgot the samples; replaying
    such a run keeps that rule (``count_attempts`` False).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from antifragile.models.orchestrator import (
    BudgetSample,
    BudgetView,
    OrchestratorLimits,
    RecoveryOutcome,
)
from antifragile.orchestrator.queue import from_ms, to_ms

RATE_WINDOW_MS = 60_000


@dataclass
class AdmissionControl:
    """The admission rate window and the retry budget's window, and the pause they decide.

    Attributes:
        limits: The orchestrator's limits (rate, budget, window, samples, cool-down).
        count_attempts: True: the retry budget counts attempts (``attempt_finished``);
            False: finished recoveries, as runs recorded before the attempt budget did.
        admission_times_ms: When each admission of the last minute was made (ms).
        budget_samples: Attempts (or finished recoveries) in the budget window, oldest first.
        budget_failed: How many of ``budget_samples`` failed.
        budget_reset_ms: Samples before this are ignored (the legacy budget's reset).
        paused_until_ms: When the retry-budget pause ends (None: no pause).
        pause_reason: Why admissions pause, one line ("" when they do not).
        throttle_reason: Why the admission rate holds admissions back ("" when it does not).
    """

    limits: OrchestratorLimits = field(default_factory=OrchestratorLimits)
    count_attempts: bool = False
    admission_times_ms: deque[int] = field(default_factory=deque)
    budget_samples: deque[BudgetSample] = field(default_factory=deque)
    budget_failed: int = 0
    budget_reset_ms: int = 0
    paused_until_ms: int | None = None
    pause_reason: str = ""
    throttle_reason: str = ""

    # --- admission rate --------------------------------------------------------------

    def rate_limited(self) -> bool:
        """True when the sliding minute holds ``max_admissions_per_minute`` admissions."""
        return len(self.admission_times_ms) >= self.limits.max_admissions_per_minute

    def rate_opens_at_ms(self) -> int:
        """When the oldest admission of the window leaves it (call only when limited)."""
        return self.admission_times_ms[0] + RATE_WINDOW_MS

    def throttle(self) -> int:
        """Hold admissions back for the rate limit: set :attr:`throttle_reason`.

        Returns:
            When the next admission is due, in milliseconds since the epoch.
        """
        wake = self.rate_opens_at_ms()
        limits = self.limits
        self.throttle_reason = (
            f"admission rate limit: {len(self.admission_times_ms)} admissions in the "
            f"last minute (limit {limits.max_admissions_per_minute}/min); next at "
            f"{from_ms(wake):%H:%M:%S} UTC"
        )
        return wake

    def record_admission(self, now_ms: int) -> None:
        """Count a new admission (one that starts a recovery) against the rate limit."""
        self.admission_times_ms.append(now_ms)

    # --- retry budget ----------------------------------------------------------------

    def attempt_finished(self, succeeded: bool, now: datetime) -> None:
        """Count one attempt of a recovery for the retry budget (attempt budget only).

        Args:
            succeeded: The attempt's probe passed.
            now: When it ended (workflow time).
        """
        if not self.count_attempts:
            return
        sample = BudgetSample(at_ms=to_ms(now), failed=not succeeded)
        self.budget_samples.append(sample)
        self.budget_failed += sample.failed

    def recovery_closed(self, outcome: RecoveryOutcome, now: datetime) -> None:
        """Count a finished recovery for the legacy budget (nothing with the attempt budget).

        Args:
            outcome: How it ended; only outcomes that count for the budget are sampled.
            now: When it closed (workflow time).
        """
        if not self.count_attempts and outcome.counts_for_budget:
            sample = BudgetSample(at_ms=to_ms(now), failed=outcome.counts_as_failure)
            self.budget_samples.append(sample)
            self.budget_failed += sample.failed

    def budget_view(self) -> BudgetView:
        """The retry budget's window as of the last decision."""
        limits = self.limits
        return BudgetView(
            failed=self.budget_failed,
            attempts=len(self.budget_samples),
            window_s=limits.budget_window_s,
            retry_budget=limits.retry_budget,
            min_samples=limits.budget_min_samples,
        )

    def _trim(self, now_ms: int) -> None:
        rate_cutoff = now_ms - RATE_WINDOW_MS
        while self.admission_times_ms and self.admission_times_ms[0] <= rate_cutoff:
            self.admission_times_ms.popleft()
        budget_cutoff = now_ms - int(self.limits.budget_window_s * 1000)
        if not self.count_attempts:
            budget_cutoff = max(budget_cutoff, self.budget_reset_ms)
        while self.budget_samples and self.budget_samples[0].at_ms < budget_cutoff:
            self.budget_failed -= self.budget_samples.popleft().failed

    def _budget_pause(self, now_ms: int) -> bool:
        """Decide whether the retry budget pauses new admissions now.

        Sets :attr:`paused_until_ms` (the wake-up) and :attr:`pause_reason` while it does.
        """
        if self.count_attempts:
            return self._attempt_budget_pause()
        return self._legacy_budget_pause(now_ms)

    def over_budget(self, failed: int, total: int) -> bool:
        """True when ``failed`` of ``total`` attempts exceed the retry budget (exactly)."""
        if total < self.limits.budget_min_samples:
            return False
        budget = Fraction(repr(self.limits.retry_budget))
        return Fraction(failed, total) > budget

    def budget_clears_at_ms(self) -> int:
        """When the budget stops being exceeded if no attempt is reported meanwhile.

        Samples leave the window oldest first (a sample at ``t`` counts up to
        ``t + window`` inclusive); the first instant the remaining ones are within budget.
        """
        window_ms = int(self.limits.budget_window_s * 1000)
        failed, total = self.budget_failed, len(self.budget_samples)
        for sample in self.budget_samples:
            failed -= sample.failed
            total -= 1
            if not self.over_budget(failed, total):
                return sample.at_ms + window_ms + 1
        return 0  # pragma: no cover - an empty window is never over budget

    def _attempt_budget_pause(self) -> bool:
        failed, total = self.budget_failed, len(self.budget_samples)
        if not self.over_budget(failed, total):
            self.paused_until_ms = None
            self.pause_reason = ""
            return False
        until = self.budget_clears_at_ms()
        limits = self.limits
        self.paused_until_ms = until
        self.pause_reason = (
            f"retry budget exceeded: {failed} of {total} attempts failed in the last "
            f"{limits.budget_window_s:g}s (budget {limits.retry_budget:.0%})"
        )
        return True

    def _legacy_budget_pause(self, now_ms: int) -> bool:
        """The budget of runs recorded before the attempt budget (finished recoveries)."""
        if self.paused_until_ms is not None:
            if now_ms < self.paused_until_ms:
                return True
            self.paused_until_ms = None
            self.pause_reason = ""
        limits = self.limits
        total = len(self.budget_samples)
        if total < limits.budget_min_samples or self.budget_failed / total <= limits.retry_budget:
            return False
        until = now_ms + int(limits.budget_cooldown_s * 1000)
        self.pause_reason = (
            f"retry budget exceeded: {self.budget_failed} of {total} recoveries failed in the "
            f"last {limits.budget_window_s:g}s (budget {limits.retry_budget:.0%}); admissions "
            f"paused until {from_ms(until):%H:%M:%S} UTC"
        )
        self.paused_until_ms = until
        # Forget the evidence that caused the pause: after the cool-down, only outcomes
        # from now on can pause again (otherwise the old failures would re-trigger it).
        self.budget_reset_ms = now_ms
        self.budget_samples.clear()
        self.budget_failed = 0
        return True

    @property
    def paused(self) -> bool:
        """True while a retry-budget pause is in force (as of the last decision)."""
        return self.paused_until_ms is not None
