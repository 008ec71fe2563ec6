"""The one transition-table helper the breaker, recoveries and chaos phases share."""

from __future__ import annotations

from enum import StrEnum

import pytest

from antifragile._fsm import IllegalTransitionError, TransitionTable
from antifragile.chaos.logic import LEGAL_TRANSITIONS as CHAOS
from antifragile.inprocess.breaker_state import LEGAL_TRANSITIONS as BREAKER
from antifragile.recovery.logic import LEGAL_TRANSITIONS as RECOVERY


class Light(StrEnum):
    RED = "RED"
    GREEN = "GREEN"
    OFF = "OFF"


def test_a_listed_move_returns_the_new_state_and_an_unlisted_one_raises_naming_both() -> None:
    table = TransitionTable(
        "light", {Light.RED: {Light.GREEN}, Light.GREEN: {Light.RED}, Light.OFF: ()}
    )
    assert table.check(Light.RED, Light.GREEN) is Light.GREEN
    expected = r"^light cannot move from GREEN to OFF \(GREEN -> OFF is not allowed\)$"
    with pytest.raises(IllegalTransitionError, match=expected):
        table.check(Light.GREEN, Light.OFF)
    assert table.allows(Light.GREEN, Light.RED) and not table.allows(Light.OFF, Light.RED)
    assert table.terminal() == {Light.OFF}


def test_a_state_without_a_row_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match="no moves listed for OFF"):
        TransitionTable("light", {Light.RED: {Light.GREEN}, Light.GREEN: {Light.RED}})


def test_a_move_to_something_that_is_not_a_state_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a state"):
        TransitionTable("light", {Light.RED: {"GREEN"}, Light.GREEN: (), Light.OFF: ()})  # type: ignore[dict-item]


@pytest.mark.parametrize("table", [BREAKER, RECOVERY, CHAOS], ids=["breaker", "recovery", "chaos"])
def test_the_three_machines_use_the_shared_table(table: TransitionTable) -> None:  # type: ignore[type-arg]
    assert isinstance(table, TransitionTable)
    state = next(iter(table))
    illegal = next((s for s in table if s not in table[state]), None)
    assert illegal is not None
    with pytest.raises(IllegalTransitionError, match=" is not allowed"):
        table.check(state, illegal)
