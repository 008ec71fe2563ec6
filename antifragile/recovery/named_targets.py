"""Named probes and webhooks: a request carries a name, the worker holds the URL and secrets.

A request's probe ``probe:NAME`` and action ``webhook:NAME`` name entries of the worker
policy (``recovery.probes`` and ``recovery.webhooks``). Their values may contain
``${ENV_VAR}``; this module replaces those from the worker's environment. It runs only inside
the activity that makes the call (never in workflow code, never before the activity), and
what it returns (the URL, the headers) is used for the call and dropped: it never goes back
to the workflow. Every text an activity returns or raises about the call goes through
:meth:`Resolved.redact` first, so a value that came from the environment or a credential in
the URL cannot reach history, a query or a log even through an error message.

Errors (:class:`NamedTargetError`) name the policy entry and the environment variable,
never a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from antifragile.errors import AntifragileError
from antifragile.models.common import (
    DEFAULT_WEBHOOK,
    PROBE_REF_PREFIX,
    credential_in_url,
    credential_name,
    credential_refusal,
    url_credentials,
)
from antifragile.policy import PLACEHOLDER, RecoveryPolicyConfig

REDACTED = "***"
"""What a secret is replaced with in any text that leaves the activity."""


class NamedTargetError(AntifragileError):
    """A name the policy does not define, a missing environment variable, or a refused URL.

    The message is safe to record: it names things, never shows a value.
    """


@dataclass(frozen=True, slots=True)
class Resolved:
    """A probe or webhook ready to call, with the secrets to keep out of anything returned.

    Attributes:
        url: The URL with every ``${ENV_VAR}`` replaced.
        headers: Request headers (webhooks), values replaced likewise. A caller may add its
            own (e.g. ``Idempotency-Key``) to a copy.
        label: How to name the target in results and errors: ``probe:NAME``,
            ``webhook:NAME`` or the request's own (credential-free) URL.
        secrets: Values to redact: every environment value used, every header value, and the
            user-info and credential-like query values of the URL.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    label: str = ""
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***`` (longest first)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text


def expand(
    text: str, environ: Mapping[str, str], where: str, *, encode: bool = False
) -> tuple[str, list[str]]:
    """Replace every ``${VAR}`` in ``text`` from ``environ``.

    Args:
        text: A policy value.
        environ: The worker's environment.
        where: The policy entry, for the error message (e.g. ``recovery.probes.cache``).
        encode: Percent-encode every value (for a URL's user-info).

    Returns:
        The expanded text and the values used, as read and as placed (to redact).

    A line break at the end of a value (a value read from a file) is dropped.

    Raises:
        NamedTargetError: a variable is not set (or empty) in the worker's environment, or
            holds a line break inside its value (never shown).
    """
    used: list[str] = []

    def _one(match: re.Match[str]) -> str:
        var = match.group(1)
        # A value read from a file usually ends with a line break: it is no part of the
        # secret (in a header it made every call fail with a bare "ValueError").
        value = environ.get(var, "").rstrip("\r\n")
        if not value:
            raise NamedTargetError(
                f"{where} needs ${{{var}}}, which is not set in the worker's environment"
            )
        if "\n" in value or "\r" in value:
            raise NamedTargetError(f"{where}: ${{{var}}} holds a line break inside its value")
        placed = quote(value, safe="") if encode else value
        used.extend({value, placed})
        return placed

    return PLACEHOLDER.sub(_one, text), used


_TEMPLATE_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)")


def expand_url(template: str, environ: Mapping[str, str], where: str) -> tuple[str, list[str]]:
    """:func:`expand` for a URL: a value placed in its user-info is percent-encoded.

    A password read from the environment is raw (``pa/ss@wo#rd``); put as is into
    ``redis://:${PASS}@host`` it would end the user-info early and send part of it as the
    host, path or fragment. Encoded, it arrives whole (clients decode user-info). Keep the
    raw value in the variable, not an encoded one.

    Returns:
        The URL and the values used, raw and encoded (to redact).
    """
    match = _TEMPLATE_USERINFO.match(template)
    if match is None:
        return expand(template, environ, where)
    userinfo, used = expand(match.group(2), environ, where, encode=True)
    rest, more = expand(template[match.end() :], environ, where)
    return match.group(1) + userinfo + rest, used + more


def _url_secrets(url: str) -> list[str]:
    """The user-info and credential-like parameter values of ``url`` (raw and unquoted)."""
    return url_credentials(url)


def _secrets(values: list[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))


def resolve_probe(
    policy: RecoveryPolicyConfig, ref: str, environ: Mapping[str, str] | None = None
) -> Resolved:
    """What to probe for a request's ``probe``.

    Args:
        policy: The worker policy's recovery section.
        ref: ``probe:NAME`` (a policy probe) or a plain URL from the request.
        environ: The environment to read ``${VAR}`` from; None reads ``os.environ``.

    Raises:
        NamedTargetError: unknown name, a missing variable, or a plain URL with a
            credential in it (histories written before such URLs were refused).
    """
    if not ref.startswith(PROBE_REF_PREFIX):
        what = credential_in_url(ref)
        if what is not None:
            raise NamedTargetError(credential_refusal("probe", what))
        return Resolved(url=ref, label=ref)
    name = ref.removeprefix(PROBE_REF_PREFIX)
    template = policy.probes.get(name)
    if template is None:
        known = ", ".join(sorted(policy.probes)) or "none"
        raise NamedTargetError(
            f"probe {name!r} is not defined in the worker policy (recovery.probes: {known})"
        )
    env = os.environ if environ is None else environ
    url, used = expand_url(template, env, f"probe {name!r}")
    return Resolved(url=url, label=ref, secrets=_secrets(used + _url_secrets(url)))


def resolve_webhook(
    policy: RecoveryPolicyConfig, name: str, environ: Mapping[str, str] | None = None
) -> Resolved:
    """The URL and headers of a named webhook (action ``webhook:NAME``; ``""`` = default).

    Args:
        policy: The worker policy's recovery section.
        name: The webhook's name; empty for a bare ``webhook`` action.
        environ: The environment to read ``${VAR}`` from; None reads ``os.environ``.

    Returns:
        The webhook; ``headers`` holds the policy's headers only (add your own to a copy).

    Raises:
        NamedTargetError: unknown name, a missing variable, or a URL given in the request
            (``webhook:http…``, from histories written before such actions were refused).
    """
    if name.startswith(("http://", "https://")):
        what = credential_in_url(name)
        if what is not None:
            raise NamedTargetError(credential_refusal("webhook", what))
        raise NamedTargetError(
            "webhook:URL is refused: the worker calls only webhooks of its policy "
            "(recovery.webhooks: NAME: url/headers); pass webhook:NAME"
        )
    name = name or DEFAULT_WEBHOOK
    hook = policy.webhooks.get(name)
    if hook is None:
        known = ", ".join(sorted(policy.webhooks)) or "none"
        raise NamedTargetError(
            f"webhook {name!r} is not defined in the worker policy (recovery.webhooks: {known})"
        )
    env = os.environ if environ is None else environ
    where = f"webhook {name!r}"
    url, used = expand_url(hook.url, env, where)
    if not url.lower().startswith(("http://", "https://")):
        # A url given whole as ${VAR}: its scheme is known only now (never file:// etc.).
        raise NamedTargetError(f"{where}: its url must be http:// or https:// once resolved")
    headers: dict[str, str] = {}
    for header, template in hook.headers.items():
        value, more = expand(template, env, f"{where} header {header}")
        headers[header] = value
        used += more
    # Every header value is treated as secret: Authorization, X-Api-Key and the like.
    secrets = _secrets(used + list(headers.values()) + _url_secrets(url))
    return Resolved(url=url, headers=headers, label=f"webhook:{name}", secrets=secrets)


WORKER_SECRET_ENV = ("ANTIFRAGILE_TEMPORAL_API_KEY", "ANTIFRAGILE_APPROVER_KEY")
"""Environment variables of the worker that always hold secrets."""


def approver_key_envs(policy: RecoveryPolicyConfig) -> set[str]:
    """The environment variables holding approvers' signing keys (and the CLI's own)."""
    names = {c.key_env for c in policy.approvers.values() if c.key_env}
    return names | {"ANTIFRAGILE_APPROVER_KEY"}


def environment_secrets(
    policy: RecoveryPolicyConfig, environ: Mapping[str, str] | None = None
) -> Resolved:
    """Every secret value the worker's environment holds for the policy, to redact.

    The values of every ``${VAR}`` of the policy's webhooks and probes, of the approvers'
    key variables, of the worker's own secrets (Temporal API key, approver key), of every
    variable named like a credential (``*_TOKEN``, ``*_KEY``, ``*_SECRET``,
    ``*_PASSWORD`` …, at least 8 characters) and the credentials of every URL-valued
    variable (``ANTIFRAGILE_REDIS_URL``, ``DATABASE_URL`` …). A recovery command runs with
    the worker's environment, and its output is recorded: this is what must never appear
    in it.

    Args:
        policy: The worker policy's recovery section.
        environ: The environment; None reads ``os.environ``.

    Returns:
        A :class:`Resolved` with no URL, used for its :meth:`Resolved.redact`.
    """
    env = os.environ if environ is None else environ
    templates = list(policy.probes.values())
    for hook in policy.webhooks.values():
        templates += [hook.url, *hook.headers.values()]
    names = {var for text in templates for var in PLACEHOLDER.findall(text)}
    names |= approver_key_envs(policy) | set(WORKER_SECRET_ENV)
    values = [env.get(name, "").rstrip("\r\n") for name in names]
    for name, value in env.items():
        # Beyond the policy: variables named like credentials (AWS_SECRET_ACCESS_KEY,
        # GITHUB_TOKEN, DB_PASSWORD …; short values would garble every text) and URLs
        # carrying one (DATABASE_URL=postgres://u:pw@…).
        if credential_name(name) and len(value.strip()) >= MIN_GUESSED_SECRET:
            values.append(value.strip())
        if "://" in value:
            values += url_credentials(value.strip())
    return Resolved(url="", label="environment", secrets=_secrets(values))


MIN_GUESSED_SECRET = 8
"""Shortest value of a variable named like a credential that is redacted from command output."""


def environment_problems(
    policy: RecoveryPolicyConfig, environ: Mapping[str, str] | None = None
) -> list[str]:
    """What the worker's environment lacks for its policy, one line each (names, no values).

    A ``${VAR}`` is resolved only when a probe or webhook is used, so a worker deployed
    without one starts fine and fails its first recovery that needs it. The worker logs
    these at start instead, so the operator learns it at deploy time.

    Args:
        policy: The worker policy's recovery section.
        environ: The environment; None reads ``os.environ``.

    Returns:
        One line per unset variable (naming the entries that use it) and per approver key
        that is unset or shorter than the minimum; empty when all is well.
    """
    from antifragile.hashing import MIN_KEY_BYTES, key_from_env

    env = os.environ if environ is None else environ
    users: dict[str, list[str]] = {}
    entries = [(f"probe {n!r}", [t]) for n, t in policy.probes.items()]
    entries += [
        (f"webhook {n!r}", [h.url, *h.headers.values()]) for n, h in policy.webhooks.items()
    ]
    for where, texts in entries:
        for text in texts:
            for var in PLACEHOLDER.findall(text):
                if not env.get(var, "").strip():
                    users.setdefault(var, []).append(where)
    problems = [
        f"${{{var}}} is not set: {', '.join(sorted(set(wheres)))} will fail"
        for var, wheres in sorted(users.items())
    ]
    for name, config in sorted(policy.approvers.items()):
        if not config.key_env:
            continue
        key = key_from_env(env.get(config.key_env, ""))
        if not key:
            problems.append(
                f"${config.key_env} is not set: approver {name!r} cannot approve anything"
            )
        elif len(key) < MIN_KEY_BYTES:
            problems.append(
                f"${config.key_env} is shorter than {MIN_KEY_BYTES} bytes: approver {name!r} "
                "cannot approve anything"
            )
    return problems
