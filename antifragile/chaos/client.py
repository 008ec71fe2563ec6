"""Client-side operations on chaos experiments, shared by the CLI and tests."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client, WorkflowHandle

from antifragile.chaos.scenario import ChaosScenario
from antifragile.constants import KIND_CHAOS, chaos_workflow_id
from antifragile.models.chaos import ChaosExperimentInput, ChaosReport

WORKFLOW_TYPE = "ChaosExperimentWorkflow"


def new_experiment_id(scenario: ChaosScenario) -> str:
    """A fresh workflow id ``chaos-{name}-{8 hex}`` (never reused: leases key on it)."""
    return chaos_workflow_id(scenario.name, uuid.uuid4().hex[:8])


def experiment_summary(scenario: ChaosScenario) -> str:
    """The one-line summary the Temporal UI shows for an experiment."""
    dry = " (dry run)" if scenario.dry_run else ""
    return (
        f"Chaos {scenario.chaos_type.value} on {scenario.target} for {scenario.duration_s:g}s"
        f" — {scenario.parameters_description()}{dry}"
    )


def experiment_details(scenario: ChaosScenario) -> str:
    """The static details (Markdown) the Temporal UI shows for an experiment."""
    s = scenario
    lines = [
        f"**Experiment:** {s.name}" + (f" — {s.description}" if s.description else ""),
        f"**Fault:** {s.chaos_type.value}: {s.parameters_description()}",
        f"**Blast radius:** {', '.join(s.blast_radius)} ({s.instances_description})",
        f"**Duration:** {s.duration_s:g}s (cap {s.max_duration_s:g}s)",
        f"**Health guard:** abort below {s.abort_below_health:g}"
        + (f"; steady-state probe {s.steady_state_probe}" if s.steady_state_probe else ""),
        f"**Approval:** {'required' if s.require_approval else 'not required'}",
        f"**Requested by:** {s.requested_by or '-'}",
        "Signals: `emergency_stop` {reason, by}, `approve`/`reject` {approver, note}; "
        "query `status`.",
    ]
    return "\n\n".join(lines)


async def start_experiment(
    client: Client,
    scenario: ChaosScenario,
    *,
    task_queue: str,
    experiment_id: str | None = None,
) -> WorkflowHandle[Any, ChaosReport]:
    """Start a ChaosExperimentWorkflow for ``scenario``; returns its handle."""
    workflow_id = experiment_id or new_experiment_id(scenario)
    return await client.start_workflow(
        WORKFLOW_TYPE,
        ChaosExperimentInput(scenario=scenario, experiment_id=workflow_id),
        id=workflow_id,
        task_queue=task_queue,
        result_type=ChaosReport,
        static_summary=experiment_summary(scenario),
        static_details=experiment_details(scenario),
    )


RUNNING_QUERY = f'AfKind="{KIND_CHAOS}" AND ExecutionStatus="Running"'
"""Visibility query of every running chaos experiment."""
