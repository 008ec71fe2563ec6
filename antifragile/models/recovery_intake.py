"""Contracts of the recovery intake: fire-and-forget requests, batched per shard.

RecoveryIntakeWorkflow (``{orchestrator id}-intake-{shard}``) takes ``request_recovery``
signals from clients that must not wait (the in-process bridge) and forwards them to the
orchestrator in batches (:mod:`antifragile.models.orchestrator` holds the batch itself).
"""

from __future__ import annotations

from pydantic import Field

from antifragile.models.common import StrictModel
from antifragile.models.recovery import RecoveryRequest


class IntakeInput(StrictModel):
    """Input of RecoveryIntakeWorkflow (``{orchestrator id}-intake-{shard}``).

    Attributes:
        orchestrator_id: The orchestrator the intake forwards to.
        task_queue: The fleet's task queue (where the orchestrator runs if it must be
            started).
        pending: Requests received and not yet forwarded (carried over continue-as-new).
        forwarded: Requests forwarded by earlier runs (for the record).
        max_history_events: Continue-as-new once the run's history reaches this many
            events (or when the server suggests it). Default 2,000.
    """

    orchestrator_id: str = Field(min_length=1)
    task_queue: str = Field(min_length=1)
    pending: list[RecoveryRequest] = Field(default_factory=list)
    forwarded: int = Field(default=0, ge=0)
    max_history_events: int = Field(default=2_000, ge=20)


class IntakeResult(StrictModel):
    """Result of an intake run that ended idle.

    Attributes:
        forwarded: Requests this intake forwarded, over all its runs since it started.
    """

    forwarded: int = 0


class IntakeStatus(StrictModel):
    """Result of an intake's ``intake`` query.

    Attributes:
        orchestrator_id: Where its requests go.
        pending: Requests received and not yet forwarded.
        forwarded: Requests forwarded so far (all runs).
        forwards: Batches forwarded by this run.
    """

    orchestrator_id: str
    pending: int
    forwarded: int
    forwards: int


class ForwardRequestsInput(StrictModel):
    """Input of the ``forward_recovery_requests`` activity: one batch, in arrival order.

    Attributes:
        orchestrator_id: The orchestrator to signal (started if it is not running).
        task_queue: The fleet's task queue.
        requests: The batch (at most one ``request_recoveries`` signal's worth).
    """

    orchestrator_id: str
    task_queue: str
    requests: list[RecoveryRequest] = Field(min_length=1, max_length=1000)


class ForwardRequestsResult(StrictModel):
    """Result of ``forward_recovery_requests``.

    Attributes:
        forwarded: Requests handed to the orchestrator (durable in its history).
    """

    forwarded: int
