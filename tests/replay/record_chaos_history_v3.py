"""Record the ``chaos_history_v3_*.json`` fixtures: a cancel that lands while an activity
runs (patch ``chaos-cancel-in-activity``, issue 12).

Never overwrites a fixture that exists: delete one on purpose first. Run from the
repository root: ``python -m tests.replay.record_chaos_history_v3``.

- ``cancel_during_renewal``: the cancel arrives while ``renew_fault_lease`` runs (the SDK
  waits for that activity, which completes: the cancel is spent on it).
- ``cancel_during_health_check``: the cancel arrives while ``measure_health`` runs in
  RUNNING (TRY_CANCEL: the activity resolves as cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from antifragile.chaos.client import start_experiment
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.stack import binaries
from antifragile.stack.processes import ServerProcess, start_redis
from antifragile.temporal_client import ensure_search_attributes
from tests.workflows.test_chaos_interrupts import gated_worker

HERE = Path(__file__).parent
FIXTURES: dict[str, str] = {
    "chaos_history_v3_cancel_during_renewal.json": "chaos-replay-v3-renewal-0a1b2c3d",
    "chaos_history_v3_cancel_during_health_check.json": "chaos-replay-v3-health-0a1b2c3d",
}
"""Fixture file → workflow id of the recorded run."""

GATES = {
    "chaos_history_v3_cancel_during_renewal.json": ("renew_fault_lease", 1),
    "chaos_history_v3_cancel_during_health_check.json": ("measure_health", 2),
}


async def record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    try:
        await ensure_search_attributes(env.client)
        for name, workflow_id in FIXTURES.items():
            path = HERE / name
            if path.exists():
                print(f"kept {path.name} (exists)")
                continue
            redis: ServerProcess = start_redis()
            gate_on, nth = GATES[name]
            try:
                url = f"redis://127.0.0.1:{redis.port}/0"
                async with gated_worker(env, url, gate_on, nth, lease_ttl_s=6) as (queue, gate):
                    sc = ChaosScenario(
                        name="replay-v3",
                        chaos_type="LATENCY",
                        target="replay-db",
                        duration_s=120,
                        allow_unguarded=True,
                    )
                    handle = await start_experiment(
                        env.client, sc, task_queue=queue, experiment_id=workflow_id
                    )
                    await asyncio.wait_for(gate.entered.wait(), 60)
                    await handle.cancel()
                    await asyncio.sleep(0.3)
                    gate.release.set()
                    report = await handle.result()
                    print(path.name, report.outcome, report.reason)
                    path.write_text((await handle.fetch_history()).to_json())
                    guardian = env.client.get_workflow_handle(f"{handle.id}-guardian")
                    with contextlib.suppress(Exception):  # none started, or ended
                        await guardian.terminate("recording over")
            finally:
                redis.stop()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
