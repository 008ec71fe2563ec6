"""A dependency's ledger survives its worker's and its Temporal server's deaths (SIGKILL).

Issue 14 "Done when": the ledger survives worker and server restarts. Observations sent
while the worker is dead, or just before the server dies, are all held after both come
back; re-sending the same observations after the restart changes nothing; the score and
advice the ledger answers are what the pure core computes from what it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.constants import profile_workflow_id
from antifragile.learning import advise, resilience_score
from antifragile.learning.client import get_profile, record_observations
from antifragile.models.learning import CurrentSettings, OutageObservation, ProfileView
from antifragile.stack.processes import free_port, start_temporal_dev_server
from tests.helpers import WorkerProcess, stack_env, wait_for, workflow_task_failures

_START = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


def _outage(dependency: str, n: int, recover_s: float) -> OutageObservation:
    # Within the last hour: well inside the ledger's age limit whenever the test runs.
    started = _START + timedelta(minutes=10 * n)
    return OutageObservation(
        dependency=dependency,
        source_id=f"recovery-{dependency}/run-{n}",
        started_at=started,
        recovered_at=started + timedelta(seconds=recover_s),
        attempts=2,
        probes=2,
        outcome="SUCCEEDED",
    )


async def _held(client: Client, dependency: str, count: int) -> ProfileView | None:
    view = await get_profile(client, dependency, rpc_timeout=timedelta(seconds=5))
    return view if view is not None and len(view.observations) == count else None


async def test_the_ledger_keeps_everything_across_a_worker_kill_and_a_server_kill(
    tmp_path: Path,
    redis_url: str,
    worker_process: Callable[[dict[str, str]], WorkerProcess],
    task_queue: str,
) -> None:
    port = free_port()
    db = tmp_path / "temporal.db"
    server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t1.log")
    dependency = f"ledger-{task_queue}"
    env = stack_env(server, redis_url, task_queue, ANTIFRAGILE_LOG_LEVEL="WARNING")
    outages = [_outage(dependency, n, 5.5 + 0.5 * n) for n in range(5)]
    try:
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        worker = worker_process(env)
        await record_observations(client, dependency, outages[:2], task_queue=task_queue)
        await wait_for(lambda: _held(client, dependency, 2), 60)

        # The worker dies (SIGKILL); a batch arrives while no worker runs.
        worker.kill()
        await record_observations(client, dependency, outages[2:3], task_queue=task_queue)
        # Then the server dies (SIGKILL) just after accepting another batch.
        await record_observations(client, dependency, outages[3:4], task_queue=task_queue)
        server.kill()
        await asyncio.sleep(0.5)

        server = start_temporal_dev_server(port, db_file=db, log_path=tmp_path / "t2.log")
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        worker_process(env)
        # After the restart: one new batch, and a re-send of one already held.
        await record_observations(client, dependency, outages[4:], task_queue=task_queue)
        await record_observations(client, dependency, outages[:1], task_queue=task_queue)
        view = await wait_for(lambda: _held(client, dependency, 5), 90)
        assert isinstance(view, ProfileView)

        async def both_batches_taken() -> ProfileView | None:
            now = await get_profile(client, dependency, rpc_timeout=timedelta(seconds=5))
            return now if now is not None and now.counters.batches == 5 else None

        view = await wait_for(both_batches_taken, 30)
        assert isinstance(view, ProfileView)
        assert [o.source_id for o in view.observations] == [o.source_id for o in outages]
        assert view.observations == outages
        c = view.counters
        assert (c.batches, c.received, c.duplicates) == (5, 6, 1)
        # What it concludes is what the pure core computes from what it holds (the
        # newest observation's time as decision time: the query uses workflow time, so
        # compare only what does not depend on it, the advice's recommended values).
        at = outages[-1].recovered_at
        assert at is not None
        expected = advise(dependency, view.observations, CurrentSettings(), at)
        assert [(a.setting, a.recommended) for a in view.advice] == [
            (a.setting, a.recommended) for a in expected
        ]
        score = resilience_score(dependency, view.observations, at)
        assert view.score is not None and view.score.score == score.score
        handle = client.get_workflow_handle(profile_workflow_id(dependency))
        assert await workflow_task_failures(handle) == 0
    finally:
        server.stop()
