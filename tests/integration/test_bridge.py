"""Bridge on a real dev server: an opening breaker starts/joins recovery-{service}."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import antifragile.testing as af_testing
from antifragile.constants import KIND_CHAOS, SA_KIND, SA_SERVICE, recovery_workflow_id
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitState
from antifragile.inprocess.runtime import Runtime
from antifragile.models.common import HealthChangedSignal
from antifragile.models.recovery import RecoveryStatus
from antifragile.settings import Settings
from antifragile.stack.processes import free_port

pytestmark = pytest.mark.integration


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns a truthy value (real servers, real latency: an RPC
    error means "not yet")."""
    return await af_testing.eventually(check, timeout, retry_on=(RPCError,))


async def status(handle: WorkflowHandle[Any, Any]) -> RecoveryStatus:
    return await handle.query("status", result_type=RecoveryStatus)


async def signal_names(handle: WorkflowHandle[Any, Any]) -> list[str]:
    names = []
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            names.append(event.workflow_execution_signaled_event_attributes.signal_name)
    return names


def runtime_for(
    client: Client | None, redis_url: str, task_queue: str, instance: str, **kw: Any
) -> Runtime:
    settings = Settings(task_queue=task_queue, redis_url=redis_url)
    return Runtime(
        settings,
        instance_id=instance,
        temporal_client=client,
        metering=False,
        publish_interval_s=0.2,
        **kw,
    )


async def test_open_breaker_starts_then_joins_recovery_and_close_signals_health(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_url: str
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: the recovery keeps waiting
    runtime = runtime_for(temporal_client, redis_url, task_queue, "it-1")
    guard = runtime.guard(
        service,
        probe=dead,
        breaker_config=CircuitBreakerConfig(failure_threshold=1, open_duration_s=60),
        recovery={"policy": {"initial_delay_ms": 600_000, "max_delay_ms": 600_000}},
    )
    handle = temporal_client.get_workflow_handle(recovery_workflow_id(service))
    async with start_worker(temporal_client, task_queue):
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await guard.call(fail)
            assert guard.breaker.state is CircuitState.OPEN
            first = await eventually(lambda: status(handle))
            assert first.requested_by == "it-1"
            assert first.reason == "circuit breaker opened"
            assert first.probe == dead
            run_id = (await handle.describe()).run_id

            # Redis has this instance's snapshot, with the open breaker.
            r = aioredis.Redis.from_url(redis_url)
            try:
                # Snapshots after a change are coalesced (0.5 s): wait for the one after
                # the opening, not the one written at start.
                async def open_snapshot() -> bool:
                    raw = await r.get("af:health:it-1")
                    if raw is None:
                        return False
                    details = json.loads(raw)["circuit_details"]
                    return bool(details.get(service, {}).get("state") == "OPEN")

                await eventually(open_snapshot)
                assert 0 < await r.pttl("af:health:it-1") <= 15_000
            finally:
                await r.aclose()

            # Closing the breaker signals health_changed to the recovery.
            guard.breaker.reset()
            await eventually(lambda: _has_signal(handle, "health_changed"))

            # A second opening joins the same workflow instead of starting another.
            with pytest.raises(Boom):
                await guard.call(fail)
            await eventually(lambda: _joins_at_least(handle, 1))
            assert (await handle.describe()).run_id == run_id
        finally:
            await runtime.stop()
            await handle.terminate("test done")
        # A stopped runtime removes its snapshot from Redis.
        r = aioredis.Redis.from_url(redis_url)
        try:
            assert await r.get("af:health:it-1") is None
        finally:
            await r.aclose()


async def _has_signal(handle: WorkflowHandle[Any, Any], name: str) -> bool:
    return name in await signal_names(handle)


async def _joins_at_least(handle: WorkflowHandle[Any, Any], n: int) -> bool:
    return (await status(handle)).joins >= n


async def test_unreachable_temporal_is_retried_with_backoff_keeping_the_latest_state(
    temporal_client: Client, start_worker: Any, task_queue: str, redis_url: str
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    attempts = 0
    sleeps: list[float] = []

    async def flaky_connect() -> Client:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RuntimeError("connection refused (simulated outage)")
        return temporal_client

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    runtime = runtime_for(
        None,
        redis_url,
        task_queue,
        "it-2",
        temporal_client_factory=flaky_connect,
        bridge_options={"sleep": no_sleep, "initial_backoff_s": 0.1, "max_backoff_s": 1.0},
    )
    guard = runtime.guard(
        service,
        probe=f"tcp://127.0.0.1:{free_port()}",
        breaker_config=CircuitBreakerConfig(failure_threshold=1),
        recovery={"policy": {"initial_delay_ms": 600_000, "max_delay_ms": 600_000}},
    )
    handle = temporal_client.get_workflow_handle(recovery_workflow_id(service))
    async with start_worker(temporal_client, task_queue):
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await guard.call(fail)  # the call path is not slowed by the outage
            await eventually(lambda: status(handle))
            assert runtime.bridge is not None
            assert runtime.bridge.failures == 3
            assert sleeps == [0.1, 0.2, 0.4]
            assert runtime.bridge.pending == {}
        finally:
            await runtime.stop()
            await handle.terminate("test done")


@workflow.defn(name="FakeChaosExperiment")
class FakeChaosExperiment:
    """Stands in for the chaos workflow: records the health signals it receives."""

    def __init__(self) -> None:
        self.signals: list[HealthChangedSignal] = []
        self.done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return len(self.signals)

    @workflow.signal(name="health_changed")
    def health_changed(self, signal: HealthChangedSignal) -> None:
        self.signals.append(signal)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def received(self) -> list[HealthChangedSignal]:
        return self.signals


async def test_health_changes_are_signalled_to_running_chaos_experiments(
    temporal_client: Client, task_queue: str, redis_url: str
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    runtime = runtime_for(
        temporal_client, redis_url, task_queue, "it-3", bridge_options={"chaos_cache_s": 0}
    )
    guard = runtime.guard(
        service, breaker_config=CircuitBreakerConfig(failure_threshold=1), recovery=False
    )
    async with Worker(
        temporal_client,
        task_queue=task_queue,
        workflows=[FakeChaosExperiment],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await temporal_client.start_workflow(
            FakeChaosExperiment.run,
            id=f"chaos-{service}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SA_KIND, KIND_CHAOS), SearchAttributePair(SA_SERVICE, service)]
            ),
        )
        query = f'AfKind="chaos" AND AfService="{service}" AND ExecutionStatus="Running"'

        async def listed() -> bool:
            return bool([w async for w in temporal_client.list_workflows(query)])

        await eventually(listed)  # visibility is eventually consistent
        await runtime.start()
        try:
            with pytest.raises(Boom):
                await guard.call(fail)  # OPEN: unhealthy
            got = await eventually(lambda: handle.query(FakeChaosExperiment.received))
            assert got[0].service == service
            assert got[0].healthy is False
            assert got[0].source == "it-3"
            assert got[0].status == "CRITICAL"
            guard.breaker.reset()  # CLOSED: healthy again

            async def healthy_seen() -> bool:
                signals = await handle.query(FakeChaosExperiment.received)
                return signals[-1].healthy is True

            await eventually(healthy_seen)
            await handle.signal(FakeChaosExperiment.finish)
            assert await handle.result() >= 2
        finally:
            await runtime.stop()
