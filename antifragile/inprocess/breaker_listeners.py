"""Who hears of a circuit breaker's changes, and how they are told without harm.

Change hooks (sync, given the breaker) run first, after every transition and every
reconfiguration: objects that mirror the breaker (a guard's fast-path flag, the health
aggregator's sums) are current before anyone else hears of it. State listeners (sync
functions or coroutine functions, given the :class:`StateChange`) run next, after
transitions only. Neither can break the call path: a raising hook or sync listener is
logged, an async listener becomes a task kept referenced until it finishes (its error
logged too).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from antifragile.inprocess.breaker_state import StateChange, StateListener

log = logging.getLogger("antifragile.inprocess.breaker")  # the breaker's own log

S = TypeVar("S")


class Listeners(Generic[S]):
    """The hooks and state listeners of one breaker (named ``name`` in logs).

    Args:
        name: The breaker's name.
    """

    __slots__ = ("_hooks", "_listeners", "_name", "_tasks")

    def __init__(self, name: str) -> None:
        self._name = name
        self._hooks: list[Callable[[S], None]] = []
        self._listeners: list[StateListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def add_listener(self, listener: StateListener) -> None:
        """Tell ``listener`` of every transition from now on."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop telling ``listener`` (no-op if absent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_hook(self, hook: Callable[[S], None]) -> None:
        """Call ``hook(subject)`` at every :meth:`run_hooks` from now on."""
        self._hooks.append(hook)

    def remove_hook(self, hook: Callable[[S], None]) -> None:
        """Stop calling ``hook`` (no-op if absent)."""
        if hook in self._hooks:
            self._hooks.remove(hook)

    def run_hooks(self, subject: S) -> None:
        """Call every hook with ``subject``; a raising hook is logged."""
        # A copy: a hook may detach itself (Guard.close) while they run.
        for hook in tuple(self._hooks):
            try:
                hook(subject)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                log.exception("circuit %r: change hook failed", self._name)

    def notify(self, change: StateChange) -> None:
        """Tell every state listener of ``change``."""
        # A copy: a listener may remove itself (or add one) while they run; iterating
        # the live list would skip the next listener.
        for listener in tuple(self._listeners):
            self._notify(listener, change)

    def _notify(self, listener: StateListener, change: StateChange) -> None:
        try:
            result = listener(change)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # Cancellation too: a listener's error must never replace the call's own
            # outcome nor keep the next listeners from hearing the change.
            log.exception("circuit %r: state listener %r raised", self._name, listener)
            return
        if inspect.isawaitable(result):
            try:
                task = asyncio.ensure_future(result)
            except RuntimeError:
                # No running loop: an async listener cannot run; close it cleanly.
                if inspect.iscoroutine(result):
                    result.close()
                log.warning("circuit %r: async listener skipped (no running loop)", self._name)
                return
            self._tasks.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "circuit %r: async state listener raised", self._name, exc_info=task.exception()
            )
