"""Model pieces shared by recovery, chaos and orchestration."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from urllib.parse import unquote_plus

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from antifragile.errors import CREDENTIAL_ERROR, TARGET_ERROR

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PROBE_SCHEMES = ("tcp", "http", "https", "redis")

PROBE_REF_PREFIX = "probe:"
"""A request's ``probe`` of the form ``probe:NAME`` names ``recovery.probes.NAME`` of the
worker policy; the worker resolves it (and its ``${ENV_VAR}`` credentials) in the activity."""


# Query parameters that carry a credential: exact names, and names ending like these
# (``private_token``, ``x-api-key``, ``client_secret``, ``X-Amz-Signature`` …).
_CREDENTIAL_PARAMS = frozenset(
    {"auth", "pass", "pwd", "jwt", "credential", "credentials", "authorization", "bearer"}
)
_CREDENTIAL_SUFFIXES = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "sig",
    "signature",
    "credential",
    "credentials",
    "sessionid",
)

# The authority's user-info, read from the raw text so that a URL ``urlsplit`` refuses
# (``http://u:p@[::1/``) or reads oddly (``http:///u:p@h/``) is judged all the same.
_USERINFO = re.compile(r"^([\x00-\x20]*[A-Za-z][A-Za-z0-9+.-]*:[/\\]*)([^/\\?#]*)@")
# ``name=value`` after ``?``, ``&``, ``;`` (path or matrix parameters, ``;jsessionid=``) or
# ``#`` (a fragment: OAuth's implicit flow puts ``access_token`` there).
_PARAM = re.compile(r"([?&;#])([^=&;#?]*)=([^&;#?]*)")


def _credential_param(name: str) -> bool:
    # Tabs and newlines are dropped by URL parsers (WHATWG), so ``to<TAB>ken`` is ``token``.
    low = re.sub(r"[\t\r\n]", "", unquote_plus(name)).strip().lower().replace("-", "_")
    return low in _CREDENTIAL_PARAMS or low.endswith(_CREDENTIAL_SUFFIXES)


def credential_name(name: str) -> bool:
    """True when ``name`` (a query parameter, an environment variable) names a credential.

    ``token``, ``API_KEY``, ``client-secret``, ``DB_PASSWORD``, ``X-Amz-Signature`` …:
    compared case-insensitively, ``-`` as ``_``.
    """
    return _credential_param(name)


def credential_in_url(url: str) -> str | None:
    """What in ``url`` looks like a credential, or None.

    A user-info part (``user:password@`` or ``token@``, even in a URL that does not parse)
    or a parameter named like a credential (``token``, ``access_token``, ``key``,
    ``api_key``, ``password``, ``secret``, ``sig``, ``signature``, ``authorization`` …
    compared case-insensitively, ``-`` as ``_``) in the query, the path (``;name=``) or the
    fragment (``#access_token=``).

    Returns:
        A short description that never contains the credential itself, e.g.
        ``"user:password@"`` or ``"query parameter 'token'"``.
    """
    if _USERINFO.match(url):
        return "user:password@"
    for _, name, _ in _PARAM.findall(url):
        if _credential_param(name):
            return f"query parameter {unquote_plus(name).strip()[:40]!r}"
    return None


def url_credentials(url: str) -> list[str]:
    """The credential values in ``url``: its user-info and credential-like parameter values.

    Each is returned as written and percent-decoded, for redacting texts that may quote it.
    """
    found: list[str] = []
    userinfo = _USERINFO.match(url)
    if userinfo:
        user, colon, password = userinfo.group(2).partition(":")
        # ``user:password@``: the password (a user name like ``default`` is no secret);
        # ``token@``: the whole user-info.
        for part in (userinfo.group(2), password) if colon else (user,):
            found += [part, unquote_plus(part)]
    for _, name, value in _PARAM.findall(url):
        if value and _credential_param(name):
            found += [value, unquote_plus(value)]
    return [v for v in found if v]


def redact_url(url: str) -> str:
    """``url`` with its user-info and every credential-like parameter value as ``***``.

    The URL stays recognisable (scheme, host, path, parameter names) and
    :func:`credential_in_url` still finds what was there, so a redacted URL is refused
    wherever the original would have been.
    """
    url = _USERINFO.sub(r"\1***@", url, count=1)

    def _param(match: re.Match[str]) -> str:
        sep, name, value = match.groups()
        return f"{sep}{name}=***" if value and _credential_param(name) else match.group(0)

    return _PARAM.sub(_param, url)


def credential_refusal(field: str, what: str) -> str:
    """The one-line refusal of a URL with a credential in it, pointing to the worker policy."""
    if field == "probe":
        where, ref = "recovery.probes: NAME: URL", "probe:NAME"
    else:
        where, ref = "recovery.webhooks: NAME: url/headers", "webhook:NAME"
    return (
        f"refused: a credential in the {field} URL ({what}). A request carries only names: "
        f"define the {field} in the worker policy ({where}, secrets as ${{ENV_VAR}}) and "
        f"pass {ref}"
    )


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-100 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def refuse_credentials(value: str, info: ValidationInfo | None, field: str) -> str:
    """Raise the ``credential_in_url`` error when new input carries a credential.

    Only new input (``info.mode == "python"``: the CLI, the API, policy-free callers) is
    refused. Payloads decoded from JSON (``mode == "json"``: Temporal histories written before
    this rule, the orchestrator's stored queue, and any signal or start input written by
    hand) are let through so that running workflows keep replaying, but with the credential
    replaced by ``***`` (:func:`redact_url`): whatever the workflow then shows or passes on
    (status, summaries, details, a child's input) never repeats it, and the worker's
    activities still refuse the URL, which still reads as carrying a credential.

    Returns:
        ``value``, redacted when decoded from JSON.
    """
    what = credential_in_url(value)
    if what is None:
        return value
    if info is not None and info.mode == "json":
        return redact_url(value)
    raise PydanticCustomError(
        CREDENTIAL_ERROR, "{reason}", {"reason": credential_refusal(field, what)}
    )


def _bad_target(message: str, value: str) -> PydanticCustomError:
    """A malformed probe or action (``TARGET_ERROR``): its input shown only when it is safe.

    A mistyped URL escapes the credential check (``redis//:PASSWORD@host`` has no scheme)
    and is still one: an input with ``@`` or a credential-like parameter is never quoted.
    """
    if "@" not in value and credential_in_url(value) is None:
        shown = repr(value)
        message += f" (got {shown[:57] + '...' if len(shown) > 60 else shown})"
    return PydanticCustomError(TARGET_ERROR, "{reason}", {"reason": message})


def _check_probe(value: str, info: ValidationInfo) -> str:
    # Credentials first: any later error message would show the value.
    value = refuse_credentials(value, info, "probe")
    if value.startswith(PROBE_REF_PREFIX):
        if not _NAME_RE.match(value.removeprefix(PROBE_REF_PREFIX)):
            raise _bad_target(
                "probe:NAME must name a probe of the worker policy (1-100 letters, digits, "
                "'.', '_' or '-')",
                value,
            )
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in PROBE_SCHEMES or not rest:
        raise _bad_target(
            "must be probe:NAME (a probe of the worker policy) or a URL with scheme tcp://, "
            "http://, https:// or redis://",
            value,
        )
    if scheme == "tcp":
        host, colon, port = rest.rstrip("/").rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad_target("a tcp probe must be tcp://host:port", value)
    return value


DEFAULT_WEBHOOK = "default"
"""The webhook a bare ``webhook`` action names (an old policy's ``webhook_url`` becomes it)."""


def check_action(value: str, info: ValidationInfo | None = None) -> str:
    """Validate a recovery action: ``none``, ``webhook[:NAME]`` or ``command:NAME``.

    A ``webhook:http(s)://…`` URL is refused in new input (a request names a webhook of the
    worker policy, never a URL the worker would POST to); it is accepted when decoded from
    JSON so that histories written before this rule replay (the activity refuses it).

    Raises:
        PydanticCustomError: ``credential_in_url`` for a URL with a credential in it.
        PydanticCustomError: ``bad_target`` for any other malformed action (the input is
            quoted only when it cannot be a mistyped URL with a credential).
    """
    kind, _, arg = value.partition(":")
    if kind == "none" and not arg:
        return value
    if kind == "webhook" and arg.startswith(("http://", "https://")):
        arg = refuse_credentials(arg, info, "webhook")
        if info is not None and info.mode == "json":
            return f"{kind}:{arg}"
        raise _bad_target(
            "webhook:URL is refused: a request names a webhook of the worker policy "
            "(recovery.webhooks: NAME: url/headers) and passes webhook:NAME",
            value,
        )
    if kind == "webhook" and (not arg or _NAME_RE.match(arg)):
        return value
    if kind == "command" and arg:
        return value
    raise _bad_target(
        "must be none, webhook:NAME or command:NAME (names from the worker policy)", value
    )


ServiceName = Annotated[str, AfterValidator(_check_name)]
"""A service or dependency name: it becomes part of workflow ids and Redis keys."""

ProbeURL = Annotated[str, AfterValidator(_check_probe)]
"""How to tell a service is healthy: ``tcp://h:p``, ``http(s)://…``, ``redis://h:p/db``, or
``probe:NAME`` — a probe of the worker policy (``recovery.probes``), whose credentials stay
in the worker. A URL with a credential in it (user-info, ``token=``, ``key=``, ``password=``,
``secret=``, ``sig=`` …) is refused with a message pointing to the policy."""


class StrictModel(BaseModel):
    """Base of every contract model: unknown fields are an error, not silently dropped.

    ``str()`` of a validation error hides the input values (a refused URL may carry a
    credential, and error strings end up in logs); ``describe_validation_error`` shows
    them where it is safe.
    """

    model_config = ConfigDict(extra="forbid", frozen=False, hide_input_in_errors=True)


class Decision(StrEnum):
    """What a person decided about a gated step."""

    APPROVED = "approved"
    REJECTED = "rejected"
    REFUSED = "refused"
    """The decision came from someone the policy does not allow; it had no effect."""
    IGNORED = "ignored"
    """Nothing awaited a decision when it arrived; it had no effect."""


class ApprovalSignal(StrictModel):
    """Payload of the ``approve`` and ``reject`` signals.

    Attributes:
        approver: Who decides. Required, non-empty.
        note: Free text kept with the decision.
        signature: Hex HMAC-SHA256 of the decision (``antifragile.hashing``); "" when
            unsigned. Required when the policy gives this approver a key.
        signed_at: When the decision was signed (UTC); None when unsigned.
    """

    approver: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)
    signature: str = Field(default="", max_length=128)
    signed_at: datetime | None = None


class ApprovalRecord(StrictModel):
    """One decision as recorded in a workflow: who, what, when, and whether it counted."""

    approver: str
    decision: Decision
    note: str = ""
    at: datetime
    reason: str = ""
    """Why a decision was refused or ignored; empty when it took effect."""


class HealthChangedSignal(StrictModel):
    """Payload of ``health_changed``: a process reported a dependency's health.

    Attributes:
        service: The dependency (breaker) name.
        healthy: True when the breaker closed again / the service looks healthy.
        score: Health score 0.0-1.0 of the reporting process, if known.
        status: Reported status name (HEALTHY, DEGRADED, CRITICAL, UNKNOWN), if known.
        source: Which process reported it (instance id).
    """

    service: str
    healthy: bool
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    status: str | None = None
    source: str = ""
