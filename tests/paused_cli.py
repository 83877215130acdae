"""Run the real ``aescore`` CLI in a subprocess that pauses at a named moment, so a test can act then.

``python tests/paused_cli.py MODULE:ATTR MATCH READY GO -- aescore-args...`` patches
``MODULE.ATTR`` (a function, or ``Class.method``): the first call whose arguments contain
``MATCH`` (any call for an empty string) creates the file ``READY`` and waits until the file
``GO`` exists (at most 120 s), then runs the original. Everything else is the CLI's own
entry point (``jobs.cli.entry``): its signal handlers, its exit. A test sends a real signal
while the process waits, or lets it go on after another run did something.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path


def _pause_at(target: str, match: str, ready: str, go: str) -> None:
    module_name, _, attr = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    state = {"paused": False}

    def paused(*args, **kwargs):
        if not state["paused"] and match in repr((args, kwargs)):
            state["paused"] = True
            Path(ready).touch()
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.02)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


def run(argv: list[str]) -> None:
    target, match, ready, go, sep, *cli = argv
    assert sep == "--"
    _pause_at(target, match, ready, go)
    from jobs.cli import entry

    sys.argv = ["aescore", *cli]
    entry()


def command(target: str, match: str, ready: Path, go: Path, *cli: str) -> list[str]:
    """The argv of a paused CLI run (for ``subprocess.Popen``)."""
    return [sys.executable, str(Path(__file__).resolve()), target, match, str(ready), str(go), "--", *cli]


def wait_for(path: Path, proc, timeout: float = 180.0) -> None:
    """Wait until ``path`` exists; fail with the process's output if it ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before pausing:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach the pause within {timeout:.0f}s")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    run(sys.argv[1:])
