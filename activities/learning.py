"""Activities of learning from stress: feed a ledger, read and publish config versions.

The config activities serve a ledger's apply/revert requests with the worker's Redis and
its policy's ``adaptation`` section.
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from antifragile.constants import (
    ACTIVITY_PUBLISH_CONFIG,
    ACTIVITY_READ_CONFIG,
    ACTIVITY_RECORD_OBSERVATIONS,
    profile_workflow_id,
)
from antifragile.learning import config_versions
from antifragile.learning.client import record_observations
from antifragile.models.adaptation import (
    PublishConfigInput,
    PublishConfigResult,
    ReadConfigInput,
    ReadConfigResult,
)
from antifragile.models.learning import RecordObservationsInput, RecordObservationsResult
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

BAD_OBSERVATIONS_ERROR = "BadObservations"
"""ApplicationError type (non-retryable) of observations addressed to another ledger."""

REDIS_TIMEOUT_S = 3.0
"""Longest wait for one Redis call of the config activities, in seconds."""


@activity.defn(name=ACTIVITY_RECORD_OBSERVATIONS)
async def record_dependency_observations(data: RecordObservationsInput) -> RecordObservationsResult:
    """Signal-with-start ``profile-{dependency}`` with the observations.

    The ledger is started on ``data.task_queue`` if it is not running. Re-sending after a
    lost answer is harmless: the ledger keeps one observation per ``(kind, source_id)``.

    Raises:
        ApplicationError: Non-retryable (``BadObservations``) when an observation is for
            another dependency. Temporal errors (server unreachable, refused) propagate and
            are retried by the caller's retry policy.
    """
    try:
        batches = await record_observations(
            activity.client(), data.dependency, data.observations, task_queue=data.task_queue
        )
    except ValueError as exc:
        raise ApplicationError(str(exc), type=BAD_OBSERVATIONS_ERROR, non_retryable=True) from None
    return RecordObservationsResult(
        workflow_id=profile_workflow_id(data.dependency), batches=batches
    )


class ConfigActivities:
    """Read and publish a dependency's config versions with the worker's Redis and policy."""

    def __init__(self, settings: Settings, policy: WorkerPolicy) -> None:
        self._settings = settings
        self._policy = policy

    def _redis(self) -> aioredis.Redis:
        return aioredis.from_url(
            self._settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )

    @activity.defn(name=ACTIVITY_READ_CONFIG)
    async def read_dependency_config(self, data: ReadConfigInput) -> ReadConfigResult:
        """The version in force (None: none) and the policy's adaptation band.

        Raises:
            redis.RedisError: Redis failed (retried by the workflow's retry policy).
        """
        client = self._redis()
        try:
            version = await config_versions.current(client, data.dependency)
        finally:
            await client.aclose()
        return ReadConfigResult(version=version, band=self._policy.adaptation.band())

    @activity.defn(name=ACTIVITY_PUBLISH_CONFIG)
    async def publish_dependency_config(self, data: PublishConfigInput) -> PublishConfigResult:
        """Publish ``data.settings`` (None: revert the version in force), once per request id.

        A refusal (outside the policy's bounds, nothing to revert) is a result, not an
        error. Raises ``redis.RedisError`` when Redis fails (retried by the workflow).
        """
        client = self._redis()
        policy = self._policy.adaptation
        try:
            undone = None
            if data.settings is None:
                version = await config_versions.revert(
                    client,
                    data.dependency,
                    data.by,
                    data.why,
                    policy=policy,
                    request_id=data.request_id,
                )
                if version.revert_of is not None:
                    # That entry only: the revert is committed, and an unreadable older
                    # entry must not fail it (the ledger would record FAILED a revert
                    # that is in force).
                    with contextlib.suppress(ValueError, config_versions.ConfigVersionError):
                        undone = (
                            await config_versions.version_at(
                                client, data.dependency, version.revert_of
                            )
                        ).settings
            else:
                version = await config_versions.publish(
                    client,
                    data.dependency,
                    data.settings,
                    data.by,
                    data.why,
                    policy=policy,
                    request_id=data.request_id,
                )
        except config_versions.ConfigVersionError as exc:
            return PublishConfigResult(refused=True, reason=str(exc))
        finally:
            await client.aclose()
        return PublishConfigResult(version=version, undone=undone)
