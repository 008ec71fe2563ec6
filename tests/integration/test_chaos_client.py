"""The chaos client against a real dev server and Redis, without the CLI: what Python
users and the demo call to stop one experiment, halt the fleet, resume it, and manage
game-day schedules."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from temporalio.client import Client

from antifragile.chaos.client import (
    RUNNING_QUERY,
    ExperimentNotFoundError,
    ExperimentNotRunningError,
    resume_fleet,
    start_experiment,
    stop_all_experiments,
    stop_experiment,
)
from antifragile.chaos.plane import FaultPlane
from antifragile.chaos.report import experiment_report, experiment_status
from antifragile.chaos.schedules import (
    InvalidCronError,
    ScheduleError,
    create_schedule,
    delete_schedule,
    list_schedules,
)
from antifragile.models.chaos import ChaosOutcome, ChaosPhase, EmergencyStopSignal
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import ServerProcess
from tests.conftest import WorkerFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _scenario(**kw: object) -> ChaosScenario:
    data: dict[str, object] = {
        "name": f"client-{uuid.uuid4().hex[:6]}",
        "chaos_type": ChaosType.LATENCY,
        "target": "client-db",
        "duration_s": 60,
        "dry_run": True,
        "abort_below_health": 0.0,
    }
    data.update(kw)
    return ChaosScenario.model_validate(data)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    """Visibility is eventually consistent: wait until ``check`` sees what was started."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not visible in {timeout}s"
        await asyncio.sleep(0.1)


@pytest.fixture
def settings(dev_server: ServerProcess, redis_url: str, task_queue: str) -> Settings:
    return Settings(
        temporal_address=f"127.0.0.1:{dev_server.port}", redis_url=redis_url, task_queue=task_queue
    )


async def test_stop_all_signals_running_experiments_pauses_schedules_and_resume_undoes_it(
    temporal_client: Client, settings: Settings, start_worker: WorkerFactory
) -> None:
    plane = FaultPlane.from_url(settings.redis_url)
    scenario = _scenario()
    async with start_worker(temporal_client, settings.task_queue, settings=settings):
        handle = await start_experiment(temporal_client, scenario, task_queue=settings.task_queue)
        created = await create_schedule(
            temporal_client, plane, _scenario(), "0 3 * * 1", task_queue=settings.task_queue
        )
        try:
            assert not created.paused_by_halt

            async def _listed() -> bool:
                running = [wf.id async for wf in temporal_client.list_workflows(RUNNING_QUERY)]
                schedules = [s.schedule_id for s in await list_schedules(temporal_client)]
                return handle.id in running and created.schedule_id in schedules

            await _until(_listed, "the experiment and the schedule")
            result = await stop_all_experiments(
                settings, EmergencyStopSignal(reason="client halt", by="pytest"), wait_s=30
            )
            assert result.complete, result
            assert handle.id in result.temporal.signalled and result.temporal.left == []
            assert result.temporal.schedules_paused >= 1
            report = await handle.result()
            assert report.outcome is ChaosOutcome.STOPPED
            st = await experiment_status(temporal_client, handle.id, plane=plane)
            assert st.phase is ChaosPhase.STOPPED
            assert (await experiment_report(temporal_client, handle.id)).outcome is (
                ChaosOutcome.STOPPED
            )
            mine = {s.schedule_id: s for s in await list_schedules(temporal_client)}
            assert mine[created.schedule_id].paused
            # Created while halted: paused from the start.
            halted = await create_schedule(
                temporal_client, plane, _scenario(), "0 4 * * 1", task_queue=settings.task_queue
            )
            assert halted.paused_by_halt
            resumed = await resume_fleet(settings)
            assert resumed.halt_was_set and (resumed.schedules_resumed or 0) >= 2
            assert not (await plane.halt_status()).halted
            rows = {s.schedule_id: s for s in await list_schedules(temporal_client)}
            assert not rows[created.schedule_id].paused and rows[created.schedule_id].cron
            await delete_schedule(
                temporal_client, halted.schedule_id.removeprefix("chaos-schedule-")
            )
        finally:
            await delete_schedule(
                temporal_client, created.schedule_id.removeprefix("chaos-schedule-")
            )
            await plane.clear_halt()
            await plane.close()


async def test_stop_one_experiment_and_the_errors_of_bad_requests(
    temporal_client: Client, settings: Settings, start_worker: WorkerFactory
) -> None:
    plane = FaultPlane.from_url(settings.redis_url)
    try:
        with pytest.raises(ExperimentNotFoundError, match="no chaos experiment"):
            await stop_experiment(
                temporal_client, "chaos-nope-0", EmergencyStopSignal(reason="x"), wait_s=1
            )
        with pytest.raises(ScheduleError, match="no chaos schedule named"):
            await delete_schedule(temporal_client, f"nope-{uuid.uuid4().hex[:6]}")
        with pytest.raises(InvalidCronError):
            await create_schedule(
                temporal_client, plane, _scenario(), "61 * * * *", task_queue=settings.task_queue
            )
        async with start_worker(
            temporal_client, settings.task_queue, settings=settings, policy=WorkerPolicy()
        ):
            handle = await start_experiment(
                temporal_client, _scenario(), task_queue=settings.task_queue
            )
            stopped = await stop_experiment(
                temporal_client, handle.id, EmergencyStopSignal(reason="one", by="t"), wait_s=30
            )
            assert stopped.cleaned and stopped.injected is False  # a dry run injects nothing
            await handle.result()
            with pytest.raises(ExperimentNotRunningError, match="is not running"):
                await stop_experiment(
                    temporal_client, handle.id, EmergencyStopSignal(reason="x"), wait_s=1
                )
    finally:
        await plane.close()
