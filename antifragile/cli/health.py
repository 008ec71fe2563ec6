"""``antifragile health [--watch] [--json]``: fleet health from the snapshots in Redis.

Every runtime publishes ``af:health:{instance}`` (JSON, with a TTL) and keeps itself in
the fleet's member set ``af:health-members`` - see :mod:`antifragile.bridge` and
:func:`antifragile.health.publish_snapshot`. This command reads them all and shows, per
instance and per breaker, the state, score and status. A member whose snapshot expired
(it did not stop cleanly: it died, hangs, or lost Redis) and that published within
``--forget-after`` seconds is listed as UNKNOWN, with the age of its last snapshot.
Register it with ``app.command("health")(health_command)``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import redis
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from antifragile.cli._common import console, err_console, load_settings
from antifragile.constants import REDIS_HEALTH_KEY_PREFIX
from antifragile.health import HEALTH_MEMBERS_KEY
from antifragile.models.common import redact_url

_STATUS_STYLE = {
    "HEALTHY": "green",
    "DEGRADED": "yellow",
    "CRITICAL": "bold red",
    "UNKNOWN": "dim",
}
_STATE_STYLE = {
    "CLOSED": "green",
    "HALF_OPEN": "yellow",
    "OPEN": "red",
    "FORCED_OPEN": "magenta",
}
_RANK = {"HEALTHY": 0, "UNKNOWN": 1, "DEGRADED": 2, "CRITICAL": 3}


class RedisUnreachable(Exception):
    """Redis did not answer; the message names the URL."""


DEFAULT_FORGET_AFTER_S = 3600.0


def read_fleet(url: str, forget_after_s: float = DEFAULT_FORGET_AFTER_S) -> list[dict[str, Any]]:
    """All health snapshots in Redis at ``url``, sorted by instance.

    Members whose snapshot expired, last published within ``forget_after_s`` seconds,
    are included as ``{"instance", "status": "UNKNOWN", "reason", "published_at"}``.

    Raises:
        RedisUnreachable: Redis did not answer.
    """
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = sorted(client.scan_iter(match=f"{REDIS_HEALTH_KEY_PREFIX}*", count=500))
        members: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
            HEALTH_MEMBERS_KEY, time.time() - forget_after_s, "+inf", withscores=True
        )
        docs: list[dict[str, Any]] = []
        if keys:
            for key, raw in zip(keys, client.mget(keys), strict=True):
                if raw is None:
                    continue  # expired between SCAN and MGET
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = {"status": "UNKNOWN", "error": "unreadable snapshot"}
                doc.setdefault("instance", key.decode()[len(REDIS_HEALTH_KEY_PREFIX) :])
                docs.append(doc)
        live = {str(d.get("instance")) for d in docs}
        for member, last in members:
            instance = member.decode()
            if instance not in live:
                docs.append(
                    {
                        "instance": instance,
                        "status": "UNKNOWN",
                        "reason": "health snapshot expired",
                        "published_at": last,
                    }
                )
        return sorted(docs, key=lambda d: str(d.get("instance")))
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        client.close()


def fleet_document(url: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` document: every instance plus a fleet summary (worst status)."""
    worst = max(
        (str(d.get("status", "UNKNOWN")) for d in docs), key=lambda s: _RANK.get(s, 1), default=None
    )
    return {
        "redis_url": redact_url(url),
        "fleet": {"instances": len(docs), "status": worst or "UNKNOWN"},
        "instances": docs,
    }


def _styled(text: str, style: str | None) -> str:
    return f"[{style}]{text}[/{style}]" if style else text


def render(docs: list[dict[str, Any]]) -> Group | str:
    """Rich tables: one row per instance, then one row per breaker."""
    if not docs:
        return "no instances are publishing health (no af:health:* keys)"
    now = time.time()
    instances = Table(title="Instances", title_justify="left")
    for col in ("instance", "status", "score", "breakers", "open", "half-open", "age"):
        instances.add_column(col)
    breakers = Table(title="Breakers", title_justify="left")
    for col in ("instance", "breaker", "state", "failures", "failure rate", "weight"):
        breakers.add_column(col)
    for doc in docs:
        status = str(doc.get("status", "UNKNOWN"))
        pending = doc.get("pending_status")
        shown = status + (f" (-> {pending})" if pending else "")
        if doc.get("reason"):
            shown += f" ({doc['reason']})"
        published = doc.get("published_at")
        age = f"{max(0.0, now - float(published)):.1f}s" if published else "-"
        score = doc.get("health_score")
        instances.add_row(
            str(doc.get("instance")),
            _styled(shown, _STATUS_STYLE.get(status)),
            f"{float(score):.2f}" if score is not None else "-",
            *(
                ("-", "-", "-")  # an expired snapshot: nothing is known
                if "total_breakers" not in doc
                else (
                    str(doc.get("total_breakers", 0)),
                    str(int(doc.get("open_breakers", 0)) + int(doc.get("forced_open_breakers", 0))),
                    str(doc.get("half_open_breakers", 0)),
                )
            ),
            age,
        )
        for name, b in sorted((doc.get("circuit_details") or {}).items()):
            state = str(b.get("state", "?"))
            breakers.add_row(
                str(doc.get("instance")),
                name,
                _styled(state, _STATE_STYLE.get(state)),
                str(b.get("consecutive_failures", 0)),
                f"{float(b.get('failure_rate', 0.0)):.0%}",
                f"{float(b.get('weight', 1.0)):g}",
            )
    return Group(instances, breakers)


def health_command(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes with --watch.", min=0.1)
    ] = 2.0,
    forget_after: Annotated[
        float,
        typer.Option(
            help="Seconds an instance whose snapshot expired stays listed as UNKNOWN.", min=0
        ),
    ] = DEFAULT_FORGET_AFTER_S,
) -> None:
    """Fleet health from Redis: per instance and per breaker, state, score and status.

    Instances whose snapshot expired without a clean stop are listed as UNKNOWN.
    """
    url = load_settings().redis_url
    try:
        if json_out and not watch:
            docs = read_fleet(url, forget_after)
            typer.echo(json.dumps(fleet_document(url, docs), indent=2, default=str))
            return
        if not watch:
            console.print(render(read_fleet(url, forget_after)))
            return
        with Live(
            render(read_fleet(url, forget_after)), console=console, auto_refresh=False
        ) as live:
            while True:
                time.sleep(interval)
                if json_out:
                    docs = read_fleet(url, forget_after)
                    typer.echo(json.dumps(fleet_document(url, docs), default=str))
                else:
                    live.update(render(read_fleet(url, forget_after)), refresh=True)
    except RedisUnreachable as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        return
