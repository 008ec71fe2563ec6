"""Telemetry of every antifragile process: structured logs and OpenTelemetry tracing.

Logs:
Logging for antifragile processes: plain text for people, JSON lines for machines.

``ANTIFRAGILE_LOG_FORMAT=json`` turns on one JSON object per line. Records that come from
workflow or activity code carry the Temporal SDK's context (``temporal_workflow`` /
``temporal_activity`` extras); they are flattened into ``workflow_id``, ``run_id``,
``workflow_type`` and ``activity_type`` fields so a log search by workflow id works.

Tracing:
Optional OpenTelemetry tracing of clients and workers (the ``otel`` extra).

When ``ANTIFRAGILE_OTEL_ENDPOINT`` is set, :func:`antifragile.temporal_client.connect`
adds the Temporal SDK's :class:`~temporalio.contrib.opentelemetry.TracingInterceptor` to
the client; a worker built from that client inherits it, so workflow starts, signals,
updates, workflow runs and activities become spans exported over OTLP/HTTP. Without the
setting nothing is imported and nothing is traced.

The tracer provider is our own (never the process-global one), so an application that
embeds the runtime and configures OpenTelemetry itself keeps its configuration.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from antifragile.errors import ConfigError
from antifragile.settings import Settings

_CONTEXT_FIELDS = {
    "temporal_workflow": {
        "workflow_id": "workflow_id",
        "run_id": "run_id",
        "workflow_type": "workflow_type",
        "task_queue": "task_queue",
    },
    "temporal_activity": {
        "workflow_id": "workflow_id",
        "workflow_run_id": "run_id",
        "activity_type": "activity_type",
        "activity_id": "activity_id",
        "attempt": "attempt",
    },
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the Temporal context flattened in."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for extra, fields in _CONTEXT_FIELDS.items():
            context = getattr(record, extra, None)
            if isinstance(context, dict):
                for source, target in fields.items():
                    if source in context:
                        doc[target] = context[source]
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(
    level: str | None = None, fmt: str | None = None, settings: Settings | None = None
) -> None:
    """Configure the root logger.

    Args:
        level: Log level; default ``settings.log_level`` (``ANTIFRAGILE_LOG_LEVEL``).
        fmt: ``text`` or ``json``; default ``settings.log_format``
            (``ANTIFRAGILE_LOG_FORMAT``).
        settings: Where the defaults come from; default read from ``ANTIFRAGILE_*``.
    """
    if level is None or fmt is None:
        settings = settings or Settings()
    level = (level or (settings.log_level if settings else "INFO")).upper()
    fmt = (fmt or (settings.log_format if settings else "text")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- tracing ---


if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.client import Interceptor

log = logging.getLogger(__name__)

_providers: dict[tuple[str, str], TracerProvider] = {}
"""One provider (and batch exporter thread) per endpoint and service name per process."""


def tracer_provider(
    service_name: str, exporter: SpanExporter, *, batch: bool = True
) -> TracerProvider:
    """A tracer provider sending ``service_name``'s spans to ``exporter``.

    Args:
        service_name: The ``service.name`` resource attribute.
        exporter: Where spans go (OTLP, or an in-memory exporter in tests).
        batch: Export in a background batch (default) or synchronously on span end.

    Raises:
        ConfigError: the ``opentelemetry-sdk`` package is not installed.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise ConfigError(
            "tracing needs opentelemetry-sdk: pip install 'antifragile[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def tracing_interceptor(provider: TracerProvider) -> Interceptor:
    """The SDK's ``TracingInterceptor`` with a tracer of ``provider`` (client and worker)."""
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(provider.get_tracer("antifragile"))


def interceptors_from_settings(settings: Settings) -> list[Interceptor]:
    """``[TracingInterceptor]`` exporting to ``settings.otel_endpoint``, or ``[]`` when unset.

    Raises:
        ConfigError: tracing is configured but the ``otel`` extra is not installed.
    """
    endpoint = settings.otel_endpoint
    if not endpoint:
        return []
    key = (endpoint, settings.otel_service_name)
    provider = _providers.get(key)
    if provider is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                f"otel_endpoint is set ({endpoint}) but the OTLP exporter is not installed: "
                "pip install 'antifragile[otel]'"
            ) from None
        provider = tracer_provider(settings.otel_service_name, OTLPSpanExporter(endpoint=endpoint))
        _providers[key] = provider
        log.info("tracing to %s as %s", endpoint, settings.otel_service_name)
    return [tracing_interceptor(provider)]


def shutdown_tracing() -> None:
    """Flush and stop every provider made from settings (at process exit)."""
    while _providers:
        _, provider = _providers.popitem()
        provider.shutdown()
