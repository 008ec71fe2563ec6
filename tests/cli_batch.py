"""Run many ``antifragile`` command lines cheaply: import the CLI once, fork per command.

``python -m tests.cli_batch`` reads a JSON list of argv lists on stdin and prints a JSON
list of ``{"code", "stdout", "stderr"}``. Each command runs in its own forked child that
calls the console script's ``main(argv)`` — the real entry point, its real exit code
(``main`` ends with ``os._exit``) and what it really wrote to fds 1 and 2 — without
paying the ~1 s import of the CLI per command on a busy 2-core machine.

Forking is safe here: this process imports the CLI but starts no threads before forking
(no Temporal client or runtime exists until a command connects, in the child).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any


def run_one(argv: list[str]) -> dict[str, Any]:
    """Run ``antifragile ARGV`` in a forked child; its exit code and output."""
    from antifragile.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: becomes the command
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.argv = ["antifragile", *argv]
                main(argv)
            finally:
                os._exit(70)  # main always exits itself; reaching here is a bug
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {
            "code": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


if __name__ == "__main__":
    import antifragile.cli

    antifragile.cli.preload()  # every command's modules imported once, before any fork

    commands = json.load(sys.stdin)
    results = [run_one(list(argv)) for argv in commands]
    sys.stdout.write(json.dumps(results))
