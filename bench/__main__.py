"""``python -m bench [--full]`` (``make bench``): run every benchmark in this folder.

Each ``bench/<name>.py`` with a ``main(argv) -> int`` runs in turn with the same
arguments; the exit code is the worst of theirs.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark module's ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    worst = 0
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        run = getattr(module, "main", None)
        if callable(run):
            print(f"\n##### bench.{info.name} {' '.join(args)}", flush=True)
            worst = max(worst, int(run(args) or 0))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
