"""Process settings, read from ``ANTIFRAGILE_*`` environment variables.

Every command and process (CLI, worker, in-process runtime, dev stack) reads the same
settings, so one set of variables points everything at the same Temporal and Redis.
Secrets (API key, TLS key) live here and never enter workflow inputs or history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"
"""The constitutional hash every request carries unless configured otherwise."""

DEFAULT_TRAFFIC_WINDOW_S = 60.0
"""Length of the runtimes' traffic windows, seconds (``Settings.traffic_window_s``)."""
MIN_TRAFFIC_WINDOW_S = 0.5
"""Shortest traffic window, seconds: windows rotate in a background loop, and a tiny one
(1e-300 was accepted) would spin it; shorter than a snapshot period is useless anyway."""
DEFAULT_HARVEST_GRACE_S = 10.0
"""Seconds a worker's harvester waits after a window ends (``Settings.harvest_grace_s``;
more than a runtime's default 3 s snapshot publish interval)."""

SECRET_SETTINGS: tuple[tuple[str, ...], ...] = (("redis_url",), ("temporal_api_key",))
"""Settings whose values may carry secrets: an error about them never shows the value."""


class Settings(BaseSettings):
    """Connection and identity settings shared by every antifragile process.

    Attributes:
        temporal_address: Temporal frontend ``host:port``. Default ``127.0.0.1:7233``.
        temporal_namespace: Temporal namespace. Default ``default``.
        task_queue: Task queue the worker polls and clients start workflows on.
            Default ``antifragile``.
        temporal_api_key: API key for Temporal Cloud or a secured cluster. Default none.
        temporal_tls: Use TLS to Temporal (implied by an API key or client cert).
            Default false.
        temporal_tls_ca: PEM file with the server CA. Default none (system roots).
        temporal_tls_cert: PEM client certificate for mTLS; needs ``temporal_tls_key``.
            Default none.
        temporal_tls_key: PEM client key for mTLS; needs ``temporal_tls_cert``.
            Default none.
        redis_url: Redis holding the fault plane, health snapshots and metering.
            Default ``redis://127.0.0.1:6379/0``.
        constitutional_hash: Hash every recovery request and chaos scenario must carry.
            Default ``cdd01ef066bc6cf2``.
        policy_file: YAML worker policy (see ``antifragile.policy``). Default none:
            the policy defaults apply.
        metrics_port: Port of the Prometheus endpoint of a worker or runtime (our
            metrics); 0 = off. Default 0.
        temporal_metrics_port: Port of the Temporal SDK's own Prometheus endpoint in a
            worker; 0 = off. Default 0.
        instance_id: Name of this process in fleet health snapshots. Default: the
            hostname and pid.
        ui_url: Base URL of the Temporal UI, for the links the CLI prints.
            Default ``http://127.0.0.1:8233``.
        log_level: Root log level (DEBUG, INFO, WARNING, ERROR, CRITICAL). Default
            ``INFO``.
        log_format: ``text`` for people or ``json`` for one JSON object per line (with
            the workflow id of workflow and activity records). Default ``text``.
        otel_endpoint: OTLP/HTTP traces endpoint (e.g. ``http://collector:4318/v1/traces``)
            that turns on OpenTelemetry tracing of clients and workers through the
            Temporal SDK's ``TracingInterceptor``; needs the ``otel`` extra. Default
            none: tracing off.
        otel_service_name: ``service.name`` resource attribute of the spans. Default
            ``antifragile``.
        traffic_window_s: Length of the traffic windows a runtime publishes with its
            health snapshot and a worker's harvester coalesces into the ledgers, seconds
            (at least :data:`MIN_TRAFFIC_WINDOW_S`, 0.5). Every runtime and worker of a
            fleet must use the same value: windows are aligned to multiples of it, and
            the harvester sends only windows of its own length. Default 60
            (:data:`DEFAULT_TRAFFIC_WINDOW_S`).
        harvest_grace_s: Seconds a worker's harvester waits after a window ends before
            sending it, so every runtime has rotated and published it (0 < grace <
            ``traffic_window_s``). It must exceed the runtimes' snapshot publish
            interval (``Runtime(publish_interval_s=...)``, default 3 s), or a runtime's
            share of a window is missed. Default 10 (:data:`DEFAULT_HARVEST_GRACE_S`).
    """

    model_config = SettingsConfigDict(env_prefix="ANTIFRAGILE_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "antifragile"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = Field(default=None, validate_default=True)
    redis_url: str = "redis://127.0.0.1:6379/0"
    constitutional_hash: str = DEFAULT_CONSTITUTIONAL_HASH
    policy_file: Path | None = None
    metrics_port: int = Field(default=0, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=0, ge=0, le=65535)
    instance_id: str | None = None
    ui_url: str = "http://127.0.0.1:8233"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    otel_endpoint: str | None = None
    otel_service_name: str = "antifragile"
    traffic_window_s: float = DEFAULT_TRAFFIC_WINDOW_S
    harvest_grace_s: float = DEFAULT_HARVEST_GRACE_S

    def workflow_url(self, workflow_id: str, run_id: str | None = None) -> str:
        """Link to a workflow in the Temporal UI."""
        base = f"{self.ui_url.rstrip('/')}/namespaces/{self.temporal_namespace}/workflows/"
        return base + workflow_id + (f"/{run_id}/history" if run_id else "")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        if info.field_name == "log_level":
            level = value.strip().upper()
            return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
        return value.strip().lower()

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint_is_http(cls, value: str | None) -> str | None:
        if not value:  # unset or empty (compose's ${ANTIFRAGILE_OTEL_ENDPOINT:-}): off
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"otel_endpoint must be an http(s):// URL, got {value!r}")
        return value

    @field_validator("temporal_tls_key")
    @classmethod
    def _client_cert_and_key_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # A field validator (not a model validator) so the error names this field and shows
        # only its value: a model-level error would echo every input, API key included.
        cert = info.data.get("temporal_tls_cert")
        if value is None and cert is not None:
            raise ValueError(
                f"temporal_tls_cert is set ({cert}) but temporal_tls_key is not: "
                "mTLS needs the client certificate and its key"
            )
        if value is not None and cert is None and "temporal_tls_cert" in info.data:
            raise ValueError(
                f"temporal_tls_key is set ({value}) but temporal_tls_cert is not: "
                "mTLS needs the client certificate and its key"
            )
        return value

    @property
    def uses_tls(self) -> bool:
        """Whether connections to Temporal use TLS (explicitly, or implied by a key/cert)."""
        return bool(
            self.temporal_tls
            or self.temporal_api_key
            or self.temporal_tls_ca
            or self.temporal_tls_cert
        )

    @field_validator("traffic_window_s")
    @classmethod
    def _window_positive(cls, value: float) -> float:
        if not MIN_TRAFFIC_WINDOW_S <= value < float("inf"):
            raise ValueError(
                f"traffic_window_s must be at least {MIN_TRAFFIC_WINDOW_S:g} seconds, got {value!r}"
            )
        return value

    @field_validator("harvest_grace_s")
    @classmethod
    def _grace_inside_window(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("traffic_window_s")
        if not value > 0:
            raise ValueError(f"harvest_grace_s must be > 0 seconds, got {value!r}")
        if window is not None and not value < window:
            raise ValueError(
                f"harvest_grace_s must be < traffic_window_s ({window!r} s), got {value!r}"
            )
        return value

    @field_validator("temporal_address")
    @classmethod
    def _address_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"temporal_address must be host:port, got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            # Never echo the value: a Redis URL usually carries its password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @field_validator("constitutional_hash")
    @classmethod
    def _hash_is_hex(cls, value: str) -> str:
        if not value or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError("constitutional_hash must be a non-empty hex string")
        return value.lower()
