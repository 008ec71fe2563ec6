"""Property-based: whatever reaches a model is either valid or one clear, field-naming error."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.errors import describe_validation_error
from antifragile.models.common import ApprovalSignal, HealthChangedSignal
from antifragile.models.recovery import (
    JoinSignal,
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryStrategy,
)

FIELDS = [*RecoveryRequest.model_fields, "surprise", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8))
def test_any_request_payload_is_valid_or_one_line_naming_the_field(data: dict[str, Any]) -> None:
    try:
        RecoveryRequest.model_validate(data)
    except ValidationError as exc:
        message = describe_validation_error(exc)
        assert message and "\n" not in message
        named = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        assert any(name in message for name in named) or not named


services = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
probes = st.sampled_from(
    [
        "tcp://127.0.0.1:6379",
        "http://svc:8080/health",
        "redis://cache:6379/0",
        "https://x.example/healthz",
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> RecoveryRequest:
    initial = draw(st.integers(0, 100_000))
    return RecoveryRequest(
        service=draw(services),
        probe=draw(probes),
        strategy=draw(st.sampled_from(list(RecoveryStrategy))),
        priority=draw(st.integers(0, 1000)),
        policy=RecoveryPolicy(
            max_retry_attempts=draw(st.integers(1, 50)),
            backoff_multiplier=draw(st.floats(1.0, 10.0)),
            initial_delay_ms=initial,
            max_delay_ms=draw(st.integers(initial, initial + 1_000_000)),
            jitter=draw(st.booleans()),
        ),
        reason=draw(st.text(max_size=50)),
    )


@settings(max_examples=200, deadline=None)
@given(requests())
def test_valid_requests_survive_the_temporal_payload_round_trip(request: RecoveryRequest) -> None:
    payloads = pydantic_data_converter.payload_converter.to_payloads([request])
    [back] = pydantic_data_converter.payload_converter.from_payloads(payloads, [RecoveryRequest])
    assert back == request


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([ApprovalSignal, HealthChangedSignal, JoinSignal]), json_values)
def test_signal_payloads_are_valid_or_rejected_cleanly(model: type, payload: Any) -> None:
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        assert "\n" not in describe_validation_error(exc)
