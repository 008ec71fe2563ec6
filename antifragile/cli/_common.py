"""Helpers every CLI command shares: settings, async running, output, errors, durations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console

from antifragile.errors import AntifragileError, ConfigError, describe_validation_error
from antifragile.settings import Settings

if TYPE_CHECKING:  # imported where used: a command that never reaches Temporal skips them
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
        secret = (("redis_url",), ("temporal_api_key",))
        fail(f"bad ANTIFRAGILE_* setting: {describe_validation_error(exc, secret)}")


@functools.cache
def cli_runtime() -> Runtime:
    """The Temporal core runtime of a client-only command: its own logs kept off the terminal.

    By default the core writes a WARN line to stdout for every retried call, so a command
    waiting on a server that went away printed dozens of them (on stdout, even with
    ``--json``) before its one-line error. Here only core errors are kept, and they go to
    Python logging (stderr) instead.
    """
    import logging

    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            )
        )
    )


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
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(text: str, flag: str) -> float:
    """Parse ``500ms``, ``1s``, ``2m``, ``1h`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        fail(f"{flag}: expected a duration like 500ms, 30s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_model(model: type[T], data: dict[str, Any], what: str) -> T:
    """Validate CLI input into a model; a bad field is one line naming it, exit 2."""
    try:
        return model.model_validate(data)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        fail(f"invalid {what}: {describe_validation_error(exc)}")


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
    """A short reason for a failed connection: ``connection refused``, ``timed out`` …"""
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
    """True for errors that mean "no usable Redis there": refused, timed out, gone, a
    server that does not speak Redis, refused credentials (any Redis or socket error)."""
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
