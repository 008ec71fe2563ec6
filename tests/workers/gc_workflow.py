"""A workflow that runs the garbage collector: finalizers then run on a workflow thread,
inside the sandbox (a module of its own, so the sandbox imports nothing else)."""

from __future__ import annotations

import gc

from temporalio import workflow


@workflow.defn
class CollectGarbageWorkflow:
    """Collects garbage once, inside the sandbox."""

    @workflow.run
    async def run(self) -> int:
        """Returns how many objects the collection found unreachable."""
        return gc.collect()
