"""Optional OpenTelemetry tracing of clients and workers (the ``otel`` extra).

When ``ANTIFRAGILE_OTEL_ENDPOINT`` is set, :func:`antifragile.temporal_client.connect`
adds the Temporal SDK's :class:`~temporalio.contrib.opentelemetry.TracingInterceptor` to
the client; a worker built from that client inherits it, so workflow starts, signals,
updates, workflow runs and activities become spans exported over OTLP/HTTP. Without the
setting nothing is imported and nothing is traced.

The tracer provider is our own (never the process-global one), so an application that
embeds the runtime and configures OpenTelemetry itself keeps its configuration.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from antifragile.errors import ConfigError
from antifragile.settings import Settings

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
