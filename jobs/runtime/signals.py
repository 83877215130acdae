"""SIGINT and SIGTERM in a job: the handlers, and the exception they raise in the main thread.

The job installs its own SIGINT/SIGTERM handlers, and keeps them when Ray starts (a
private local Ray's node handler would ``sys.exit(1)`` from anywhere; Ray Train's SIGINT
handler aborts the run without a word). The handler raises ``Interrupted`` in the main
thread (a ``KeyboardInterrupt``, which Ray's blocking calls pass on), so every ``finally``
and clean-up of the job runs; a second signal while that clean-up runs exits at once.
``jobs.runtime.entry`` turns the interrupt into the job's error line and exit code.
"""

from __future__ import annotations

import os
import signal
import sys

from jobs.runtime.errors import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_installed = False


def _on_signal(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
    if _on_signal.signum is not None:  # type: ignore[attr-defined] # a second signal during the clean-up
        print(f"error: interrupted again ({signal.Signals(signum).name}); exiting without clean-up",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _on_signal.signum = signum  # type: ignore[attr-defined] # Ray re-raises a bare KeyboardInterrupt
    raise Interrupted(signum)


_on_signal.signum = None  # type: ignore[attr-defined]


def raise_if_interrupted() -> None:
    """Raise ``Interrupted`` if a signal came whose exception was swallowed.

    A handler's exception raised while the interpreter runs a weakref callback or a
    ``__del__`` is printed as "ignored" and lost; the job's progress callbacks and the CLI
    call this so that the signal still ends the job.
    """
    signum = _on_signal.signum  # type: ignore[attr-defined]
    if signum is not None:
        raise Interrupted(signum)


def install_signal_handlers() -> dict | None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread; returns the handlers replaced (None elsewhere)."""
    global _installed
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    _on_signal.signum = None  # type: ignore[attr-defined]
    before = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    _installed = True
    return before


def restore_signal_handlers(before: dict | None) -> None:
    """Put back what ``install_signal_handlers`` replaced (a caller in the same process, e.g. a test runner)."""
    global _installed
    if before is None:
        return
    for s, handler in before.items():
        signal.signal(s, handler)
    _installed = False
    _on_signal.signum = None  # type: ignore[attr-defined]


def reinstall_signal_handlers() -> None:
    """Put the job's handlers back after a library replaced them (Ray's init does), if the CLI installed them."""
    if _installed:
        install_signal_handlers()


class keep_signal_handlers:
    """While active, other code's ``signal.signal`` for SIGINT/SIGTERM leaves the job's handlers in place.

    Ray Train's ``fit`` registers a SIGINT handler that aborts the run and exits without an
    error line; with this the job's handler raises ``Interrupted`` instead, and the clean-up
    runs. Only while the CLI's handlers are installed (a library caller keeps Ray's).
    """

    def __enter__(self):
        self._original = signal.signal
        if _installed:
            original = self._original

            def guarded(signum, handler):
                if signum in _SIGNALS:
                    return signal.getsignal(signum)
                return original(signum, handler)

            signal.signal = guarded
        return self

    def __exit__(self, *exc) -> None:
        signal.signal = self._original


def interrupted_line(e: BaseException) -> tuple[str, int]:
    """The error line and exit code of an interrupt (KeyboardInterrupt counts as SIGINT)."""
    signum = getattr(e, "signum", None) or _on_signal.signum or signal.SIGINT  # type: ignore[attr-defined]
    notes = [" ".join(n.split()) for n in getattr(e, "__notes__", [])]
    line = f"error: interrupted by {signal.Signals(signum).name}" + "".join(f"; {n}" for n in notes)
    return line, 128 + int(signum)


def pending_signal() -> int | None:
    """The signal that came (its exception possibly swallowed), or None."""
    return _on_signal.signum  # type: ignore[attr-defined]
