"""The ``aescore`` command: ``aescore {train,score,nightly,sweep,demo,submit} [flags]``.

Exit code 0 on success; otherwise one ``error: ...`` line on stderr and exit code 2 for
bad configuration or input, 1 for any other failure.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from jobs.errors import describe, find_user_error

_USAGE = """usage: aescore {train,score,nightly,sweep,demo,submit} [--help] [flags]
       aescore --version

  train   fit the autoencoder with Ray Train and write a model artefact
  score   score Parquet shards with a model artefact (rows/ + summary.json)
  nightly score one date partition (or a range), commit it, report drift (exit 3 on alert)
  sweep   train one model per latent size (parallel Ray Train runs), compare, recommend one
  demo    generate mixed-type data with injected anomalies, train, score, report AUROC
  submit  run one of these on a Ray cluster; exits with the job's exit code (3: drift alert)
"""


def run_cli(job: Callable[[], str]) -> int:
    """Run ``job`` (which returns the final one-line result) with the CLI's error contract."""
    try:
        line = job()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line
        logging.getLogger("aescore").debug("job failed", exc_info=True)
        print(f"error: {describe(e)}", file=sys.stderr)
        user = find_user_error(e)
        return 2 if user is not None and type(user).__name__ != "TrainingError" else 1
    print(line, flush=True)
    return 0


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


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``aescore SUBCOMMAND ...`` to the job's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"aescore {version('aescore')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from jobs.train import main as job_main
    elif command == "score":
        from jobs.score import main as job_main
    elif command == "demo":
        from jobs.demo import main as job_main
    elif command == "nightly":
        from jobs.nightly import main as job_main
    elif command == "sweep":
        from jobs.sweep import main as job_main
    elif command == "submit":
        from jobs.submit import main as job_main
    else:
        print(f"error: unknown command {command!r}\n{_USAGE}", file=sys.stderr)
        return 2
    return job_main(rest)


if __name__ == "__main__":
    sys.exit(main())
