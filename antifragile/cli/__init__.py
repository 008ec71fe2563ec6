"""The ``antifragile`` command line.

Exit codes: 0 success; 1 the operation ran and failed; 2 bad input or nothing to act on.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.exceptions import TyperException

if TYPE_CHECKING:
    from temporalio.client import Client

    from antifragile.settings import Settings

LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, attribute, help shown by `antifragile --help`). The module is imported
    # only when the command runs (or its own --help is asked): `antifragile --help` and every
    # other command skip temporalio, redis and the models (~1 s on a busy machine).
    "health": (
        "antifragile.cli.health",
        "health_command",
        "Fleet health from Redis: per instance and per breaker, state, score and status.",
    ),
    "recovery": (
        "antifragile.cli.recovery",
        "app",
        "Start, follow, approve and cancel durable recoveries.",
    ),
    "chaos": (
        "antifragile.cli.chaos",
        "app",
        "Chaos experiments as durable workflows: run, follow, stop, schedule.",
    ),
    "advise": (
        "antifragile.cli.learning",
        "advise_app",
        "Recommended settings per dependency, from what its ledger observed.",
    ),
    "score": (
        "antifragile.cli.learning",
        "score_command",
        "Resilience score (0-100) and trend per dependency, from its ledger.",
    ),
}
"""Commands whose module is imported on first use; tests pin the help texts to the modules'."""
_COMMAND_ORDER = (
    "health",
    "worker",
    "setup",
    "dev",
    "demo",
    "recovery",
    "chaos",
    "advise",
    "score",
)
"""The order of ``antifragile --help``, as when every command was registered up front."""


def load_command(name: str) -> Any:
    """The click command of the lazily registered ``name``: imports its module.

    Args:
        name: A key of :data:`LAZY_COMMANDS`.

    Returns:
        A ``click.Command`` (``health``, ``advise``, ``score``) or ``click.Group``
        (``recovery``, ``chaos``).
    """
    module, attr, _ = LAZY_COMMANDS[name]
    target = getattr(importlib.import_module(module), attr)
    # Registered on a stand-in root exactly as on the real one, so the command is built
    # (options, help, no completion flags) as if it had been registered up front.
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:  # a command function of the root app
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


def preload() -> None:
    """Import every command's modules now, Temporal names included.

    For a process that imports the CLI once and then forks a child per command line
    (``tests/cli_batch.py``): the children pay no import.
    """
    for name in LAZY_COMMANDS:
        load_command(name)
    # The Temporal half of `chaos` (temporalio itself), imported by its commands when run.
    for module in (
        "antifragile.chaos.report",
        "antifragile.chaos.schedules",
        "antifragile.temporal_client",
    ):
        importlib.import_module(module)


class _Placeholder(TyperCommand):
    """Stands for a lazily imported command in the root's help listing."""


class LazyGroup(TyperGroup):
    """The root group: sub-commands of :data:`LAZY_COMMANDS` are imported when resolved."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, (_, _, help_text) in LAZY_COMMANDS.items():
            self.commands.setdefault(name, _Placeholder(name=name, help=help_text))
        order = {name: i for i, name in enumerate(_COMMAND_ORDER)}
        self.commands = dict(
            sorted(self.commands.items(), key=lambda kv: order.get(kv[0], len(order)))
        )
        self._listing = False

    @contextmanager
    def _listing_commands(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if isinstance(command, _Placeholder) and not self._listing:
            command = self.commands[cmd_name] = load_command(cmd_name)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # The listing needs only names and one-line helps: no sub-command module imported.
        with self._listing_commands():
            super().format_help(ctx, formatter)


_option_type = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    # typer shows "<bool>" next to every flag (--wait, --json, --help): a flag takes no value.
    return None if self.is_flag else _option_type(self, ctx)


TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


app = typer.Typer(
    name="antifragile",
    help="Durable recovery and chaos engine for Python services, built on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyGroup,
)


@app.command("worker")
def worker() -> None:
    """Run a worker for every workflow and activity until SIGTERM/SIGINT."""
    from antifragile.cli._common import err_console, load_settings, run_command
    from workers.main import prepare_worker, run_worker, worker_banner  # only the CLI

    settings = load_settings()
    policy = prepare_worker(settings)
    err_console.print(worker_banner(settings))
    run_command(lambda s: run_worker(s, policy), settings, temporal=False, quiet_core=False)


@app.command("setup")
def setup() -> None:
    """Register antifragile's search attributes in the configured namespace (idempotent)."""
    from antifragile.cli._common import console, load_settings, run_command
    from antifragile.temporal_client import ensure_search_attributes

    settings = load_settings()

    async def _go(client: Client, _: Settings) -> list[str]:
        return await ensure_search_attributes(client)

    added = run_command(_go, settings)
    where = f"{settings.temporal_address} namespace {settings.temporal_namespace}"
    if added:
        console.print(f"registered {', '.join(added)} on {where}")
    else:
        console.print(f"search attributes already registered on {where}")


@app.command("dev")
def dev(
    port: Annotated[int, typer.Option(help="Temporal gRPC port.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal UI port.")] = 8233,
    redis_port: Annotated[
        int, typer.Option(help="Redis port (unless ANTIFRAGILE_REDIS_URL).")
    ] = 6379,
    data_dir: Annotated[Path, typer.Option(help="Where Temporal and Redis persist.")] = Path(
        ".antifragile"
    ),
) -> None:
    """Run the embedded stack (Temporal + UI, Redis, a worker) until Ctrl-C.

    If Temporal or Redis exits on its own, the stack says which (``error: Redis exited
    (code -9, SIGKILL): stopped the dev stack``), stops everything else and exits 1.
    """
    from temporalio.runtime import Runtime

    from antifragile.cli._common import (
        cli_runtime,
        console,
        err_console,
        load_settings,
        run_command,
    )
    from antifragile.stack.devstack import ChildExited, DevStack, redis_url_from_env
    from workers.main import run_worker  # wired here: the stack never imports workers

    settings = load_settings()
    _configure_logging(settings)
    # The worker's Temporal core keeps its retry WARN lines off the terminal, as a CLI
    # command's does: a Temporal that went away is reported once, by the stack.
    Runtime.set_default(cli_runtime(), error_if_already_set=False)
    stack = DevStack(port, ui_port, redis_port, data_dir, redis_url_from_env())

    def ready(s: DevStack) -> None:
        # soft_wrap: a command line of the banner is never cut in two.
        title, _, rest = s.banner().partition("\n")
        console.print(f"[bold green]{title}[/bold green]")
        console.print(rest, markup=False, highlight=False, soft_wrap=True)

    try:
        run_command(
            lambda _: stack.run(run_worker, on_ready=ready),
            settings,
            temporal=False,
            passthrough=(ChildExited,),
        )
    except ChildExited as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    err_console.print("dev stack stopped")


@app.command("demo")
def demo(
    port: Annotated[int, typer.Option(help="Temporal gRPC port (started if free).")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal UI port.")] = 8233,
    redis_port: Annotated[int, typer.Option(help="Redis port (started if free).")] = 6379,
    data_dir: Annotated[Path, typer.Option(help="Where a stack started here persists.")] = Path(
        ".antifragile"
    ),
    rate: Annotated[int, typer.Option(help="Messages per second offered to the bus.")] = 5000,
    chaos_duration: Annotated[
        str, typer.Option(help="How long the fault stays injected, e.g. 8s.")
    ] = "8s",
    step_timeout: Annotated[str, typer.Option(help="Longest wait for one step.")] = "60s",
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep a stack started here running until Ctrl-C.")
    ] = False,
) -> int:
    """Agent bus under chaos, recovered through Temporal: every step checked (exit 0 = all)."""
    import asyncio
    import signal as signals

    from antifragile.cli._common import (
        console,
        err_console,
        load_settings,
        parse_duration_s,
        run_command,
    )
    from antifragile.demo.runner import run_demo
    from antifragile.demo.stack import DemoOptions

    # wired here: the demo never imports workers (its worker harvests traffic windows)
    from workers.main import harvesting_worker as build_worker

    settings = load_settings()
    env = os.environ
    options = DemoOptions(
        port=port,
        ui_port=ui_port,
        redis_port=redis_port,
        data_dir=data_dir,
        rate=rate,
        chaos_duration_s=parse_duration_s(chaos_duration, "--chaos-duration"),
        step_timeout_s=parse_duration_s(step_timeout, "--step-timeout"),
        keep=keep,
        # An explicitly configured Temporal or Redis is used as it is, never started.
        temporal_address=env.get("ANTIFRAGILE_TEMPORAL_ADDRESS") or None,
        redis_url=env.get("ANTIFRAGILE_REDIS_URL") or None,
        ui_url=env.get("ANTIFRAGILE_UI_URL") or None,
    )
    options.validate()

    async def _go(settings: Settings) -> bool:
        stop, keeping = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def interrupt() -> None:
            # Ctrl-C / SIGTERM end the demo at once (run_demo's cleanup stops the stack);
            # after a --keep demo they end the wait, the normal way out.
            stop.set()
            if main_task is not None and not keeping.is_set():
                main_task.cancel()

        for sig in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        console.print(
            "[bold]antifragile demo[/bold]: an agent bus under chaos, recovered through Temporal\n"
        )

        def out(line: str) -> None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        try:
            result = await run_demo(
                options, build_worker, settings, out=out, stop=stop, keeping=keeping
            )
        except asyncio.CancelledError:
            err_console.print("demo interrupted; everything it started is stopped")
            return False
        return result.ok

    return 0 if run_command(_go, settings, temporal=False) else 1


def _configure_logging(settings: Settings) -> None:
    from antifragile.telemetry import configure_logging

    configure_logging(settings=settings)


def _exit(code: int) -> None:
    tracing = sys.modules.get("antifragile.telemetry")
    if tracing is not None:  # never imported: no tracing was set up, nothing to flush
        tracing.shutdown_tracing()  # os._exit skips atexit: flush spans first
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit skips interpreter finalization, where the Temporal core runtime can crash
    # at exit (sdk-python #300); everything worth flushing is flushed above.
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``antifragile`` console script."""
    code = 0
    try:
        result = app(args=argv, prog_name="antifragile", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except TyperException as exc:
        # Usage errors (bad flag, bad choice): one line, not a box, exit 2.
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if str(message).strip():
            from antifragile.cli._common import err_console

            # A choice checked by typer's pydantic adapter reads "Value error, 'x' is not…".
            line = " ".join(str(message).replace("Value error, ", "").split())
            err_console.print(f"error: {line}", markup=False)
        code = int(getattr(exc, "exit_code", 2))
    except typer.Abort:
        from antifragile.cli._common import err_console

        err_console.print("aborted")
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        # Imported on the way out: a command that does not use pydantic never imports it.
        from antifragile.cli._common import failure_code

        code = failure_code(exc)
    _exit(code)


__all__ = ["app", "main", "preload"]
