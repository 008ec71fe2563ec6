"""DependencyProfileWorkflow: the durable ledger of one dependency (``profile-{dependency}``).

It keeps what chaos experiments, real outages (recoveries) and coalesced runtime traffic
windows showed about one dependency, as
:data:`~antifragile.models.learning.Observation` records, so that every conclusion (score,
advice) can be recomputed from, and checked against, the evidence it holds.

Messages. ``record_observations`` (a :class:`~antifragile.models.learning.RecordObservations`
batch) adds observations; it is sent by signal-with-start
(:func:`antifragile.learning.client.record_observations`), so the ledger exists on first
use. The ``profile`` query returns a :class:`~antifragile.models.learning.ProfileView`.

Rules (:class:`Ledger`, pure):

- One observation per ``(kind, source_id)``: the first one kept wins, later ones are
  counted as duplicates and ignored (a retried activity re-sends its batch unchanged).
  Observations of another dependency are counted and ignored.
- Bounded: observations older than ``limits.max_age_s`` (counted from the workflow time
  the batch arrives, by :func:`~antifragile.models.learning.observation_time`) are
  dropped, then the oldest beyond ``limits.max_per_kind`` of each kind. Ages are applied
  when a batch arrives and when a run starts, not on a timer: an idle ledger keeps what it
  has (no history grows while nothing happens). A re-sent observation that was already
  dropped is dropped again, counted as dropped rather than as a duplicate.
- Never a task failure from data: a naive datetime is read as UTC; nothing in a handler
  raises on its input (a workflow task that raises is retried for ever).

Life. It never ends by itself. After ``limits.batches_per_run`` batches, or when Temporal
suggests it (4,096 events or 4 MB), it waits for its handlers and continues as new with
everything it holds and its counters; signals that arrive meanwhile are not lost (the
server refuses a completion that would drop them and the run goes on).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        KIND_PROFILE,
        PATCH_PROFILE_AUTO_ADAPT,
        PROFILE_WORKFLOW_TYPE,
        QUERY_CONFIG_CHANGE,
        QUERY_PROFILE,
        SA_KIND,
        SA_SERVICE,
        SIGNAL_APPLY_ADVICE,
        SIGNAL_RECORD_OBSERVATIONS,
        SIGNAL_REVERT_CONFIG,
    )
    from antifragile.learning import advise, resilience_score
    from antifragile.learning.adaptation import live_advice
    from antifragile.models.adaptation import ApplyAdviceSignal, ConfigChange, RevertConfigSignal
    from antifragile.models.learning import (
        Advice,
        CurrentSettings,
        Evidence,
        ExperimentObservation,
        OutageObservation,
        ProfileCounters,
        ProfileInput,
        ProfileLimits,
        ProfileView,
        RecordObservations,
        ResilienceScore,
        TrafficObservation,
        observation_time,
    )
    from workflows._profile_changes import ChangeDesk, change_line

AnyObservation = ExperimentObservation | OutageObservation | TrafficObservation
KINDS = ("experiment", "outage", "traffic")
"""Every observation kind, in the order the counts are shown."""
_KIND_WORDS = {"experiment": "experiment(s)", "outage": "outage(s)", "traffic": "traffic window(s)"}


def _utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is read as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _in_utc(observation: AnyObservation) -> AnyObservation:
    """``observation`` with every time aware UTC (naive ones read as UTC), for the core."""
    times = {
        name: _utc(value)
        for name, value in observation.__dict__.items()
        if isinstance(value, datetime)
    }
    return observation.model_copy(update=times)


def _order(observation: AnyObservation) -> tuple[datetime, str, str]:
    """Sort key: time, then kind, then source id (a total, deterministic order)."""
    return _utc(observation_time(observation)), observation.kind, observation.source_id


class Ledger:
    """A dependency's observations, de-duplicated and bounded (pure; no workflow calls).

    Args:
        dependency: Whose ledger; observations of another dependency are ignored.
        limits: What it keeps.
        observations: Held observations to start with (a run continued as new).
        counters: Counters so far.
    """

    def __init__(
        self,
        dependency: str,
        limits: ProfileLimits,
        observations: list[AnyObservation],
        counters: ProfileCounters,
    ) -> None:
        self.dependency = dependency
        self.limits = limits
        self.counters = counters.model_copy()
        self._held: dict[tuple[str, str], AnyObservation] = {}
        for observation in observations:
            self._held.setdefault((observation.kind, observation.source_id), observation)

    def add(self, batch: list[AnyObservation], now: datetime) -> None:
        """Take one batch received at ``now`` (workflow time), then apply the bounds."""
        self.counters.batches += 1
        self.counters.received += len(batch)
        for observation in batch:
            if observation.dependency != self.dependency:
                self.counters.misaddressed += 1
                continue
            key = (observation.kind, observation.source_id)
            if key in self._held:
                self.counters.duplicates += 1
                continue
            self._held[key] = observation
        self.prune(now)

    def prune(self, now: datetime) -> None:
        """Drop what is older than ``max_age_s`` at ``now``, then the oldest over the limit.

        An observation exactly ``max_age_s`` old is kept (strictly older ones go).
        """
        oldest_kept = _utc(now) - timedelta(seconds=self.limits.max_age_s)
        for key, observation in list(self._held.items()):
            if _utc(observation_time(observation)) < oldest_kept:
                del self._held[key]
                self.counters.dropped_old += 1
        for kind in KINDS:
            of_kind = sorted((o for o in self._held.values() if o.kind == kind), key=_order)
            excess = len(of_kind) - self.limits.max_per_kind
            for observation in of_kind[: max(excess, 0)]:
                del self._held[(observation.kind, observation.source_id)]
                self.counters.dropped_over_limit += 1

    def observations(self) -> list[AnyObservation]:
        """Held observations, oldest first (time, kind, source id)."""
        return sorted(self._held.values(), key=_order)

    def counts(self) -> dict[str, int]:
        """Held observations per kind (every kind present)."""
        counts = dict.fromkeys(KINDS, 0)
        for observation in self._held.values():
            counts[observation.kind] += 1
        return counts

    def conclusions(self, now: datetime | None = None) -> tuple[ResilienceScore, list[Advice]]:
        """Score and advice from the held observations only (pure; same input, same output).

        The score is :func:`~antifragile.learning.resilience_score` with the default
        :class:`~antifragile.models.learning.ScoreTargets`; the advice is
        :func:`~antifragile.learning.advise` against
        :class:`~antifragile.models.learning.CurrentSettings` defaults, the library
        defaults: the ledger does not know the settings a service runs with (``antifragile
        advise`` overlays the config version in force, from Redis, when there is one).

        Args:
            now: Decision time (the workflow passes ``workflow.now()``). None: the newest
                held observation's time (the epoch when none is held).
        """
        held = [_in_utc(o) for o in self.observations()]
        if now is None:
            now = observation_time(held[-1]) if held else datetime.fromtimestamp(0, UTC)
        now = _utc(now)
        try:
            score = resilience_score(self.dependency, held, now)
            advice = advise(self.dependency, held, CurrentSettings(), now)
        except Exception as exc:  # a bug of the core must never fail a workflow task
            evidence = Evidence(observations=len(held), detail=f"not computed: {exc!r}")
            return ResilienceScore(dependency=self.dependency, evidence=evidence), []
        return score, advice

    def advice_against(self, current: CurrentSettings, now: datetime) -> list[Advice]:
        """:func:`~antifragile.learning.advise` of the held observations against ``current``.

        Empty when the core fails (a bug there must never fail a workflow task).
        """
        held = [_in_utc(o) for o in self.observations()]
        try:
            return advise(self.dependency, held, current, _utc(now))
        except Exception:
            return []

    def view(self, now: datetime | None = None) -> ProfileView:
        """The ``profile`` query's answer, with the score and advice at ``now``.

        Args:
            now: Decision time of :meth:`conclusions` (the query passes ``workflow.now()``).
        """
        held = self.observations()
        score, advice = self.conclusions(now)
        return ProfileView(
            dependency=self.dependency,
            observations=held,
            counts=self.counts(),
            oldest=observation_time(held[0]) if held else None,
            newest=observation_time(held[-1]) if held else None,
            counters=self.counters.model_copy(),
            limits=self.limits,
            score=score,
            advice=advice,
        )

    def details(self, now: datetime | None = None) -> str:
        """The UI's current details (Markdown): counts, score, top advice, counters.

        The top advice is the first one that changes a setting (recommended differs from
        the library default), else the first one (a gap, or "keep").

        Args:
            now: Decision time of :meth:`conclusions`.
        """
        counts = self.counts()
        held = ", ".join(f"{counts[k]} {_KIND_WORDS[k]}" for k in KINDS)
        c = self.counters
        lines = [f"**Ledger of {self.dependency}**: {held}."]
        newest = self.observations()[-1:] if self._held else []
        if newest:
            lines.append(f"Newest: {_utc(observation_time(newest[0])):%Y-%m-%d %H:%M:%S} UTC.")
        score, advice = self.conclusions(now)
        lines.append(_score_line(score))
        top = _top_advice(advice)
        if top is not None:
            lines.append(f"Top advice: {_advice_line(top)}")
        lines.append(
            f"Received {c.received} in {c.batches} batch(es): {c.duplicates} duplicate(s) "
            f"and {c.misaddressed} for another dependency ignored; {c.dropped_old} aged "
            f"out, {c.dropped_over_limit} over the limit of {self.limits.max_per_kind} per "
            f"kind. Run {c.runs}."
        )
        return "\n\n".join(lines)


def _score_line(score: ResilienceScore) -> str:
    if score.score is None:
        return "Score: none yet (no measured outcome)."
    trend = "" if score.trend is None else f", trend {score.trend:+.1f}"
    return f"Score: **{score.score:.0f}**/100{trend} ({score.evidence.observations} outcome(s))."


def _top_advice(advice: list[Advice]) -> Advice | None:
    for item in advice:
        if item.recommended is not None and item.recommended != item.current:
            return item
    return advice[0] if advice else None


def _advice_line(item: Advice) -> str:
    if item.recommended is None:
        return f"`{item.setting}`: {item.reason}."
    current = "unset" if item.current is None else f"{item.current:g}"
    return f"`{item.setting}` {current} → {item.recommended:g} ({item.reason})."


@workflow.defn(name=PROFILE_WORKFLOW_TYPE)
class DependencyProfileWorkflow:
    """The ledger of one dependency (workflow id ``profile-{dependency}``; see module doc)."""

    @workflow.init
    def __init__(self, data: ProfileInput) -> None:
        self._ledger = Ledger(data.dependency, data.limits, list(data.observations), data.counters)
        self._batches_this_run = 0
        self._last_auto_advice = dict(data.last_auto_advice)
        self._desk = ChangeDesk(
            data.dependency,
            list(data.changes),
            list(data.used_signatures),
            self._ledger.advice_against,
            lambda: len(self._ledger.observations()),
            lambda _change: self._publish(),
        )

    @workflow.run
    async def run(self, data: ProfileInput) -> None:
        """Take batches and change requests until the run is long enough; continue as new.

        Never returns. Change requests are decided one at a time, oldest first.
        """
        self._ledger.prune(workflow.now())
        self._publish(first=True)
        desk = self._desk
        while True:
            await workflow.wait_condition(lambda: desk.waiting or self._should_continue_as_new())
            if desk.waiting:
                await desk.process_next()
                continue
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not desk.waiting:
                break
        ledger = self._ledger
        counters = ledger.counters.model_copy(update={"runs": ledger.counters.runs + 1})
        workflow.continue_as_new(
            ProfileInput(
                dependency=ledger.dependency,
                limits=ledger.limits,
                observations=ledger.observations(),
                counters=counters,
                changes=desk.changes,
                used_signatures=desk.used_signatures,
                last_auto_advice=self._last_auto_advice,
            )
        )

    def _should_continue_as_new(self) -> bool:
        return (
            self._batches_this_run >= self._ledger.limits.batches_per_run
            or workflow.info().is_continue_as_new_suggested()
        )

    def _publish(self, *, first: bool = False) -> None:
        """Current details always; search attributes once, only if the start had none."""
        if first and workflow.info().typed_search_attributes.get(SA_KIND) is None:
            workflow.upsert_search_attributes(
                [SA_KIND.value_set(KIND_PROFILE), SA_SERVICE.value_set(self._ledger.dependency)]
            )
        details = self._ledger.details(workflow.now())
        if self._desk.changes:
            details += "\n\n" + change_line(self._desk.changes[-1])
        workflow.set_current_details(details)

    @workflow.signal(name=SIGNAL_RECORD_OBSERVATIONS)
    def record_observations(self, batch: RecordObservations) -> None:
        """Add a batch (de-duplicated by kind and source id, then bounded)."""
        self._ledger.add(list(batch.observations), workflow.now())
        self._batches_this_run += 1
        self._publish()
        self._consider_auto()

    def _consider_auto(self) -> None:
        """After a batch that changed the live-appliable advice: queue an ``auto`` request.

        Whether the policy allows it is learnt by the request's activity (the policy lives
        with the worker); histories from before this existed never queue one. After an
        auto change that ended FAILED, the next batch offers it again even if the advice
        did not move.
        """
        _, advice = self._ledger.conclusions(workflow.now())
        live = live_advice(advice)
        # The same advice again is offered again only if the last auto change could not
        # be written (Redis down): otherwise a change lost to an outage waits for the
        # advice to move, which may be never.
        retry = self._desk.last_auto_failed and not self._desk.auto_pending
        if not live or (live == self._last_auto_advice and not retry):
            return
        self._last_auto_advice = live
        if workflow.patched(PATCH_PROFILE_AUTO_ADAPT):
            self._desk.offer_auto(f"auto-{self._ledger.counters.batches}")

    @workflow.signal(name=SIGNAL_APPLY_ADVICE)
    def apply_advice(self, request: ApplyAdviceSignal) -> None:
        """Apply the advice (an approver's request; its id is answered once)."""
        self._desk.offer("apply", request)

    @workflow.signal(name=SIGNAL_REVERT_CONFIG)
    def revert_config(self, request: RevertConfigSignal) -> None:
        """Undo the config version in force (an approver's request; answered once)."""
        self._desk.offer("revert", request)

    @workflow.query(name=QUERY_PROFILE)
    def profile(self) -> ProfileView:
        """The observations held, their counts, counters, and score and advice now."""
        view = self._ledger.view(workflow.now())
        changes = self._desk.changes
        return view.model_copy(update={"last_change": changes[-1] if changes else None})

    @workflow.query(name=QUERY_CONFIG_CHANGE)
    def config_change(self, request_id: str) -> list[ConfigChange]:
        """The recorded change of ``request_id``: one item, or none (not decided yet)."""
        found = self._desk.find(request_id)
        return [] if found is None else [found]
