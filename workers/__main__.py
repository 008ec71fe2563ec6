"""``python -m workers``: run the antifragile worker until SIGTERM/SIGINT (no CLI involved)."""

from __future__ import annotations

from workers.main import main

if __name__ == "__main__":
    main()
