"""The emergency paths never depend on one component: the real CLI against unreachable
servers, and against a real dev server with Redis down (and a real Redis with Temporal
unreachable).

- Every chaos command with Redis or Temporal unreachable: one line naming the address,
  exit 2, no traceback (``chaos resume`` used to print a traceback and exit 1).
- ``chaos stop --all`` with Redis down (SIGKILLed) still stops every running experiment
  through Temporal; with Temporal unreachable (a dead address, and a private dev server
  SIGKILLed mid-experiment) it still writes the halt switch, which alone ends the fault at
  every call site. Either way it says what it did and did not do, exit 1.
- With Redis down, the call site drops the fault by itself when its lease runs out.
- The halt switch survives a Redis restart (AOF) and a worker restart: a new experiment
  started after both is stopped before it injects anything. (The halt pausing schedules is
  tested in ``tests/integration/test_chaos.py``.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from antifragile.chaos.client import start_experiment
from antifragile.chaos.plane import FaultPlane
from antifragile.constants import REDIS_HALT_KEY, SIGNAL_EMERGENCY_STOP
from antifragile.models.chaos import ChaosOutcome, ChaosReport
from antifragile.stack.processes import ServerProcess, free_port, start_redis
from tests.helpers import run_cli_batch
from tests.integration.chaos_support import (
    Stack,
    chaos_scenario,
    chaos_stack,
    cli,
    eventually,
    fault_cleared,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DB = "emerg-db"
LEASE_TTL_S = 6.0
"""Long enough that the stop signal lands before a renewal against a dead Redis fails."""
INSTANCE = "emerg-demo"


class AofRedis:
    """A real redis-server on a fixed port with an append-only file; stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_redis(
            self.port, data_dir=self.workdir / "data", log_path=self.workdir / "redis.log"
        )

    def kill(self) -> None:
        """SIGKILL: nothing is flushed but what the AOF already holds."""
        if self.server is not None:
            self.server.proc.kill()
            self.server.proc.wait(10)
            self.server = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AofRedis]:
    redis = AofRedis(tmp_path_factory.mktemp("emergency-redis"))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def stack(
    dev_server: ServerProcess, own_redis: AofRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with chaos_stack(
        dev_server.port,
        own_redis.port,
        tmp_path_factory.mktemp("emergency"),
        [DB],
        lease_ttl_s=LEASE_TTL_S,
        instance=INSTANCE,
    ) as started:
        yield started


@pytest.fixture
async def ready(stack: Stack, own_redis: AofRedis) -> AsyncIterator[Stack]:
    """Redis up, no halt switch, the demo calling and following the plane."""
    if own_redis.server is None:
        own_redis.start()
    await _clear_halt(own_redis.url)
    await eventually(
        lambda: stack.demo.status()["plane_connected"] and not stack.demo.status()["halted"],
        timeout=30,
        what="demo service up",
    )
    await eventually(lambda: fault_cleared(stack.demo, DB), timeout=20, what="clean start")
    yield stack
    if own_redis.server is None:
        own_redis.start()
    await _clear_halt(own_redis.url)


async def _clear_halt(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.delete(REDIS_HALT_KEY)
    finally:
        await client.aclose()


def dead_address() -> str:
    """A local port nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


async def running_experiment(stack: Stack, client: Client, **kw: Any) -> WorkflowHandle[Any, Any]:
    """Start a long ERROR experiment and wait until the demo's calls see it."""
    sc = chaos_scenario("emerg", target=DB, chaos_type="ERROR", error_rate=1.0, duration_s=60, **kw)
    handle = await start_experiment(client, sc, task_queue=stack.queue)
    await eventually(
        lambda: stack.demo.target(DB)["fault"] == handle.id, timeout=30, what="fault at the site"
    )
    return handle


async def signalled_stop(handle: WorkflowHandle[Any, Any]) -> bool:
    history = await handle.fetch_history()
    return any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == SIGNAL_EMERGENCY_STOP
        for e in history.events
    )


async def test_every_chaos_command_names_the_unreachable_server_in_one_line_exit_2(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\nchaos_type: LATENCY\ntarget: {DB}\nduration_s: 5\n")
    temporal, redis = dead_address(), f"redis://:hunter2@{dead_address()}/0"
    env = {
        "ANTIFRAGILE_TEMPORAL_ADDRESS": temporal,
        "ANTIFRAGILE_REDIS_URL": redis,
        "PATH": "/usr/bin:/bin",
    }
    shown_redis = redis.replace("hunter2", "***")
    commands: list[tuple[list[str], list[str]]] = [
        (["chaos", "resume"], [shown_redis]),
        (["chaos", "stop", "--all", "--reason", "incident"], [shown_redis, temporal]),
        (["chaos", "stop", "chaos-x-12345678", "--reason", "incident"], [temporal]),
        (["chaos", "status", "chaos-x-12345678"], [temporal]),
        (["chaos", "report", "chaos-x-12345678"], [temporal]),
        (["chaos", "list"], [temporal]),
        (["chaos", "start", "--type", "latency", "--target", DB], [shown_redis]),
        (["chaos", "run", str(scenario)], [shown_redis]),
        (["chaos", "schedule", str(scenario), "--cron", "0 3 * * 1"], [temporal]),
        (["chaos", "schedules"], [temporal]),
        (["chaos", "unschedule", "s"], [temporal]),
    ]
    results = await run_cli_batch(env, [args for args, _ in commands])
    problems = []
    for (args, addresses), r in zip(commands, results, strict=True):
        named = all(a in r.stderr for a in addresses)
        if not (r.code == 2 and one_line(r.stderr) and named and "hunter2" not in r.stderr):
            problems.append(f"{' '.join(args)}: exit {r.code}, stderr {r.stderr!r}")
    assert problems == []


async def test_with_only_redis_unreachable_commands_that_need_it_name_it_and_exit_2(
    ready: Stack, temporal_client: Client, tmp_path: Path
) -> None:
    redis = f"redis://{dead_address()}/0"
    env = {**ready.env, "ANTIFRAGILE_REDIS_URL": redis}
    name = f"emerg-{uuid.uuid4().hex[:6]}"
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: {name}\nchaos_type: LATENCY\ntarget: {DB}\nduration_s: 5\n")
    for args in (
        ["chaos", "resume"],
        ["chaos", "start", "--type", "latency", "--target", DB],
        ["chaos", "run", str(scenario)],
        ["chaos", "schedule", str(scenario), "--cron", "0 3 * * 1"],
    ):
        code, out, err = await cli(env, *args)
        assert code == 2 and one_line(err) and f"cannot reach Redis at {redis}" in err, (
            args,
            code,
            out,
            err,
        )
    # Nothing was started or scheduled without the halt switch read.
    started = [w.id async for w in temporal_client.list_workflows(f'TaskQueue="{ready.queue}"')]
    assert not [w for w in started if "latency-" in w or name in w], started
    schedules = [s.id async for s in await temporal_client.list_schedules()]
    assert f"chaos-schedule-{name}" not in schedules


async def test_stop_all_with_redis_down_stops_the_experiment_through_temporal(
    ready: Stack, own_redis: AofRedis, temporal_client: Client
) -> None:
    demo = ready.demo
    handle = await running_experiment(ready, temporal_client)
    loop = asyncio.get_running_loop()
    own_redis.kill()
    killed_at = loop.time()
    code, out, err = await cli(
        ready.env, "chaos", "stop", "--all", "--reason", "x", "--timeout", "1s"
    )
    assert code == 1, (out, err)
    assert "halt switch NOT set; 1 experiment(s) signalled" in out, out
    assert one_line(err) and f"cannot reach Redis at {own_redis.url}" in err, err
    assert await signalled_stop(handle)
    # Nothing can remove the lease while Redis is down: the call site drops the fault by
    # itself when the lease it last saw runs out.
    await eventually(lambda: demo.target(DB)["fault"] is None, timeout=LEASE_TTL_S + 3)
    assert loop.time() - killed_at <= LEASE_TTL_S + 1.0
    own_redis.start()
    report = await asyncio.wait_for(handle.result(), 60)
    assert report.outcome is ChaosOutcome.STOPPED, report.reason
    assert report.reason.startswith("emergency stop"), report.reason


async def test_stop_all_with_temporal_unreachable_still_writes_the_halt_which_ends_the_fault(
    ready: Stack, own_redis: AofRedis, temporal_client: Client
) -> None:
    demo = ready.demo
    handle = await running_experiment(ready, temporal_client)
    temporal = dead_address()
    env = {**ready.env, "ANTIFRAGILE_TEMPORAL_ADDRESS": temporal}
    loop = asyncio.get_running_loop()
    code, out, err = await cli(env, "chaos", "stop", "--all", "--reason", "incident")
    stopped_at = loop.time()
    assert code == 1, (out, err)
    assert "halt switch set; no experiment signalled, 0 schedule(s) paused" in out, out
    assert one_line(err) and f"cannot reach Temporal at {temporal}" in err, err
    plane = FaultPlane.from_url(own_redis.url)
    assert (await plane.halt_status()).reason == "incident"
    await plane.close()
    # The halt alone: the call site drops the fault at once, the workflow ends at its next
    # renewal, refused by the halt switch.
    await eventually(lambda: demo.target(DB)["fault"] is None, timeout=3)
    assert loop.time() - stopped_at <= 2.0
    report = await asyncio.wait_for(handle.result(), 60)
    assert report.outcome is ChaosOutcome.STOPPED and "halt switch" in report.reason, report
    assert not await signalled_stop(handle)
    # resume with Temporal unreachable clears the halt and says the schedules were not resumed.
    code, out, err = await cli(env, "chaos", "resume")
    assert code == 1 and "halt switch cleared; schedules not resumed" in out, (out, err)
    assert one_line(err) and temporal in err
    await eventually(lambda: not demo.status()["halted"], what="halt cleared at the demo")


async def test_the_halt_survives_a_redis_restart_and_a_worker_restart(
    ready: Stack, own_redis: AofRedis, temporal_client: Client
) -> None:
    demo = ready.demo
    handle = await running_experiment(ready, temporal_client)
    code, out, err = await cli(ready.env, "chaos", "stop", "--all", "--reason", "freeze")
    assert code == 0 and "1 experiment(s) signalled, 1 cleaned up" in out, (out, err)
    await asyncio.wait_for(handle.result(), 30)
    own_redis.kill()  # SIGKILL right after the halt: the append-only file keeps it
    ready.worker.kill()
    own_redis.start()
    ready.worker.start()
    plane = FaultPlane.from_url(own_redis.url)
    try:
        assert (await plane.halt_status()).reason == "freeze"
        await eventually(
            lambda: demo.status()["plane_connected"] and demo.status()["halted"],
            timeout=20,
            what="the demo sees the halt after Redis came back",
        )
        # A new experiment on the restarted worker is stopped before it injects.
        sc = chaos_scenario("after-halt", target=DB, chaos_type="ERROR", error_rate=1.0)
        again = await start_experiment(temporal_client, sc, task_queue=ready.queue)
        report = await asyncio.wait_for(again.result(), 60)
        assert report.outcome is ChaosOutcome.STOPPED
        assert report.reason.startswith("halt switch set: freeze"), report.reason
        assert report.injected_at is None
        assert demo.target(DB)["fault"] is None
    finally:
        await plane.close()


async def test_stop_all_with_the_dev_server_down_halts_and_the_experiment_stops_once_it_is_back(
    own_redis: AofRedis, tmp_path: Path
) -> None:
    """The reverse with a real outage: a private dev server, SIGKILLed mid-experiment."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    from antifragile.stack.processes import start_temporal_dev_server

    if own_redis.server is None:
        own_redis.start()
    await _clear_halt(own_redis.url)
    db = tmp_path / "temporal.db"
    server = start_temporal_dev_server(db_file=db, log_path=tmp_path / "temporal.log")
    port = server.port
    target = "emerg-db2"
    try:
        with chaos_stack(
            port, own_redis.port, tmp_path, [target], lease_ttl_s=LEASE_TTL_S, instance="emerg-2"
        ) as stack:
            demo = stack.demo
            await eventually(lambda: demo.status()["plane_connected"], timeout=30, what="demo")
            client = await Client.connect(
                f"127.0.0.1:{port}", data_converter=pydantic_data_converter
            )
            sc = chaos_scenario("emerg2", target=target, chaos_type="ERROR", duration_s=60)
            handle = await start_experiment(client, sc, task_queue=stack.queue)
            await eventually(lambda: demo.target(target)["fault"] == handle.id, timeout=30)
            server.proc.kill()  # Temporal is gone: nothing can signal the experiment now
            server.proc.wait(10)
            code, out, err = await cli(stack.env, "chaos", "stop", "--all", "--reason", "outage")
            assert code == 1, (out, err)
            assert "halt switch set; no experiment signalled" in out, out
            assert one_line(err) and f"cannot reach Temporal at 127.0.0.1:{port}" in err, err
            await eventually(lambda: demo.target(target)["fault"] is None, timeout=3)
            # Temporal back (same port, same database): the experiment's next renewal meets
            # the halt switch and it ends STOPPED, with its cleanup done.
            server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t2.log")
            client = await Client.connect(
                f"127.0.0.1:{port}", data_converter=pydantic_data_converter
            )
            report = await asyncio.wait_for(
                client.get_workflow_handle(handle.id, result_type=ChaosReport).result(), 90
            )
            assert report.outcome is ChaosOutcome.STOPPED, report.reason
            assert "halt switch" in report.reason and report.cleanup.attempted, report
    finally:
        server.stop()
        await _clear_halt(own_redis.url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@cache:6380/1", "redis://:***@cache:6380/1"),
        ("rediss://ops:s3cret@cache/0", "rediss://ops:***@cache/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_url_in_an_error_never_shows_its_password(url: str, shown: str) -> None:
    from antifragile.cli._common import display_url, redis_unreachable

    assert display_url(url) == shown
    message = str(redis_unreachable(url, ConnectionRefusedError(111, "Connection refused")))
    assert message == f"cannot reach Redis at {shown}: connection refused"
    assert "s3cret" not in message
