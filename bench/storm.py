"""Recovery storm: N services fail at once; the orchestrator admits their recoveries.

``python -m bench.storm`` (N = 100 and 1,000) or ``python -m bench.storm --full`` (adds
10,000). Starts its own Temporal dev server (free port, temporary database) and one
in-process worker (the real ``workers.main.build_worker``: real activities, real probes).

Each service's probe is ``http://127.0.0.1:P/svc/NAME`` against a local HTTP server that
answers 503 to a service's first probe and 200 afterwards, so every recovery fails its
first attempt for real and succeeds on the second after a short backoff (200 ms).

Printed per N:
- enqueue: time from the first failure report to all enqueued, and from the last report
  sent to all enqueued (reports go out concurrently through ``request_recovery``;
  enqueued = durably accepted, by the intakes that forward them to the orchestrator);
- total time until every recovery succeeded, orchestrated and Temporal-only (the same N
  RecoveryWorkflows started directly with ``start_recovery``, no orchestrator, in the
  same run), and their ratio (target ≤ 1.3 at N = 1,000);
- peak concurrency (probe-side: services between first and healthy probe; and as the
  orchestrator recorded it at each admission), which must never exceed the cap;
- admissions out of priority order (audited from every child's admission memo; must be 0);
- the largest history of any orchestrator run (continue-as-new keeps it bounded);
- CPU seconds per recovery of this process (worker + driver + probe server) and of the
  dev server.

The storms above measure admission overhead, so their retry budget is off (every
recovery fails its first attempt by design: 50% of attempts fail). A second scenario,
``--all-fail N`` (default 200; 0 skips it), keeps the default budget (10% of attempts
over 5 minutes, at least 10 attempts) and makes every probe fail: each recovery makes 3
attempts, then waits for a person (holding no slot). It prints the attempts made before
the orchestrator paused new admissions, and during the pause the admissions (one at a
time: probe admissions, each waiting for the previous one to escalate), the peak of
recoveries running and of probe admissions running at once (at most 1), and the attempts
of recoveries running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import orchestrator_workflow_id, recovery_workflow_id
from antifragile.models.orchestrator import AdmissionRecord
from antifragile.models.recovery import RecoveryPolicy, RecoveryRequest
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.orchestrator.explain import admission_order_violations
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from antifragile.stack.processes import ServerProcess, start_temporal_dev_server
from workers.main import build_worker

BACKOFF = RecoveryPolicy(initial_delay_ms=200, max_delay_ms=200, max_retry_attempts=10)
DEAD_POLICY = RecoveryPolicy(initial_delay_ms=200, max_delay_ms=200, max_retry_attempts=3)
TASK_QUEUE = "storm"
FAIL_QUEUE = "storm-all-fail"


@dataclass
class ProbeTarget:
    """Per-service health as the probe server answers it, plus concurrency tracking."""

    hits: Counter[str] = field(default_factory=Counter)
    recovering: set[str] = field(default_factory=set)
    healthy_at: dict[str, float] = field(default_factory=dict)
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    dead_hits: int = 0

    def answer(self, service: str) -> int:
        """503 on a service's first probe, 200 afterwards; ``dead-*`` services: always 503."""
        with self.lock:
            if service.startswith("dead"):
                self.dead_hits += 1
                return 503
            self.hits[service] += 1
            if self.hits[service] == 1:
                self.recovering.add(service)
                self.peak = max(self.peak, len(self.recovering))
                return 503
            self.recovering.discard(service)
            self.healthy_at.setdefault(service, time.perf_counter())
            return 200

    def reset_peak(self) -> None:
        with self.lock:
            self.peak = len(self.recovering)


def start_probe_server(target: ProbeTarget) -> ThreadingHTTPServer:
    """An HTTP server on a free loopback port answering ``/svc/NAME`` probes."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = target.answer(self.path.rsplit("/", 1)[-1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a child process and its children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


async def bounded(n: int, limit: int, make: Callable[[int], Awaitable[None]]) -> None:
    """Run ``make(i)`` for i < n with at most ``limit`` in flight."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(n)))


@dataclass
class Result:
    n: int
    cap: int
    enqueue_s: float = 0.0
    last_report_to_enqueued_s: float = 0.0
    total_s: float = 0.0
    baseline_s: float = 0.0
    peak_probe: int = 0
    peak_recorded: int = 0
    out_of_order: int = 0
    audited: int = 0
    max_history: int = 0
    runs: int = 0
    cpu_per_recovery_ms: float = 0.0
    server_cpu_per_recovery_ms: float = 0.0
    baseline_cpu_per_recovery_ms: float = 0.0


async def run_baseline(client: Client, target: ProbeTarget, url: str, n: int, tag: str) -> float:
    """The same N recoveries started directly (no orchestrator); seconds until all succeed."""
    started = time.perf_counter()
    handles: list[Any] = [None] * n

    async def start(i: int) -> None:
        handles[i] = await start_recovery(
            client,
            RecoveryRequest(
                service=f"{tag}-{i:05d}", probe=f"{url}/svc/{tag}-{i:05d}", policy=BACKOFF
            ),
            task_queue=TASK_QUEUE,
        )

    await bounded(n, 200, start)
    await bounded(n, 200, lambda i: handles[i].result())
    return time.perf_counter() - started


async def run_storm(
    client: Client, server: ServerProcess, target: ProbeTarget, url: str, n: int, cap: int, tag: str
) -> Result:
    """N failure reports at once through the orchestrator; measure until all recovered."""
    rng = random.Random(n)
    result = Result(n=n, cap=cap)
    names = [f"{tag}-{i:05d}" for i in range(n)]
    priorities = [rng.randint(0, 9) for _ in names]
    target.reset_peak()
    cpu0, srv0 = cpu_self(), cpu_of(server.pid)
    started = time.perf_counter()
    last_sent = 0.0

    async def report(i: int) -> None:
        nonlocal last_sent
        last_sent = time.perf_counter()
        await request_recovery(
            client,
            RecoveryRequest(
                service=names[i],
                priority=priorities[i],
                probe=f"{url}/svc/{names[i]}",
                policy=BACKOFF,
            ),
            task_queue=TASK_QUEUE,
            want_position=False,
        )

    await bounded(n, 200, report)
    enqueued = time.perf_counter()
    result.enqueue_s = enqueued - started
    result.last_report_to_enqueued_s = enqueued - last_sent
    orchestrator = client.get_workflow_handle(orchestrator_workflow_id(TASK_QUEUE))
    base_finished = None
    while True:
        try:
            view = await orchestrator_queue(client, task_queue=TASK_QUEUE)
        except RPCError as exc:
            # Requests reach the orchestrator through the intakes, which start it if need
            # be: it may not exist yet. A worker saturated by the storm can also answer a
            # query late. Either way, ask again.
            if exc.status != RPCStatusCode.NOT_FOUND:
                print(f"  (query: {exc}; retrying)", file=sys.stderr)
            await asyncio.sleep(1)
            continue
        if base_finished is None:
            base_finished = view.finished.get("succeeded", 0) - sum(
                1 for s in names if s in target.healthy_at
            )
        result.max_history = max(result.max_history, view.history_length)
        done = view.finished.get("succeeded", 0) - base_finished
        if done >= n:
            break
        # Polling is part of the measured process's CPU: keep the observer light.
        await asyncio.sleep(1.0)
    result.total_s = time.perf_counter() - started
    result.cpu_per_recovery_ms = (cpu_self() - cpu0) / n * 1000
    result.server_cpu_per_recovery_ms = (cpu_of(server.pid) - srv0) / n * 1000
    result.peak_probe = target.peak
    result.runs = view.runs
    # Largest history of any orchestrator run so far (each continue-as-new is a run).
    async for wf in client.list_workflows(f'WorkflowId = "{orchestrator.id}"'):
        result.max_history = max(result.max_history, wf.history_length or 0)
    # Every admission, from the memo each child was started with.
    records: list[AdmissionRecord] = []
    async for wf in client.list_workflows(
        f'WorkflowType = "RecoveryWorkflow" AND AfService STARTS_WITH "{tag}-"'
    ):
        memo = await wf.memo()
        if "af_admission" in memo:
            records.append(AdmissionRecord.model_validate(memo["af_admission"]))
    records.sort(key=lambda r: r.index)
    result.audited = len(records)
    result.out_of_order = admission_order_violations(records)
    result.peak_recorded = max((r.running for r in records), default=0)
    return result


def report(r: Result) -> None:
    ratio = r.total_s / r.baseline_s if r.baseline_s else float("nan")
    print(f"\n=== storm N={r.n:,}  cap={r.cap} (max_concurrent), admissions/min unlimited ===")
    print(f"  first failure report -> all enqueued      {r.enqueue_s:8.2f} s")
    print(f"  last failure report  -> all enqueued      {r.last_report_to_enqueued_s:8.3f} s")
    print(f"  total until all recovered (orchestrated)  {r.total_s:8.2f} s")
    print(f"  Temporal-only baseline (direct starts)    {r.baseline_s:8.2f} s")
    print(f"  overhead ratio orchestrated / baseline    {ratio:8.2f} x   (target <= 1.3 at 1,000)")
    peaks = f"{r.peak_probe} / {r.peak_recorded}"
    print(f"  peak concurrency (probe side / recorded)  {peaks}  (cap {r.cap})")
    print(f"  admissions out of priority order          {r.out_of_order}  (audited {r.audited:,})")
    print(f"  orchestrator history, largest run         {r.max_history:,} events ({r.runs} runs)")
    print(f"  CPU per recovery: this process            {r.cpu_per_recovery_ms:8.2f} ms")
    print(f"  CPU per recovery: dev server              {r.server_cpu_per_recovery_ms:8.2f} ms")
    print(f"  CPU per recovery: baseline, this process  {r.baseline_cpu_per_recovery_ms:8.2f} ms")
    sys.stdout.flush()


@dataclass
class AllFail:
    n: int
    cap: int
    paused: bool = False
    to_pause_s: float = 0.0
    attempts_before: int = 0
    counted_before: int = 0
    admitted_before: int = 0
    running_at_pause: int = 0
    awaiting_at_pause: int = 0
    reason: str = ""
    observed_s: float = 0.0
    admissions_during: int = 0
    attempts_during: int = 0
    probes_during: int = 0
    peak_running_during: int = 0
    peak_probe_admissions: int = 0
    running_at_end: int = 0
    awaiting_at_end: int = 0
    still_paused: bool = False


async def run_all_fail(
    client: Client, target: ProbeTarget, url: str, n: int, cap: int, observe_s: float
) -> AllFail:
    """N recoveries whose every probe fails, default retry budget: when does it pause?"""
    result = AllFail(n=n, cap=cap)
    names = [f"dead{n}-{i:05d}" for i in range(n)]
    policy = WorkerPolicy(
        recovery=RecoveryPolicyConfig(max_concurrent=cap, max_admissions_per_minute=10**9)
    )
    worker = build_worker(
        client,
        Settings(task_queue=FAIL_QUEUE),
        policy,
        max_concurrent_activities=200,
        max_concurrent_workflow_tasks=100,
    )
    async with worker:
        hits0 = target.dead_hits
        started = time.perf_counter()

        async def report(i: int) -> None:
            await request_recovery(
                client,
                RecoveryRequest(
                    service=names[i], probe=f"{url}/svc/{names[i]}", policy=DEAD_POLICY
                ),
                task_queue=FAIL_QUEUE,
                want_position=False,
            )

        await bounded(n, 200, report)
        deadline = started + 180
        while time.perf_counter() < deadline:
            try:
                view = await orchestrator_queue(client, task_queue=FAIL_QUEUE)
            except RPCError:
                await asyncio.sleep(0.5)
                continue
            if view.paused:
                result.paused = True
                result.to_pause_s = time.perf_counter() - started
                result.attempts_before = target.dead_hits - hits0
                result.counted_before = view.budget.attempts if view.budget else 0
                result.admitted_before = view.admitted_total
                result.running_at_pause = len(view.running)
                result.awaiting_at_pause = len(view.awaiting_approval)
                result.reason = view.pause_reason
                break
            await asyncio.sleep(0.1)
        if result.paused:
            hits_at_pause = target.dead_hits
            pause_started = time.perf_counter()
            while time.perf_counter() - pause_started < observe_s:
                await asyncio.sleep(0.25)
                with contextlib.suppress(RPCError):
                    view = await orchestrator_queue(client, task_queue=FAIL_QUEUE)
                    if view.paused:
                        result.peak_running_during = max(
                            result.peak_running_during, len(view.running)
                        )
                        result.peak_probe_admissions = max(
                            result.peak_probe_admissions, sum(r.probe for r in view.running)
                        )
            result.running_at_end = len(view.running)
            result.observed_s = time.perf_counter() - pause_started
            result.admissions_during = view.admitted_total - result.admitted_before
            result.probes_during = target.dead_hits - hits_at_pause
            counted_end = view.budget.attempts if view.budget else 0
            result.attempts_during = counted_end - result.counted_before
            result.awaiting_at_end = len(view.awaiting_approval)
            result.still_paused = view.paused
        orchestrator_id = orchestrator_workflow_id(FAIL_QUEUE)
        await _terminate(client, [orchestrator_id, *(recovery_workflow_id(s) for s in names)])
    return result


async def _terminate(client: Client, ids: list[str]) -> None:
    async def one(i: int) -> None:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(ids[i]).terminate("bench over")

    await bounded(len(ids), 100, one)


def report_all_fail(r: AllFail) -> None:
    print(
        f"\n=== every probe fails: N={r.n:,}  cap={r.cap}, retry budget 10% (min 10 attempts) ==="
    )
    if not r.paused:
        print("  admissions never paused within 180 s (do recoveries report attempt_finished?)")
        sys.stdout.flush()
        return
    print(f"  first report -> admissions paused         {r.to_pause_s:8.2f} s")
    print(f"  probes answered before the pause          {r.attempts_before:8d}")
    print(f"  attempts counted by the budget at pause   {r.counted_before:8d}")
    print(f"  admissions before the pause               {r.admitted_before:8d}  (of {r.n:,})")
    print(
        f"  running / awaiting approval at the pause  {r.running_at_pause} / {r.awaiting_at_pause}"
    )
    print(f"  pause reason: {r.reason}")
    during = f"{r.admissions_during:8d}  (in {r.observed_s:.0f} s)"
    print(f"  admissions during the pause (1 at a time) {during}")
    print(
        f"  peak running during the pause             {r.peak_running_during:8d}"
        "  (includes those admitted before it)"
    )
    print(f"  peak probe admissions running at once     {r.peak_probe_admissions:8d}")
    print(f"  running at the end                        {r.running_at_end:8d}")
    print(f"  attempts during the pause (running ones)  {r.attempts_during:8d}")
    print(f"  probes during the pause (incl. watch)     {r.probes_during:8d}")
    print(f"  awaiting approval at the end (no slot)    {r.awaiting_at_end:8d}")
    print(f"  still paused at the end                   {r.still_paused}")
    sys.stdout.flush()


async def bench(
    sizes: list[int],
    cap: int,
    baseline: bool = True,
    all_fail: int = 0,
    observe_s: float = 20.0,
    fail_cap: int = 20,
) -> list[Result]:
    target = ProbeTarget()
    probe_server = start_probe_server(target)
    url = f"http://127.0.0.1:{probe_server.server_address[1]}"
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        # No --db-filename: the dev server keeps its SQLite database in memory.
        server = start_temporal_dev_server(
            log_path=Path(tmp) / "server.log",
            extra_args=[
                # One partition: the bench measures the orchestrator, not queue fan-out.
                "--dynamic-config-value",
                "matching.numTaskqueueReadPartitions=1",
                "--dynamic-config-value",
                "matching.numTaskqueueWritePartitions=1",
            ],
        )
        try:
            client = await _connect(server.port)
            policy = WorkerPolicy(
                recovery=RecoveryPolicyConfig(
                    max_concurrent=cap, max_admissions_per_minute=10**9, retry_budget=1.0
                )
            )
            worker = build_worker(
                client,
                Settings(task_queue=TASK_QUEUE),
                policy,
                max_concurrent_activities=200,
                max_concurrent_workflow_tasks=100,
            )
            async with worker:
                for n in sizes:
                    base_s = base_cpu = float("nan")
                    if baseline:
                        cpu0 = cpu_self()
                        base_s = await run_baseline(client, target, url, n, f"base{n}")
                        base_cpu = (cpu_self() - cpu0) / n * 1000
                    r = await run_storm(client, server, target, url, n, cap, f"storm{n}")
                    r.baseline_s = base_s
                    r.baseline_cpu_per_recovery_ms = base_cpu
                    report(r)
                    results.append(r)
                if sizes:
                    await client.get_workflow_handle(
                        orchestrator_workflow_id(TASK_QUEUE)
                    ).terminate("bench over")
            if all_fail:
                report_all_fail(
                    await run_all_fail(client, target, url, all_fail, fail_cap, observe_s)
                )
        finally:
            server.stop()
            probe_server.shutdown()
    return results


async def _connect(port: int) -> Client:
    for _ in range(100):
        try:
            return await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        except RuntimeError:
            await asyncio.sleep(0.2)
    raise RuntimeError("the dev server never became healthy")


def main(argv: list[str] | None = None) -> int:
    """Run the storm benchmark; returns 1 if the cap or the order was ever violated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--full", action="store_true", help="also N = 10,000")
    parser.add_argument("--n", type=int, action="append", help="storm size(s) instead")
    parser.add_argument("--cap", type=int, default=100, help="max_concurrent (default 100)")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the direct-start baseline (no ratio; halves a 10,000 run's time)",
    )
    parser.add_argument(
        "--all-fail", type=int, default=200, help="every-probe-fails scenario size (0: skip)"
    )
    parser.add_argument("--fail-cap", type=int, default=20, help="its max_concurrent")
    parser.add_argument("--observe", type=float, default=20.0, help="seconds to watch the pause")
    parser.add_argument("--only-all-fail", action="store_true", help="skip the storms")
    args = parser.parse_args(argv)
    sizes = args.n or ([100, 1_000, 10_000] if args.full else [100, 1_000])
    if args.only_all_fail:
        sizes = []
    results = asyncio.run(
        bench(
            sizes,
            args.cap,
            baseline=not args.no_baseline,
            all_fail=args.all_fail,
            observe_s=args.observe,
            fail_cap=args.fail_cap,
        )
    )
    bad = [r for r in results if r.out_of_order or max(r.peak_probe, r.peak_recorded) > r.cap]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
