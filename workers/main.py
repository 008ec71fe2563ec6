"""Worker wiring: every workflow and activity of antifragile on one task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.chaos import ChaosActivities
from activities.common import CommonActivities
from activities.recovery import RecoveryActivities
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings
from antifragile.temporal_client import connect
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow
from workflows.recovery import RecoveryWorkflow

log = logging.getLogger("antifragile.worker")

# Running activities get this long to finish on SIGTERM before they are cancelled.
_GRACE = timedelta(seconds=5)


def all_workflows() -> list[type]:
    """Every workflow class the worker runs."""
    return [RecoveryWorkflow, ChaosExperimentWorkflow, ChaosGuardianWorkflow]


def all_activities(settings: Settings, policy: WorkerPolicy) -> list[Callable[..., Any]]:
    """Every activity, bound to the worker's settings and policy."""
    common = CommonActivities(settings, policy)
    recovery = RecoveryActivities(settings, policy)
    chaos = ChaosActivities(settings, policy)
    return [
        common.validate_constitutional_hash,
        common.authorize_approver,
        common.probe_service,
        recovery.run_recovery_action,
        chaos.validate_chaos_scenario,
        chaos.check_halt_switch,
        chaos.inject_fault,
        chaos.renew_fault_lease,
        chaos.remove_fault,
        chaos.measure_health,
        chaos.collect_experiment_impact,
        chaos.check_experiment_running,
    ]


def build_worker(
    client: Client, settings: Settings, policy: WorkerPolicy, **options: Any
) -> Worker:
    """A worker for all workflows and activities on ``settings.task_queue``."""
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=all_workflows(),
        activities=all_activities(settings, policy),
        **options,
    )


async def run_worker(
    settings: Settings | None = None,
    policy: WorkerPolicy | None = None,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Connect and run a worker until ``stop`` is set or SIGTERM/SIGINT arrives."""
    settings = settings or Settings()
    policy = policy or WorkerPolicy.load(settings.policy_file)
    client = await connect(settings)
    stop = stop or asyncio.Event()
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, settings, policy, graceful_shutdown_timeout=_GRACE)
    async with worker:
        log.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
        if on_ready:
            on_ready()
        await stop.wait()
        log.info("worker stopping")
