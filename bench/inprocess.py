"""In-process overhead and metering throughput, printed side by side with peers.

Run: ``python -m bench.inprocess [--samples N] [--batch N] [--seconds S]``.

Method: every contender awaits the same trivial coroutine ``batch`` times per sample
(timed with ``perf_counter_ns``); samples of all contenders are interleaved round by
round so drift and noise hit them alike. Overhead per call = sample time per call minus
the median of the bare ``await trivial()`` loop. Medians and p99 of the overheads are
printed, then the ratio of each peer's median to ours. pybreaker is sync-only, so it is
measured over a bare sync call.

Metering: ``record`` median per call (buffer swapped between samples, as the flusher
does), then a sustained run recording as fast as the loop allows for ``--seconds``
into a real Redis Stream (its own redis-server), stopped, read back and summed:
recorded == written == sum of counts in the stream, units equal, nothing dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Timed = Callable[[int], Awaitable[int]]


async def trivial() -> int:
    return 1


def trivial_sync() -> int:
    return 1


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


# --------------------------------------------------------------------------- contenders


def make_contenders() -> dict[str, Timed]:
    """Name -> coroutine function timing ``n`` calls and returning elapsed ns."""
    import aiobreaker
    import circuitbreaker
    import pybreaker

    from antifragile.inprocess.breaker import CircuitBreaker
    from antifragile.inprocess.guard import Guard
    from antifragile.inprocess.metering import MeteringIntegration, UsageEvent

    pc = time.perf_counter_ns
    metering = MeteringIntegration(max_buffer=10_000_000, flush_at=10_000_000)
    guard = Guard("bench", CircuitBreaker("bench"), tenant_id="t1")
    metering.add_source(guard)
    guard_rec = Guard("bench-rec", CircuitBreaker("bench-rec"))
    event = UsageEvent("t1", "guarded_call")
    breaker = CircuitBreaker("alone")
    aio = aiobreaker.CircuitBreaker()
    pyb = pybreaker.CircuitBreaker()

    @circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)
    async def cb_decorated() -> int:
        return 1

    async def bare(n: int) -> int:
        f = trivial
        t0 = pc()
        for _ in range(n):
            await f()
        return pc() - t0

    async def guard_call(n: int) -> int:
        f, call = trivial, guard.call
        t0 = pc()
        for _ in range(n):
            await call(f)
        return pc() - t0

    async def guard_with(n: int) -> int:
        f, g = trivial, guard
        t0 = pc()
        for _ in range(n):
            async with g:
                await f()
        return pc() - t0

    async def guard_call_record(n: int) -> int:
        f, call, rec, ev = trivial, guard_rec.call, metering.record, event
        t0 = pc()
        for _ in range(n):
            await call(f)
            rec(ev)
        return pc() - t0

    async def breaker_call(n: int) -> int:
        f, call = trivial, breaker.call
        t0 = pc()
        for _ in range(n):
            await call(f)
        return pc() - t0

    async def breaker_with(n: int) -> int:
        f, b = trivial, breaker
        t0 = pc()
        for _ in range(n):
            async with b:
                await f()
        return pc() - t0

    async def aiobreaker_call(n: int) -> int:
        f, call = trivial, aio.call_async
        t0 = pc()
        for _ in range(n):
            await call(f)
        return pc() - t0

    async def circuitbreaker_deco(n: int) -> int:
        f = cb_decorated
        t0 = pc()
        for _ in range(n):
            await f()
        return pc() - t0

    purgatory_state: dict[str, Any] = {}

    async def purgatory_with(n: int) -> int:
        if "b" not in purgatory_state:
            from purgatory import AsyncCircuitBreakerFactory

            factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
            await factory.initialize()
            purgatory_state["b"] = await factory.get_breaker("bench")
        f, b = trivial, purgatory_state["b"]
        t0 = pc()
        for _ in range(n):
            async with b:
                await f()
        return pc() - t0

    async def bare_sync(n: int) -> int:
        f = trivial_sync
        t0 = pc()
        for _ in range(n):
            f()
        return pc() - t0

    async def pybreaker_call(n: int) -> int:
        f, call = trivial_sync, pyb.call
        t0 = pc()
        for _ in range(n):
            call(f)
        return pc() - t0

    async def drain(n: int) -> int:
        # Not a contender: keeps the metering buffer from growing without bound.
        metering._buf = []
        guard.harvest_usage()
        return 0

    return {
        "bare await": bare,
        "Guard.call (breaker+fault check+metering)": guard_call,
        "async with Guard": guard_with,
        "Guard.call + metering.record(event)": guard_call_record,
        "CircuitBreaker.call": breaker_call,
        "async with CircuitBreaker": breaker_with,
        "aiobreaker call_async": aiobreaker_call,
        "purgatory async with": purgatory_with,
        "circuitbreaker @circuit async": circuitbreaker_deco,
        "bare sync call": bare_sync,
        "pybreaker call (sync)": pybreaker_call,
        "_drain": drain,
    }


async def measure_overheads(samples: int, batch: int) -> dict[str, list[float]]:
    contenders = make_contenders()
    per_call: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up
        await fn(batch)
    gc.collect()
    for _ in range(samples):
        for name, fn in contenders.items():
            per_call[name].append(await fn(batch) / batch)
    del per_call["_drain"]
    return per_call


def report_overheads(per_call: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    base_async = statistics.median(per_call["bare await"])
    base_sync = statistics.median(per_call["bare sync call"])
    results: dict[str, tuple[float, float]] = {}
    print(f"bare await of a trivial coroutine: {base_async:.0f} ns/call (median)")
    print(f"bare sync call:                    {base_sync:.0f} ns/call (median)\n")
    print(f"{'per-call overhead over bare call':44} {'median':>9} {'p99':>9}")
    for name, values in per_call.items():
        if name.startswith("bare"):
            continue
        base = base_sync if "sync" in name else base_async
        over = sorted(v - base for v in values)
        med, p99 = statistics.median(over), _percentile(over, 0.99)
        results[name] = (med, p99)
        print(f"{name:44} {med / 1000:7.3f}µs {p99 / 1000:7.3f}µs")
    ours = results["Guard.call (breaker+fault check+metering)"][0]
    ours_breaker = results["CircuitBreaker.call"][0]
    print("\npeer median / ours (Guard.call | CircuitBreaker.call):")
    peers = [
        n
        for n in results
        if n.split()[0] in ("aiobreaker", "purgatory", "circuitbreaker", "pybreaker")
    ]
    for name in peers:
        med = results[name][0]
        print(f"  {name:40} {med / max(ours, 1):6.1f}x | {med / max(ours_breaker, 1):6.1f}x")
    fastest = min(peers, key=lambda n: results[n][0])
    verdict = "below" if ours < results[fastest][0] else "NOT below"
    print(f"  Guard.call is {verdict} the fastest peer ({fastest}).")
    return results


# --------------------------------------------------------------------------- metering


def measure_record(samples: int, batch: int) -> tuple[float, float, float]:
    from antifragile.inprocess.metering import MeteringIntegration, UsageEvent

    m = MeteringIntegration(max_buffer=10_000_000, flush_at=10_000_000)
    ev = UsageEvent("tenant-1", "op")
    pc = time.perf_counter_ns
    rec, rec_usage = m.record, m.record_usage
    base: list[float] = []
    rec_ns: list[float] = []
    usage_ns: list[float] = []
    for _ in range(samples):
        t0 = pc()
        for _ in range(batch):
            pass
        base.append((pc() - t0) / batch)
        m._buf = []
        t0 = pc()
        for _ in range(batch):
            rec(ev)
        rec_ns.append((pc() - t0) / batch)
        m._buf = []
        t0 = pc()
        for _ in range(batch):
            rec_usage("tenant-1", "op", 1)
        usage_ns.append((pc() - t0) / batch)
    b = statistics.median(base)
    rec_over = sorted(v - b for v in rec_ns)
    usage_over = sorted(v - b for v in usage_ns)
    return statistics.median(rec_over), _percentile(rec_over, 0.99), statistics.median(usage_over)


async def measure_sustained(seconds: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from antifragile.inprocess.metering import MeteringIntegration, UsageEvent
    from antifragile.inprocess.usage_consumer import read_usage
    from antifragile.stack.processes import start_redis

    server = start_redis()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        m = MeteringIntegration(url, stream="bench:metering", instance_id="bench")
        events = [UsageEvent(f"tenant-{i % 10}", f"op-{i % 3}", 1 + i % 4) for i in range(10_000)]
        units_per_chunk = sum(e.units for e in events)
        await m.start()
        rec = m.record
        chunks = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            for ev in events:
                rec(ev)
            chunks += 1
            await asyncio.sleep(0)  # a real service yields to its loop between requests
        produced_s = time.perf_counter() - t0
        await m.stop()
        total_s = time.perf_counter() - t0
        stats = m.stats()
        client = aioredis.Redis.from_url(url)
        try:
            totals = await read_usage(client, "bench:metering")
            entries = await client.xlen("bench:metering")
        finally:
            await client.aclose()
        return {
            "recorded": stats.recorded,
            "written": stats.written,
            "dropped": stats.dropped,
            "buffered": stats.buffered,
            "batches": stats.batches,
            "entries": entries,
            "stream_count": sum(t.count for t in totals.values()),
            "stream_units": sum(t.units for t in totals.values()),
            "expected_units": chunks * units_per_chunk,
            "record_rate": stats.recorded / produced_s,
            "end_to_end_rate": stats.written / total_s,
            "seconds": produced_s,
        }
    finally:
        server.stop()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the in-process benchmarks and print the figures; returns an exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--samples", type=int, default=1000, help="samples per contender")
    parser.add_argument("--batch", type=int, default=1000, help="calls per sample")
    parser.add_argument("--seconds", type=float, default=3.0, help="sustained metering run")
    args = parser.parse_args(argv)

    print(
        f"== in-process overhead ({args.samples} samples x {args.batch} calls, "
        f"Python {sys.version.split()[0]}) =="
    )
    per_call = asyncio.run(measure_overheads(args.samples, args.batch))
    results = report_overheads(per_call)
    guard_med, guard_p99 = results["Guard.call (breaker+fault check+metering)"]
    with_med = results["async with Guard"][0]
    print(
        f"targets: Guard.call median <= 0.45µs: {guard_med / 1000:.3f}µs "
        f"({'met' if guard_med <= 450 else 'MISSED'}); "
        f"async with Guard median <= 0.8µs: {with_med / 1000:.3f}µs "
        f"({'met' if with_med <= 800 else 'MISSED'}); "
        f"Guard.call p99 <= 2µs: {guard_p99 / 1000:.3f}µs "
        f"({'met' if guard_p99 <= 2000 else 'MISSED'})"
    )

    print("\n== MeteringIntegration.record ==")
    rec_med, rec_p99, usage_med = measure_record(args.samples, args.batch)
    print(
        f"record(event) median {rec_med:.0f} ns, p99 {rec_p99:.0f} ns "
        f"(target <= 200 ns: {'met' if rec_med <= 200 else 'MISSED'})"
    )
    print(f"record_usage(tenant, op, units) median {usage_med:.0f} ns")

    print(f"\n== sustained metering into a real Redis Stream ({args.seconds:.0f} s) ==")
    s = asyncio.run(measure_sustained(args.seconds))
    lossless = (
        s["recorded"] == s["written"] == s["stream_count"]
        and s["stream_units"] == s["expected_units"]
        and s["dropped"] == 0
        and s["buffered"] == 0
    )
    print(
        f"recorded {s['recorded']:,} events in {s['seconds']:.2f} s = "
        f"{s['record_rate']:,.0f} events/s; written {s['written']:,} "
        f"({s['end_to_end_rate']:,.0f} events/s end to end incl. final flush)"
    )
    print(
        f"stream: {s['entries']:,} entries in {s['batches']:,} batches; sum(count) "
        f"{s['stream_count']:,}, sum(units) {s['stream_units']:,} "
        f"(expected {s['expected_units']:,}); dropped {s['dropped']}"
    )
    print(
        f"zero loss: {'yes' if lossless else 'NO'}; 1,000,000 events/s target: "
        f"{'met' if s['end_to_end_rate'] >= 1_000_000 and lossless else 'MISSED'}"
    )
    return 0 if lossless else 1


if __name__ == "__main__":
    raise SystemExit(main())
