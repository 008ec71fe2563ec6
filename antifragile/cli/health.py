"""``antifragile health [--watch] [--json]``: fleet health from the snapshots in Redis.

Every runtime publishes ``af:health:{instance}`` (JSON, with a TTL) and keeps itself in
the fleet's member set ``af:health-members`` - see :mod:`antifragile.inprocess.bridge` and
:func:`antifragile.inprocess.health.publish_snapshot`. This command reads them all and shows, per
instance and per breaker, the state, score and status. A member whose snapshot expired
(it did not stop cleanly: it died, hangs, or lost Redis) and that published within
``--forget-after`` seconds is listed as UNKNOWN, with the age of its last snapshot.
Register it with ``app.command("health")(health_command)``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from antifragile.cli._common import command_errors, console, err_console, load_settings
from antifragile.fleet_health import DEFAULT_FORGET_AFTER_S, RedisUnreachable, read_fleet, shown_url

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


def fleet_document(url: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` document: every instance plus a fleet summary (worst status)."""
    worst = max(
        (str(d.get("status", "UNKNOWN")) for d in docs), key=lambda s: _RANK.get(s, 1), default=None
    )
    return {
        "redis_url": shown_url(url),
        "fleet": {"instances": len(docs), "status": worst or "UNKNOWN"},
        "instances": docs,
    }


def unreachable_document(url: str, message: str) -> dict[str, Any]:
    """The ``--json`` document when Redis cannot be read: nothing is known."""
    return {
        "redis_url": shown_url(url),
        "error": message,
        "fleet": {"instances": 0, "status": "UNKNOWN"},
        "instances": [],
    }


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # one line, whatever the driver said


def _number(value: Any) -> float | None:
    """A finite number from a snapshot field, or None (absent, null, text, NaN...)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:g}"


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
        # Snapshots come from other processes (or anything that wrote af:health:*): every
        # field is read defensively, and every name is escaped (a breaker "db[/x]" is not
        # rich markup), so one odd snapshot never takes the table down.
        instance = escape(str(doc.get("instance")))
        status = str(doc.get("status", "UNKNOWN"))
        pending = doc.get("pending_status")
        shown = status + (f" (-> {pending})" if pending else "")
        for why in ("reason", "error"):  # expired, or unreadable
            if doc.get(why):
                shown += f" ({doc[why]})"
        published = _number(doc.get("published_at"))
        age = f"{max(0.0, now - published):.1f}s" if published else "-"
        score = _number(doc.get("health_score"))
        instances.add_row(
            instance,
            _styled(escape(shown), _STATUS_STYLE.get(status)),
            f"{score:.2f}" if score is not None else "-",
            *(
                ("-", "-", "-")  # an expired snapshot: nothing is known
                if "total_breakers" not in doc
                else (
                    _count(doc.get("total_breakers", 0)),
                    _count(
                        (_number(doc.get("open_breakers")) or 0)
                        + (_number(doc.get("forced_open_breakers")) or 0)
                    ),
                    _count(doc.get("half_open_breakers", 0)),
                )
            ),
            age,
        )
        details = doc.get("circuit_details")
        for name, b in sorted((details if isinstance(details, dict) else {}).items()):
            b = b if isinstance(b, dict) else {"state": b}
            state = str(b.get("state", "?"))
            rate = _number(b.get("failure_rate", 0.0))
            weight = _number(b.get("weight", 1.0))
            breakers.add_row(
                instance,
                escape(str(name)),
                _styled(escape(state), _STATE_STYLE.get(state)),
                _count(b.get("consecutive_failures", 0)),
                f"{rate:.0%}" if rate is not None else "-",
                f"{weight:g}" if weight is not None else "-",
            )
    if not breakers.rows:  # instances without guards: a line, not an empty table
        return Group(instances, "no breakers reported")
    return Group(instances, breakers)


def health_command(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(help="Seconds between refreshes with --watch.", min=0.1, max=86400),
    ] = 2.0,
    forget_after: Annotated[
        float,
        typer.Option(
            help="Seconds an instance whose snapshot expired stays listed as UNKNOWN.", min=0
        ),
    ] = DEFAULT_FORGET_AFTER_S,
) -> None:
    """Fleet health from Redis: per instance and per breaker, state, score and status.

    Instances whose snapshot expired without a clean stop are listed as UNKNOWN. When
    Redis cannot be read: one line ``error: ...`` on stderr and exit code 2 (with
    ``--json``, also a JSON document with an ``error`` field on stdout). With
    ``--watch`` that holds for the first read; later failures are shown (an error
    document per refresh with ``--json``, JSON lines only) and retried.
    """
    url = load_settings().redis_url
    with command_errors():
        try:
            if json_out and not watch:
                docs = read_fleet(url, forget_after)
                typer.echo(json.dumps(fleet_document(url, docs), indent=2, default=str))
                return
            if not watch:
                console.print(render(read_fleet(url, forget_after)))
                return
            docs = read_fleet(url, forget_after)  # unreachable at the start: exit 2
            if json_out:
                # JSON lines only (no table around them), the first one at once; a moment
                # without Redis is an error document and an error line, and the watch goes on.
                doc = fleet_document(url, docs)
                while True:
                    typer.echo(json.dumps(doc, default=str))
                    time.sleep(interval)
                    try:
                        doc = fleet_document(url, read_fleet(url, forget_after))
                    except RedisUnreachable as exc:
                        err_console.print(f"error: {_one_line(exc)} (retrying)", markup=False)
                        doc = unreachable_document(url, _one_line(exc))
            with Live(render(docs), console=console, auto_refresh=False) as live:
                shown = render(docs)
                while True:
                    time.sleep(interval)
                    try:
                        shown = render(read_fleet(url, forget_after))
                        live.update(shown, refresh=True)
                    except RedisUnreachable as exc:
                        # A blip must not end the watch an SRE keeps open during an incident:
                        # say so above the last tables read, and keep trying.
                        note = Text(f"error: {_one_line(exc)} (retrying every {interval:g}s)")
                        live.update(Group(note, shown), refresh=True)
        except RedisUnreachable as exc:
            if json_out:  # a script reading stdout still gets one JSON document
                typer.echo(json.dumps(unreachable_document(url, _one_line(exc))))
            raise  # command_errors: the same line on stderr, exit 2
        except KeyboardInterrupt:
            return
