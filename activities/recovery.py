"""Activities of RecoveryWorkflow: the recovery action run before each probe."""

from __future__ import annotations

import asyncio
import os
import time

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._heartbeat import heartbeating
from antifragile.models.recovery import RecoveryActionInput, RecoveryActionResult
from antifragile.policy import WorkerPolicy
from antifragile.probes import post_webhook, run_command
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

    @activity.defn(name="run_recovery_action")
    async def run_recovery_action(self, data: RecoveryActionInput) -> RecoveryActionResult:
        """Run ``none``, ``webhook[:URL]`` or ``command:NAME`` (a policy command only).

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
            url = arg or self._policy.recovery.webhook_url
            if not url:
                raise ApplicationError(
                    "action webhook has no URL: give webhook:URL or set recovery.webhook_url "
                    "in the worker policy",
                    type=ACTION_NOT_ALLOWED_ERROR,
                    non_retryable=True,
                )
            payload: dict[str, object] = {
                "service": data.service,
                "attempt": data.attempt,
                "reason": data.reason,
            }
            headers = {IDEMPOTENCY_KEY_HEADER: data.idempotency_key} if data.idempotency_key else {}
            async with heartbeating():
                error = await asyncio.to_thread(
                    post_webhook, url, payload, ACTION_TIMEOUT_S, headers=headers
                )
        elif kind == "command":
            argv = self._policy.recovery.commands.get(arg)
            if argv is None:
                known = ", ".join(sorted(self._policy.recovery.commands)) or "none"
                raise ApplicationError(
                    f"command {arg!r} is not defined in the worker policy (defined: {known})",
                    type=ACTION_NOT_ALLOWED_ERROR,
                    non_retryable=True,
                )
            env = dict(os.environ)
            env.update({"AF_SERVICE": data.service, "AF_ATTEMPT": str(data.attempt)})
            if data.idempotency_key:
                env[IDEMPOTENCY_KEY_ENV] = data.idempotency_key
            async with heartbeating():
                code, output = await run_command(list(argv), env, ACTION_TIMEOUT_S)
            error = None if code == 0 else f"command {arg} exited {code}: {output}"
        else:  # the request model validates actions; this guards older histories
            raise ApplicationError(
                f"unknown action {data.action!r}",
                type=ACTION_NOT_ALLOWED_ERROR,
                non_retryable=True,
            )
        elapsed = int((time.perf_counter() - start) * 1000)
        return RecoveryActionResult(ok=error is None, detail=error or "ok", duration_ms=elapsed)
