"""The worker policy: what the operator allows, never what a request asks for.

Loaded from the YAML file named by ``ANTIFRAGILE_POLICY_FILE``; without one the
defaults below apply. A request can only choose among what the policy permits
(e.g. ``command:NAME`` must name a command listed here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from antifragile.errors import ConfigError, describe_validation_error
from antifragile.hashing import DEFAULT_WINDOW_S
from antifragile.models.adaptation import AdaptationBand
from antifragile.models.common import DEFAULT_WEBHOOK, PROBE_SCHEMES
from antifragile.models.learning import DependencySettings, SettingBounds

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""``${ENV_VAR}`` in a policy value: replaced by the worker's environment variable, inside
the activity that uses it (``antifragile.recovery.named_targets``), never earlier."""

SECRET_FIELDS = (
    ("recovery", "webhooks"),
    ("recovery", "probes"),
    ("recovery", "approvers"),
    ("recovery", "commands"),
)
"""Policy fields whose values may hold secrets: errors about them never show the value.

Approvers: a key pasted where its variable's name belongs (``key_env: sk-live-…``).
Commands: an argv may carry a token (``curl -H "Authorization: Bearer …"``)."""

_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _check_placeholders(value: str) -> str:
    """Refuse a ``$`` that is not part of a well-formed ``${ENV_VAR}``."""
    if "$" in PLACEHOLDER.sub("", value):
        raise ValueError("a '$' must start a placeholder like ${ENV_VAR}")
    return value


def _check_target_names(value: dict[str, Any], what: str) -> None:
    for name in value:
        if not _TARGET_NAME.match(name):
            raise ValueError(
                f"{what} name {name[:40]!r} must be 1-100 letters, digits, '.', '_' or '-'"
            )


class WebhookConfig(BaseModel):
    """One named webhook of the worker policy (``recovery.webhooks.NAME``).

    A request names it (action ``webhook:NAME``); its URL and headers never leave the
    worker. Values may contain ``${ENV_VAR}``, replaced from the worker's environment when
    the webhook is called.

    Attributes:
        url: ``http(s)://…`` to POST to.
        headers: Extra request headers, e.g. ``Authorization: Bearer ${HOOK_TOKEN}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "${")):
            raise ValueError("a webhook url must start with http:// or https://")
        return _check_placeholders(value)

    @field_validator("headers")
    @classmethod
    def _header_values(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", name):
                raise ValueError(f"bad header name {name[:40]!r}")
            if "\n" in text or "\r" in text:
                raise ValueError(f"header {name!r} must be one line")
            _check_placeholders(text)
        return value


class ApproverConfig(BaseModel):
    """One approver of the worker policy.

    Attributes:
        key_env: Name of the worker's environment variable holding this approver's HMAC key.
            None (default): the approver's name is advisory (unsigned decisions accepted).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class RecoveryPolicyConfig(BaseModel):
    """The ``recovery`` section of the worker policy.

    Attributes:
        approvers: Who may approve or reject, for recoveries and chaos experiments: a list of
            names, or ``{NAME: {key_env: VAR}}`` to require decisions signed with the key in
            the worker's environment variable ``VAR`` (see ``antifragile.hashing``).
            Normalised to ``{NAME: ApproverConfig}``. Empty (default): any named approver.
        approval_window_s: How far a signed decision's time may be from the worker's clock,
            seconds. Default 300.
        max_concurrent: Recoveries the orchestrator runs at once. Default 5.
        max_admissions_per_minute: New admissions per minute across the fleet. Default 60.
        retry_budget: Share of failed attempts in the window above which admissions
            pause. Default 0.1.
        commands: ``NAME: [argv, ...]`` — the only commands a ``command:NAME`` action
            may run. Default none.
        webhooks: ``NAME: {url, headers}`` (or ``NAME: URL``) — the only webhooks a
            ``webhook:NAME`` action may call; values may contain ``${ENV_VAR}``. An old
            policy's ``webhook_url: URL`` is read as ``webhooks: {default: URL}`` (what a bare
            ``webhook`` action calls). Default none.
        probes: ``NAME: URL`` — probes a request names as ``probe:NAME``, so credentials
            (``redis://:${REDIS_PASSWORD}@cache:6379/0``) stay in the worker. Default none.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    approvers: dict[str, ApproverConfig] = Field(default_factory=dict)
    approval_window_s: float = Field(default=DEFAULT_WINDOW_S, gt=0.0, le=86_400.0)
    max_concurrent: int = Field(default=5, ge=1, le=10_000)
    max_admissions_per_minute: int = Field(default=60, ge=1)
    retry_budget: float = Field(default=0.1, gt=0.0, le=1.0)
    commands: dict[str, list[str]] = Field(default_factory=dict)
    webhooks: dict[str, WebhookConfig] = Field(default_factory=dict)
    probes: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _migrate_webhook_url(cls, data: Any) -> Any:
        # Policies written before named webhooks had one `webhook_url`: it becomes the
        # webhook a bare `webhook` action calls, so old files keep loading unchanged.
        if isinstance(data, dict) and "webhook_url" in data:
            data = dict(data)
            url = data.pop("webhook_url")
            if url is not None:
                hooks = dict(data.get("webhooks") or {})
                if DEFAULT_WEBHOOK in hooks:
                    raise ValueError(
                        f"webhook_url and webhooks.{DEFAULT_WEBHOOK} both set: keep "
                        f"webhooks.{DEFAULT_WEBHOOK} only"
                    )
                hooks[DEFAULT_WEBHOOK] = {"url": url}
                data["webhooks"] = hooks
        return data

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhook_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            _check_target_names(value, "webhook")
            return {k: ({"url": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("probes")
    @classmethod
    def _probe_urls(cls, value: dict[str, str]) -> dict[str, str]:
        _check_target_names(value, "probe")
        for name, url in value.items():
            scheme = url.partition("://")[0]
            if scheme not in PROBE_SCHEMES:
                raise ValueError(f"probe {name!r} must be a tcp://, http(s):// or redis:// URL")
            _check_placeholders(url)
        return value

    @field_validator("approvers", mode="before")
    @classmethod
    def _approvers_as_mapping(cls, value: Any) -> Any:
        # A plain list of names is the common case; a mapping adds keys to some of them.
        if isinstance(value, list | tuple):
            return {str(name): ApproverConfig() for name in value}
        if isinstance(value, dict):
            return {str(k): (ApproverConfig() if v is None else v) for k, v in value.items()}
        return value

    def approver_key_env(self, name: str) -> str | None:
        """The environment variable holding ``name``'s key, or None if unsigned/unknown."""
        config = self.approvers.get(name)
        return config.key_env if config is not None else None

    @field_validator("commands")
    @classmethod
    def _commands_not_empty(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, argv in value.items():
            if not argv:
                raise ValueError(f"command {name!r} has an empty argv")
        return value


class ChaosPolicyConfig(BaseModel):
    """The ``chaos`` section of the worker policy.

    Attributes:
        allowed_targets: Guarded targets an experiment may touch. Empty (default): any.
        max_duration_s: Hard cap on an experiment's length, seconds. Default 300.
        lease_ttl_s: TTL of a fault lease in Redis, seconds. Default 15.
        require_approval: Every experiment waits for an approval (``chaos approve``) before
            injecting, whatever its scenario says; ``inject_fault`` refuses without one.
            Default false.
        require_hash_validation: The constitutional hash is checked at every injection and
            lease renewal, whatever the scenario says. Default false.
        min_abort_below: The lowest ``abort_below_health`` a scenario may set, 0..1: the
            health guard cannot be switched off (0) or set below this. Default 0.0.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_targets: list[str] = Field(default_factory=list)
    max_duration_s: float = Field(default=300.0, gt=0.0, le=300.0)
    lease_ttl_s: float = Field(default=15.0, gt=0.0, le=3600.0)
    require_approval: bool = False
    require_hash_validation: bool = False
    min_abort_below: float = Field(default=0.0, ge=0.0, le=1.0)


AUTO_MAX_STEP = 0.5
"""Default safe band of ``adaptation.auto``: at most a 50 % change of a setting at once."""
AUTO_MIN_OBSERVATIONS = 3
"""Default least held observations before ``adaptation.auto`` acts on advice."""
AUTO_MIN_STEP = 0.1
"""Default ``adaptation.auto_min_step``: ``auto`` makes no change under 10 % (advice is
rounded to 0.1 s and wobbles by a few % as outages arrive; each change is a version)."""


class AdaptationPolicyConfig(BaseModel):
    """The ``adaptation`` section: how far learned settings may move a dependency.

    A published config version (``antifragile.learning.config_versions``) is checked
    against these bounds by the publisher (the worker or the CLI), which REFUSES a value
    outside them, and carries them in the version; the runtime (in the service process,
    which never reads this file) clamps to the bounds the version carries and to its own
    hard safety limits (``antifragile.inprocess.config_subscriber.HARD_LIMITS``).

    Attributes:
        auto: A ledger applies its in-band advice itself (``by="auto"``), after a batch
            of observations that changed the advice, recorded as an operator's change
            is. Default false (only ``antifragile advise apply`` applies advice).
        auto_max_step: The safe band of ``auto``: largest relative change of one
            setting, ``|new - old| / old``; advice further away is left to a person.
            Default :data:`AUTO_MAX_STEP` (0.5).
        auto_min_observations: ``auto`` acts only on advice resting on at least this
            many held observations. Default :data:`AUTO_MIN_OBSERVATIONS` (3).
        auto_min_step: Smallest relative change ``auto`` makes, ``|new - old| / old``;
            a smaller one is left as it is (no version per wobble of the advice). 0: any
            change. Default :data:`AUTO_MIN_STEP` (0.1).
        open_duration_s: Range of the breaker's open duration, seconds. Default 1..300.
        failure_rate_threshold: Range of the failure-rate threshold. Default 0.05..0.95.
        failure_threshold: Range of the consecutive-failure threshold. Default 1..1000.
        timeout_s: Range of the guard's per-call timeout, seconds. Default 0.01..120.
    """

    model_config = ConfigDict(extra="forbid")

    auto: bool = False
    auto_max_step: float = Field(default=AUTO_MAX_STEP, gt=0)
    auto_min_observations: int = Field(default=AUTO_MIN_OBSERVATIONS, ge=1)
    auto_min_step: float = Field(default=AUTO_MIN_STEP, ge=0)
    open_duration_s: SettingBounds = Field(default_factory=lambda: SettingBounds(min=1, max=300))
    failure_rate_threshold: SettingBounds = Field(
        default_factory=lambda: SettingBounds(min=0.05, max=0.95)
    )
    failure_threshold: SettingBounds = Field(default_factory=lambda: SettingBounds(min=1, max=1000))
    timeout_s: SettingBounds = Field(default_factory=lambda: SettingBounds(min=0.01, max=120))

    def band(self) -> AdaptationBand:
        """What a ledger may apply by itself (``auto`` and its safe band)."""
        return AdaptationBand(
            auto=self.auto,
            auto_max_step=self.auto_max_step,
            auto_min_observations=self.auto_min_observations,
            auto_min_step=self.auto_min_step,
            auto_known_only=True,  # a step is measured from the value in force
            auto_pauses_on_revert=True,  # never redo what a person undid
        )

    def bounds(self) -> dict[str, SettingBounds]:
        """Setting name -> its range (what a published version carries)."""
        return {name: getattr(self, name) for name in DependencySettings.model_fields}

    def violations(self, settings: DependencySettings) -> list[str]:
        """One line per setting of ``settings`` outside its range (empty: all allowed)."""
        out = []
        for name, limits in self.bounds().items():
            value = getattr(settings, name)
            if value is not None and not limits.min <= value <= limits.max:
                out.append(f"{name}={value} outside [{limits.min}, {limits.max}]")
        return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what a YAML error is, on one line, never quoting the file's text.

    PyYAML's own message includes a snippet of the offending line, which may hold a literal
    secret (a probe's password, a webhook token), and spans several lines.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or exc.__class__.__name__
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
        return str(what)
    return exc.__class__.__name__


class WorkerPolicy(BaseModel):
    """The whole worker policy file.

    Attributes:
        recovery: Recovery limits, approvers and allowed commands.
        chaos: Chaos limits and allowed targets.
        adaptation: Bounds of learned settings (config versions).
    """

    model_config = ConfigDict(extra="forbid")

    recovery: RecoveryPolicyConfig = Field(default_factory=RecoveryPolicyConfig)
    chaos: ChaosPolicyConfig = Field(default_factory=ChaosPolicyConfig)
    adaptation: AdaptationPolicyConfig = Field(default_factory=AdaptationPolicyConfig)

    @classmethod
    def load(cls, path: Path | None) -> WorkerPolicy:
        """Load a policy file, or the defaults when ``path`` is None.

        Raises:
            ConfigError: the file is missing, not YAML, or has an invalid field.
        """
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"policy file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"policy file {path}: not valid YAML ({_yaml_problem(exc)})"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"policy file {path}: expected a mapping at the top level")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            # Webhooks and probes may hold literal secrets: name the field, not the value.
            message = describe_validation_error(exc, hide_input_at=SECRET_FIELDS)
            raise ConfigError(f"policy file {path}: {message}") from None
