"""``antifragile advise`` and ``antifragile score``: what the ledgers concluded.

Both read a dependency's ledger (``profile-{dependency}``, its ``profile`` query); without
a DEPENDENCY, every dependency with a running ledger (visibility: ``AfKind="profile"``).

- ``score``: the ledger's own :class:`~antifragile.models.learning.ResilienceScore`
  (computed in the workflow at its current time).
- ``advise``: the ledger's advice is computed against the library defaults
  (:class:`~antifragile.models.learning.CurrentSettings`). When Redis holds a config
  version in force for the dependency (:func:`antifragile.learning.config_versions.current`)
  its settings replace the defaults and the advice is recomputed here from the ledger's
  observations. Redis unreachable: the defaults, with a one-line note on stderr.

``advise`` is a group whose default is the listing (``antifragile advise [DEP] [--json]``):

- ``advise apply DEP --by NAME [--setting S ...] [--note T] [--wait S]``: ask the ledger to
  apply its advice (``apply_advice`` signal); the ledger authorizes NAME with the worker
  policy, decides the values from its observations against the version in force, and
  publishes them as a config version. Waits for the decision.
- ``advise revert DEP --by NAME``: undo the version in force (``revert_config``).
- ``advise history DEP [--json]``: every config version in Redis, and which is in force.

Exit codes: 0 shown; 2 bad input (a bad name, an unknown setting), or a DEPENDENCY without
a ledger (nothing observed yet: nothing to act on), or Temporal or Redis unreachable; 1
Temporal refused a call, or a change was refused, failed or not decided within ``--wait``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from typer import _click
from typer.core import TyperGroup

from antifragile.cli._common import (
    CommandFailed,
    command_errors,
    err_console,
    fail,
    is_redis_connection_error,
    load_settings,
    print_json,
    run_command,
)
from antifragile.cli._render.learning import render_advice, render_scores
from antifragile.constants import KIND_PROFILE, PROFILE_WORKFLOW_ID_PREFIX
from antifragile.errors import ConfigError
from antifragile.learning import advise
from antifragile.models.adaptation import ConfigChange
from antifragile.models.learning import (
    AdviceReport,
    ConfigVersion,
    CurrentSettings,
    ProfileView,
    ResilienceScore,
)

if TYPE_CHECKING:
    from temporalio.client import Client

    from antifragile.settings import Settings

JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
DependencyArg = Annotated[
    str | None,
    typer.Argument(help="A dependency (guard name); default every one with a ledger."),
]
LEDGERS_QUERY = f'AfKind="{KIND_PROFILE}" AND ExecutionStatus="Running"'
"""Running ledgers; :func:`ledger_dependencies` narrows it to this fleet's task queue."""

QUERY_TIMEOUT = timedelta(seconds=10)
"""How long one ledger's ``profile`` query may take (a ledger whose workers are gone never
answers: it is skipped with a note when listing, an error when asked for by name)."""
"""Visibility query of every running ledger (a ledger never ends by itself)."""
REDIS_TIMEOUT_S = 3.0
"""Longest wait for Redis when reading the config versions in force, in seconds."""
DEFAULTS = "library defaults"


MAX_DEPENDENCY_LENGTH = 1000 - len(PROFILE_WORKFLOW_ID_PREFIX)
"""Longest dependency name: its ledger's id ``profile-{dependency}`` stays within
Temporal's default workflow id limit of 1000 characters (``limit.maxIDLength``)."""


def check_dependency(dependency: str) -> str:
    """``dependency`` if it can name a ledger.

    Raises:
        antifragile.errors.ConfigError: (exit 2) empty, with whitespace or control
            characters, or longer than :data:`MAX_DEPENDENCY_LENGTH`.
    """
    if not dependency or any(c.isspace() or not c.isprintable() for c in dependency):
        fail(f"bad dependency {dependency!r}: a guard name, without spaces")
    if len(dependency) > MAX_DEPENDENCY_LENGTH:
        fail(
            f"bad dependency {dependency[:40]!r}...: {len(dependency)} characters, "
            f"at most {MAX_DEPENDENCY_LENGTH} (its ledger's workflow id)"
        )
    return dependency


def check_name(by: str) -> str:
    """``by`` if it can name an approver (1-200 printable characters, not only spaces).

    Raises:
        antifragile.errors.ConfigError: (exit 2) otherwise.
    """
    if not by.strip() or len(by) > 200 or not by.isprintable():
        fail(f"bad --by {by!r}: an approver's name (1-200 printable characters)")
    return by


def overlay(version: ConfigVersion | None) -> CurrentSettings:
    """The library defaults with the settings of ``version`` (None: the defaults) over them.

    Only the settings the version sets (not None) replace a default.
    """
    given = {} if version is None else version.settings.model_dump(exclude_none=True)
    return CurrentSettings(**given)


def advice_report(
    view: ProfileView, version: ConfigVersion | None, now: datetime, note: str = ""
) -> AdviceReport:
    """The advice for ``view``'s dependency against the settings in force.

    Without a version the ledger's own advice is used as it is (the library defaults, at
    the ledger's time). With one, :func:`~antifragile.learning.advise` is run again on the
    ledger's observations against :func:`overlay` of it, at the later of ``now`` and the
    newest observation (a ledger's clock may run ahead of this one's: a test server).

    Args:
        view: The ledger's ``profile`` query answer.
        version: The config version in force (None: none, or Redis not read).
        now: This machine's time (injectable).
        note: Why the defaults were used (Redis unreachable), shown with the report.
    """
    if version is None:
        return AdviceReport(
            dependency=view.dependency,
            settings_source=DEFAULTS,
            note=note,
            current=CurrentSettings(),
            advice=list(view.advice),
        )
    current = overlay(version)
    at = max(now, view.newest) if view.newest is not None else now
    return AdviceReport(
        dependency=view.dependency,
        settings_source=f"config version {version.version}",
        current=current,
        advice=advise(view.dependency, view.observations, current, at),
    )


async def ledger_dependencies(client: Client, task_queue: str) -> list[str]:
    """Every dependency with a running ledger on ``task_queue`` (this fleet's), sorted."""
    found: set[str] = set()
    query = f'{LEDGERS_QUERY} AND TaskQueue="{task_queue}"'
    async for wf in client.list_workflows(query, limit=1000):
        # The dependency is in the id, not in AfService: a search by service finds its
        # recoveries and experiments, never its ledger.
        name = wf.id.removeprefix(PROFILE_WORKFLOW_ID_PREFIX)
        if wf.id.startswith(PROFILE_WORKFLOW_ID_PREFIX) and name:
            found.add(name)
    return sorted(found)


async def read_views(client: Client, dependency: str | None, task_queue: str) -> list[ProfileView]:
    """The ledgers asked for: one (``dependency``), or every running one of ``task_queue``.

    Raises:
        antifragile.errors.ConfigError: (exit 2) ``dependency`` has no ledger.
        temporalio.service.RPCError: the named ledger did not answer within
            :data:`QUERY_TIMEOUT` (listing: that ledger is skipped with a note).
    """
    from temporalio.service import RPCError

    from antifragile.learning.client import get_profile

    if dependency is not None:
        names = [dependency]
    else:
        names = await ledger_dependencies(client, task_queue)
    views: list[ProfileView] = []
    for name in names:
        try:
            view = await get_profile(client, name, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as exc:
            if dependency is not None:
                fail(await silent_ledger(client, name, exc), code=1)
            err_console.print(f"note: ledger of {name} did not answer ({exc}); skipped")
            continue
        if view is None:
            if dependency is not None:
                fail(f"no ledger for {name!r}: nothing observed yet (profile-{name} not found)")
            continue  # listed but gone since: skipped
        views.append(view)
    return views


async def silent_ledger(client: Client, dependency: str, exc: Exception) -> str:
    """Why a named ledger did not answer, in one line, with what to do about it.

    A ledger answers only while a worker polls its task queue: the one of the fleet that
    first recorded to it (the demo's ledgers run on the demo's queue, for instance).
    """
    from temporalio.service import RPCError

    ledger = f"{PROFILE_WORKFLOW_ID_PREFIX}{dependency}"
    try:
        described = await client.get_workflow_handle(ledger).describe(rpc_timeout=QUERY_TIMEOUT)
    except RPCError:
        return f"ledger {ledger} did not answer ({exc})"
    queue = described.task_queue
    return (
        f"ledger {ledger} did not answer: it runs on task queue {queue!r}, and no worker "
        f"there answered within {QUERY_TIMEOUT.total_seconds():g} s (start one: "
        f"ANTIFRAGILE_TASK_QUEUE={queue} antifragile worker)"
    )


async def versions_in_force(
    redis_url: str, dependencies: list[str]
) -> tuple[dict[str, ConfigVersion], str]:
    """The config version in force of each dependency that has one, from Redis.

    Returns:
        The versions, and a note: empty, or one line saying Redis was unreachable (then
        no version is returned and the library defaults apply), or naming the
        dependencies whose version in force is unreadable (those get the defaults).
    """
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from antifragile.cli._common import connection_reason, display_url
    from antifragile.errors import AntifragileError
    from antifragile.learning.config_versions import current

    found: dict[str, ConfigVersion] = {}
    unreadable: list[str] = []
    if not dependencies:
        return found, ""
    client = aioredis.from_url(
        redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        for dependency in dependencies:
            try:
                version = await current(client, dependency)
            except (ValueError, AntifragileError, ResponseError):
                unreadable.append(dependency)  # hand-written garbage: this one only
                continue
            if version is not None:
                found[dependency] = version
    except Exception as exc:
        if not is_redis_connection_error(exc):
            raise
        return {}, (
            f"note: Redis at {display_url(redis_url)} unreachable "
            f"({connection_reason(exc)}): advice against the library defaults"
        )
    finally:
        await client.aclose()
    if unreadable:
        return found, (
            f"note: config version in force unreadable for {', '.join(unreadable)} "
            "(see `antifragile advise history`): advice against the library defaults"
        )
    return found, ""


def advise_command(dependency: DependencyArg = None, json_out: JsonFlag = False) -> None:
    """Recommended settings per dependency, from what its ledger observed.

    For each setting: the value in force, the recommended one, why, and the evidence
    (observations and their time window). The values in force are the config version in
    Redis when there is one, else the library defaults.
    """
    if dependency is not None:
        with command_errors():
            check_dependency(dependency)

    async def _go(client: Client, settings: Settings) -> list[AdviceReport]:
        views = await read_views(client, dependency, settings.task_queue)
        versions, note = await versions_in_force(settings.redis_url, [v.dependency for v in views])
        if note:
            err_console.print(note, markup=False)
        now = datetime.now(UTC)
        return [advice_report(v, versions.get(v.dependency), now, note) for v in views]

    reports = run_command(_go)
    if json_out:
        print_json(reports[0] if dependency is not None else reports)
    else:
        render_advice(reports, load_settings().task_queue)


def score_command(dependency: DependencyArg = None, json_out: JsonFlag = False) -> None:
    """Resilience score (0-100) and trend per dependency, from its ledger.

    The score weighs measured outcomes (recovered within the target or not) by recency;
    the trend is the change the newest outcome made.
    """
    if dependency is not None:
        with command_errors():
            check_dependency(dependency)

    async def _go(client: Client, settings: Settings) -> list[ResilienceScore]:
        views = await read_views(client, dependency, settings.task_queue)
        return [v.score for v in views if v.score is not None]

    scores = run_command(_go)
    if json_out:
        if dependency is not None:
            print_json(scores[0] if scores else None)
        else:
            print_json(scores)
    else:
        render_scores(scores, load_settings().task_queue)


# --- advise apply / revert / history (issue 14, apply part) -----------------------------


class AdviseGroup(TyperGroup):
    """``advise``: a group whose default sub-command is the listing (``show``).

    ``antifragile advise DEP --json`` and ``antifragile advise --json`` run ``show``; a
    dependency named like a sub-command is reached as ``advise show NAME``.
    """

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        """Insert ``show`` unless the first word is a sub-command or a help option."""
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["show", *args]
        return super().parse_args(ctx, args)


advise_app = typer.Typer(
    cls=AdviseGroup,
    help="Recommended settings per dependency, from what its ledger observed.",
    add_completion=False,
)
advise_app.command("show")(advise_command)

ByOption = Annotated[str, typer.Option("--by", help="Who asks (a policy approver).")]
NoteOption = Annotated[str, typer.Option("--note", help="Why; kept with the change.")]
MAX_WAIT_S = 86_400.0
"""Longest ``--wait``, seconds (one day; ``inf`` or ``1e308`` cannot make a deadline)."""
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait", help="Seconds to wait for the ledger's decision.", min=0.1, max=MAX_WAIT_S
    ),
]
DEFAULT_WAIT_S = 30.0
"""Default ``--wait``: seconds for the ledger to decide (the publish retries Redis ~15 s)."""


def _change_request(
    dependency: str, by: str, note: str, wait: float, json_out: bool, settings: list[str] | None
) -> None:
    """Send an apply (``settings`` not None) or a revert, wait, and show the change."""
    from antifragile.learning.adaptation import setting_name

    with command_errors():
        check_dependency(dependency)
        check_name(by)
        try:
            names = [setting_name(s) for s in settings or []]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    async def _go(client: Client, _settings: Settings) -> ConfigChange:
        from temporalio.service import RPCError, RPCStatusCode

        from antifragile.learning import client as learning

        try:
            if settings is None:
                return await learning.revert_config(
                    client, dependency, by=by, note=note, timeout=timedelta(seconds=wait)
                )
            return await learning.apply_advice(
                client,
                dependency,
                by=by,
                settings=names,
                note=note,
                timeout=timedelta(seconds=wait),
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                fail(f"no ledger for {dependency!r}: nothing observed yet")
            raise
        except (learning.ChangeRefused, learning.ChangeNotDecided) as exc:
            raise CommandFailed(str(exc)) from None

    change = run_command(_go)
    if json_out:
        print_json(change)
        return
    version = "" if change.version is None else f" version {change.version}"
    err_console.print(
        f"{dependency}: {change.action} {change.outcome.value}{version}: {change.reason}",
        markup=False,
    )
    for setting, why in change.not_applied.items():
        err_console.print(f"  {setting}: {why}", markup=False)


@advise_app.command("apply")
def apply_command(
    dependency: Annotated[str, typer.Argument(help="The dependency (guard name).")],
    by: ByOption,
    setting: Annotated[
        list[str] | None,
        typer.Option("--setting", help="Advice setting to apply (repeat); default all."),
    ] = None,
    note: NoteOption = "",
    wait: WaitOption = DEFAULT_WAIT_S,
    json_out: JsonFlag = False,
) -> None:
    """Apply a dependency's advice live, approved by --by (audited, reversible).

    The ledger recomputes the advice against the version in force and publishes the
    values it decides as a new config version; services with the config plane apply it.
    """
    _change_request(dependency, by, note, wait, json_out, list(setting or []))


@advise_app.command("revert")
def revert_command(
    dependency: Annotated[str, typer.Argument(help="The dependency (guard name).")],
    by: ByOption,
    note: NoteOption = "",
    wait: WaitOption = DEFAULT_WAIT_S,
    json_out: JsonFlag = False,
) -> None:
    """Undo the config version in force: the settings before it, as a new version."""
    _change_request(dependency, by, note, wait, json_out, None)


@advise_app.command("history")
def history_command(
    dependency: Annotated[str, typer.Argument(help="The dependency (guard name).")],
    json_out: JsonFlag = False,
) -> None:
    """Every config version of a dependency in Redis, oldest first, and the one in force."""
    with command_errors():
        check_dependency(dependency)

    async def _go(settings: Settings) -> tuple[list[ConfigVersion], list[int], int | None]:
        import redis.asyncio as aioredis

        from antifragile.cli._common import connection_reason, display_url
        from antifragile.learning.config_versions import readable_history

        client = aioredis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        try:
            # An entry written by hand is shown as unreadable, not a failed command.
            return await readable_history(client, dependency)
        except Exception as exc:
            if not is_redis_connection_error(exc):
                raise
            fail(
                f"Redis at {display_url(settings.redis_url)} unreachable ({connection_reason(exc)})"
            )
        finally:
            await client.aclose()

    versions, unreadable, in_force = run_command(_go, temporal=False)
    if json_out:
        print_json(
            {
                "dependency": dependency,
                "current": in_force,
                "versions": [v.model_dump(mode="json") for v in versions],
                "unreadable": unreadable,
            }
        )
        return
    render_history(dependency, versions, in_force, unreadable)


def render_history(
    dependency: str,
    versions: list[ConfigVersion],
    in_force: int | None,
    unreadable: list[int] | None = None,
) -> None:
    """The versions as a table: version, in force, who, when, why, settings, revert of.

    ``unreadable``: numbers of entries that are not readable versions (one row each).
    """
    from rich.table import Table

    from antifragile.cli._common import console

    unreadable = unreadable or []
    if not versions and not unreadable:
        console.print(f"{dependency}: no config version (the service's own settings)")
        return
    table = Table(title=f"Config versions of {dependency}")
    for column in ("version", "in force", "by", "at (UTC)", "why", "settings", "revert of"):
        table.add_column(column)
    rows: list[ConfigVersion | int] = [*versions, *unreadable]
    for v in sorted(rows, key=lambda r: r if isinstance(r, int) else r.version):
        if isinstance(v, int):
            flag = "yes" if v == in_force else ""
            table.add_row(str(v), flag, "", "", "unreadable entry (not a version)", "", "")
            continue
        given = v.settings.model_dump(exclude_none=True)
        shown = ", ".join(f"{k}={val:g}" for k, val in given.items()) or "service's own"
        table.add_row(
            str(v.version),
            "yes" if v.version == in_force else "",
            v.by,
            f"{v.at:%Y-%m-%d %H:%M:%S}",
            v.why,
            shown,
            "" if v.revert_of is None else str(v.revert_of),
        )
    console.print(table)
