"""Workflow modules import no I/O client, directly or through what they import.

import-linter (``make lint``) forbids redis, httpx, aiohttp, grpc and yaml in ``workflows``;
it cannot forbid a subpackage of an external package (``temporalio.client``), so this test
imports every workflow module in a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "redis",
    "httpx",
    "aiohttp",
    "grpc",
    "yaml",
    "temporalio.client",
    "temporalio.worker",
    "activities",
    "workers",
)

# grpc is blocked: temporalio.api imports it when it is installed (optional there; the
# grpc extra installs it). A workflow module importing grpc then fails to import.
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
sys.modules["grpc"] = None
import workflows
for info in pkgutil.iter_modules(workflows.__path__):
    importlib.import_module("workflows." + info.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_workflow_modules_import_no_io_client() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = [m for m in json.loads(proc.stdout) if m != "grpc"]
    bad = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
