"""Faults left behind, counted: SIGKILL the worker, or the process that started the
experiment, during an experiment; count call sites where a fault outlives its lease.

On real processes started here (loopback only): a Temporal dev server, a Redis, a worker
and guarded processes calling one target in a loop (``bench/_chaos_stack.py``). Each
experiment is an ERROR experiment failing every call; once every process sees it:

- worker: the worker is SIGKILLed at a random point of the renewal cycle. Nobody renews
  or removes the lease now; it ends at most ``lease_ttl_s`` after the kill. A call site
  still seeing injected errors later than kill + TTL + 1 s is a fault left behind. Then a
  new worker starts and the experiment must end (with a report).
- starter: the experiment is started by ``antifragile chaos start … --wait`` (a real CLI
  process following it), SIGKILLed mid-experiment. The experiment runs on and removes its
  lease at its end; a call site still seeing injected errors more than 1 s after the
  removal is a fault left behind.

Every lease key must also be gone from Redis afterwards. Prints the count (target 0).

Usage: ``python -m bench.faults [--experiments 20] [--processes 10]`` (or ``python -m
bench faults``); ``--experiments`` of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._chaos_stack import ChaosStack, chaos_stack, error_scenario, wait_all

SLACK_S = 1.0
"""How long after its lease a fault may still be seen at a call site."""


@dataclass
class Trial:
    """What one experiment left behind."""

    kind: str
    experiment_id: str
    left_behind: list[str] = field(default_factory=list)
    """``instance: detail`` of each call site where the fault outlived its lease + slack."""
    lease_key_left: bool = False
    outlived_s: float = 0.0
    """Longest a fault was seen past the point its lease ended at the latest (negative:
    before)."""
    outcome: str = ""

    @property
    def count(self) -> int:
        return len(self.left_behind) + int(self.lease_key_left)


async def _lease_key_left(stack: ChaosStack, experiment_id: str) -> bool:
    from antifragile.chaos.plane import FaultPlane

    plane = FaultPlane.from_url(stack.redis_url)
    try:
        return await plane.lease_ttl_ms(experiment_id) is not None
    finally:
        await plane.close()


def _judge(trial: Trial, stack: ChaosStack, lease_end: float) -> None:
    """Count the call sites whose last injected error came later than ``lease_end`` + slack."""
    worst = float("-inf")
    for p in stack.guarded:
        past = (time.time() if p.faulted else p.clean_at) - lease_end
        worst = max(worst, past)
        if p.faulted:
            trial.left_behind.append(f"{p.instance}: still faulted")
        elif past > SLACK_S:
            trial.left_behind.append(f"{p.instance}: {past:.2f}s past its lease")
    trial.outlived_s = worst


async def worker_kill_trial(
    stack: ChaosStack, client: Any, lease_ttl_s: float, rng: random.Random
) -> Trial:
    """Start an experiment, SIGKILL the worker mid-renewal-cycle, count what outlives."""
    from antifragile.chaos.client import start_experiment

    scenario = error_scenario(stack.target, f"faults-w-{uuid.uuid4().hex[:6]}", duration_s=60)
    started = time.time()
    handle = await start_experiment(client, scenario, task_queue=stack.task_queue)
    trial = Trial("worker", handle.id)
    await wait_all(stack.guarded, lambda p: p.faulted and p.fault_at >= started, 60, "fault")
    await asyncio.sleep(rng.uniform(0, lease_ttl_s / 3))  # anywhere in a renewal cycle
    stack.kill_worker()
    killed_at = time.time()
    lease_end = killed_at + lease_ttl_s  # the lease ends by then at the latest
    with contextlib.suppress(TimeoutError):  # a process still faulted is counted below
        await wait_all(stack.guarded, lambda p: not p.faulted, lease_ttl_s + SLACK_S + 4, "clean")
    _judge(trial, stack, lease_end)
    trial.lease_key_left = await _lease_key_left(stack, handle.id)
    await stack.start_worker()
    report = await asyncio.wait_for(handle.result(), 90)
    trial.outcome = report.outcome.value if report.outcome else "UNFINISHED"
    return trial


async def starter_kill_trial(stack: ChaosStack, client: Any, duration_s: float) -> Trial:
    """Start an experiment from a CLI process following it, SIGKILL that process, and
    count call sites where the fault outlives the lease's removal at the end."""
    started = time.time()
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "antifragile",
        "chaos",
        "start",
        "--type",
        "error",
        "--error-rate",
        "1",
        "--target",
        stack.target,
        "--duration",
        f"{duration_s:g}s",
        "--abort-below",
        "0",
        "--name",
        f"faults-s-{uuid.uuid4().hex[:6]}",
        "--wait",
        env=stack.env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert cli.stderr is not None
    experiment_id = ""
    async with asyncio.timeout(60):
        while not experiment_id:
            line = (await cli.stderr.readline()).decode()
            if not line:
                raise RuntimeError("chaos start --wait ended before following")
            if line.startswith("following "):
                experiment_id = line.split()[1]
    trial = Trial("starter", experiment_id)
    await wait_all(stack.guarded, lambda p: p.faulted and p.fault_at >= started, 60, "fault")
    cli.kill()  # SIGKILL: it never sees the experiment end
    await cli.wait()
    from antifragile.models.chaos import ChaosReport

    handle = client.get_workflow_handle(experiment_id, result_type=ChaosReport)
    report: ChaosReport = await asyncio.wait_for(handle.result(), 90)
    trial.outcome = report.outcome.value if report.outcome else "UNFINISHED"
    removed = report.removed_at.timestamp() if report.removed_at else time.time()
    with contextlib.suppress(TimeoutError):  # a process still faulted is counted below
        await wait_all(stack.guarded, lambda p: not p.faulted, SLACK_S + 4, "clean")
    _judge(trial, stack, removed)
    trial.lease_key_left = await _lease_key_left(stack, experiment_id)
    return trial


async def run(experiments: int, processes: int, lease_ttl_s: float, seed: int) -> int:
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    rng = random.Random(seed)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        async with chaos_stack(processes, Path(tmp), lease_ttl_s=lease_ttl_s) as stack:
            client = await Client.connect(
                stack.temporal_address, data_converter=pydantic_data_converter
            )
            for _ in range(experiments):
                trials.append(await worker_kill_trial(stack, client, lease_ttl_s, rng))
            for _ in range(experiments):
                trials.append(await starter_kill_trial(stack, client, duration_s=4))
    print(
        f"faults left behind: {experiments} experiments per kill, {processes} guarded "
        f"processes, lease TTL {lease_ttl_s:g}s, slack {SLACK_S:g}s"
    )
    print(f"{'SIGKILL of':12} {'experiments':>11} {'left behind':>11} {'worst past lease s':>19}")
    for kind in ("worker", "starter"):
        mine = [t for t in trials if t.kind == kind]
        worst = max(t.outlived_s for t in mine)
        print(f"{kind:12} {len(mine):11d} {sum(t.count for t in mine):11d} {worst:19.2f}")
    total = sum(t.count for t in trials)
    outcomes = sorted({f"{t.kind}:{t.outcome}" for t in trials})
    print(f"outcomes: {', '.join(outcomes)}")
    for t in trials:
        for what in t.left_behind:
            print(f"  {t.kind} {t.experiment_id}: {what}")
        if t.lease_key_left:
            print(f"  {t.kind} {t.experiment_id}: lease key still in Redis")
    print(f"faults left behind: {total}")
    return 0 if total == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``python -m bench`` and ``python -m bench.faults``."""
    parser = argparse.ArgumentParser(prog="bench.faults")
    parser.add_argument("--experiments", type=int, default=20, help="of each kind")
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--full", action="store_true", help="accepted for make bench-full")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.experiments, args.processes, args.lease_ttl, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
