"""Helpers every CLI command shares: settings, async running, output, errors, durations.

A command that loads settings, maybe connects to Temporal and runs a coroutine uses
:func:`run_command` (errors: one line and an exit code, never a traceback); a synchronous
command wraps its body in :func:`command_errors`. The process itself ends in
``antifragile.cli.main``: flushed, then ``os._exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeGuard, TypeVar, overload

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from antifragile.errors import AntifragileError, ConfigError, describe_validation_error
from antifragile.settings import SECRET_SETTINGS, Settings

if TYPE_CHECKING:  # imported where used: a command that never reaches Temporal skips them
    from temporalio.client import Client
    from temporalio.runtime import Runtime
    from temporalio.service import RPCError

T = TypeVar("T")

# Piped output is not cut to 80 columns: tables stay readable in logs and CI.
console = Console(width=None if sys.stdout.isatty() else 160)
# soft_wrap: an error is one line even on a narrow terminal.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandFailed(AntifragileError):
    """The operation ran and failed: exit code 1."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Stop the command with one line on stderr; 2 = bad input, 1 = the operation failed."""
    raise (ConfigError(message) if code == 2 else CommandFailed(message))


def load_settings() -> Settings:
    """Settings from ``ANTIFRAGILE_*``; a bad variable is one clear line, exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        # A Redis URL and an API key carry secrets: their errors never show the value.
        fail(f"bad ANTIFRAGILE_* setting: {describe_validation_error(exc, SECRET_SETTINGS)}")


@functools.cache
def cli_runtime() -> Runtime:
    """The Temporal core runtime of a client-only command: its own logs kept off the terminal.

    By default the core writes a WARN line to stdout for every retried call, so a command
    waiting on a server that went away printed dozens of them (on stdout, even with
    ``--json``) before its one-line error. Here only core errors are kept, and they go to
    Python logging (stderr) instead.

    It is also made the process's default runtime, so a connection made by library code the
    command calls (``antifragile.chaos.client`` stopping schedules) is just as quiet.
    """
    import logging

    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    runtime = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            )
        )
    )
    Runtime.set_default(runtime, error_if_already_set=False)
    return runtime


def unreachable(settings: Settings, exc: RPCError, after: str = "") -> NoReturn:
    """Stop a command whose Temporal went away mid-way, as a fresh command would (exit 2).

    Args:
        settings: The address and namespace tried.
        exc: The error of the call that could not reach the server.
        after: What happened to the operation, appended to the line.
    """
    text = exc.message or str(exc)
    why = (
        "connection refused"
        if "onnection refused" in text or "ConnectionRefused" in text
        else (text.splitlines() or ["unavailable"])[0][:160]
    )
    fail(
        f"cannot reach Temporal at {settings.temporal_address} "
        f"(namespace {settings.temporal_namespace}): {why}{after}"
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion; Ctrl-C always ends it as KeyboardInterrupt.

    asyncio turns Ctrl-C into a cancellation of the command, and raises KeyboardInterrupt
    only if the command then ends cancelled. Some SDK calls end a cancellation with their
    own error instead (an update in flight raises ``WorkflowUpdateRPCTimeoutOrCancelledError``),
    which escaped as a traceback with exit 1: here any ending after Ctrl-C is the interrupt.
    """
    interrupted = False

    async def _main() -> T:
        task = asyncio.current_task()

        loop = asyncio.get_running_loop()

        def _on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            if task is not None:
                task.cancel()
            # A second Ctrl-C interrupts at once, as without this handler.
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, _on_sigint)
        return await coro

    try:
        return asyncio.run(_main())
    except BaseException:
        if interrupted:
            raise KeyboardInterrupt from None
        raise


def failure_code(exc: Exception) -> int:
    """Print a command's failure as one line on stderr and return its exit code.

    Known errors: :class:`CommandFailed` exits 1; any other
    :class:`~antifragile.errors.AntifragileError` (bad input, a server that cannot be
    reached: ``TemporalUnavailableError``, :class:`ServerUnreachable`) and a pydantic
    ``ValidationError`` exit 2; ``temporalio.service.RPCError`` (Temporal refused the call)
    exits 1; ``antifragile.fleet_health.RedisUnreachable`` exits 2.

    Error types of temporalio and fleet_health are looked up in ``sys.modules``: an error of
    a module never imported cannot be raised, and a command that does not use it never
    imports it here.

    Args:
        exc: What the command raised.

    Returns:
        The exit code: 1 or 2.

    Raises:
        Exception: ``exc`` itself when it is none of the known errors (a bug: a traceback).
    """
    if isinstance(exc, CommandFailed):
        err_console.print(f"error: {exc}")
        return 1
    if isinstance(exc, AntifragileError):
        err_console.print(f"error: {exc}")
        return 2
    if isinstance(exc, ValidationError):
        err_console.print(f"error: {describe_validation_error(exc)}")
        return 2
    service = sys.modules.get("temporalio.service")  # not imported: exc is no RPCError
    if service is not None and isinstance(exc, service.RPCError):
        err_console.print(f"error: Temporal refused the request: {exc.message}")
        return 1
    fleet = sys.modules.get("antifragile.fleet_health")
    if fleet is not None and isinstance(exc, fleet.RedisUnreachable):
        # Whatever the driver said, one line; a URL is not rich markup.
        err_console.print(f"error: {' '.join(str(exc).split())}", markup=False)
        return 2
    raise exc


@contextlib.contextmanager
def command_errors(passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn the known errors of the block into one line on stderr and ``typer.Exit(code)``.

    ``passthrough`` errors propagate unchanged, for a command that reports them itself with
    what it knows (``recovery start`` says what became of a request when Temporal goes away).

    The synchronous half of :func:`run_command`, for a command with no coroutine to run
    (``antifragile health``). Which errors and which codes: :func:`failure_code`. Others
    propagate unchanged; so does ``KeyboardInterrupt`` (``antifragile.cli.main`` exits 130).

    Raises:
        typer.Exit: With the code of a known error, its line already printed.
    """
    try:
        yield
    except typer.Exit:
        raise
    except passthrough:
        raise
    except Exception as exc:
        raise typer.Exit(failure_code(exc)) from None


@overload
def run_command(
    work: Callable[[Client, Settings], Coroutine[Any, Any, T]],
    settings: Settings | None = None,
    *,
    temporal: Literal[True] = True,
    quiet_core: bool = True,
    passthrough: tuple[type[BaseException], ...] = (),
) -> T: ...


@overload
def run_command(
    work: Callable[[Settings], Coroutine[Any, Any, T]],
    settings: Settings | None = None,
    *,
    temporal: Literal[False],
    quiet_core: bool = True,
    passthrough: tuple[type[BaseException], ...] = (),
) -> T: ...


def run_command(
    work: Callable[..., Coroutine[Any, Any, T]],
    settings: Settings | None = None,
    *,
    temporal: bool = True,
    quiet_core: bool = True,
    passthrough: tuple[type[BaseException], ...] = (),
) -> T:
    """The body every command that runs a coroutine shares: settings, Temporal, errors.

    1. ``settings`` or :func:`load_settings` (a bad ``ANTIFRAGILE_*``: one line, exit 2).
    2. With ``temporal`` (default), connect to Temporal (unreachable: one line naming the
       address and namespace, exit 2) and run ``work(client, settings)``; without,
       ``work(settings)``.
    3. It runs under :func:`run`: Ctrl-C ends it as ``KeyboardInterrupt`` (exit 130).
    4. Known errors (:func:`failure_code`) become one line on stderr and
       ``typer.Exit(code)``, never a traceback; ``antifragile.cli.main`` then flushes
       stdout, stderr and spans and leaves with ``os._exit`` (no interpreter finalization,
       where the Temporal core can crash: sdk-python #300).

    Errors a command handles itself (``unreachable(...)`` after a partial operation,
    ``fail(...)`` for a refused request) are caught inside ``work``: nothing that leaves
    ``work`` can be caught around this call.

    Example::

        @app.command("status")
        def status(experiment_id: str) -> None:
            async def _go(client: Client, settings: Settings) -> None:
                handle = client.get_workflow_handle(experiment_id)
                console.print(await handle.query("status"))

            run_command(_go)

    Args:
        work: The command's coroutine function: ``(client, settings)``, or ``(settings)``
            with ``temporal=False``.
        settings: Already loaded settings (a command that needed them before, e.g. to
            configure logging); None loads them.
        temporal: Connect to Temporal first and pass the client. Default True.
        quiet_core: Use :func:`cli_runtime` (core WARN lines kept off the terminal) for
            every Temporal connection the command makes, its own or a library's. Default
            True; False (``antifragile worker``, a server) keeps the SDK's default runtime.
        passthrough: Error types that propagate unchanged (see :func:`command_errors`).
            Default none.

    Returns:
        What ``work`` returned.

    Raises:
        typer.Exit: With the code of a known error, its line already printed.
    """
    with command_errors(passthrough):
        loaded = settings if settings is not None else load_settings()

        if quiet_core and (temporal or "temporalio" in sys.modules):
            cli_runtime()  # before any connection: the default runtime of the process

        async def _work() -> T:
            if not temporal:
                return await work(loaded)
            from antifragile.temporal_client import connect

            client = await connect(loaded, runtime=cli_runtime() if quiet_core else None)
            return await work(client, loaded)

        try:
            return run(_work())
        except Exception as exc:
            # Temporal went away mid-command (a --wait, a follow): the line and exit code
            # (2) a fresh command gets, not "Temporal refused the request" (exit 1).
            if _unavailable(exc) and not isinstance(exc, passthrough):
                unreachable(loaded, exc)
            raise


def _unavailable(exc: BaseException) -> TypeGuard[RPCError]:
    """True for a Temporal call that failed because the server could not be reached."""
    service = sys.modules.get("temporalio.service")  # not imported: exc is no RPCError
    return (
        service is not None
        and isinstance(exc, service.RPCError)
        and exc.status is service.RPCStatusCode.UNAVAILABLE
    )


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (models and lists of models included)."""
    sys.stdout.write(json.dumps(_plain(data), indent=2, default=str) + "\n")


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [_plain(d) for d in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return data


def first_value(value: Any) -> Any:
    """A search attribute's value: visibility returns keyword attributes as lists."""
    return value[0] if isinstance(value, list) and value else value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str, flag: str) -> float:
    """Parse ``500ms``, ``1s``, ``2m`` or ``1h`` into seconds.

    A bare number is refused (``--initial-delay 500`` was 500 s to some and 500 ms to
    others): the error names the flag and the value and shows both readings.

    Raises:
        ConfigError: (exit 2) not a duration, or no unit.
    """
    match = _DURATION.match(text)
    if not match:
        fail(f"{flag}: expected a duration like 500ms, 30s, 5m or 1h, got {text!r}")
    number, unit = match.group(1), match.group(2)
    if unit is None:
        fail(f"{flag}: {text.strip()!r} has no unit; write {number}ms or {number}s")
    return float(number) * _UNIT_S[unit]


def parse_model(model: type[T], data: dict[str, Any], what: str) -> T:
    """Validate CLI input into a model; a bad field is one line naming it, exit 2."""
    try:
        return model.model_validate(data)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        # A check across fields (max_delay_ms >= initial_delay_ms) names its values in its
        # message; its input is a whole dict, which would only show cut off: not shown.
        whole = tuple(
            tuple(str(p) for p in err["loc"])
            for err in exc.errors()
            if isinstance(err.get("input"), dict | list)
        )
        fail(f"invalid {what}: {describe_validation_error(exc, whole)}")


async def approval_signal(
    handle: Any, *, approver: str, note: str, decision: str, key: str | None = None
) -> Any:
    """Build the ``approve``/``reject`` payload for ``handle``'s workflow, signed when a key is set.

    The key comes from ``ANTIFRAGILE_APPROVER_KEY`` unless given. Without one the decision is
    unsigned (the policy decides whether that is enough). The signature binds the workflow id
    and its first run id, read from the server (``antifragile.hashing``).

    Args:
        handle: A ``temporalio.client.WorkflowHandle`` of the workflow to decide.
        approver: Who decides (``--by``).
        note: Free text kept with the decision.
        decision: ``"approved"`` or ``"rejected"``.
        key: The approver's key; None reads the environment.

    Raises:
        ConfigError: (exit 2) the payload is invalid, or the key is shorter than 16 bytes.
    """
    import os
    from datetime import UTC, datetime

    from antifragile.hashing import (
        APPROVER_KEY_ENV,
        MIN_KEY_BYTES,
        key_from_env,
        sign_decision,
    )
    from antifragile.models.common import ApprovalSignal

    key = os.environ.get(APPROVER_KEY_ENV, "") if key is None else key
    data: dict[str, Any] = {"approver": approver, "note": note}
    key_bytes = key_from_env(key)
    if key_bytes:
        if len(key_bytes) < MIN_KEY_BYTES:
            fail(f"{APPROVER_KEY_ENV}: a key must be at least {MIN_KEY_BYTES} bytes")
        if any(ord(c) < 32 or ord(c) == 127 for c in approver):
            fail("--by: an approver's name must be one line of printable characters")
        description = await handle.describe()
        first_run_id = description.raw_description.workflow_execution_info.first_run_id
        signed_at = datetime.now(UTC).replace(microsecond=0)
        data["signature"] = sign_decision(
            key_bytes,
            workflow_id=handle.id,
            first_run_id=first_run_id or description.run_id,
            decision=decision,
            approver=approver.strip(),
            signed_at=signed_at,
        )
        data["signed_at"] = signed_at
    return parse_model(ApprovalSignal, data, "decision")


# --- servers that do not answer ---------------------------------------------------------


class ServerUnreachable(AntifragileError):
    """A server the command needs did not answer: one line naming its address, exit 2."""


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (a Redis URL may carry one)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}"))
    except ValueError:
        return "<unparsable URL>"


def connection_reason(exc: BaseException) -> str:
    """A short reason for a failed connection, e.g. ``connection refused`` or ``timed out``."""
    text = str(exc)
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__ or link.__context__
    refused = ("onnection refused", "Error 111 ", "Connect call failed")
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or any(r in text for r in refused):
        return "connection refused"
    if isinstance(exc, TimeoutError) or "imed out" in text or "Timeout" in type(exc).__name__:
        return "timed out"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:160]


def redis_unreachable(url: str, exc: BaseException) -> ServerUnreachable:
    """The one-line error for a Redis at ``url`` that did not answer."""
    return ServerUnreachable(f"cannot reach Redis at {display_url(url)}: {connection_reason(exc)}")


def is_redis_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "no usable Redis there" (any Redis or socket error).

    That is: refused, timed out, gone, a server that does not speak Redis, refused credentials.
    """
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError | OSError)


async def reaching_redis(url: str, operation: Coroutine[Any, Any, T], timeout_s: float = 5.0) -> T:
    """Await ``operation`` (Redis calls on ``url``) within ``timeout_s``.

    Raises:
        ServerUnreachable: (exit 2) Redis refused the connection, timed out or went away.
    """
    try:
        return await asyncio.wait_for(operation, timeout_s)
    except Exception as exc:
        if is_redis_connection_error(exc):
            raise redis_unreachable(url, exc) from None
        raise
