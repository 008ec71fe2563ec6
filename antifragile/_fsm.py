"""One checked transition table, shared by the breaker, recovery states and chaos phases.

Each state machine declares its legal moves once, as data, and changes state only through
:meth:`TransitionTable.check`; a move the table does not list is a bug and raises
:class:`IllegalTransitionError`. Pure and dependency-free, so workflow code may import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import Enum
from typing import Generic, TypeVar

from antifragile.errors import AntifragileError

S = TypeVar("S", bound=Enum)


class IllegalTransitionError(AntifragileError):
    """A state change its transition table does not allow was requested (a bug, not input)."""


class TransitionTable(Mapping[S, frozenset[S]], Generic[S]):
    """The legal moves of one state machine: ``table[state]`` is the set it may move to.

    Args:
        subject: What moves, for error messages (``"recovery"``, ``"circuit 'db'"``).
        moves: For every state, the states it may move to. Every member of the state enum
            must be listed (a terminal state with no moves), so a new state cannot be
            forgotten.

    Raises:
        ValueError: A state of the enum is missing from ``moves``, or a move names a
            value of another type.
    """

    __slots__ = ("_moves", "subject")

    def __init__(self, subject: str, moves: Mapping[S, Iterable[S]]) -> None:
        self.subject = subject
        self._moves: dict[S, frozenset[S]] = {k: frozenset(v) for k, v in moves.items()}
        if not self._moves:
            raise ValueError(f"{subject}: a transition table needs at least one state")
        enum_type = type(next(iter(self._moves)))
        missing = [s for s in enum_type if s not in self._moves]
        if missing:
            raise ValueError(f"{subject}: no moves listed for {', '.join(map(_name, missing))}")
        for source, targets in self._moves.items():
            for t in targets:
                if not isinstance(t, enum_type):
                    raise ValueError(f"{subject}: {_name(source)} -> {t!r} is not a state")

    def __getitem__(self, state: S) -> frozenset[S]:
        return self._moves[state]

    def __iter__(self) -> Iterator[S]:
        return iter(self._moves)

    def __len__(self) -> int:
        return len(self._moves)

    def allows(self, current: S, new: S) -> bool:
        """Whether ``current -> new`` is a legal move."""
        return new in self._moves[current]

    def check(self, current: S, new: S, subject: str | None = None) -> S:
        """Return ``new`` if ``current -> new`` is legal.

        ``subject`` names what moves in the error (default: the table's own subject), e.g.
        one breaker of the many sharing the breaker table.

        Raises:
            IllegalTransitionError: The table does not list the move; the message reads
                ``"{subject} cannot move from {CURRENT} to {NEW} ({CURRENT} -> {NEW} is not
                allowed)"`` (both spellings the three machines used before they shared it).
        """
        if new not in self._moves[current]:
            old_name, new_name = _name(current), _name(new)
            raise IllegalTransitionError(
                f"{subject or self.subject} cannot move from {old_name} to {new_name} "
                f"({old_name} -> {new_name} is not allowed)"
            )
        return new

    def terminal(self) -> frozenset[S]:
        """The states with no way out."""
        return frozenset(s for s, targets in self._moves.items() if not targets)


def _name(state: object) -> str:
    value = getattr(state, "value", state)
    return str(value)
