"""The bridge's direct lane on a real dev server and Redis: the first recovery request
fleet-wide in a quiet second skips the intake; a storm still goes through the intakes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    SIGNAL_REQUEST_RECOVERIES,
    intake_shard,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.runtime import Runtime
from antifragile.orchestrator.client import orchestrator_queue
from antifragile.stack.processes import free_port
from tests.integration.test_bridge import Boom, eventually, fail, runtime_for

pytestmark = pytest.mark.integration

SLOW = {"policy": {"initial_delay_ms": 600_000, "max_delay_ms": 600_000}}
"""A dead service's recovery waits (and holds its slot) until the test ends it."""


def open_breaker(runtime: Runtime, service: str) -> Any:
    guard = runtime.guard(
        service,
        probe=f"tcp://127.0.0.1:{free_port()}",  # nothing listens
        breaker_config=CircuitBreakerConfig(failure_threshold=1, open_duration_s=60),
        recovery=SLOW,
    )
    return guard.call(fail)


async def request_signals(client: Client, workflow_id: str) -> list[list[str]]:
    """Services of each ``request_recoveries`` signal in a workflow's history."""
    handle = client.get_workflow_handle(workflow_id)
    out: list[list[str]] = []
    try:
        events = [event async for event in handle.fetch_history_events()]
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:  # never started: nothing went there
            return out
        raise
    for event in events:
        attrs = event.workflow_execution_signaled_event_attributes
        if event.HasField("workflow_execution_signaled_event_attributes") and (
            attrs.signal_name == SIGNAL_REQUEST_RECOVERIES
        ):
            [batch] = await client.data_converter.decode(list(attrs.input.payloads))
            out.append([r["service"] for r in batch["requests"]])
    return out


async def known(client: Client, task_queue: str) -> int:
    view = await orchestrator_queue(client, task_queue=task_queue)
    return view.admitted_total + view.waiting_total


async def end_recoveries(client: Client, services: list[str]) -> None:
    for service in services:
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(recovery_workflow_id(service)).terminate("done")


async def test_a_lone_request_in_a_quiet_fleet_skips_the_intake(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_url: str
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    runtime = runtime_for(temporal_client, redis_url, task_queue, "it-direct")
    orchestrator = orchestrator_workflow_id(task_queue)
    async with start_worker(temporal_client, task_queue):
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await open_breaker(runtime, service)
            await eventually(lambda: known(temporal_client, task_queue))
            assert runtime.bridge is not None and runtime.bridge.direct_requests == 1
            assert await request_signals(temporal_client, orchestrator) == [[service]]
            # The intake of its shard was never involved (never even started).
            with pytest.raises(RPCError) as err:
                await temporal_client.get_workflow_handle(
                    intake_workflow_id(orchestrator, intake_shard(service))
                ).describe()
            assert err.value.status is RPCStatusCode.NOT_FOUND
        finally:
            await runtime.stop()
            await end_recoveries(temporal_client, [service])


async def test_a_storm_from_many_processes_takes_one_token_and_the_intakes(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_url: str
) -> None:
    processes = 12
    services = [f"svc-{i}-{uuid.uuid4().hex[:6]}" for i in range(processes)]
    runtimes = [
        runtime_for(temporal_client, redis_url, task_queue, f"it-storm-{i}")
        for i in range(processes)
    ]
    orchestrator = orchestrator_workflow_id(task_queue)
    async with start_worker(temporal_client, task_queue):
        await asyncio.gather(*(r.start() for r in runtimes))
        try:
            results = await asyncio.gather(
                *(open_breaker(r, s) for r, s in zip(runtimes, services, strict=True)),
                return_exceptions=True,
            )
            assert all(isinstance(r, Boom) for r in results)
            await eventually(
                lambda: _at_least(known(temporal_client, task_queue), processes), timeout=30
            )
            direct = sum(r.bridge.direct_requests for r in runtimes if r.bridge is not None)
            # Every process met a quiet fleet, but the token is fleet-wide: one went
            # direct, the others through the intakes (which batch them).
            assert direct == 1
            signals = await request_signals(temporal_client, orchestrator)
            assert sorted(s for batch in signals for s in batch) == sorted(services)
            via_intakes = []
            for shard in {intake_shard(s) for s in services}:
                intake = intake_workflow_id(orchestrator, shard)
                via_intakes += [
                    s for b in await request_signals(temporal_client, intake) for s in b
                ]
            assert len(via_intakes) == processes - 1
            assert len(set(via_intakes)) == processes - 1
        finally:
            await asyncio.gather(*(r.stop() for r in runtimes))
            await end_recoveries(temporal_client, services)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)


async def test_unreachable_redis_sends_the_request_through_the_intake_at_once(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    runtime = runtime_for(temporal_client, dead_redis, task_queue, "it-noredis")
    orchestrator = orchestrator_workflow_id(task_queue)
    async with start_worker(temporal_client, task_queue):
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await open_breaker(runtime, service)
            await eventually(lambda: known(temporal_client, task_queue))
            assert runtime.bridge is not None and runtime.bridge.direct_requests == 0
            intake = intake_workflow_id(orchestrator, intake_shard(service))
            assert await request_signals(temporal_client, intake) == [[service]]
        finally:
            await runtime.stop()
            await end_recoveries(temporal_client, [service])
