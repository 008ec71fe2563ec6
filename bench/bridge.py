"""Breaker opening → recovery workflow's first activity running, vs raw Temporal.

On a real dev server (started here, loopback only) with one in-process worker, 200 trials
of each, one at a time, each :data:`SPACING_S` after the previous one:

* bridge: a guard's breaker opens (one failed call, threshold 1); the runtime's bridge
  requests the recovery through the orchestrator in the background (signal-with-start,
  admission, child ``recovery-{service}``); we stop the clock when the recovery's first
  activity starts running in the worker.
* raw: an idle workflow already waiting for a signal; we signal it and stop the clock
  when its activity starts running. This is Temporal's own floor on this machine.
* raw child: the same, but the signalled workflow starts a child workflow whose
  activity we wait for: Temporal's own floor for the shape of an admission (a recovery
  is a child of the orchestrator), without anything of ours in the path.

The bridge runs against a Redis of its own: the first recovery request fleet-wide in a
quiet second skips the intake (the bridge's token in Redis). Trials are spaced by that
second, so each meets a quiet fleet, as a breaker opening in an outage's first second
does; ``--no-direct`` sends every request through the intakes (the storm path).

With ``--breakdown`` it also prints where the bridge path's time goes, hop by hop, read
from the server's event times of the intake, the orchestrator and each recovery (medians
and p99 over the trials).

Usage: ``python -m bench.bridge [--trials N] [--breakdown] [--no-direct]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import time
import uuid
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from antifragile.constants import intake_shard, intake_workflow_id, orchestrator_workflow_id
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.runtime import Runtime
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import start_redis, start_temporal_dev_server
from bench._temporal_baseline import (
    BenchChildWorkflow,
    BenchIdleWorkflow,
    BenchParentWorkflow,
    bench_noop,
)
from workers.main import all_activities, all_workflows, workflow_runner

FIRST_START: dict[str, float] = {}
FIRST_START_WALL: dict[str, float] = {}


STARTED: dict[str, asyncio.Event] = {}
"""Set when the workflow's first activity starts (waiters sleep on it: a polling waiter
would take the worker's CPU and slow the very path it measures)."""


def _started(workflow_id: str) -> asyncio.Event:
    return STARTED.setdefault(workflow_id, asyncio.Event())


class _Stamp(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        workflow_id = activity.info().workflow_id or ""
        FIRST_START_WALL.setdefault(workflow_id, time.time())
        FIRST_START.setdefault(workflow_id, time.perf_counter())
        _started(workflow_id).set()
        return await super().execute_activity(input)


class StampInterceptor(Interceptor):
    """Records when each workflow's first activity starts running in this worker."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Stamp(next)


async def _wait_stamp(workflow_id: str, timeout: float = 30.0) -> float:
    await asyncio.wait_for(_started(workflow_id).wait(), timeout)
    return FIRST_START[workflow_id]


SPACING_S = 1.05
"""Least time between the starts of two trials of any kind. Back to back, every hop of
the server slows (trials meet the previous one's tail: termination, history reads), and
a breaker opening in a quiet process meets a quiet fleet: the bridge's token to skip the
intake (one a second) has expired by then."""


async def _space(last: float) -> float:
    """Wait until :data:`SPACING_S` after ``last`` (perf_counter); returns now."""
    await asyncio.sleep(max(0.0, last + SPACING_S - time.perf_counter()))
    return time.perf_counter()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _raw_trials(client: Client, queue: str, trials: int) -> list[float]:
    out = []
    last = 0.0
    for _ in range(trials):
        last = await _space(last)
        wid = f"bench-idle-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(BenchIdleWorkflow.run, id=wid, task_queue=queue)
        await asyncio.sleep(0.02)  # let its first workflow task finish: it is idle now
        t0 = time.perf_counter()
        await handle.signal(BenchIdleWorkflow.go)
        out.append((await _wait_stamp(wid)) - t0)
        await handle.result()
    return out


async def _raw_child_trials(client: Client, queue: str, trials: int) -> list[float]:
    out = []
    last = 0.0
    for _ in range(trials):
        last = await _space(last)
        child = f"bench-child-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(
            BenchParentWorkflow.run, child, id=f"bench-parent-{child}", task_queue=queue
        )
        await asyncio.sleep(0.02)  # idle now
        t0 = time.perf_counter()
        await handle.signal(BenchParentWorkflow.go)
        out.append((await _wait_stamp(child)) - t0)
        await handle.result()
    return out


class _Boom(Exception):
    pass


async def _fail() -> None:
    raise _Boom


TRIAL_STARTS: dict[str, float] = {}
"""Service of each bridge trial -> wall-clock time its breaker opened (for the breakdown)."""


async def _bridge_trials(
    client: Client, settings: Settings, trials: int, direct: bool = True
) -> list[float]:
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
        bridge_options={"min_interval_s": 0.0, "direct_interval_s": 1.0 if direct else None},
    )
    await runtime.start()
    try:
        last = 0.0
        for i in range(trials):
            last = await _space(last)
            name = f"bench-{uuid.uuid4().hex[:6]}-{i}"
            guard = runtime.guard(
                name,
                probe="tcp://127.0.0.1:9",
                breaker_config=CircuitBreakerConfig(failure_threshold=1),
            )
            t0 = time.perf_counter()
            TRIAL_STARTS[name] = time.time()
            with contextlib.suppress(_Boom):
                await guard.call(_fail)
            out.append((await _wait_stamp(f"recovery-{name}")) - t0)
            await client.get_workflow_handle(f"recovery-{name}").terminate("benchmark done")
        if direct:
            assert runtime.bridge is not None
            print(f"(bridge: {runtime.bridge.direct_requests} of {trials} skipped the intake)")
    finally:
        await runtime.stop()
    return out


DIRECT_HOP = "breaker open -> orchestrator signalled (direct)"
ORCH_TASKS = "orchestrator workflow tasks, signal -> child start (count)"
HOPS = [
    "breaker open -> intake signalled",
    "intake signalled -> its workflow task starts",
    "intake task + forward activity -> orchestrator signalled",
    "orchestrator signalled -> its workflow task starts",
    "orchestrator task -> child start initiated",
    "child start initiated -> child started",
    "child started -> its first workflow task starts",
    "child task -> first activity started",
]


def _at(event: Any) -> float:
    return float(event.event_time.ToNanoseconds()) / 1e9


def _signalled_services(event: Any) -> list[str]:
    attrs = event.workflow_execution_signaled_event_attributes
    services = []
    for payload in attrs.input.payloads:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            services += [r["service"] for r in json.loads(payload.data)["requests"]]
    return services


def _next_after(events: list[Any], index: int, kind: int) -> Any | None:
    return next((e for e in events[index + 1 :] if e.event_type == kind), None)


async def _breakdown(client: Client, settings: Settings) -> dict[str, list[float]]:
    """Per-hop durations (ms) of every bridge trial, from the server's event times."""
    orchestrator = orchestrator_workflow_id(settings.task_queue)
    histories: dict[str, list[Any]] = {}

    async def events(workflow_id: str) -> list[Any]:
        if workflow_id not in histories:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            histories[workflow_id] = list(history.events)
        return histories[workflow_id]

    hops: dict[str, list[float]] = {hop: [] for hop in [DIRECT_HOP, *HOPS, ORCH_TASKS]}
    orch = await events(orchestrator)
    for service, t0 in TRIAL_STARTS.items():
        try:
            intake = await events(intake_workflow_id(orchestrator, intake_shard(service)))
        except RPCError:
            intake = []  # never started: every request of its shard went direct
        i_sig = next(
            (
                i
                for i, e in enumerate(intake)
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                and service in _signalled_services(e)
            ),
            None,
        )
        try:
            o_sig = next(
                i
                for i, e in enumerate(orch)
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                and service in _signalled_services(e)
            )
            init = next(
                e
                for e in orch[o_sig:]
                if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
                and e.start_child_workflow_execution_initiated_event_attributes.workflow_id
                == f"recovery-{service}"
            )
        except StopIteration:
            continue  # joined another path (e.g. the update): not a bridge trial to split
        child = await events(f"recovery-{service}")
        o_task = _next_after(orch, o_sig, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        c_task = _next_after(child, 0, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        c_act = _next_after(child, 0, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
        stamp = FIRST_START_WALL.get(f"recovery-{service}")
        if None in (o_task, c_task) or (c_act is None and stamp is None):
            continue
        # Workflow tasks of the orchestrator from the signal to the child's start: 1 when
        # the admission happens in the task that took the signal.
        tasks = sum(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
            for e in orch[o_sig : orch.index(init)]
        )
        hops[ORCH_TASKS].append(float(tasks))
        if i_sig is None:  # direct: breaker open -> orchestrator signalled is one hop
            hops[DIRECT_HOP].append((_at(orch[o_sig]) - t0) * 1000)
            head = [t0]
        else:
            i_task = _next_after(intake, i_sig, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
            if i_task is None:
                continue
            head = [t0, _at(intake[i_sig]), _at(i_task)]
            pairs = itertools.pairwise([*head, _at(orch[o_sig])])
            for hop, (a, b) in zip(HOPS[:3], pairs, strict=True):
                hops[hop].append((b - a) * 1000)
        points = [
            _at(orch[o_sig]),
            _at(o_task),
            _at(init),
            _at(child[0]),
            _at(c_task),
            stamp if stamp is not None else _at(c_act),
        ]
        for hop, (a, b) in zip(HOPS[3:], itertools.pairwise(points), strict=True):
            hops[hop].append((b - a) * 1000)
    return hops


async def run(trials: int, breakdown: bool = False, direct: bool = True) -> int:
    server = start_temporal_dev_server()
    redis_server = start_redis()
    try:
        address = f"127.0.0.1:{server.port}"
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        settings = Settings(
            temporal_address=address,
            task_queue=f"bench-{uuid.uuid4().hex[:6]}",
            redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        )
        # Storm control is not what this measures: lift the admission rate limit so 200
        # back-to-back trials are admitted at once (the queue path itself is measured).
        policy = WorkerPolicy(
            recovery=RecoveryPolicyConfig(max_concurrent=50, max_admissions_per_minute=100_000)
        )
        async with Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[
                *all_workflows(),
                BenchIdleWorkflow,
                BenchParentWorkflow,
                BenchChildWorkflow,
            ],
            activities=[*all_activities(settings, policy), bench_noop],
            interceptors=[StampInterceptor()],
            workflow_runner=workflow_runner(),
        ):
            await _raw_trials(client, settings.task_queue, 3)  # warm-up
            raw = await _raw_trials(client, settings.task_queue, trials)
            raw_child = await _raw_child_trials(client, settings.task_queue, trials)
            bridge = await _bridge_trials(client, settings, trials, direct=direct)
            hops = await _breakdown(client, settings) if breakdown else {}
    finally:
        redis_server.stop()
        server.stop()
    rows = [
        ("raw Temporal: signal → activity running", raw),
        ("raw Temporal: signal → child's activity running", raw_child),
        ("antifragile: breaker open → recovery activity", bridge),
    ]
    print(f"{'path':48} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}  ({trials} trials each)")
    for label, values in rows:
        ms = [v * 1000 for v in values]
        print(f"{label:48} {_pct(ms, 0.5):8.2f} {_pct(ms, 0.99):8.2f} {statistics.mean(ms):8.2f}")
    p50_ratio = _pct(bridge, 0.5) / _pct(raw, 0.5)
    p99_ratio = _pct(bridge, 0.99) / _pct(raw, 0.99)
    print(f"ratio bridge/raw: p50 {p50_ratio:.2f}x, p99 {p99_ratio:.2f}x (target p99 <= 3x)")
    child_p50 = _pct(bridge, 0.5) / _pct(raw_child, 0.5)
    child_p99 = _pct(bridge, 0.99) / _pct(raw_child, 0.99)
    print(f"ratio bridge/raw child: p50 {child_p50:.2f}x, p99 {child_p99:.2f}x")
    if hops:
        counted = len(hops[ORCH_TASKS])
        print(f"\nbridge path, hop by hop (server event times; {counted} trials)")
        print(f"{'hop':58} {'p50 ms':>8} {'p99 ms':>8}")
        for hop, values in hops.items():
            if values:
                print(f"{hop:58} {_pct(values, 0.5):8.2f} {_pct(values, 0.99):8.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``python -m bench`` and ``python -m bench.bridge``."""
    parser = argparse.ArgumentParser(prog="bench.bridge")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="accepted for make bench-full")
    parser.add_argument("--breakdown", action="store_true", help="time per hop of the bridge")
    parser.add_argument(
        "--no-direct", action="store_true", help="every request through the intakes"
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args.trials, breakdown=args.breakdown, direct=not args.no_direct))


if __name__ == "__main__":
    raise SystemExit(main())
