"""Contracts of learning from stress: observations, measurements, advice and the score.

Everything the learning side concludes is recomputed from the :class:`Observation` records
a dependency's ledger stores (``profile-{dependency}``), so a conclusion can always be
checked against its evidence. Times are UTC datetimes; durations are seconds (``_s``) or
milliseconds (``_ms``) as their names say.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from antifragile.models.common import StrictModel

if TYPE_CHECKING:
    from antifragile.models.adaptation import ConfigChange

LATENCY_BUCKET_GROWTH = 2 ** (1 / 4)
"""Ratio between neighbouring latency bucket bounds (four buckets per doubling: at most
19 % between a value and its bucket's upper bound, as HdrHistogram-style log buckets)."""

LATENCY_FIRST_BOUND_MS = 0.1
"""Upper bound of the first latency bucket, in ms (faster calls land in it)."""

LATENCY_BUCKETS = 80
"""Bucket count: bounds run from 0.1 ms to 0.1 × 2^(79/4) ms ≈ 88 s; slower calls land in
the last bucket."""


def latency_bounds_ms() -> list[float]:
    """Upper bounds of the latency buckets, in ms (``LATENCY_BUCKETS`` values, ascending)."""
    return [LATENCY_FIRST_BOUND_MS * LATENCY_BUCKET_GROWTH**i for i in range(LATENCY_BUCKETS)]


class LatencyHistogram(StrictModel):
    """Call latencies of one dependency, log-bucketed (bounds: :func:`latency_bounds_ms`).

    Attributes:
        counts: Calls per bucket; empty means no call. At most ``LATENCY_BUCKETS`` entries
            (trailing empty buckets may be left out).
    """

    counts: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=LATENCY_BUCKETS
    )


class ExperimentObservation(StrictModel):
    """What one chaos experiment showed about one dependency (its target).

    Attributes:
        kind: Always ``"experiment"``.
        dependency: The target (guard name).
        source_id: The experiment's workflow id (one observation per id and dependency).
        chaos_type: The fault kind (``ChaosType`` value).
        fault_start: When the fault took effect.
        fault_end: When the fault was removed (None: never injected).
        detected_at: First breaker opening on the target after ``fault_start`` (None: none).
        recovered_at: When health was verified back after ``fault_end`` (None: not verified).
        steady_state_held: The health guard never tripped (the blast radius held).
        calls_failed: Calls that failed during the experiment.
        calls_refused: Calls refused by an open breaker during the experiment.
        outcome: The experiment's outcome (``ChaosOutcome`` value).
        latency: Latencies of the target's calls under the fault (the intervals between
            health checks that lay wholly under it; empty: none measured).
    """

    kind: Literal["experiment"] = "experiment"
    dependency: str
    source_id: str
    chaos_type: str
    fault_start: datetime
    fault_end: datetime | None = None
    detected_at: datetime | None = None
    recovered_at: datetime | None = None
    steady_state_held: bool
    calls_failed: int = Field(default=0, ge=0)
    calls_refused: int = Field(default=0, ge=0)
    outcome: str
    latency: LatencyHistogram = Field(default_factory=LatencyHistogram)


class OutageObservation(StrictModel):
    """What one real outage (a recovery) showed about one dependency.

    Attributes:
        kind: Always ``"outage"``.
        dependency: The recovered service.
        source_id: The recovery's workflow id and first run id (``{workflow id}/{run id}``).
        started_at: When the recovery was requested (the outage was noticed).
        recovered_at: First passing probe (None: never verified: failed or cancelled).
        last_failed_probe_at: The end of the last attempt whose probe failed before
            ``recovered_at`` (None: no probe failed first, or unknown). The dependency
            came back between it and ``recovered_at``: the probes bracket the return.
        attempts: Attempts made.
        probes: Probes run (each attempt's probe and every watch probe).
        outcome: The recovery's final state (``RecoveryState`` value).
    """

    kind: Literal["outage"] = "outage"
    dependency: str
    source_id: str
    started_at: datetime
    recovered_at: datetime | None = None
    last_failed_probe_at: datetime | None = None
    attempts: int = Field(default=0, ge=0)
    probes: int = Field(default=0, ge=0)
    outcome: str


class TrafficObservation(StrictModel):
    """A coalesced window of one dependency's calls, outside any experiment.

    Attributes:
        kind: Always ``"traffic"``.
        dependency: The guard name.
        source_id: ``{instance}/{window start, ISO}`` (one per instance and window).
        window_start: Start of the window.
        window_s: Length of the window in seconds (> 0).
        calls: Calls admitted in the window.
        failures: Of those, calls that failed.
        breaker_openings: Times the breaker opened in the window.
        latency: Latencies of the window's calls.
    """

    kind: Literal["traffic"] = "traffic"
    dependency: str
    source_id: str
    window_start: datetime
    window_s: float = Field(gt=0)
    calls: int = Field(ge=0)
    failures: int = Field(ge=0)
    breaker_openings: int = Field(default=0, ge=0)
    latency: LatencyHistogram = Field(default_factory=LatencyHistogram)


Observation = Annotated[
    ExperimentObservation | OutageObservation | TrafficObservation, Field(discriminator="kind")
]
"""One record of a dependency's ledger."""


class Evidence(StrictModel):
    """What a conclusion rests on.

    Attributes:
        observations: How many observations were used.
        window_start: Oldest observation used (None: none).
        window_end: Newest observation used (None: none).
        detail: One line: which quantity, e.g. "p90 of 7 verified recovery times".
    """

    observations: int = Field(ge=0)
    window_start: datetime | None = None
    window_end: datetime | None = None
    detail: str = ""


class Advice(StrictModel):
    """A recommended value for one setting of one dependency.

    Attributes:
        dependency: The dependency.
        setting: The setting, e.g. ``breaker.open_duration_s``, ``guard.timeout_s``,
            ``recovery.initial_delay_ms``; or ``gap.<what>`` for a gap (no value).
        current: The value in force (None: unknown, or a gap).
        recommended: The recommended value (None: a gap, nothing to set).
        reason: One line: why.
        evidence: What it rests on.
        expected_effect: One line: what should change when applied.
    """

    dependency: str
    setting: str
    current: float | None = None
    recommended: float | None = None
    reason: str
    evidence: Evidence
    expected_effect: str = ""


class ResilienceScore(StrictModel):
    """A dependency's resilience score, from measured outcomes only.

    Attributes:
        dependency: The dependency.
        score: 0-100 (None: nothing measured yet).
        trend: Score now minus the score without the newest observations (None: too few).
        evidence: What it rests on.
    """

    dependency: str
    score: float | None = Field(default=None, ge=0, le=100)
    trend: float | None = None
    evidence: Evidence


# ---------------------------------------------------------------------------------------
# Additions of the runtime side (config versions applied live; issue 14, runtime part).
# ---------------------------------------------------------------------------------------


class SettingBounds(StrictModel):
    """Inclusive range a setting may take when adapted (``min <= value <= max``).

    Attributes:
        min: Lowest allowed value.
        max: Highest allowed value (>= ``min``).
    """

    min: float
    max: float

    def model_post_init(self, __context: object) -> None:
        """Refuse ``min > max``.

        Raises:
            ValueError: ``min`` is above ``max``.
        """
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")


class DependencySettings(StrictModel):
    """Adaptable settings of one dependency's guard and breaker (None: left as is).

    Attributes:
        open_duration_s: Seconds the breaker stays OPEN before a trial call (> 0).
        failure_rate_threshold: Share of failed calls in the window that opens it, (0, 1].
        failure_threshold: Consecutive failures that open it (>= 1).
        timeout_s: The guard's per-call timeout, seconds (> 0).
    """

    open_duration_s: float | None = Field(default=None, gt=0)
    failure_rate_threshold: float | None = Field(default=None, gt=0, le=1)
    failure_threshold: int | None = Field(default=None, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)


class ConfigVersion(StrictModel):
    """One published version of a dependency's settings (``af:config:{dependency}``).

    Attributes:
        dependency: The guard name.
        version: 1, 2, ... per dependency, never reused.
        settings: The settings in force from this version on.
        by: Who published it (an operator, the worker).
        at: When it was published (UTC).
        why: One line: why.
        previous: The version in force before this one (None: the first).
        revert_of: The version this one undoes (None: not a revert).
        bounds: Per setting, the range the policy allowed when it was published; the
            runtime clamps to it (and to its hard limits) before applying.
    """

    dependency: str
    version: int = Field(ge=1)
    settings: DependencySettings
    by: str
    at: datetime
    why: str = ""
    previous: int | None = None
    revert_of: int | None = None
    bounds: dict[str, SettingBounds] = Field(default_factory=dict)


# --- Additions of the pure core (measurements, settings in force, score targets) -------------


class DependencyMeasurements(StrictModel):
    """What a dependency's observations measure (``antifragile.learning.measure``).

    Durations are seconds, ascending; each comes from integer microseconds of the
    observations' datetimes, so the same observations always give the same floats.

    Attributes:
        dependency: The dependency.
        experiments: Experiment observations.
        outages: Outage observations.
        traffic_windows: Traffic windows outside experiments and outages (the baseline).
        detect_s: Times to detect: ``fault_start`` → ``detected_at`` (breaker opened),
            one per experiment that opened the breaker.
        recover_s: Verified times to recover: experiment ``fault_end`` → ``recovered_at``
            and outage ``started_at`` → ``recovered_at``; unverified ones are left out.
        unverified: Experiments (injected) and outages with no verified recovery.
        calls_failed: Calls failed during experiments.
        calls_refused: Calls refused by an open breaker during experiments.
        baseline_calls: Calls in the baseline windows.
        baseline_failures: Failed calls in the baseline windows.
        latency: The baseline windows' latencies, merged.
        latency_p50_ms: Median baseline latency (bucket upper bound; None: no call).
        latency_p99_ms: 99th percentile, same method.
        latency_p999_ms: 99.9th percentile, same method.
        fault_latency: Latencies under the experiments' faults, merged.
        fault_latency_p50_ms / fault_latency_p99_ms / fault_latency_p999_ms: Their
            quantiles, same method (None: no call measured under a fault).
        window_start: Oldest observation (None: none).
        window_end: Newest observation (None: none).
    """

    dependency: str
    experiments: int = 0
    outages: int = 0
    traffic_windows: int = 0
    detect_s: list[float] = Field(default_factory=list)
    recover_s: list[float] = Field(default_factory=list)
    unverified: int = 0
    calls_failed: int = 0
    calls_refused: int = 0
    baseline_calls: int = 0
    baseline_failures: int = 0
    latency: LatencyHistogram = Field(default_factory=LatencyHistogram)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_p999_ms: float | None = None
    fault_latency: LatencyHistogram = Field(default_factory=LatencyHistogram)
    fault_latency_p50_ms: float | None = None
    fault_latency_p99_ms: float | None = None
    fault_latency_p999_ms: float | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None

    @property
    def baseline_error_rate(self) -> Fraction | None:
        """``baseline_failures / baseline_calls``, exact (None: no baseline call)."""
        if self.baseline_calls == 0:
            return None
        return Fraction(self.baseline_failures, self.baseline_calls)


class CurrentSettings(StrictModel):
    """The breaker, guard and recovery settings in force for one dependency.

    Defaults are the project's defaults (``CircuitBreakerConfig``, ``Guard``,
    ``RecoveryPolicy``), so ``CurrentSettings()`` describes an untuned dependency.

    Attributes:
        open_duration_s: Breaker: seconds OPEN before a trial call. Default 30.
        failure_rate_threshold: Breaker: failure share of the window that opens it, read
            as the decimal the float stands for (15 significant digits). Default 0.5.
        failure_threshold: Breaker: consecutive failures that open it. Default 5.
        minimum_calls: Breaker: calls the window needs before the rate counts. Default 20.
        window_size: Breaker: calls in the sliding window. Default 100.
        timeout_s: Guard: per-call timeout (None: none). Default None.
        initial_delay_ms: Recovery: delay after the first failed attempt. Default 1000.
        backoff_multiplier: Recovery: growth factor of the delays. Default 2.0.
        max_delay_ms: Recovery: cap of any delay. Default 60000.
        max_retry_attempts: Recovery: attempts per round before a person is asked.
            Default 5.
    """

    open_duration_s: float = Field(default=30.0, gt=0)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    failure_threshold: int = Field(default=5, ge=1)
    minimum_calls: int = Field(default=20, ge=1)
    window_size: int = Field(default=100, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    initial_delay_ms: int = Field(default=1000, ge=0)
    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    max_delay_ms: int = Field(default=60000, ge=0)
    max_retry_attempts: int = Field(default=5, ge=1)


class ScoreTargets(StrictModel):
    """What the resilience score counts as a good outcome, and how it weighs age.

    Attributes:
        recovery_target_s: Per dependency: verified recovery within this many seconds
            counts as held.
        default_recovery_target_s: For a dependency not in ``recovery_target_s``.
            Default 30.
        half_life_s: Age at which an outcome weighs half as much as a fresh one.
            Default 14 days.
    """

    recovery_target_s: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    default_recovery_target_s: float = Field(default=30.0, gt=0)
    half_life_s: float = Field(default=14 * 86400.0, gt=0)

    def target_s(self, dependency: str) -> float:
        """The recovery target of ``dependency``, in seconds."""
        return self.recovery_target_s.get(dependency, self.default_recovery_target_s)


# --- The ledger's messages: DependencyProfileWorkflow (``profile-{dependency}``) -------
# Added with the ledger (issue 14, durable ledger part). Models above keep their meaning.

PROFILE_MAX_PER_KIND = 200
"""Observations a ledger keeps per kind (experiment, outage, traffic) by default; the
oldest go first. Sized so a full ledger (3 × 200 observations of at most ~1 KB each)
stays well under Temporal's 512 KiB payload warning when it continues as new."""

PROFILE_MAX_AGE_S = 90 * 86_400
"""Observations older than this (seconds; 90 days) are dropped by default, counted from
the ledger's workflow time when a batch arrives."""

PROFILE_MAX_AGE_LIMIT_S = 10 * 365 * 86_400
"""Largest ``max_age_s`` accepted (about ten years): the cut-off date stays computable."""

PROFILE_BATCHES_PER_RUN = 500
"""Batches a ledger run takes before it continues as new by default (it also continues
when Temporal suggests it, at 4,096 events or 4 MB): one batch is one signal event."""

MAX_OBSERVATIONS_PER_BATCH = 200
"""Observations in one ``record_observations`` signal (the client splits larger lists)."""


def observation_time(
    observation: ExperimentObservation | OutageObservation | TrafficObservation,
) -> datetime:
    """When an observation happened (the ledger orders, ages and evicts by it).

    Returns:
        An experiment's fault start, an outage's start, a traffic window's start.
    """
    if isinstance(observation, ExperimentObservation):
        return observation.fault_start
    if isinstance(observation, OutageObservation):
        return observation.started_at
    return observation.window_start


class RecordObservations(StrictModel):
    """Payload of the ``record_observations`` signal: a batch for one dependency's ledger.

    Attributes:
        observations: At most :data:`MAX_OBSERVATIONS_PER_BATCH`. Each is kept once per
            ``(kind, source_id)``: a second one with the same key is counted as a
            duplicate and ignored (the first wins), so a re-sent batch changes nothing.
            One for another dependency is counted and ignored.
    """

    observations: list[Observation] = Field(
        default_factory=list, max_length=MAX_OBSERVATIONS_PER_BATCH
    )


class ProfileLimits(StrictModel):
    """How much a ledger keeps, and how long a run lasts.

    Attributes:
        max_per_kind: Observations kept per kind (default :data:`PROFILE_MAX_PER_KIND`).
        max_age_s: Seconds an observation is kept (default :data:`PROFILE_MAX_AGE_S`; at
            most :data:`PROFILE_MAX_AGE_LIMIT_S`).
        batches_per_run: Batches before continuing as new (default
            :data:`PROFILE_BATCHES_PER_RUN`).
    """

    max_per_kind: int = Field(default=PROFILE_MAX_PER_KIND, ge=1)
    max_age_s: int = Field(default=PROFILE_MAX_AGE_S, gt=0, le=PROFILE_MAX_AGE_LIMIT_S)
    batches_per_run: int = Field(default=PROFILE_BATCHES_PER_RUN, ge=1)


class ProfileCounters(StrictModel):
    """What a ledger has received since it was first started (carried across runs).

    Attributes:
        batches: Signals received.
        received: Observations received, every one counted.
        duplicates: Ignored: an observation with the same ``(kind, source_id)`` was held.
        misaddressed: Ignored: the observation's dependency is not the ledger's.
        dropped_old: Dropped: older than ``max_age_s``.
        dropped_over_limit: Dropped: the oldest beyond ``max_per_kind`` of their kind.
        runs: Workflow runs (1 + times it continued as new).
    """

    batches: int = Field(default=0, ge=0)
    received: int = Field(default=0, ge=0)
    duplicates: int = Field(default=0, ge=0)
    misaddressed: int = Field(default=0, ge=0)
    dropped_old: int = Field(default=0, ge=0)
    dropped_over_limit: int = Field(default=0, ge=0)
    runs: int = Field(default=1, ge=1)


class ProfileInput(StrictModel):
    """Input of DependencyProfileWorkflow (a first start, or a run continued as new).

    Attributes:
        dependency: The dependency (guard name or recovered service).
        limits: What the ledger keeps.
        observations: Held observations (empty on a first start).
        counters: Counters so far (fresh on a first start).
    """

    dependency: str = Field(min_length=1)
    limits: ProfileLimits = Field(default_factory=ProfileLimits)
    observations: list[Observation] = Field(default_factory=list)
    counters: ProfileCounters = Field(default_factory=ProfileCounters)
    changes: list[ConfigChange] = Field(default_factory=list)
    """Config changes it decided (apply part; newest last, bounded)."""
    used_signatures: list[str] = Field(default_factory=list)
    """Digests of accepted signed requests (each counts once)."""
    last_auto_advice: dict[str, float] = Field(default_factory=dict)
    """Live-appliable advice the ledger last considered applying by itself."""


class ProfileView(StrictModel):
    """Result of the ``profile`` query: a dependency's ledger as it stands.

    Attributes:
        dependency: The dependency.
        observations: Held observations, oldest first (by :func:`observation_time`, then
            kind and source id).
        counts: Held observations per kind (``experiment``, ``outage``, ``traffic``; all
            three present).
        oldest / newest: Time of the oldest and newest held observation (None: none).
        counters: What the ledger has received, ignored and dropped.
        limits: What it keeps.
        score / advice: Filled once the pure core (``antifragile.learning`` score and
            advice) is wired into the ledger; None and empty until then.
    """

    dependency: str
    observations: list[Observation] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    oldest: datetime | None = None
    newest: datetime | None = None
    counters: ProfileCounters = Field(default_factory=ProfileCounters)
    limits: ProfileLimits = Field(default_factory=ProfileLimits)
    score: ResilienceScore | None = None
    advice: list[Advice] = Field(default_factory=list)
    last_change: ConfigChange | None = None
    """The newest config change it decided (apply part; None: none)."""


class RecordObservationsInput(StrictModel):
    """Input of ``record_dependency_observations``: signal-with-start of a ledger.

    Attributes:
        dependency: Whose ledger (``profile-{dependency}``).
        observations: What to record (all for ``dependency``).
        task_queue: Where the ledger runs if it has to be started (the caller's queue).
    """

    dependency: str = Field(min_length=1)
    observations: list[Observation] = Field(default_factory=list)
    task_queue: str = Field(min_length=1)


class RecordObservationsResult(StrictModel):
    """What ``record_dependency_observations`` sent.

    Attributes:
        workflow_id: The ledger's workflow id.
        batches: Signals sent (0 when there was nothing to send).
    """

    workflow_id: str
    batches: int = Field(ge=0)


# ---------------------------------------------------------------------------------------
# Additions of the CLI (``antifragile advise``; issue 14, learning CLI part).
# ---------------------------------------------------------------------------------------


class AdviceReport(StrictModel):
    """What ``antifragile advise`` shows for one dependency (its ``--json`` document).

    Attributes:
        dependency: The dependency.
        settings_source: Where ``current`` came from: ``"library defaults"`` or
            ``"config version N"`` (the version in force in Redis, over the defaults).
        note: Why the defaults were used although a version may exist (Redis unreachable);
            empty otherwise.
        current: The settings the advice was computed against.
        advice: :func:`antifragile.learning.advise` against ``current``.
    """

    dependency: str
    settings_source: str
    note: str = ""
    current: CurrentSettings
    advice: list[Advice] = Field(default_factory=list)


# The apply part's models live in ``antifragile.models.adaptation`` (this file's size
# limit); it completes ProfileInput and ProfileView, which hold its ConfigChange.
from antifragile.models import adaptation as _adaptation  # noqa: E402,F401
