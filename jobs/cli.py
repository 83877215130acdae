"""The ``aescore`` command: ``aescore {train,score,nightly,sweep,promote,demo,submit} [flags]``.

Exit code 0 on success; otherwise one ``error: ...`` line on stderr and exit code 2 for
bad configuration or input, 1 for any other failure, 130/143 when interrupted (``jobs.runtime.entry``).
"""

from __future__ import annotations

import os
import sys

from jobs.runtime.entry import run_entry_point

_USAGE = """usage: aescore {train,score,nightly,sweep,promote,demo,submit} [--help] [flags]
       aescore --version

  train   fit the autoencoder with Ray Train and write a model artefact
  score   score Parquet shards with a model artefact (rows/ + summary.json)
  nightly score one date partition (or a range), commit it, report drift (exit 3 on alert)
  sweep   train one model per latent size (parallel Ray Train runs), compare, recommend one
  promote move the model in service (MLflow alias or pointer file) with an audit record; --rollback
  demo    generate mixed-type data with injected anomalies, train, score, report AUROC
  submit  run one of these on a Ray cluster; exits with the job's exit code (3: drift alert)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``aescore SUBCOMMAND ...`` to the job's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's libraries then fail to load with a message that names nothing
        print("error: the current directory no longer exists (deleted while a shell was in it); cd to an existing "
              "folder and run again", file=sys.stderr)
        return 2
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
    elif command == "promote":
        from jobs.promote import main as job_main
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


def entry() -> None:
    """The ``aescore`` console script: ``main`` and the process's exit (``jobs.runtime.entry.run_entry_point``)."""
    run_entry_point(main)


if __name__ == "__main__":
    entry()
