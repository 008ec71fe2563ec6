"""Chaos on real servers: a dev server, a Redis, a worker and a guarded demo service, each a
separate process. Every chaos type is seen at the demo's call site and gone after cleanup;
``chaos stop --all`` ends everything and restores forced-open breakers.

Faults and bad input (a SIGKILLed worker, malformed signals, bad CLI flags and scenario
files) are in ``tests/faults/test_chaos_faults.py``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.client import Client

from antifragile.chaos.client import start_experiment
from antifragile.constants import REDIS_HALT_KEY
from antifragile.models.chaos import ChaosOutcome, ChaosPhase, ChaosReport, ChaosStatus
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.stack.processes import ServerProcess
from tests.integration.chaos_support import (
    Demo,
    Stack,
    chaos_scenario,
    chaos_stack,
    cli,
    cli_process,
    delta,
    eventually,
    fault_cleared,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DB, CACHE, OTHER = "demo-db", "demo-cache", "demo-other"
GHOST = "demo-ghost"
"""Allowed by the worker policy, guarded by nobody."""
LEASE_TTL_S = 2.0
INSTANCE = "demo-1"


@pytest.fixture(scope="module")
def stack(
    dev_server: ServerProcess, redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with chaos_stack(
        dev_server.port,
        redis_server.port,
        tmp_path_factory.mktemp("chaos-it"),
        [DB, CACHE, OTHER],
        lease_ttl_s=LEASE_TTL_S,
        instance=INSTANCE,
        unguarded=[GHOST],
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
        timeout=20,
        what="demo service up",
    )
    return stack


def scenario(**kw: Any) -> ChaosScenario:
    return chaos_scenario("it", **{"target": DB, **kw})


def no_fault_left(demo: Demo, target: str = DB) -> bool:
    return fault_cleared(demo, target)


async def calls_are_clean(demo: Demo, target: str = DB) -> None:
    """Over half a second, every call to ``target`` succeeds, and quickly."""
    before = demo.counts(target)
    await asyncio.sleep(0.5)
    grew = delta(before, demo.counts(target))
    assert set(grew) == {"ok"}, grew
    # The median, not the max: one call slowed by a busy machine is not a fault; an
    # injected delay (150 ms here) or hang slows every call.
    recent = sorted(demo.target(target)["recent_ms"])
    assert recent[len(recent) // 2] < 60, recent


CASES: dict[str, dict[str, Any]] = {
    "latency": {"chaos_type": "LATENCY", "latency_ms": 150},
    "error": {"chaos_type": "ERROR", "error_rate": 0.5},
    "timeout": {"chaos_type": "TIMEOUT"},
    "network_partition": {"chaos_type": "NETWORK_PARTITION"},
    "circuit_breaker": {"chaos_type": "CIRCUIT_BREAKER"},
    "connections": {
        "chaos_type": "RESOURCE_EXHAUSTION",
        "resource_type": "CONNECTIONS",
        "resource_level": 0.8,
    },
    "memory": {
        "chaos_type": "RESOURCE_EXHAUSTION",
        "resource_type": "MEMORY",
        "resource_level": 0.4,
    },
    "cpu": {"chaos_type": "RESOURCE_EXHAUSTION", "resource_type": "CPU", "resource_level": 0.7},
}


def seen_at_call_site(case: str, demo: Demo, before: dict[str, Any]) -> bool:
    """The fault's effect as the demo's callers experience it."""
    t = demo.target(DB)
    grew = delta(before["counts"], t["counts"])
    if case == "latency":
        return len(t["recent_ms"]) > 5 and min(t["recent_ms"][-5:]) >= 140
    if case == "error":
        return grew.get("RuntimeError", 0) > 0
    if case == "timeout":
        return grew.get("TimeoutError", 0) > 0
    if case == "network_partition":
        return grew.get("ConnectionError", 0) > 0
    if case == "circuit_breaker":
        return t["breaker"] == "FORCED_OPEN" and grew.get("CircuitOpenError", 0) > 0
    if case == "connections":
        return t["in_flight"] >= 8 and grew.get("ConcurrencyLimitError", 0) > 0
    if case == "memory":
        return demo.status()["rss_mb"] >= before["rss_mb"] + 80
    if case == "cpu":
        return demo.status()["cpu_percent"] >= 45
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(CASES))
async def test_each_chaos_type_is_seen_at_the_call_site_and_gone_after_cleanup(
    ready: Stack, temporal_client: Client, case: str
) -> None:
    demo = ready.demo
    await eventually(lambda: no_fault_left(demo), what="clean start")
    before = {"counts": demo.counts(DB), "rss_mb": demo.status()["rss_mb"]}
    other_before = demo.counts(OTHER)
    handle = await start_experiment(
        temporal_client, scenario(**CASES[case]), task_queue=ready.queue
    )
    await eventually(
        lambda: seen_at_call_site(case, demo, before), timeout=8, what=f"{case} at the call site"
    )
    assert demo.target(DB)["fault"] == handle.id
    report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED, report.reason
    assert report.cleanup.method == "removed"
    # Gone after cleanup: no fault, breaker closed, calls clean, resources released.
    await eventually(lambda: no_fault_left(demo), timeout=5, what="fault gone")
    await calls_are_clean(demo)
    if case == "memory":
        await eventually(
            lambda: demo.status()["rss_mb"] < before["rss_mb"] + 40, what="memory released"
        )
    if case == "cpu":
        await eventually(lambda: demo.status()["cpu_percent"] < 30, what="cpu released")
    if case == "connections":
        assert demo.target(DB)["in_flight"] <= 4
    # Outside the blast radius nothing ever happened.
    assert set(delta(other_before, demo.counts(OTHER))) == {"ok"}
    # The report counts what the call site saw.
    if case == "circuit_breaker":
        assert f"{INSTANCE}/{DB}: FORCED_OPEN" in report.breakers_opened
    else:
        assert report.calls_affected.get(INSTANCE, 0) > 0, report.calls_affected
        assert report.calls_seen.get(INSTANCE, 0) >= report.calls_affected[INSTANCE]


async def test_stop_all_ends_every_experiment_and_restores_forced_open_breakers(
    ready: Stack, temporal_client: Client
) -> None:
    demo = ready.demo
    await eventually(lambda: no_fault_left(demo) and no_fault_left(demo, CACHE))
    cb = await start_experiment(
        temporal_client,
        scenario(chaos_type="CIRCUIT_BREAKER", duration_s=60),
        task_queue=ready.queue,
    )
    lat = await start_experiment(
        temporal_client,
        scenario(chaos_type="LATENCY", target=CACHE, latency_ms=100, duration_s=60),
        task_queue=ready.queue,
    )
    await eventually(lambda: demo.target(DB)["breaker"] == "FORCED_OPEN", what="forced open")
    await eventually(lambda: demo.target(CACHE)["fault"] == lat.id, what="latency on cache")
    code, out, err = await cli(ready.env, "chaos", "stop", "--all", "--reason", "game over")
    assert code == 0, err
    assert "2 experiment(s) signalled, 2 cleaned up" in out
    # Returned only after cleanup: the forced-open breaker is closed again already.
    await eventually(lambda: no_fault_left(demo) and no_fault_left(demo, CACHE), timeout=3)
    for handle in (cb, lat):
        report = await handle.result()
        assert report.outcome is ChaosOutcome.STOPPED
        assert report.reason in ("emergency stop by cli: game over", "halt switch set")
    # While halted nothing may inject: exit 2 with one line.
    code, _, err = await cli(ready.env, "chaos", "start", "--type", "latency", "--target", DB)
    assert code == 2 and "halt switch is set" in err and len(err.strip().splitlines()) == 1
    code, out, err = await cli(ready.env, "chaos", "resume")
    assert code == 0 and "halt switch cleared" in out, err
    await eventually(lambda: not demo.status()["halted"], what="halt cleared at the demo")


async def test_cli_start_wait_follows_and_prints_the_report(ready: Stack) -> None:
    code, out, err = await cli(
        ready.env,
        "chaos", "start", "--type", "latency", "--target", DB, "--latency-ms", "50",
        "--duration", "2s", "--abort-below", "0", "--wait", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = ChaosReport.model_validate_json(out)
    assert report.outcome is ChaosOutcome.COMPLETED
    code, out, err = await cli(ready.env, "chaos", "status", report.experiment_id, "--json")
    assert code == 0, err
    assert ChaosStatus.model_validate_json(out).phase is ChaosPhase.COMPLETED
    code, out, _ = await cli(ready.env, "chaos", "list", "--json")
    assert report.experiment_id in out


async def test_schedules_are_created_listed_paused_by_the_halt_switch_and_deleted(
    ready: Stack,
) -> None:
    name = f"gameday-{uuid.uuid4().hex[:6]}"
    file = ready.workdir / f"{name}.yaml"
    file.write_text(f"name: {name}\nchaos_type: LATENCY\ntarget: {DB}\nduration_s: 5\n")
    code, out, err = await cli(ready.env, "chaos", "schedule", str(file), "--cron", "0 3 * * 1")
    assert code == 0 and f"chaos-schedule-{name}" in out, err

    async def listed() -> dict[str, Any]:
        code, out, err = await cli(ready.env, "chaos", "schedules", "--json")
        assert code == 0, err
        rows = {r["name"]: r for r in json.loads(out)}
        return dict(rows[name])

    row = await listed()
    assert row["cron"] == "0 3 * * 1" and row["paused"] is False and row["next_run"]
    code, out, err = await cli(ready.env, "chaos", "stop", "--all", "--reason", "freeze")
    assert code == 0 and "schedule(s) paused" in out, err
    row = await listed()
    assert row["paused"] is True and "halt switch" in row["note"]
    code, out, err = await cli(ready.env, "chaos", "resume")
    assert code == 0 and "schedule(s) resumed" in out, err
    assert (await listed())["paused"] is False
    # The id `chaos schedule` printed is accepted as well as the scenario name.
    code, out, err = await cli(ready.env, "chaos", "unschedule", f"chaos-schedule-{name}")
    assert code == 0 and f"schedule chaos-schedule-{name} deleted" in out, err
    code, _, err = await cli(ready.env, "chaos", "unschedule", name)
    assert code == 2 and "no chaos schedule" in err
    code, _, err = await cli(ready.env, "chaos", "schedule", str(file), "--cron", "whenever")
    assert code == 2 and "--cron" in err


# --- issue 12: preflight, approvals, followed experiments that end without a report ----


async def _running_id(client: Client, name: str, timeout: float = 20) -> str:
    """The workflow id of the running experiment called ``name`` (started by a CLI)."""
    from antifragile.chaos.client import RUNNING_QUERY

    async def find() -> str | None:
        async for wf in client.list_workflows(RUNNING_QUERY, limit=200):
            if wf.id.startswith(f"chaos-{name}-"):
                return wf.id
        return None

    found: str = await eventually(find, timeout, what=f"{name} started", interval=0.2)
    return found


async def _phase(client: Client, wid: str, phase: ChaosPhase, timeout: float = 20) -> None:
    handle = client.get_workflow_handle(wid)

    async def reached() -> bool:
        return (await handle.query("status", result_type=ChaosStatus)).phase is phase

    await eventually(reached, timeout, what=f"{wid} at {phase}", interval=0.1)


async def test_a_target_nobody_guards_is_refused_in_one_line(ready: Stack) -> None:
    code, out, err = await cli(
        ready.env, "chaos", "start", "--type", "latency", "--target", GHOST, "--wait"
    )
    assert code == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"no live process guards {GHOST}" in last and "--allow-unguarded" in last
    assert "injection failed" in out and "fault removed" not in out
    # --allow-unguarded injects anyway (e.g. a service about to start).
    code, out, err = await cli(
        ready.env,
        "chaos", "start", "--type", "latency", "--target", GHOST, "--duration", "1s",
        "--abort-below", "0", "--allow-unguarded", "--wait", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = ChaosReport.model_validate_json(out)
    assert report.instances_guarding == 0 and report.cleanup.method == "removed"


async def test_guarded_target_reports_how_many_instances_saw_the_fault(
    ready: Stack, temporal_client: Client
) -> None:
    handle = await start_experiment(
        temporal_client, scenario(chaos_type="LATENCY", latency_ms=20), task_queue=ready.queue
    )
    report = await handle.result()
    assert report.outcome is ChaosOutcome.COMPLETED, report.reason
    assert report.instances_guarding == 1 and report.instances_saw_fault == 1
    assert report.fault_active_s is not None and 3 <= report.fault_active_s < 6


async def test_chaos_approve_and_reject_from_the_cli(ready: Stack, temporal_client: Client) -> None:
    name = f"gate-{uuid.uuid4().hex[:6]}"
    follower = await cli_process(
        ready.env,
        "chaos", "start", "--type", "latency", "--target", DB, "--latency-ms", "10",
        "--duration", "1s", "--abort-below", "0", "--require-approval", "--name", name,
        "--wait",
    )  # fmt: skip
    wid = await _running_id(temporal_client, name)
    # The follower says an approval is needed, and which command gives it.
    assert follower.stderr is not None
    seen: list[str] = []
    while not any("approval needed" in line for line in seen):
        line = await asyncio.wait_for(follower.stderr.readline(), 30)
        assert line, "".join(seen)
        seen.append(line.decode())
    assert f"approval needed: antifragile chaos approve {wid} --by NAME" in seen[-1], seen
    code, out, err = await cli(ready.env, "chaos", "approve", wid, "--by", "alice", "--note", "ok")
    assert code == 0 and "approved by alice" in out, err
    _, err_b = await asyncio.wait_for(follower.communicate(), 60)
    assert follower.returncode == 0, err_b.decode()
    # Nothing awaits approval any more: one line, exit 2.
    code, _, err = await cli(ready.env, "chaos", "approve", wid, "--by", "alice")
    assert code == 2 and "nothing awaits approval" in err and len(err.strip().splitlines()) == 1

    name = f"gate-{uuid.uuid4().hex[:6]}"
    code, out, err = await cli(
        ready.env,
        "chaos", "start", "--type", "latency", "--target", DB, "--require-approval",
        "--name", name, "--json",
    )  # fmt: skip
    assert code == 0, err
    wid = json.loads(out)["experiment_id"]
    await _phase(temporal_client, wid, ChaosPhase.AWAITING_APPROVAL)
    code, out, err = await cli(ready.env, "chaos", "reject", wid, "--by", "bob", "--note", "no")
    assert code == 0 and "rejected by bob" in out, err
    report = await temporal_client.get_workflow_handle(wid, result_type=ChaosReport).result()
    assert report.outcome is ChaosOutcome.FAILED and report.reason == "rejected by bob: no"
    assert report.injected_at is None


async def test_a_terminated_followed_experiment_is_one_line_and_its_report_is_rebuilt(
    ready: Stack, temporal_client: Client
) -> None:
    name = f"term-{uuid.uuid4().hex[:6]}"
    follower = await cli_process(
        ready.env,
        "chaos", "start", "--type", "latency", "--target", DB, "--latency-ms", "10",
        "--duration", "30s", "--abort-below", "0", "--name", name, "--wait",
    )  # fmt: skip
    wid = await _running_id(temporal_client, name)
    await _phase(temporal_client, wid, ChaosPhase.RUNNING)
    await asyncio.sleep(1.0)
    await temporal_client.get_workflow_handle(wid).terminate(reason="operator pulled the plug")
    _, err_b = await asyncio.wait_for(follower.communicate(), 60)
    err = err_b.decode()
    assert follower.returncode == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "was terminated (operator pulled the plug)" in last and "chaos report" in last
    # The guardian removes the lease; the report is rebuilt from history and Redis.
    await eventually(lambda: no_fault_left(ready.demo), timeout=10, what="fault gone")
    code, out, err = await cli(ready.env, "chaos", "report", wid, "--json")
    assert code == 1 and "Traceback" not in err, err
    report = ChaosReport.model_validate_json(out)
    assert report.rebuilt and report.outcome is ChaosOutcome.STOPPED
    assert report.reason == "terminated: operator pulled the plug"
    assert report.injected_at is not None
    assert report.cleanup.method in ("removed", "expired") and report.cleanup.fault_ended_at
    assert report.fault_active_s is not None and report.fault_active_s < 15
    assert report.calls_affected.get(INSTANCE, 0) > 0
    code, out, err = await cli(ready.env, "chaos", "report", wid)
    assert code == 1 and "(rebuilt)" in out and "STOPPED" in out, err
    code, out, err = await cli(ready.env, "chaos", "status", wid, "--json")
    assert code == 0, err
    status = ChaosStatus.model_validate_json(out)
    assert status.phase is ChaosPhase.STOPPED and status.stop_reason.startswith("terminated")


async def test_redis_killed_mid_experiment_then_status_and_report_are_right(
    dev_server: ServerProcess,
    temporal_client: Client,
    start_worker: Any,
    task_queue: str,
    tmp_path: Any,
) -> None:
    """The stack's redis-server is SIGKILLed while the fault runs and comes back during
    cleanup: the run ends with an outcome and a complete report; ``chaos status`` and
    ``chaos report`` then say how it ended, why, and how long the fault really lived."""
    import os

    from antifragile.policy import ChaosPolicyConfig, WorkerPolicy
    from antifragile.settings import Settings
    from antifragile.stack.processes import start_redis

    redis = start_redis(log_path=tmp_path / "redis.log")
    servers = [redis]
    url = f"redis://127.0.0.1:{redis.port}/0"
    env = dict(
        os.environ,
        ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{dev_server.port}",
        ANTIFRAGILE_REDIS_URL=url,
        ANTIFRAGILE_TASK_QUEUE=task_queue,
    )
    env.pop("ANTIFRAGILE_POLICY_FILE", None)
    policy = WorkerPolicy(chaos=ChaosPolicyConfig(lease_ttl_s=2))
    try:
        async with start_worker(
            temporal_client, task_queue, policy=policy, settings=Settings(redis_url=url)
        ):
            sc = chaos_scenario(
                "outage", chaos_type="LATENCY", target="outage-db", duration_s=120,
                allow_unguarded=True,
                recovery_timeout_s=3,
            )  # fmt: skip
            handle = await start_experiment(temporal_client, sc, task_queue=task_queue)
            await _phase(temporal_client, handle.id, ChaosPhase.RUNNING)
            redis.kill()
            await _phase(temporal_client, handle.id, ChaosPhase.CLEANING_UP, timeout=30)
            servers.append(start_redis(redis.port, log_path=tmp_path / "redis.log"))
            report = await asyncio.wait_for(handle.result(), 90)
            code, out, err = await cli(env, "chaos", "report", handle.id, "--json")
            assert code == 1 and "Traceback" not in err, err
            shown = ChaosReport.model_validate_json(out)
            code, out, err = await cli(env, "chaos", "status", handle.id, "--json")
            assert code == 0, err
            status = ChaosStatus.model_validate_json(out)
            code, text, _ = await cli(env, "chaos", "report", handle.id)
    finally:
        for server in servers:
            server.stop()
    assert report.outcome is ChaosOutcome.FAILED and report.reason
    assert shown.outcome is ChaosOutcome.FAILED and shown.reason == report.reason
    assert shown.cleanup.confirmed is True
    assert shown.fault_active_s is not None and shown.fault_active_s < 10  # not 120 s
    assert status.phase is ChaosPhase.FAILED and status.stop_reason == report.reason
    assert "IN PROGRESS" not in text and "fault active" in text
