"""The house keeps its shape (README "Layout"): small modules, a small foundation."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("antifragile", "workflows", "activities", "workers")
MAX_LINES = 600
MAX_TOP_MODULES = 12


def test_no_product_file_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for d in PRODUCT
        for p in (ROOT / d).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by responsibility: {long}"


def test_at_most_12_modules_sit_directly_in_the_package() -> None:
    top = sorted(p.name for p in (ROOT / "antifragile").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
