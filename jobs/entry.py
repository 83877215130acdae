"""The entry points' contract: one result line, or one ``error: ...`` line and an exit code.

Exit codes: 0 success; 2 bad configuration or input; 1 any other failure; 130 SIGINT and
143 SIGTERM (128 + the signal), each with one ``error: interrupted ...`` line, after the
job has removed what it began (an uncommitted run folder, a temporary folder, its Ray
Train checkpoints under Ray's default folder).

Signals: the job installs its own SIGINT/SIGTERM handlers, and keeps them when Ray starts
(a private local Ray's node handler would ``sys.exit(1)`` from anywhere; Ray Train's SIGINT
handler aborts the run without a word). The handler raises ``Interrupted`` in the main
thread (a ``KeyboardInterrupt``, which Ray's blocking calls pass on), so every ``finally``
and clean-up of the job runs; a second signal while that clean-up runs exits at once.

Process exit: ``exit_process`` flushes, stops a Ray this process started and ends the
process with ``os._exit``. Interpreter finalization with pyarrow or torch pool threads
still running (an abandoned Parquet decode after a failed read) can abort with
``terminate called without an active exception`` (exit 134) after the error line.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from jobs.errors import Interrupted, describe, find_user_error

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


def run_cli(job: Callable[[], str]) -> int:
    """Run ``job`` (which returns the final one-line result) with the CLI's error contract."""
    before = install_signal_handlers()
    try:
        try:
            line = job()
        except SystemExit:
            raise
        except KeyboardInterrupt as e:  # Interrupted too
            text, code = interrupted_line(e)
            print(text, file=sys.stderr, flush=True)
            return code
        except BaseException as e:  # noqa: BLE001 - every failure becomes one line
            logging.getLogger("aescore").debug("job failed", exc_info=True)
            if _on_signal.signum is not None:  # type: ignore[attr-defined]
                # The signal's exception was swallowed (a library's bare except) and this failure
                # followed from it: the interrupt is what happened.
                text, code = interrupted_line(e)
                print(text, file=sys.stderr, flush=True)
                return code
            print(f"error: {describe(e)}", file=sys.stderr, flush=True)
            user = find_user_error(e)
            return 2 if user is not None and type(user).__name__ != "TrainingError" else 1
        print(line, flush=True)
        signum = _on_signal.signum  # type: ignore[attr-defined]
        if signum is not None:  # a signal whose exception was swallowed (see raise_if_interrupted)
            print(f"error: interrupted by {signal.Signals(signum).name} as the job finished; its result above "
                  "is complete", file=sys.stderr, flush=True)
            return 128 + signum
        return 0
    finally:
        restore_signal_handlers(before)


def job_main(config_cls: type, run: Callable, format_result: Callable, argv: list[str] | None, prog: str,
             doc: str | None) -> int:
    """The ``main`` of a job: parse ``config_cls`` from flags, ``run`` it, print the result line."""
    from jobs.config import parse_config

    description = (doc or "").strip().split("\n")[0]
    return run_cli(lambda: format_result(run(parse_config(config_cls, verbose_from(argv), prog=prog,
                                                          description=description))))


def verbose_from(argv: list[str] | None) -> list[str]:
    """``argv`` without ``-v/--verbose``, which turns on Ray's console logs for this process and its children."""
    from jobs.progress import set_verbose, split_verbose_flag

    rest, verbose = split_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    set_verbose(verbose)
    return rest


_exit_hooks: list[Callable[[], None]] = []


def on_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` in ``exit_process`` before the process ends (after Ray is stopped)."""
    _exit_hooks.append(hook)


def run_entry_point(main: Callable[[], int]) -> None:
    """A process's entry point: ``main`` under the job's signal handlers, then ``exit_process``.

    The handlers are in place before ``main`` starts and after it returns, so a signal at
    any moment, also while the result line is printed, ends in one line and 128 + the signal.
    """
    install_signal_handlers()
    try:
        code = main()
    except KeyboardInterrupt as e:  # between the job's own handling and the exit
        text, code = interrupted_line(e)
        print(text, file=sys.stderr, flush=True)
    exit_process(code)


def exit_process(code: int) -> None:
    """End the process with ``code``: flush, stop a Ray this process started, then ``os._exit``.

    Skips interpreter finalization, during which pyarrow's or torch's pool threads can
    abort the process (exit 134) after the job's last line.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the last steps run to the end
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    logging.shutdown()
    for hook in _exit_hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)
