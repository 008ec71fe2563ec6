"""Bridge pacing: a flapping breaker costs at most one round of Temporal calls per
``min_interval_s``; the first change after a quiet period goes out at once."""

from __future__ import annotations

import asyncio
import time

from antifragile.inprocess.breaker_state import CircuitState, StateChange
from antifragile.inprocess.bridge import Bridge, _Intent
from antifragile.inprocess.health import HealthAggregator
from antifragile.settings import Settings


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
        t0 = time.monotonic()
        bridge.notify(change(CircuitState.OPEN))
        await asyncio.sleep(0.05)
        assert len(bridge.rounds) == 1  # at once
        assert bridge.rounds[0][1:] == ("redis", True, CircuitState.OPEN)
        # Flapping: HALF_OPEN -> OPEN -> HALF_OPEN within the interval is one round.
        bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
        bridge.notify(change(CircuitState.OPEN, CircuitState.HALF_OPEN))
        bridge.notify(change(CircuitState.HALF_OPEN, CircuitState.OPEN))
        await asyncio.sleep(0.1)
        assert len(bridge.rounds) == 1
        await asyncio.sleep(0.35)
        assert len(bridge.rounds) == 2
        at, _, recover, state = bridge.rounds[1]
        assert at - t0 >= 0.3
        assert state is CircuitState.HALF_OPEN  # the latest state
        assert recover is True  # the unsent recovery request of the second OPEN is kept
    finally:
        await bridge.stop()
