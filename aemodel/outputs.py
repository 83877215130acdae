"""Reading a committed scoring output in one line: its rows, its summary, its drift report.

An output prefix holds runs; ``OUT/_SUCCESS`` names the committed one (``aemodel.commit``).
These readers follow it, so ``pd.read_parquet(OUT)`` (which trips over the HTML and JSON
beside the rows, and over older runs) is never needed::

    from aemodel import read_scores, read_summary
    rows = read_scores("s3://bucket/scores/dt=2026-11-28")           # a DataFrame
    big = read_scores("s3://bucket/scores/dt=2026-11-28", dataset=True)  # a pyarrow dataset
    summary = read_summary("s3://bucket/scores/dt=2026-11-28")
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from aemodel.commit import committed_run
from aemodel.store import join, read_bytes, url_to_fs


class NothingCommittedError(FileNotFoundError):
    """The output prefix holds no committed run (nothing scored there yet, or a run still in progress)."""


class NotScoresError(ValueError):
    """The prefix holds a committed run of another kind (a model artefact, a sweep), not scores."""


def _run(uri: str, storage_options: dict | None) -> str:
    run = committed_run(uri, storage_options)
    if run is None:
        raise NothingCommittedError(f"{uri} holds no committed scoring run (no {uri.rstrip('/')}/_SUCCESS)")
    fs, path = url_to_fs(run, storage_options)
    if not fs.exists(join(path, "summary.json")):  # every scoring run commits one; a model does not
        raise NotScoresError(f"{uri} holds a committed run that is not a scoring run (no summary.json there: a "
                             "model artefact?); read the --out of aescore score or aescore nightly")
    return run


def _json(run: str, name: str, storage_options: dict | None) -> dict | None:
    fs, path = url_to_fs(run, storage_options)
    data = read_bytes(fs, join(path, name))
    return None if data is None else json.loads(data)


def read_scores(uri: str, storage_options: dict | None = None, *, columns: list[str] | None = None,
                dataset: bool = False, run_id: bool = False):
    """The committed rows of the scoring output at ``uri``.

    Args:
        uri: The ``--out`` of ``aescore score`` (or one night's of ``aescore nightly``), any fsspec URI.
        columns: Read only these columns.
        dataset: Return a ``pyarrow.dataset.Dataset`` over the row files (for outputs larger
            than memory) instead of a pandas DataFrame.
        run_id: Add a ``run_id`` column (the run's id is also in every row file's metadata,
            ``aescore.run_id``).

    Raises:
        NothingCommittedError: Nothing is committed at ``uri``.
        NotScoresError: ``uri`` holds a model artefact or another kind of output.
    """
    run = _run(uri, storage_options)
    fs, path = url_to_fs(join(run, "rows"), storage_options)
    arrow_fs = pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    ds = pads.dataset(files, filesystem=arrow_fs, format="parquet")
    if dataset:
        return ds
    table = ds.to_table(columns=columns)
    if run_id:
        rid = (_json(run, "summary.json", storage_options) or {}).get("run_id")
        table = table.append_column("run_id", pa.array([rid] * table.num_rows, pa.string()))
    return table.to_pandas()


def read_summary(uri: str, storage_options: dict | None = None) -> dict:
    """The committed run's ``summary.json`` (row count, anomaly rate, quantiles, warnings, ...) as a dict.

    Raises:
        NothingCommittedError: Nothing is committed at ``uri``.
        NotScoresError: ``uri`` holds a model artefact or another kind of output.
    """
    run = _run(uri, storage_options)
    return _json(run, "summary.json", storage_options) or {}


def read_drift(uri: str, storage_options: dict | None = None) -> dict | None:
    """The committed night's ``drift.json`` (``aescore nightly``), or None for a plain scoring run.

    Raises:
        NothingCommittedError: Nothing is committed at ``uri``.
        NotScoresError: ``uri`` holds a model artefact or another kind of output.
    """
    return _json(_run(uri, storage_options), "drift.json", storage_options)
