"""``python -m workers``: run the antifragile worker until SIGTERM/SIGINT."""

from __future__ import annotations

from antifragile.cli import main

if __name__ == "__main__":
    main(["worker"])
