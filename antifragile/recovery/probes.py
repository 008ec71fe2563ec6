"""Probes that prove a service is back, and the side effects of recovery actions.

Used by activities (never by workflow code). Every function returns a result instead of
raising for an unhealthy target, so "unhealthy" is data in the workflow history.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What a probe saw."""

    healthy: bool
    detail: str
    latency_ms: float


async def _probe_tcp(url: str, timeout: float) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if port is None:
        return "tcp probe needs a port"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"connect {host}:{port}: timed out after {timeout:g}s"
    except ConnectionRefusedError:
        return f"connect {host}:{port}: connection refused"
    except OSError as exc:
        return f"connect {host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 3xx answer itself is the result (urllib raises HTTPError)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)
"""A webhook's opener. urllib follows a 302 after a POST as a GET without the body (the
call then looks delivered) and sends every header along, to any host: a webhook's
``Authorization`` would reach whoever the receiver redirects to."""


def _basic_auth(url: str) -> tuple[str, str]:
    """``url`` without its user-info, and that user-info as an HTTP Basic header value.

    urllib does not use user-info itself: left in the URL, it becomes part of the host name
    (a DNS query carrying the password). A named probe or webhook of the worker policy
    (``https://${USER}:${PASS}@host/…``) sends it as Basic auth instead; "" when none.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, ""
    creds = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    auth = "Basic " + base64.b64encode(creds.encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), auth


def _http_get(url: str, timeout: float) -> str | None:
    url, auth = _basic_auth(url)
    req = urllib.request.Request(url, method="GET", headers={"User-Agent": "antifragile-probe"})
    if auth:
        # Unredirected: a redirect (followed, e.g. /health -> /health/) never carries the
        # credential on, possibly to another host.
        req.add_unredirected_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET failed: {reason}"
    except http.client.HTTPException as exc:  # e.g. InvalidURL: it would quote the URL
        return f"GET failed: {exc.__class__.__name__}"
    return None if 200 <= status < 300 else f"HTTP {status}"


async def _probe_redis(url: str, timeout: float) -> str | None:
    try:
        client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:  # a malformed URL: say so without echoing it
        return f"bad redis URL ({exc.__class__.__name__})"
    try:
        ok = await asyncio.wait_for(client.ping(), timeout)
        return None if ok else "PING returned false"
    except Exception as exc:
        return f"PING failed: {exc.__class__.__name__} {exc}".strip()
    finally:
        await client.aclose()


async def probe(url: str, timeout: float) -> ProbeOutcome:
    """Probe ``url``: tcp connect, HTTP 2xx, or Redis PING, within ``timeout`` seconds."""
    start = time.perf_counter()
    scheme = url.partition("://")[0]
    try:
        if scheme == "tcp":
            error = await _probe_tcp(url, timeout)
        elif scheme in ("http", "https"):
            error = await asyncio.to_thread(_http_get, url, timeout)
        elif scheme == "redis":
            error = await _probe_redis(url, timeout)
        else:
            error = f"unsupported probe scheme {scheme!r}"
    except ValueError as exc:
        # A malformed URL (a bad port, an invalid host): its message would quote the URL,
        # which may hold a credential of a named probe. Say what, not where.
        error = f"bad probe URL ({exc.__class__.__name__})"
    latency = (time.perf_counter() - start) * 1000
    return ProbeOutcome(error is None, error or "healthy", round(latency, 2))


def post_webhook(
    url: str,
    payload: dict[str, object],
    timeout: float,
    headers: dict[str, str] | None = None,
) -> str | None:
    """POST ``payload`` as JSON; None on 2xx, else what went wrong.

    Args:
        url: Where to POST (resolved from the worker policy, see ``named_targets``).
        payload: The JSON body.
        timeout: Seconds for the whole request.
        headers: Extra headers (the policy's, an ``Idempotency-Key``); they win over the
            defaults ``Content-Type: application/json`` and ``User-Agent``.

    Returns:
        None on a 2xx answer, else a one-line reason (never the URL or a header value). A
        redirect is not followed (it is a failure): following it would turn the POST into
        a GET and hand the headers to wherever it points.
    """
    body = json.dumps(payload).encode()
    try:
        url, auth = _basic_auth(url)
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "antifragile-recovery",
                **({"Authorization": auth} if auth else {}),
                **(headers or {}),
            },
        )
        with _NO_REDIRECT.open(req, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            return f"webhook answered HTTP {exc.code} (a redirect: webhooks follow none)"
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return f"webhook failed: {getattr(exc, 'reason', exc)}"
    except (ValueError, http.client.HTTPException) as exc:
        # A malformed URL or answer: never quote it (the URL may hold a token).
        return f"webhook failed: {exc.__class__.__name__}"
    return None if 200 <= status < 300 else f"webhook answered HTTP {status}"


async def run_command(
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    redact: Callable[[str], str] | None = None,
) -> tuple[int, str]:
    """Run an operator-defined command without a shell; (exit code, output tail).

    Args:
        argv: The command and its arguments.
        env: Its whole environment.
        timeout: Seconds before it is killed (exit code -9).
        redact: Applied to the whole output before its last 500 characters are kept, so a
            secret cut in two by the tail is still found.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -9, f"timed out after {timeout:.0f}s"
    text = out.decode(errors="replace")
    tail = (redact(text) if redact else text).strip()[-500:]
    return proc.returncode if proc.returncode is not None else -1, tail
