"""What a refused call costs, with and without a chaos fault counting it.

Run: ``python -m bench.refusals [--samples N] [--batch N]``.

A breaker that is open refuses calls at the guard before the fault's ``apply`` runs; a
fault installed on the guard is told of each refusal (``on_refused``) so the experiment
counts it (a CIRCUIT_BREAKER drill affects calls only by refusing them). Without a fault
a refusal must cost what it did before that: one attribute test more.

Method: ``batch`` calls per sample, samples of every contender interleaved round by round
(``perf_counter_ns``); medians and p99 per call, in ns. Contenders: the plain path (a
closed breaker, for reference), a refusal by a forced-open breaker with no fault, and a
refusal counted by an installed CIRCUIT_BREAKER fault.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_state import CircuitOpenError
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.faults import build_fault
from antifragile.inprocess.guard import Guard
from antifragile.models.chaos import FaultSpec

Timed = Callable[[int], Awaitable[int]]


async def trivial() -> int:
    return 1


def make_contenders() -> tuple[dict[str, Timed], Callable[[], int]]:
    """Name -> coroutine function timing ``n`` calls; and the fault's affected count."""
    pc = time.perf_counter_ns
    plain = Guard("plain", CircuitBreaker("plain"))
    refused = Guard("refused", CircuitBreaker("refused"))
    refused.breaker.force_open("bench")
    drilled = Guard("drilled", CircuitBreaker("drilled"))
    spec = FaultSpec.model_validate(
        {
            "experiment_id": "bench-drill",
            "chaos_type": "CIRCUIT_BREAKER",
            "target": "drilled",
            "blast_radius": ["drilled"],
        }
    )
    fault = build_fault(spec)
    table = FaultTable()
    table.attach(drilled)
    table.install("drilled", fault)

    async def plain_call(n: int) -> int:
        f, call = trivial, plain.call
        t0 = pc()
        for _ in range(n):
            await call(f)
        return pc() - t0

    def refusals(guard: Guard) -> Timed:
        async def timed(n: int) -> int:
            f, call = trivial, guard.call
            t0 = pc()
            for _ in range(n):
                try:  # noqa: SIM105 - suppress() would add its own cost to every call
                    await call(f)
                except CircuitOpenError:
                    pass
            return pc() - t0

        return timed

    contenders: dict[str, Timed] = {
        "Guard.call, breaker closed (plain path)": plain_call,
        "refused, no fault": refusals(refused),
        "refused, counted by a CIRCUIT_BREAKER fault": refusals(drilled),
    }
    return contenders, lambda: fault.stats.affected


async def measure(samples: int, batch: int) -> tuple[dict[str, list[float]], int]:
    """Per-call times (ns) of every contender, and the refusals the fault counted."""
    contenders, affected = make_contenders()
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for timed in contenders.values():
        await timed(batch)  # warm up
    gc.collect()
    gc.disable()
    try:
        for _ in range(samples):
            for name, timed in contenders.items():
                out[name].append(await timed(batch) / batch)
    finally:
        gc.enable()
    return out, affected()


def main(argv: list[str] | None = None) -> int:
    """Run and print the figures; returns an exit code (1 if a refusal went uncounted)."""
    parser = argparse.ArgumentParser(prog="python -m bench.refusals", description=__doc__)
    parser.add_argument("--samples", type=int, default=300, help="samples per contender")
    parser.add_argument("--batch", type=int, default=1000, help="calls per sample")
    parser.add_argument("--full", action="store_true", help="accepted (python -m bench --full)")
    args = parser.parse_args(argv)
    print(
        f"== refused calls ({args.samples} samples x {args.batch} calls, "
        f"Python {sys.version.split()[0]}) =="
    )
    per_call, affected = asyncio.run(measure(args.samples, args.batch))
    print(f"{'per call':48s} {'median':>9s} {'p99':>9s}")
    for name, values in per_call.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"{name:48s} {statistics.median(values):7.0f}ns {p99:7.0f}ns")
    expected = (args.samples + 1) * args.batch
    print(f"refusals the fault counted as affected: {affected:,} of {expected:,}")
    return 0 if affected == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
