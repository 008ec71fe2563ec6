"""Results of the fleet-wide chaos operations in :mod:`antifragile.chaos.client`.

Stopping every experiment, resuming after a halt, and the game-day schedules. Each
result says what was done and what was not: an emergency path never raises because one
server is unreachable, it reports it. Errors are kept as the exceptions themselves (for
``isinstance`` checks and for the CLI's one-line wording) and serialise as their text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from antifragile.models.chaos import ChaosPhase

CLEANED_PHASES = frozenset(
    {
        ChaosPhase.VERIFYING_RECOVERY,
        ChaosPhase.COMPLETED,
        ChaosPhase.ABORTED,
        ChaosPhase.STOPPED,
        ChaosPhase.FAILED,
    }
)
"""Phases in which an experiment's fault is gone."""

SCHEDULE_PREFIX = "chaos-schedule-"
"""Every chaos schedule's id is this prefix followed by the scenario's name."""


def _text(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


Failure = Annotated[BaseException, PlainSerializer(_text, return_type=str | None)]
"""An exception kept in a result; serialised as ``"Type: message"``."""


class _Result(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)


class TemporalStop(_Result):
    """What an emergency stop of every experiment did through Temporal.

    Attributes:
        reached: False: Temporal did not answer; nothing was signalled or paused.
        connect_error: Why it could not connect (``reached`` is then False).
        list_error: Why the running experiments could not be listed (nothing signalled).
        signalled: Experiments that received ``emergency_stop``.
        not_signalled: Experiment id -> why its signal failed.
        left: Signalled experiments not cleaned up within the wait.
        schedules_paused: Chaos schedules paused by this stop.
        schedules_error: Why the schedules could not (all) be paused.
    """

    reached: bool = True
    connect_error: Failure | None = None
    list_error: Failure | None = None
    signalled: list[str] = Field(default_factory=list)
    not_signalled: dict[str, Failure] = Field(default_factory=dict)
    left: list[str] = Field(default_factory=list)
    schedules_paused: int = 0
    schedules_error: Failure | None = None

    @property
    def cleaned(self) -> int:
        """Signalled experiments whose fault is gone."""
        return len(self.signalled) - len(self.left)


class FleetStopResult(_Result):
    """What :func:`~antifragile.chaos.client.stop_all_experiments` did.

    The halt switch (Redis) and the Temporal path run independently: with one of them
    unreachable the other is still done.

    Attributes:
        halt_error: Why the halt switch was not written; None when it was.
        temporal: What was done through Temporal.
        wait_s: How long it waited for cleanup, seconds.
    """

    halt_error: Failure | None = None
    temporal: TemporalStop
    wait_s: float

    @property
    def halt_set(self) -> bool:
        """True when the halt switch was written."""
        return self.halt_error is None

    @property
    def nothing_stopped(self) -> bool:
        """Neither the halt switch nor Temporal could be reached."""
        return not self.halt_set and not self.temporal.reached

    @property
    def complete(self) -> bool:
        """Everything was done: halt written, every experiment signalled and cleaned up."""
        t = self.temporal
        return (
            self.halt_set
            and t.reached
            and t.list_error is None
            and not t.not_signalled
            and not t.left
            and t.schedules_error is None
        )


class ResumeResult(_Result):
    """What :func:`~antifragile.chaos.client.resume_fleet` did.

    Attributes:
        halt_was_set: True when the halt switch was set (it is cleared now either way).
        schedules_resumed: Schedules the halt had paused that run again; None when they
            were not resumed (see ``schedules_error``).
        schedules_error: Why the schedules were not resumed (Temporal unreachable).
    """

    halt_was_set: bool
    schedules_resumed: int | None = None
    schedules_error: Failure | None = None


class StopResult(_Result):
    """What stopping one experiment did.

    Attributes:
        experiment_id: The experiment signalled.
        cleaned: True when its fault was gone within the wait.
        injected: False when nothing was injected; None when its status was not readable.
        injection_failed: Why injection failed, when it did.
    """

    experiment_id: str
    cleaned: bool
    injected: bool | None = None
    injection_failed: str = ""


class ScheduleInfo(_Result):
    """One chaos schedule.

    Attributes:
        name: The scenario's name.
        schedule_id: ``chaos-schedule-{name}``.
        cron: The cron expression as written at creation.
        paused: True while paused.
        note: The pause note (the halt switch's notes start with its marker).
        next_run: When it runs next; None when paused or never.
        runs: How many times it has run.
    """

    name: str
    schedule_id: str
    cron: str
    paused: bool
    note: str = ""
    next_run: datetime | None = None
    runs: int = 0


class ScheduleCreated(_Result):
    """A chaos schedule just created.

    Attributes:
        schedule_id: ``chaos-schedule-{name}``.
        cron: Its cron expression.
        paused_by_halt: True when the halt switch was set: it was created paused.
    """

    schedule_id: str
    cron: str
    paused_by_halt: bool
