"""Redis stopped for 10 s under a metering demo service: nothing lost, calls go on, no fault.

The demo service (a real subprocess with ``--meter``) records one UsageEvent per call and
its guards count every call that reaches the dependency; both go to the Redis metering
stream. Redis (its own server, append-only file) is stopped for 10 s and restarted on
the same port and data directory while the service keeps calling. After a clean stop
(SIGTERM: the service flushes) the stream must hold exactly what the service counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from antifragile.chaos.plane import FaultPlane
from antifragile.inprocess.usage_consumer import read_usage
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import ChaosType
from antifragile.stack.processes import ServerProcess, start_redis
from tests.helpers import stack_env
from tests.integration.chaos_support import Demo, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

OUTAGE_S = 10.0
LEASE_TTL_S = 3.0
REFUSED = ("CircuitOpenError", "ConcurrencyLimitError")
"""Outcomes of calls the guard refused: they never reached the dependency."""


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


async def test_redis_down_10s_loses_no_metering_event_keeps_calls_working_and_applies_no_fault(
    tmp_path: Path, dev_server: ServerProcess, task_queue: str
) -> None:
    data_dir = tmp_path / "redis-data"
    redis = start_redis(data_dir=data_dir, log_path=tmp_path / "redis.log")
    port = redis.port
    url = f"redis://127.0.0.1:{port}/0"
    slow, plain = f"slow-{task_queue}", f"plain-{task_queue}"
    instance = f"meter-{uuid.uuid4().hex[:6]}"
    env = stack_env(dev_server, url, task_queue, ANTIFRAGILE_LOG_LEVEL="WARNING")
    # "At load": 12 callers with a 2 ms pause; a long guard timeout so a busy machine
    # does not turn a slow event loop into failed calls.
    demo = Demo(
        env,
        tmp_path,
        [slow, plain],
        instance,
        ["--meter", "--workers", "6", "--interval", "0.002", "--timeout", "2"],
    )
    demo.start()
    client = aioredis.from_url(url)
    try:
        await eventually(
            lambda: demo.status()["plane_connected"] and demo.status()["metering"]["written"] > 0,
            timeout=30,
            what="demo metering into Redis",
        )
        # A lease written before the outage, renewed by us (the controller) until then.
        plane = FaultPlane(client)
        experiment = f"chaos-outage-{uuid.uuid4().hex[:8]}"
        spec = FaultSpec(
            experiment_id=experiment,
            chaos_type=ChaosType.LATENCY,
            target=slow,
            blast_radius=[slow],
            latency_ms=5,
            ttl_ms=int(LEASE_TTL_S * 1000),
        )
        assert await plane.inject(spec)
        await eventually(
            lambda: demo.target(slow)["fault"] == experiment, timeout=10, what="fault installed"
        )
        assert (await plane.renew(experiment, spec.ttl_ms)).renewed
        renewed_at = time.monotonic()
        before = demo.status()

        redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        down_at = time.monotonic()
        samples: list[tuple[float, dict[str, Any]]] = []
        while time.monotonic() - down_at < OUTAGE_S:
            await asyncio.sleep(0.2)
            try:
                samples.append((time.monotonic(), demo.status()))
            except (OSError, ValueError):
                continue  # the file is being replaced; the next read gets it
        redis = start_redis(port, data_dir=data_dir, log_path=tmp_path / "redis2.log")

        # The service saw the outage ...
        assert any(not s["plane_connected"] for _, s in samples), "plane never disconnected"
        # ... its fault went away by itself no later than the lease TTL (plus what it takes
        # to see it: a status write every 0.1 s, a read every 0.2 s, a busy machine's
        # scheduling) and never came back ...
        faulted = [t for t, s in samples if s["targets"][slow]["fault"] is not None]
        last_fault = max(faulted, default=down_at)
        assert last_fault - renewed_at <= LEASE_TTL_S + 1.5, last_fault - renewed_at
        assert faulted == [t for t, _ in samples if t <= last_fault]
        assert all(s["targets"][plain]["fault"] is None for _, s in samples)
        # ... and guarded calls kept succeeding through the whole outage window.
        late = [s for t, s in samples if t - down_at >= OUTAGE_S - 4]
        for target in (slow, plain):
            oks = [s["targets"][target]["counts"].get("ok", 0) for s in late]
            assert oks[-1] > oks[0], f"{target}: no successful call late in the outage"
        # Metering kept counting while it could not write.
        outage_meter = samples[-1][1]["metering"]
        assert outage_meter["recorded"] > before["metering"]["recorded"]
        assert outage_meter["write_errors"] > 0 and outage_meter["dropped"] == 0

        # Redis is back: the buffered events are written, the expired lease stays gone.
        await eventually(
            lambda: (
                demo.status()["plane_connected"]
                and demo.status()["metering"]["written"] > outage_meter["recorded"]
            ),
            timeout=30,
            what="metering written after the restart",
        )
        assert demo.target(slow)["fault"] is None
        await client.aclose()  # its connections died with the old server
        client = aioredis.from_url(url)
        assert await FaultPlane(client).lease_ttl_ms(experiment) is None

        # Clean stop: SIGTERM, the service flushes and writes its final counts.
        demo.stop()
        assert demo.proc is not None and demo.proc.returncode == 0, demo.tail()
        final = demo.status()
        meter = final["metering"]
        assert final["stopped"] is True
        assert meter["buffered"] == 0 and meter["dropped"] == 0, meter
        assert meter["recorded"] == meter["written"], meter

        usage = await read_usage(client)
        stream_total = sum(u.count for u in usage.values())
        assert stream_total == meter["recorded"], (stream_total, meter)
        for target in (slow, plain):
            counts = final["targets"][target]["counts"]
            calls = usage[("default", f"demo_call:{target}")]
            assert calls.count == calls.units == total(counts), (target, counts)
            reached = total(counts) - sum(counts.get(k, 0) for k in REFUSED)
            assert usage[("default", f"guarded_call:{target}")].count == reached
        assert set(usage) == {
            ("default", f"{op}:{t}") for op in ("demo_call", "guarded_call") for t in (slow, plain)
        }
    finally:
        demo.stop()
        await client.aclose()
        redis.stop()
