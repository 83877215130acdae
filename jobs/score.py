"""Score Parquet shards with a model artefact: per-row error plus its distribution.

Submit to a Ray cluster (from the repository root)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.score --model s3://bucket/models/ae-v1 --data s3://bucket/events/ \\
        --out s3://bucket/scores/run-1 --id-columns event_id --use-gpu --concurrency 4

Locally: ``aescore score --model ./model --data ./data/score --out ./scores``.

Output at ``--out``: ``rows/*.parquet`` (id columns, recon_error, is_anomaly,
missing_cells, unseen_cells), ``summary.json``, and ``_SUCCESS`` written last. A rerun
replaces the previous output; a prefix without ``_SUCCESS`` is incomplete.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import ray
import ray.data
import torch
from ray.data import ActorPoolStrategy

from aemodel import ModelArtifact, RowScorer, load_artifact
from aemodel.metrics import histogram_edges
from jobs.config import parse_config
from jobs.datasets import ParquetInput, open_parquet_input
from jobs.errors import InputError
from jobs.ray_runtime import ErrorStatsAggregate, ensure_ray
from jobs.storage import arrow_filesystem, join, remove, url_to_fs, write_bytes

ROW_HASH = "row_hash"
ModelLoader = Callable[[str], ModelArtifact]


@dataclass
class ScoreConfig:
    """Options of ``aescore score``."""

    model: str
    """Model artefact URI written by ``aescore train``."""
    data: str
    """Parquet to score: a file, a directory/prefix of shards, or a glob (any fsspec URI)."""
    out: str
    """Output prefix: rows/, summary.json and _SUCCESS are written under it (replaced on rerun)."""
    id_columns: list[str] = field(default_factory=list)
    """Input columns copied to the output to identify rows; empty adds row_hash (file + position)."""
    batch_size: int = 8192
    """Rows per model call."""
    concurrency: int | None = None
    """Scoring actors (actor path) or max parallel tasks (task path); default: one per GPU / Ray decides."""
    compute: Literal["auto", "actors", "tasks"] = "auto"
    """actors: a pool that loads the model once per actor; tasks: fused with the read; auto: actors on GPU, tasks on CPU."""
    use_gpu: bool = False
    """Score on GPUs (one per actor)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per scoring actor/task; torch uses this many threads (at least 1)."""
    threshold: float | None = None
    """Override the model's anomaly threshold on recon_error."""
    ray_address: str | None = None
    """Ray cluster address; default RAY_ADDRESS if set, else a private local Ray."""

    def __post_init__(self) -> None:
        if not (self.model and self.data and self.out):
            raise ValueError("--model, --data and --out are required")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.threshold is not None and not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if ROW_HASH in self.id_columns:
            raise ValueError(f"{ROW_HASH!r} is reserved for the synthetic row id")

    @property
    def use_actors(self) -> bool:
        return self.compute == "actors" or (self.compute == "auto" and self.use_gpu)


class BatchScorer:
    """Ray Data UDF: loads the model once, then scores Arrow batches.

    Args:
        model_uri: Artefact to load.
        passthrough: Input columns copied to the output.
        threshold: Anomaly threshold override (None: the model's).
        use_gpu: Run on CUDA.
        threads: torch intra-op threads, matched to the CPUs reserved for this worker.
        loader: Loads an artefact from a URI; injectable for tests and custom registries.
    """

    def __init__(self, model_uri: str, passthrough: list[str], threshold: float | None = None,
                 use_gpu: bool = False, threads: int = 1, loader: ModelLoader = load_artifact):
        torch.set_num_threads(threads)
        art = loader(model_uri)
        if threshold is not None:
            art.threshold = {**art.threshold, "value": threshold}
        self.passthrough = passthrough
        self.scorer = RowScorer(art, "cuda" if use_gpu else "cpu")

    def __call__(self, batch: pa.Table) -> pa.Table:
        res = self.scorer.score_table(batch)
        cols = {c: batch.column(c) for c in self.passthrough}
        cols.update({
            "recon_error": pa.array(res["recon_error"], type=pa.float32()),
            "is_anomaly": pa.array(res["is_anomaly"], type=pa.bool_()),
            "missing_cells": pa.array(res["missing_cells"], type=pa.int32()),
            "unseen_cells": pa.array(res["unseen_cells"], type=pa.int32()),
        })
        return pa.table(cols)


@functools.lru_cache(maxsize=4)
def _cached_scorer(model_uri: str, passthrough: tuple[str, ...], threshold: float | None, use_gpu: bool,
                   threads: int, loader: ModelLoader) -> BatchScorer:
    return BatchScorer(model_uri, list(passthrough), threshold, use_gpu, threads, loader)


def score_batch(batch: pa.Table, *, model_uri: str, passthrough: list[str], threshold: float | None,
                use_gpu: bool, threads: int, loader: ModelLoader) -> pa.Table:
    """Task-path UDF: the model is loaded once per worker process and reused across tasks."""
    return _cached_scorer(model_uri, tuple(passthrough), threshold, use_gpu, threads, loader)(batch)


@dataclass
class ScoreResult:
    """What ``run`` produced."""

    out: str
    summary: dict


def open_scoring_input(cfg: ScoreConfig, art: ModelArtifact) -> ParquetInput:
    """List and check the input files against the model's columns (footers only, no Ray)."""
    data = open_parquet_input(cfg.data, specs=art.preprocessor.specs)
    for f in data.files:
        missing = [c for c in cfg.id_columns if c not in f.schema.names]
        if missing:
            raise InputError(f"{f.uri}: id column(s) {missing} not in the data")
    return data


def build_scored_dataset(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput,
                         loader: ModelLoader = load_artifact) -> ray.data.Dataset:
    """The lazy read -> score pipeline; rows keep their ids, so order never matters."""
    passthrough = list(cfg.id_columns) or [ROW_HASH]
    features = [s.name for s in art.preprocessor.specs]
    columns = list(dict.fromkeys([*cfg.id_columns, *features]))
    ds = data.read(columns=columns, include_row_hash=not cfg.id_columns)
    threads = max(1, int(cfg.cpus_per_worker))
    args = {"model_uri": cfg.model, "passthrough": passthrough, "threshold": cfg.threshold,
            "use_gpu": cfg.use_gpu, "threads": threads, "loader": loader}
    common = {"batch_format": "pyarrow", "batch_size": cfg.batch_size, "num_cpus": cfg.cpus_per_worker,
              "num_gpus": 1 if cfg.use_gpu else 0}
    if cfg.use_actors:
        default_size = max(1, int(ray.cluster_resources().get("GPU", 0))) if cfg.use_gpu else 1
        return ds.map_batches(BatchScorer, fn_constructor_kwargs=args,
                              compute=ActorPoolStrategy(size=cfg.concurrency or default_size), **common)
    compute = ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None
    return ds.map_batches(score_batch, fn_kwargs=args, compute=compute, **common)


def run(cfg: ScoreConfig, loader: ModelLoader = load_artifact) -> ScoreResult:
    """Score ``cfg.data`` into ``cfg.out``. CPU-only unless ``use_gpu``."""
    t0 = time.perf_counter()
    art = loader(cfg.model)  # fail fast on a bad artefact, before Ray starts
    threshold = cfg.threshold if cfg.threshold is not None else art.threshold_value
    data = open_scoring_input(cfg, art)
    ensure_ray(cfg.ray_address)
    scored = build_scored_dataset(cfg, art, data, loader)

    out_fs, out_path = url_to_fs(cfg.out)
    rows_path = join(out_path, "rows")
    # Uncommit first: from here until _SUCCESS is rewritten, readers see no output.
    for name in ("_SUCCESS", "summary.json", "rows"):
        remove(out_fs, join(out_path, name))
    scored.write_parquet(rows_path, filesystem=arrow_filesystem(out_fs), min_rows_per_file=100_000)

    written = ray.data.read_parquet(rows_path, filesystem=arrow_filesystem(out_fs)).select_columns(
        ["recon_error", "missing_cells", "unseen_cells"])
    edges = histogram_edges()
    agg = written.aggregate(ErrorStatsAggregate("recon_error", edges, threshold),
                            ray.data.aggregate.Sum("missing_cells", alias_name="missing_cells"),
                            ray.data.aggregate.Sum("unseen_cells", alias_name="unseen_cells"))
    stats = agg["error_stats(recon_error)"]
    if stats["count"] + stats["nonfinite"] != data.num_rows:
        raise RuntimeError(f"wrote {stats['count'] + stats['nonfinite']} rows for {data.num_rows} input rows")
    summary = {
        **stats,
        "row_count": stats["count"],
        "anomaly_count": stats["above_threshold"],
        "anomaly_rate": stats["above_threshold_fraction"],
        "missing_cells": int(agg["missing_cells"] or 0),
        "unseen_category_cells": int(agg["unseen_cells"] or 0),
        "threshold_source": "override" if cfg.threshold is not None else art.threshold.get("method"),
        "model": {"uri": cfg.model, "version": art.version, "created_at": art.created_at},
        "input": {"uri": cfg.data, "files": [f.uri for f in data.files], "rows": data.num_rows,
                  "skipped_empty_files": data.skipped_empty},
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    write_bytes(out_fs, join(out_path, "summary.json"), json.dumps(summary, indent=2).encode())
    write_bytes(out_fs, join(out_path, "_SUCCESS"), b"")
    return ScoreResult(out=cfg.out, summary=summary)


def format_result(r: ScoreResult) -> str:
    s = r.summary
    q = s["quantiles"]
    return (f"scored {s['row_count']} rows -> {r.out}: mean={s['mean']:.4f} p50={q['p50']:.4f} "
            f"p99={q['p99']:.4f} max={s['max']:.4f}, {s['anomaly_count']} above threshold "
            f"{s['threshold']:.4f} ({100 * s['anomaly_rate']:.2f}%), {s['wall_seconds']:.1f}s")


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.score``: parse flags, score, print a one-line result."""
    from jobs.cli import run_cli

    return run_cli(lambda: format_result(run(parse_config(ScoreConfig, argv, prog="aescore score",
                                                          description=__doc__.split("\n")[0]))))


if __name__ == "__main__":
    sys.exit(main())
