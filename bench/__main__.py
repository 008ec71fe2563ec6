"""``make bench``: run every benchmark in turn and print its figures.

``python -m bench [--full] [NAME ...]`` — NAME is a module of this package (inprocess,
bridge, storm, bus, halt, faults, cli, learning); ``--full`` runs the large sizes.
``python -m bench halt`` runs only the halt measurement.
"""

from __future__ import annotations

import importlib
import sys

BENCHES = ["inprocess", "bridge", "storm", "bus", "halt", "faults", "cli", "learning"]


def main(argv: list[str]) -> int:
    full = "--full" in argv
    names = [a for a in argv if not a.startswith("-")] or BENCHES
    code = 0
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"== {name}: not present, skipped")
            continue
        print(f"\n== bench/{name}.py", flush=True)
        code = max(code, int(module.main(["--full"] if full else []) or 0))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
