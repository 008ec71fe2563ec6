"""The local fault table: which fault, if any, each guard of this process enforces.

Contract shared with the chaos engine: the table maps a target (guard name) to a
:class:`~antifragile.inprocess.guard.Fault` (declared by the guard, which calls it).
Installing a fault hands it to the guard of that name (now, or when the guard is
created later) with :meth:`Guard.install_fault`, so a guard's hot path only tests its
own fault for ``None`` - no lookup at all while no fault is active. The chaos
engine's Redis lease subscriber calls :meth:`FaultTable.install` /
:meth:`FaultTable.remove`; fault kinds (latency, error, timeout, partition,
forced-open breaker, resource exhaustion) implement the protocol.
"""

from __future__ import annotations

import logging

from antifragile.inprocess.guard import Fault, Guard

log = logging.getLogger(__name__)


class FaultTable:
    """Active faults of this process by target, and the guards they apply to."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._guards: dict[str, Guard] = {}

    # ------------------------------------------------------------------ guards

    def attach(self, guard: Guard) -> None:
        """Make ``guard`` enforce the fault of its name, now and on later installs.

        A different guard attached under the same name is detached first (its fault
        taken back), or it would keep enforcing the fault after the fault is removed.
        """
        previous = self._guards.get(guard.name)
        if previous is guard:
            return
        if previous is not None:
            self.detach(previous)
        self._guards[guard.name] = guard
        fault = self._faults.get(guard.name)
        if fault is not None:
            self._hand_over(guard, fault)

    def detach(self, guard: Guard) -> None:
        """Stop managing ``guard`` (its fault, if any, is taken back first)."""
        if self._guards.get(guard.name) is guard:
            fault = self._faults.get(guard.name)
            if fault is not None:
                self._take_back(guard, fault)
            del self._guards[guard.name]

    # ------------------------------------------------------------------ faults

    def install(self, target: str, fault: Fault) -> None:
        """Activate ``fault`` for ``target``, replacing any fault it had.

        Raises:
            Exception: whatever ``fault.on_install`` raised; the fault is then not installed.
        """
        self.remove(target)
        self._faults[target] = fault
        guard = self._guards.get(target)
        if guard is not None:
            try:
                self._hand_over(guard, fault)
            except BaseException:
                del self._faults[target]
                guard.install_fault(None)
                raise

    def remove(self, target: str) -> Fault | None:
        """Deactivate the fault of ``target``; returns it (None if there was none)."""
        fault = self._faults.pop(target, None)
        if fault is not None:
            guard = self._guards.get(target)
            if guard is not None:
                self._take_back(guard, fault)
        return fault

    def clear(self) -> None:
        """Remove every fault (e.g. on a fleet-wide halt)."""
        for target in list(self._faults):
            self.remove(target)

    def get(self, target: str) -> Fault | None:
        """The active fault of ``target``, if any."""
        return self._faults.get(target)

    def targets(self) -> list[str]:
        """Targets with an active fault."""
        return list(self._faults)

    def __len__(self) -> int:
        return len(self._faults)

    def __contains__(self, target: object) -> bool:
        return target in self._faults

    @staticmethod
    def _hand_over(guard: Guard, fault: Fault) -> None:
        guard.install_fault(fault)
        fault.on_install(guard)

    @staticmethod
    def _take_back(guard: Guard, fault: Fault) -> None:
        guard.install_fault(None)
        try:
            fault.on_remove(guard)
        except Exception:
            log.exception("fault %r on %r: on_remove raised", fault, guard.name)
