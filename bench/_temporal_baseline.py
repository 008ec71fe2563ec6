"""Baseline workflows for the benchmarks: Temporal alone, with nothing of ours in the path."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench_noop")
async def bench_noop() -> None:
    """Does nothing: its start time is what the benchmark measures."""


@workflow.defn(name="BenchIdleWorkflow")
class BenchIdleWorkflow:
    """Waits idle for one signal, then runs one activity (signal → running activity)."""

    def __init__(self) -> None:
        self._go = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._go)
        await workflow.execute_activity(bench_noop, start_to_close_timeout=timedelta(seconds=30))

    @workflow.signal
    def go(self) -> None:
        self._go = True


@workflow.defn(name="BenchTrivialWorkflow")
class BenchTrivialWorkflow:
    """Runs one activity and ends: the unit of the storm baseline."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(bench_noop, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="BenchChildWorkflow")
class BenchChildWorkflow:
    """Runs one activity: the child of :class:`BenchParentWorkflow`."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(bench_noop, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="BenchParentWorkflow")
class BenchParentWorkflow:
    """Waits idle for one signal, then starts a child that runs one activity
    (signal → a new child's running activity: the shape of an admission)."""

    def __init__(self) -> None:
        self._go = False

    @workflow.run
    async def run(self, child_id: str) -> None:
        await workflow.wait_condition(lambda: self._go)
        await workflow.execute_child_workflow(BenchChildWorkflow.run, id=child_id)

    @workflow.signal
    def go(self) -> None:
        self._go = True
