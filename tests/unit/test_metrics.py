"""Prometheus endpoints: the runtime's live state at scrape time, and the worker's."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socketserver
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.health import HealthAggregator, HealthAggregatorConfig
from antifragile.inprocess.metering import MeteringIntegration
from antifragile.inprocess.metrics import RuntimeCollector, WorkflowCountCollector, serve
from antifragile.inprocess.runtime import Runtime
from antifragile.settings import Settings
from antifragile.stack.processes import free_port
from tests.unit.conftest import FakeClock


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom


def collector_of(runtime: Runtime) -> RuntimeCollector:
    return RuntimeCollector(runtime.instance_id, runtime.health, runtime.faults, runtime.metering)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


async def test_runtime_serves_breaker_state_health_and_faults_when_a_port_is_set() -> None:
    port = free_port()
    runtime = Runtime(
        Settings(metrics_port=port), instance_id="svc-1", bridge=False, metering=False
    )
    runtime.guard("redis", breaker_config=CircuitBreakerConfig(failure_threshold=1))
    runtime.guard("postgres")
    await runtime.start()
    try:
        with contextlib.suppress(Boom):
            await runtime.guards["redis"].call(fail)
        text = scrape(port)
    finally:
        await runtime.stop()
    assert 'antifragile_breaker_state{dependency="redis",instance="svc-1"} 2.0' in text
    assert 'antifragile_breaker_state{dependency="postgres",instance="svc-1"} 0.0' in text
    assert 'antifragile_health_score{instance="svc-1"} 0.5' in text
    assert 'antifragile_faults_active{instance="svc-1"} 0.0' in text


async def test_metering_counters_follow_the_accounting() -> None:
    runtime = Runtime(Settings(), instance_id="m", bridge=False)
    guard = runtime.guard("cache")

    async def ok() -> None:
        return None

    for _ in range(5):
        await guard.call(ok)
    registry = CollectorRegistry()
    registry.register(collector_of(runtime))
    text = generate_latest(registry).decode()
    assert 'antifragile_metering_recorded_total{instance="m"} 5.0' in text
    assert 'antifragile_metering_dropped_total{instance="m"} 0.0' in text


class NoOpFault:
    async def apply(self, guard: object) -> None:
        return None

    def on_install(self, guard: object) -> None:
        return None

    def on_remove(self, guard: object) -> None:
        return None


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_faults_active_counts_the_faults_this_process_enforces() -> None:
    runtime = Runtime(Settings(), instance_id="f", bridge=False, metering=False)
    runtime.guard("db")
    runtime.guard("cache")
    registry = CollectorRegistry()
    registry.register(collector_of(runtime))
    assert sample(registry, "antifragile_faults_active", instance="f") == 0.0
    runtime.faults.install("db", NoOpFault())
    runtime.faults.install("cache", NoOpFault())
    assert sample(registry, "antifragile_faults_active", instance="f") == 2.0
    runtime.faults.remove("db")
    assert sample(registry, "antifragile_faults_active", instance="f") == 1.0


async def test_breaker_state_per_dependency_and_health_status_follow_a_forced_open() -> None:
    runtime = Runtime(
        Settings(),
        instance_id="b",
        bridge=False,
        metering=False,
        health_config=HealthAggregatorConfig(stabilization_window_s=0),  # no anti-flapping
    )
    runtime.guard("db")
    runtime.guard("cache")
    registry = CollectorRegistry()
    registry.register(collector_of(runtime))
    runtime.breakers["db"].force_open()
    assert sample(registry, "antifragile_breaker_state", instance="b", dependency="db") == 3.0
    assert sample(registry, "antifragile_breaker_state", instance="b", dependency="cache") == 0.0
    assert sample(registry, "antifragile_health_score", instance="b") == 0.5
    assert sample(registry, "antifragile_health_status", instance="b", status="DEGRADED") == 1.0
    assert sample(registry, "antifragile_health_status", instance="b", status="HEALTHY") == 0.0


async def test_metering_written_and_dropped_follow_a_full_buffer() -> None:
    metering = MeteringIntegration(instance_id="w", max_buffer=2, flush_at=2)
    runtime = Runtime(Settings(), instance_id="w", bridge=False, metering=metering)
    registry = CollectorRegistry()
    registry.register(collector_of(runtime))
    for _ in range(3):
        metering.record_usage("t", "op")
    assert sample(registry, "antifragile_metering_recorded_total", instance="w") == 3.0
    assert sample(registry, "antifragile_metering_dropped_total", instance="w") == 1.0
    assert sample(registry, "antifragile_metering_buffered", instance="w") == 2.0
    assert sample(registry, "antifragile_metering_written_total", instance="w") == 0.0
    assert sample(registry, "antifragile_metering_write_errors_total", instance="w") == 0.0


class FakeCount:
    def __init__(self, count: int) -> None:
        self.count = count


class FakeVisibility:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.queries: list[str] = []
        self.fail = False

    async def count_workflows(self, query: str) -> FakeCount:
        if self.fail:
            raise RuntimeError("visibility unavailable")
        self.queries.append(query)
        return FakeCount(self.counts.get(query, 0))


async def test_worker_serves_recoveries_and_experiments_by_state_from_visibility() -> None:
    client = FakeVisibility(
        {
            'AfKind="recovery" AND AfState="RUNNING"': 3,
            'AfKind="chaos" AND AfState="INJECTING"': 1,
        }
    )
    counts = WorkflowCountCollector(
        client,  # type: ignore[arg-type]
        {"recovery": ["RUNNING", "SUCCEEDED"], "chaos": ["INJECTING"]},
    )
    registry = CollectorRegistry()
    registry.register(counts)
    assert sample(registry, "antifragile_workflows", kind="recovery", state="RUNNING") is None
    await counts.refresh()
    assert sample(registry, "antifragile_workflows", kind="recovery", state="RUNNING") == 3.0
    assert sample(registry, "antifragile_workflows", kind="recovery", state="SUCCEEDED") == 0.0
    assert sample(registry, "antifragile_workflows", kind="chaos", state="INJECTING") == 1.0
    assert len(client.queries) == 3
    client.fail = True  # a failed refresh keeps serving the last counts
    with contextlib.suppress(RuntimeError):
        await counts.refresh()
    assert sample(registry, "antifragile_workflows", kind="recovery", state="RUNNING") == 3.0


def test_worker_counts_every_recovery_state_and_chaos_phase() -> None:
    from antifragile.models.chaos import ChaosPhase
    from antifragile.models.recovery import RecoveryState
    from workers.main import workflow_states

    states = workflow_states()
    assert set(states["recovery"]) == {s.value for s in RecoveryState}
    assert set(states["chaos"]) == {p.value for p in ChaosPhase}


def documented_metrics() -> set[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Observability") :]
    section = section.split("\n## ", 1)[0]  # up to the next top-level section
    return set(re.findall(r"`(antifragile_[a-z_]+)`", section))


async def test_the_readme_metrics_table_names_exactly_the_metrics_served() -> None:
    documented = documented_metrics()
    runtime = Runtime(Settings(), instance_id="r", bridge=False)
    runtime.guard("db")
    counts = WorkflowCountCollector(FakeVisibility({}), {"recovery": ["RUNNING"]})  # type: ignore[arg-type]
    await counts.refresh()
    registry = CollectorRegistry()
    registry.register(collector_of(runtime))
    registry.register(counts)
    served = {
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    assert documented == served


async def test_a_scrape_from_the_server_thread_changes_nothing_and_runs_no_callback(
    clock: FakeClock,
) -> None:
    # Item 16: reading breaker.state from the scrape thread moved OPEN -> HALF_OPEN there
    # and ran listeners and health callbacks (an asyncio.Event.set among them) on it.
    port = free_port()
    runtime = Runtime(
        Settings(metrics_port=port), instance_id="s", bridge=False, metering=False, clock=clock
    )
    guard = runtime.guard(
        "db", breaker_config=CircuitBreakerConfig(failure_threshold=1, open_duration_s=10)
    )
    runtime.guard("cache")
    changes: list[tuple[str, int]] = []
    health_calls: list[int] = []
    guard.breaker.on_state_change(lambda c: changes.append((c.new.value, threading.get_ident())))
    runtime.health.on_health_change(lambda r: health_calls.append(threading.get_ident()))
    await runtime.start()
    try:
        with contextlib.suppress(Boom):
            await guard.call(fail)
        await asyncio.sleep(0.01)  # listeners and callbacks of the real change run here
        seen_changes, seen_calls = list(changes), list(health_calls)
        retry_after = guard.breaker.retry_after()
        clock.advance(11)  # the open duration has passed: a read must not act on it
        text = await asyncio.to_thread(scrape, port)
        await asyncio.sleep(0.01)
        assert 'antifragile_breaker_state{dependency="db",instance="s"} 2.0' in text
        assert changes == seen_changes == [("OPEN", threading.get_ident())]
        assert health_calls == seen_calls
        assert all(t == threading.get_ident() for t in health_calls)
        assert retry_after is not None
    finally:
        await runtime.stop()


def test_the_collector_is_built_from_the_parts_it_reads(clock: FakeClock) -> None:
    health = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=0), clock=clock)
    breaker = CircuitBreaker("db", clock=clock)
    health.register_circuit_breaker("db", breaker, weight=0.3)
    for i in range(3):
        health.register_circuit_breaker(f"o{i}", CircuitBreaker(f"o{i}", clock=clock), 0.3)
    health.breakers["o0"].force_open()
    breaker.force_open()
    registry = CollectorRegistry()
    registry.register(RuntimeCollector("p", health, faults=[]))
    assert sample(registry, "antifragile_health_score", instance="p") == 0.5
    assert sample(registry, "antifragile_health_status", instance="p", status="DEGRADED") == 1.0
    assert sample(registry, "antifragile_breaker_state", instance="p", dependency="db") == 3.0
    assert sample(registry, "antifragile_metering_recorded_total", instance="p") is None


async def test_scrapes_in_a_loop_while_the_loop_changes_breakers_and_during_shutdown() -> None:
    # A real Prometheus HTTP scrape, over and over on its own thread, while the event loop
    # trips and recovers breakers, adds guards and records usage - then stops the
    # runtime under it. Every scrape must parse; nothing may run on the scrape thread.
    port = free_port()
    metering = MeteringIntegration(stop_timeout_s=0)  # buffers only: nothing to wait for
    runtime = Runtime(
        Settings(metrics_port=port), instance_id="stress", bridge=False, metering=metering
    )
    cfg = CircuitBreakerConfig(failure_threshold=1, open_duration_s=0.001)
    guards = [runtime.guard(f"g{i}", breaker_config=cfg) for i in range(4)]
    loop_thread = threading.get_ident()
    foreign: list[str] = []
    for g in guards:
        g.breaker.on_state_change(
            lambda c: foreign.append(c.new.value) if threading.get_ident() != loop_thread else None
        )
    runtime.health.on_health_change(
        lambda r: foreign.append("health") if threading.get_ident() != loop_thread else None
    )
    stop = threading.Event()
    scrapes: list[str] = []
    errors: list[BaseException] = []

    def scraper() -> None:
        while not stop.is_set():
            try:
                text = scrape(port)
            except urllib.error.HTTPError as exc:  # a collector raised: HTTP 500
                errors.append(exc)
                return
            except OSError:
                continue  # not listening yet, or closing/closed: refused is fine
            except BaseException as exc:
                errors.append(exc)
                return
            scrapes.append(text)

    async def ok() -> None:
        return None

    await runtime.start()
    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(scrapes) < 15:
            assert asyncio.get_running_loop().time() < deadline, (len(scrapes), errors)
            for i, g in enumerate(guards):
                with contextlib.suppress(Exception):
                    await g.call(fail if i % 2 else ok)
                metering.record_usage("t", f"op{i}")
            runtime.guard(f"extra{len(scrapes) % 7}")
            await asyncio.sleep(0.001)  # let the scrape thread have the GIL now and then
        await runtime.stop()  # scrapes continue against a closing server
    finally:
        stop.set()
        thread.join(10)
        await runtime.stop()
    assert errors == []
    assert foreign == []
    for text in scrapes:
        assert 'antifragile_health_score{instance="stress"}' in text
        assert re.search(r'antifragile_breaker_state\{dependency="g0",instance="stress"\}', text)


def test_closing_the_server_does_not_wait_out_its_poll_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Runtime.stop() closes the server on the event loop's thread, and close() waited for
    # the server thread's select() to time out (0.5 s) - the loop stood still meanwhile.
    # With a poll interval of an hour, close() must still return at once.
    monkeypatch.setattr(socketserver.BaseServer.serve_forever, "__defaults__", (3600.0,))
    registry = CollectorRegistry()
    server = serve(registry, 0, host="127.0.0.1")
    assert "python_info" not in scrape(server.port)  # serving (an empty registry)
    closer = threading.Thread(target=server.close, daemon=True)
    closer.start()
    closer.join(60)  # a bound for the test only: unfixed, this waits an hour
    assert not closer.is_alive()
    server.close()  # idempotent
    with pytest.raises(OSError):
        scrape(server.port)
