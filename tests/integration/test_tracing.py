"""ANTIFRAGILE_OTEL_ENDPOINT end to end: a real worker and the CLI export spans over OTLP/HTTP.

The collector is a small HTTP server that records what it is sent; the spans are decoded
with the OTLP protobuf classes, so the test sees span names, not just traffic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from antifragile.stack.processes import ServerProcess
from tests.helpers import run_cli, stack_env, wait_for

pytestmark = pytest.mark.integration


class Collector:
    """Span names (and the service name) received at ``/v1/traces``."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        (
                            a.value.string_value
                            for a in resource_spans.resource.attributes
                            if a.key == "service.name"
                        ),
                        "",
                    )
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend((service, s.name) for s in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def names(self) -> set[str]:
        return {name for _, name in self.spans}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


async def test_a_recovery_started_from_the_cli_is_traced_through_the_worker(
    dev_server: ServerProcess, redis_url: str, task_queue: str, worker_process, collector
) -> None:
    env = stack_env(
        dev_server,
        redis_url,
        task_queue,
        ANTIFRAGILE_OTEL_ENDPOINT=collector.url,
        ANTIFRAGILE_OTEL_SERVICE_NAME="af-it",
    )
    worker = worker_process(env)
    done = await run_cli(
        env,
        "recovery",
        "start",
        f"traced-{task_queue}",
        "--probe",
        f"redis://{redis_url.split('//')[1]}",
        "--wait",
    )
    assert done.code == 0, done.stderr
    worker.stop()  # the worker flushes its spans on SIGTERM

    async def traced() -> bool:
        names = collector.names()
        return "RunWorkflow:RecoveryWorkflow" in names and "RunActivity:probe_service" in names

    assert await wait_for(traced, timeout=30, interval=0.2), (
        collector.names(),
        worker.log.read_text()[-2000:],
    )
    assert set(collector.paths) == {"/v1/traces"}
    assert {service for service, _ in collector.spans} == {"af-it"}
    # The CLI's own client traced the start (its spans are flushed before it exits); the
    # worker's own starts are StartChildWorkflow / StartActivity.
    client_starts = {
        name
        for name in collector.names()
        if name.split(":")[0]
        in ("StartWorkflow", "SignalWithStartWorkflow", "StartUpdateWithStartWorkflow")
    }
    assert client_starts, collector.names()
