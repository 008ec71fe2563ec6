"""Worker wiring: every workflow and activity of antifragile on one task queue.

Reached only from the entry points: ``antifragile worker`` / ``dev`` / ``demo`` (the CLI
passes :func:`run_worker` or :func:`build_worker` to the dev stack and the demo) and
``python -m workers`` (:func:`main`, without the CLI). Both entry points prepare a worker
the same way: :func:`prepare_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.chaos import ChaosActivities
from activities.common import CommonActivities
from activities.learning import ConfigActivities, record_dependency_observations
from activities.orchestrator import OrchestratorActivities
from activities.recovery import RecoveryActivities, read_learned_recoveries
from antifragile.constants import KIND_CHAOS, KIND_RECOVERY
from antifragile.errors import AntifragileError, ConfigError, describe_validation_error
from antifragile.inprocess.metrics import (
    WorkflowCountCollector,
    serve,
    temporal_runtime_with_metrics,
)
from antifragile.models.chaos import ChaosPhase
from antifragile.models.recovery import RecoveryState
from antifragile.policy import WorkerPolicy
from antifragile.recovery.named_targets import environment_problems
from antifragile.settings import SECRET_SETTINGS, Settings
from antifragile.telemetry import configure_logging, shutdown_tracing
from antifragile.temporal_client import connect
from workers.traffic_harvest import TrafficHarvester
from workflows.chaos_experiment import ChaosExperimentWorkflow
from workflows.chaos_guardian import ChaosGuardianWorkflow
from workflows.dependency_profile import DependencyProfileWorkflow
from workflows.recovery import RecoveryWorkflow
from workflows.recovery_intake import RecoveryIntakeWorkflow
from workflows.recovery_orchestrator import RecoveryOrchestratorWorkflow

log = logging.getLogger("antifragile.worker")

# Running activities get this long to finish on SIGTERM before they are cancelled.
_GRACE = timedelta(seconds=5)


def all_workflows() -> list[type]:
    """Every workflow class the worker runs."""
    return [
        RecoveryWorkflow,
        RecoveryOrchestratorWorkflow,
        RecoveryIntakeWorkflow,
        ChaosExperimentWorkflow,
        ChaosGuardianWorkflow,
        DependencyProfileWorkflow,
    ]


def workflow_states() -> dict[str, list[str]]:
    """AfState values per AfKind, for the ``antifragile_workflows`` gauge."""
    return {
        KIND_RECOVERY: [state.value for state in RecoveryState],
        KIND_CHAOS: [phase.value for phase in ChaosPhase],
    }


def all_activities(settings: Settings, policy: WorkerPolicy) -> list[Callable[..., Any]]:
    """Every activity, bound to the worker's settings and policy."""
    common = CommonActivities(settings, policy)
    recovery = RecoveryActivities(settings, policy)
    orchestrator = OrchestratorActivities(settings, policy)
    chaos = ChaosActivities(settings, policy)
    config = ConfigActivities(settings, policy)
    return [
        common.validate_constitutional_hash,
        common.authorize_approver,
        common.probe_service,
        recovery.run_recovery_action,
        read_learned_recoveries,
        orchestrator.load_orchestrator_limits,
        orchestrator.watch_recoveries,
        orchestrator.forward_recovery_requests,
        chaos.validate_chaos_scenario,
        chaos.check_halt_switch,
        chaos.inject_fault,
        chaos.renew_fault_lease,
        chaos.remove_fault,
        chaos.measure_health,
        chaos.collect_experiment_impact,
        chaos.check_experiment_running,
        record_dependency_observations,
        config.read_dependency_config,
        config.publish_dependency_config,
    ]


PASSED_THROUGH_LIBRARIES = ("redis",)
"""Third-party modules the sandbox never re-imports, even with ``strict=True``.

redis-py's asyncio ``ConnectionPool.__del__`` imports ``redis.observability.recorder``.
The garbage collector runs finalizers on whatever thread allocates at that moment, and
that can be a workflow thread inside the sandbox: the import then re-imported redis (and
OpenTelemetry) inside the sandbox, where OpenTelemetry's read of ``os.environ`` is
restricted. Seen in ``bench/bridge.py`` (the pools of activities' Redis clients), and the
likely cause of a worker that once failed to validate a workflow in CI. Passed through,
the finalizer gets the host's already-imported module. Workflows never use redis.
"""


def workflow_runner(*, strict: bool = False) -> SandboxedWorkflowRunner:
    """The sandbox our workflows run in.

    By default the sandbox re-imports (and re-compiles) a workflow's module for every
    new workflow run: ~35 ms per recovery start on this project's reference machine,
    more than Temporal's own start latency. Our workflow modules keep no mutable global
    state and import only deterministic code, so they are passed through; the sandbox
    still restricts what runs inside workflows.

    Args:
        strict: Re-import our own modules in every run as the default sandbox does (the
            workflow tests use it to catch a non-deterministic call at import time).
            :data:`PASSED_THROUGH_LIBRARIES` are passed through either way.
    """
    own = () if strict else ("antifragile", "workflows")
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            *PASSED_THROUGH_LIBRARIES, *own
        )
    )


def build_worker(
    client: Client, settings: Settings, policy: WorkerPolicy, **options: Any
) -> Worker:
    """A worker for all workflows and activities on ``settings.task_queue``."""
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=all_workflows(),
        activities=all_activities(settings, policy),
        workflow_runner=workflow_runner(),
        **options,
    )


def traffic_harvester(client: Client, settings: Settings) -> TrafficHarvester:
    """The worker's traffic harvester: window and grace from the worker's settings."""
    return TrafficHarvester(
        client,
        settings.redis_url,
        settings.task_queue,
        window_s=settings.traffic_window_s,
        grace_s=settings.harvest_grace_s,
    )


@contextlib.asynccontextmanager
async def harvesting_worker(
    client: Client, settings: Settings, policy: WorkerPolicy, **options: Any
) -> AsyncIterator[Worker]:
    """:func:`build_worker`'s worker, running, with the traffic harvester beside it.

    What ``antifragile demo`` runs (as :func:`run_worker` does): without the harvester
    the ledgers would never see a traffic window, so no baseline and no threshold advice.
    """
    harvester = traffic_harvester(client, settings)
    await harvester.start()
    try:
        async with build_worker(client, settings, policy, **options) as worker:
            yield worker
    finally:
        await harvester.stop()


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
    temporal_runtime = (
        temporal_runtime_with_metrics(settings.temporal_metrics_port)
        if settings.temporal_metrics_port
        else None
    )
    client = await connect(settings, runtime=temporal_runtime)
    background: list[asyncio.Task[None]] = []
    if settings.metrics_port:
        registry = CollectorRegistry()
        counts = WorkflowCountCollector(client, workflow_states())
        registry.register(counts)
        server = serve(registry, settings.metrics_port)
        background.append(asyncio.create_task(counts.run()))
    stop = stop or asyncio.Event()
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, settings, policy, graceful_shutdown_timeout=_GRACE)
    # ${VAR}s are resolved at use: say now what the environment lacks (names, no values).
    for problem in environment_problems(policy.recovery):
        log.warning("worker policy: %s", problem)
    harvester = traffic_harvester(client, settings)
    await harvester.start()  # the fleet's traffic windows into the ledgers
    async with worker:
        log.info("worker polling %s on %s", settings.task_queue, settings.temporal_address)
        if on_ready:
            on_ready()
        await stop.wait()
        log.info("worker stopping")
    for task in background:
        task.cancel()
    await harvester.stop()
    if settings.metrics_port:
        server.close()
    shutdown_tracing()  # flush the spans of the last tasks (no-op without tracing)


def prepare_worker(settings: Settings) -> WorkerPolicy:
    """Load the worker's policy and configure logging, as every worker process starts.

    Shared by ``antifragile worker`` and ``python -m workers``.

    Args:
        settings: The worker's settings; ``policy_file`` names its policy (None: defaults)
            and the logging options set its log format and level.

    Returns:
        The policy to pass to :func:`run_worker`.

    Raises:
        ConfigError: The policy file is missing or invalid.
    """
    policy = WorkerPolicy.load(settings.policy_file)
    configure_logging(settings=settings)
    return policy


def worker_banner(settings: Settings) -> str:
    """The line a worker process prints on stderr when it starts."""
    return (
        f"worker: task queue {settings.task_queue} on {settings.temporal_address} "
        f"(namespace {settings.temporal_namespace})"
    )


def main() -> None:
    """``python -m workers``: run the worker until SIGTERM/SIGINT, without the CLI.

    Settings from ``ANTIFRAGILE_*``, then :func:`prepare_worker` and :func:`run_worker`, as
    ``antifragile worker``. Exit codes as the CLI's: 0 stopped; 2 a bad setting or policy,
    or Temporal unreachable; 1 Temporal refused a call; 130 interrupted before it polled.
    An error is one line on stderr; a bad setting's value is shown unless it may carry a
    secret (the Redis URL, the API key), as by the CLI. The process ends with ``os._exit``
    once output and spans are flushed: the Temporal core runtime can crash in interpreter
    finalization (sdk-python #300).
    """
    code = 0
    try:
        try:
            settings = Settings()
        except ValidationError as exc:
            # As ``antifragile worker``: the value shown unless it may carry a secret.
            why = describe_validation_error(exc, hide_input_at=SECRET_SETTINGS)
            raise ConfigError(f"bad ANTIFRAGILE_* setting: {why}") from None
        policy = prepare_worker(settings)
        print(worker_banner(settings), file=sys.stderr, flush=True)
        asyncio.run(run_worker(settings, policy))
    except KeyboardInterrupt:
        code = 130
    except AntifragileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except RPCError as exc:
        print(f"error: Temporal refused the request: {exc.message}", file=sys.stderr)
        code = 1
    shutdown_tracing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
