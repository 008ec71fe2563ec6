"""Shared by the ``adaptation.auto`` tests: outages of known length, waiting for a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.testing import WorkflowEnvironment

from antifragile.learning.client import get_change
from antifragile.models.adaptation import ConfigChange
from antifragile.models.learning import OutageObservation
from antifragile.policy import AdaptationPolicyConfig, RecoveryPolicyConfig, WorkerPolicy

BASE = datetime.now(UTC) - timedelta(minutes=30)
"""Outages are placed after this (recent: well inside a ledger's age limit)."""

AUTO_POLICY = WorkerPolicy(
    recovery=RecoveryPolicyConfig(approvers=["alice"]),
    adaptation=AdaptationPolicyConfig(auto=True),
)
"""``adaptation.auto`` on; ``alice`` may apply and revert."""


def outage(dependency: str, i: int, length: float) -> OutageObservation:
    """Outage ``i`` (a minute apart) that took ``length`` seconds to recover."""
    return OutageObservation(
        dependency=dependency,
        source_id=f"rec-{i}/run",
        started_at=BASE + timedelta(minutes=i),
        recovered_at=BASE + timedelta(minutes=i, seconds=length),
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
