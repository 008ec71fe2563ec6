"""``chaos status / report / approve`` on ids that are not a normal experiment, against a
real dev server, as a user runs them (a subprocess): one line and exit 2, or a rebuilt
answer, never a traceback and never a wait for a worker that is not there."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from temporalio.client import Client

from antifragile.models.chaos import ChaosExperimentInput
from antifragile.stack.processes import ServerProcess
from tests.integration.chaos_support import cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def env(dev_server: ServerProcess, redis_url: str) -> dict[str, str]:
    return dict(
        os.environ,
        ANTIFRAGILE_TEMPORAL_ADDRESS=f"127.0.0.1:{dev_server.port}",
        ANTIFRAGILE_REDIS_URL=redis_url,
        COLUMNS="200",
    )


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


async def test_an_id_that_is_not_a_chaos_experiment_is_one_line_exit_2(
    temporal_client: Client, env: dict[str, str]
) -> None:
    other = f"not-chaos-{uuid.uuid4().hex[:6]}"
    handle = await temporal_client.start_workflow("Nothing", id=other, task_queue="nobody")
    for command in (["report", other], ["status", other], ["approve", other, "--by", "bob"]):
        code, _out, err = await cli(env, "chaos", *command)
        assert code == 2, (command, err)
        assert "is not a chaos experiment (workflow type Nothing)" in _one_line(err)
    await handle.terminate("test over")
    code, _out, err = await cli(env, "chaos", "report", other)
    assert code == 2 and "is not a chaos experiment" in _one_line(err)


async def test_a_chaos_workflow_without_input_is_one_line_exit_2(
    temporal_client: Client, env: dict[str, str]
) -> None:
    """``temporal workflow start --type ChaosExperimentWorkflow`` with no input, terminated
    before any worker saw it: nothing to rebuild a report from."""
    wid = f"chaos-noinput-{uuid.uuid4().hex[:6]}"
    handle = await temporal_client.start_workflow(
        "ChaosExperimentWorkflow", id=wid, task_queue="nobody"
    )
    await handle.terminate("test over")
    for command in ("report", "status"):
        code, _out, err = await cli(env, "chaos", command, wid)
        assert code == 2, err
        assert "no chaos experiment input in its history" in _one_line(err)


async def test_an_experiment_no_worker_answers_is_rebuilt_not_waited_for(
    temporal_client: Client, env: dict[str, str]
) -> None:
    wid = f"chaos-noworker-{uuid.uuid4().hex[:6]}"
    data = ChaosExperimentInput.model_validate(
        {
            "scenario": {"name": "nw", "chaos_type": "LATENCY", "target": "demo-db"},
            "experiment_id": wid,
        }
    )
    handle = await temporal_client.start_workflow(
        "ChaosExperimentWorkflow", data, id=wid, task_queue="nobody"
    )
    code, out, err = await cli(env, "chaos", "status", wid)
    assert code == 0 and "Traceback" not in err, err
    assert "VALIDATING" in out and "no worker answered" in out
    assert "FAILED" not in out  # it has not failed: nobody knows yet
    code, out, err = await cli(env, "chaos", "report", wid, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["rebuilt"] is True and report["outcome"] is None
    assert "no worker answered" in report["reason"]
    code, _out, err = await cli(env, "chaos", "approve", wid, "--by", "bob")
    assert code == 2 and "no worker answered" in _one_line(err)
    await handle.terminate("test over")
    code, _out, err = await cli(env, "chaos", "approve", wid, "--by", "bob")
    assert code == 2 and "it has ended: TERMINATED" in _one_line(err)
