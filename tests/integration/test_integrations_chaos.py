"""Guarded clients under real chaos experiments: a tiny service embeds a Runtime and calls a
real HTTP server with guarded_client (httpx) and guarded_session (aiohttp), the session's
Redis with guarded_redis and a real gRPC server with guarded_channel, each on its own
target. A worker (subprocess) and the session's dev server run the experiments, started
through the CLI and the chaos client: each fault reaches exactly its target's calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from antifragile.chaos.client import start_experiment
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.faults import InjectedFault
from antifragile.inprocess.runtime import Runtime
from antifragile.models.chaos import ChaosOutcome, ChaosReport
from antifragile.settings import Settings
from antifragile.stack.processes import ServerProcess
from tests.integ_clients_support import KINDS, Servers, timed
from tests.integ_clients_support import Client as GuardedClient
from tests.integration.chaos_support import ChildProcess, chaos_scenario, cli, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TAG = uuid.uuid4().hex[:6]
TARGETS = {kind: f"svc-{kind}-{TAG}" for kind in KINDS}


@dataclass
class Worker:
    env: dict[str, str]
    queue: str


@pytest.fixture(scope="module")
def worker(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    workdir = tmp_path_factory.mktemp("integ-chaos")
    policy = workdir / "policy.yaml"
    policy.write_text(
        "chaos:\n"
        f"  allowed_targets: [{', '.join(TARGETS.values())}]\n"
        "  max_duration_s: 60\n"
        "  lease_ttl_s: 2\n"
    )
    queue = f"integ-it-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{dev_server.port}",
        ANTIFRAGILE_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
        ANTIFRAGILE_TASK_QUEUE=queue,
        ANTIFRAGILE_POLICY_FILE=str(policy),
        ANTIFRAGILE_LOG_LEVEL="WARNING",
    )
    process = ChildProcess(["-m", "workers"], env, Path(workdir) / "worker.log")
    process.start()
    try:
        yield Worker(env, queue)
    finally:
        process.stop()


@dataclass
class Call:
    faulted: bool
    seconds: float
    outcome: Any


@dataclass
class Service:
    """The tiny service: one loop per client, recording every call."""

    runtime: Runtime
    clients: dict[str, GuardedClient]
    calls: dict[str, list[Call]] = field(default_factory=dict)

    async def loop(self, kind: str) -> None:
        client = self.clients[kind]
        guard = self.runtime.guards[client.target]
        log = self.calls.setdefault(kind, [])
        while True:
            faulted = guard.fault is not None
            seconds, outcome = await timed(client.ok)
            log.append(Call(faulted and guard.fault is not None, seconds, outcome))
            await asyncio.sleep(0.02)

    def mark(self) -> dict[str, int]:
        return {kind: len(calls) for kind, calls in self.calls.items()}

    def since(self, mark: dict[str, int], kind: str) -> list[Call]:
        return self.calls[kind][mark[kind] :]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def service(
    worker: Worker, temporal_client: Client, redis_url: str, servers: Servers
) -> AsyncIterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        temporal_address=worker.env["ANTIFRAGILE_TEMPORAL_ADDRESS"],
        task_queue=worker.queue,
    )
    runtime = Runtime(
        settings,
        instance_id=f"integ-svc-{TAG}",
        temporal_client=temporal_client,
        metering=False,
        publish_interval_s=0.3,
        health_ttl_s=3.0,
    )
    # The faults are under test here, not the breakers: none opens during an experiment
    # (an injected error counts as a failure; tests/unit covers breakers opening).
    lenient = CircuitBreakerConfig(
        failure_threshold=10_000, window_size=10_000, minimum_calls=10_000
    )
    for target in TARGETS.values():
        runtime.guard(target, breaker_config=lenient)
    clients = {kind: KINDS[kind](runtime, TARGETS[kind], servers, redis_url) for kind in KINDS}
    for client in clients.values():
        await client.open()
    await runtime.start()
    svc = Service(runtime, clients)
    tasks = [asyncio.create_task(svc.loop(kind)) for kind in KINDS]
    try:
        await eventually(
            lambda: (
                runtime.fault_subscriber is not None
                and runtime.fault_subscriber.connected
                and all(len(svc.calls.get(k, [])) > 3 for k in KINDS)
            ),
            timeout=20,
            what="service calling and following the fault plane",
        )
        yield svc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        await runtime.stop()


def check(svc: Service, mark: dict[str, int], slowed: str, failed: str) -> None:
    """``slowed``'s faulted calls took >= 0.2 s, ``failed``'s raised the injected error;
    every other call (other targets, and calls outside the fault) succeeded, quickly."""
    for kind in KINDS:
        calls = svc.since(mark, kind)
        faulted = [c for c in calls if c.faulted]
        clean = [c for c in calls if not c.faulted]
        if kind == slowed:
            assert len(faulted) >= 3, calls
            assert all(c.seconds >= 0.19 for c in faulted), [c.seconds for c in faulted]
            assert not any(isinstance(c.outcome, BaseException) for c in calls), calls
        elif kind == failed:
            assert len(faulted) >= 3, calls
            assert all(
                isinstance(c.outcome, RuntimeError) and isinstance(c.outcome, InjectedFault)
                for c in faulted
            ), [c.outcome for c in faulted]
        else:
            assert not faulted, faulted
        assert not any(isinstance(c.outcome, BaseException) for c in clean), [
            c.outcome for c in clean if isinstance(c.outcome, BaseException)
        ]
        # Median, not max: one call slowed by a busy machine is not a fault.
        durations = sorted(c.seconds for c in clean)
        assert durations[len(durations) // 2] < 0.1, (kind, durations)


async def test_cli_latency_slows_exactly_the_http_calls_and_error_fails_exactly_redis(
    service: Service, worker: Worker
) -> None:
    """The issue's check: `chaos start --type latency/error --target …` from the CLI."""
    await eventually(
        lambda: all(service.runtime.guards[t].fault is None for t in TARGETS.values()),
        what="no fault",
    )
    mark = service.mark()
    common = ["--duration", "2s", "--abort-below", "0", "--wait", "--json"]
    latency, error = await asyncio.gather(
        cli(worker.env, "chaos", "start", "--type", "latency", "--target", TARGETS["httpx"],
            "--latency-ms", "250", *common),
        cli(worker.env, "chaos", "start", "--type", "error", "--target", TARGETS["redis"],
            *common),
    )  # fmt: skip
    assert latency[0] == 0, latency[2]
    assert error[0] == 0, error[2]
    for _, out, _ in (latency, error):
        report = ChaosReport.model_validate_json(out)
        assert report.outcome is ChaosOutcome.COMPLETED, report.reason
        assert report.calls_affected.get(service.runtime.instance_id, 0) > 0
    check(service, mark, slowed="httpx", failed="redis")


async def test_chaos_client_latency_on_grpc_and_error_on_aiohttp(
    service: Service, worker: Worker, temporal_client: Client
) -> None:
    await eventually(
        lambda: all(service.runtime.guards[t].fault is None for t in TARGETS.values()),
        what="no fault",
    )
    mark = service.mark()
    handles = [
        await start_experiment(
            temporal_client,
            chaos_scenario("integ", target=TARGETS["grpc"], chaos_type="LATENCY",
                           latency_ms=250, duration_s=2),
            task_queue=worker.queue,
        ),
        await start_experiment(
            temporal_client,
            chaos_scenario("integ", target=TARGETS["aiohttp"], chaos_type="ERROR",
                           duration_s=2),
            task_queue=worker.queue,
        ),
    ]  # fmt: skip
    for handle in handles:
        report = await handle.result()
        assert report.outcome is ChaosOutcome.COMPLETED, report.reason
        assert report.calls_affected.get(service.runtime.instance_id, 0) > 0
    check(service, mark, slowed="grpc", failed="aiohttp")
