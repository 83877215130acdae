"""What a job prints while it runs: its own progress lines, Ray's only with ``-v``.

On a terminal progress is a tqdm bar; otherwise (``ray job submit`` logs, CI, a file) it
is a plain line every ``interval_s`` seconds, so a log stays short and still shows that
the job moves. ``-v/--verbose`` is decided once, in the CLI, before Ray starts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from jobs.runtime.signals import raise_if_interrupted

_VERBOSE_ENV = "AESCORE_VERBOSE"
EPOCH_LINE = "epoch "
"""How a training progress line starts; the only worker output the driver's console shows without -v."""


def set_verbose(verbose: bool) -> None:
    """Show Ray's own console logs and every epoch (the CLI's ``-v``); inherited by child processes."""
    os.environ[_VERBOSE_ENV] = "1" if verbose else "0"


def is_verbose() -> bool:
    """Whether ``-v`` was given (default: quiet)."""
    return os.environ.get(_VERBOSE_ENV, "0") == "1"


def split_verbose_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``-v``/``--verbose``, and whether it was there (before a ``--``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a not in ("-v", "--verbose")]
    return kept + argv[end:], len(kept) != end


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A count towards an optional total: a tqdm bar on a terminal, else a line every ``interval_s``.

    Args:
        what: Verb for the lines, e.g. "scored" ("12,000 rows scored, 3,100 rows/s").
        unit: What is counted ("rows").
        total: Expected count, if known (shown as a percentage).
        interval_s: Seconds between plain lines when not on a terminal.
        stream: Where to print (default stdout).
    """

    def __init__(self, what: str, unit: str = "rows", total: int | None = None, interval_s: float = 10.0,
                 stream: TextIO | None = None):
        self.what, self.unit, self.total, self.interval_s = what, unit, total, interval_s
        self.stream = stream or sys.stdout
        self.count, self.t0 = 0, time.monotonic()
        self._last = self.t0
        self.first_at: float | None = None
        """``time.monotonic()`` when the first items were counted (None before)."""
        self.first_count = 0
        self._bar = None
        if is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=f" {unit}", unit_scale=True, desc=what, file=self.stream,
                             leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        """Add ``n`` to the count (and end the job if a signal came whose exception was swallowed)."""
        raise_if_interrupted()
        if self.first_at is None and n:
            self.first_at, self.first_count = time.monotonic(), n
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """``N rows scored (P%), R rows/s``."""
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        return f"{self.count:,} {self.unit} {self.what}{share}, {self.count / elapsed:,.0f} {self.unit}/s"

    def steady_rate(self, now: float | None = None) -> float | None:
        """Items per second after the first were counted (start-up excluded); None before a second count."""
        if self.first_at is None or self.count == self.first_count:
            return None
        return (self.count - self.first_count) / max((now or time.monotonic()) - self.first_at, 1e-9)

    def close(self) -> None:
        """Remove the bar (the job's result line follows)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EpochProgress:
    """Training progress: a tqdm bar over the epoch cap, or an epoch line every ``every`` epochs.

    The last epoch always gets its line, so the log shows where early stopping ended.
    """

    def __init__(self, max_epochs: int, every: int = 1, bar: bool = False):
        self.every, self._bar, self._printed = max(1, every), None, -1
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=max_epochs, unit=" epoch", desc="training", leave=False, dynamic_ncols=True)

    def epoch(self, h: dict, best_val: float, last: bool = False) -> None:
        """Record one finished epoch (a history entry) and the best validation loss so far."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(train=f"{h['train_loss']:.4f}", val=f"{h['val_loss']:.4f}", best=f"{best_val:.4f}")
            return
        if h["epoch"] % self.every == 0 or (last and h["epoch"] != self._printed):
            self._printed = h["epoch"]
            # Not print(): in a Ray Train worker, Train's patched print logs the line and echoes it,
            # so the driver showed every epoch twice.
            sys.stdout.write(f"{EPOCH_LINE}{h['epoch']}: train_loss={h['train_loss']:.5f} "
                             f"val_loss={h['val_loss']:.5f} best={best_val:.5f} ({h['seconds']:.2f}s)\n")
            sys.stdout.flush()

    def close(self) -> None:
        """Remove the bar (the job prints its result and diagnostics next)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
