"""Property-based: whatever reaches a model is either valid or one clear, field-naming error.

Recovery requests and signals; chaos scenarios (as the CLI and scenario files give them),
scenario files as text, and the experiment's signals as the worker decodes them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from antifragile.chaos.scenario import load_scenario
from antifragile.errors import ConfigError, describe_validation_error
from antifragile.models.chaos import ChaosExperimentInput, EmergencyStopSignal
from antifragile.models.chaos_scenario import (
    ChaosScenario,
    ChaosType,
    ResourceType,
    parse_scenario,
)
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


# --- chaos: scenarios (flags and files) and the experiment's signals ----------------------

SCENARIO_FIELDS = [*ChaosScenario.model_fields, "surprise", "latncy_ms"]
VALID_SCENARIO: dict[str, Any] = {"name": "prop", "chaos_type": "LATENCY", "target": "db"}
plausible = (
    st.sampled_from([t.value for t in ChaosType] + [t.value.lower() for t in ChaosType])
    | st.sampled_from([r.value for r in ResourceType] + ["DISK"])
    | st.sampled_from(["db", "cache", "bad name!", "", "tcp://127.0.0.1:6379", "http://x"])
    | st.floats(0, 1)
    | st.integers(1, 1000)
    | st.booleans()
    | st.floats(-2, 2)
    | st.integers(-10, 700_000)
    | st.lists(st.sampled_from(["db", "cache", "-x"]), max_size=3)
)
"""Values near the valid ones, so that many drawn scenarios are valid and the rest are
wrong in one field or two, not in everything at once."""


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.sampled_from(SCENARIO_FIELDS), plausible | json_values, max_size=4),
    st.just(set()) | st.sets(st.sampled_from(list(VALID_SCENARIO)), max_size=1),
)
def test_any_scenario_mapping_is_valid_or_one_line_naming_every_bad_field(
    changes: dict[str, Any], removed: set[str]
) -> None:
    data = {k: v for k, v in {**VALID_SCENARIO, **changes}.items() if k not in removed}
    try:
        expected = ChaosScenario.model_validate(data)
    except ValidationError as exc:
        with pytest.raises(ConfigError) as refused:
            parse_scenario(data, "scenario")
        message = str(refused.value)
        assert message.startswith("scenario: ") and "\n" not in message
        for err in exc.errors():
            # A cross-field rule (loc empty) names its fields in its own text.
            field = str(err["loc"][0]) if err["loc"] else err["msg"].split(":")[0].split()[-1]
            assert field in message, (field, message)
        return
    scenario = parse_scenario(data, "scenario")
    assert scenario == expected
    assert scenario.target in scenario.blast_radius


@st.composite
def scenarios(draw: st.DrawFn) -> ChaosScenario:
    chaos_type = draw(st.sampled_from(list(ChaosType)))
    target = draw(services)
    return ChaosScenario(
        name=draw(services),
        chaos_type=chaos_type,
        target=target,
        blast_radius=draw(st.lists(services, max_size=3)),
        latency_ms=draw(st.integers(0, 600_000)),
        error_rate=draw(st.floats(0, 1)),
        resource_type=draw(st.sampled_from(list(ResourceType)))
        if chaos_type is ChaosType.RESOURCE_EXHAUSTION
        else None,
        injection_rate=draw(st.floats(0, 1)),
        instance_fraction=draw(st.none() | st.floats(0, 1)),
        duration_s=draw(st.floats(0.001, 86_400)),
        abort_below_health=draw(st.floats(0, 1)),
        steady_state_probe=draw(st.none() | probes),
        description=draw(st.text(max_size=40)),
        dry_run=draw(st.booleans()),
    )


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_valid_scenarios_survive_the_temporal_payload_round_trip(scenario: ChaosScenario) -> None:
    data = ChaosExperimentInput(scenario=scenario, experiment_id=f"chaos-{scenario.name}-1")
    payloads = pydantic_data_converter.payload_converter.to_payloads([data])
    [back] = pydantic_data_converter.payload_converter.from_payloads(
        payloads, [ChaosExperimentInput]
    )
    assert back == data


CHAOS_SIGNALS = [EmergencyStopSignal, HealthChangedSignal, ApprovalSignal]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(CHAOS_SIGNALS),
    json_values
    | st.dictionaries(
        st.sampled_from(["reason", "by", "service", "healthy", "score", "approver", "note", "x"]),
        json_values,
        max_size=4,
    ),
)
def test_chaos_signal_payloads_decode_as_the_worker_does_or_are_refused_cleanly(
    model: type[BaseModel], payload: Any
) -> None:
    # What `temporal workflow signal --input JSON` delivers is decoded by the worker's
    # converter: it either yields exactly the validated model or raises (and the SDK
    # drops the signal); the error a person would see is one line.
    raw = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(payload).encode())
    try:
        expected = model.model_validate(payload)
    except ValidationError as exc:
        assert "\n" not in describe_validation_error(exc)
        with pytest.raises(Exception):  # noqa: B017 - any decode failure drops the signal
            pydantic_data_converter.payload_converter.from_payloads([raw], [model])
        return
    [decoded] = pydantic_data_converter.payload_converter.from_payloads([raw], [model])
    assert decoded == expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from([".yaml", ".json"]),
    st.text(max_size=80)
    | st.dictionaries(st.sampled_from(SCENARIO_FIELDS), json_values | plausible, max_size=5).map(
        lambda d: json.dumps({**VALID_SCENARIO, **d})
    ),
)
def test_any_scenario_file_loads_or_fails_with_one_line_naming_the_file(
    suffix: str, text: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"scenario{suffix}"
        path.write_text(text)
        try:
            load_scenario(path)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"scenario file {path}: ") and "\n" not in message
