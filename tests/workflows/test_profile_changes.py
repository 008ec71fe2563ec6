"""A ledger's apply/revert requests on the time-skipping server, with the real worker and Redis.

Authorized apply (values decided by the ledger), refused approver, a request id sent twice,
a refusal by the policy's bounds, Redis down during the publish (FAILED after the bounded
retries), revert to the exact previous settings, and ``adaptation.auto``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from antifragile.constants import SIGNAL_APPLY_ADVICE, profile_workflow_id
from antifragile.learning import config_versions
from antifragile.learning.client import (
    ChangeRefused,
    apply_advice,
    get_change,
    get_profile,
    record_observations,
    revert_config,
)
from antifragile.models.adaptation import ApplyAdviceSignal, ChangeOutcome
from antifragile.models.learning import DependencySettings, OutageObservation, SettingBounds
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from tests.conftest import WorkerFactory
from tests.workflows.auto_support import recent

OUTAGES_S = (2.0, 2.5, 3.0)


def outages(
    dependency: str, base: datetime, lengths: tuple[float, ...] = OUTAGES_S
) -> list[OutageObservation]:
    """Outages a minute apart after ``base`` (the server's time: :func:`recent`)."""
    return [
        OutageObservation(
            dependency=dependency,
            source_id=f"rec-{i}/run",
            started_at=base + timedelta(minutes=i),
            recovered_at=base + timedelta(minutes=i, seconds=length),
            attempts=1,
            probes=2,
            outcome="recovered",
        )
        for i, length in enumerate(lengths)
    ]


def policy(**adaptation: object) -> WorkerPolicy:
    return WorkerPolicy(
        recovery=RecoveryPolicyConfig(approvers=["alice"]),
        adaptation=AdaptationPolicyConfig.model_validate(adaptation),
    )


@pytest.fixture
def dependency() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


async def test_apply_refuse_duplicate_and_revert(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    redis_url: str,
    dependency: str,
) -> None:
    client = time_skipping_env.client
    settings = Settings(redis_url=redis_url)
    redis = aioredis.from_url(redis_url)
    async with start_worker(client, task_queue, policy=policy(), settings=settings):
        await record_observations(
            client,
            dependency,
            outages(dependency, await recent(time_skipping_env)),
            task_queue=task_queue,
        )

        with pytest.raises(ChangeRefused, match="not an approver") as refused:
            await apply_advice(client, dependency, by="mallory")
        assert refused.value.change.outcome is ChangeOutcome.REFUSED
        assert await config_versions.current(redis, dependency) is None

        change = await apply_advice(client, dependency, by="alice", note="three outages")
        assert change.outcome is ChangeOutcome.APPLIED and change.version == 1
        assert change.applied == ["breaker.open_duration_s"]
        assert change.after is not None and change.after.open_duration_s is not None
        assert 2.0 <= change.after.open_duration_s <= 3.0  # p75 of 2, 2.5, 3 s
        version = await config_versions.current(redis, dependency)
        assert version is not None and version.settings == change.after
        assert version.by == "alice" and "three outages" in version.why

        # The same request id again: answered by the first decision, nothing published.
        handle = client.get_workflow_handle(profile_workflow_id(dependency))
        await handle.signal(
            SIGNAL_APPLY_ADVICE, ApplyAdviceSignal(request_id=change.request_id, approver="alice")
        )
        again = await apply_advice(client, dependency, by="alice", request_id=change.request_id)
        assert again == change
        assert len(await config_versions.history(redis, dependency)) == 1

        # Applying again changes nothing: the advice equals the settings in force.
        same = await apply_advice(client, dependency, by="alice")
        assert same.outcome is ChangeOutcome.UNCHANGED and same.version is None

        reverted = await revert_config(client, dependency, by="alice")
        assert reverted.outcome is ChangeOutcome.APPLIED and reverted.version == 2
        assert reverted.before == change.after
        assert reverted.after == DependencySettings()  # exactly what was in force before
        history = await config_versions.history(redis, dependency)
        assert [v.revert_of for v in history] == [None, 1]

        view = await get_profile(client, dependency)
        assert view is not None and view.last_change == reverted
        await handle.terminate()
    await redis.aclose()


async def test_bounds_refusal_and_redis_down(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    redis_url: str,
    dependency: str,
) -> None:
    client = time_skipping_env.client
    tight = policy(open_duration_s=SettingBounds(min=10, max=300).model_dump())
    async with start_worker(
        client, task_queue, policy=tight, settings=Settings(redis_url=redis_url)
    ):
        await record_observations(
            client,
            dependency,
            outages(dependency, await recent(time_skipping_env)),
            task_queue=task_queue,
        )
        with pytest.raises(ChangeRefused, match="outside") as refused:
            await apply_advice(client, dependency, by="alice")
        assert refused.value.change.outcome is ChangeOutcome.REFUSED
        await client.get_workflow_handle(profile_workflow_id(dependency)).terminate()

    down = Settings(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    other = f"{dependency}-down"
    async with start_worker(client, task_queue, policy=policy(), settings=down):
        await record_observations(
            client, other, outages(other, await recent(time_skipping_env)), task_queue=task_queue
        )
        with pytest.raises(ChangeRefused, match="failed") as failed:
            await apply_advice(client, other, by="alice", timeout=timedelta(seconds=50))
        assert failed.value.change.outcome is ChangeOutcome.FAILED
        await client.get_workflow_handle(profile_workflow_id(other)).terminate()


async def test_auto_applies_in_band_advice(
    time_skipping_env: WorkflowEnvironment,
    start_worker: WorkerFactory,
    task_queue: str,
    redis_url: str,
    dependency: str,
) -> None:
    client = time_skipping_env.client
    redis = aioredis.from_url(redis_url)
    # The service runs with 4 s: advice of ~2.75 s is a step of ~31 %, inside the 50 % band.
    await config_versions.publish(
        redis, dependency, DependencySettings(open_duration_s=4.0), by="ops", why="start"
    )
    auto = policy(auto=True)
    async with start_worker(
        client, task_queue, policy=auto, settings=Settings(redis_url=redis_url)
    ):
        await record_observations(
            client,
            dependency,
            outages(dependency, await recent(time_skipping_env)),
            task_queue=task_queue,
        )
        change = None
        for _ in range(200):
            change = await get_change(client, dependency, "auto-1")
            if change is not None:
                break
            await time_skipping_env.sleep(0.1)
        assert change is not None and change.outcome is ChangeOutcome.APPLIED
        assert change.by == "auto" and change.previous_version == 1 and change.version == 2
        version = await config_versions.current(redis, dependency)
        assert version is not None and version.by == "auto"
        assert version.settings.open_duration_s is not None
        assert 2.0 <= version.settings.open_duration_s <= 3.0
        await client.get_workflow_handle(profile_workflow_id(dependency)).terminate()
    await redis.aclose()
