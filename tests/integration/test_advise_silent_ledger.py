"""``advise``/``score`` as a new user meets them after the demo: the demo's ledgers run on the
demo's task queue, where no worker polls once the demo has stopped."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client

from antifragile.constants import PROFILE_WORKFLOW_TYPE, profile_workflow_id
from antifragile.models.learning import ProfileInput
from antifragile.stack.processes import ServerProcess
from tests.helpers import run_cli, stack_env

pytestmark = pytest.mark.integration


async def test_a_named_ledger_nobody_serves_says_where_it_runs_and_what_to_start(
    temporal_client: Client, dev_server: ServerProcess, redis_url: str, task_queue: str
) -> None:
    dependency = f"silent-{uuid.uuid4().hex[:8]}"
    other_queue = f"gone-{uuid.uuid4().hex[:8]}"
    await temporal_client.start_workflow(
        PROFILE_WORKFLOW_TYPE,
        ProfileInput(dependency=dependency),
        id=profile_workflow_id(dependency),
        task_queue=other_queue,  # a fleet whose workers are gone
    )
    env = stack_env(dev_server, redis_url, task_queue)
    try:
        result = await run_cli(env, "advise", dependency, timeout=60)
        assert result.code == 1, result
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert f"ledger {profile_workflow_id(dependency)} did not answer" in line, line
        assert f"task queue '{other_queue}'" in line, line
        assert f"ANTIFRAGILE_TASK_QUEUE={other_queue} antifragile worker" in line, line
        # Listing this fleet's ledgers: none here, and the line says which fleet.
        listing = await run_cli(env, "score", timeout=60)
        assert listing.code == 0, listing
        assert f"no dependency has a ledger on task queue {task_queue} yet" in listing.stdout
    finally:
        await temporal_client.get_workflow_handle(profile_workflow_id(dependency)).terminate()
