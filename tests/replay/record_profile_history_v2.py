"""Record the ledger's change fixture: ``python -m tests.replay.record_profile_history_v2``.

Starts a dev server, Redis and the real worker (policy ``adaptation.auto`` on), and writes
a NEW file here (never overwritten): ``profile_history_v2_changes.json``, a ledger run
that takes three outages (its advice changes: patch ``profile-auto-adaptation``, then the
ledger applies the in-band advice itself, ``by="auto"``), then a person's apply (refused:
not an approver), an apply (UNCHANGED) and a revert, each through ``authorize_approver``,
``read_dependency_config`` and ``publish_dependency_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

from antifragile.constants import profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import (
    ChangeRefused,
    apply_advice,
    get_change,
    record_observations,
    revert_config,
)
from antifragile.models.learning import DependencySettings, OutageObservation
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.stack.processes import start_redis, start_temporal_dev_server
from tests.replay.record_orchestrator_history import connect
from workers.main import build_worker

HERE = Path(__file__).parent
OUT = HERE / "profile_history_v2_changes.json"
QUEUE = "replay-profile-v2"
SERVICE = "ledger-changes"


def outages() -> list[OutageObservation]:
    base = datetime.now(UTC) - timedelta(minutes=30)
    return [
        OutageObservation(
            dependency=SERVICE,
            source_id=f"recovery-{i}/run",
            started_at=base + timedelta(minutes=i),
            recovered_at=base + timedelta(minutes=i, seconds=length),
            attempts=1,
            probes=2,
            outcome="SUCCEEDED",
        )
        for i, length in enumerate((2.0, 2.5, 3.0))
    ]


async def record() -> None:
    """Drive one ledger through auto, refused, unchanged and revert; save its history."""
    if OUT.exists():
        raise SystemExit(f"{OUT} exists: fixtures are never re-recorded (add a new name)")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_temporal_dev_server(db_file=Path(tmp) / "t.db")
        redis_server = start_redis(log_path=Path(tmp) / "redis.log")
        try:
            url = f"redis://127.0.0.1:{redis_server.port}/0"
            redis = aioredis.from_url(url)
            await config_versions.publish(
                redis, SERVICE, DependencySettings(open_duration_s=4.0), by="ops", why="start"
            )
            client = await connect(server.port)
            policy = WorkerPolicy(
                recovery=RecoveryPolicyConfig(approvers=["alice"]),
                adaptation=AdaptationPolicyConfig(auto=True),
            )
            settings = Settings(task_queue=QUEUE, redis_url=url)
            async with build_worker(client, settings, policy):
                await record_observations(client, SERVICE, outages(), task_queue=QUEUE)
                for _ in range(100):
                    if await get_change(client, SERVICE, "auto-1") is not None:
                        break
                    await asyncio.sleep(0.1)
                with contextlib.suppress(ChangeRefused):
                    await apply_advice(client, SERVICE, by="mallory")
                await apply_advice(client, SERVICE, by="alice")
                await revert_config(client, SERVICE, by="alice", note="recorded")
                ledger = client.get_workflow_handle(profile_workflow_id(SERVICE))
                await ledger.terminate("recorded")
                OUT.write_text((await ledger.fetch_history()).to_json())
                print(f"wrote {OUT.name}")
            await redis.aclose()
        finally:
            redis_server.stop()
            server.stop()


if __name__ == "__main__":
    asyncio.run(record())
