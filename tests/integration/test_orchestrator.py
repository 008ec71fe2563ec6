"""The recovery orchestrator on a real dev server, with the real worker and real TCP probes.

Each service's probe targets a port the test owns. Nothing listens there at first, so the
first attempt fails for real; once the recovery reports that attempt and sleeps, the test
opens a listener on the port, and the second attempt succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

import antifragile.testing as af_testing
from antifragile.constants import (
    INTAKE_SHARDS,
    QUERY_STATUS,
    intake_workflow_id,
    orchestrator_workflow_id,
    recovery_workflow_id,
)
from antifragile.models.orchestrator import QueueView
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryState,
    RecoveryStatus,
)
from antifragile.orchestrator.client import orchestrator_queue, request_recovery
from antifragile.orchestrator.explain import admission_order_violations
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from tests.helpers import client_of_its_own, wait_for

pytestmark = pytest.mark.integration

BACKOFF = RecoveryPolicy(initial_delay_ms=300, max_delay_ms=300, max_retry_attempts=20)


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


_HELD: list[socket.socket] = []
"""Sockets holding the ports of probes that must keep failing (closed with the process)."""


def refused_probe() -> str:
    """A probe URL whose port refuses connections for the whole test run (held, bound,
    never listening: no other process can start listening there meanwhile)."""
    sock = _bound_socket()
    _HELD.append(sock)
    return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


class Services:
    """One TCP port per service; a listener opens after the service's first failed attempt.

    Each port is held by a bound socket that does not listen (a connection is refused)
    until the service comes back: a port merely remembered as free could be taken by
    another process meanwhile (seen once in a full run: a first probe found a listener).
    """

    def __init__(self, client: Client, orchestrator_id: str, names: list[str]) -> None:
        self.client = client
        self.orchestrator_id = orchestrator_id
        self.sockets = {name: _bound_socket() for name in names}
        self.ports = {name: s.getsockname()[1] for name, s in self.sockets.items()}
        self.servers: dict[str, asyncio.Server] = {}
        self.peak_running = 0

    def probe(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    async def _open(self, name: str) -> None:
        async def _accept(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self.servers[name] = await asyncio.start_server(_accept, sock=self.sockets[name])

    async def run(self) -> None:
        """Watch the running set; bring a service back after its first failed attempt."""
        while True:
            view = await orchestrator_queue(self.client, orchestrator_id=self.orchestrator_id)
            self.peak_running = max(self.peak_running, len(view.running))
            for running in view.running:
                if running.service in self.servers:
                    continue
                handle = self.client.get_workflow_handle(running.workflow_id)
                with contextlib.suppress(RPCError):
                    status = await handle.query(QUERY_STATUS, result_type=RecoveryStatus)
                    if status.attempt >= 1 and status.state is RecoveryState.WAITING_BACKOFF:
                        await self._open(running.service)
            await asyncio.sleep(0.03)

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
            await server.wait_closed()
        for sock in self.sockets.values():
            sock.close()


async def wait_view(
    client: Client, orchestrator_id: str, check: Any, timeout: float = 120
) -> QueueView:

    async def met() -> QueueView:
        view = await orchestrator_queue(client, orchestrator_id=orchestrator_id)
        assert check(view), view.model_dump_json()[:2000]
        return view

    # RPCError: right after a worker restart a query can time out on the old worker's
    # sticky queue before the server hands it to the new worker.
    view: QueueView = await af_testing.eventually(
        met, timeout, 0.2, retry_on=(RPCError,), what="condition"
    )
    return view


async def end_queue(client: Client, orchestrator_id: str, view: QueueView) -> None:
    """Terminate a test's running recoveries, its orchestrator and its intakes."""
    ids = [
        *(recovery_workflow_id(r.service) for r in view.running),
        orchestrator_id,
        *(intake_workflow_id(orchestrator_id, shard) for shard in range(INTAKE_SHARDS)),
    ]
    for workflow_id in ids:
        with contextlib.suppress(RPCError):  # an intake that never started
            await client.get_workflow_handle(workflow_id).terminate("test over")


async def test_fifty_recoveries_with_a_cap_of_three_run_three_at_most_in_priority_order(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    rng = random.Random(50)
    prefix = f"it{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:02d}" for i in range(50)]
    priorities = {name: rng.randint(0, 9) for name in names}
    orchestrator_id = f"recovery-orchestrator-{prefix}"
    services = Services(temporal_client, orchestrator_id, names)
    # Every recovery fails its first attempt by design (half of all attempts): the retry
    # budget would rightly pause admissions and let one recovery in at a time, which would
    # make this test slow and leave the cap of three untested; the budget has its own tests.
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=3, retry_budget=1.0))
    async with start_worker(temporal_client, task_queue, policy=policy):
        for name in names:
            await request_recovery(
                temporal_client,
                RecoveryRequest(
                    service=name,
                    priority=priorities[name],
                    probe=services.probe(name),
                    policy=BACKOFF,
                ),
                task_queue=task_queue,
                orchestrator_id=orchestrator_id,
            )
        opener = asyncio.create_task(services.run())
        try:
            view = await wait_view(
                temporal_client, orchestrator_id, lambda v: v.finished.get("succeeded") == 50
            )
            # The server's own record of each recovery (queried while the worker runs).
            intervals = []
            attempts = {}
            for name in names:
                handle = temporal_client.get_workflow_handle(recovery_workflow_id(name))
                desc = await handle.describe()
                assert desc.status == WorkflowExecutionStatus.COMPLETED
                assert desc.close_time is not None
                intervals.append((desc.start_time, desc.close_time))
                status = await handle.query(QUERY_STATUS, result_type=RecoveryStatus)
                attempts[name] = status.attempt
        finally:
            opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opener
            await services.close()
            await temporal_client.get_workflow_handle(orchestrator_id).terminate("test over")

    records = view.recent_admissions
    assert len(records) == 50 and view.admitted_total == 50
    assert max(r.running for r in records) <= 3
    assert services.peak_running <= 3
    assert admission_order_violations(records) == 0
    # Once every request had arrived, admissions go strictly by priority.
    after_all = [r.priority for r in records if r.seen_seq == 50]
    assert after_all == sorted(after_all) and len(after_all) >= 40
    # Every recovery needed more than one attempt: its first probe met a closed port.
    assert min(attempts.values()) >= 2
    # Never more than 3 recoveries open at any instant, by the server's start/close times.
    edges = sorted([(s, 1) for s, _ in intervals] + [(c, -1) for _, c in intervals])
    open_now = peak = 0
    for _, delta in edges:
        open_now += delta
        peak = max(peak, open_now)
    assert peak <= 3


async def test_a_terminated_recovery_returns_its_slot_at_once(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    orchestrator_id = f"recovery-orchestrator-{prefix}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
    async with start_worker(temporal_client, task_queue, policy=policy):
        for short in ("a", "b"):
            await request_recovery(
                temporal_client,
                RecoveryRequest(service=f"{prefix}-{short}", probe=refused_probe(), policy=slow),
                task_queue=task_queue,
                orchestrator_id=orchestrator_id,
            )
        await wait_view(temporal_client, orchestrator_id, lambda v: len(v.running) == 1)
        started = asyncio.get_running_loop().time()
        await temporal_client.get_workflow_handle(recovery_workflow_id(f"{prefix}-a")).terminate(
            "operator"
        )
        view = await wait_view(
            temporal_client,
            orchestrator_id,
            lambda v: [r.service for r in v.running] == [f"{prefix}-b"],
            timeout=20,
        )
        elapsed = asyncio.get_running_loop().time() - started
        # The queue counts b as running from its admission; its child start may still be
        # on its way to the server.
        b = temporal_client.get_workflow_handle(recovery_workflow_id(f"{prefix}-b"))
        await wait_for(b.describe)
        await end_queue(temporal_client, orchestrator_id, view)
    assert view.finished.get("terminated") == 1
    # Well before the 60 s reconcile: the server reported the child's termination.
    assert elapsed < 10


async def test_the_queue_survives_a_worker_restart(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    orchestrator_id = f"recovery-orchestrator-{prefix}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)

    async def request(short: str, priority: int) -> None:
        await request_recovery(
            temporal_client,
            RecoveryRequest(
                service=f"{prefix}-{short}",
                priority=priority,
                probe=refused_probe(),
                policy=slow,
            ),
            task_queue=task_queue,
            orchestrator_id=orchestrator_id,
        )

    def waiting(view: QueueView) -> list[str]:
        return [w.service.removeprefix(f"{prefix}-") for w in view.waiting]

    async with start_worker(temporal_client, task_queue, policy=policy):
        await request("a", 1)
        await request("b", 2)
        await request("c", 1)
        await wait_view(temporal_client, orchestrator_id, lambda v: waiting(v) == ["c", "b"])
    async with start_worker(temporal_client, task_queue, policy=policy):
        # A fresh worker rebuilds the orchestrator from its history.
        view = await wait_view(temporal_client, orchestrator_id, lambda v: True, timeout=30)
        assert waiting(view) == ["c", "b"] and [r.service for r in view.running] == [f"{prefix}-a"]
        await temporal_client.get_workflow_handle(recovery_workflow_id(f"{prefix}-a")).terminate()
        view = await wait_view(
            temporal_client, orchestrator_id, lambda v: waiting(v) == ["b"], timeout=20
        )
        assert [r.service for r in view.running] == [f"{prefix}-c"]
        # "c" holds the slot; its child workflow may start a moment after admission.
        c_handle = temporal_client.get_workflow_handle(recovery_workflow_id(f"{prefix}-c"))
        await wait_for(c_handle.describe, timeout=20)
        await c_handle.terminate("test over")
        await temporal_client.get_workflow_handle(orchestrator_id).terminate("test over")


async def _cli(port: int, task_queue: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "ANTIFRAGILE_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "ANTIFRAGILE_TASK_QUEUE": task_queue,
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "antifragile"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_queues_through_the_orchestrator_and_shows_the_queue(
    dev_server: Any, temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    async with start_worker(temporal_client, task_queue, policy=policy):
        try:
            for short, priority in (("a", 5), ("b", 7), ("c", 2)):
                code, out, err = await _cli(
                    dev_server.port,
                    task_queue,
                    "recovery",
                    "start",
                    f"{prefix}-{short}",
                    "--probe",
                    refused_probe(),
                    "--priority",
                    str(priority),
                    "--initial-delay",
                    "10m",
                    "--max-delay",
                    "10m",
                )
                assert code == 0, err
                assert f"{prefix}-{short}" in out and "position" in out
            view = await wait_view(
                temporal_client,
                orchestrator_workflow_id(task_queue),
                lambda v: v.waiting_total == 2,
            )
            code, out, err = await _cli(dev_server.port, task_queue, "recovery", "queue", "--json")
            assert code == 0, err
            shown = json.loads(out)
            assert [w["service"] for w in shown["waiting"]] == [f"{prefix}-c", f"{prefix}-b"]
            assert [r["service"] for r in shown["running"]] == [f"{prefix}-a"]
            assert shown["waiting"][0]["position"] == 1 and view.max_concurrent == 1
            code, out, err = await _cli(dev_server.port, task_queue, "recovery", "queue")
            assert code == 0, err
            assert "waiting" in out and f"{prefix}-c" in out
        finally:
            for short in ("a", "b", "c"):
                with contextlib.suppress(RPCError):
                    await temporal_client.get_workflow_handle(
                        recovery_workflow_id(f"{prefix}-{short}")
                    ).terminate("test over")
            await temporal_client.get_workflow_handle(
                orchestrator_workflow_id(task_queue)
            ).terminate("over")


async def test_a_burst_of_requests_beyond_the_update_limit_is_all_queued_once(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    # The server allows 10 in-flight updates per workflow; the rest go as signals.
    prefix = f"it{uuid.uuid4().hex[:6]}"
    orchestrator_id = f"recovery-orchestrator-{prefix}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
    names = [f"{prefix}-{i:02d}" for i in range(40)] * 2  # every service asked twice
    async with start_worker(temporal_client, task_queue, policy=policy):
        results = await asyncio.gather(
            *(
                request_recovery(
                    temporal_client,
                    RecoveryRequest(service=name, probe="tcp://127.0.0.1:9", policy=slow),
                    task_queue=task_queue,
                    orchestrator_id=orchestrator_id,
                )
                for name in names
            )
        )
        view = await wait_view(
            temporal_client,
            orchestrator_id,
            lambda v: v.waiting_total + len(v.running) == 40,
            timeout=30,
        )
        await asyncio.sleep(1)
        view = await orchestrator_queue(temporal_client, orchestrator_id=orchestrator_id)
        await end_queue(temporal_client, orchestrator_id, view)
    assert {r.state.value for r in results} <= {"queued", "merged", "accepted", "running"}
    assert view.waiting_total + len(view.running) == 40 and view.admitted_total == 1


async def test_a_storm_from_hundreds_of_processes_reaches_the_orchestrator_through_the_intakes(
    temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    # Each request from a client of its own, as from its own process: nothing batches them
    # but the intakes.
    prefix = f"it{uuid.uuid4().hex[:6]}"
    orchestrator_id = f"recovery-orchestrator-{prefix}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    slow = RecoveryPolicy(initial_delay_ms=600_000, max_delay_ms=600_000)
    names = [f"{prefix}-{i:03d}" for i in range(400)]

    async with start_worker(temporal_client, task_queue, policy=policy):
        results = await asyncio.gather(
            *(
                request_recovery(
                    client_of_its_own(temporal_client),
                    RecoveryRequest(service=name, probe="tcp://127.0.0.1:9", policy=slow),
                    task_queue=task_queue,
                    orchestrator_id=orchestrator_id,
                    want_position=False,
                )
                for name in names
            )
        )
        view = await wait_view(
            temporal_client,
            orchestrator_id,
            # One admitted (the cap) once the run has loaded its limits, the rest waiting.
            lambda v: v.waiting_total + len(v.running) == 400 and v.admitted_total == 1,
            timeout=60,
        )
        history = await temporal_client.get_workflow_handle(orchestrator_id).fetch_history()
        signals = sum(
            1 for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
        )
        await end_queue(temporal_client, orchestrator_id, view)
    assert {r.state.value for r in results} == {"accepted"}
    # Not one per request: 23-25 on the development machine; an intake forwards again
    # for what arrived during its last forward, so a slower machine sees a few more.
    assert signals <= len(names) // 4


async def test_the_cli_tells_the_truth_about_queued_services_and_joins(
    dev_server: Any, temporal_client: Client, start_worker: Any, task_queue: str
) -> None:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    policy = WorkerPolicy(recovery=RecoveryPolicyConfig(max_concurrent=1))
    probe = refused_probe()
    slow = ["--initial-delay", "10m", "--max-delay", "10m"]
    cli = [dev_server.port, task_queue, "recovery"]
    async with start_worker(temporal_client, task_queue, policy=policy):
        try:
            for short in ("a", "b"):
                code, out, err = await _cli(
                    *cli, "start", f"{prefix}-{short}", "--probe", probe, *slow
                )
                assert code == 0, err
            await wait_view(
                temporal_client,
                orchestrator_workflow_id(task_queue),
                lambda v: v.waiting_total == 1,
            )
            # A queued service is known to `status` (exit 0, with its place and why)...
            code, out, err = await _cli(*cli, "status", f"{prefix}-b", "--json")
            assert code == 0, err
            shown = json.loads(out)
            assert (shown["state"], shown["position"]) == ("QUEUED", 1)
            assert shown["why_waiting"].startswith(f"all 1 slots busy: {prefix}-a")
            code, out, err = await _cli(*cli, "status", f"{prefix}-b")
            assert code == 0 and "QUEUED" in out and "position" in out, err
            # ... and to `list`.
            code, out, err = await _cli(*cli, "list", "--json")
            assert code == 0, err
            rows = {r["service"]: r for r in json.loads(out)}
            assert rows[f"{prefix}-b"]["state"] == "QUEUED"
            assert rows[f"{prefix}-a"]["state"] != "QUEUED"
            # Durations are computed when the queue is read, not when it last changed.
            await asyncio.sleep(3)
            code, out, err = await _cli(*cli, "queue")
            assert code == 0, err
            [row] = [line for line in out.splitlines() if f"{prefix}-a " in line and "│" in line]
            running_for = row.split("│")[3].strip()
            assert running_for.endswith("s") and int(running_for[:-1]) >= 3, row
            assert f"all 1 slots busy: {prefix}-a" in " ".join(out.split())
            # A request that joins the running recovery says what it ignored.
            code, out, err = await _cli(
                *cli, "start", f"{prefix}-a", "--probe", probe, "--strategy", "immediate"
            )
            assert code == 0, err
            flat = " ".join(out.split())
            assert "joined it" in flat
            assert "strategy immediate (it keeps exponential_backoff)" in flat
            code, out, err = await _cli(
                *cli, "start", f"{prefix}-a", "--probe", probe, *slow, "--json"
            )
            assert code == 0, err
            joined = json.loads(out)
            assert joined["state"] == "joined" and joined["ignored"] == []
        finally:
            for short in ("a", "b"):
                with contextlib.suppress(RPCError):
                    await temporal_client.get_workflow_handle(
                        recovery_workflow_id(f"{prefix}-{short}")
                    ).terminate("test over")
            await temporal_client.get_workflow_handle(
                orchestrator_workflow_id(task_queue)
            ).terminate("over")
