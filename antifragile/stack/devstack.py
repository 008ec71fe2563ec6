"""The embedded stack behind ``antifragile dev``: Temporal dev server + UI, Redis, a worker.

Everything it starts it also stops, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from antifragile.errors import AntifragileError, ConfigError
from antifragile.models.common import redact_url
from antifragile.settings import Settings
from antifragile.stack.processes import (
    ServerProcess,
    port_open,
    start_redis,
    start_temporal_dev_server,
)

log = logging.getLogger("antifragile.dev")

WATCH_INTERVAL_S = 0.2
"""How often :meth:`DevStack.run` checks that the servers it started still run."""

_DISPLAY = {"redis": "Redis", "temporal": "Temporal"}


class ChildExited(AntifragileError):
    """A server the dev stack started exited on its own: the stack stopped everything (exit 1)."""


def exit_description(server: ServerProcess) -> str:
    """``Redis exited (code 1)`` or ``Temporal exited (code -9, SIGKILL)`` for a dead child."""
    code = server.proc.returncode
    name = _DISPLAY.get(server.name, server.name)
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"{name} exited (code {code}, {signal.Signals(-code).name})"
    return f"{name} exited (code {code})"


class WorkerRunner(Protocol):
    """What :meth:`DevStack.run` calls to run the stack's worker.

    The CLI passes ``workers.main.run_worker``: the stack (and everything under the CLI)
    never imports ``workers``, so the worker is wired in one place, the entry point.
    """

    def __call__(
        self,
        settings: Settings,
        *,
        stop: asyncio.Event,
        install_signal_handlers: bool,
        on_ready: Callable[[], None] | None,
    ) -> Coroutine[Any, Any, None]:
        """Connect to ``settings``' Temporal and poll its task queue until ``stop`` is set.

        Args:
            settings: Where the worker connects and which task queue it polls.
            stop: Set when the worker must drain and return.
            install_signal_handlers: False here: the stack handles SIGINT/SIGTERM itself.
            on_ready: Called once the worker polls its task queue.
        """
        ...


@dataclass
class DevStack:
    """Ports and data directory of one embedded stack (two can run side by side)."""

    port: int = 7233
    ui_port: int = 8233
    redis_port: int = 6379
    data_dir: Path = Path(".antifragile")
    redis_url: str | None = None
    """An existing Redis to use instead of starting one (from ``ANTIFRAGILE_REDIS_URL``)."""
    started: list[ServerProcess] = field(default_factory=list)

    @property
    def temporal_address(self) -> str:
        """GRPC address of this stack's Temporal."""
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        """URL of this stack's Temporal UI."""
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def effective_redis_url(self) -> str:
        """The Redis the stack's processes use."""
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    def banner(self) -> str:
        """What ``antifragile dev`` prints once the stack is up: addresses, then commands to try.

        A stack off the default ports starts its "Try" lines with one ``export`` line
        pointing a terminal at it (Temporal, Redis and the UI, so the links commands print
        lead to this stack's UI). A Redis URL the user set is never echoed: it is in their
        environment already, and may carry a password.
        """
        default = (
            self.port == 7233
            and self.ui_port == 8233
            and self.redis_url is None
            and self.redis_port == 6379
        )
        export = ""
        if not default:
            redis = "" if self.redis_url else f" ANTIFRAGILE_REDIS_URL={self.effective_redis_url}"
            export = (
                f"  export ANTIFRAGILE_TEMPORAL_ADDRESS={self.temporal_address}{redis} "
                f"ANTIFRAGILE_UI_URL={self.ui_url}\n"
            )
        probe = f"tcp://127.0.0.1:{self.redis_port if self.redis_url is None else 6379}"
        return (
            f"antifragile dev stack is up\n"
            f"  Temporal UI   {self.ui_url}\n"
            f"  Temporal gRPC {self.temporal_address}\n"
            f"  Redis         {redact_url(self.effective_redis_url)}\n"
            f"  Data          {self.data_dir.resolve()}\n"
            f"  Worker        task queue {self.settings().task_queue}\n\n"
            f"Try, in another terminal:\n{export}"
            f"  .venv/bin/antifragile recovery start payments --probe {probe} --wait\n"
            f"  .venv/bin/antifragile recovery queue\n"
            f"  .venv/bin/python -m antifragile.demo.guarded_service --targets demo-db "
            f"--probe demo-db={probe}\n"
            f"  .venv/bin/antifragile chaos start --type latency --target demo-db "
            f"--duration 30s --wait\n\n"
            f"Ctrl-C stops everything started here."
        )

    def settings(self, base: Settings | None = None) -> Settings:
        """Settings pointing at this stack."""
        return (base or Settings()).model_copy(
            update={
                "temporal_address": self.temporal_address,
                "redis_url": self.effective_redis_url,
                "ui_url": self.ui_url,
            }
        )

    def start_servers(self) -> None:
        """Start Temporal (file-persisted, search attributes registered) and Redis."""
        for port, what, flag in (
            (self.port, "Temporal gRPC", "--port"),
            (self.ui_port, "Temporal UI", "--ui-port"),
        ):
            if port_open("127.0.0.1", port):
                raise ConfigError(
                    f"port {port} ({what}) is already in use: is another stack running? "
                    f"Stop it or pass {flag}"
                )
        if self.redis_url is None and port_open("127.0.0.1", self.redis_port):
            raise ConfigError(
                f"port {self.redis_port} (Redis) is already in use: pass --redis-port, or set "
                f"ANTIFRAGILE_REDIS_URL to use that Redis"
            )
        try:
            self._start_temporal()
            if self.redis_url is None:
                self._start_redis()
        except Exception:
            self.stop_servers()
            raise

    def start_missing(self, *, temporal: bool = True) -> list[str]:
        """Start Temporal and Redis where nothing listens yet; reuse what runs.

        Args:
            temporal: False when Temporal is configured elsewhere (not started, not noted).

        Returns:
            One phrase per server: ``Temporal 127.0.0.1:7233 (already running)`` …
        """
        notes = []
        try:
            if not temporal:
                pass
            elif port_open("127.0.0.1", self.port):
                notes.append(f"Temporal {self.temporal_address} (already running)")
            else:
                self._start_temporal()
                notes.append(f"Temporal {self.temporal_address} (started, UI {self.ui_url})")
            if self.redis_url is not None:
                notes.append(f"Redis {redact_url(self.redis_url)} (configured)")
            elif port_open("127.0.0.1", self.redis_port):
                notes.append(f"Redis {self.effective_redis_url} (already running)")
            else:
                self._start_redis()
                notes.append(f"Redis {self.effective_redis_url} (started)")
        except Exception:
            self.stop_servers()
            raise
        return notes

    def _start_temporal(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.started.append(
            start_temporal_dev_server(
                self.port,
                ui_port=self.ui_port,
                db_file=self.data_dir / "temporal.db",
                log_path=self.data_dir / "temporal.log",
            )
        )

    def _start_redis(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.started.append(
            start_redis(
                self.redis_port,
                data_dir=self.data_dir / "redis",
                log_path=self.data_dir / "redis.log",
            )
        )

    def stop_servers(self) -> None:
        """Stop what this stack started, newest first; idempotent."""
        while self.started:
            self.started.pop().stop()

    def dead_child(self) -> ServerProcess | None:
        """The first server this stack started that is no longer running, if any."""
        return next((server for server in self.started if not server.alive()), None)

    async def _watch(self) -> ServerProcess:
        while True:
            dead = self.dead_child()
            if dead is not None:
                return dead
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def run(
        self,
        run_worker: WorkerRunner,
        on_ready: Callable[[DevStack], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Start everything, run the worker until stopped, then stop everything.

        A server that exits on its own (Redis or Temporal killed, crashed) stops the whole
        stack at once: the worker drains, the other server stops, every child is reaped,
        then :class:`ChildExited` says which one died. The stack does not restart it: a
        server that died once (a full disk, a corrupt data file) would most likely die
        again, and a silent restart hides that from the person watching the terminal.

        Args:
            run_worker: Runs the stack's worker (the CLI passes ``workers.main.run_worker``).
            on_ready: Called with this stack once the worker polls its task queue.
            stop: Set to stop everything; SIGINT and SIGTERM set it too. Default: a new event.

        Raises:
            ConfigError: A port the stack needs is already in use.
            ChildExited: A server the stack started exited by itself (e.g. ``Redis exited
                (code -9, SIGKILL)``); everything else was stopped first.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(self.start_servers)
        dead: ServerProcess | None = None
        try:
            worker = asyncio.create_task(
                run_worker(
                    self.settings(),
                    stop=stop,
                    install_signal_handlers=False,
                    on_ready=(lambda: on_ready(self)) if on_ready else None,
                )
            )
            stopper = asyncio.create_task(stop.wait())
            watcher = asyncio.create_task(self._watch())
            await asyncio.wait({worker, stopper, watcher}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            if watcher.done():
                dead = watcher.result()
            watcher.cancel()
            try:
                await worker  # re-raises a worker failure after it has shut down
            except asyncio.CancelledError:
                # The SDK may end a worker whose server vanished with a cancelled shutdown
                # wait: that is the death below, unless this task itself is being cancelled.
                current = asyncio.current_task()
                dead = dead or self.dead_child()
                if dead is None or (current is not None and current.cancelling()):
                    raise
            except Exception:
                dead = dead or self.dead_child()
                if dead is None:
                    raise
                # The worker failed because a server died: that death is the error.
            stopper.cancel()
        finally:
            await asyncio.to_thread(self.stop_servers)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if dead is not None:
            raise ChildExited(f"{exit_description(dead)}: stopped the dev stack")


def redis_url_from_env() -> str | None:
    """``ANTIFRAGILE_REDIS_URL`` when the user set it explicitly, else None."""
    return os.environ.get("ANTIFRAGILE_REDIS_URL") or None
