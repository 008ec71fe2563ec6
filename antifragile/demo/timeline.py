"""The demo's timeline: its steps, the order they must come in, and the verdict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

STEPS: list[tuple[str, str]] = [
    ("stack", "embedded stack ready"),
    ("load", "agent bus under steady load, persisting to Redis through its guard"),
    ("chaos_started", "chaos experiment started"),
    ("fault_seen", "fault active at the call site"),
    ("breaker_open", "breaker opened"),
    ("health_dropped", "health score dropped"),
    ("recovery_requested", "bridge asked the orchestrator for a recovery"),
    ("recovery_admitted", "orchestrator admitted the recovery"),
    ("probe_failed", "recovery probe failed while the fault was in place"),
    ("fault_removed", "experiment removed its fault"),
    ("breaker_closed", "breaker closed"),
    ("recovery_succeeded", "recovery succeeded"),
    ("chaos_completed", "experiment completed with its report"),
    ("manual_waiting", "manual recovery waits for approval"),
    ("outsider_refused", "approval from outside the policy refused"),
    ("manual_approved", "approved through the CLI"),
    ("manual_succeeded", "manual recovery succeeded"),
    ("nothing_lost", "every message delivered and persisted exactly once"),
    ("outages_learned", "the ledger learned from the archive's baseline and three real outages"),
    ("advice_applied", "advice applied through the approval path, taken live"),
    (
        "advice_paid_off",
        "the same outage again: fewer failed calls, closed sooner after the return",
    ),
]
"""Every step of the story, in the order it is told."""

ORDER: list[tuple[str, str]] = [
    ("chaos_started", "fault_seen"),
    ("fault_seen", "breaker_open"),
    ("breaker_open", "recovery_requested"),
    ("recovery_requested", "recovery_admitted"),
    ("fault_removed", "breaker_closed"),
    ("fault_removed", "recovery_succeeded"),
    ("manual_waiting", "manual_approved"),
    ("outsider_refused", "manual_approved"),
    ("manual_approved", "manual_succeeded"),
    ("outages_learned", "advice_applied"),
    ("advice_applied", "advice_paid_off"),
]
"""Pairs (a, b): step b must not be observed before step a."""


@dataclass
class Timeline:
    """Steps observed, with their times; printed as they happen."""

    out: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    seen: dict[str, tuple[float, str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def mark(self, key: str, detail: str = "") -> None:
        """Record step ``key`` (first time only) and print it."""
        if key in self.seen:
            return
        at = time.monotonic() - self.started
        self.seen[key] = (at, detail)
        title = dict(STEPS)[key]
        self.out(f"  t+{at:6.1f}s  ok  {title}" + (f": {detail}" if detail else ""))

    def fail(self, key: str, why: str) -> None:
        """Record that step ``key`` did not happen, and why."""
        at = time.monotonic() - self.started
        self.failures.append(key)
        self.out(f"  t+{at:6.1f}s  !!  {dict(STEPS)[key]}: {why}")

    def missing(self) -> list[str]:
        """Steps never observed."""
        return [key for key, _ in STEPS if key not in self.seen]

    def out_of_order(self) -> list[str]:
        """Human descriptions of order violations among observed steps."""
        bad = []
        for a, b in ORDER:
            if a in self.seen and b in self.seen and self.seen[b][0] < self.seen[a][0]:
                bad.append(f"{dict(STEPS)[b]!r} came before {dict(STEPS)[a]!r}")
        return bad

    @property
    def ok(self) -> bool:
        """Every step observed, in order."""
        return not self.missing() and not self.out_of_order()


class StepTimeout(Exception):
    """A step did not happen within its time."""


async def wait_until(
    check: Callable[[], Awaitable[Any] | Any], timeout_s: float, what: str, every: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise StepTimeout(f"{what}: not within {timeout_s:g}s")
        await asyncio.sleep(every)


@dataclass
class DemoResult:
    """How the demo went."""

    timeline: Timeline
    links: list[tuple[str, str]]
    problems: list[str]

    @property
    def ok(self) -> bool:
        """Every step happened, in order, and nothing else went wrong."""
        return self.timeline.ok and not self.problems


def render_summary(
    result: DemoResult, out: Callable[[str], None], *, stack_started: bool, keep: bool
) -> None:
    """The links of every workflow involved, then the verdict."""
    out("\nWorkflows in the Temporal UI:")
    width = max((len(what) for what, _ in result.links), default=0)
    for what, url in result.links:
        out(f"  {what:<{width}}  {url}")
    if stack_started and not keep:
        out(
            "\nThe demo stopped the stack it started; its history stays in the data "
            "directory: `antifragile dev` brings these links back."
        )
    elif stack_started:
        out("\nThe stack keeps running so the links work; Ctrl-C stops it.")
    t = result.timeline
    problems = [*(f"missing: {dict(STEPS)[k]}" for k in t.missing()), *t.out_of_order()]
    problems += result.problems
    if result.ok:
        out(f"\ndemo passed: all {len(STEPS)} steps happened, in order")
    else:
        out(f"\ndemo FAILED: {len(STEPS) - len(t.missing())} of {len(STEPS)} steps happened")
        for p in problems:
            out(f"  - {p}")
