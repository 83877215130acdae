"""User-facing errors and how the CLI turns any failure into one ``error: ...`` line."""

from __future__ import annotations

import errno

from aemodel.commit import OutputError
from aemodel.errors import TrainingError


class InputError(ValueError):
    """Input data or paths are unusable (missing, empty, corrupt, wrong schema)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the job (``jobs.runtime.signals``); not an ``Exception``.

    A ``KeyboardInterrupt`` because Ray's blocking calls (``ray.get``) turn exactly that
    into an interrupted wait (they raise a new ``KeyboardInterrupt``; ``jobs.runtime.signals``
    remembers which signal came); any other exception raised from a signal handler inside
    them surfaces as a ``SystemError``. Code that knows what the interrupt left behind
    adds a note (``add_note``), e.g. that a run committed before it; the CLI prints the
    notes on its one error line.
    """

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


__all__ = ["InputError", "Interrupted", "OutputError", "TrainingError", "describe", "error_chain", "find_user_error"]

# Errors whose message is written for the user and is shown as is.
_USER_ERRORS = ("InputError", "SchemaError", "ArtifactError", "ConfigError", "TrainingError", "OutputError",
                "StorageError")


def error_chain(exc: BaseException):
    """``exc`` and every error it wraps (causes, contexts, Ray and Ray Train wrappers)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # Ray wraps task errors (RayTaskError.cause) and Train wraps worker errors.
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(v for v in failures.values() if isinstance(v, BaseException))
        wrapped = getattr(e, "_error", None)
        if isinstance(wrapped, BaseException):
            stack.append(wrapped)


def find_user_error(exc: BaseException) -> BaseException | None:
    """The innermost error written for the user (bad input, config, artefact), if any.

    A path the system refuses as too long (``ENAMETOOLONG``) is the user's too.
    """
    for e in error_chain(exc):
        if type(e).__name__.startswith("RayTaskError"):
            continue  # its message is a remote traceback; its cause is the real error
        if any(cls.__name__ in _USER_ERRORS for cls in type(e).__mro__):
            return e
        if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
            return e
    return None


MAX_LINE = 400
"""Characters of a message an error line shows at most (a path or a value can be megabytes long)."""


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_LINE else f"{text[:MAX_LINE]}... ({len(text):,} characters)"


def describe(exc: BaseException) -> str:
    """A one-line message for ``exc``, at most ``MAX_LINE`` characters of it: the user-facing error inside it if
    there is one."""
    user = find_user_error(exc)
    if user is not None and not isinstance(user, OSError):
        return _bounded(" ".join(str(user).split()))
    shown = user if user is not None else exc
    if isinstance(shown, OSError) and shown.errno == errno.ENAMETOOLONG:
        return _bounded(f"a path is longer than this system allows: {' '.join(str(shown).split())}")
    return _bounded(f"{type(shown).__name__}: {' '.join(str(shown).split())}")
