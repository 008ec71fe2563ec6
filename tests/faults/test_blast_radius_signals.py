"""Breaker changes of every blast-radius member reach the experiment by signal, not only
those of its target.

A real experiment (dev server, Redis, worker) faults ``target`` with a blast radius of
``target`` and ``neighbour``; a process embedding the runtime guards both. The
neighbour's breaker opens: the bridge finds the experiment through its fault lease and
signals it, and the sample is in the experiment's health timeline, marked as a signal
from that process (Redis polling alone would mark it ``fleet``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import Client

from antifragile.chaos.client import start_experiment
from antifragile.constants import SIGNAL_EMERGENCY_STOP
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitState
from antifragile.inprocess.runtime import Runtime
from antifragile.models.chaos import (
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosStatus,
    EmergencyStopSignal,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.settings import Settings
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom


async def test_a_neighbour_in_the_blast_radius_reaches_the_experiment_by_signal(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    target, neighbour = f"br-target-{tag}", f"br-neighbour-{tag}"
    settings = Settings(task_queue=task_queue, redis_url=redis_url)
    scenario = ChaosScenario.model_validate(
        {
            "name": f"br-{tag}",
            "chaos_type": "LATENCY",
            "latency_ms": 5,
            "target": target,
            "blast_radius": [target, neighbour],
            "duration_s": 60,
            "abort_below_health": 0.0,  # keep it running: the test reads the timeline
            # This runtime runs without the fault plane (only its bridge matters here), so
            # it is not in the fleet registry the preflight reads.
            "allow_unguarded": True,
        }
    )
    runtime = Runtime(
        settings,
        instance_id=f"br-inst-{tag}",
        temporal_client=temporal_client,
        metering=False,
        fault_plane=False,
        publish_interval_s=30,  # no Redis snapshot while the test watches the signal
        bridge_options={"chaos_cache_s": 0},
    )
    runtime.guard(target, recovery=False)
    guard = runtime.guard(
        neighbour, breaker_config=CircuitBreakerConfig(failure_threshold=1), recovery=False
    )
    async with start_worker(temporal_client, task_queue, settings=settings):
        handle = await start_experiment(temporal_client, scenario, task_queue=task_queue)

        async def running() -> bool:
            st = await handle.query("status", result_type=ChaosStatus)
            return st.phase is ChaosPhase.RUNNING

        await wait_for(running, 30)
        query = f'WorkflowId="{handle.id}" AND ExecutionStatus="Running"'

        async def listed() -> bool:
            return bool([w async for w in temporal_client.list_workflows(query)])

        await wait_for(listed, 15)  # visibility is eventually consistent
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await guard.call(fail)
            assert guard.breaker.state is CircuitState.OPEN

            async def neighbour_signalled() -> bool:
                report = await handle.query("report", result_type=ChaosReport)
                return any(
                    s.source == f"signal:{runtime.instance_id}"
                    and s.detail.startswith(f"{neighbour} ")
                    and s.healthy is False
                    for s in report.health_timeline
                )

            await wait_for(neighbour_signalled, 20)
        finally:
            await runtime.stop()
            await handle.signal(SIGNAL_EMERGENCY_STOP, EmergencyStopSignal(reason="done", by="t"))
            report = await asyncio.wait_for(handle.result(), 60)
        assert report.outcome is ChaosOutcome.STOPPED
