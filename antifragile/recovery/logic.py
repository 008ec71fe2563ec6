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
    learned: AdaptiveSchedule | None = None,
    elapsed_ms: int = 0,
) -> AfterFailure:
    """Decide what follows the ``failures_in_round``-th failure of the current round.

    A round is ``max_retry_attempts`` attempts; when it is used up, every strategy
    escalates to a person (AWAITING_APPROVAL), whose approval grants a fresh round.
    A pending wake-up (``wake_pending``: a healthy ``health_changed`` arrived after the
    last probe began) cuts the backoff to 0; it never skips an escalation.
    ADAPTIVE with a ``learned`` schedule waits until its next attempt time after
    ``elapsed_ms`` (ms since the recovery started, :func:`adaptive_delay_ms`), but never
    longer than ``max_delay_ms``.
    """
    if failures_in_round >= policy.max_retry_attempts:
        return AfterFailure(NextStep.ESCALATE)
    nominal = backoff_delay_ms(strategy, policy, failures_in_round, jitter_key=jitter_key)
    if strategy is RecoveryStrategy.ADAPTIVE and learned is not None:
        # Capped like every strategy: one long outlier in the ledger (a 6 h outage) must
        # not leave a short outage unprobed for hours; the plan resumes after the cap.
        planned = adaptive_delay_ms(learned, elapsed_ms, fallback_ms=nominal)
        nominal = min(planned, policy.max_delay_ms)
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


# --- adaptive strategy ------------------------------------------------------------------

ADAPTIVE_MIN_OBSERVATIONS = 3
"""Verified times to recover (still possible: longer than the time already spent) an
ADAPTIVE round needs before it trusts them; with fewer it backs off exponentially."""
ADAPTIVE_MAX_OBSERVATIONS = 50
"""Most recent verified times to recover a schedule is computed from (it runs in workflow
code: the optimisation is O(k·m²) for m distinct values and k attempts)."""
ADAPTIVE_PROBE_COST_US = 1_000_000
"""λ: one attempt (action + probe) is worth 1 s of detection lag - the same price as the
advice's ``antifragile.learning.tuning.PROBE_COST_S`` (not imported: recovery and learning
are independent layers)."""


@dataclass(frozen=True, slots=True)
class AdaptiveSchedule:
    """An ADAPTIVE round's plan.

    Attributes:
        learned: The attempt times come from the ledger; False: exponential backoff.
        offsets_ms: Attempt times after the round's first, ms since the recovery started,
            ascending (empty when not learned).
        reason: One line for history: what was learned, or why it fell back.
    """

    learned: bool
    offsets_ms: tuple[int, ...] = ()
    reason: str = ""


def adaptive_schedule(
    recoveries_us: list[int],
    *,
    elapsed_us: int,
    max_attempts: int,
    min_observations: int = ADAPTIVE_MIN_OBSERVATIONS,
    probe_cost_us: int = ADAPTIVE_PROBE_COST_US,
) -> AdaptiveSchedule:
    """Attempt times minimising expected detection lag plus probe cost, from learned TTRs.

    Only recoveries longer than ``elapsed_us`` (time already spent since the recovery
    started) are still possible: the distribution is conditioned on ``TTR > elapsed``.
    The round's first attempt runs now; the next ``k <= max_attempts - 1`` attempts run at
    times ``t_1 < ... < t_k`` chosen from the observed values (an optimal time is always
    an observed value: moving it down to the nearest one below shortens every lag it
    serves). For an outage ending at ``x`` the attempt that sees it is the first
    ``t_j >= x``; the plan minimises the plug-in estimate over the ``n`` observations

        ``J = (1/n) Σ_x [(t_j(x) - x) + λ · j(x)]``

    (``λ`` = ``probe_cost_us``; the objective of
    ``antifragile.learning.tuning.best_schedule``, but optimised over free attempt times
    rather than a grid of exponential shapes), by dynamic programming over the sorted
    distinct values, exactly in integers (µs). ``t_k`` is the longest observation, so
    every outage seen so far would have been found inside the round. Ties go to fewer
    attempts, then earlier times (deterministic).

    Args:
        recoveries_us: Verified times to recover, µs, most recent last; only the last
            :data:`ADAPTIVE_MAX_OBSERVATIONS` are used.
        elapsed_us: Time since the recovery started, µs, >= 0.
        max_attempts: Attempts in the round (the policy's ``max_retry_attempts``).
        min_observations: Fewer usable observations fall back. Default
            :data:`ADAPTIVE_MIN_OBSERVATIONS`.
        probe_cost_us: λ, µs of lag one attempt is worth. Default
            :data:`ADAPTIVE_PROBE_COST_US`.

    Returns:
        The plan; ``learned`` False (exponential backoff) with the reason when too few
        observations remain or the round has a single attempt.
    """
    recent = recoveries_us[-ADAPTIVE_MAX_OBSERVATIONS:]
    usable = sorted(x for x in recent if x > elapsed_us)
    if len(usable) < min_observations:
        return AdaptiveSchedule(
            False,
            reason=(
                f"adaptive fell back to exponential backoff: {len(usable)} verified "
                f"recoveries longer than the {elapsed_us // 1000} ms already spent "
                f"(< {min_observations})"
            ),
        )
    k_max = min(max_attempts - 1, len(set(usable)))
    if k_max < 1:
        return AdaptiveSchedule(
            False, reason="adaptive fell back to exponential backoff: one attempt per round"
        )
    values = sorted(set(usable))
    weights = [usable.count(v) for v in values]
    m = len(values)
    # prefix sums: W[i] = Σ weights[:i], S[i] = Σ weights·values[:i]
    w_pre, s_pre = [0], [0]
    for v, w in zip(values, weights, strict=True):
        w_pre.append(w_pre[-1] + w)
        s_pre.append(s_pre[-1] + w * v)

    def segment(a: int, i: int, j: int) -> int:
        """Cost of values[a:i+1] found by attempt j at values[i] (lag plus λ·j each)."""
        count = w_pre[i + 1] - w_pre[a]
        return count * values[i] - (s_pre[i + 1] - s_pre[a]) + probe_cost_us * j * count

    inf = None
    # best[j][i]: (cost, times) covering values[:i+1] with j attempts, the last at values[i]
    best: list[list[tuple[int, tuple[int, ...]] | None]] = [[inf] * m for _ in range(k_max + 1)]
    for i in range(m):
        best[1][i] = (segment(0, i, 1), (values[i],))
    for j in range(2, k_max + 1):
        for i in range(j - 1, m):
            choice: tuple[int, tuple[int, ...]] | None = None
            for a in range(j - 2, i):
                prev = best[j - 1][a]
                if prev is None:
                    continue
                cost = prev[0] + segment(a + 1, i, j)
                if choice is None or cost < choice[0]:
                    choice = (cost, (*prev[1], values[i]))
            best[j][i] = choice
    plan: tuple[int, tuple[int, ...]] | None = None
    for j in range(1, k_max + 1):
        cand = best[j][m - 1]
        if cand is not None and (plan is None or cand[0] < plan[0]):
            plan = cand
    assert plan is not None  # best[1][m-1] always exists
    offsets = tuple(-(-t // 1000) for t in plan[1])  # µs → ms, rounded up (never early)
    shown = ", ".join(f"{o / 1000:g}s" for o in offsets)
    return AdaptiveSchedule(
        True,
        offsets,
        reason=(
            f"adaptive: {len(usable)} verified recoveries learned; attempts at {shown} "
            f"after the start (expected lag + {probe_cost_us / 1e6:g} s/attempt minimised)"
        ),
    )


def adaptive_delay_ms(schedule: AdaptiveSchedule, elapsed_ms: int, *, fallback_ms: int) -> int:
    """Delay until the plan's next attempt time after ``elapsed_ms``, ms.

    The first planned time strictly after ``elapsed_ms`` (ms since the recovery started);
    ``fallback_ms`` (the exponential delay) when the plan is not learned or every planned
    time has passed (the outage is longer than any seen: back off as without learning).
    """
    if schedule.learned:
        for offset in schedule.offsets_ms:
            if offset > elapsed_ms:
                return offset - elapsed_ms
    return fallback_ms
