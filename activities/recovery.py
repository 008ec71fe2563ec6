"""Activities of RecoveryWorkflow: the action run before each probe; the learned TTRs.

``read_learned_recoveries`` gives an ``adaptive`` round its service's ledger's times.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._heartbeat import heartbeating
from antifragile.constants import (
    ACTIVITY_READ_LEARNED_RECOVERIES,
    ACTIVITY_RUN_RECOVERY_ACTION,
    profile_workflow_id,
)
from antifragile.learning.client import get_profile
from antifragile.learning.measurements import ordered, recover_us
from antifragile.models.learning import TrafficObservation
from antifragile.models.recovery import (
    LearnedRecoveries,
    LearnedRecoveriesInput,
    RecoveryActionInput,
    RecoveryActionResult,
)
from antifragile.policy import WorkerPolicy
from antifragile.recovery.logic import ADAPTIVE_MAX_OBSERVATIONS
from antifragile.recovery.named_targets import (
    NamedTargetError,
    approver_key_envs,
    environment_secrets,
    resolve_webhook,
)
from antifragile.recovery.probes import post_webhook, run_command
from antifragile.settings import Settings

ACTION_NOT_ALLOWED_ERROR = "RecoveryActionNotAllowed"
"""ApplicationError type when an action names something the policy does not define."""

ACTION_TIMEOUT_S = 60.0

IDEMPOTENCY_KEY_ENV = "ANTIFRAGILE_IDEMPOTENCY_KEY"
"""Environment variable that carries an action's idempotency key to a policy command."""
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
"""HTTP header that carries an action's idempotency key to a webhook."""


class RecoveryActivities:
    """Recovery side effects, limited to what the worker policy defines."""

    def __init__(self, settings: Settings, policy: WorkerPolicy) -> None:
        self._settings = settings
        self._policy = policy

    @activity.defn(name=ACTIVITY_RUN_RECOVERY_ACTION)
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        """Run ``none``, ``webhook[:NAME]`` or ``command:NAME`` (of the worker policy only).

        A webhook's URL and headers are resolved here (``antifragile.recovery.named_targets``); they
        and any secret in them never reach the result.

        A failing action is a result (``ok`` false: the attempt failed); an action the
        policy does not allow raises a non-retryable error, which ends the recovery.
        Heartbeats while it runs, so a worker crash is noticed and the action retried
        elsewhere with the same ``idempotency_key`` (``ANTIFRAGILE_IDEMPOTENCY_KEY`` for a
        command, header ``Idempotency-Key`` for a webhook): the receiver can tell a retry
        of an attempt from the next attempt.
        """
        start = time.perf_counter()
        kind, _, arg = data.action.partition(":")
        error: str | None
        if kind == "none":
            error = None
        elif kind == "webhook":
            try:
                hook = resolve_webhook(self._policy.recovery, arg)
            except NamedTargetError as exc:
                raise ApplicationError(
                    str(exc), type=ACTION_NOT_ALLOWED_ERROR, non_retryable=True
                ) from None
            payload: dict[str, object] = {
                "service": data.service,
                "attempt": data.attempt,
                "reason": data.reason,
            }
            headers = dict(hook.headers)
            if data.idempotency_key:
                headers[IDEMPOTENCY_KEY_HEADER] = data.idempotency_key
            async with heartbeating():
                error = await asyncio.to_thread(
                    post_webhook, hook.url, payload, ACTION_TIMEOUT_S, headers=headers
                )
            error = hook.redact(error) if error else None
        elif kind == "command":
            argv = self._policy.recovery.commands.get(arg)
            if argv is None:
                known = ", ".join(sorted(self._policy.recovery.commands)) or "none"
                raise ApplicationError(
                    f"command {arg!r} is not defined in the worker policy (defined: {known})",
                    type=ACTION_NOT_ALLOWED_ERROR,
                    non_retryable=True,
                )
            # Approvers' keys stay with the worker: a command could sign approvals with them.
            keys = approver_key_envs(self._policy.recovery)
            env = {k: v for k, v in os.environ.items() if k not in keys}
            env.update({"AF_SERVICE": data.service, "AF_ATTEMPT": str(data.attempt)})
            if data.idempotency_key:
                env[IDEMPOTENCY_KEY_ENV] = data.idempotency_key
            # The output is recorded: it must not repeat a secret of the environment.
            redact = environment_secrets(self._policy.recovery).redact
            async with heartbeating():
                code, output = await run_command(list(argv), env, ACTION_TIMEOUT_S, redact)
            error = None if code == 0 else f"command {arg} exited {code}: {output}"
        else:  # the request model validates actions; this guards older histories
            raise ApplicationError(
                f"unknown action {data.action!r}",
                type=ACTION_NOT_ALLOWED_ERROR,
                non_retryable=True,
            )
        elapsed = int((time.perf_counter() - start) * 1000)
        return RecoveryActionResult(ok=error is None, detail=error or "ok", duration_ms=elapsed)


@activity.defn(name=ACTIVITY_READ_LEARNED_RECOVERIES)
async def read_learned_recoveries(data: LearnedRecoveriesInput) -> LearnedRecoveries:
    """The verified times to recover held by ``profile-{dependency}`` (most recent last).

    Queries the ledger (``antifragile.learning.client.get_profile``) with an RPC timeout of
    ``data.timeout_s``; an outage's time is ``started_at → recovered_at``, an experiment's
    ``fault_end → recovered_at`` (``antifragile.learning.measurements.recover_us``);
    unverified ones are left out. At most ``ADAPTIVE_MAX_OBSERVATIONS`` are returned.
    A ledger never started is a result (``found`` False), not an error; an unreachable
    one raises, and the workflow falls back to exponential backoff.
    """
    view = await get_profile(
        activity.client(), data.dependency, rpc_timeout=timedelta(seconds=data.timeout_s)
    )
    if view is None:
        return LearnedRecoveries(
            dependency=data.dependency,
            note=f"{profile_workflow_id(data.dependency)} does not exist (nothing observed yet)",
        )
    values = [
        v
        for o in ordered(data.dependency, view.observations)
        if not isinstance(o, TrafficObservation) and (v := recover_us(o)) is not None
    ]
    return LearnedRecoveries(
        dependency=data.dependency, recover_us=values[-ADAPTIVE_MAX_OBSERVATIONS:], found=True
    )
