"""A constitutional hash mismatch never shows any part of the worker's expected hash.

Every place a mismatch is reported — the recovery's ``validate_constitutional_hash`` and
the chaos activities' checks at injection and at every lease renewal — is called with a
wrong hash against two different worker hashes. The message must be the same for both
(so it cannot depend on the expected value at all) and contain no four consecutive
characters of either. The request's own hash may be echoed: it is in the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from temporalio.exceptions import ApplicationError

from activities.chaos import ChaosActivities
from activities.common import HASH_MISMATCH_ERROR, CommonActivities
from antifragile.hashing import mismatch_message
from antifragile.models.chaos import InjectFaultInput, RenewLeaseInput
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.models.recovery import ValidateHashInput
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

WORKER_HASHES = ("cdd01ef066bc6cf2", "9f3a77e2d41b0c85")
GIVEN = "0123456789abcdef"
NEAR_MISS = "cdd01ef066bc6cf3"
"""Shares 15 digits with the first worker hash: the message must still show none of it."""

Check = Callable[[Settings, str], Awaitable[object]]


async def recovery_check(settings: Settings, given: str) -> object:
    acts = CommonActivities(settings, WorkerPolicy())
    return await acts.validate_constitutional_hash(ValidateHashInput(constitutional_hash=given))


async def chaos_injection(settings: Settings, given: str) -> object:
    acts = ChaosActivities(settings, WorkerPolicy())
    scenario = ChaosScenario.model_validate(
        {
            "name": "hash",
            "chaos_type": "LATENCY",
            "target": "db",
            "constitutional_hash": given,
            "require_hash_validation": True,
        }
    )
    # The hash is checked before the fault plane is touched: no Redis is needed.
    return await acts.inject_fault(
        InjectFaultInput(experiment_id="chaos-hash-1", scenario=scenario, ttl_s=5)
    )


async def chaos_renewal(settings: Settings, given: str) -> object:
    acts = ChaosActivities(settings, WorkerPolicy())
    return await acts.renew_fault_lease(
        RenewLeaseInput(experiment_id="chaos-hash-1", ttl_s=5, constitutional_hash=given)
    )


def windows(value: str, size: int = 4) -> set[str]:
    return {value[i : i + size] for i in range(len(value) - size + 1)}


@pytest.mark.parametrize("check", [recovery_check, chaos_injection, chaos_renewal])
@pytest.mark.parametrize("given", [GIVEN, "not-even-hex", ""])
async def test_the_message_depends_on_the_request_only_and_shows_nothing_expected(
    check: Check, given: str
) -> None:
    messages = []
    for expected in WORKER_HASHES:
        with pytest.raises(ApplicationError) as caught:
            await check(Settings(constitutional_hash=expected), given)
        assert caught.value.type == HASH_MISMATCH_ERROR and caught.value.non_retryable
        message = caught.value.message
        assert "constitutional hash mismatch" in message
        assert not windows(expected) & windows(message.lower()), message
        messages.append(message)
    assert messages[0] == messages[1] == mismatch_message(given)


@pytest.mark.parametrize("check", [recovery_check, chaos_injection, chaos_renewal])
async def test_a_near_miss_tells_nothing_more_than_any_other_wrong_hash(check: Check) -> None:
    settings = Settings(constitutional_hash=WORKER_HASHES[0])
    with pytest.raises(ApplicationError) as near:
        await check(settings, NEAR_MISS)
    with pytest.raises(ApplicationError) as far:
        await check(settings, GIVEN)
    # The only difference is the echo of the request's own hash (redacted to 8 digits).
    near_text = near.value.message.replace(NEAR_MISS[:8], "X")
    assert near_text == far.value.message.replace(GIVEN[:8], "X")
    assert NEAR_MISS not in near.value.message
