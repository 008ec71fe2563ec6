"""Probes that prove a service is back, and the side effects of recovery actions.

Used by activities (never by workflow code). Every function returns a result instead of
raising for an unhealthy target, so "unhealthy" is data in the workflow history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

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


def _http_get(url: str, timeout: float) -> str | None:
    req = urllib.request.Request(url, method="GET", headers={"User-Agent": "antifragile-probe"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET failed: {reason}"
    return None if 200 <= status < 300 else f"HTTP {status}"


async def _probe_redis(url: str, timeout: float) -> str | None:
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
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
    if scheme == "tcp":
        error = await _probe_tcp(url, timeout)
    elif scheme in ("http", "https"):
        error = await asyncio.to_thread(_http_get, url, timeout)
    elif scheme == "redis":
        error = await _probe_redis(url, timeout)
    else:
        error = f"unsupported probe scheme {scheme!r}"
    latency = (time.perf_counter() - start) * 1000
    return ProbeOutcome(error is None, error or "healthy", round(latency, 2))


def post_webhook(
    url: str,
    payload: dict[str, object],
    timeout: float,
    *,
    headers: dict[str, str] | None = None,
) -> str | None:
    """POST ``payload`` as JSON (plus ``headers``); None on 2xx, else what went wrong."""
    body = json.dumps(payload).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "antifragile-recovery",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return f"webhook failed: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"webhook answered HTTP {status}"


async def run_command(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run an operator-defined command without a shell; (exit code, output tail)."""
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
    tail = out.decode(errors="replace").strip()[-500:]
    return proc.returncode if proc.returncode is not None else -1, tail
