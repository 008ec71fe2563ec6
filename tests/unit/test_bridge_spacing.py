"""Bridge pacing: a flapping breaker costs at most one round of Temporal calls per
``min_interval_s``; the first change after a quiet period goes out at once."""

from __future__ import annotations

import time

from antifragile.inprocess.breaker_state import CircuitState, StateChange
from antifragile.inprocess.bridge import Bridge, _Intent
from antifragile.inprocess.health import HealthAggregator
from antifragile.settings import Settings
from antifragile.testing import eventually


class RecordingBridge(Bridge):
    """Records what would be delivered instead of calling Temporal."""

    def __init__(self, **kw: object) -> None:
        super().__init__(
            Settings(),
            "inst",
            HealthAggregator(),
            lambda name: None,
            client=object(),
            **kw,  # type: ignore[arg-type]
        )
        self.rounds: list[tuple[float, str, bool, CircuitState]] = []

    async def _deliver(self, name: str, intent: _Intent) -> None:
        self.rounds.append((time.monotonic(), name, intent.recover, intent.state))


def change(new: CircuitState, old: CircuitState = CircuitState.CLOSED) -> StateChange:
    return StateChange("redis", old, new, "test", 0.0)


async def test_flapping_breaker_is_one_round_per_interval_latest_state_wins() -> None:
    bridge = RecordingBridge(min_interval_s=0.3)
    await bridge.start()
    try:
        # The bridge paces with the real monotonic clock (no clock to inject), so the
        # rounds are timed by the stamps they carry, not by sleeping between asserts.
        t0 = time.monotonic()
        bridge.notify(change(CircuitState.OPEN))
        await eventually(lambda: bridge.rounds, timeout=5)
        assert len(bridge.rounds) == 1  # at once
        assert bridge.rounds[0][0] - t0 < 0.3  # at once: not held for the interval
        assert bridge.rounds[0][1:] == ("redis", True, CircuitState.OPEN)
        # Flapping: HALF_OPEN -> OPEN -> HALF_OPEN within the interval is one round.
        bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
        bridge.notify(change(CircuitState.OPEN, CircuitState.HALF_OPEN))
        bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
        assert time.monotonic() - bridge.rounds[0][0] < 0.3  # still within the interval
        await eventually(lambda: len(bridge.rounds) >= 2, timeout=5)
        assert len(bridge.rounds) == 2 and not bridge.pending  # one round for the three
        at, _, recover, state = bridge.rounds[1]
        assert at - t0 >= 0.3
        assert at - bridge.rounds[0][0] >= 0.3  # nothing went out within the interval
        assert state is CircuitState.HALF_OPEN  # the latest state
        assert recover is True  # the unsent recovery request of the second OPEN is kept
    finally:
        await bridge.stop()


async def test_a_recovery_request_carries_when_the_breaker_first_opened() -> None:
    """The time a breaker opened goes with the recovery request (``detected_at``): the
    ledger counts the outage from it. A second opening before delivery keeps the first
    time; after delivery, the next opening starts afresh."""
    wall = [1000.0]
    opened: list[float | None] = []

    class Recording(RecordingBridge):
        async def _deliver(self, name: str, intent: _Intent) -> None:
            opened.append(intent.opened_at if intent.recover else None)
            await super()._deliver(name, intent)

    bridge = Recording(min_interval_s=0.3, wall_clock=lambda: wall[0])
    bridge.notify(change(CircuitState.OPEN))
    wall[0] = 1005.0
    bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
    bridge.notify(change(CircuitState.OPEN, CircuitState.HALF_OPEN))
    await bridge.start()
    try:
        await eventually(lambda: opened, timeout=5)
        assert opened == [1000.0]  # the first opening not yet told
        wall[0] = 2000.0
        bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
        bridge.notify(change(CircuitState.OPEN, CircuitState.HALF_OPEN))
        await eventually(lambda: len(opened) >= 2, timeout=5)
        assert opened[1] == 2000.0
    finally:
        await bridge.stop()


def test_an_older_unsent_opening_is_kept_when_intents_merge() -> None:
    newer = _Intent(state=CircuitState.HALF_OPEN)
    newer.merge_older(_Intent(recover=True, state=CircuitState.OPEN, opened_at=5.0))
    assert (newer.recover, newer.opened_at) == (True, 5.0)
