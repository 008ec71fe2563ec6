"""A chaos stack of real processes for the halt and faults-left-behind measurements.

- :func:`chaos_stack`: a Temporal dev server and a Redis (started here, loopback only), a
  worker (``python -m workers``, killable and restartable) and N guarded processes.
- A guarded process (``python -m bench._chaos_stack child``) embeds a
  :class:`~antifragile.inprocess.runtime.Runtime` guarding one target and calls it in a loop. It
  prints one line per change of what its calls see, with wall-clock times (all processes
  share the machine's clock):

  ``READY`` once its fault subscriber runs; ``FAULT t`` at the first injected error after
  clean calls; ``CLEAN t`` at the first clean call after injected errors, ``t`` being
  the time of the last injected error.

The breaker never opens (injected errors do not count as failures), so every call reaches
the fault for as long as the process enforces it: what is timed is the fault plane alone.
Used by ``bench/halt.py``, ``bench/faults.py`` and ``tests/faults/test_faults_left_behind.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antifragile.models.chaos_scenario import ChaosScenario

REPO = Path(__file__).resolve().parents[1]


# --- the guarded process ---------------------------------------------------------------


class _NeverRaised(Exception):
    """The only exception the benchmark's breakers count as a failure."""


async def _child(target: str, instance: str, interval_s: float) -> None:
    from antifragile.inprocess.breaker_config import CircuitBreakerConfig
    from antifragile.inprocess.faults import InjectedFault
    from antifragile.inprocess.runtime import Runtime

    runtime = Runtime(instance_id=instance, metering=False, bridge=False)
    # The bench measures how fast faults reach and leave call sites, not the breaker: an
    # injected error always counts as a breaker failure unless it is ignored, and an open
    # breaker would refuse calls after the fault ended and hide when it ended.
    guard = runtime.guard(
        target,
        breaker_config=CircuitBreakerConfig(
            failure_exceptions=(_NeverRaised,), ignored_exceptions=(InjectedFault,)
        ),
        recovery=False,
    )
    await runtime.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    faulted, last_error = False, 0.0
    try:
        while not stop.is_set():
            try:
                await guard.call(asyncio.sleep, 0.0005)
                if faulted:
                    print(f"CLEAN {last_error:.6f}", flush=True)
                    faulted = False
            except InjectedFault:
                last_error = time.time()
                if not faulted:
                    print(f"FAULT {last_error:.6f}", flush=True)
                    faulted = True
            except Exception:  # only injected errors are of interest here
                pass
            await asyncio.sleep(interval_s)
    finally:
        await runtime.stop()


# --- the parent's view of one ------------------------------------------------------------


@dataclass
class Guarded:
    """A guarded child process and what it last reported."""

    instance: str
    proc: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    faulted: bool = False
    fault_at: float = 0.0
    """Wall-clock time of the first injected error of the current fault."""
    clean_at: float = 0.0
    """Wall-clock time the last fault's last injected error was seen."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            word, _, value = raw.decode().strip().partition(" ")
            if word == "READY":
                self.ready.set()
            elif word == "FAULT":
                self.faulted, self.fault_at = True, float(value)
            elif word == "CLEAN":
                self.faulted, self.clean_at = False, float(value)
            self.changed.set()


async def wait_all(
    processes: list[Guarded], check: object, timeout_s: float, what: str = "condition"
) -> None:
    """Wait until ``check(p)`` holds for every process (polled on each reported change)."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not all(check(p) for p in processes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what} not reached within {timeout_s:g}s")
        for p in processes:
            p.changed.clear()
        waiters = [asyncio.create_task(p.changed.wait()) for p in processes]
        await asyncio.wait(waiters, timeout=min(left, 0.2), return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()


# --- the stack ---------------------------------------------------------------------------


def _spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m workers`` in its own process group (so a SIGKILL takes all of it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _log_file(path: Path) -> Any:
    return open(path, "wb")  # used as a context manager at the call site


@dataclass
class ChaosStack:
    """Servers, a worker and guarded processes; ``env`` points a CLI or client at them."""

    env: dict[str, str]
    workdir: Path
    target: str
    guarded: list[Guarded]
    worker: subprocess.Popen[bytes] | None = None
    _worker_starts: int = 0

    @property
    def temporal_address(self) -> str:
        return self.env["ANTIFRAGILE_TEMPORAL_ADDRESS"]

    @property
    def redis_url(self) -> str:
        return self.env["ANTIFRAGILE_REDIS_URL"]

    @property
    def task_queue(self) -> str:
        return self.env["ANTIFRAGILE_TASK_QUEUE"]

    async def start_worker(self, timeout_s: float = 60.0) -> None:
        """Start ``python -m workers``; returns once it polls its task queue."""
        self._worker_starts += 1
        log = self.workdir / f"worker-{self._worker_starts}.log"
        self.worker = _spawn_worker({**self.env, "ANTIFRAGILE_LOG_LEVEL": "INFO"}, log)
        deadline = time.monotonic() + timeout_s
        while "worker polling" not in log.read_text(errors="replace"):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; see {log}")
            await asyncio.sleep(0.05)

    def kill_worker(self) -> None:
        """SIGKILL the worker (its process group): no cleanup code of it runs."""
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(10)
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_worker()
        self.worker = None


@contextlib.asynccontextmanager
async def chaos_stack(
    processes: int,
    workdir: Path,
    *,
    lease_ttl_s: float,
    interval_s: float = 0.01,
    temporal_address: str | None = None,
    redis_url: str | None = None,
) -> AsyncIterator[ChaosStack]:
    """Servers (unless given), a worker and ``processes`` guarded processes, all stopped
    on exit."""
    from antifragile.stack.processes import start_redis, start_temporal_dev_server

    servers = []
    if temporal_address is None:
        server = start_temporal_dev_server(
            db_file=workdir / "temporal.db", log_path=workdir / "temporal.log"
        )
        servers.append(server)
        temporal_address = f"127.0.0.1:{server.port}"
    if redis_url is None:
        redis = start_redis(log_path=workdir / "redis.log")
        servers.append(redis)
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
    target = f"bench-dep-{uuid.uuid4().hex[:6]}"
    policy = workdir / "policy.yaml"
    policy.write_text(
        f"chaos:\n  allowed_targets: [{target}]\n  max_duration_s: 300\n"
        f"  lease_ttl_s: {lease_ttl_s}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIFRAGILE_")}
    env.update(
        ANTIFRAGILE_TEMPORAL_ADDRESS=temporal_address,
        ANTIFRAGILE_REDIS_URL=redis_url,
        ANTIFRAGILE_TASK_QUEUE=f"bench-chaos-{uuid.uuid4().hex[:6]}",
        ANTIFRAGILE_POLICY_FILE=str(policy),
        ANTIFRAGILE_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    stack = ChaosStack(env, workdir, target, [])
    try:
        for i in range(processes):
            instance = f"guarded-{i}"
            with _log_file(workdir / f"{instance}.log") as err:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench._chaos_stack",
                    "child",
                    "--target",
                    target,
                    "--instance",
                    instance,
                    "--interval",
                    str(interval_s),
                    cwd=REPO,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            g = Guarded(instance, proc)
            g.reader = asyncio.create_task(g.follow())
            stack.guarded.append(g)
        await stack.start_worker()
        await wait_all(stack.guarded, lambda p: p.ready.is_set(), 120, "guarded processes up")
        yield stack
    finally:
        stack.stop_worker()
        for g in stack.guarded:
            if g.proc.returncode is None:
                g.proc.terminate()
        for g in stack.guarded:
            try:
                await asyncio.wait_for(g.proc.wait(), 10)
            except TimeoutError:
                g.proc.kill()
                await g.proc.wait()
            if g.reader is not None:
                g.reader.cancel()
        for server in servers:
            server.stop()


def error_scenario(target: str, name: str, duration_s: float = 120.0) -> ChaosScenario:
    """An ERROR experiment failing every call to ``target``; the health guard is off (the
    damage is the point here)."""
    from antifragile.models.chaos_scenario import ChaosScenario

    return ChaosScenario.model_validate(
        {
            "name": name,
            "chaos_type": "ERROR",
            "error_rate": 1.0,
            "target": target,
            "duration_s": duration_s,
            "abort_below_health": 0.0,
            "recovery_timeout_s": 5,
        }
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench._chaos_stack")
    parser.add_argument("role", choices=["child"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args(argv)
    asyncio.run(_child(args.target, args.instance, args.interval))


if __name__ == "__main__":
    _main(sys.argv[1:])
