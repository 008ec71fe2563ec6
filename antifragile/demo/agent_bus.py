"""A small "agent bus": messages delivered to agents, persisted to Redis through a Guard.

The message path is what a real service's hot path looks like: ``publish`` is a
synchronous append; the dispatcher delivers each message to its agent through the
``agents`` guard and persists delivered messages to a Redis Stream in pipelined batches
through the ``redis`` guard. When Redis fails (or chaos says it does) the breaker opens,
delivery goes on, and persistence waits in a bounded outbox until Redis is back — the
service degrades instead of stopping. With ``runtime=None`` the same path runs with no
guard at all: the baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.guard import ConcurrencyLimitError, Guard
from antifragile.inprocess.runtime import Runtime

PERSIST_ERRORS = (
    CircuitOpenError,
    ConcurrencyLimitError,
    ConnectionError,
    TimeoutError,
    OSError,
    RuntimeError,
    aioredis.RedisError,
)
"""What a failed persistence looks like; the batch stays in the outbox."""


_REFUSING = (CircuitState.OPEN, CircuitState.FORCED_OPEN)


@dataclass(slots=True)
class Message:
    """One message on the bus."""

    seq: int
    topic: str
    body: bytes
    published_ns: int


@dataclass
class BusStats:
    """Counters of an :class:`AgentBus`; ``published == delivered + queued`` always."""

    published: int = 0
    delivered: int = 0
    persisted: int = 0
    persist_failures: int = 0
    outbox_dropped: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)


class AgentBus:
    """Delivers messages to agents and persists them to Redis, guarded by the runtime.

    Args:
        redis_client: Where delivered messages are persisted (a Redis Stream).
        runtime: The embedded runtime; None runs the same path unguarded (baseline).
        redis_probe: Probe URL of the Redis dependency (for automatic recovery).
        stream: Stream key. Default ``af:demo:bus``.
        batch_size: Messages per dispatch round. Default 256.
        persist_batch: Most messages in one persisted stream entry. Default 4,096.
        persist_linger_s: After a write that left less than a batch, wait this long
            before the next one, so writes stay few (at most ~1/linger a second unless a
            backlog of full batches waits). Default 0.05.
        stream_maxlen: Approximate length cap of the stream, in entries; None keeps
            every entry (exact accounting, as the demo does). Default 500.
        outbox_limit: Delivered messages kept while Redis is failing. Default 200,000.
        latency_samples: Most recent per-message latencies kept. Default 200,000.
        breaker_config: Breaker of the Redis guard. Default: open after 5 consecutive
            failures, for 2 s.
        redis_guard: Name of the Redis dependency's guard (fault target, recovery
            ``recovery-{name}``). Default ``redis``.
    """

    def __init__(
        self,
        redis_client: aioredis.Redis,
        runtime: Runtime | None,
        *,
        redis_probe: str | None = None,
        stream: str = "af:demo:bus",
        batch_size: int = 256,
        persist_batch: int = 4096,
        persist_linger_s: float = 0.05,
        stream_maxlen: int | None = 500,
        outbox_limit: int = 200_000,
        latency_samples: int = 200_000,
        breaker_config: CircuitBreakerConfig | None = None,
        redis_guard: str = "redis",
    ) -> None:
        self._redis = redis_client
        self.stream = stream
        self.batch_size = batch_size
        self.outbox_limit = outbox_limit
        self.stats = BusStats()
        self.latencies_ns: deque[int] = deque(maxlen=latency_samples)
        self._queue: deque[Message] = deque()
        self._outbox: deque[bytes] = deque()
        self._outbox_head = 0  # seq of the oldest outbox message (they are contiguous)
        self._topic_bytes: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self.persist_batch = persist_batch
        self.persist_linger_s = persist_linger_s
        self.stream_maxlen = stream_maxlen
        self._seq = 0
        self._agents: Guard | None = None
        self._redis_guard: Guard | None = None
        if runtime is not None:
            self._agents = runtime.guard("agents", recovery=False)
            self._redis_guard = runtime.guard(
                redis_guard,
                probe=redis_probe,
                breaker_config=breaker_config
                or CircuitBreakerConfig(failure_threshold=5, open_duration_s=2.0),
                timeout_s=1.0,
            )

    # -------------------------------------------------------------- hot path

    def publish(self, topic: str, body: bytes, *, at_ns: int | None = None) -> None:
        """Enqueue a message (synchronous, never blocks).

        Args:
            topic: Agent topic the message is routed by.
            body: Payload.
            at_ns: ``perf_counter_ns`` time the message counts as published from
                (default: now). An open-loop load generator passes each message's
                scheduled time, so a publisher held up by a busy loop still charges the
                wait to the message (no coordinated omission).
        """
        self._seq += 1
        self._queue.append(
            Message(self._seq, topic, body, time.perf_counter_ns() if at_ns is None else at_ns)
        )
        self.stats.published += 1
        wake = self._wake
        if not wake.is_set():
            wake.set()

    async def _deliver(self, message: Message) -> None:
        # The agent's work: route by topic. Local and cheap, as most agent hops are.
        self.stats.by_topic[message.topic] += 1

    # -------------------------------------------------------------- dispatcher

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver and persist until ``stop`` is set and the queue is drained."""
        # One watcher per run turns ``stop`` into a wake-up of the dispatcher, so an idle
        # dispatcher waits on a single event: no task per wake-up on the message path.
        watcher = asyncio.create_task(self._wake_on(stop))
        persister = asyncio.create_task(self._persist_loop(stop))
        try:
            await self._dispatch_loop(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await persister
        await self.flush()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()
        self._outbox_ready.set()

    async def _dispatch_loop(self, stop: asyncio.Event) -> None:
        queue, wake = self._queue, self._wake
        while True:
            if not queue:
                if stop.is_set():
                    break
                wake.clear()
                await wake.wait()
                continue
            await self._dispatch_round()

    async def _dispatch_round(self) -> None:
        queue, agents, deliver = self._queue, self._agents, self._deliver
        n = min(len(queue), self.batch_size)
        batch = [queue.popleft() for _ in range(n)]
        if agents is None:
            for m in batch:
                await deliver(m)
        else:
            call = agents.call
            for m in batch:
                await call(deliver, m)
        now = time.perf_counter_ns()
        self.latencies_ns.extend([now - m.published_ns for m in batch])
        self.stats.delivered += n
        # The outbox keeps each message as its packed stream line (bytes, which the
        # garbage collector never tracks) instead of the Message object: while Redis is
        # failing it holds up to ``outbox_limit`` messages, and as objects they made
        # every full collection walk them all (tens of ms with the loop stopped).
        outbox = self._outbox
        if not outbox:
            self._outbox_head = batch[0].seq
        topics = self._topic_bytes
        for m in batch:
            t = topics.get(m.topic)
            if t is None:
                t = topics[m.topic] = m.topic.encode()
            outbox.append(b"%d\t%s\t%s" % (m.seq, t, m.body))
        overflow = len(outbox) - self.outbox_limit
        if overflow > 0:
            # Oldest first; seqs in the outbox stay contiguous, so the head moves on.
            for _ in range(overflow):
                outbox.popleft()
            self._outbox_head += overflow
            self.stats.outbox_dropped += overflow
        ready = self._outbox_ready
        if not ready.is_set():
            ready.set()
        # Let publishers, the persister and background tasks (bridge, fault plane,
        # metering) run.
        await asyncio.sleep(0)

    async def _persist_loop(self, stop: asyncio.Event) -> None:
        """Persist the outbox in the background, so Redis latency never delays delivery."""
        ready = self._outbox_ready
        while not (stop.is_set() and not self._queue):
            if not self._outbox:
                ready.clear()
                await ready.wait()
                continue
            guard = self._redis_guard
            if guard is not None and guard.breaker.state in _REFUSING:
                # Breaker open: keep the outbox and do not even try; sleep until a trial
                # call may pass instead of polling (and keep waking) every 10 ms.
                retry = guard.breaker.retry_after()
                await self._pause(stop, 0.05 if retry is None else min(0.05, retry + 0.001))
                continue
            before = len(self._outbox)
            await self._persist_some()
            if len(self._outbox) >= before:
                await self._pause(stop, 0.01)  # failing: do not spin
            elif len(self._outbox) < self.persist_batch and not stop.is_set():
                # Less than a batch left: linger so the next write carries more. A write
                # costs the loop ~0.3 ms (measured here) of CPU whatever its size (the client's
                # per-command work), so writing as often as round trips allow made the
                # persister the largest source of delivery-latency outliers.
                await self._pause(stop, self.persist_linger_s)

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _persist_some(self) -> None:
        outbox = self._outbox
        if not outbox:
            return
        guard = self._redis_guard
        if guard is not None and guard.breaker.state in _REFUSING:
            # Breaker open: keep the outbox and do not even try. The breaker's own timer
            # moves it to HALF_OPEN, and the next round's call is the trial.
            return
        n = min(len(outbox), self.persist_batch)
        first = self._outbox_head
        lines = list(itertools.islice(outbox, n))
        try:
            if guard is None:
                await self._write(first, lines)
            else:
                await guard.call(self._write, first, lines)
        except PERSIST_ERRORS:
            self.stats.persist_failures += 1
            return
        # Messages dropped from the outbox meanwhile (overflow) were among these.
        done = self._outbox_head - first
        remaining = n - done
        for _ in range(max(0, remaining)):
            outbox.popleft()
        self._outbox_head += max(0, remaining)
        self.stats.persisted += n

    async def _write(self, first: int, lines: list[bytes]) -> None:
        # One stream entry per batch: "first seq, count" plus the messages as
        # "seq\ttopic\tbody" lines. Per-message XADDs cost ~10 µs each in the client;
        # a packed batch costs well under 1 µs a message. See :func:`decode_batch`.
        await self._redis.xadd(
            self.stream,
            {"first": first, "n": len(lines), "msgs": b"\n".join(lines)},
            maxlen=self.stream_maxlen,
            approximate=True,
        )

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Try to persist the whole outbox (e.g. at shutdown), for at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._outbox and time.monotonic() < deadline:
            before = len(self._outbox)
            await self._persist_some()
            if len(self._outbox) == before:
                await asyncio.sleep(0.05)

    @property
    def queued(self) -> int:
        """Messages published and not yet delivered."""
        return len(self._queue)

    @property
    def outbox(self) -> int:
        """Messages delivered and not yet persisted."""
        return len(self._outbox)


def decode_batch(fields: dict[bytes, bytes]) -> list[tuple[int, str, bytes]]:
    """The messages of one persisted stream entry: (seq, topic, body) each."""
    out = []
    for line in fields[b"msgs"].split(b"\n"):
        seq, topic, body = line.split(b"\t", 2)
        out.append((int(seq), topic.decode(), body))
    return out


async def drive(
    bus: AgentBus,
    seconds: float,
    *,
    burst: int = 64,
    topics: tuple[str, ...] = ("plan", "act", "observe", "reflect"),
    on_tick: Callable[[], Awaitable[Any]] | None = None,
) -> float:
    """Publish as fast as the bus delivers, for ``seconds``; return the wall time used.

    The publisher keeps at most ``4 × burst`` messages queued, so the measured latency
    is the bus's own, not a backlog the publisher built up.
    """
    stop = asyncio.Event()
    runner = asyncio.create_task(bus.run(stop))
    body = b"x" * 64
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while time.perf_counter() < deadline:
        if bus.queued < 4 * burst:
            for _ in range(burst):
                bus.publish(topics[i & 3], body)
                i += 1
        await asyncio.sleep(0)
        if on_tick is not None and (i & 0xFFFF) == 0:
            await on_tick()
    elapsed = time.perf_counter() - start
    stop.set()
    await runner
    return elapsed
