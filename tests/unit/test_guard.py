"""Guard: breaker + fault + metering + timeout + concurrency limit, both call styles."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from antifragile.errors import ConfigError
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.faults import ChaosFault, build_fault
from antifragile.inprocess.guard import ConcurrencyLimitError, Guard
from antifragile.inprocess.metering import MeteringIntegration
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import ChaosType
from tests.unit.conftest import FakeClock


class Boom(Exception):
    pass


async def ok(x: int = 1) -> int:
    return x


async def fail() -> None:
    raise Boom


def make(clock: FakeClock | None = None, **kw: object) -> Guard:
    cfg = CircuitBreakerConfig(**kw)  # type: ignore[arg-type]
    return Guard("svc", CircuitBreaker("svc", cfg, clock=clock), tenant_id="t1")


async def test_plain_guard_passes_calls_and_counts_them() -> None:
    g = make()
    assert g._plain
    assert await g.call(ok, 5) == 5
    async with g:
        pass
    assert g.calls == 2


async def test_failures_through_either_style_open_the_breaker_and_refuse_calls() -> None:
    g = make(failure_threshold=2)
    with pytest.raises(Boom):
        await g.call(fail)
    with pytest.raises(Boom):
        async with g:
            raise Boom
    assert g.breaker.state is CircuitState.OPEN
    assert not g._plain
    with pytest.raises(CircuitOpenError):
        await g.call(ok)
    with pytest.raises(CircuitOpenError):
        async with g:
            pass


async def test_guard_follows_breaker_back_to_closed(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=5)
    with pytest.raises(Boom):
        await g.call(fail)
    clock.advance(5)
    assert await g.call(ok) == 1
    assert g.breaker.state is CircuitState.CLOSED
    assert g._plain


async def test_steady_window_takes_the_cheapest_success_path() -> None:
    g = make(window_size=20, minimum_calls=20)
    for _ in range(20):
        await g.call(ok)
    assert g.breaker.steady
    with pytest.raises(Boom):
        await g.call(fail)
    assert not g.breaker.steady


async def test_timeout_counts_as_failure_in_both_styles() -> None:
    g = make(failure_threshold=2)
    g.timeout_s = 0.01
    assert not g._plain
    with pytest.raises(TimeoutError):
        await g.call(asyncio.sleep, 1)
    with pytest.raises(TimeoutError):
        async with g:
            await asyncio.sleep(1)
    assert g.breaker.state is CircuitState.OPEN


async def test_timeout_does_not_fire_for_fast_calls_via_async_with() -> None:
    g = make()
    g.timeout_s = 1.0
    async with g:
        await asyncio.sleep(0)
    assert g.breaker.consecutive_failures == 0
    assert not g._scopes


async def test_concurrency_limit_refuses_extra_calls_without_counting_failures() -> None:
    g = make(failure_threshold=1)
    g.max_concurrency = 1
    gate = asyncio.Event()
    first = asyncio.create_task(g.call(gate.wait))
    await asyncio.sleep(0)
    assert g.in_flight == 1
    with pytest.raises(ConcurrencyLimitError):
        await g.call(ok)
    with pytest.raises(ConcurrencyLimitError):
        async with g:
            pass
    gate.set()
    await first
    assert g.in_flight == 0
    assert g.breaker.state is CircuitState.CLOSED
    async with g:
        assert g.in_flight == 1
    assert g.in_flight == 0


async def test_zero_concurrency_refuses_everything() -> None:
    g = make()
    g.max_concurrency = 0
    with pytest.raises(ConcurrencyLimitError):
        await g.call(ok)
    g.max_concurrency = None
    assert g._plain


async def test_slow_calls_via_guard_count_as_failures(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=2, slow_call_duration_s=0.1)
    assert not g._plain

    async def slow() -> None:
        clock.advance(0.2)

    await g.call(slow)
    async with g:
        clock.advance(0.2)
    assert g.breaker.state is CircuitState.OPEN


async def test_metering_harvests_guard_calls_as_usage() -> None:
    g = make()
    m = MeteringIntegration()
    m.add_source(g)
    for _ in range(10):
        await g.call(ok)
    s = m.stats()
    assert (s.recorded, s.buffered) == (10, 10)
    m._drain()
    assert m._pending == {("t1", "guarded_call:svc"): [10, 10]}
    assert m.stats().recorded == 10
    assert g.calls == 10


def test_bad_settings_name_the_field() -> None:
    g = make()
    with pytest.raises(ConfigError, match="timeout_s"):
        g.timeout_s = 0
    with pytest.raises(ConfigError, match="max_concurrency"):
        g.max_concurrency = -1


# ---------------------------------------------------------------- issue 11: items 6, 8, 13


async def test_guard_call_admitted_before_the_trip_is_stale(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=1)
    old_gate, trial_gate = asyncio.Event(), asyncio.Event()
    old = asyncio.create_task(g.call(old_gate.wait))  # plain path, CLOSED
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await g.call(fail)
    clock.advance(1)
    trial = asyncio.create_task(g.call(trial_gate.wait))
    await asyncio.sleep(0)
    assert g.breaker.state is CircuitState.HALF_OPEN
    old_gate.set()
    await old
    assert g.breaker.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        await g.call(ok)
    trial_gate.set()
    await trial
    assert g.breaker.state is CircuitState.CLOSED


async def test_plain_async_with_entries_become_stale_at_a_transition(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=1)
    old_gate, trial_gate = asyncio.Event(), asyncio.Event()

    async def old_entry() -> None:
        async with g:  # plain entry, CLOSED
            await old_gate.wait()

    async def trial_entry() -> None:
        async with g:
            await trial_gate.wait()

    old = asyncio.create_task(old_entry())
    await asyncio.sleep(0)
    assert g._plain_open == 1
    with pytest.raises(Boom):
        await g.call(fail)
    assert (g._plain_open, g._plain_stale) == (0, 1)
    clock.advance(1)
    trial = asyncio.create_task(trial_entry())
    await asyncio.sleep(0)
    old_gate.set()
    await old
    assert g.breaker.state is CircuitState.HALF_OPEN  # the old entry decided nothing
    assert g._plain_stale == 0
    trial_gate.set()
    await trial
    assert g.breaker.state is CircuitState.CLOSED
    assert g._plain
    async with g:
        pass
    assert g._plain_open == 0


async def test_item8_slow_calls_detected_through_every_guard_path(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=3, slow_call_duration_s=0.1)

    async def slow() -> None:
        clock.advance(0.2)

    await g.call(slow)
    async with g:
        clock.advance(0.2)
    g.timeout_s = 5.0  # the timeout path measures too
    async with g:
        clock.advance(0.2)
    assert g.breaker.state is CircuitState.OPEN


async def test_concurrency_refusal_frees_the_trial_permit(clock: FakeClock) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=1)
    with pytest.raises(Boom):
        await g.call(fail)
    g.max_concurrency = 0
    clock.advance(1)
    with pytest.raises(ConcurrencyLimitError):
        await g.call(ok)
    g.max_concurrency = None
    assert g.breaker.state is CircuitState.HALF_OPEN
    assert await g.call(ok) == 1  # the refused call did not keep the permit
    assert g.breaker.state is CircuitState.CLOSED


def _latency_fault(latency_ms: int, **kw: object) -> ChaosFault:
    spec = FaultSpec(
        experiment_id="chaos-lat-1",
        chaos_type=ChaosType.LATENCY,
        target="svc",
        blast_radius=["svc"],
        latency_ms=latency_ms,
    )
    return build_fault(spec, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("style", ["call", "async with"])
async def test_item13_latency_fault_runs_inside_the_guard_timeout(style: str) -> None:
    g = make(failure_threshold=100)
    g.timeout_s = 0.2
    table = FaultTable()
    table.attach(g)
    table.install("svc", _latency_fault(1000))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        if style == "call":
            await g.call(ok)
        else:
            async with g:
                pass
    elapsed = loop.time() - start
    assert 0.19 <= elapsed < 0.9, elapsed  # the guard's 0.2 s, not the fault's 1.0 s
    assert g.breaker.consecutive_failures == 1  # a timeout is a failure
    assert not g._scopes and g.in_flight == 0


async def test_item13_removing_the_fault_ends_the_injected_wait() -> None:
    g = make()
    table = FaultTable()
    table.attach(g)
    table.install("svc", _latency_fault(600_000))
    loop = asyncio.get_running_loop()
    start = loop.time()
    call = asyncio.create_task(g.call(ok, 7))
    await asyncio.sleep(0.05)
    assert not call.done()
    table.remove("svc")
    assert await asyncio.wait_for(call, 5) == 7  # the fault is gone: the call goes on
    assert loop.time() - start < 5


async def test_item13_end_to_end_latency_lease_under_runtime_guard_timeout(redis_url: str) -> None:
    """The issue's input: runtime.guard("x", timeout_s=0.2) + a 1,000 ms LATENCY lease."""
    from antifragile.chaos.plane import FaultPlane
    from antifragile.inprocess.runtime import Runtime
    from antifragile.settings import Settings

    name = f"x-{uuid.uuid4().hex[:6]}"
    runtime = Runtime(
        Settings(redis_url=redis_url), instance_id="inst-e2e", bridge=False, metering=False
    )
    guard = runtime.guard(name, timeout_s=0.2, recovery=False)
    plane = FaultPlane.from_url(redis_url)
    lease = FaultSpec(
        experiment_id=f"chaos-e2e-{uuid.uuid4().hex[:8]}",
        chaos_type=ChaosType.LATENCY,
        target=name,
        blast_radius=[name],
        latency_ms=1000,
    )
    loop = asyncio.get_running_loop()
    try:
        await runtime.start()
        assert await plane.inject(lease)
        deadline = loop.time() + 10
        while guard.fault is None:
            assert loop.time() < deadline, "the lease never reached the guard"
            await asyncio.sleep(0.02)
        start = loop.time()
        with pytest.raises(TimeoutError):
            await guard.call(ok)
        assert loop.time() - start < 0.9  # ~0.2 s: the guard's timeout, not the latency
        # Without the guard's timeout the call waits out the latency, unless the
        # experiment removes its lease first (the unit test above uses 600 s).
        guard.timeout_s = None
        waiting = asyncio.create_task(guard.call(asyncio.sleep, 0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await plane.remove(lease.experiment_id)
        await asyncio.wait_for(waiting, 5)
        assert guard.fault is None
    finally:
        await plane.close()
        await runtime.stop()


async def test_calls_cancelled_by_the_callers_timeout_after_being_slow_are_failures(
    clock: FakeClock,
) -> None:
    g = make(clock, failure_threshold=2, slow_call_duration_s=1.0)
    hang = asyncio.Event()

    async def ctx() -> None:
        async with g:
            await hang.wait()

    for run in (lambda: g.call(hang.wait), ctx):
        task = asyncio.ensure_future(run())
        await asyncio.sleep(0)
        clock.advance(3.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert g.breaker.state is CircuitState.OPEN
    assert not g._scopes and g.in_flight == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # nan passed `value <= 0` and reached asyncio.timeout (a nan deadline in the
        # loop's timer heap); a bool or a float limit was silently taken as a count.
        ("timeout_s", float("nan")),
        ("timeout_s", float("inf")),
        ("timeout_s", True),
        ("timeout_s", "1"),
        ("max_concurrency", 2.5),
        ("max_concurrency", True),
        ("max_concurrency", "3"),
    ],
)
def test_bad_guard_settings_are_config_errors_naming_field_and_value(
    field: str, value: object
) -> None:
    with pytest.raises(ConfigError) as info:
        Guard("svc", CircuitBreaker("svc"), **{field: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert f"Guard.{field}:" in message and repr(value) in message
    g = make()
    with pytest.raises(ConfigError):
        setattr(g, field, value)
    assert getattr(g, field) is None and g._plain


def test_guard_settings_accept_ints_and_floats() -> None:
    g = Guard("svc", CircuitBreaker("svc"), timeout_s=2, max_concurrency=0)
    assert (g.timeout_s, g.max_concurrency) == (2, 0)
    g.timeout_s = 0.25
    assert g.timeout_s == 0.25


async def test_async_with_guard_entered_in_one_task_and_left_in_another() -> None:
    # With a timeout (tracked entries), an exit from another task found no scope of its
    # own, fell to the plain path and awaited None (TypeError), leaking the scope, its
    # concurrency slot and its armed timeout.
    g = make(failure_threshold=2)
    g.timeout_s = 5.0
    g.max_concurrency = 1
    for outcome in ("ok", "error"):
        stack = contextlib.AsyncExitStack()
        await asyncio.create_task(stack.enter_async_context(g))
        assert g.in_flight == 1

        async def leave(stack: contextlib.AsyncExitStack, outcome: str) -> None:
            if outcome == "error":
                await stack.__aexit__(Boom, Boom("late"), None)
            else:
                await stack.aclose()

        await asyncio.create_task(leave(stack, outcome))
        assert not g._scopes and g.in_flight == 0
        assert g._plain_open == 0 and g._plain_stale == 0
    assert g.breaker.consecutive_failures == 1
    g.timeout_s = None
    g.max_concurrency = None
    assert g._plain


# ---------------------------------------------------------------- randomised interleavings


async def _random_run(seed: int) -> list[tuple[object, ...]]:
    """Concurrent calls through every path, finished, failed or cancelled in random order
    across trips, half-open rounds, reconfigurations and a fault installed and removed
    mid-wait; returns every broken invariant seen."""
    import contextvars
    import random

    from antifragile.inprocess.breaker_state import CircuitState as S

    admitted: contextvars.ContextVar[tuple[int, S]] = contextvars.ContextVar("admitted")

    class Recording(CircuitBreaker):
        # Every call runs in its own task: the token and state it was admitted with
        # (a CLOSED admission reads _gen directly, so it is recorded in `one`).
        def acquire_permission(self) -> int:
            token = super().acquire_permission()
            admitted.set((token, self.state))
            return token

    rng = random.Random(seed)
    clock = FakeClock()

    def config() -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=rng.randint(1, 4),
            window_size=rng.randint(1, 6),
            minimum_calls=1,
            open_duration_s=1.0,
            half_open_max_calls=rng.randint(1, 3),
            half_open_max_wait_s=rng.choice([None, 2.0]),
            slow_call_duration_s=rng.choice([None, None, 0.5]),
        )

    b = Recording("s", config(), clock=clock)
    permits = [b.config.half_open_max_calls]
    plain = Guard("s", b)
    configured = Guard("s2", b, timeout_s=rng.choice([None, 100.0]), max_concurrency=3)
    table = FaultTable()
    table.attach(configured)
    long_latency = FaultSpec(
        experiment_id="chaos-mix-1",
        chaos_type=ChaosType.LATENCY,
        target="s2",
        blast_radius=["s2"],
        latency_ms=600_000,
    )
    running: dict[object, tuple[int, S]] = {}
    broken: list[tuple[object, ...]] = []

    async def one(kind: str, gate: asyncio.Event, fails: bool) -> int:
        admitted.set((b.generation, b.state))  # if admitted CLOSED, without a call

        async def dependency() -> int:
            key = object()
            running[key] = admitted.get()
            try:
                await gate.wait()
                if fails:
                    raise Boom
                return 1
            finally:
                del running[key]

        if kind == "call":
            return await b.call(dependency)
        if kind == "breaker_ctx":
            async with b:
                return await dependency()
        guard = plain if kind.endswith("plain") else configured
        if kind.startswith("guard_call"):
            return await guard.call(dependency)
        async with guard:
            return await dependency()

    pending: list[tuple[asyncio.Future[int], asyncio.Event]] = []
    every_call: list[asyncio.Future[int]] = []
    kinds = ["call", "breaker_ctx", "guard_call_plain", "guard_ctx_plain"]
    kinds += ["guard_call_configured", "guard_ctx_configured"]
    for _ in range(rng.randint(20, 120)):
        r = rng.random()
        if r < 0.45:
            gate = asyncio.Event()
            call = asyncio.ensure_future(one(rng.choice(kinds), gate, rng.random() < 0.6))
            pending.append((call, gate))
            every_call.append(call)
        elif r < 0.75 and pending:
            call, gate = pending.pop(rng.randrange(len(pending)))
            call.cancel() if rng.random() < 0.2 else gate.set()
        elif r < 0.85:
            clock.advance(rng.choice([0.3, 0.6, 1.1, 2.5]))
        elif r < 0.88:
            b.reconfigure(config())
            permits.append(b.config.half_open_max_calls)
        elif r < 0.94:
            if "s2" in table:
                table.remove("s2")
            else:
                table.install("s2", build_fault(long_latency))
        for _ in range(3):
            await asyncio.sleep(0)
        inflight = b.snapshot().half_open_in_flight
        if b.state is S.HALF_OPEN:
            trials = sum(
                1 for gen, st in running.values() if gen == b.generation and st is S.HALF_OPEN
            )
            if not trials <= inflight <= max(permits):
                broken.append(("trials", trials, inflight))
        if (
            b.failures_in_window != sum(b._window._ring)
            or b._entries.open < 0
            or b._entries.stale < 0
        ):
            broken.append(("breaker counts", b._entries.open, b._entries.stale))
        for g in (plain, configured):
            if min(g._plain_open, g._plain_stale, g.in_flight) < 0:
                broken.append(("guard counts", g.name, g._plain_open, g._plain_stale))
    table.clear()
    for _, gate in pending:
        gate.set()
    results = await asyncio.gather(*every_call, return_exceptions=True)
    expected = (Boom, CircuitOpenError, ConcurrencyLimitError, asyncio.CancelledError)
    broken += [
        ("raised", repr(x))
        for x in results
        if isinstance(x, BaseException) and not isinstance(x, expected)
    ]
    if b._entries.open or b._entries.stale or b._entries.scopes:
        broken.append(("breaker left open entries", b._entries.open, b._entries.stale))
    if b.state is S.HALF_OPEN and b.snapshot().half_open_in_flight:
        broken.append(("permit leaked", b.snapshot().half_open_in_flight))
    for g in (plain, configured):
        if g._plain_open or g._plain_stale or g._scopes or g.in_flight:
            broken.append(("guard left open entries", g.name))
    return broken


async def test_random_interleavings_keep_every_counter_and_permit_exact() -> None:
    failures = {seed: broken for seed in range(150) if (broken := await _random_run(seed))}
    assert not failures


@pytest.mark.parametrize("configured", [False, True])
async def test_guard_call_of_a_sync_callable_returns_its_result_and_counts_no_failure(
    configured: bool,
) -> None:
    # `await fn()` of a sync function raised "object int can't be used in 'await'
    # expression" after the function had run, and counted that TypeError as a failure
    # of the dependency: five such calls opened the breaker (and started a recovery).
    g = make(failure_threshold=2)
    if configured:
        g.timeout_s = 5.0
    calls: list[int] = []

    def sync_add(x: int) -> int:
        calls.append(x)
        return x + 1

    for i in range(5):
        assert await g.call(sync_add, i) == i + 1  # type: ignore[arg-type]
    assert calls == [0, 1, 2, 3, 4]
    assert g.breaker.state is CircuitState.CLOSED and g.breaker.consecutive_failures == 0
    assert g.calls == 5

    def raises_type_error() -> None:
        raise TypeError("a real error of the callable")

    for _ in range(2):
        with pytest.raises(TypeError, match="real error"):
            await g.call(raises_type_error)  # type: ignore[arg-type]
    assert g.breaker.state is CircuitState.OPEN  # the callable's own errors still count


async def test_a_closed_guard_still_enforces_its_breaker(clock: FakeClock) -> None:
    # close() detached the transition hook but left the plain fast-path flag set: once
    # the breaker opened, the closed guard kept calling the dependency (no admission).
    g = make(clock, failure_threshold=1)
    await g.call(ok)
    g.close()
    with pytest.raises(Boom):
        await g.breaker.call(fail)
    assert g.breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await g.call(ok)
    with pytest.raises(CircuitOpenError):
        async with g:
            pass
    g.breaker.reset()
    assert await g.call(ok) == 1  # still usable, on the admission path
    g.close()  # twice is harmless


async def test_plain_entries_open_when_the_guard_closes_never_decide_a_later_round(
    clock: FakeClock,
) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=1)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def inside() -> None:
        async with g:
            entered.set()
            await leave.wait()
            raise Boom

    task = asyncio.create_task(inside())
    await entered.wait()
    g.close()
    with pytest.raises(Boom):
        await g.breaker.call(fail)  # opens
    clock.advance(1)
    token = g.breaker.acquire_permission()  # a trial of the HALF_OPEN round
    leave.set()
    with pytest.raises(Boom):
        await task
    assert g.breaker.state is CircuitState.HALF_OPEN  # the old entry decided nothing
    g.breaker.on_success(token)
    assert g.breaker.state is CircuitState.CLOSED
    assert g._plain_open == 0 and g._plain_stale == 0


@pytest.mark.parametrize("timeout_s", [None, 100.0])
async def test_removing_a_fault_wakes_every_waiting_call_at_once(timeout_s: float | None) -> None:
    g = make()
    g.timeout_s = timeout_s
    table = FaultTable()
    table.attach(g)
    table.install("svc", _latency_fault(300_000))

    async def through_async_with() -> int:
        async with g:
            return 2

    calls = [asyncio.create_task(g.call(ok)) for _ in range(250)]
    calls += [asyncio.create_task(through_async_with()) for _ in range(250)]
    await asyncio.sleep(0.05)
    assert not any(c.done() for c in calls)
    loop = asyncio.get_running_loop()
    start = loop.time()
    table.remove("svc")
    results = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert results == [1] * 250 + [2] * 250
    assert loop.time() - start < 5  # promptly (bounded generously for a loaded machine)
    assert g.breaker.state is CircuitState.CLOSED and not g._scopes and g.in_flight == 0


@pytest.mark.parametrize("configured", [False, True])
async def test_guard_call_refuses_a_returned_generator_like_breaker_call(configured: bool) -> None:
    g = make(failure_threshold=1)
    if configured:
        g.timeout_s = 5.0

    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    for fn in (numbers, anumbers):
        with pytest.raises(TypeError, match="decorate the generator function"):
            await g.call(fn)  # type: ignore[arg-type]
    assert g.breaker.state is CircuitState.CLOSED and g.breaker.calls_in_window == 0


@pytest.mark.parametrize("style", ["call", "async with"])
async def test_the_guards_own_timeout_is_a_failure_whatever_failure_exceptions_says(
    style: str,
) -> None:
    # With failure_exceptions=(ConnectionError,), the guard's own TimeoutError was "an
    # exception outside failure_exceptions": a success, as if the dependency had
    # answered - a dependency that always hangs kept the breaker closed.
    cfg = CircuitBreakerConfig(failure_threshold=2, failure_exceptions=(ConnectionError,))
    g = Guard("svc", CircuitBreaker("svc", cfg), timeout_s=0.02)
    hang = asyncio.Event()
    for _ in range(2):
        with pytest.raises(TimeoutError):
            if style == "call":
                await g.call(hang.wait)
            else:
                async with g:
                    await hang.wait()
    assert g.breaker.state is CircuitState.OPEN

    # A TimeoutError the dependency raised itself is classified as configured (a
    # success here), and ignored_exceptions still excludes the guard's own timeouts.
    own = Guard("own", CircuitBreaker("own", cfg), timeout_s=5)

    async def raises_timeout() -> None:
        raise TimeoutError("the dependency's own answer")

    for _ in range(2):
        with pytest.raises(TimeoutError):
            await own.call(raises_timeout)
    assert own.breaker.state is CircuitState.CLOSED
    ignoring = CircuitBreakerConfig(failure_threshold=1, ignored_exceptions=(TimeoutError,))
    quiet = Guard("quiet", CircuitBreaker("quiet", ignoring), timeout_s=0.02)
    with pytest.raises(TimeoutError):
        await quiet.call(hang.wait)
    assert quiet.breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("style", ["call", "async with"])
async def test_latency_longer_than_the_timeout_removed_mid_sleep_lets_the_call_succeed(
    style: str,
) -> None:
    g = make(failure_threshold=1)
    g.timeout_s = 2.0
    table = FaultTable()
    table.attach(g)
    table.install("svc", _latency_fault(10_000))

    async def through_async_with() -> int:
        async with g:
            return 3

    call = asyncio.create_task(g.call(ok, 3) if style == "call" else through_async_with())
    await asyncio.sleep(0.05)
    table.remove("svc")
    assert await asyncio.wait_for(call, 1.5) == 3  # before the guard's 2 s timeout
    assert g.breaker.state is CircuitState.CLOSED and g.breaker.failures_in_window == 0
    assert not g._scopes


@pytest.mark.parametrize(
    "path",
    [
        "breaker.call",
        "async with breaker",
        "decorated",
        "decorated async generator",
        "guard.call",
        "async with guard",
        "guard.call in a fault wait",
        "async with guard in a fault wait",
        "wait_for(guard.call)",
    ],
)
async def test_a_cancelled_trial_frees_its_permit_exactly_once(clock: FakeClock, path: str) -> None:
    g = make(clock, failure_threshold=1, open_duration_s=1, half_open_max_calls=1)
    b = g.breaker
    hang = asyncio.Event()
    if "fault" in path:
        table = FaultTable()
        table.attach(g)
        table.install("svc", _latency_fault(600_000))

    @b
    async def decorated() -> None:
        await hang.wait()

    @b
    async def stream() -> AsyncIterator[int]:
        yield 1
        await hang.wait()
        yield 2

    async def run() -> None:
        if path == "breaker.call":
            await b.call(hang.wait)
        elif path == "async with breaker":
            async with b:
                await hang.wait()
        elif path == "decorated":
            await decorated()
        elif path == "decorated async generator":
            async for _ in stream():
                pass
        elif path.startswith("guard.call"):
            await g.call(hang.wait)
        elif path.startswith("async with guard"):
            async with g:
                await hang.wait()
        else:
            await asyncio.wait_for(g.call(hang.wait), 0.5)  # long enough for the checks below

    with pytest.raises(Boom):
        await b.call(fail)
    for _ in range(3):  # three rounds: a double free would show as a negative count
        clock.advance(1)
        task = asyncio.create_task(run())
        for _ in range(5):
            await asyncio.sleep(0)
        assert b.state is CircuitState.HALF_OPEN and b.snapshot().half_open_in_flight == 1
        if path.startswith("wait_for"):
            with pytest.raises(TimeoutError):
                await task
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert b.state is CircuitState.HALF_OPEN and b.snapshot().half_open_in_flight == 0
        assert b._half_open_inflight == 0
        with pytest.raises(Boom):
            await b.call(fail)  # the freed permit admits the next trial, which fails
        assert b.state is CircuitState.OPEN
    assert not g._scopes and g.in_flight == 0 and not b._entries.scopes
