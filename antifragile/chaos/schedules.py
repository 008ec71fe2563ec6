"""Game days: chaos experiments run on a cron, as Temporal Schedules.

Every chaos schedule's id is ``chaos-schedule-{scenario name}``. The fleet's halt switch
pauses them and ``resume`` unpauses only those it paused (both in
:mod:`antifragile.chaos.client`): a schedule an operator paused by hand stays paused.
"""

from __future__ import annotations

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.service import RPCError, RPCStatusCode

from antifragile.chaos.client import (
    HALT_NOTE,
    chaos_schedule_ids,
    experiment_details,
    experiment_summary,
)
from antifragile.chaos.plane import FaultPlane
from antifragile.constants import CHAOS_WORKFLOW_TYPE
from antifragile.errors import AntifragileError
from antifragile.models.chaos import ChaosExperimentInput
from antifragile.models.chaos_fleet import SCHEDULE_PREFIX, ScheduleCreated, ScheduleInfo
from antifragile.models.chaos_scenario import ChaosScenario


class ScheduleError(AntifragileError):
    """A schedule request that cannot be done as asked (exists, missing, bad cron)."""


class InvalidCronError(ScheduleError):
    """The server refused the cron expression; the message is the server's."""


def schedule_id(name: str) -> str:
    """The schedule id of the scenario ``name``."""
    return f"{SCHEDULE_PREFIX}{name}"


async def create_schedule(
    client: Client,
    plane: FaultPlane,
    scenario: ChaosScenario,
    cron: str,
    *,
    task_queue: str,
) -> ScheduleCreated:
    """Run ``scenario`` on ``cron`` (overlapping runs are skipped).

    Created paused when the halt switch is set, so a halted fleet starts nothing.

    Args:
        client: A Temporal client (pydantic data converter).
        plane: The fault plane, to read the halt switch.
        scenario: The experiment each run starts (workflow id ``chaos-{name}-scheduled``).
        cron: A cron expression, e.g. ``"0 10 * * 2"`` (kept as written in the memo).
        task_queue: The workers' task queue.

    Returns:
        The schedule's id and whether the halt switch paused it.

    Raises:
        ScheduleError: a schedule of that name exists.
        InvalidCronError: the server refused the cron expression.
        redis.exceptions.RedisError, OSError: Redis did not answer (nothing created).
    """
    sid = schedule_id(scenario.name)
    halted = (await plane.halt_status()).halted
    action = ScheduleActionStartWorkflow(
        CHAOS_WORKFLOW_TYPE,
        ChaosExperimentInput(scenario=scenario),
        id=f"chaos-{scenario.name}-scheduled",
        task_queue=task_queue,
        static_summary=experiment_summary(scenario),
        static_details=experiment_details(scenario),
    )
    try:
        await client.create_schedule(
            sid,
            Schedule(
                action=action,
                spec=ScheduleSpec(cron_expressions=[cron]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
            # The server keeps the cron only as calendars: remember it as written.
            memo={"cron": cron, "scenario": scenario.name},
        )
    except Exception as exc:
        text = str(exc)
        if "already" in text.lower():
            raise ScheduleError(
                f"a schedule named {scenario.name!r} exists; unschedule it first"
            ) from None
        if "cron" in text.lower() or "invalid" in text.lower():
            raise InvalidCronError(text) from None
        raise
    if halted:
        await client.get_schedule_handle(sid).pause(note=f"{HALT_NOTE}: set at creation")
    return ScheduleCreated(schedule_id=sid, cron=cron, paused_by_halt=halted)


async def list_schedules(client: Client) -> list[ScheduleInfo]:
    """Every chaos schedule, with its cron, pause state and next run."""
    rows: list[ScheduleInfo] = []
    for sid in await chaos_schedule_ids(client):
        desc = await client.get_schedule_handle(sid).describe()
        nxt = desc.info.next_action_times[:1]
        rows.append(
            ScheduleInfo(
                name=sid.removeprefix(SCHEDULE_PREFIX),
                schedule_id=sid,
                cron=str((await desc.memo()).get("cron", "")),
                paused=desc.schedule.state.paused,
                note=desc.schedule.state.note or "",
                next_run=nxt[0] if nxt else None,
                runs=desc.info.num_actions,
            )
        )
    return rows


async def delete_schedule(client: Client, name: str) -> None:
    """Delete the chaos schedule of the scenario ``name``.

    Raises:
        ScheduleError: there is no such schedule.
    """
    try:
        await client.get_schedule_handle(schedule_id(name)).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleError(f"no chaos schedule named {name!r}") from None
        raise
