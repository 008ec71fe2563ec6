"""A small guarded service for demos and integration tests.

``python -m antifragile.demo.guarded_service --targets db,cache`` (a summary line a second; or
``--status-file /tmp/demo.json`` for a JSON file rewritten every ``--report-interval``;
``--probe db=tcp://127.0.0.1:5432`` so a breaker of ``db`` opening starts a durable recovery)
embeds a :class:`~antifragile.inprocess.runtime.Runtime` (fault plane, health snapshots, bridge),
makes guarded calls to each target in a loop and rewrites a JSON status file a few times
a second, so another process can watch every chaos type arrive at the call site and
leave again:

- per target: outcome counters (``ok``, ``RuntimeError``, ``ConnectionError``,
  ``TimeoutError``, ``CircuitOpenError``, ``ConcurrencyLimitError`` …), the latencies of
  the last calls, breaker state, calls in flight and the active fault's experiment id;
- per process: resident memory and CPU use over the last interval;
- with ``--meter``: one :class:`~antifragile.inprocess.metering.UsageEvent` per call
  (``demo_call:{target}``) on top of the guards' own ``guarded_call:{target}`` counts,
  flushed to the Redis metering stream, and the metering counters (``recorded``,
  ``written``, ``buffered``, ``dropped`` …) under ``metering`` in the status.

SIGTERM/SIGINT stop it cleanly: the callers finish the call they are in, the runtime
flushes metering, and a last status with ``"stopped": true`` and the final counters is
written.

The call itself is a 1 ms sleep: what is measured is what the guard does around it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.guard import Guard
from antifragile.inprocess.metering import UsageEvent
from antifragile.inprocess.runtime import Runtime
from antifragile.settings import Settings
from antifragile.telemetry import configure_logging

RECENT = 20
"""Latencies of this many most recent calls per target are reported."""


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


class DemoService:
    """Guarded calls in a loop, with their outcomes counted per target.

    Args:
        runtime: The embedded runtime (its guards enforce the faults).
        targets: Dependency names, one guard each.
        workers: Concurrent callers per target.
        interval_s: Pause between two calls of one caller.
        timeout_s: Guard timeout (TIMEOUT faults hang until it).
        max_concurrency: Guard concurrency limit (CONNECTIONS exhaustion holds part).
        open_duration_s: Breaker open duration (short, so a demo recovers quickly).
        probes: Probe URL per target (``--probe TARGET=URL``): when that target's breaker
            opens, the runtime starts a durable recovery that probes it. Default none (a
            breaker opening only logs "no recovery configured").
    """

    def __init__(
        self,
        runtime: Runtime,
        targets: list[str],
        *,
        workers: int = 4,
        interval_s: float = 0.02,
        timeout_s: float = 0.5,
        max_concurrency: int = 10,
        open_duration_s: float = 1.0,
        probes: dict[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.workers = workers
        self.interval_s = interval_s
        config = CircuitBreakerConfig(open_duration_s=open_duration_s, minimum_calls=10)
        self.guards: dict[str, Guard] = {
            t: runtime.guard(
                t,
                probe=(probes or {}).get(t),
                breaker_config=config,
                timeout_s=timeout_s,
                max_concurrency=max_concurrency,
            )
            for t in targets
        }
        self.counts: dict[str, Counter[str]] = {t: Counter() for t in targets}
        self.recent: dict[str, deque[float]] = {t: deque(maxlen=RECENT) for t in targets}
        # Built once per call site and recorded many times (UsageEvent is immutable).
        self.usage: dict[str, UsageEvent] = {
            t: UsageEvent(runtime.tenant_id, f"demo_call:{t}") for t in targets
        }
        self._cpu = (time.monotonic(), time.process_time())
        self.cpu_percent = 0.0
        self._stopping = False

    async def call_once(self, target: str) -> None:
        """One guarded call; its outcome and latency are recorded."""
        guard = self.guards[target]
        start = time.perf_counter()
        try:
            await guard.call(asyncio.sleep, 0.001)
            outcome = "ok"
        except Exception as exc:
            outcome = _outcome_name(exc)
        # Counted and metered together (no await in between): the status counts and the
        # metering stream can be compared exactly.
        self.counts[target][outcome] += 1
        metering = self.runtime.metering
        if metering is not None:
            metering.record(self.usage[target])
        self.recent[target].append(round((time.perf_counter() - start) * 1000, 2))

    async def caller(self, target: str) -> None:
        """Call ``target`` until :meth:`stop_calling`; the call in progress finishes."""
        while not self._stopping:
            await self.call_once(target)
            await asyncio.sleep(self.interval_s)

    def stop_calling(self) -> None:
        """Ask every caller to stop after the call it is making."""
        self._stopping = True

    def status(self) -> dict[str, Any]:
        """The document written to the status file."""
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu
        if now - then >= 0.2:
            self.cpu_percent = round(100 * (cpu - cpu_then) / (now - then), 1)
            self._cpu = (now, cpu)
        targets = {}
        for name, guard in self.guards.items():
            fault = guard.fault
            spec = getattr(fault, "spec", None)
            targets[name] = {
                "counts": dict(self.counts[name]),
                "recent_ms": list(self.recent[name]),
                "breaker": guard.breaker.state.value,
                "in_flight": guard.in_flight,
                "fault": spec.experiment_id if spec is not None else None,
                "fault_type": spec.chaos_type.value if spec is not None else None,
            }
        sub = self.runtime.fault_subscriber
        metering = self.runtime.metering
        return {
            "instance": self.runtime.instance_id,
            "pid": os.getpid(),
            "at": time.time(),
            "rss_mb": round(rss_mb(), 1),
            "cpu_percent": self.cpu_percent,
            "halted": bool(sub and sub.halted),
            "plane_connected": bool(sub and sub.connected),
            "metering": asdict(metering.stats()) if metering is not None else None,
            "stopped": self._stopping,
            "targets": targets,
        }


def summary_line(doc: dict[str, Any], last: dict[str, Any] | None) -> str:
    """One human line: per target, outcomes since the previous line, latency, breaker, fault."""
    parts = [time.strftime("%H:%M:%S")]
    for name, t in doc["targets"].items():
        before = last["targets"][name]["counts"] if last else {}
        grew = {k: v - before.get(k, 0) for k, v in t["counts"].items() if v > before.get(k, 0)}
        outcomes = " ".join(f"{k}={v}" for k, v in sorted(grew.items())) or "idle"
        recent = sorted(t["recent_ms"])
        p50 = f"{recent[len(recent) // 2]:.0f}ms" if recent else "-"
        fault = t["fault_type"] or "-"
        parts.append(f"{name}[{outcomes} p50={p50} breaker={t['breaker']} fault={fault}]")
    parts.append(f"rss={doc['rss_mb']:.0f}MB cpu={doc['cpu_percent']:.0f}%")
    return "  ".join(parts)


def _outcome_name(exc: BaseException) -> str:
    # Injected errors are subclasses named Injected<Type>: report the plain type.
    for cls in type(exc).__mro__:
        if not cls.__name__.startswith("Injected"):
            return cls.__name__
    return type(exc).__name__


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON (readers never see half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def parse_probes(values: list[str], targets: list[str]) -> dict[str, str]:
    """``["demo-db=tcp://127.0.0.1:6379"]`` -> ``{"demo-db": "tcp://127.0.0.1:6379"}``.

    Raises:
        ValueError: A value is not ``TARGET=URL`` or names a target not in ``targets``; the
            message names the flag and the value.
    """
    probes: dict[str, str] = {}
    for value in values:
        target, sep, url = value.partition("=")
        target, url = target.strip(), url.strip()
        if not sep or not target or not url:
            raise ValueError(f"--probe: expected TARGET=URL, got {value!r}")
        if target not in targets:
            raise ValueError(
                f"--probe: target {target!r} is not one of --targets ({', '.join(targets)})"
            )
        probes[target] = url
    return probes


async def serve(args: argparse.Namespace) -> None:
    """Run the demo until SIGTERM/SIGINT."""
    settings = Settings()
    # Logs follow ANTIFRAGILE_LOG_LEVEL / ANTIFRAGILE_LOG_FORMAT like every other process.
    configure_logging(settings=settings)
    runtime = Runtime(
        settings,
        instance_id=args.instance_id,
        metering=args.meter,
        bridge=not args.no_bridge,
        publish_interval_s=args.publish_interval,
        health_ttl_s=max(2.0, args.publish_interval * 5),
    )
    demo = DemoService(
        runtime,
        args.target_list,
        workers=args.workers,
        interval_s=args.interval,
        timeout_s=args.timeout,
        max_concurrency=args.max_concurrency,
        open_duration_s=args.open_duration,
        probes=args.probes,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    status_file = Path(args.status_file) if args.status_file else None
    last: dict[str, Any] | None = None

    def report() -> None:
        nonlocal last
        doc = demo.status()
        if status_file is not None:
            write_atomically(status_file, doc)
        elif args.json:
            print(json.dumps(doc), flush=True)
        else:
            print(summary_line(doc, last), flush=True)
            last = doc

    async with runtime:
        tasks = [
            asyncio.create_task(demo.caller(t)) for t in demo.guards for _ in range(demo.workers)
        ]
        try:
            while not stop.is_set():
                report()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.report_interval)
        finally:
            # Let each caller finish its call (the guard timeout bounds it), so every
            # counted call is metered and vice versa; cancel only a caller that hangs.
            demo.stop_calling()
            _, hanging = await asyncio.wait(tasks, timeout=2 * args.timeout + 2)
            for task in hanging:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    # The runtime has stopped and flushed metering: the last status has the final counts.
    report()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m antifragile.demo.guarded_service``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", default="demo-db", help="comma-separated dependency names")
    parser.add_argument("--instance-id", default=None, help="name in the fleet")
    parser.add_argument("--status-file", default=None, help="JSON status file (else stdout)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout, not a summary")
    parser.add_argument("--workers", type=int, default=4, help="callers per target")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between calls")
    parser.add_argument("--timeout", type=float, default=0.5, help="guard timeout, seconds")
    parser.add_argument("--max-concurrency", type=int, default=10, help="guard limit")
    parser.add_argument("--open-duration", type=float, default=1.0, help="breaker open, s")
    parser.add_argument("--report-interval", type=float, default=1.0, help="status every s")
    parser.add_argument("--publish-interval", type=float, default=0.5, help="health every s")
    parser.add_argument("--no-bridge", action="store_true", help="no Temporal, no snapshots")
    parser.add_argument(
        "--meter", action="store_true", help="meter every call to the Redis metering stream"
    )
    parser.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="TARGET=URL",
        help="probe of a target (repeatable): its breaker opening starts a recovery",
    )
    args = parser.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        args.probes = parse_probes(args.probe, args.target_list)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
