"""Contracts of the slot protocol between orchestrated recoveries and their orchestrator.

A recovery started by the orchestrator holds one of its slots while it works. These are
the signals both ways (the recovery waits for a person, resumes, finishes an attempt; the
orchestrator grants the slot again) and the watcher activity that reports the close of
every recovery the orchestrator tracks.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from antifragile.models.common import StrictModel
from antifragile.models.orchestrator import RecoveryOutcome

# --- the watcher activity (closes of tracked recoveries) -------------------------------


class WatchedRecovery(StrictModel):
    """One recovery holding a slot, as a watcher activity sees it.

    Attributes:
        service: The service.
        workflow_id: ``recovery-{service}``.
        run_id: First run id to follow (None: the latest run).
        index: Admission number of the slot holder; a report about an older holder of
            the same service's slot is ignored.
    """

    service: str
    workflow_id: str
    run_id: str | None = None
    index: int = 0


class WatchRecoveriesInput(StrictModel):
    """Input of ``watch_recoveries``.

    Attributes:
        recoveries: The recoveries to watch.
        wait: True: return once at least one has closed (long poll, heartbeating).
            False: report those already closed and return at once (reconcile).
    """

    recoveries: list[WatchedRecovery]
    wait: bool = True


class RecoveryFinished(StrictModel):
    """How a recovery that held a slot ended.

    Attributes:
        service: The service.
        outcome: Succeeded, failed, cancelled, terminated, timed out, ...
        detail: A short message (the failure's, if any).
        index: Admission number of the slot holder it is about (0: whoever holds it).
    """

    service: str
    outcome: RecoveryOutcome
    detail: str = ""
    index: int = 0


class WatchRecoveriesResult(StrictModel):
    """Result of ``watch_recoveries``: the watched recoveries found closed."""

    finished: list[RecoveryFinished] = Field(default_factory=list)


# --- signals ---------------------------------------------------------------------------
# Messages between an orchestrated recovery and its orchestrator. A recovery started by the
# orchestrator (its parent) reports to it by workflow id (never run id: the orchestrator
# continues as new); a recovery started directly has no orchestrator and sends nothing.


class RecoveryWaiting(StrictModel):
    """Signal ``recovery_waiting`` (recovery → orchestrator): it now waits for a person.

    Slots are held by work, never by waiting: the orchestrator frees the slot at once and
    lists the recovery as awaiting approval until it resumes or closes.

    Attributes:
        service: The recovering service.
        workflow_id: The recovery's workflow id.
        reason: Why it waits, one line (e.g. "5 attempts failed", "manual strategy").
    """

    service: str
    workflow_id: str
    reason: str = ""


class RecoveryResuming(StrictModel):
    """Signal ``recovery_resuming`` (recovery → orchestrator): approved, it needs a slot again.

    The orchestrator queues it at ``priority`` keeping its original arrival order, so it goes
    ahead of later requests of the same priority, and signals ``slot_granted`` on admission.

    Attributes:
        service: The recovering service.
        workflow_id: The recovery's workflow id.
        priority: Its priority (lower = more urgent).
    """

    service: str
    workflow_id: str
    priority: int


class SlotGranted(StrictModel):
    """Signal ``slot_granted`` (orchestrator → recovery): the resumed recovery may run again.

    Attributes:
        admitted_at: When the orchestrator admitted it again.
        running: Recoveries holding a slot, this one included.
    """

    admitted_at: datetime
    running: int = 0


class AttemptFinished(StrictModel):
    """Signal ``attempt_finished`` (recovery → orchestrator): one attempt ended.

    Feeds the fleet-wide retry budget (failed attempts / all attempts over a sliding
    window, Google SRE book ch. 22): above ``retry_budget`` admissions pause.

    Attributes:
        service: The recovering service.
        workflow_id: The recovery's workflow id.
        attempt: Attempt number within the recovery (1-based, contiguous).
        succeeded: The attempt's probe passed.
        at: When the attempt ended (workflow time).
    """

    service: str
    workflow_id: str
    attempt: int = Field(ge=1)
    succeeded: bool
    at: datetime
