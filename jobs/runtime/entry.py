"""The entry points' contract: one result line, or one ``error: ...`` line and an exit code.

Exit codes: 0 success; 2 bad configuration or input; 1 any other failure; 130 SIGINT and
143 SIGTERM (128 + the signal), each with one ``error: interrupted ...`` line, after the
job has removed what it began (an uncommitted run folder, a temporary folder, its Ray
Train checkpoints under Ray's default folder).

Signals: ``jobs.runtime.signals`` (the job's own SIGINT/SIGTERM handlers raise ``Interrupted`` in
the main thread, so every ``finally`` and clean-up of the job runs).

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

from jobs.runtime.errors import describe, find_user_error
from jobs.runtime.progress import set_verbose, split_verbose_flag
from jobs.runtime.signals import install_signal_handlers, interrupted_line, pending_signal, restore_signal_handlers

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
            if pending_signal() is not None:
                # The signal's exception was swallowed (a library's bare except) and this failure
                # followed from it: the interrupt is what happened.
                text, code = interrupted_line(e)
                print(text, file=sys.stderr, flush=True)
                return code
            print(f"error: {describe(e)}", file=sys.stderr, flush=True)
            user = find_user_error(e)
            return 2 if user is not None and type(user).__name__ != "TrainingError" else 1
        print(line, flush=True)
        signum = pending_signal()
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
    from jobs.runtime.config import parse_config

    description = (doc or "").strip().split("\n")[0]
    return run_cli(lambda: format_result(run(parse_config(config_cls, verbose_from(argv), prog=prog,
                                                          description=description))))


def verbose_from(argv: list[str] | None) -> list[str]:
    """``argv`` without ``-v/--verbose``, which turns on Ray's console logs for this process and its children."""
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
