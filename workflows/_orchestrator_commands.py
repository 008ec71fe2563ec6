"""The activities the recovery orchestrator runs: its limits and the watch on recoveries.

Each function issues one activity of RecoveryOrchestratorWorkflow with its input,
timeouts, retries and UI summary, and returns the result. Options are part of the
recorded histories' contract: change one only behind a ``workflow.patched`` marker. Not a
durable process of its own.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import ACTIVITY_LOAD_ORCHESTRATOR_LIMITS, ACTIVITY_WATCH_RECOVERIES
    from antifragile.models.orchestrator import LoadLimitsInput, OrchestratorLimits
    from antifragile.models.slots import (
        WatchedRecovery,
        WatchRecoveriesInput,
        WatchRecoveriesResult,
    )

WATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
LIMITS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)
)


async def load_limits() -> OrchestratorLimits:
    """``load_orchestrator_limits``: slots, rates and budget from the worker policy."""
    limits: OrchestratorLimits = await workflow.execute_activity(
        ACTIVITY_LOAD_ORCHESTRATOR_LIMITS,
        LoadLimitsInput(),
        result_type=OrchestratorLimits,
        start_to_close_timeout=timedelta(seconds=10),
        retry_policy=LIMITS_RETRY,
        summary="load limits from the worker policy",
    )
    return limits


async def watch_until_closed(watched: list[WatchedRecovery]) -> WatchRecoveriesResult:
    """``watch_recoveries`` long-polling until one of ``watched`` closes.

    A recovery may wait days for approval; the heartbeat notices a lost worker.
    """
    result: WatchRecoveriesResult = await workflow.execute_activity(
        ACTIVITY_WATCH_RECOVERIES,
        WatchRecoveriesInput(recoveries=watched, wait=True),
        result_type=WatchRecoveriesResult,
        start_to_close_timeout=timedelta(days=7),
        heartbeat_timeout=WATCH_HEARTBEAT_TIMEOUT,
        retry_policy=WATCH_RETRY,
        summary=f"watch {len(watched)} carried recoveries until they close",
    )
    return result


async def closed_now(watched: list[WatchedRecovery]) -> WatchRecoveriesResult:
    """``watch_recoveries`` without waiting: which of ``watched`` have closed (reconcile)."""
    result: WatchRecoveriesResult = await workflow.execute_activity(
        ACTIVITY_WATCH_RECOVERIES,
        WatchRecoveriesInput(recoveries=watched, wait=False),
        result_type=WatchRecoveriesResult,
        start_to_close_timeout=timedelta(seconds=60),
        retry_policy=WATCH_RETRY,
        summary=f"reconcile {len(watched)} running recoveries",
    )
    return result
