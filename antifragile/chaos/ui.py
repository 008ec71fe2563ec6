"""What a chaos experiment shows in the Temporal UI and its journal (pure text).

ChaosExperimentWorkflow imports this module, so it stays free of clients and I/O.
"""

from __future__ import annotations

from antifragile.models.chaos import ChaosJournal, EmergencyStopSignal, InjectFaultResult


def chaos_details(journal: ChaosJournal) -> str:
    """The current details (Markdown) the Temporal UI shows for a running experiment.

    Phase, fault, duration, planned end, lowest health, warnings and why it ended.
    """
    j, s = journal, journal.scenario
    lines = [
        f"**{j.phase.value}** — {s.chaos_type.value} on {', '.join(s.blast_radius)} "
        f"({s.parameters_description()}; {s.instances_description})",
        f"Duration: {j.duration_s:g}s" + (" (dry run)" if s.dry_run else ""),
    ]
    if j.ends_at is not None and not j.phase.terminal:
        lines.append(f"Fault ends at: {j.ends_at:%H:%M:%S} UTC")
    if j.lowest_health is not None:
        lines.append(f"Lowest health: {j.lowest_health:.2f} (abort below {s.abort_below_health:g})")
    if j.warnings:
        lines.append("Warnings: " + "; ".join(j.warnings))
    if j.reason:
        lines.append(f"Ended: {j.reason}")
    return "\n\n".join(lines)


def guardian_summary(experiment_id: str) -> str:
    """The static summary of an experiment's guardian child workflow."""
    return f"Guardian of {experiment_id}: removes its fault lease if it dies"


def stop_reason(stop: EmergencyStopSignal) -> str:
    """Why an emergency stop ends the run: ``emergency stop by NAME: REASON``."""
    by = f" by {stop.by}" if stop.by else ""
    return f"emergency stop{by}: {stop.reason}"


def cancelled_reason(why: str | None, stop: EmergencyStopSignal | None) -> str:
    """Why a cancelled run ends STOPPED (``why``: the cancel's reason).

    A stop that came first is the reason; the cancel follows it in brackets.
    """
    reason = f"cancelled{': ' + why if why else ''}"
    if stop is not None:
        reason = f"{stop_reason(stop)} (then {reason})"
    return reason


def cleanup_note(method: str, detail: str) -> str:
    """The journal line of a finished cleanup."""
    return f"cleanup done: {method}" + (f" — {detail}" if detail else "")


def validated_note(journal: ChaosJournal) -> str:
    """The journal line once the scenario passed validation (duration, targets, TTL)."""
    blast = ", ".join(journal.scenario.blast_radius)
    return f"validated: {journal.duration_s:g}s on {blast}, lease TTL {journal.lease_ttl_s:g}s"


def injected_note(result: InjectFaultResult, blast_radius: list[str]) -> str:
    """The journal line after an injection that was not halted."""
    if not result.injected:
        return result.detail or "nothing injected"
    guards = (
        f"; {result.instances_guarding} live instance(s) guard it"
        if result.instances_guarding is not None
        else ""
    )
    return f"fault injected on {', '.join(blast_radius)} ({result.detail}{guards})"


def experiment_id_refusal(experiment_id: str, workflow_id: str) -> str:
    """Why a run whose input names another experiment id is refused."""
    return (
        f"experiment_id {experiment_id!r} is not this workflow's id "
        f"{workflow_id!r}: leave it empty or equal to the workflow id"
    )
