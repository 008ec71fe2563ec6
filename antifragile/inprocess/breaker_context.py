"""``async with breaker``: which generation each entry belongs to, without a token.

``async with`` has nowhere to keep a token per entry. While the breaker is CLOSED
without slow-call detection (*plain*), entries are only counted (``open``); a
transition makes the open ones stale (``stale``), and until they have all left,
entries keep ``(token, started)`` in per-task stacks (``scopes``) instead - so every
exit knows its generation exactly. The breaker keeps the counted fast path inline
(``fast``, ``open``) and hands everything else to :class:`Entries`, which drives the
breaker only through its call protocol (:class:`Tracked`, declared here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from antifragile.inprocess.breaker_config import CircuitBreakerConfig


class Tracked(Protocol):
    """What :class:`Entries` needs of a breaker: its call protocol and clock."""

    @property
    def generation(self) -> int:
        """The current round (the token of a call admitted while CLOSED)."""
        ...

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (``slow_call_duration_s`` is read)."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """Monotonic seconds."""
        ...

    def acquire_permission(self) -> int:
        """Admit a call (its token) or raise ``CircuitOpenError``."""
        ...

    def on_success(self, token: int, duration_s: float = 0.0) -> None:
        """Record an admitted call that returned."""
        ...

    def on_error(self, token: int, duration_s: float, exc: BaseException) -> None:
        """Record an admitted call that raised ``exc``."""
        ...


class Entries:
    """Open ``async with`` entries of one breaker.

    Attributes:
        fast: True when the next entry may just be counted (plain, nothing stale or
            tracked open).
        open: Counted entries of the current generation still open.
        stale: Counted entries of older generations still open.
        scopes: Tracked entries, ``(token, started)`` per task (``started`` None: not
            timed).
    """

    __slots__ = ("_plain", "fast", "open", "scopes", "stale")

    def __init__(self) -> None:
        self._plain = False
        self.fast = False
        self.open = 0
        self.stale = 0
        self.scopes: dict[asyncio.Task[Any] | None, list[tuple[int, float | None]]] = {}

    def set_plain(self, plain: bool) -> None:
        """The breaker is (or is no longer) CLOSED without slow-call detection."""
        self._plain = plain
        self.fast = plain and not self.stale and not self.scopes

    def new_round(self) -> None:
        """A transition: the counted entries still open become stale."""
        self.stale += self.open
        self.open = 0

    def enter_tracked(self, breaker: Tracked) -> None:
        """Admit an entry that keeps its token (raises ``CircuitOpenError``)."""
        token = breaker.acquire_permission()
        timed = breaker.config.slow_call_duration_s is not None
        started = breaker.clock() if timed else None
        task = asyncio.current_task()
        stack = self.scopes.get(task)
        if stack is None:
            self.scopes[task] = [(token, started)]
        else:
            stack.append((token, started))
        self.fast = False  # counted entries never nest inside tracked ones

    def exit_slow(self, breaker: Tracked, exc: BaseException | None) -> None:
        """Record the exit of an entry when some are stale or tracked."""
        token, started = self._leave(breaker.generation)
        self.set_plain(self._plain)
        duration = breaker.clock() - started if started is not None else 0.0
        if exc is None:
            breaker.on_success(token, duration)
        else:
            breaker.on_error(token, duration, exc)

    def _leave(self, generation: int) -> tuple[int, float | None]:
        # -1 is older than any generation: a stale entry is recorded in the window only.
        scopes = self.scopes
        if not scopes:
            self.stale -= 1
            return -1, None
        task = asyncio.current_task()
        stack = scopes.get(task)
        if stack is None:
            if self.stale:  # a counted entry of an older generation
                self.stale -= 1
                return -1, None
            if self.open:  # a counted entry of the current generation
                self.open -= 1
                return generation, None
            # No counted entry is open: a tracked entry of another task is leaving from
            # this one (an AsyncExitStack closed elsewhere, an async fixture torn down in
            # another task). Take the entry of a finished task first, else the oldest.
            task = next((t for t in scopes if t is not None and t.done()), next(iter(scopes)))
            stack = scopes[task]
        entry = stack.pop()
        if not stack:
            del scopes[task]
        return entry
