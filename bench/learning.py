"""Learning from stress, end to end: does the advice learned from real outages pay off?

A real TCP dependency (started here) goes down for a seeded random time T again and again
(default T = 6 s ± 1 s, the issue's; ``--quick``: 3 s ± 0.5 s). A guarded service (a real
``Runtime``,
``config_plane=True``, a TCP probe) calls it 50 times a second. Each time its breaker opens,
the runtime asks for a recovery (a RecoveryWorkflow on a dev server started here; its
policy asks for a probe every 200 ms, but Temporal fires timers about 1 s apart, so a
verified time to recover reads up to ~1.1 s late: the reason the default T is 6 s); the
recovery records the outage in the ledger ``profile-{dependency}``.

Printed side by side in one run:

1. After each of the first five outages: the ledger's recommended ``open_duration_s``
   against the measured T (target: within ±20 % after at most five outages).
2. One more outage with the default configuration, and the same outage (same T) with the
   advice applied through the approval path (``learning.client.apply_advice``, approved by
   :data:`APPROVER`, whom the bench names in its worker's policy): failed calls, refused
   calls, time from the dependency's return to the breaker closing, trial calls spent
   (targets: ≥ 50 % less refused time after the return, at most 2x trial calls).
3. Revert (``learning.client.revert_config``: undoing version 1 returns to the service's
   own settings); the breaker's configuration equals the default exactly.

Between learning outages the harness resets the breaker once the recovery has ended (the
library default keeps it open 30 s, which would only make the bench slower; the recovery,
not the breaker, measures the time to recover). Never timed assertions: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from antifragile.demo.last_act import Downstream

SEED = 14
DEFAULT_T = (6.0, 1.0)
QUICK_T = (3.0, 0.5)
CALL_INTERVAL_S = 0.02
LEARNING_OUTAGES = 5


def outage_times(n: int, mean_s: float, spread_s: float, seed: int = SEED) -> list[float]:
    """``n`` outage lengths, uniform in ``mean ± spread`` seconds, seeded (pure)."""
    rng = random.Random(seed)
    return [round(rng.uniform(mean_s - spread_s, mean_s + spread_s), 3) for _ in range(n)]


def within(value: float, target: float, tolerance: float = 0.2) -> bool:
    """``value`` is within ``±tolerance`` (a fraction) of ``target`` (pure)."""
    return abs(value - target) <= tolerance * target


def reduction(before: float, after: float) -> float | None:
    """Fraction by which ``after`` is below ``before`` (None when ``before`` is 0; pure)."""
    return None if before == 0 else (before - after) / before


@dataclass
class OutageFigures:
    """What one outage did to the guarded calls (counted by the caller)."""

    failed: int = 0
    refused: int = 0
    trials: int = 0
    back_to_closed_s: float | None = None
    states: list[str] = field(default_factory=list)


async def _outage(guard, dep: Downstream, length_s: float) -> OutageFigures:  # type: ignore[no-untyped-def]
    """Take the dependency down for ``length_s``, calling steadily; figures until closed."""
    from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState

    figures = OutageFigures()
    breaker = guard.breaker
    await dep.down()
    start = time.monotonic()
    returned_at: float | None = None
    limit = length_s + 120
    while time.monotonic() - start < limit:
        now = time.monotonic()
        if returned_at is None and now - start >= length_s:
            await dep.up()
            returned_at = time.monotonic()
        was = breaker.state
        try:
            await guard.call(dep.call)
            if was is CircuitState.HALF_OPEN:
                figures.trials += 1
        except CircuitOpenError:
            figures.refused += 1
        except OSError:
            figures.failed += 1
            if was is CircuitState.HALF_OPEN:
                figures.trials += 1
        if returned_at is not None and breaker.state is CircuitState.CLOSED:
            figures.back_to_closed_s = time.monotonic() - returned_at
            break
        await asyncio.sleep(CALL_INTERVAL_S)
    return figures


async def _wait_outages(client, dependency: str, count: int, timeout_s: float = 60) -> object:  # type: ignore[no-untyped-def]
    from antifragile.learning.client import get_profile

    deadline = time.monotonic() + timeout_s
    while True:
        view = await get_profile(client, dependency)
        if view is not None and view.counts.get("outage", 0) >= count:
            return view
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ledger of {dependency} did not reach {count} outages")
        await asyncio.sleep(0.2)


def p75(values: list[float]) -> float:
    """The p75 (type 7, as the advice computes it) of ``values`` (pure).

    The advice recommends the p75 of the verified times to recover, so it is compared with
    the p75 of the outages' true lengths so far: comparing it with one outage's length
    would count the outages' own spread (± 0.5 s here) as the advice's error.
    """
    ordered = sorted(values)
    h = (len(ordered) - 1) * 0.75
    low = int(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def _measured(view) -> str:  # type: ignore[no-untyped-def]
    """The last outage's verified time to recover as the ledger holds it (breaker opened →
    first passing probe), seconds."""
    outages = [o for o in view.observations if o.kind == "outage" and o.recovered_at]
    if not outages:
        return "-"
    last = max(outages, key=lambda o: o.started_at)
    return f"{(last.recovered_at - last.started_at).total_seconds():.2f}"


def _recommended_open(view) -> float | None:  # type: ignore[no-untyped-def]
    for item in view.advice:
        if item.setting == "breaker.open_duration_s":
            return float(item.recommended) if item.recommended is not None else None
    return None


APPROVER = "bench-approver"
"""The only approver in the bench worker's policy: the advice goes through the approval path."""
OPEN_SETTING = "breaker.open_duration_s"


async def apply_open_duration(client, dependency: str) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Ask the ledger to apply its ``open_duration_s`` advice (approved by :data:`APPROVER`).

    The ledger authorizes the approver with the worker policy, recomputes the advice
    against the version in force and publishes a config version.

    Returns:
        (version published, the open duration it carries, seconds).

    Raises:
        RuntimeError: the ledger published nothing (no advice to apply).
    """
    from antifragile.learning.client import apply_advice

    change = await apply_advice(
        client, dependency, by=APPROVER, settings=[OPEN_SETTING], note="bench: the advice"
    )
    after = change.after.open_duration_s if change.after is not None else None
    if change.version is None or after is None:
        raise RuntimeError(
            f"{dependency}: nothing applied ({change.outcome.value}: {change.reason})"
        )
    return change.version, after


async def revert_config(client, dependency: str) -> int:  # type: ignore[no-untyped-def]
    """Ask the ledger to undo the version in force (undoing version 1 returns to the
    service's own settings); the version published."""
    from antifragile.learning import client as learning

    change = await learning.revert_config(
        client, dependency, by=APPROVER, note="bench: undo the advice"
    )
    return change.version or 0


def allow_approver(policy_file: Path) -> None:
    """Name :data:`APPROVER` in the bench worker's policy (before the worker starts)."""
    text = policy_file.read_text()
    policy_file.write_text(text + f"recovery:\n  approvers: [{APPROVER}]\n")


async def _until(predicate, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the runtime to apply a config version")
        await asyncio.sleep(0.05)


async def run(quick: bool) -> int:
    from antifragile.demo.last_act import Downstream
    from antifragile.inprocess.breaker_state import CircuitState
    from antifragile.inprocess.runtime import Runtime
    from antifragile.settings import Settings
    from antifragile.temporal_client import connect
    from bench._chaos_stack import chaos_stack

    mean, spread = QUICK_T if quick else DEFAULT_T
    lengths = outage_times(LEARNING_OUTAGES + 1, mean, spread)
    print(
        f"outages T = {mean:g} s ± {spread:g} s "
        f"({'--quick' if quick else 'default; --quick: 3 s ± 0.5 s'}), seed {SEED}: {lengths}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        async with chaos_stack(0, Path(tmp), lease_ttl_s=15) as stack:
            allow_approver(Path(stack.env["ANTIFRAGILE_POLICY_FILE"]))
            await stack.start_worker()
            settings = Settings(
                temporal_address=stack.temporal_address,
                redis_url=stack.redis_url,
                task_queue=stack.task_queue,
            )
            client = await connect(settings)
            dep = Downstream()
            await dep.up()
            name = f"learn-{uuid.uuid4().hex[:6]}"
            runtime = Runtime(
                settings,
                instance_id="bench-learning",
                metering=False,
                fault_plane=False,
                config_plane=True,
                publish_interval_s=1.0,
            )
            guard = runtime.guard(
                name,
                probe=f"tcp://127.0.0.1:{dep.port}",
                recovery={
                    "strategy": "exponential_backoff",
                    "policy": {
                        "initial_delay_ms": 200,
                        "max_delay_ms": 200,
                        "backoff_multiplier": 1.0,
                        "max_retry_attempts": 200,
                    },
                },
            )
            default = guard.breaker.config
            await runtime.start()
            try:
                print(
                    "\n outage   T (s)   p75 of T so far   measured (ledger)   "
                    "recommended open_duration_s   vs p75 of T"
                )
                recommended = None
                for i, length in enumerate(lengths[:LEARNING_OUTAGES], start=1):
                    await _outage(guard, dep, length)
                    view = await _wait_outages(client, name, i)
                    recommended = _recommended_open(view)
                    truth = p75(lengths[:i])
                    shown = "-" if recommended is None else f"{recommended:.1f}"
                    verdict = (
                        "-"
                        if recommended is None
                        else f"{(recommended - truth) / truth:+.0%}"
                        + (" (within ±20 %)" if within(recommended, truth) else "")
                    )
                    print(
                        f" {i:6d}   {length:5.2f}   {truth:15.2f}   "
                        f"{_measured(view):>17}   {shown:>27}   {verdict}"
                    )
                    guard.breaker.reset("bench: next outage")
                if recommended is None:
                    print("no recommendation after five outages: stopping")
                    return 1
                final = lengths[-1]
                before = await _outage(guard, dep, final)
                guard.breaker.reset("bench: next outage")
                version, applied = await apply_open_duration(client, name)
                await _until(lambda: guard.breaker.config.open_duration_s == applied)
                after = await _outage(guard, dep, final)
                print(
                    f"\n same outage (T = {final:.2f} s); advice applied as config "
                    f"version {version} through the approval path (by {APPROVER})"
                )
                print(f" {'':34} {'default':>10} {'advice':>10}")
                print(f" {'open_duration_s':34} {default.open_duration_s:>10g} {applied:>10g}")
                for label, a, b in [
                    ("failed calls", before.failed, after.failed),
                    ("refused calls", before.refused, after.refused),
                    ("trial calls", before.trials, after.trials),
                ]:
                    print(f" {label:34} {a:>10d} {b:>10d}")
                ba, bb = before.back_to_closed_s, after.back_to_closed_s
                print(f" {'return → breaker closed (s)':34} {ba or 0:>10.2f} {bb or 0:>10.2f}")
                cut = reduction(ba or 0, bb or 0)
                if cut is not None:
                    print(
                        f" refused time after the return: {cut:.0%} less (target ≥ 50 %); "
                        f"trial calls {after.trials}/{max(before.trials, 1)} (target ≤ 2x)"
                    )
                guard.breaker.reset("bench: revert")
                reverted = await revert_config(client, name)
                await _until(lambda: guard.breaker.config == default)
                same = (
                    guard.breaker.config == default and guard.breaker.state is CircuitState.CLOSED
                )
                print(
                    f"\n reverted (version {reverted}): breaker config equals the default "
                    f"exactly: {same}"
                )
            finally:
                await runtime.stop()
                await dep.down()
                stack.stop_worker()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench learning")
    parser.add_argument("--quick", action="store_true", help="T = 3 s ± 0.5 s instead of 6 s ± 1 s")
    # `make bench-full` passes --full to every bench: here the default is already full size.
    parser.add_argument("--full", action="store_true", help="the default (T = 6 s ± 1 s)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.quick))


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
