"""DependencyProfileWorkflow on the time-skipping server: the ledger, and what feeds it.

The ledger's own rules (de-duplication, bounds, continue-as-new, a worker restart) with the
real workflow and the real recording activity; then a real recovery (scripted probe, as in
test_recovery.py) and a real chaos experiment (real chaos activities, the session's Redis)
that feed it at their end, and both again with a recording activity that always fails.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.chaos import ChaosActivities
from activities.common import CommonActivities
from activities.learning import record_dependency_observations
from antifragile.chaos.client import start_experiment
from antifragile.constants import (
    ACTIVITY_RECORD_OBSERVATIONS,
    PROFILE_WORKFLOW_TYPE,
    QUERY_PROFILE,
    REDIS_HALT_KEY,
    REDIS_HEALTH_KEY_PREFIX,
    SIGNAL_RECORD_OBSERVATIONS,
    profile_workflow_id,
)
from antifragile.learning.client import get_profile, record_observations
from antifragile.models.chaos import (
    ChaosJournal,
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    CleanupRecord,
    ExperimentImpact,
    HealthSample,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.learning import (
    ExperimentObservation,
    OutageObservation,
    ProfileCounters,
    ProfileInput,
    ProfileLimits,
    ProfileView,
    RecordObservations,
    RecordObservationsInput,
    RecordObservationsResult,
    TrafficObservation,
)
from antifragile.models.recovery import (
    AttemptRecord,
    ProbeInput,
    ProbeResult,
    RecoveryActionInput,
    RecoveryActionResult,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
)
from antifragile.policy import WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from antifragile.testing import eventually
from tests.helpers import time_skipping_server
from workers.main import workflow_runner
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow
from workflows.dependency_profile import DependencyProfileWorkflow
from workflows.recovery import RecoveryWorkflow

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own (ledgers never end: keep them here)."""
    async with time_skipping_server() as environment:
        yield environment


class ScriptedProbe:
    """Probe and action activities: the service is healthy from probe ``healthy_on`` on."""

    def __init__(self, healthy_on: int) -> None:
        self.healthy_on = healthy_on
        self.probes = 0

    @activity.defn(name="probe_service")
    async def probe_service(self, data: ProbeInput) -> ProbeResult:
        self.probes += 1
        healthy = self.probes >= self.healthy_on
        return ProbeResult(healthy=healthy, detail="ok" if healthy else "connection refused")

    @activity.defn(name="run_recovery_action")
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        return RecoveryActionResult(ok=True, detail="ok")


class FailingRecorder:
    """A ``record_dependency_observations`` that always fails (Temporal unreachable, say)."""

    def __init__(self) -> None:
        self.calls = 0

    @activity.defn(name=ACTIVITY_RECORD_OBSERVATIONS)
    async def record(self, data: RecordObservationsInput) -> RecordObservationsResult:
        self.calls += 1
        raise ApplicationError("Temporal unreachable (test)")


@pytest.fixture
def running(env: WorkflowEnvironment, redis_url: str) -> Callable[..., Any]:
    """A worker on a fresh queue: the ledger, recovery, chaos, and the recording activity."""

    @asynccontextmanager
    async def _run(
        queue: str | None = None,
        probe: ScriptedProbe | None = None,
        recorder: Callable[..., Any] = record_dependency_observations,
        **options: Any,
    ) -> AsyncIterator[str]:
        queue = queue or f"tq-{uuid.uuid4().hex[:8]}"
        probe = probe or ScriptedProbe(healthy_on=1)
        cfg, pol = Settings(redis_url=redis_url), WorkerPolicy()
        common, chaos = CommonActivities(cfg, pol), ChaosActivities(cfg, pol)
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[
                DependencyProfileWorkflow,
                RecoveryWorkflow,
                ChaosExperimentWorkflow,
                ChaosGuardianWorkflow,
            ],
            workflow_runner=workflow_runner(strict=True),
            activities=[
                recorder,
                common.validate_constitutional_hash,
                common.authorize_approver,
                probe.probe_service,
                probe.run_recovery_action,
                chaos.validate_chaos_scenario,
                chaos.check_halt_switch,
                chaos.inject_fault,
                chaos.renew_fault_lease,
                chaos.remove_fault,
                chaos.measure_health,
                chaos.collect_experiment_impact,
                chaos.check_experiment_running,
            ],
            **options,
        ):
            yield queue
        await chaos.plane.close()

    return _run


NOW = datetime.now(UTC).replace(microsecond=0)
"""Observations are placed relative to this; each test that ages moves it to the server's
time first (:func:`server_now`): earlier tests may have skipped time."""


@pytest.fixture
async def server_now(env: WorkflowEnvironment) -> datetime:
    global NOW
    NOW = (await env.get_current_time()).astimezone(UTC).replace(microsecond=0)
    return NOW


def dep() -> str:
    return f"dep-{uuid.uuid4().hex[:6]}"


def experiment(dependency: str, source: str, minutes_ago: float = 1, **kw: Any) -> Any:
    return ExperimentObservation(
        dependency=dependency,
        source_id=source,
        chaos_type="ERROR",
        fault_start=NOW - timedelta(minutes=minutes_ago),
        steady_state_held=True,
        outcome="COMPLETED",
        **kw,
    )


def outage(dependency: str, source: str, minutes_ago: float = 1) -> Any:
    return OutageObservation(
        dependency=dependency,
        source_id=source,
        started_at=NOW - timedelta(minutes=minutes_ago),
        outcome="SUCCEEDED",
    )


def traffic(dependency: str, source: str, minutes_ago: float = 1) -> Any:
    return TrafficObservation(
        dependency=dependency,
        source_id=source,
        window_start=NOW - timedelta(minutes=minutes_ago),
        window_s=10,
        calls=100,
        failures=1,
    )


async def start_ledger(
    env: WorkflowEnvironment, dependency: str, queue: str, **limits: Any
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        PROFILE_WORKFLOW_TYPE,
        ProfileInput(dependency=dependency, limits=ProfileLimits(**limits)),
        id=profile_workflow_id(dependency),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def profile_with(
    env: WorkflowEnvironment, dependency: str, batches: int, timeout: float = 15, runs: int = 1
) -> ProfileView:
    """The ledger once it has taken ``batches`` batches (in at least ``runs`` runs).

    A query that lands as a run continues as new can stay unanswered on the time-skipping
    server: each try gets 3 s, then it is asked again (the latest run answers).
    """

    async def taken() -> ProfileView:
        try:
            view = await asyncio.wait_for(get_profile(env.client, dependency), 3)
        except TimeoutError:
            raise AssertionError("query unanswered") from None
        assert view is not None and view.counters.batches >= batches, view
        assert view.counters.runs >= runs, view
        return view

    found: ProfileView = await eventually(taken, timeout)
    return found


def keys(view: ProfileView) -> list[tuple[str, str]]:
    return [(o.kind, o.source_id) for o in view.observations]


# --- the ledger ----------------------------------------------------------------------


async def test_a_ledger_is_started_by_its_first_observations_and_keeps_each_once(
    env: WorkflowEnvironment, running, server_now: datetime
) -> None:
    d = dep()
    assert await get_profile(env.client, d) is None  # never observed: no ledger
    async with running() as queue:
        first = [experiment(d, "chaos-a", 3), outage(d, "recovery-x/r1", 2), traffic(d, "i1/w1")]
        assert await record_observations(env.client, d, first, task_queue=queue) == 1
        # The same keys again (a retried activity), one with other content: all ignored.
        again = [experiment(d, "chaos-a", 3, calls_failed=7), outage(d, "recovery-x/r1", 2)]
        await record_observations(env.client, d, again, task_queue=queue)
        # Another dependency's observation, sent by hand (the client refuses it).
        handle = env.client.get_workflow_handle(profile_workflow_id(d))
        stray = RecordObservations(observations=[experiment("someone-else", "chaos-z")])
        await handle.signal(SIGNAL_RECORD_OBSERVATIONS, stray)
        view = await profile_with(env, d, batches=3)
    assert keys(view) == [
        ("experiment", "chaos-a"),
        ("outage", "recovery-x/r1"),
        ("traffic", "i1/w1"),
    ]
    held = view.observations[0]
    assert isinstance(held, ExperimentObservation) and held.calls_failed == 0  # the first wins
    assert view.counts == {"experiment": 1, "outage": 1, "traffic": 1}
    c = view.counters
    assert (c.batches, c.received, c.duplicates, c.misaddressed) == (3, 6, 2, 1)
    assert view.oldest == NOW - timedelta(minutes=3) and view.newest == NOW - timedelta(minutes=1)
    # The pure core's conclusions, from the held observations only (score: one outcome).
    assert view.score is not None and view.score.dependency == d
    assert view.score.evidence.observations == 1
    assert view.advice and view.advice[0].setting == "gap.thin.recovery"
    desc = await handle.describe()
    assert desc.search_attributes.get("AfKind") == ["profile"]
    # Not tagged with AfService: a search by service finds its recoveries and experiments.
    assert desc.search_attributes.get("AfService") is None
    with pytest.raises(ValueError, match="not"):
        await record_observations(env.client, d, [traffic("other", "w")], task_queue=queue)


async def test_the_ledger_keeps_the_newest_per_kind_and_ages_out_old_ones(
    env: WorkflowEnvironment, running, server_now: datetime
) -> None:
    d = dep()
    async with running() as queue:
        handle = await start_ledger(env, d, queue, max_per_kind=3, max_age_s=3600)
        batch = [experiment(d, f"chaos-{i}", minutes_ago=10 + i) for i in range(5)]
        batch += [outage(d, "old", minutes_ago=24 * 60), outage(d, "recent", minutes_ago=30)]
        await record_observations(env.client, d, batch, task_queue=queue)
        view = await profile_with(env, d, batches=1)
        # Newest three experiments (chaos-0 is the newest); the day-old outage aged out.
        assert keys(view) == [
            ("outage", "recent"),
            ("experiment", "chaos-2"),
            ("experiment", "chaos-1"),
            ("experiment", "chaos-0"),
        ]
        assert view.counters.dropped_over_limit == 2 and view.counters.dropped_old == 1
        # An hour later the next batch ages out everything older than an hour by then.
        await env.sleep(timedelta(hours=1))
        await record_observations(env.client, d, [traffic(d, "w", -60)], task_queue=queue)
        view = await profile_with(env, d, batches=2)
        assert keys(view) == [("traffic", "w")]
        assert view.counters.dropped_old == 5
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    details = meta.current_details
    assert details.startswith(f"**Ledger of {d}**: 0 experiment(s), 0 outage(s), 1 traffic")
    assert "5 aged out, 2 over the limit of 3 per kind" in details


async def test_continue_as_new_carries_every_observation_and_counter(
    env: WorkflowEnvironment, running
) -> None:
    d = dep()
    async with running() as queue:
        handle = await start_ledger(env, d, queue, batches_per_run=2)
        first_run = (await handle.describe()).run_id
        sent = [traffic(d, f"w{i}", 10 - i) for i in range(5)] + [traffic(d, "w0", 10)]
        for number, observation in enumerate(sent, 1):
            await record_observations(env.client, d, [observation], task_queue=queue)
            # One batch at a time, so the runs end after batches 2, 4 and 6.
            await profile_with(env, d, batches=number, runs=(number + 1) // 2)
        view = await profile_with(env, d, batches=6, runs=4)
    assert keys(view) == [("traffic", f"w{i}") for i in range(5)]
    assert view.counters.duplicates == 1  # dedup holds across runs
    assert view.counters.runs == 4  # continued as new after batches 2, 4 and 6
    assert view.counters.batches == 6 and view.counters.received == 6
    assert view.limits.batches_per_run == 2
    old = env.client.get_workflow_handle(handle.id, run_id=first_run)
    assert (await old.describe()).status is WorkflowExecutionStatus.CONTINUED_AS_NEW
    assert (await handle.describe()).run_id != first_run


async def test_signals_sent_while_no_worker_runs_are_taken_after_a_restart(
    env: WorkflowEnvironment, running
) -> None:
    d = dep()
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    # No cache (no sticky queue) in the worker that goes away: the time-skipping server
    # would keep the ledger's next task on the gone worker's sticky queue (a real server
    # moves it to the normal queue after 5 s).
    async with running(queue, max_cached_workflows=0):
        await record_observations(env.client, d, [outage(d, "o1", 5)], task_queue=queue)
        await profile_with(env, d, batches=1)
    # The worker is gone: these wait in the ledger's history.
    for i in range(2, 5):
        await record_observations(env.client, d, [outage(d, f"o{i}", 5 - i)], task_queue=queue)
    async with running(queue):
        view = await profile_with(env, d, batches=4)
    assert keys(view) == [("outage", f"o{i}") for i in range(1, 5)]
    assert view.counters.runs == 1


# --- what feeds it ---------------------------------------------------------------------


async def test_an_ending_recovery_records_the_outage(env: WorkflowEnvironment, running) -> None:
    service = dep()
    async with running(probe=ScriptedProbe(healthy_on=3)) as queue:
        request = RecoveryRequest(service=service, probe="tcp://127.0.0.1:9")
        handle = await start_recovery(env.client, request, task_queue=queue)
        result = await handle.result()
        view = await profile_with(env, service, batches=1)
        desc = await handle.describe()
    assert isinstance(result, RecoveryResult) and result.state is RecoveryState.SUCCEEDED
    [seen] = view.observations
    assert isinstance(seen, OutageObservation)
    assert seen.source_id == f"{handle.id}/{desc.run_id}"
    assert (seen.attempts, seen.probes, seen.outcome) == (3, 3, "SUCCEEDED")
    assert seen.recovered_at is not None and desc.start_time <= seen.started_at < seen.recovered_at
    # Attempts 1 and 2 failed their probes: the second one's end brackets the return.
    second = result.status.attempts[1]
    assert second.outcome == "unhealthy"
    failed_at = second.started_at + timedelta(milliseconds=second.duration_ms)
    assert seen.last_failed_probe_at == failed_at < seen.recovered_at


async def test_a_cancelled_recovery_records_the_outage_unverified(
    env: WorkflowEnvironment, running
) -> None:
    service = dep()
    async with running(probe=ScriptedProbe(healthy_on=10_000)) as queue:
        request = RecoveryRequest(service=service, probe="tcp://127.0.0.1:9")
        handle = await start_recovery(env.client, request, task_queue=queue)
        await eventually(lambda: _attempted(handle), 15)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await profile_with(env, service, batches=1)
    [seen] = view.observations
    assert isinstance(seen, OutageObservation)
    assert seen.outcome == "CANCELLED" and seen.recovered_at is None and seen.attempts >= 1


async def _attempted(handle: WorkflowHandle[Any, Any]) -> bool:
    status = await handle.query("status")
    assert status["attempt"] >= 1
    return True


def scenario(**kw: Any) -> ChaosScenario:
    name = f"exp-{uuid.uuid4().hex[:6]}"
    base: dict[str, Any] = {
        "name": name,
        "chaos_type": "ERROR",
        "target": f"dep-{name}",
        "duration_s": 20,
        "allow_unguarded": True,  # no guarded process runs here
    }
    base.update(kw)
    return ChaosScenario.model_validate(base)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.delete(REDIS_HALT_KEY)
    yield client
    await client.aclose()


async def wait_phase(handle: WorkflowHandle[Any, Any], phase: ChaosPhase) -> None:
    async def reached() -> bool:
        status = await handle.query("status", result_type=ChaosStatus)
        assert status.phase is phase, f"phase stayed {status.phase}, wanted {phase}"
        return True

    await eventually(reached, 30)


async def test_an_ending_experiment_records_what_it_saw(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    sc = scenario()
    key = f"{REDIS_HEALTH_KEY_PREFIX}wf-profile-{uuid.uuid4().hex[:6]}"

    def snap(state: str) -> str:
        return json.dumps({"health_score": 1.0, "circuit_details": {sc.target: {"state": state}}})

    await redis_client.set(key, snap("CLOSED"))
    try:
        async with running() as queue:
            handle = await start_experiment(env.client, sc, task_queue=queue)
            await wait_phase(handle, ChaosPhase.RUNNING)
            await redis_client.set(key, snap("OPEN"))  # the target's breaker opens
            await wait_phase(handle, ChaosPhase.VERIFYING_RECOVERY)
            await redis_client.set(key, snap("CLOSED"))
            report: ChaosReport = await handle.result()
            view = await profile_with(env, sc.target, batches=1)
    finally:
        await redis_client.delete(key)
    assert report.outcome is ChaosOutcome.COMPLETED and report.recovered is True
    [seen] = view.observations
    assert isinstance(seen, ExperimentObservation)
    assert (seen.source_id, seen.chaos_type, seen.outcome) == (handle.id, "ERROR", "COMPLETED")
    assert seen.fault_start == report.injected_at
    assert seen.fault_end == report.cleanup.fault_ended_at == report.removed_at
    assert seen.detected_at is not None and report.injected_at < seen.detected_at < seen.fault_end
    assert report.time_to_recover_s is not None and report.removed_at is not None
    assert seen.recovered_at == report.removed_at + timedelta(seconds=report.time_to_recover_s)
    assert seen.steady_state_held is True
    assert (seen.calls_failed, seen.calls_refused) == (0, 0)  # no guarded process ran


async def test_a_failing_recorder_changes_no_outcome(
    env: WorkflowEnvironment, running, redis_client: aioredis.Redis
) -> None:
    recorder = FailingRecorder()
    service = dep()
    async with running(probe=ScriptedProbe(healthy_on=2), recorder=recorder.record) as queue:
        request = RecoveryRequest(service=service, probe="tcp://127.0.0.1:9")
        recovery = await start_recovery(env.client, request, task_queue=queue)
        result = await recovery.result()
        assert recorder.calls == 3  # three tries, then it gives up
        sc = scenario(duration_s=5)
        experiment_handle = await start_experiment(env.client, sc, task_queue=queue)
        report: ChaosReport = await experiment_handle.result()
        assert recorder.calls == 6
    assert result.state is RecoveryState.SUCCEEDED and result.attempts == 2
    assert report.outcome is ChaosOutcome.COMPLETED
    assert await get_profile(env.client, service) is None
    for handle in (recovery, experiment_handle):
        history = await handle.fetch_history()
        failed = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
        ]
        assert len(failed) == 1  # the recording, after its last try
        assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


async def test_the_query_and_the_signal_use_the_shared_names(
    env: WorkflowEnvironment, running
) -> None:
    d = dep()
    async with running() as queue:
        handle = await start_ledger(env, d, queue)
        await handle.signal(
            SIGNAL_RECORD_OBSERVATIONS, RecordObservations(observations=[outage(d, "o")])
        )
        view = await eventually(lambda: _held(handle), 10)
    assert isinstance(view, ProfileView) and keys(view) == [("outage", "o")]


async def _held(handle: WorkflowHandle[Any, Any]) -> ProfileView:
    view: ProfileView = await handle.query(QUERY_PROFILE, result_type=ProfileView)
    assert view.observations
    return view


async def test_nothing_is_sent_for_no_observations(env: WorkflowEnvironment) -> None:
    assert await record_observations(env.client, dep(), [], task_queue="nowhere") == 0


# --- the pure parts, by table -----------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("batch", "limits", "kept", "counters"),
    [
        ([], {}, [], (1, 0, 0, 0, 0, 0)),
        ([("experiment", "a", 0)], {}, [("experiment", "a")], (1, 1, 0, 0, 0, 0)),
        (
            [("experiment", "a", 0), ("experiment", "a", 5)],
            {},
            [("experiment", "a")],
            (1, 2, 1, 0, 0, 0),
        ),
        (  # the same source id under two kinds: two observations
            [("experiment", "a", 0), ("outage", "a", 0)],
            {},
            [("experiment", "a"), ("outage", "a")],
            (1, 2, 0, 0, 0, 0),
        ),
        (  # exactly max_age old is kept, one second more is not
            [("traffic", "edge", 60), ("traffic", "old", 61)],
            {"max_age_s": 60},
            [("traffic", "edge")],
            (1, 2, 0, 0, 1, 0),
        ),
        (  # the newest per kind; other kinds untouched
            [("outage", "o1", 3), ("outage", "o2", 2), ("outage", "o3", 1), ("traffic", "t", 9)],
            {"max_per_kind": 2},
            [("traffic", "t"), ("outage", "o2"), ("outage", "o3")],
            (1, 4, 0, 0, 0, 1),
        ),
    ],
)
def test_ledger_table(
    batch: list[tuple[str, str, int]],
    limits: dict[str, int],
    kept: list[tuple[str, str]],
    counters: tuple[int, ...],
) -> None:
    from workflows.dependency_profile import Ledger

    now = T0 + timedelta(days=1)
    build = {"experiment": experiment, "outage": outage, "traffic": traffic}
    global NOW
    saved, NOW = NOW, now
    try:
        observations = [build[kind]("d", source, seconds / 60) for kind, source, seconds in batch]
    finally:
        NOW = saved
    ledger = Ledger("d", ProfileLimits(**limits), [], ProfileCounters())
    ledger.add(observations, now)
    assert [(o.kind, o.source_id) for o in ledger.observations()] == kept
    c = ledger.counters
    got = (c.batches, c.received, c.duplicates, c.misaddressed, c.dropped_old)
    assert (*got, c.dropped_over_limit) == counters


def test_a_naive_time_is_read_as_utc_and_another_dependency_is_ignored() -> None:
    from workflows.dependency_profile import Ledger

    naive = OutageObservation(
        dependency="d", source_id="n", started_at=datetime(2026, 1, 1), outcome="FAILED"
    )
    stray = OutageObservation(dependency="x", source_id="s", started_at=T0, outcome="FAILED")
    ledger = Ledger("d", ProfileLimits(max_age_s=3600), [], ProfileCounters())
    ledger.add([naive, stray], T0 + timedelta(minutes=30))
    assert [o.source_id for o in ledger.observations()] == ["n"]
    assert ledger.counters.misaddressed == 1
    assert ledger.view().counts == {"experiment": 0, "outage": 1, "traffic": 0}
    empty = Ledger("d", ProfileLimits(), [], ProfileCounters()).view()
    assert (empty.oldest, empty.newest, empty.observations) == (None, None, [])


def _journal(**kw: Any) -> ChaosJournal:
    sc = scenario(chaos_type="ERROR", duration_s=30)
    base: dict[str, Any] = {
        "experiment_id": "chaos-x",
        "scenario": sc,
        "started_at": T0,
        "duration_s": 30,
    }
    base.update(kw)
    return ChaosJournal(**base)


def _sample(seconds: int, targets: float | None, source: str = "fleet") -> HealthSample:
    return HealthSample(at=T0 + timedelta(seconds=seconds), targets_score=targets, source=source)


S = timedelta(seconds=1)


def test_an_experiment_tells_its_ledger_the_latency_under_its_fault() -> None:
    from workflows._learning_feed import experiment_observation

    journal = _journal(injected_at=T0, removed_at=T0 + 30 * S, fault_latency=[0, 3, 1, 0, 0])
    seen = experiment_observation(journal, ChaosOutcome.COMPLETED)
    assert seen is not None and seen.latency.counts == [0, 3, 1]  # trailing empties dropped
    none = experiment_observation(_journal(injected_at=T0), ChaosOutcome.COMPLETED)
    assert none is not None and none.latency.counts == []


@pytest.mark.parametrize(
    ("journal", "outcome", "expected"),
    [
        (_journal(), ChaosOutcome.FAILED, None),  # never injected
        (_journal(injected_at=T0, scenario=scenario(dry_run=True)), ChaosOutcome.COMPLETED, None),
        (  # injected, nothing measured
            _journal(injected_at=T0),
            ChaosOutcome.STOPPED,
            {"fault_end": None, "detected_at": None, "recovered_at": None, "held": True},
        ),
        (  # a breaker seen open at 10 s (not the pre-injection sample), back 5 s after removal
            _journal(
                injected_at=T0,
                removed_at=T0 + 30 * S,
                cleanup=CleanupRecord(fault_ended_at=T0 + 30 * S),
                health=[_sample(-5, 0.0), _sample(5, 1.0), _sample(10, 0.5), _sample(20, 0.0)],
                recovered=True,
                time_to_recover_s=5.0,
                impact=ExperimentImpact(
                    calls_affected={"i1": 30, "i2": 12}, calls_refused={"i1": 20, "i2": 2}
                ),
            ),
            ChaosOutcome.COMPLETED,
            {
                "fault_end": T0 + 30 * S,
                "detected_at": T0 + 10 * S,
                "recovered_at": T0 + 35 * S,
                "held": True,
                "failed": 20,
                "refused": 22,
            },
        ),
        (  # health never dropped: verified by the first measurement after removal
            _journal(
                injected_at=T0,
                removed_at=T0 + 30 * S,
                health=[_sample(31, None, "signal:p1"), _sample(32, 1.0, "fleet+probe")],
                recovered=True,
            ),
            ChaosOutcome.ABORTED,
            {"fault_end": T0 + 30 * S, "recovered_at": T0 + 32 * S, "held": False},
        ),
        (  # not verified; a lease that expired ends the fault at its expiry
            _journal(
                injected_at=T0,
                removed_at=T0 + 40 * S,
                cleanup=CleanupRecord(fault_ended_at=T0 + 35 * S),
                recovered=False,
                impact=ExperimentImpact(calls_affected={"i": 1}, calls_refused={"i": 5}),
            ),
            ChaosOutcome.STOPPED,
            {"fault_end": T0 + 35 * S, "recovered_at": None, "failed": 0, "refused": 5},
        ),
    ],
)
def test_experiment_observation_table(
    journal: ChaosJournal, outcome: ChaosOutcome, expected: dict[str, Any] | None
) -> None:
    from workflows._learning_feed import experiment_observation

    seen = experiment_observation(journal, outcome)
    if expected is None:
        assert seen is None
        return
    assert seen is not None and seen.source_id == "chaos-x" and seen.outcome == outcome.value
    assert seen.fault_start == T0 and seen.dependency == journal.scenario.target
    got = {
        "fault_end": seen.fault_end,
        "detected_at": seen.detected_at,
        "recovered_at": seen.recovered_at,
        "held": seen.steady_state_held,
        "failed": seen.calls_failed,
        "refused": seen.calls_refused,
    }
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("attempts", "outcomes", "watch", "probes"),
    [
        (0, [], 0, 0),  # refused before any attempt (hash mismatch)
        (1, ["healthy"], 0, 1),
        (3, ["unhealthy", "action_failed", "healthy"], 2, 4),
        (25, ["action_failed"] * 20, 0, 5),  # 5 attempts trimmed away count as probed
    ],
)
def test_outage_observation_table(
    attempts: int, outcomes: list[str], watch: int, probes: int
) -> None:
    from workflows._learning_feed import outage_observation

    records = [
        AttemptRecord(number=i + 1, started_at=T0, duration_ms=1, outcome=o)
        for i, o in enumerate(outcomes)
    ]
    seen = outage_observation(
        "db",
        "recovery-db/run",
        RecoveryState.SUCCEEDED,
        started_at=T0,
        recovered_at=None,
        attempts=attempts,
        records=records,
        watch_probes=watch,
    )
    assert (seen.attempts, seen.probes, seen.outcome) == (attempts, probes, "SUCCEEDED")
    assert seen.last_failed_probe_at is None  # never verified: nothing bracketed


@pytest.mark.parametrize(
    ("outcomes", "recovered_s", "last_failed_s"),
    [
        ([("unhealthy", 0, 1), ("unhealthy", 2, 1), ("healthy", 6, 1)], 7, 3),
        ([("healthy", 0, 1)], 1, None),  # the first probe passed: nothing bracketed
        ([("unhealthy", 0, 1), ("action_failed", 2, 1), ("healthy", 4, 1)], 5, 1),
        ([("action_failed", 0, 1), ("healthy", 2, 1)], 3, None),  # no probe failed
        # A probe that ended after the passing one (cannot happen in one workflow; a
        # record from another run) does not bracket the return.
        ([("unhealthy", 0, 1), ("unhealthy", 8, 1)], 7, 1),
    ],
)
def test_outage_observation_brackets_the_return_with_the_last_failed_probe(
    outcomes: list[tuple[str, float, float]], recovered_s: float, last_failed_s: float | None
) -> None:
    from workflows._learning_feed import outage_observation

    records = [
        AttemptRecord(
            number=i + 1,
            started_at=T0 + timedelta(seconds=start),
            duration_ms=int(took * 1000),
            outcome=o,
        )
        for i, (o, start, took) in enumerate(outcomes)
    ]
    seen = outage_observation(
        "db",
        "recovery-db/run",
        RecoveryState.SUCCEEDED,
        started_at=T0,
        recovered_at=T0 + timedelta(seconds=recovered_s),
        attempts=len(records),
        records=records,
        watch_probes=0,
    )
    expected = None if last_failed_s is None else T0 + timedelta(seconds=last_failed_s)
    assert seen.last_failed_probe_at == expected


# --- What the ledger concludes, and `antifragile advise` / `score` reading it ----------


@pytest.mark.asyncio(loop_scope="session")
async def test_advise_and_score_read_what_three_outages_showed(
    env: WorkflowEnvironment, running, server_now: datetime, redis_url: str
) -> None:
    import os

    from tests.helpers import run_cli

    name = dep()
    outages = [
        OutageObservation(
            dependency=name,
            source_id=f"out-{i}",
            started_at=server_now - timedelta(minutes=10 * (i + 1)),
            recovered_at=server_now - timedelta(minutes=10 * (i + 1)) + timedelta(seconds=s),
            outcome="SUCCEEDED",
        )
        for i, s in enumerate((5.5, 6.0, 6.5))
    ]
    async with running() as queue:
        await record_observations(env.client, name, outages, task_queue=queue)
        view = await profile_with(env, name, batches=1)
        assert view.score is not None and view.score.score is not None
        assert any(a.setting == "breaker.open_duration_s" for a in view.advice)
        target = env.client.service_client.config.target_host
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
        cli_env.update(ANTIFRAGILE_TEMPORAL_ADDRESS=target, ANTIFRAGILE_REDIS_URL=redis_url)
        advised = await run_cli(cli_env, "advise", name, "--json")
        assert advised.code == 0, advised.stderr
        report = json.loads(advised.stdout)
        assert report["settings_source"] == "library defaults"
        (open_s,) = [a for a in report["advice"] if a["setting"] == "breaker.open_duration_s"]
        assert 6 * 0.75 <= open_s["recommended"] <= 6 * 1.25, open_s
        assert open_s["evidence"]["observations"] == 3
        scored = await run_cli(cli_env, "score", name, "--json")
        assert scored.code == 0, scored.stderr
        assert isinstance(json.loads(scored.stdout)["score"], float)
        table = await run_cli({**cli_env, "COLUMNS": "200"}, "advise", name)
        print((await run_cli(cli_env, "score", name)).stdout)
        assert table.code == 0 and "breaker.open_duration_s" in table.stdout, table
        print(table.stdout)
        missing = await run_cli(cli_env, "advise", f"{name}-none")
        assert missing.code == 2 and "no ledger" in missing.stderr, missing


@pytest.mark.asyncio(loop_scope="session")
async def test_without_a_dependency_every_ledger_is_listed(
    temporal_client: Any, dev_server: Any, redis_url: str
) -> None:
    """Visibility lists the running ledgers (the dev server: the test server lists none)."""
    from antifragile.temporal_client import ensure_search_attributes
    from tests.helpers import run_cli, stack_env

    await ensure_search_attributes(temporal_client)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    names = sorted(dep() for _ in range(2))
    now = datetime.now(UTC)
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=[DependencyProfileWorkflow],
        workflow_runner=workflow_runner(strict=True),
    ):
        for name in names:
            obs = OutageObservation(
                dependency=name,
                source_id="o1",
                started_at=now - timedelta(minutes=5),
                recovered_at=now - timedelta(minutes=5) + timedelta(seconds=6),
                outcome="SUCCEEDED",
            )
            await record_observations(temporal_client, name, [obs], task_queue=queue)
        cli_env = stack_env(dev_server, redis_url, queue)

        async def listed() -> list[dict[str, Any]]:
            result = await run_cli(cli_env, "score", "--json")
            assert result.code == 0, result.stderr
            mine = [s for s in json.loads(result.stdout) if s["dependency"] in names]
            assert [s["dependency"] for s in mine] == names, result.stdout
            return mine

        scores = await eventually(listed, 30)
        assert all(s["score"] == 100.0 for s in scores)
        advised = await run_cli(cli_env, "advise", "--json")
        assert advised.code == 0, advised.stderr
        reports = [r for r in json.loads(advised.stdout) if r["dependency"] in names]
        assert [r["settings_source"] for r in reports] == ["library defaults"] * 2
        # A config version in force replaces the defaults; Redis unreachable: a note.
        from antifragile.learning import config_versions
        from antifragile.models.learning import DependencySettings

        redis = aioredis.from_url(redis_url)
        try:
            await config_versions.publish(
                redis, names[0], DependencySettings(open_duration_s=8.0), by="test", why="t"
            )
        finally:
            await redis.aclose()
        over = await run_cli(cli_env, "advise", names[0], "--json")
        assert over.code == 0, over.stderr
        doc = json.loads(over.stdout)
        assert doc["settings_source"] == "config version 1"
        assert doc["current"]["open_duration_s"] == 8.0
        assert doc["advice"][0]["setting"] == "gap.thin.recovery"  # one outage: too thin
        gone = {**cli_env, "ANTIFRAGILE_REDIS_URL": "redis://127.0.0.1:1/0"}
        fallback = await run_cli(gone, "advise", names[0], "--json")
        assert fallback.code == 0, fallback.stderr
        assert fallback.stderr.startswith("note: Redis at") and fallback.stderr.count("\n") == 1
        assert json.loads(fallback.stdout)["settings_source"] == "library defaults"
        for name in names:
            await temporal_client.get_workflow_handle(profile_workflow_id(name)).terminate()
