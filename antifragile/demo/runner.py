"""``antifragile demo``: the whole story on the embedded stack, every step checked.

1. The embedded stack: a Temporal dev server with its UI and Redis are started unless
   already running (the same ports and data directory as ``antifragile dev``), and a
   worker runs on the demo's own task queue with a policy naming one approver.
2. The agent bus (:class:`~antifragile.demo.agent_bus.AgentBus`) delivers messages under
   a steady open-loop load and persists them to a Redis Stream through a guard.
3. A real ``ChaosExperimentWorkflow`` injects errors into that Redis dependency. The
   breaker opens, the health score drops, the bridge asks the recovery orchestrator for
   a recovery; the recovery's probe (the bus's own ``/healthz``, which pings Redis
   through the guard) fails while the fault is in place.
4. The experiment removes its fault; the breaker closes, the outbox drains, the recovery
   succeeds; the experiment completes with its report.
5. A MANUAL recovery waits for approval; an approval from a name outside the policy is
   refused; the demo approves it through the real CLI (``antifragile recovery approve``),
   and it succeeds.
6. Load stops, and every message published is found exactly once in the stream.
7. The last act (:mod:`antifragile.demo.last_act`): the bus's archive downstream suffers
   the same outage twice; between the two, the advice its ledger learned is applied
   through the approval path, and the two runs are printed side by side.

Each step is printed when it is observed, with its time; at the end the demo prints the
Temporal UI link of every workflow involved. It succeeds only if every step happened, in
the order the story requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from antifragile.chaos.client import start_experiment
from antifragile.constants import (
    intake_shard,
    intake_workflow_id,
    orchestrator_workflow_id,
    profile_workflow_id,
    recovery_workflow_id,
)
from antifragile.demo.agent_bus import AgentBus
from antifragile.demo.last_act import (
    ARCHIVE,
    DEMO_PUBLISH_INTERVAL_S,
    LAST_ACT_BUDGET_S,
    LastAct,
)
from antifragile.demo.service import HealthEndpoint, Load, audit_stream, rate_over
from antifragile.demo.stack import DemoOptions, DemoStack
from antifragile.demo.timeline import DemoResult, StepTimeout, Timeline, render_summary, wait_until
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitState, StateChange
from antifragile.inprocess.health_score import status_for_score
from antifragile.inprocess.runtime import Runtime
from antifragile.models.chaos import ChaosOutcome, ChaosReport
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType, ErrorKind
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryResult,
    RecoveryState,
    RecoveryStatus,
    RecoveryStrategy,
)
from antifragile.orchestrator.client import request_recovery
from antifragile.policy import RecoveryPolicyConfig, WorkerPolicy
from antifragile.settings import Settings
from antifragile.temporal_client import connect, ensure_search_attributes

DEPENDENCY = "agent-bus-redis"
"""Guard name of the bus's Redis dependency: the chaos target and the recovered service."""
MANUAL_SERVICE = "agent-bus-replay"
"""Service of the manual-strategy recovery (a replay a human signs off)."""
APPROVER = "sre-oncall"
"""The only approver in the demo worker's policy."""
OUTSIDER = "intern"
"""A name outside the policy's approvers: the demo shows it refused."""


class WorkerBuilder(Protocol):
    """What :func:`run_demo` calls to build the demo's worker (run as ``async with``).

    The CLI passes ``workers.main.build_worker``: the demo never imports ``workers``, so the
    worker is wired in one place, the entry point.
    """

    def __call__(
        self, client: Client, settings: Settings, policy: WorkerPolicy
    ) -> AbstractAsyncContextManager[Any]:
        """A worker for every workflow and activity on ``settings.task_queue``.

        Args:
            client: The connected Temporal client it polls with.
            settings: Its task queue and what its activities reach.
            policy: Its worker policy (the demo's names one approver).
        """
        ...


class Demo:
    """One run of the demo story against a running stack."""

    def __init__(
        self, settings: Settings, client: Client, options: DemoOptions, timeline: Timeline
    ) -> None:
        self.settings = settings
        self.client = client
        self.options = options
        self.t = timeline
        self.links: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.transitions: list[StateChange] = []

    def link(self, what: str, workflow_id: str) -> None:
        """Remember a workflow's UI link (once)."""
        if all(w != workflow_id for _, w in self.links):
            self.links.append((what, workflow_id))

    async def run(self) -> None:
        """Tell the whole story; missing steps are recorded, never raised."""
        s, o = self.settings, self.options
        run_id = uuid.uuid4().hex[:6]
        redis = aioredis.Redis.from_url(s.redis_url, socket_timeout=2.0)
        runtime = Runtime(
            s,
            instance_id=f"agent-bus-demo-{run_id}",
            temporal_client=self.client,
            publish_interval_s=DEMO_PUBLISH_INTERVAL_S,
            health_ttl_s=5.0,
            config_plane=True,  # the last act's applied advice reaches the breaker live
        )
        endpoint = HealthEndpoint(lambda: runtime.guards[DEPENDENCY].call(redis.ping))
        probe = await endpoint.start()
        # The guard is made before the bus asks for it, to give it the recovery the
        # bridge requests: short backoffs, so the demo does not wait long.
        guard = runtime.guard(
            DEPENDENCY,
            probe=probe,
            breaker_config=CircuitBreakerConfig(failure_threshold=5, open_duration_s=1.0),
            timeout_s=1.0,
            recovery={
                "reason": "agent bus: Redis breaker opened",
                "policy": RecoveryPolicy(
                    initial_delay_ms=1000, max_delay_ms=2000, max_retry_attempts=60
                ),
            },
        )
        guard.breaker.on_state_change(self.transitions.append)
        stream = f"af:demo:bus:{run_id}"
        bus = AgentBus(redis, runtime, redis_guard=DEPENDENCY, stream=stream, stream_maxlen=None)
        load = Load(bus, o.rate)
        act = LastAct(
            self.client,
            self.t,
            self.t.out,
            approver=APPROVER,
            outsider=OUTSIDER,
            step_timeout_s=o.step_timeout_s,
        )
        await act.prepare(runtime)
        try:
            async with runtime:
                act.start_baseline()  # the archive's baseline, while the earlier acts run
                load.start()
                await self._steady(bus, stream)
                await self._chaos(runtime, bus, endpoint)
                await self._manual(probe)
                await load.stop()
                await self._audit(bus, redis, stream)
                self.link("archive ledger", profile_workflow_id(ARCHIVE))
                try:
                    await act.run()
                finally:
                    await act.cleanup(o.keep)
        except StepTimeout as exc:
            self.problems.append(str(exc))
        finally:
            with contextlib.suppress(Exception):
                await load.stop()
            await endpoint.stop()
            with contextlib.suppress(Exception):
                await redis.delete(stream)
            await redis.aclose()

    async def _steady(self, bus: AgentBus, stream: str) -> None:
        delivered, persisted = await rate_over(bus, 2.0)
        self.t.mark(
            "load",
            f"{self.options.rate:,} msg/s offered; {delivered:,.0f} msg/s delivered, "
            f"{persisted:,.0f} msg/s persisted to the stream {stream}",
        )

    async def _chaos(self, runtime: Runtime, bus: AgentBus, endpoint: HealthEndpoint) -> None:
        s, o, t = self.settings, self.options, self.t
        guard = runtime.guards[DEPENDENCY]
        scenario = ChaosScenario(
            name="agent-bus-redis-errors",
            description="The demo: connection errors on the agent bus's Redis dependency.",
            chaos_type=ChaosType.ERROR,
            target=DEPENDENCY,
            error_rate=1.0,
            error_kind=ErrorKind.CONNECTION,
            duration_s=o.chaos_duration_s,
            recovery_timeout_s=30.0,
            requested_by="antifragile demo",
            constitutional_hash=s.constitutional_hash,
        )
        handle = await start_experiment(self.client, scenario, task_queue=s.task_queue)
        eid = handle.id
        self.link("chaos experiment", eid)
        self.link("chaos guardian", f"{eid}-guardian")
        t.mark(
            "chaos_started",
            f"{eid}: {scenario.parameters_description()} for {o.chaos_duration_s:g}s",
        )
        step = o.step_timeout_s

        await wait_until(lambda: guard.fault is not None, step, "fault at the call site")
        t.mark("fault_seen", f"guard {DEPENDENCY} now raises injected ConnectionError")
        await wait_until(
            lambda: any(c.new is CircuitState.OPEN for c in self.transitions), step, "breaker open"
        )
        t.mark("breaker_open", f"{DEPENDENCY}: CLOSED -> OPEN after consecutive failures")
        health = runtime.health
        await wait_until(lambda: health.health_score < 1.0, step, "health drop")
        score = health.health_score
        cfg = health.config
        status = status_for_score(score, cfg.degraded_threshold, cfg.critical_threshold)
        t.mark(
            "health_dropped",
            f"{score:.2f} ({status.value}: one of the bus's two breakers is open); the "
            f"experiment's health guard aborts below {scenario.abort_below_health:g}",
        )
        bridge = runtime.bridge
        assert bridge is not None
        await wait_until(lambda: bridge.recoveries_started > 0, step, "recovery request")
        rid = recovery_workflow_id(DEPENDENCY)
        orchestrator = orchestrator_workflow_id(s.task_queue)
        intake = intake_workflow_id(orchestrator, intake_shard(DEPENDENCY))
        self.link("recovery intake", intake)
        self.link("recovery orchestrator", orchestrator)
        self.link("recovery (automatic)", rid)
        t.mark(
            "recovery_requested",
            f"request for {DEPENDENCY} sent to {orchestrator} through {intake}",
        )
        recovery = self.client.get_workflow_handle(rid, result_type=RecoveryResult)
        await wait_until(lambda: self._running(recovery), step, "recovery admitted")
        t.mark("recovery_admitted", f"{rid} running as the orchestrator's child")
        status = await wait_until(
            lambda: self._status_with(
                recovery, lambda st: any(a.outcome != "healthy" for a in st.attempts)
            ),
            step,
            "a failed probe",
        )
        failed = next(a for a in status.attempts if a.outcome != "healthy")
        t.mark("probe_failed", f"attempt {failed.number}: {failed.outcome}, {failed.detail}")

        outage_start = time.perf_counter()
        delivered_before = bus.stats.delivered
        await wait_until(lambda: guard.fault is None, step + o.chaos_duration_s, "fault removed")
        t.mark("fault_removed", f"lease of {eid} deleted; the guard enforces nothing")
        delivered = bus.stats.delivered - delivered_before
        during = delivered / max(time.perf_counter() - outage_start, 1e-9)
        await wait_until(lambda: guard.breaker.state is CircuitState.CLOSED, step, "breaker closed")
        await wait_until(lambda: bus.outbox == 0, step, "outbox drained")
        t.mark(
            "breaker_closed",
            f"persistence resumed, outbox drained; delivery never stopped "
            f"({during:,.0f} msg/s while Redis was failing)",
        )
        result = await self._result(recovery, step)
        if result is not None and result.state is RecoveryState.SUCCEEDED:
            t.mark("recovery_succeeded", f"{rid}: {result.message} ({result.attempts} attempts)")
        else:
            t.fail("recovery_succeeded", f"{rid} ended {result.state.value if result else '?'}")

        try:
            chaos_report: ChaosReport = await asyncio.wait_for(handle.result(), step)
        except (TimeoutError, WorkflowFailureError) as exc:
            t.fail("chaos_completed", f"{eid}: {exc}")
            return
        c = chaos_report.cleanup
        affected = sum(chaos_report.calls_affected.values())
        ttr = chaos_report.time_to_recover_s
        # Time to recover is only measured when health dropped; never print a made-up 0.0s.
        recovered = f"recovered in {ttr:.1f}s" if ttr is not None else "health never dropped"
        low = chaos_report.health_lowest
        lowest = "-" if low is None else f"{low:.2f}"
        page = await asyncio.to_thread(self._html_report, chaos_report)
        if chaos_report.outcome is ChaosOutcome.COMPLETED and c.attempted and c.method != "expired":
            t.mark(
                "chaos_completed",
                f"{chaos_report.outcome.value}; {affected:,} calls affected; cleanup "
                f"{c.method}; health lowest {lowest}; {recovered}; {page}",
            )
        else:
            t.fail(
                "chaos_completed",
                f"{chaos_report.outcome} ({chaos_report.reason}); cleanup {c.method}",
            )

    def _html_report(self, report: ChaosReport) -> str:
        """Write the experiment's HTML report under the data directory; say where (or why not)."""
        from antifragile.chaos.html_report import ChartsUnavailableError, write_html

        path = self.options.data_dir.resolve() / f"{report.experiment_id}.html"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_html(report, path)
        except (ChartsUnavailableError, OSError) as exc:
            return f"no HTML report ({exc})"
        return f"report {path}"

    async def _manual(self, probe: str) -> None:
        s, o, t = self.settings, self.options, self.t
        request = RecoveryRequest(
            service=MANUAL_SERVICE,
            strategy=RecoveryStrategy.MANUAL,
            probe=probe,
            reason="replay the messages persisted during the incident (a human signs off)",
            requested_by="antifragile demo",
            constitutional_hash=s.constitutional_hash,
        )
        await request_recovery(self.client, request, task_queue=s.task_queue)
        rid = recovery_workflow_id(MANUAL_SERVICE)
        self.link("recovery (manual)", rid)
        handle = self.client.get_workflow_handle(rid, result_type=RecoveryResult)
        await wait_until(
            lambda: self._status_with(
                handle, lambda st: st.state is RecoveryState.AWAITING_APPROVAL
            ),
            o.step_timeout_s,
            "manual recovery awaiting approval",
        )
        t.mark("manual_waiting", f"{rid} is AWAITING_APPROVAL (strategy MANUAL)")

        code, text = await self._cli("recovery", "approve", MANUAL_SERVICE, "--by", OUTSIDER)
        if code != 0 and "refused" in text:
            t.mark("outsider_refused", f"`antifragile recovery approve --by {OUTSIDER}`: {text}")
        else:
            t.fail("outsider_refused", f"exit {code}: {text or 'no output'}")
        code, text = await self._cli(
            "recovery", "approve", MANUAL_SERVICE, "--by", APPROVER, "--note", "demo sign-off"
        )
        if code == 0:
            t.mark("manual_approved", f"`antifragile recovery approve --by {APPROVER}`: {text}")
        else:
            t.fail("manual_approved", f"exit {code}: {text or 'no output'}")
            return
        result = await self._result(handle, o.step_timeout_s)
        if result is not None and result.state is RecoveryState.SUCCEEDED:
            t.mark("manual_succeeded", f"{rid}: {result.message}")
        else:
            t.fail("manual_succeeded", f"{rid} ended {result.state.value if result else '?'}")

    async def _audit(self, bus: AgentBus, redis: aioredis.Redis, stream: str) -> None:
        st = bus.stats
        found, missing, duplicated = await audit_stream(redis, stream, st.published)
        detail = (
            f"{st.published:,} published, {st.delivered:,} delivered, {found:,} found in the "
            f"stream ({missing} missing, {duplicated} duplicated, {st.outbox_dropped} dropped)"
        )
        if st.delivered == st.published and missing == 0 and st.outbox_dropped == 0:
            self.t.mark("nothing_lost", detail)
        else:
            self.t.fail("nothing_lost", detail)

    async def _cli(self, *args: str) -> tuple[int, str]:
        """Run ``antifragile ARGS`` in a subprocess against this stack: (exit code, output)."""
        s = self.settings
        env = {
            **os.environ,
            "ANTIFRAGILE_TEMPORAL_ADDRESS": s.temporal_address,
            "ANTIFRAGILE_TEMPORAL_NAMESPACE": s.temporal_namespace,
            "ANTIFRAGILE_TASK_QUEUE": s.task_queue,
            "ANTIFRAGILE_REDIS_URL": s.redis_url,
            "NO_COLOR": "1",
        }
        # Never a blocking subprocess call here: this loop also runs the worker.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "antifragile",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), self.options.step_timeout_s)
        return proc.returncode or 0, " ".join(out.decode().split())

    async def _running(self, handle: WorkflowHandle[Any, Any]) -> bool:
        try:
            desc = await handle.describe()
        except RPCError:
            return False
        return desc.status is not None and desc.status.name == "RUNNING"

    async def _status_with(
        self, handle: WorkflowHandle[Any, Any], check: Callable[[RecoveryStatus], bool]
    ) -> RecoveryStatus | None:
        try:
            status: RecoveryStatus = await handle.query("status", result_type=RecoveryStatus)
        except RPCError:
            return None
        return status if check(status) else None

    async def _result(
        self, handle: WorkflowHandle[Any, RecoveryResult], timeout_s: float
    ) -> RecoveryResult | None:
        try:
            return await asyncio.wait_for(handle.result(), timeout_s)
        except TimeoutError:
            self.problems.append(f"{handle.id}: no result within {timeout_s:g}s")
        except WorkflowFailureError as exc:
            self.problems.append(f"{handle.id} failed: {exc.cause}")
        return None


async def run_demo(
    options: DemoOptions,
    build_worker: WorkerBuilder,
    base: Settings | None = None,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    keeping: asyncio.Event | None = None,
) -> DemoResult:
    """Run the demo: start what is missing, tell the story, stop what was started.

    Args:
        options: Ports, load and timing.
        build_worker: Builds the demo's worker (the CLI passes ``workers.main.build_worker``).
        base: Settings to start from (``ANTIFRAGILE_*``); the stack's addresses and the
            demo task queue replace theirs.
        out: Where lines go (stdout).
        stop: With ``options.keep``, set to stop the stack the demo started.
        keeping: Set while the demo is over and only keeps the stack up.
    """
    options.validate()
    timeline = Timeline(out)
    stack = DemoStack(options)
    note = await asyncio.to_thread(stack.start)
    settings = stack.settings(base or Settings())
    problems: list[str] = []
    links: list[tuple[str, str]] = []
    try:
        client = await connect(settings)
        await ensure_search_attributes(client)
        policy = WorkerPolicy(recovery=RecoveryPolicyConfig(approvers=[APPROVER]))
        worker = build_worker(client, settings, policy)
        async with worker:
            timeline.mark(
                "stack",
                f"{note}; worker on task queue {settings.task_queue} "
                f"(approvers: {', '.join(policy.recovery.approvers)})",
            )
            demo = Demo(settings, client, options, timeline)
            # A watchdog over the whole story: each wait has its own limit, this one
            # catches anything else (a hung call) so the demo always ends and says why.
            total_s = 5 * options.step_timeout_s + options.chaos_duration_s + LAST_ACT_BUDGET_S
            try:
                await asyncio.wait_for(demo.run(), total_s)
            except TimeoutError:
                demo.problems.append(f"the demo did not finish within {total_s:g}s")
            problems, links = demo.problems, demo.links
        result = DemoResult(timeline, [(w, settings.workflow_url(i)) for w, i in links], problems)
        render_summary(result, out, stack_started=bool(stack.started), keep=options.keep)
        if options.keep and stack.started:
            if keeping is not None:
                keeping.set()
            await (stop or asyncio.Event()).wait()
    finally:
        await asyncio.to_thread(stack.stop)
    return result
