"""Chaos scenario files: load and check them, and publish their JSON Schema.

The scenario itself is a contract (:class:`~antifragile.models.chaos_scenario.ChaosScenario`);
this module reads it from ``.yaml``/``.yml`` or ``.json`` files, checks it against the
local copy of the worker policy before anything starts, and writes the published schema
(``antifragile/schemas/chaos-scenario.schema.json``, generated from the model; a test keeps
the two equal). ``python -m antifragile.chaos.scenario`` rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from antifragile.chaos.logic import cap_duration, policy_refusal
from antifragile.errors import ConfigError
from antifragile.models.chaos_scenario import ChaosScenario, parse_scenario
from antifragile.policy import WorkerPolicy, _yaml_problem

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "chaos-scenario.schema.json"
"""Where the published JSON Schema of a scenario lives (shipped as package data)."""


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"scenario file {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ConfigError(f"scenario file {path}: not valid JSON ({where})") from None
    except yaml.YAMLError as exc:
        # Where, never the file's text: a line may hold a secret (as for policy files).
        raise ConfigError(f"scenario file {path}: not valid YAML ({_yaml_problem(exc)})") from None


def load_scenario(path: Path | str) -> ChaosScenario:
    """Load a scenario from a ``.yaml``/``.yml`` or ``.json`` file.

    Raises:
        ConfigError: unreadable file, bad YAML/JSON, or an invalid field (named).
    """
    path = Path(path)
    return parse_scenario(_read(path), f"scenario file {path}")


def scenario_file_data(path: Path | str) -> dict[str, Any]:
    """The fields a scenario file gives, validated, as written (defaults not filled in).

    For a caller that fills in what the file leaves out (e.g. the settings'
    constitutional hash) before :func:`checked_scenario`.

    Raises:
        ConfigError: unreadable file, bad YAML/JSON, or an invalid field (named).
    """
    path = Path(path)
    data = _read(path)
    parse_scenario(data, f"scenario file {path}")  # one clear line naming a bad field
    return dict(data)


def checked_scenario(
    data: dict[str, Any], source: str, policy: WorkerPolicy
) -> tuple[ChaosScenario, str]:
    """Validate a scenario against the model and a (local) copy of the worker policy.

    Args:
        data: The scenario's fields.
        source: What the fields came from, for the error line (``scenario file x.yaml``).
        policy: The worker policy whose ``chaos`` section applies.

    Returns:
        The scenario, and a warning (``""``: none) when its duration will be capped.

    Raises:
        ConfigError: an invalid field, or a scenario the policy refuses.
    """
    scenario = parse_scenario(data, source)
    refusal = policy_refusal(scenario, policy.chaos.allowed_targets, policy.chaos.min_abort_below)
    if refusal:
        raise ConfigError(f"{source}: {refusal}")
    cap = cap_duration(scenario.duration_s, scenario.max_duration_s, policy.chaos.max_duration_s)
    return scenario, cap.warning or ""


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file, generated from :class:`ChaosScenario`."""
    schema = ChaosScenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://antifragile.dev/schemas/chaos-scenario.schema.json"
    schema["title"] = "antifragile chaos scenario"
    return schema


def render_schema() -> str:
    """The schema as the exact text of the published file."""
    return json.dumps(scenario_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """(Re)write the published JSON Schema file; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_schema())
    return path


if __name__ == "__main__":
    print(write_schema())
