"""JSON logs carry the workflow id of workflow and activity records."""

from __future__ import annotations

import json
import logging

from antifragile.telemetry import JsonFormatter


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("antifragile.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_workflow_records_carry_workflow_id_and_run_id() -> None:
    line = JsonFormatter().format(
        record(
            temporal_workflow={
                "workflow_id": "recovery-db",
                "run_id": "r1",
                "workflow_type": "RecoveryWorkflow",
            }
        )
    )
    doc = json.loads(line)
    assert doc["message"] == "hello you"
    assert (doc["workflow_id"], doc["run_id"], doc["workflow_type"]) == (
        "recovery-db",
        "r1",
        "RecoveryWorkflow",
    )


def test_activity_records_carry_the_workflow_they_serve() -> None:
    doc = json.loads(
        JsonFormatter().format(
            record(
                temporal_activity={
                    "workflow_id": "chaos-x-1",
                    "workflow_run_id": "r2",
                    "activity_type": "inject_fault",
                    "attempt": 2,
                }
            )
        )
    )
    assert doc["workflow_id"] == "chaos-x-1" and doc["activity_type"] == "inject_fault"
    assert doc["attempt"] == 2 and doc["level"] == "info"


def test_plain_records_are_valid_json_without_context() -> None:
    doc = json.loads(JsonFormatter().format(record()))
    assert "workflow_id" not in doc and doc["logger"] == "antifragile.x"
