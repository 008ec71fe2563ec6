"""Tracing and SDK metrics on the time-skipping server, with the production sandbox.

A recovery runs through a client carrying the SDK's TracingInterceptor (as ``connect``
adds it when ``ANTIFRAGILE_OTEL_ENDPOINT`` is set); its spans land in an in-memory
exporter. The Temporal SDK's Prometheus endpoint serves ``temporal_*`` metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
import uuid

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.common import CommonActivities
from antifragile.inprocess.metrics import temporal_runtime_with_metrics
from antifragile.models.recovery import (
    ProbeInput,
    ProbeResult,
    RecoveryActionInput,
    RecoveryActionResult,
    RecoveryRequest,
    RecoveryState,
)
from antifragile.policy import WorkerPolicy
from antifragile.recovery.client import start_recovery
from antifragile.settings import Settings
from antifragile.stack.processes import free_port
from antifragile.telemetry import JsonFormatter, tracer_provider, tracing_interceptor
from workers.main import workflow_runner
from workflows.recovery import RecoveryWorkflow

pytestmark = pytest.mark.timeout(90)


@activity.defn(name="probe_service")
async def probe_service(data: ProbeInput) -> ProbeResult:
    activity.logger.info("probing %s at %s", data.service, data.url)
    return ProbeResult(healthy=True, detail="ok")


@activity.defn(name="run_recovery_action")
async def run_recovery_action(data: RecoveryActionInput) -> RecoveryActionResult:
    return RecoveryActionResult(ok=True, detail="ok")


def recovery_worker(client: Client, queue: str) -> Worker:
    common = CommonActivities(Settings(), WorkerPolicy())
    return Worker(
        client,
        task_queue=queue,
        workflows=[RecoveryWorkflow],
        activities=[
            common.validate_constitutional_hash,
            common.authorize_approver,
            probe_service,
            run_recovery_action,
        ],
        workflow_runner=workflow_runner(),  # the sandbox the production worker uses
    )


async def test_a_recovery_through_a_traced_client_produces_one_trace_of_spans(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    exporter = InMemorySpanExporter()
    provider = tracer_provider("antifragile-test", exporter, batch=False)
    config = time_skipping_env.client.config()
    config["interceptors"] = [tracing_interceptor(provider)]
    client = Client(**config)  # same connection; workers built from it inherit tracing
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    service = f"traced-{uuid.uuid4().hex[:6]}"
    async with recovery_worker(client, queue):
        handle = await start_recovery(
            client, RecoveryRequest(service=service, probe="tcp://127.0.0.1:9"), task_queue=queue
        )
        result = await handle.result()
    assert result.state is RecoveryState.SUCCEEDED
    provider.force_flush()
    spans = exporter.get_finished_spans()
    provider.shutdown()
    names = {span.name for span in spans}
    assert {
        "SignalWithStartWorkflow:RecoveryWorkflow",
        "RunWorkflow:RecoveryWorkflow",
        "StartActivity:probe_service",
        "RunActivity:probe_service",
        "RunActivity:validate_constitutional_hash",
    } <= names, names
    workflow_spans = [s for s in spans if s.name.endswith("RecoveryWorkflow")]
    assert len({s.context.trace_id for s in workflow_spans if s.context}) == 1
    assert {s.resource.attributes["service.name"] for s in spans} == {"antifragile-test"}
    assert any(s.attributes and s.attributes.get("temporalWorkflowID") == handle.id for s in spans)


async def test_json_logs_of_activities_carry_the_workflow_id_they_serve(
    time_skipping_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    service = f"logged-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.INFO, logger="temporalio.activity"):
        async with recovery_worker(time_skipping_env.client, queue):
            handle = await start_recovery(
                time_skipping_env.client,
                RecoveryRequest(service=service, probe="tcp://127.0.0.1:9"),
                task_queue=queue,
            )
            await handle.result()
    docs = [json.loads(JsonFormatter().format(r)) for r in caplog.records if "probing" in r.message]
    assert docs, "the probe activity logged nothing"
    assert all(d["workflow_id"] == handle.id for d in docs)
    assert all(d["activity_type"] == "probe_service" and d["run_id"] for d in docs)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return ""


async def test_the_sdk_prometheus_endpoint_serves_temporal_metrics_of_a_worker(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    port = free_port()
    runtime = temporal_runtime_with_metrics(port, host="127.0.0.1")
    target = time_skipping_env.client.service_client.config.target_host
    client = await Client.connect(target, runtime=runtime, data_converter=pydantic_data_converter)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    text = ""
    async with recovery_worker(client, queue):
        for _ in range(100):
            text = await asyncio.to_thread(scrape, port)
            if f'task_queue="{queue}"' in text:
                break
            await asyncio.sleep(0.1)
    assert "temporal_" in text
    assert f'task_queue="{queue}"' in text, text[:2000]


async def test_connect_adds_the_tracing_interceptor_only_when_an_endpoint_is_set(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from antifragile import telemetry as tracing
    from antifragile.temporal_client import connect

    target = time_skipping_env.client.service_client.config.target_host
    plain = await connect(Settings(temporal_address=target))
    assert not plain.config()["interceptors"]
    try:
        traced = await connect(
            Settings(temporal_address=target, otel_endpoint="http://127.0.0.1:9/v1/traces")
        )
        assert [type(i) for i in traced.config()["interceptors"]] == [TracingInterceptor]
    finally:
        tracing._providers.clear()  # nothing exported: no flush to the dead endpoint
