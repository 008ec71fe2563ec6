"""The fleet's health snapshots in Redis: their key, format, write, read and score.

Every runtime publishes ``af:health:{instance}`` (JSON, with a TTL) and keeps itself in the
sorted set ``af:health-members``; the CLI reads the fleet from both (a member whose snapshot
expired is UNKNOWN); the chaos health guard scores the processes that guard a target.

**Snapshot format.** The runtime's ``HealthReport`` fields (``status``, ``health_score``,
``circuit_details``, ...), ``instance``, ``pid``, ``published_at`` (Unix s), ``ttl_s``, and
``traffic`` - per dependency, the calls of the current and the last finished window
(windows are aligned on multiples of ``window_s`` since the epoch, the same on every
instance; a call counts in the window in which it ended)::

    "traffic": {
      "window_s": 60.0,
      "dependencies": {
        "redis": {
          "current":  {TrafficObservation},   # calls made WITHOUT a fault, window so far
          "previous": {TrafficObservation} | null,   # the last finished window
          "under_fault":          {...} | null,  # calls made while a chaos fault was
          "previous_under_fault": {...} | null,  # installed on this dependency
          "cumulative": {"since": 1764500000.0,  # counting started (Unix s)
                         "calls": 0, "failures": 0, "refused": 0,  # monotonic
                         "latency": {"counts": [...]}}  # every window, with or
        }                                                # without a fault
      }
    }

``{TrafficObservation}`` is ``antifragile.models.learning.TrafficObservation`` as JSON:
``kind: "traffic"``, ``dependency``, ``source_id`` (``{instance}/{window start ISO}``),
``window_start`` (ISO, UTC), ``window_s``, ``calls`` (calls that reached the dependency:
successes and failures; refused calls are not counted), ``failures`` (calls that raised
an ``Exception``), ``breaker_openings`` (transitions to OPEN) and ``latency.counts``
(log buckets of ``latency_bounds_ms()``, bucket ``i`` holding ``bound[i-1] < ms <=
bound[i]``, trailing empty buckets left out). ``calls`` is the sum of ``latency.counts``.
The ``under_fault`` documents have the same fields with ``kind: "under_fault"`` and
``experiments`` (ids of the experiments whose fault was installed in the window); they
are present only when the window had such calls, openings or experiments, and are
never TrafficObservations (experiments are observed by the chaos side).
:func:`finished_traffic` reads the finished windows of a snapshot as observations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from antifragile.constants import REDIS_HEALTH_KEY_PREFIX
from antifragile.models.chaos_calls import InstanceCalls
from antifragile.models.learning import TrafficObservation

# ---------------------------------------------------------------------- fleet membership

HEALTH_MEMBERS_KEY = "af:health-members"
"""Sorted set: every instance that published a health snapshot, scored by the Unix time
of its last snapshot. Outside the ``af:health:*`` pattern on purpose, so readers that
scan snapshots never meet it."""

MEMBER_FORGET_S = 7 * 24 * 3600.0
"""Publishers drop members not heard from for this long (7 days)."""


def snapshot_key(instance_id: str) -> str:
    """Redis key of an instance's health snapshot: ``af:health:{instance}``."""
    return f"{REDIS_HEALTH_KEY_PREFIX}{instance_id}"


async def publish_snapshot(
    client: aioredis.Redis, instance_id: str, document: str, ttl_s: float
) -> None:
    """Write an instance's snapshot with its TTL and mark it a fleet member, atomically.

    Args:
        client: Redis.
        instance_id: The publishing process.
        document: The JSON snapshot.
        ttl_s: Seconds until the snapshot expires (then the member shows as UNKNOWN).

    Raises:
        redis.RedisError / OSError: Redis did not take the write.
    """
    now = time.time()
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(snapshot_key(instance_id), document, px=max(1, int(ttl_s * 1000)))
        pipe.zadd(HEALTH_MEMBERS_KEY, {instance_id: now})
        pipe.zremrangebyscore(HEALTH_MEMBERS_KEY, "-inf", now - MEMBER_FORGET_S)
        await pipe.execute()


async def withdraw_snapshot(client: aioredis.Redis, instance_id: str) -> None:
    """A clean stop: remove the snapshot and the membership.

    The instance is then not UNKNOWN: it is gone.
    """
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(snapshot_key(instance_id))
        pipe.zrem(HEALTH_MEMBERS_KEY, instance_id)
        await pipe.execute()


# ---------------------------------------------------------------------- reading


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: what may be printed or logged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # malformed (e.g. a port that is not a number): hide the userinfo
        return url.rsplit("@", 1)[-1] if "@" in url else url
    if parts.query:  # redis-py also takes ?password=...
        query = "&".join(
            f"{k}=***" if k.lower() == "password" else (f"{k}={v}" if v or "=" in item else k)
            for item in parts.query.split("&")
            for k, _, v in [item.partition("=")]
        )
        parts = parts._replace(query=query)
    if password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    return urlunsplit(parts)


class RedisUnreachable(Exception):
    """Redis did not answer (or refused the reads); the message names the URL."""


DEFAULT_FORGET_AFTER_S = 3600.0


def read_fleet(url: str, forget_after_s: float = DEFAULT_FORGET_AFTER_S) -> list[dict[str, Any]]:
    """All health snapshots in Redis at ``url``, sorted by instance.

    Members whose snapshot expired, last published within ``forget_after_s`` seconds,
    are included as ``{"instance", "status": "UNKNOWN", "reason", "published_at"}``.

    Raises:
        RedisUnreachable: Redis did not answer, refused a read (e.g. a key of the wrong
            type, missing permissions) or ``url`` is malformed.
    """
    try:
        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    except ValueError as exc:  # e.g. a port that is not a number
        raise RedisUnreachable(f"bad Redis URL {shown_url(url)!r}: {exc}") from None
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
                    doc = None
                if not isinstance(doc, dict):  # not JSON, or JSON but not an object
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
        raise RedisUnreachable(f"cannot reach Redis at {shown_url(url)}: {exc}") from None
    except redis.RedisError as exc:  # WRONGTYPE, NOPERM, ...: one line, not a traceback
        raise RedisUnreachable(f"Redis at {shown_url(url)} refused to list health: {exc}") from None
    finally:
        client.close()


# ---------------------------------------------------------------------- scoring

_STATE_SCORE = {"CLOSED": 1.0, "HALF_OPEN": 0.5, "OPEN": 0.0, "FORCED_OPEN": 0.0}


@dataclass
class FleetHealth:
    """What :meth:`FaultPlane.fleet_health` found.

    Attributes:
        score: Lowest process health score among processes guarding a target (None:
            nobody reports).
        instances: How many processes reported.
        detail: Which process was lowest, or why there is no score.
        targets_score: Lowest score of the targets' own breakers (None: no process
            publishes per-breaker states).
        calls: The targets' cumulative call counters per instance (:func:`target_calls`).
    """

    score: float | None = None
    instances: int = 0
    detail: str = ""
    targets_score: float | None = None
    calls: list[InstanceCalls] = _field(default_factory=list)


def snapshot_process_score(data: dict[str, Any], targets: list[str]) -> float | None:
    """The health score of one process, if it guards any of ``targets`` (else None).

    This is the number the health guard compares with ``abort_below_health``: the
    process's aggregate (weighted over all its breakers), as the runtime publishes it
    and as the bridge signals it. Breaking the target is the experiment's purpose; the
    guard is there for the damage beyond it. A snapshot without an overall score falls
    back to the targets' breakers.
    """
    targets_score = snapshot_score(data, targets)
    has_details = any(isinstance(data.get(f), dict) for f in ("circuit_details", "breakers"))
    if has_details and targets_score is None:
        return None  # this process does not guard a target
    score = data.get("health_score", data.get("score"))
    if score is None:
        return targets_score
    try:
        return max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return targets_score


def snapshot_score(data: dict[str, Any], targets: list[str]) -> float | None:
    """Health score of one process's snapshot for ``targets`` (None: not reported).

    With per-breaker states (``circuit_details`` as the runtime publishes them, or
    ``breakers``), only the targets' breakers count; a process guarding none of them
    says nothing. Without them, the overall ``health_score`` (or ``score``) counts.
    """
    for field in ("circuit_details", "breakers"):
        breakers = data.get(field)
        if not isinstance(breakers, dict):
            continue
        states = []
        for t in targets:
            entry = breakers.get(t)
            state = entry.get("state") if isinstance(entry, dict) else entry
            if isinstance(state, str) and state.upper() in _STATE_SCORE:
                states.append(_STATE_SCORE[state.upper()])
        return sum(states) / len(states) if states else None
    score = data.get("health_score", data.get("score"))
    try:
        return None if score is None else max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------- traffic windows


def finished_traffic(data: dict[str, Any]) -> list[TrafficObservation]:
    """The last finished traffic window of each dependency in a snapshot, validated.

    Windows without calls are left out; an unreadable entry is skipped (a snapshot of
    an older runtime has no ``traffic`` key: empty list). Sorted by dependency.
    """
    traffic = data.get("traffic")
    deps = traffic.get("dependencies") if isinstance(traffic, dict) else None
    if not isinstance(deps, dict):
        return []
    out = []
    for name in sorted(deps):
        entry = deps[name]
        doc = entry.get("previous") if isinstance(entry, dict) else None
        if not isinstance(doc, dict):
            continue
        try:
            observation = TrafficObservation.model_validate(doc)
        except ValidationError:
            continue
        if observation.calls or observation.breaker_openings:
            out.append(observation)
    return out


def fault_windows(data: dict[str, Any]) -> set[tuple[str, str]]:
    """``(dependency, window start ISO)`` of the finished windows that had a fault.

    From the ``previous_under_fault`` documents of a snapshot: the calls of such a window
    that ran without a fault are not baseline either (the dependency was under an
    experiment), so a harvester leaves the whole window out.
    """
    traffic = data.get("traffic")
    deps = traffic.get("dependencies") if isinstance(traffic, dict) else None
    if not isinstance(deps, dict):
        return set()
    out: set[tuple[str, str]] = set()
    for name, entry in deps.items():
        doc = entry.get("previous_under_fault") if isinstance(entry, dict) else None
        if isinstance(doc, dict) and isinstance(doc.get("window_start"), str):
            out.add((str(name), doc["window_start"]))
    return out


async def read_snapshots(client: aioredis.Redis) -> list[dict[str, Any]]:
    """Every readable health snapshot in Redis (async; unreadable ones are skipped).

    Raises:
        redis.RedisError / OSError: Redis did not answer.
    """
    keys = [key async for key in client.scan_iter(match=f"{REDIS_HEALTH_KEY_PREFIX}*", count=500)]
    if not keys:
        return []
    docs: list[dict[str, Any]] = []
    for raw in await client.mget(sorted(keys)):
        if raw is None:
            continue  # expired between SCAN and MGET
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict):
            docs.append(doc)
    return docs


def target_calls(data: dict[str, Any], targets: list[str]) -> list[InstanceCalls]:
    """The ``cumulative`` counters of ``targets`` in one snapshot (unreadable: left out)."""
    traffic = data.get("traffic")
    deps = traffic.get("dependencies") if isinstance(traffic, dict) else None
    if not isinstance(deps, dict):
        return []
    out = []
    for name in targets:
        entry = deps.get(name)
        doc = entry.get("cumulative") if isinstance(entry, dict) else None
        if not isinstance(doc, dict):
            continue
        latency = doc.get("latency")
        try:
            out.append(
                InstanceCalls(
                    instance=str(data.get("instance", "")),
                    dependency=name,
                    since=doc["since"],
                    calls=doc["calls"],
                    failures=doc["failures"],
                    refused=doc.get("refused", 0),
                    latency=latency.get("counts", []) if isinstance(latency, dict) else [],
                )
            )
        except (KeyError, ValidationError):
            continue
    return out
