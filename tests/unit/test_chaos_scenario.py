"""ChaosScenario: defaults, per-type rules, one-line errors naming the field, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from antifragile.chaos.scenario import SCHEMA_PATH, load_scenario, render_schema
from antifragile.errors import ConfigError
from antifragile.models.chaos_scenario import (
    ChaosScenario,
    ChaosType,
    ResourceType,
    parse_scenario,
)


def test_defaults_follow_the_issue() -> None:
    s = ChaosScenario(name="n", chaos_type=ChaosType.LATENCY, target="redis")
    assert s.blast_radius == ["redis"]
    assert s.injection_rate == 1.0
    assert s.max_duration_s == 300
    assert s.abort_below_health == 0.5
    assert s.require_hash_validation is True
    assert s.require_approval is False
    assert s.dry_run is False


def test_target_is_always_in_the_blast_radius_and_duplicates_go() -> None:
    s = parse_scenario(
        {"name": "n", "chaos_type": "error", "target": "db", "blast_radius": ["cache", "cache"]}
    )
    assert s.blast_radius == ["db", "cache"]
    assert s.chaos_type is ChaosType.ERROR


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text(
        "name: cpu-day\nchaos_type: RESOURCE_EXHAUSTION\ntarget: api\n"
        "resource_type: cpu\nresource_level: 0.25\nduration_s: 10\n"
    )
    s = load_scenario(y)
    assert s.resource_type is ResourceType.CPU and s.resource_level == 0.25
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"name": "x", "chaos_type": "TIMEOUT", "target": "t"}))
    assert load_scenario(j).chaos_type is ChaosType.TIMEOUT


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("chaos_type", "FLOOD", "chaos_type"),
        ("error_rate", 1.5, "error_rate"),
        ("injection_rate", -0.1, "injection_rate"),
        ("duration_s", -5, "duration_s"),
        ("resource_level", 2, "resource_level"),
        ("colour", "red", "unknown field 'colour'"),
        ("steady_state_probe", "ftp://x", "steady_state_probe"),
        ("target", "bad name!", "target"),
    ],
)
def test_invalid_input_is_one_line_naming_the_field(
    field: str, value: object, expected: str
) -> None:
    data = {"name": "n", "chaos_type": "LATENCY", "target": "t", field: value}
    with pytest.raises(ConfigError) as info:
        parse_scenario(data, "scenario file x.yaml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("scenario file x.yaml: ")


def test_resource_exhaustion_needs_a_resource_type() -> None:
    with pytest.raises(ConfigError, match="resource_type: required for RESOURCE_EXHAUSTION"):
        parse_scenario({"name": "n", "chaos_type": "RESOURCE_EXHAUSTION", "target": "t"})


def test_instance_fraction_and_count_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="instance_fraction and instance_count"):
        parse_scenario(
            {
                "name": "n",
                "chaos_type": "NETWORK_PARTITION",
                "target": "t",
                "instance_fraction": 0.5,
                "instance_count": 2,
            }
        )


def test_bad_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="No such file"):
        load_scenario(tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_scenario(lst)


def test_published_schema_equals_the_generated_one() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), (
        "regenerate with: python -m antifragile.models.chaos_scenario"
    )
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "chaos_type", "target"}


def test_descriptions_are_human() -> None:
    s = parse_scenario(
        {
            "name": "n",
            "chaos_type": "LATENCY",
            "target": "t",
            "latency_ms": 200,
            "jitter_ms": 50,
            "injection_rate": 0.5,
            "instance_fraction": 0.25,
        }
    )
    assert s.parameters_description() == "+200 ± 50 ms, 50% of calls"
    assert s.instances_description == "25% of instances"


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples" / "chaos").glob("*.*")), ids=str
)
def test_shipped_examples_are_valid(path: Path) -> None:
    assert load_scenario(path).name
