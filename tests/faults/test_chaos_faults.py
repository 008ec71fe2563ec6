"""Chaos experiments under faults and bad input, on real processes.

A dev server and a Redis (the session's), a worker and a guarded demo service (each a
subprocess). A worker SIGKILLed mid-experiment leaves no fault past the lease TTL and the
experiment still ends with a complete report; malformed signals sent with the real
``temporal workflow signal`` change nothing; bad flags and scenario files are refused by
the CLI with one line naming the field, and start nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from antifragile.chaos.client import start_experiment
from antifragile.chaos.plane import fault_key
from antifragile.constants import REDIS_HALT_KEY
from antifragile.models.chaos import ChaosOutcome, ChaosPhase, ChaosReport, ChaosStatus
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.stack.processes import ServerProcess
from tests.helpers import run_cli_batch, temporal_signal, wait_for, workflow_task_failures
from tests.integration.chaos_support import (
    Demo,
    Stack,
    chaos_scenario,
    chaos_stack,
    delta,
    eventually,
    fault_cleared,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

DB, CACHE = "faults-db", "faults-cache"
LEASE_TTL_S = 5.0
"""Short, so a dead worker's fault is gone soon; not so short that a busy 2-core machine
delays a renewal (every third of it) past the lease."""
INSTANCE = "faults-demo"


@pytest.fixture(scope="module")
def stack(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with chaos_stack(
        dev_server.port,
        redis_server.port,
        tmp_path_factory.mktemp("chaos-faults"),
        [DB, CACHE],
        lease_ttl_s=LEASE_TTL_S,
        instance=INSTANCE,
    ) as started:
        yield started


@pytest.fixture
async def ready(stack: Stack) -> Stack:
    """The demo is calling and follows the fault plane; no halt switch is set."""
    client = aioredis.from_url(stack.redis_url)
    await client.delete(REDIS_HALT_KEY)
    await client.aclose()
    await eventually(
        lambda: stack.demo.status()["plane_connected"] and not stack.demo.status()["halted"],
        timeout=30,
        what="demo service up",
    )
    await eventually(lambda: no_fault_left(stack.demo), what="clean start")
    return stack


def scenario(**kw: Any) -> ChaosScenario:
    return chaos_scenario("ft", **{"target": DB, **kw})


def no_fault_left(demo: Demo, target: str = DB) -> bool:
    return fault_cleared(demo, target)


async def calls_are_clean(demo: Demo, target: str = DB) -> None:
    """Over half a second, every call to ``target`` succeeds."""
    before = demo.counts(target)
    await asyncio.sleep(0.5)
    grew = delta(before, demo.counts(target))
    assert set(grew) == {"ok"}, grew


def assert_complete(report: ChaosReport, outcome: ChaosOutcome) -> None:
    """Every part of the report is there, in order, for an experiment that injected."""
    assert report.outcome is outcome, report.reason
    assert report.reason
    assert [p.phase for p in report.phases] == [
        ChaosPhase.VALIDATING,
        ChaosPhase.STEADY_STATE_BEFORE,
        ChaosPhase.INJECTING,
        ChaosPhase.RUNNING,
        ChaosPhase.CLEANING_UP,
        ChaosPhase.VERIFYING_RECOVERY,
        ChaosPhase(outcome.value),
    ]
    assert all(p.left_at is not None for p in report.phases[:-1])
    assert report.phases[-1].left_at is None
    assert report.injected_at is not None and report.removed_at is not None
    assert report.started_at <= report.injected_at <= report.removed_at <= report.ended_at
    assert report.cleanup.attempted and report.cleanup.at is not None
    assert report.recovered is True
    # A time to recover only when health dropped (issue 12): else there was nothing to time.
    assert (report.time_to_recover_s is not None) is bool(report.health_dropped)
    assert report.calls_affected.get(INSTANCE, 0) > 0, report.calls_affected
    assert report.calls_seen[INSTANCE] >= report.calls_affected[INSTANCE]
    assert report.health_timeline and report.events
    # Injected exactly once: a resumed run does not inject again.
    assert sum("fault injected" in e.message for e in report.events) == 1


async def test_a_sigkilled_worker_leaves_no_fault_after_the_ttl_and_a_new_one_completes_the_report(
    ready: Stack, temporal_client: Client
) -> None:
    demo = ready.demo
    sc = scenario(chaos_type="NETWORK_PARTITION", duration_s=15)
    handle = await start_experiment(temporal_client, sc, task_queue=ready.queue)
    await eventually(lambda: demo.target(DB)["fault"] == handle.id, what="fault at the call site")
    ready.worker.kill()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    # Nobody renews the lease now: every process drops the fault by itself.
    await eventually(lambda: demo.target(DB)["fault"] is None, timeout=LEASE_TTL_S + 3)
    gone_after = loop.time() - killed_at
    assert gone_after <= LEASE_TTL_S + 1.5, gone_after
    # Not removed by anyone: the lease simply ran out (nothing ran cleanup).
    redis = aioredis.from_url(ready.redis_url)
    assert await redis.exists(fault_key(handle.id)) == 0
    await redis.aclose()
    await eventually(lambda: demo.target(DB)["breaker"] == "CLOSED", timeout=5)
    await calls_are_clean(demo)
    # The experiment is still running in Temporal; a new worker finishes it.
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    ready.worker.start()
    report: ChaosReport = await asyncio.wait_for(handle.result(), 60)
    # The lease ran out while no worker ran: the next renewal finds it expired (STOPPED),
    # unless the new worker came up only after the duration was over (COMPLETED), or the
    # kill caught a renewal activity mid-flight, whose retries then ran out (FAILED).
    expected = {
        ChaosOutcome.STOPPED: "fault lease expired before it was renewed (",
        ChaosOutcome.COMPLETED: "ran for the full duration",
        ChaosOutcome.FAILED: "lease renewal failed",
    }
    assert report.outcome in expected, report
    assert report.reason.startswith(expected[report.outcome]), report.reason
    assert_complete(report, report.outcome)
    assert report.cleanup.method == "already_gone" and not report.cleanup.lease_removed
    assert await workflow_task_failures(handle) == 0
    guardian = temporal_client.get_workflow_handle(f"{handle.id}-guardian")
    await asyncio.wait_for(guardian.result(), 30)
    assert no_fault_left(demo)


MALFORMED_SIGNALS = [
    ("emergency_stop", '{"reason": ""}'),
    ("emergency_stop", '{"reason": 5}'),
    ("emergency_stop", '{"reason": "stop", "surprise": true}'),
    ("emergency_stop", '"stop it"'),
    ("emergency_stop", "null"),
    ("health_changed", json.dumps({"service": DB, "healthy": "maybe"})),
    ("health_changed", json.dumps({"service": DB, "healthy": False, "score": 7})),
    ("health_changed", "{}"),
    ("approve", '{"approver": ""}'),
    ("reject", '{"who": "mallory"}'),
    ("approve", "[1, 2, 3]"),
]


async def test_malformed_signals_from_the_temporal_cli_leave_the_experiment_running_to_completion(
    ready: Stack, temporal_client: Client
) -> None:
    demo = ready.demo
    sc = scenario(chaos_type="LATENCY", latency_ms=30, duration_s=10)
    handle = await start_experiment(temporal_client, sc, task_queue=ready.queue)

    async def running() -> ChaosStatus | None:
        status = await handle.query("status", result_type=ChaosStatus)
        return status if status.phase is ChaosPhase.RUNNING else None

    await wait_for(running, 30)
    await eventually(lambda: demo.target(DB)["fault"] == handle.id, what="fault at the call site")
    limit = asyncio.Semaphore(3)  # CLI processes at once on a 2-core machine

    async def send(name: str, payload: str) -> None:
        async with limit:
            code, err = await temporal_signal(
                ready.env["ANTIFRAGILE_TEMPORAL_ADDRESS"], handle.id, name, payload
            )
            assert code == 0, (name, payload, err)

    await asyncio.gather(*(send(name, payload) for name, payload in MALFORMED_SIGNALS))

    # Each signal is in the history, and each was dropped by the workflow, not applied.
    # A signal that arrives while a workflow task runs is written to the history only
    # when that task completes: wait for all of them rather than read once.
    async def all_signalled() -> bool:
        history = await handle.fetch_history()
        signalled = [
            e
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        return len(signalled) == len(MALFORMED_SIGNALS)

    await wait_for(all_signalled, 20)
    status = await handle.query("status", result_type=ChaosStatus)
    assert status.phase is ChaosPhase.RUNNING and status.stop_reason == ""
    assert status.decisions == []
    assert not any("emergency stop" in e.message for e in status.events)
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    assert demo.target(DB)["fault"] == handle.id
    # ... and it runs to its normal end, cleaning up.
    report = await asyncio.wait_for(handle.result(), 60)
    assert_complete(report, ChaosOutcome.COMPLETED)
    assert report.cleanup.method == "removed"
    assert not any(s.source.startswith("signal") for s in report.health_timeline)
    assert await workflow_task_failures(handle) == 0
    await eventually(lambda: no_fault_left(demo), timeout=5, what="fault gone")


BAD_FILES: dict[str, str] = {
    "malformed.yaml": "name: x\nchaos_type: [LATENCY\n",
    "malformed.json": '{"name": "x", "chaos_type": "LATENCY",',
    "list.yaml": "- name: x\n- chaos_type: LATENCY\n",
    "empty.yaml": "",
    "unknown.yaml": f"name: x\nchaos_type: LATENCY\ntarget: {DB}\nlatncy_ms: 5\n",
    "wrong-type.yaml": f"name: x\nchaos_type: LATENCY\ntarget: {DB}\nlatency_ms: fast\n",
    "wrong-type.json": json.dumps(
        {"name": "x", "chaos_type": "ERROR", "target": DB, "error_rate": "half"}
    ),
    "negative.yaml": f"name: x\nchaos_type: LATENCY\ntarget: {DB}\nduration_s: -1\n",
    "no-target.yaml": "name: x\nchaos_type: LATENCY\n",
    "bad-type.yaml": f"name: x\nchaos_type: FLOOD\ntarget: {DB}\n",
    "not-allowed.yaml": "name: x\nchaos_type: LATENCY\ntarget: payments\n",
    "blast.yaml": f"name: x\nchaos_type: LATENCY\ntarget: {DB}\nblast_radius: [payments]\n",
}

START = ["chaos", "start", "--type", "latency", "--target", DB]
BAD_CLI: list[tuple[list[str], str]] = [
    (["chaos", "start", "--type", "flood", "--target", DB], "'flood'"),
    (["chaos", "start", "--target", DB], "--type"),
    (["chaos", "start", "--type", "latency", "--target", "payments"], "allowed_targets"),
    (["chaos", "start", "--type", "latency", "--target", "bad name!"], "target"),
    ([*START, "--duration", "-5s"], "--duration"),
    ([*START, "--duration", "soon"], "--duration"),
    ([*START, "--duration", "48h"], "duration_s"),
    ([*START, "--blast-radius", f"{DB},payments"], "payments"),
    ([*START, "--injection-rate", "1.5"], "injection_rate"),
    ([*START, "--instance-fraction", "-0.1"], "instance_fraction"),
    ([*START, "--latency-ms", "soon"], "--latency-ms"),
    ([*START, "--abort-below", "2"], "abort_below_health"),
    (["chaos", "start", "--type", "error", "--target", DB, "--error-rate", "2"], "error_rate"),
    (["chaos", "start", "--type", "resource_exhaustion", "--target", DB], "resource_type"),
    (["chaos", "stop", "--all", "--reason", ""], "--reason"),
    (["chaos", "run", "does-not-exist.yaml"], "does-not-exist.yaml"),
    (["chaos", "run", "{dir}/malformed.yaml"], "not valid YAML"),
    (["chaos", "run", "{dir}/malformed.json"], "not valid JSON"),
    (["chaos", "run", "{dir}/list.yaml"], "expected a mapping"),
    (["chaos", "run", "{dir}/empty.yaml"], "expected a mapping"),
    (["chaos", "run", "{dir}/unknown.yaml"], "unknown field 'latncy_ms'"),
    (["chaos", "run", "{dir}/wrong-type.yaml"], "latency_ms"),
    (["chaos", "run", "{dir}/wrong-type.json"], "error_rate"),
    (["chaos", "run", "{dir}/negative.yaml"], "duration_s"),
    (["chaos", "run", "{dir}/no-target.yaml"], "target"),
    (["chaos", "run", "{dir}/bad-type.yaml"], "chaos_type"),
    (["chaos", "run", "{dir}/not-allowed.yaml"], "allowed_targets"),
    (["chaos", "run", "{dir}/blast.yaml"], "payments"),
]


async def test_bad_flags_and_scenario_files_exit_2_with_one_line_and_start_nothing(
    ready: Stack, temporal_client: Client, tmp_path: Path
) -> None:
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    # Its own task queue: whatever these commands might start would be found there.
    queue = f"bad-{uuid.uuid4().hex[:8]}"
    env = {**ready.env, "ANTIFRAGILE_TASK_QUEUE": queue}
    commands = [[a.replace("{dir}", str(tmp_path)) for a in args] for args, _ in BAD_CLI]
    results = await run_cli_batch(env, commands)
    problems = []
    for (args, message), r in zip(BAD_CLI, results, strict=True):
        lines = r.stderr.strip().splitlines()
        clean = "Traceback" not in r.stderr + r.stdout
        if not (r.code == 2 and len(lines) == 1 and message in r.stderr and clean):
            problems.append(f"{' '.join(args)}: exit {r.code}, stderr {r.stderr!r}")
    assert problems == []
    started = [wf.id async for wf in temporal_client.list_workflows(f'TaskQueue="{queue}"')]
    assert started == []
