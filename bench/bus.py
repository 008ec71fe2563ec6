"""The demo agent bus's message path: throughput and latency, with and without the module.

One process, one event loop (one core), a real Redis, in the same run:

1. **baseline** — the bus with the module disabled (no guards, no runtime);
2. **guarded** — the same bus through the in-process module (breakers, fault checks,
   metering, health publishing, the bridge);
3. **degraded** — guarded, while a real ChaosExperimentWorkflow injects errors into the
   bus's Redis dependency (error_rate 0.5) and the breaker's openings have the bridge
   request recoveries through the orchestrator (a dev server and a worker process run
   beside it, on the other core).

Each phase measures the closed-loop maximum (messages/s) and the per-message latency
(publish → delivered to the agent) at a fixed offered load of 50,000 msg/s.

Usage: ``python -m bench.bus [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.breaker import CircuitBreakerConfig
from antifragile.demo.agent_bus import AgentBus, drive
from antifragile.processes import start_redis, start_temporal_dev_server
from antifragile.runtime import Runtime
from antifragile.settings import Settings

OFFERED_RATE = 50_000
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Phase:
    """Figures of one phase."""

    name: str
    max_rate: float
    p50_us: float
    p99_us: float
    delivered_at_rate: int
    offered_at_rate: int
    note: str = ""


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1000.0


async def open_loop(bus: AgentBus, seconds: float, rate: int) -> tuple[int, int]:
    """Publish ``rate`` messages/s on a 1 ms schedule; return (offered, delivered)."""
    stop = asyncio.Event()
    runner = asyncio.create_task(bus.run(stop))
    body = b"x" * 64
    topics = ("plan", "act", "observe", "reflect")
    bus.latencies_ns.clear()
    delivered0 = bus.stats.delivered
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            bus.publish(topics[sent & 3], body)
            sent += 1
        await asyncio.sleep(0.001)
    stop.set()
    await runner
    return sent, bus.stats.delivered - delivered0


async def measure(name: str, bus: AgentBus, seconds: float, note: str = "") -> Phase:
    """Closed-loop maximum, then latency at the offered rate."""
    elapsed = await drive(bus, seconds)
    max_rate = bus.stats.delivered / elapsed
    offered, delivered = await open_loop(bus, seconds, OFFERED_RATE)
    lat = list(bus.latencies_ns)
    return Phase(name, max_rate, _pct(lat, 0.5), _pct(lat, 0.99), delivered, offered, note)


async def run(seconds: float) -> int:
    redis_server = start_redis()
    temporal = start_temporal_dev_server()
    worker: subprocess.Popen[bytes] | None = None
    phases: list[Phase] = []
    try:
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        queue = f"bus-{uuid.uuid4().hex[:6]}"
        settings = Settings(
            temporal_address=f"127.0.0.1:{temporal.port}", redis_url=redis_url, task_queue=queue
        )
        env = dict(
            os.environ,
            ANTIFRAGILE_TEMPORAL_ADDRESS=settings.temporal_address,
            ANTIFRAGILE_REDIS_URL=redis_url,
            ANTIFRAGILE_TASK_QUEUE=queue,
        )
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-m", "workers"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        redis_client = aioredis.from_url(redis_url)
        client = await Client.connect(
            settings.temporal_address, data_converter=pydantic_data_converter
        )

        phases.append(
            await measure("baseline (module disabled)", AgentBus(redis_client, None), seconds)
        )

        runtime = Runtime(settings, temporal_client=client, instance_id="bus-bench")
        bus = AgentBus(
            redis_client,
            runtime,
            redis_probe=redis_url,
            breaker_config=CircuitBreakerConfig(failure_threshold=5, open_duration_s=0.5),
        )
        await runtime.start()
        try:
            phases.append(await measure("guarded, healthy", bus, seconds))
            phases.append(await degraded(bus, runtime, client, queue, seconds))
        finally:
            await runtime.stop()
        await redis_client.aclose()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(20)
        temporal.stop()
        redis_server.stop()
    report(phases)
    return 0


async def degraded(
    bus: AgentBus, runtime: Runtime, client: Client, queue: str, seconds: float
) -> Phase:
    """The guarded bus while a chaos experiment fails half of its Redis writes."""
    from antifragile.chaos.client import start_experiment
    from antifragile.chaos.scenario import ChaosScenario

    scenario = ChaosScenario.model_validate(
        {
            "name": "bus-bench",
            "chaos_type": "ERROR",
            "target": "redis",
            "error_rate": 0.5,
            "duration_s": 4 * seconds + 30,
            "abort_below_health": 0.0,
            "require_hash_validation": True,
        }
    )
    handle = await start_experiment(client, scenario, task_queue=queue)
    for _ in range(600):  # the fault plane delivers the lease within ~1 s
        if "redis" in runtime.faults:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the chaos fault never reached the bus")
    failures0 = bus.stats.persist_failures
    recoveries0 = runtime.bridge.recoveries_started if runtime.bridge else 0
    phase = await measure("guarded, degraded (chaos + recovery)", bus, seconds)
    recoveries = (runtime.bridge.recoveries_started if runtime.bridge else 0) - recoveries0
    phase.note = (
        f"{bus.stats.persist_failures - failures0} failed writes, breaker "
        f"openings sent {recoveries} recovery requests, outbox {bus.outbox}"
    )
    await handle.signal("emergency_stop", {"reason": "bench over", "by": "bench"})
    await handle.result()
    return phase


def report(phases: list[Phase]) -> None:
    """Print the figures side by side, with ratios to the baseline."""
    base = phases[0]
    print(
        f"{'phase':40} {'max msg/s':>11} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'+p99 µs':>8}  at {OFFERED_RATE:,} msg/s offered"
    )
    for p in phases:
        added = p.p99_us - base.p99_us
        print(
            f"{p.name:40} {p.max_rate:11,.0f} {p.p50_us:8.1f} {p.p99_us:8.1f} "
            f"{added:+8.1f}  delivered {p.delivered_at_rate:,}/{p.offered_at_rate:,}"
        )
        if p.note:
            print(f"{'':40} {p.note}")
    for p in phases[1:]:
        print(
            f"{p.name}: {p.max_rate / base.max_rate:.2f}x baseline throughput, "
            f"p99 added {p.p99_us - base.p99_us:+.1f} µs (target <= 100 µs, >= 50,000 msg/s)"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``python -m bench`` and ``python -m bench.bus``."""
    parser = argparse.ArgumentParser(prog="bench.bus")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--full", action="store_true", help="longer phases")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.seconds * (3 if args.full else 1)))


if __name__ == "__main__":
    raise SystemExit(main())
