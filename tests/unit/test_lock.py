"""uv.lock cannot drift from pyproject.toml, and it installs from PyPI only.

`uv lock --check --offline` runs against an empty cache: with the lock current, uv needs
neither the network nor a cache to say so, so this is a unit test. `make lint` runs the
same check online (`make lock-check`), and `make install` syncs with `--locked`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPI = "https://pypi.org/simple"


def _uv() -> str:
    """The uv `make install` bootstraps into .uv/, else $UV, else one on PATH."""
    for candidate in (ROOT / ".uv" / "bin" / "uv", os.environ.get("UV"), shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("no uv: `make install` bootstraps one into .uv/")


def _check(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "UV_CACHE_DIR": str(cache),
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
    }
    return subprocess.run(
        [_uv(), "lock", "--check", "--offline", "--directory", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_committed_lock_matches_pyproject(tmp_path: Path) -> None:
    result = _check(ROOT, tmp_path / "cache")
    assert result.returncode == 0, f"run `make lock` and commit uv.lock:\n{result.stderr}"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ('"rich>=13",', '"rich>=13",\n    "idna>=3",'),  # a dependency added
        ('"redis>=5",', '"redis>=99",'),  # a range the locked version falls outside of
        ('    "pybreaker",\n', ""),  # a dev dependency removed
    ],
    ids=["added", "narrowed", "removed"],
)
def test_a_pyproject_change_without_relocking_fails_the_check(
    tmp_path: Path, before: str, after: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, project / name)
    assert _check(project, tmp_path / "cache").returncode == 0, "the copy itself is current"

    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert before in text
    pyproject.write_text(text.replace(before, after, 1))
    assert _check(project, tmp_path / "cache").returncode != 0


def test_every_locked_package_comes_from_pypi_with_a_hash() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = lock["package"]
    project = [p for p in packages if p["name"] == "antifragile"]
    assert len(project) == 1 and project[0]["source"] == {"editable": "."}
    for package in packages:
        if package["name"] == "antifragile":
            continue
        assert package["source"] == {"registry": PYPI}, package["name"]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{package['name']}: nothing to install"
        for file in files:
            assert file["url"].startswith("https://files.pythonhosted.org/"), file["url"]
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", file["hash"]), file["url"]


def test_the_lock_pins_what_the_project_and_each_extra_require() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"] for p in lock["package"]}
    (project,) = (p for p in lock["package"] if p["name"] == "antifragile")
    assert set(project["optional-dependencies"]) == set(pyproject["optional-dependencies"])

    def name(requirement: str) -> str:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        return re.sub(r"[._-]+", "-", match.group(0)).lower()

    required = list(pyproject["dependencies"])
    for extra in pyproject["optional-dependencies"].values():
        required.extend(extra)
    missing = {name(r) for r in required} - locked
    assert not missing, f"not in uv.lock: {sorted(missing)}"


def _make_dry_run(*args: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    result = subprocess.run(
        [make, "--no-print-directory", "-n", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("changed", ["pyproject.toml", "uv.lock"])
def test_make_install_resyncs_from_the_lock_when_either_file_changes(changed: str) -> None:
    assert "sync --locked --all-extras" in _make_dry_run("-W", changed, "install")


def test_make_lint_checks_the_lock() -> None:
    assert "lock --check" in _make_dry_run("lint")


def test_make_install_on_a_stale_lock_says_to_run_make_lock(tmp_path: Path) -> None:
    """uv's own hint (`uv lock`) names a command a fresh clone does not have."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, project / name)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich>=13",', '"rich>=13", "idna>=3",'))
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [make, "--no-print-directory", "-C", str(project), "install", f"UV={_uv()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "run `make lock` and commit uv.lock" in result.stderr
    assert not (project / ".venv").exists()  # stopped before touching the environment
