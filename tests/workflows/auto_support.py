"""Shared by the ``adaptation.auto`` tests: outages of known length, waiting for a change."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio.testing import WorkflowEnvironment

from antifragile.learning.client import get_change
from antifragile.models.adaptation import ConfigChange
from antifragile.models.learning import OutageObservation
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy


async def recent(env: WorkflowEnvironment) -> datetime:
    """Half an hour before the server's now: where a test's outages start.

    The server's time, not the wall clock: the time-skipping server shared by a test
    process may be days or months ahead after other tests skipped time, and a ledger ages
    out observations by its workflow time (older than 90 days: dropped, and no advice).
    """
    return (await env.get_current_time()) - timedelta(minutes=30)


AUTO_POLICY = WorkerPolicy(
    recovery=RecoveryPolicyConfig(approvers=["alice"]),
    adaptation=AdaptationPolicyConfig(auto=True),
)
"""``adaptation.auto`` on; ``alice`` may apply and revert."""


def outage(base: datetime, dependency: str, i: int, length: float) -> OutageObservation:
    """Outage ``i`` (a minute apart after ``base``) that took ``length`` s to recover."""
    return OutageObservation(
        dependency=dependency,
        source_id=f"rec-{i}/run",
        started_at=base + timedelta(minutes=i),
        recovered_at=base + timedelta(minutes=i, seconds=length),
        attempts=1,
        probes=2,
        outcome="SUCCEEDED",
    )


async def decided(env: WorkflowEnvironment, dependency: str, request_id: str) -> ConfigChange:
    """The recorded change of ``request_id``, once the ledger decided it."""
    for _ in range(600):
        change = await get_change(env.client, dependency, request_id)
        if change is not None:
            return change
        await env.sleep(0.5)
    raise AssertionError(f"{request_id} not decided")
