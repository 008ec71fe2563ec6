"""One way to connect to Temporal, used by the CLI, workers, the runtime bridge and tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from antifragile.errors import AntifragileError
from antifragile.settings import Settings


class TemporalUnavailableError(AntifragileError):
    """Temporal could not be reached; the message names the address tried."""


def _tls_config(settings: Settings) -> TLSConfig | bool:
    if settings.temporal_tls_cert or settings.temporal_tls_ca:
        return TLSConfig(
            server_root_ca_cert=settings.temporal_tls_ca.read_bytes()
            if settings.temporal_tls_ca
            else None,
            client_cert=settings.temporal_tls_cert.read_bytes()
            if settings.temporal_tls_cert
            else None,
            client_private_key=settings.temporal_tls_key.read_bytes()
            if settings.temporal_tls_key
            else None,
        )
    return bool(settings.temporal_tls or settings.temporal_api_key)


async def connect(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal with the pydantic data converter and the configured TLS/API key.

    Raises:
        TemporalUnavailableError: nothing answered at ``settings.temporal_address``.
    """
    settings = settings or Settings()
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            tls=_tls_config(settings),
            api_key=api_key,
            runtime=runtime,
        )
    except RuntimeError as exc:
        text = str(exc)
        why = (
            "connection refused"
            if "onnection refused" in text or "ConnectionRefused" in text
            else text.splitlines()[0][:160]
        )
        raise TemporalUnavailableError(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {why}"
        ) from None
