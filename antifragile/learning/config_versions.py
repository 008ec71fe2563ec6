"""Versions of a dependency's settings in Redis: publish, revert, history, current.

Keys (``{dependency}`` is the guard name):

* ``af:config:{dependency}:versions`` - a list; entry ``n - 1`` is version ``n``, a JSON
  :class:`~antifragile.models.learning.ConfigVersion` (version, settings, by, at, why,
  previous, revert_of, bounds). Versions are never rewritten or removed.
* ``af:config:{dependency}:current`` - the number of the version in force.
* ``af:config:dependencies`` - a set of every dependency with versions.
* ``af:config:{dependency}:requests`` - a hash: request id -> the version it published
  (a change sent again with the same id returns that version and publishes nothing).
* channel ``af:config:changes`` - ``{"dependency": ..., "version": n}`` after each change.

Every change runs under ``WATCH`` of both keys and commits with ``MULTI``/``EXEC``: two
concurrent publishers read the same length, only the first ``EXEC`` succeeds, the other
re-reads and takes the next number (optimistic locking, Redis "Transactions" docs). So
no two publishes can claim one version, and ``previous`` is always the version that was
in force when the change committed.

Bounds: :func:`publish` checks the settings against the policy's ``adaptation`` bounds
(REFUSED outside them: :class:`ConfigVersionError`) and stores those bounds in the
version, for the runtime to clamp against (it does not read the policy file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from antifragile.errors import AntifragileError
from antifragile.models.learning import ConfigVersion, DependencySettings
from antifragile.policy import AdaptationPolicyConfig

CONFIG_CHANNEL = "af:config:changes"
"""Pub/sub channel announcing each new version: ``{"dependency", "version"}``."""
DEPENDENCIES_KEY = "af:config:dependencies"
"""Set of every dependency that has versions."""

_MAX_RETRIES = 100
_MAX_INDEX = 2**63 - 1


class ConfigVersionError(AntifragileError):
    """A change was refused: outside the policy's bounds, or nothing to revert."""


def versions_key(dependency: str) -> str:
    """``af:config:{dependency}:versions``: the list of versions."""
    return f"af:config:{dependency}:versions"


def current_key(dependency: str) -> str:
    """``af:config:{dependency}:current``: the number of the version in force."""
    return f"af:config:{dependency}:current"


def requests_key(dependency: str) -> str:
    """``af:config:{dependency}:requests``: request id -> version it published."""
    return f"af:config:{dependency}:requests"


def _now() -> datetime:
    return datetime.now(UTC)


async def publish(
    client: aioredis.Redis,
    dependency: str,
    settings: DependencySettings,
    by: str,
    why: str,
    *,
    policy: AdaptationPolicyConfig | None = None,
    clock: Callable[[], datetime] = _now,
    request_id: str = "",
) -> ConfigVersion:
    """Publish ``settings`` as the dependency's next version and make it current.

    Args:
        client: Redis.
        dependency: The guard name.
        settings: The new settings (None fields: left as the service configured them).
        by: Who publishes.
        why: One line: why.
        policy: The worker policy's ``adaptation`` section. Default its defaults.
        clock: UTC time of the version (tests).
        request_id: When given, publishes once per id: a change already committed with
            it returns its version (a retried activity whose answer was lost).

    Returns:
        The stored version.

    Raises:
        ConfigVersionError: a setting is outside the policy's bounds.
        redis.RedisError: Redis failed.
    """
    policy = policy or AdaptationPolicyConfig()
    problems = policy.violations(settings)
    if problems:
        raise ConfigVersionError(f"{dependency}: refused by the policy: {'; '.join(problems)}")
    return await _commit(
        client, dependency, by, why, policy, clock, settings=settings, request_id=request_id
    )


async def revert(
    client: aioredis.Redis,
    dependency: str,
    by: str,
    why: str,
    *,
    policy: AdaptationPolicyConfig | None = None,
    clock: Callable[[], datetime] = _now,
    request_id: str = "",
) -> ConfigVersion:
    """Undo the version in force: its ``previous`` version's settings, as a new version.

    The new version records ``revert_of`` (the undone version, also its ``previous``)
    and carries exactly the settings (and bounds) of the undone version's ``previous``;
    reverting a revert therefore redoes the change. Undoing the first version publishes
    empty settings: the service's own configuration (a runtime applies every version over
    it). ``request_id``: as :func:`publish`.

    Raises:
        ConfigVersionError: no version to undo.
        redis.RedisError: Redis failed.
    """
    return await _commit(
        client,
        dependency,
        by,
        why,
        policy or AdaptationPolicyConfig(),
        clock,
        settings=None,
        request_id=request_id,
    )


async def _commit(
    client: aioredis.Redis,
    dependency: str,
    by: str,
    why: str,
    policy: AdaptationPolicyConfig,
    clock: Callable[[], datetime],
    *,
    settings: DependencySettings | None,
    request_id: str = "",
) -> ConfigVersion:
    vkey, ckey, rkey = versions_key(dependency), current_key(dependency), requests_key(dependency)
    for _ in range(_MAX_RETRIES):
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(vkey, ckey, rkey)
                if request_id:
                    done = await pipe.hget(rkey, request_id)
                    if done is not None:
                        return await _at(pipe, vkey, int(done))
                count = int(await pipe.llen(vkey))
                raw_current = await pipe.get(ckey)
                current = int(raw_current) if raw_current is not None else None
                if settings is None:
                    undone = await _at(pipe, vkey, current)
                    if undone.previous is None:
                        # The first version: back to the service's own settings.
                        restored_settings, restored_bounds = DependencySettings(), policy.bounds()
                    else:
                        restored = await _at(pipe, vkey, undone.previous)
                        restored_settings, restored_bounds = restored.settings, restored.bounds
                    version = ConfigVersion(
                        dependency=dependency,
                        version=count + 1,
                        settings=restored_settings,
                        by=by,
                        at=clock(),
                        why=why,
                        previous=current,
                        revert_of=current,
                        bounds=restored_bounds,
                    )
                else:
                    version = ConfigVersion(
                        dependency=dependency,
                        version=count + 1,
                        settings=settings,
                        by=by,
                        at=clock(),
                        why=why,
                        previous=current,
                        bounds=policy.bounds(),
                    )
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.rpush(vkey, version.model_dump_json())
                pipe.set(ckey, version.version)
                pipe.sadd(DEPENDENCIES_KEY, dependency)
                if request_id:
                    pipe.hset(rkey, request_id, version.version)
                pipe.publish(
                    CONFIG_CHANNEL,
                    json.dumps({"dependency": dependency, "version": version.version}),
                )
                await pipe.execute()
                return version
            except WatchError:
                continue
    raise ConfigVersionError(f"{dependency}: {_MAX_RETRIES} concurrent changes; try again")


async def _at(client: aioredis.Redis, vkey: str, number: int | None) -> ConfigVersion:
    # Numbers start at 1 (0 or less would index from the end) and fit Redis's int64.
    valid = number is not None and 1 <= number <= _MAX_INDEX
    raw = await client.lindex(vkey, number - 1) if valid and number is not None else None
    if raw is None:
        raise ConfigVersionError(f"{vkey}: no version {number}")
    return ConfigVersion.model_validate_json(raw)


async def current(client: aioredis.Redis, dependency: str) -> ConfigVersion | None:
    """The version in force (None: never published).

    Raises:
        redis.RedisError: Redis failed.
    """
    raw_current = await client.get(current_key(dependency))
    if raw_current is None:
        return None
    return await _at(client, versions_key(dependency), int(raw_current))


async def version_at(client: aioredis.Redis, dependency: str, number: int) -> ConfigVersion:
    """Version ``number`` of ``dependency`` (reads that entry only).

    Raises:
        ConfigVersionError: no such version.
        ValueError: the entry is not a readable version (written by hand).
        redis.RedisError: Redis failed.
    """
    return await _at(client, versions_key(dependency), number)


async def history(client: aioredis.Redis, dependency: str) -> list[ConfigVersion]:
    """Every version of ``dependency``, oldest first (version 1, 2, ...).

    Raises:
        redis.RedisError: Redis failed.
    """
    raws = await client.lrange(versions_key(dependency), 0, -1)
    return [ConfigVersion.model_validate_json(r) for r in raws]


async def readable_history(
    client: aioredis.Redis, dependency: str
) -> tuple[list[ConfigVersion], list[int], int | None]:
    """Every readable version, the numbers of unreadable entries, and the number in force.

    For showing an audit trail that an entry written by hand must not hide: unlike
    :func:`history` nothing raises on an entry's content.

    Raises:
        redis.RedisError: Redis failed.
    """
    raws = await client.lrange(versions_key(dependency), 0, -1)
    versions: list[ConfigVersion] = []
    unreadable: list[int] = []
    for number, raw in enumerate(raws, start=1):
        try:
            versions.append(ConfigVersion.model_validate_json(raw))
        except ValueError:
            unreadable.append(number)
    raw_current = await client.get(current_key(dependency))
    try:
        in_force = None if raw_current is None else int(raw_current)
    except ValueError:
        in_force = None
    return versions, unreadable, in_force
