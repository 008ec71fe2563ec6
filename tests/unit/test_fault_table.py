"""FaultTable: install/remove hand faults to guards; the guard enforces them."""

from __future__ import annotations

import pytest

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitState
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.guard import Fault, Guard


class FakeFault:
    """Raises on every call and records its lifecycle."""

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc
        self.applied = 0
        self.events: list[str] = []

    async def apply(self, guard: Guard) -> None:
        self.applied += 1
        if self.exc is not None:
            raise self.exc

    def on_install(self, guard: Guard) -> None:
        self.events.append(f"install:{guard.name}")

    def on_remove(self, guard: Guard) -> None:
        self.events.append(f"remove:{guard.name}")


async def ok() -> str:
    return "ok"


def make_guard(name: str = "db", **kw: object) -> Guard:
    return Guard(name, CircuitBreaker(name, CircuitBreakerConfig(**kw)))  # type: ignore[arg-type]


def test_fake_fault_satisfies_the_protocol() -> None:
    assert isinstance(FakeFault(), Fault)


async def test_installed_fault_is_applied_before_every_call_and_removed_cleanly() -> None:
    table = FaultTable()
    guard = make_guard()
    table.attach(guard)
    fault = FakeFault()
    table.install("db", fault)
    assert guard.fault is fault
    assert not guard._plain
    await guard.call(ok)
    async with guard:
        pass
    assert fault.applied == 2
    assert table.remove("db") is fault
    assert guard.fault is None and guard._plain
    await guard.call(ok)
    assert fault.applied == 2
    assert fault.events == ["install:db", "remove:db"]


async def test_fault_errors_count_as_breaker_failures() -> None:
    table = FaultTable()
    guard = make_guard(failure_threshold=3)
    table.attach(guard)
    table.install("db", FakeFault(ConnectionError("injected")))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await guard.call(ok)
    assert guard.breaker.state is CircuitState.OPEN


def test_fault_installed_before_the_guard_exists_reaches_it_on_attach() -> None:
    table = FaultTable()
    fault = FakeFault()
    table.install("late", fault)
    assert table.get("late") is fault and "late" in table
    guard = make_guard("late")
    table.attach(guard)
    assert guard.fault is fault
    assert fault.events == ["install:late"]


def test_replace_clear_and_detach() -> None:
    table = FaultTable()
    a, b = make_guard("a"), make_guard("b")
    table.attach(a)
    table.attach(b)
    f1, f2, f3 = FakeFault(), FakeFault(), FakeFault()
    table.install("a", f1)
    table.install("a", f2)  # replaces f1
    table.install("b", f3)
    assert f1.events == ["install:a", "remove:a"]
    assert sorted(table.targets()) == ["a", "b"]
    table.clear()
    assert len(table) == 0
    assert a.fault is None and b.fault is None
    table.install("a", f1)
    table.detach(a)
    assert a.fault is None


def test_failing_on_install_leaves_nothing_installed() -> None:
    class Broken(FakeFault):
        def on_install(self, guard: Guard) -> None:
            raise RuntimeError("cannot install")

    table = FaultTable()
    guard = make_guard()
    table.attach(guard)
    with pytest.raises(RuntimeError):
        table.install("db", Broken())
    assert table.get("db") is None and guard.fault is None and guard._plain


def test_raising_on_remove_is_logged_and_the_fault_still_leaves() -> None:
    class Sticky(FakeFault):
        def on_remove(self, guard: Guard) -> None:
            raise RuntimeError("oops")

    table = FaultTable()
    guard = make_guard()
    table.attach(guard)
    table.install("db", Sticky())
    table.remove("db")
    assert guard.fault is None and table.get("db") is None


async def test_attaching_a_new_guard_of_the_same_name_takes_the_fault_back_from_the_old() -> None:
    # The old guard kept its fault for ever: removing the fault cleaned only the guard
    # attached last, so the first one went on raising injected errors after the
    # experiment ended.
    fault = FakeFault(RuntimeError("injected"))
    table = FaultTable()
    first = make_guard()
    table.attach(first)
    table.install("db", fault)
    second = make_guard()
    table.attach(second)
    assert first.fault is None and second.fault is fault
    assert fault.events == ["install:db", "remove:db", "install:db"]
    table.remove("db")
    assert first.fault is None and second.fault is None
    assert await first.call(ok) == "ok"
    table.attach(second)  # the same guard again: nothing taken back
    assert fault.events == ["install:db", "remove:db", "install:db", "remove:db"]
