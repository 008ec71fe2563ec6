"""The Redis fault plane with a real Redis: leases reach the fault table, renewals keep them,
and an unrenewed lease is dropped by the process itself — even with Redis stopped."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from antifragile.chaos.plane import (
    REMOVED_MAX,
    REMOVED_MEMORY_S,
    FaultConflictError,
    FaultPlane,
    fault_key,
    impact_key,
)
from antifragile.constants import REDIS_HALT_KEY
from antifragile.fleet_health import snapshot_process_score, snapshot_score
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.fault_subscriber import FaultSubscriber
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.guard import Guard
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import ChaosType
from antifragile.testing import FakeClock, eventually
from tests.unit.conftest import RestartableRedis

pytestmark = pytest.mark.timeout(60)


def spec(chaos_type: ChaosType = ChaosType.NETWORK_PARTITION, **kw: Any) -> FaultSpec:
    target = kw.pop("target", f"dep-{uuid.uuid4().hex[:6]}")
    base: dict[str, Any] = {
        "experiment_id": f"chaos-p-{uuid.uuid4().hex[:8]}",
        "chaos_type": chaos_type,
        "target": target,
        "blast_radius": [target],
        "ttl_ms": 5000,
    }
    base.update(kw)
    return FaultSpec.model_validate(base)


@pytest.fixture
async def plane(redis_url: str) -> AsyncIterator[FaultPlane]:
    p = FaultPlane.from_url(redis_url)
    await p.clear_halt()
    yield p
    await p.clear_halt()
    await p.close()


@pytest.fixture
async def subscriber(redis_url: str) -> AsyncIterator[FaultSubscriber]:
    sub = FaultSubscriber(
        FaultTable(), redis_url, instance_id=f"inst-{uuid.uuid4().hex[:6]}", resync_interval_s=0.3
    )
    await sub.start()
    yield sub
    await sub.stop()


async def test_injected_lease_reaches_the_table_and_removal_takes_it_away(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec()
    assert await plane.inject(s)
    await eventually(lambda: subscriber.table.get(s.target) is not None, timeout=3)
    ttl = await plane.lease_ttl_ms(s.experiment_id)
    assert ttl is not None and 0 < ttl <= 5000
    assert await plane.remove(s.experiment_id)
    await eventually(lambda: subscriber.table.get(s.target) is None, timeout=3)
    assert not await plane.remove(s.experiment_id)  # idempotent


async def test_a_subscriber_started_later_loads_current_leases(
    plane: FaultPlane, redis_url: str
) -> None:
    s = spec()
    await plane.inject(s)
    table = FaultTable()
    async with FaultSubscriber(table, redis_url, instance_id="late") as sub:
        assert table.get(s.target) is not None  # loaded during start, before any message
        assert s.experiment_id in sub.active()
    assert table.get(s.target) is None  # stopping drops it locally
    await plane.remove(s.experiment_id)


async def test_renewals_keep_the_fault_and_without_them_it_expires_locally(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec(ttl_ms=600)
    await plane.inject(s)
    await eventually(lambda: subscriber.table.get(s.target) is not None, timeout=3)
    for _ in range(6):
        # Pacing, not waiting for a result: the lease's TTL runs on Redis's clock, so
        # 1.2 s must really pass for the renewals to be what keeps the 600 ms lease.
        await asyncio.sleep(0.2)
        assert (await plane.renew(s.experiment_id, 600)).renewed
    assert subscriber.table.get(s.target) is not None
    await eventually(lambda: subscriber.table.get(s.target) is None, timeout=3)

    async def lease_gone() -> bool:  # Redis's clock, not read by the renewal below
        return await plane.lease_ttl_ms(s.experiment_id) is None

    await eventually(lease_gone, timeout=3)
    assert (await plane.renew(s.experiment_id, 600)).missing


async def test_lease_expiry_drops_the_fault_even_when_redis_is_gone(
    own_redis: RestartableRedis,
) -> None:
    plane = FaultPlane.from_url(own_redis.url)
    table = FaultTable()
    guard = Guard("db", CircuitBreaker("db"))
    table.attach(guard)
    sub = FaultSubscriber(table, own_redis.url, instance_id="solo", resync_interval_s=0.2)
    await sub.start()
    try:
        s = spec(target="db", ttl_ms=1500)
        await plane.inject(s)
        await eventually(lambda: guard.fault is not None, timeout=3)
        await plane.close()
        own_redis.stop()  # controller and Redis both gone: nobody can remove the lease
        with pytest.raises(ConnectionError):
            await guard.call(asyncio.sleep, 0)

        def expired_while_disconnected() -> bool:
            assert guard.fault is None
            assert not sub.connected
            return True

        await eventually(expired_while_disconnected, timeout=5)  # the lease: 1.5 s
        assert await guard.call(asyncio.sleep, 0, "ok") == "ok"
        own_redis.start()  # Redis back (empty): the fault stays gone
        # connected turns True at the end of a resync's reads, and the rest of that
        # resync runs without awaiting: once it is seen, Redis's view has been applied.
        await eventually(lambda: sub.connected, timeout=10)
        assert guard.fault is None
    finally:
        await sub.stop()


async def test_the_timer_restores_a_forced_open_breaker_without_any_call(
    plane: FaultPlane, redis_url: str
) -> None:
    table = FaultTable()
    guard = Guard("cb", CircuitBreaker("cb"))
    table.attach(guard)
    async with FaultSubscriber(table, redis_url, instance_id="cb-inst", resync_interval_s=10):
        s = spec(ChaosType.CIRCUIT_BREAKER, target="cb", ttl_ms=400)
        await plane.inject(s)
        await eventually(lambda: guard.breaker.state is CircuitState.FORCED_OPEN, timeout=3)
        await eventually(lambda: guard.breaker.state is CircuitState.CLOSED, timeout=2)


async def test_halt_switch_drops_every_fault_and_refuses_injection_and_renewal(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec()
    await plane.inject(s)
    await eventually(lambda: subscriber.table.get(s.target) is not None, timeout=3)
    await plane.set_halt("incident", by="oncall")
    await eventually(lambda: subscriber.table.get(s.target) is None, timeout=3)
    assert subscriber.halted
    assert (await plane.halt_status()).reason == "incident"
    assert not await plane.inject(spec())
    assert (await plane.renew(s.experiment_id, 5000)).halted
    await plane.clear_halt()
    await eventually(lambda: not subscriber.halted, timeout=3)
    await plane.remove(s.experiment_id)


async def test_halt_set_while_a_process_was_disconnected_is_seen_on_resync(
    plane: FaultPlane, subscriber: FaultSubscriber, redis_url: str
) -> None:
    s = spec()
    await plane.inject(s)
    await eventually(lambda: subscriber.table.get(s.target) is not None, timeout=3)
    raw = aioredis.from_url(redis_url)
    await raw.set(REDIS_HALT_KEY, json.dumps({"reason": "quiet"}))  # no message published
    await eventually(lambda: subscriber.halted, timeout=3)
    assert subscriber.table.get(s.target) is None
    await raw.aclose()
    await plane.remove(s.experiment_id)


async def test_overlapping_blast_radius_is_a_conflict(plane: FaultPlane) -> None:
    a = spec(blast_radius=["shared-x"], target="shared-x")
    b = spec(blast_radius=["shared-x"], target="shared-x")
    await plane.inject(a)
    with pytest.raises(FaultConflictError, match="already injects"):
        await plane.inject(b)
    assert await plane.inject(a)  # the same experiment rewriting its lease is fine
    await plane.remove(a.experiment_id)


async def test_instance_selection_installs_only_on_chosen_instances(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec(instances=["someone-else"])
    await plane.inject(s)
    # A barrier instead of a sleep: a lease for this instance, published after s on the
    # same channel, arrives after s did; then a resync reads both leases from Redis.
    mine = spec(instances=[subscriber.instance_id])
    await plane.inject(mine)
    await eventually(lambda: subscriber.table.get(mine.target) is not None, timeout=3)
    await subscriber.resync()
    assert subscriber.table.get(s.target) is None
    assert subscriber.instance_id in await plane.known_instances()
    await plane.remove(s.experiment_id)
    await plane.remove(mine.experiment_id)


async def test_affected_calls_are_published_per_instance(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec(ChaosType.ERROR, error_rate=1.0)
    guard = Guard(s.target, CircuitBreaker(s.target))
    subscriber.table.attach(guard)  # type: ignore[attr-defined]
    await plane.inject(s)
    await eventually(lambda: guard.fault is not None, timeout=3)
    for _ in range(4):  # below the breaker's 5 consecutive failures
        with pytest.raises(RuntimeError):
            await guard.call(asyncio.sleep, 0)
    await plane.remove(s.experiment_id)
    await eventually(lambda: guard.fault is None, timeout=3)
    await subscriber.flush()
    impact = await plane.impact(s.experiment_id)
    assert impact.affected == {subscriber.instance_id: 4}
    assert impact.seen == {subscriber.instance_id: 4}


async def test_a_removed_experiment_is_never_reinstalled_by_a_stale_read(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    s = spec()
    await plane.inject(s)
    await eventually(lambda: subscriber.table.get(s.target) is not None, timeout=3)
    await plane.remove(s.experiment_id)
    await eventually(lambda: subscriber.table.get(s.target) is None, timeout=3)
    subscriber.handle_message(json.dumps({"op": "install", "spec": s.model_dump(mode="json")}))
    assert subscriber.table.get(s.target) is None


def test_snapshot_score_reads_the_runtime_format() -> None:
    snap = {
        "health_score": 0.9,
        "circuit_details": {"db": {"state": "OPEN"}, "cache": {"state": "HALF_OPEN"}},
    }
    assert snapshot_score(snap, ["db"]) == 0.0
    assert snapshot_score(snap, ["db", "cache"]) == 0.25
    assert snapshot_score(snap, ["other"]) is None  # this process does not guard it
    assert snapshot_score({"health_score": 0.7}, ["x"]) == 0.7


async def test_lease_keys_have_a_ttl(plane: FaultPlane, redis_url: str) -> None:
    s = spec(ttl_ms=3000)
    await plane.inject(s)
    raw = aioredis.from_url(redis_url)
    assert 0 < await raw.pttl(fault_key(s.experiment_id)) <= 3000
    await raw.aclose()
    await plane.remove(s.experiment_id)


def test_process_score_is_the_aggregate_of_processes_guarding_a_target() -> None:
    snap = {
        "health_score": 0.5,
        "circuit_details": {"db": {"state": "OPEN"}, "cache": {"state": "CLOSED"}},
    }
    # The guard sees the process (0.5), verification the target's breaker (0.0).
    assert snapshot_process_score(snap, ["db"]) == 0.5
    assert snapshot_score(snap, ["db"]) == 0.0
    assert snapshot_process_score(snap, ["other"]) is None
    # Without an overall score, the targets' breakers are all there is.
    assert snapshot_process_score({"breakers": {"db": "OPEN"}}, ["db"]) == 0.0
    assert snapshot_process_score({"score": 0.8}, ["db"]) == 0.8


async def test_every_opening_and_refusal_is_published_and_read_back(
    plane: FaultPlane, subscriber: FaultSubscriber
) -> None:
    # Issue 12, item 12: a breaker that opened six times is counted six times, and
    # calls a forced-open breaker refused are affected calls.
    s = spec(ChaosType.CIRCUIT_BREAKER)
    guard = Guard(s.target, CircuitBreaker(s.target))
    subscriber.table.attach(guard)  # type: ignore[attr-defined]
    inst = subscriber.instance_id
    await plane.inject(s)
    await eventually(lambda: guard.breaker.state is CircuitState.FORCED_OPEN, timeout=3)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            await guard.call(asyncio.sleep, 0)
    await subscriber.flush()
    # Reopened by hand under the fault, twice more: each opening is one more.
    for _ in range(2):
        guard.breaker.reset("test")
        guard.breaker.force_open("test")
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await guard.call(asyncio.sleep, 0)
    await subscriber.flush()  # only what is new is sent: the sums are right
    await plane.remove(s.experiment_id)
    await eventually(lambda: guard.fault is None, timeout=3)
    await subscriber.flush()
    impact = await plane.impact(s.experiment_id)
    assert impact.affected == {inst: 8} and impact.seen == {inst: 8}
    assert impact.refused == {inst: 8}
    assert impact.openings == {f"{inst}/{s.target}: FORCED_OPEN": 3}
    assert impact.breakers == [f"{inst}/{s.target}: FORCED_OPEN"]


async def test_a_breaker_listed_by_an_older_process_counts_as_one_opening(
    plane: FaultPlane, redis_url: str
) -> None:
    raw = aioredis.from_url(redis_url)
    try:
        await raw.sadd(impact_key("chaos-old-1", "breakers"), "old-1/db: OPEN")
        await raw.hset(impact_key("chaos-old-1", "openings"), "new-1/db: OPEN", 4)
        await raw.sadd(impact_key("chaos-old-1", "breakers"), "new-1/db: OPEN")
    finally:
        await raw.aclose()
    impact = await plane.impact("chaos-old-1")
    assert impact.openings == {"old-1/db: OPEN": 1, "new-1/db: OPEN": 4}
    assert impact.refused == {}


async def test_concurrent_injections_on_one_target_let_exactly_one_pass(redis_url: str) -> None:
    """Twenty experiments inject on one target at the same moment, each from its own
    connection (as twenty activity attempts on different workers would): one lease is
    written, every other experiment is refused, and no lease but the winner's exists."""
    target = f"race-{uuid.uuid4().hex[:6]}"
    planes = [FaultPlane.from_url(redis_url) for _ in range(20)]
    specs = [spec(target=target, blast_radius=[target]) for _ in planes]
    # Each plane's connection is open before the race, so all start together.
    await asyncio.gather(*(p.halt_status() for p in planes))
    try:
        results = await asyncio.gather(
            *(p.inject(s) for p, s in zip(planes, specs, strict=True)), return_exceptions=True
        )
        winners = [s for s, r in zip(specs, results, strict=True) if r is True]
        refused = [r for r in results if isinstance(r, FaultConflictError)]
        assert len(winners) == 1 and len(refused) == 19, results
        leases = await planes[0].active_leases()
        mine = [i for i, (sp, _) in leases.items() if target in sp.blast_radius]
        assert mine == [winners[0].experiment_id]
    finally:
        for s in specs:
            await planes[0].remove(s.experiment_id)
        for p in planes:
            await p.close()


async def test_a_conflict_on_any_member_of_the_blast_radius_refuses_the_whole_lease(
    plane: FaultPlane,
) -> None:
    a, b, c = (f"br-{uuid.uuid4().hex[:6]}" for _ in range(3))
    first = spec(target=a, blast_radius=[a, b])
    second = spec(target=c, blast_radius=[c, b])
    assert await plane.inject(first)
    with pytest.raises(FaultConflictError, match=b):
        await plane.inject(second)
    assert second.experiment_id not in await plane.active_leases()
    await plane.remove(first.experiment_id)
    assert await plane.inject(second)  # the target is free again
    await plane.remove(second.experiment_id)


async def test_a_halt_set_before_an_injection_is_never_overtaken(
    plane: FaultPlane, redis_url: str
) -> None:
    raw = aioredis.from_url(redis_url)
    s = spec()
    await raw.set(REDIS_HALT_KEY, json.dumps({"reason": "quiet"}))
    assert not await plane.inject(s)
    assert await raw.exists(fault_key(s.experiment_id)) == 0
    await raw.delete(REDIS_HALT_KEY)
    await raw.aclose()


async def test_removed_ids_are_forgotten_after_a_while_and_never_pile_up(
    clock: FakeClock,
) -> None:
    """A long-lived service: removed experiment ids stay only as long as a stale read
    could bring one back, and never more than REMOVED_MAX of them (no Redis needed)."""
    table = FaultTable()
    sub = FaultSubscriber(table, "redis://127.0.0.1:1/0", instance_id="long", clock=clock)
    s = spec(ttl_ms=600_000)
    install = json.dumps({"op": "install", "spec": s.model_dump(mode="json")})
    sub.handle_message(install)
    assert table.get(s.target) is not None
    sub.handle_message(json.dumps({"op": "remove", "experiment_id": s.experiment_id}))
    assert table.get(s.target) is None and sub.removed_remembered == 1
    clock.advance(REMOVED_MEMORY_S / 2)
    sub.handle_message(install)  # a stale install within the window: still refused
    assert table.get(s.target) is None
    for i in range(REMOVED_MAX + 500):  # a burst: the cap holds
        sub.handle_message(json.dumps({"op": "remove", "experiment_id": f"chaos-burst-{i}"}))
    assert sub.removed_remembered == REMOVED_MAX
    for i in range(1000):  # then experiments a second apart, for a long time
        clock.advance(1.0)
        sub.handle_message(json.dumps({"op": "remove", "experiment_id": f"chaos-old-{i}"}))
    # Only the last REMOVED_MEMORY_S seconds' worth is remembered.
    assert int(REMOVED_MEMORY_S) - 1 <= sub.removed_remembered <= int(REMOVED_MEMORY_S)
    clock.advance(REMOVED_MEMORY_S + 1)
    sub.handle_message(json.dumps({"op": "remove", "experiment_id": "chaos-last"}))
    assert sub.removed_remembered == 1


@pytest.fixture
async def quiet_subscriber(redis_url: str) -> AsyncIterator[FaultSubscriber]:
    """A started subscriber whose periodic resync does not run during the test."""
    sub = FaultSubscriber(
        FaultTable(), redis_url, instance_id=f"q-{uuid.uuid4().hex[:6]}", resync_interval_s=3600
    )
    resyncs_done = 0
    resync = sub.resync

    async def counted_resync() -> None:
        nonlocal resyncs_done
        await resync()
        resyncs_done += 1

    sub.resync = counted_resync  # type: ignore[method-assign]
    await sub.start()
    # start's own resync, then the listener's first one (after it subscribed) are over.
    await eventually(lambda: resyncs_done >= 2, timeout=3)
    del sub.resync  # the tests call the real method
    yield sub
    await sub.stop()


async def test_a_halt_message_seen_during_a_resync_is_not_undone_by_its_older_view(
    plane: FaultPlane, quiet_subscriber: FaultSubscriber
) -> None:
    """The resync read Redis before the halt was written (here: the halt key is never
    written, which is what such a read returns); the halt message arrives while it runs.
    The resync must not clear the halt nor reinstall the fault the halt just dropped."""
    sub = quiet_subscriber
    s = spec()
    await plane.inject(s)
    await eventually(lambda: sub.table.get(s.target) is not None, timeout=3)
    resync = asyncio.create_task(sub.resync())
    await asyncio.sleep(0)  # the resync is waiting for Redis now
    sub.handle_message(json.dumps({"op": "halt", "reason": "incident"}))
    assert sub.table.get(s.target) is None
    await resync
    assert sub.halted and sub.table.get(s.target) is None
    sub.handle_message(json.dumps({"op": "resume"}))
    await plane.remove(s.experiment_id)


async def test_an_install_seen_during_a_resync_is_not_taken_for_a_removed_lease(
    plane: FaultPlane, quiet_subscriber: FaultSubscriber
) -> None:
    """The resync read the leases before this one was written; its install message arrives
    while the resync runs. The fault stays (and is not remembered as removed)."""
    sub = quiet_subscriber
    s = spec()
    resync = asyncio.create_task(sub.resync())
    await asyncio.sleep(0)
    sub.handle_message(json.dumps({"op": "install", "spec": s.model_dump(mode="json")}))
    await resync
    assert sub.table.get(s.target) is not None
    await plane.inject(s)  # the lease the message announced
    await sub.resync()
    assert sub.table.get(s.target) is not None and sub.removed_remembered == 0
    await plane.remove(s.experiment_id)
