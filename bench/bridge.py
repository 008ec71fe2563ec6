"""Breaker opening → recovery workflow's first activity running, vs raw Temporal.

On a real dev server (started here, loopback only) with one in-process worker, 200 trials
of each, one at a time:

* bridge: a guard's breaker opens (one failed call, threshold 1); the runtime's bridge
  requests the recovery through the orchestrator in the background (signal-with-start,
  admission, child ``recovery-{service}``); we stop the clock when the recovery's first
  activity starts running in the worker.
* raw: an idle workflow already waiting for a signal; we signal it and stop the clock
  when its activity starts running. This is Temporal's own floor on this machine.

Usage: ``python -m bench.bridge [--trials N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from antifragile.breaker import CircuitBreakerConfig
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.processes import start_temporal_dev_server
from antifragile.runtime import Runtime
from antifragile.settings import Settings
from bench._temporal_baseline import BenchIdleWorkflow, bench_noop
from workers.main import all_activities, all_workflows, workflow_runner

FIRST_START: dict[str, float] = {}


class _Stamp(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        FIRST_START.setdefault(activity.info().workflow_id, time.perf_counter())
        return await super().execute_activity(input)


class StampInterceptor(Interceptor):
    """Records when each workflow's first activity starts running in this worker."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Stamp(next)


async def _wait_stamp(workflow_id: str, timeout: float = 30.0) -> float:
    deadline = time.perf_counter() + timeout
    while workflow_id not in FIRST_START:
        if time.perf_counter() > deadline:
            raise TimeoutError(workflow_id)
        await asyncio.sleep(0.0005)
    return FIRST_START[workflow_id]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _raw_trials(client: Client, queue: str, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        wid = f"bench-idle-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(BenchIdleWorkflow.run, id=wid, task_queue=queue)
        await asyncio.sleep(0.02)  # let its first workflow task finish: it is idle now
        t0 = time.perf_counter()
        await handle.signal(BenchIdleWorkflow.go)
        out.append((await _wait_stamp(wid)) - t0)
        await handle.result()
    return out


class _Boom(Exception):
    pass


async def _fail() -> None:
    raise _Boom


async def _bridge_trials(client: Client, settings: Settings, trials: int) -> list[float]:
    out = []
    # Trials follow each other at once, and the bridge paces itself to one round of
    # Temporal calls a second (storm control): every trial would wait out the previous
    # one's second. A breaker opening in a quiet process meets an idle bridge, which this
    # measures: no pacing.
    runtime = Runtime(
        settings,
        temporal_client=client,
        metering=False,
        instance_id="bench",
        bridge_options={"min_interval_s": 0.0},
    )
    await runtime.start()
    try:
        for i in range(trials):
            name = f"bench-{uuid.uuid4().hex[:6]}-{i}"
            guard = runtime.guard(
                name,
                probe="tcp://127.0.0.1:9",
                breaker_config=CircuitBreakerConfig(failure_threshold=1),
            )
            t0 = time.perf_counter()
            with contextlib.suppress(_Boom):
                await guard.call(_fail)
            out.append((await _wait_stamp(f"recovery-{name}")) - t0)
            await client.get_workflow_handle(f"recovery-{name}").terminate("benchmark done")
    finally:
        await runtime.stop()
    return out


async def run(trials: int) -> int:
    server = start_temporal_dev_server()
    try:
        address = f"127.0.0.1:{server.port}"
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        settings = Settings(temporal_address=address, task_queue=f"bench-{uuid.uuid4().hex[:6]}")
        # Storm control is not what this measures: lift the admission rate limit so 200
        # back-to-back trials are admitted at once (the queue path itself is measured).
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig(max_concurrent=50, max_admissions_per_minute=100_000)
        )
        async with Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[*all_workflows(), BenchIdleWorkflow],
            activities=[*all_activities(settings, policy), bench_noop],
            interceptors=[StampInterceptor()],
            workflow_runner=workflow_runner(),
        ):
            await _raw_trials(client, settings.task_queue, 10)  # warm-up
            raw = await _raw_trials(client, settings.task_queue, trials)
            bridge = await _bridge_trials(client, settings, trials)
    finally:
        server.stop()
    rows = [
        ("raw Temporal: signal → activity running", raw),
        ("antifragile: breaker open → recovery activity", bridge),
    ]
    print(f"{'path':48} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}  ({trials} trials each)")
    for label, values in rows:
        ms = [v * 1000 for v in values]
        print(f"{label:48} {_pct(ms, 0.5):8.2f} {_pct(ms, 0.99):8.2f} {statistics.mean(ms):8.2f}")
    p50_ratio = _pct(bridge, 0.5) / _pct(raw, 0.5)
    p99_ratio = _pct(bridge, 0.99) / _pct(raw, 0.99)
    print(f"ratio bridge/raw: p50 {p50_ratio:.2f}x, p99 {p99_ratio:.2f}x (target p99 <= 1.5x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``python -m bench`` and ``python -m bench.bridge``."""
    parser = argparse.ArgumentParser(prog="bench.bridge")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="accepted for make bench-full")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.trials))


if __name__ == "__main__":
    raise SystemExit(main())
