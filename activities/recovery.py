"""Activities of RecoveryWorkflow: the recovery action run before each probe."""

from __future__ import annotations

import asyncio
import os
import time

from temporalio import activity
from temporalio.exceptions import ApplicationError

from antifragile.models.recovery import RecoveryActionInput, RecoveryActionResult
from antifragile.policy import WorkerPolicy
from antifragile.probes import post_webhook, run_command
from antifragile.settings import Settings

ACTION_NOT_ALLOWED_ERROR = "RecoveryActionNotAllowed"
"""ApplicationError type when an action names something the policy does not define."""

ACTION_TIMEOUT_S = 60.0


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
            error = await asyncio.to_thread(post_webhook, url, payload, ACTION_TIMEOUT_S)
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
