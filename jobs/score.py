"""Score Parquet shards with a model artefact: per-row error plus its distribution.

Submit to a Ray cluster (from the repository root)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.score --model s3://bucket/models/ae-v1 --data s3://bucket/events/ \\
        --out s3://bucket/scores/run-1 --id-columns event_id --use-gpu --concurrency 4

Locally: ``aescore score --model ./model --data ./data/score --out ./scores``.

Output at ``--out``: each run writes ``runs/<UTC time>-<id>/`` (``rows/*.parquet`` with
the id columns, anomaly_score, score_percentile, recon_error, is_anomaly, missing_cells, unseen_cells,
top_features, seen_in_training and err_<column> with --column-errors; ``summary.json``,
``report.html``, ``manifest.json``), then commits by pointing ``OUT/_SUCCESS`` at it
(``jobs.commit``; docs/reliability.md). A rerun with the same run id reuses the committed
output; any other run replaces it.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal

from aemodel import ModelArtifact, load_artifact
from aemodel.scoring import rows_per_call
from jobs.commit import MANIFEST, OutputCommit, read_committed_json
from jobs.config import config_to_dict
from jobs.datasets import ParquetInput, check_columns, explain_failure, open_parquet_input
from jobs.errors import InputError
from jobs.manifest import fingerprint, git_commit, library_versions
from jobs.progress import Progress
from jobs.ray_runtime import on_one_machine
from jobs.report import scoring_report
from jobs.score_local import score_locally
from jobs.score_rows import (OUTPUT_FORMAT_VERSION, ROW_HASH, ModelLoader, read_columns, row_file_metadata,
                             score_on_ray, write_block)
from jobs.score_summary import summary_aggregations, summary_from, summary_warnings
from jobs.storage import (arrow_filesystem, check_no_overlap, inspect_parquet_files,
                          normalize_storage_options, redact_config, resolve_model_uri)


@dataclass(kw_only=True)
class ScoreOptions:
    """Scoring: outputs, compute and storage"""

    id_columns: list[str] = field(default_factory=list)
    """Input columns copied to the output to identify rows; empty adds row_hash (file + position)."""
    batch_size: int | None = None
    """Rows per model call; default: as many as keep one call's outputs and loss terms near 64 MiB (256 to 65,536 rows, see aemodel.scoring.rows_per_call)."""
    concurrency: int | None = None
    """Scoring actors (actor path) or max parallel tasks (task path); default: one per GPU / Ray decides."""
    compute: Literal["auto", "local", "actors", "tasks"] = "auto"
    """local: this process reads, scores and writes with every core, no Ray; tasks: Ray Data tasks fused with the read; actors: a Ray Data actor pool that loads the model once per actor; auto: local on one machine (no --ray-address, no RAY_ADDRESS, no multi-node Ray already connected, no --concurrency, CPU), else actors on GPU and tasks on CPU."""
    use_gpu: bool = False
    """Score on GPUs (one per actor)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """GPU only: run the network under bf16/fp16 autocast (errors are still computed in float32)."""
    cpus_per_worker: float = 1.0
    """Ray paths: CPUs reserved per scoring actor/task; torch uses this many threads (at least 1). The local path uses every usable core."""
    object_store_limit_mb: int | None = 512
    """Object-store memory Ray Data may fill with in-flight blocks (keeps memory flat as inputs grow); 0: Ray's default."""
    threshold: float | None = None
    """Override the model's anomaly threshold on anomaly_score."""
    top_k: int = 3
    """Columns listed per row in top_features (largest error first, with share and z-score); 0 turns it off."""
    column_errors: bool = False
    """Also write each feature column's error per row (err_<column>; wide) and its mean in the summary."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for every path (e.g. endpoint_url); prefer env credentials. Never written out."""
    run_id: str | None = None
    """Identity of this run; default: a hash of model version, input files and options."""
    force: bool = False
    """Recompute even if OUT already holds a committed run with the same run id."""
    shared_local_paths: bool = False
    """Local paths are on a filesystem every node mounts at the same place (NFS); otherwise a multi-node cluster refuses them."""
    ray_address: str | None = None
    """Ray cluster address; default RAY_ADDRESS if set, else a private local Ray."""

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.threshold is not None and not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.object_store_limit_mb is not None and self.object_store_limit_mb < 0:
            raise ValueError(f"object_store_limit_mb must be >= 0, got {self.object_store_limit_mb}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if ROW_HASH in self.id_columns:
            raise ValueError(f"{ROW_HASH!r} is reserved for the synthetic row id")

    @property
    def use_actors(self) -> bool:
        return self.compute == "actors" or (self.compute == "auto" and self.use_gpu)

    def resolved_compute(self) -> str:
        """``local``, ``tasks`` or ``actors``: what ``auto`` means for this run (decided once, on the driver).

        Local when nothing points at a Ray cluster: on one machine Ray's start-up and block
        scheduling cost more than the scoring (bench/score_throughput.py). A Ray this
        process already joined counts as a cluster only if it has more than one node.
        """
        if self.compute != "auto":
            return self.compute
        if self.use_gpu:
            return "actors"
        return "local" if on_one_machine(self.ray_address) and not self.concurrency else "tasks"


@dataclass(kw_only=True)
class ScoreConfig(ScoreOptions):
    """Input and output"""

    model: str
    """Model artefact URI written by aescore train, or a pointer file from --publish-latest."""
    data: str
    """Parquet to score: a file, a directory/prefix of shards, or a glob (any fsspec URI)."""
    out: str
    """Output prefix: rows/, summary.json and _SUCCESS are written under it (replaced on rerun)."""

    def __post_init__(self) -> None:
        if not (self.model and self.data and self.out):
            raise ValueError("--model, --data and --out are required")
        super().__post_init__()


@dataclass
class ScoreResult:
    """What ``run`` produced."""

    out: str
    summary: dict
    manifest: dict
    reused: bool = False
    run_uri: str = ""
    """The committed run folder under ``out`` (rows/, summary.json, ...)."""


def open_scoring_input(cfg: ScoreConfig, art: ModelArtifact) -> ParquetInput:
    """List and check the input files against the model's columns (footers only, no Ray)."""
    data = open_parquet_input(cfg.data, normalize_storage_options(cfg.storage_options), specs=art.preprocessor.specs)
    for f in data.files:
        missing = [c for c in cfg.id_columns if c not in f.schema.names]
        if missing:
            raise InputError(f"{f.uri}: id column(s) {missing} not in the data")
        check_columns(f, cfg.id_columns)
    return data


def _ignored_columns(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput) -> list[str]:
    """Input columns that are neither features nor ids: not read, reported."""
    used = {s.name for s in art.preprocessor.specs} | set(cfg.id_columns)
    return sorted({n for f in data.files for n in f.schema.names} - used)


def compute_run_id(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput) -> str:
    """Same model, same input files (by size and ETag/mtime) and same options: same run."""
    return fingerprint({"model": art.version, "threshold": cfg.threshold, "id_columns": cfg.id_columns,
                        "inputs": [(f.uri, f.size, f.etag) for f in data.files], "format": OUTPUT_FORMAT_VERSION})


def run(cfg: ScoreConfig, loader: ModelLoader = load_artifact,
        extra_files: Callable[[dict], dict[str, bytes]] | None = None) -> ScoreResult:
    """Score ``cfg.data`` into a new run folder under ``cfg.out`` and commit it. CPU-only unless ``use_gpu``.

    Args:
        cfg: The options.
        loader: Loads the model artefact.
        extra_files: Called with the summary before the commit; the files it returns are
            committed with the run (nightly's drift.json).
    """
    t0, started = time.perf_counter(), datetime.now(timezone.utc)
    options = normalize_storage_options(cfg.storage_options)
    check_no_overlap(cfg.out, {"--data": cfg.data, "--model": cfg.model}, options)
    cfg = replace(cfg, model=resolve_model_uri(cfg.model, options))  # follow a LATEST pointer once
    check_no_overlap(cfg.out, {"--model": cfg.model}, options)
    art = loader(cfg.model, options)  # fail fast on a bad artefact, before Ray starts
    threshold = cfg.threshold if cfg.threshold is not None else art.threshold_value
    data = open_scoring_input(cfg, art)
    run_id = cfg.run_id or compute_run_id(cfg, art, data)
    out = OutputCommit(cfg.out, options)
    out.begin()  # refuses a prefix aescore does not own, before anything is written or Ray starts
    committed = read_committed_json(cfg.out, MANIFEST, options)
    if committed and committed.get("run_id") == run_id and not cfg.force:
        out.abort()
        print(f"{cfg.out} already holds committed run {run_id}; reusing it (--force recomputes)", flush=True)
        return ScoreResult(out=cfg.out, summary=read_committed_json(cfg.out, "summary.json", options),
                           manifest=committed, reused=True, run_uri=committed.get("run_uri", cfg.out))

    compute = cfg.resolved_compute()
    try:
        resolved = replace(cfg, compute=compute, batch_size=cfg.batch_size or rows_per_call(art.preprocessor))
        summary, manifest = _score_and_summarize(resolved, art, data, out, loader, threshold,
                                                 run_id, t0, started)
        files = {"summary.json": json.dumps(summary, indent=2).encode(),
                 "report.html": scoring_report(summary, art.reference),
                 MANIFEST: json.dumps(manifest, indent=2).encode()}
        files.update(extra_files(summary) if extra_files else {})
        out.commit(files, run_id)
    except BaseException as e:
        _abort(out)
        if _lost_race(out):
            raise out.conflict() from e
        explained = explain_failure(e, data, read_columns(cfg, art), art.preprocessor.specs,
                                    lambda t: art.preprocessor.transform(t))
        if explained is not None:
            raise explained from e
        raise
    return ScoreResult(out=cfg.out, summary=summary, manifest=manifest, run_uri=out.run_uri)


def _abort(out: OutputCommit) -> None:
    try:
        out.abort()
    except Exception:  # noqa: BLE001 - the original error matters more than a failed clean-up
        pass


def _lost_race(out: OutputCommit) -> bool:
    try:
        return out.lost_race()
    except Exception:  # noqa: BLE001 - storage unreachable: report the original error
        return False


def _score_and_summarize(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput, out: OutputCommit,
                         loader: ModelLoader, threshold: float, run_id: str, t0: float,
                         started: datetime) -> tuple[dict, dict]:
    """Read -> score -> write the rows into the run folder, then the summary and manifest of them."""
    metadata = row_file_metadata(cfg, art, run_id, threshold)
    rows = out.path_of("rows")
    aggs = summary_aggregations(art, cfg, threshold)
    sink = functools.partial(write_block, path=rows, filesystem=arrow_filesystem(out.fs),
                             id_columns=list(cfg.id_columns) or [ROW_HASH])
    t_pipeline = time.perf_counter()
    progress = Progress("scored", total=data.num_rows)
    try:
        # One file per ROWS_PER_FILE rows: a file (and a set of accumulators) per model
        # batch would cost more than the scoring (bench/score_throughput.py).
        if cfg.compute == "local":
            agg = score_locally(cfg, art, data, metadata, aggs, sink, progress)
        else:
            agg = score_on_ray(cfg, art, data, loader, metadata, aggs, sink, progress)
    finally:
        progress.close()
    t_summary = time.perf_counter()
    summary = summary_from(agg, art, cfg)
    if summary["row_count"] != data.num_rows:
        raise RuntimeError(f"wrote {summary['row_count']} rows for {data.num_rows} input rows; not committing")
    written = inspect_parquet_files(out.fs, sorted(p for p in out.fs.find(rows) if p.endswith(".parquet")))
    if sum(f.num_rows for f in written) != summary["row_count"]:  # e.g. a stray file of a failed attempt
        raise RuntimeError(f"the row files hold {sum(f.num_rows for f in written)} rows, the scoring pass counted "
                           f"{summary['row_count']}; not committing")
    summary.update({
        "threshold_source": "override" if cfg.threshold is not None else art.threshold.get("method"),
        "threshold_ci": None if cfg.threshold is not None else art.threshold.get("ci"),
        "model": {"uri": cfg.model, "version": art.version, "created_at": art.created_at},
        "input": {"uri": cfg.data, "files": [f.uri for f in data.files], "rows": data.num_rows,
                  "skipped_empty_files": data.skipped_empty, "skipped_non_parquet_files": data.skipped_other,
                  "ignored_columns": _ignored_columns(cfg, art, data)},
        "format_version": OUTPUT_FORMAT_VERSION,
        "run_id": run_id,
        "run_uri": out.run_uri,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "compute": cfg.compute,
        "timings": {"read_score_write_s": round(t_summary - t_pipeline, 3),
                    "check_written_s": round(time.perf_counter() - t_summary, 3)},
    })
    manifest = {
        "format_version": OUTPUT_FORMAT_VERSION,
        "run_id": run_id,
        "kind": "aescore-score",
        "run_uri": out.run_uri,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"uri": cfg.model, "version": art.version},
        "inputs": [{"uri": f.uri, "size": f.size, "etag": f.etag, "rows": f.num_rows} for f in data.files],
        "skipped_empty_inputs": data.skipped_empty,
        "skipped_non_parquet_inputs": data.skipped_other,
        "outputs": [{"path": "rows/" + f.path[len(rows) + 1:], "rows": f.num_rows, "size": f.size}
                    for f in written],
        "row_count": summary["row_count"],
        "config": redact_config(config_to_dict(cfg)),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    summary["warnings"] = summary_warnings(summary)
    return summary, manifest


def format_result(r: ScoreResult) -> str:
    """A short table: distribution, threshold and flagged rows, the top rows, where the report is."""
    s = r.summary
    q = s["quantiles"]
    verb = "reused" if r.reused else "scored"
    run = r.run_uri or r.out
    lines = [f"{verb} {s['row_count']:,} rows -> {run} ({s['wall_seconds']:.1f}s)"]
    if s["row_count"] - s.get("nonfinite", 0):
        lines.append(f"  anomaly_score  mean={s['mean']:.4g} p50={q['p50']:.4g} p99={q['p99']:.4g} max={s['max']:.4g}")
    lines.append(f"  threshold      {s['threshold']:.4g} ({s.get('threshold_source') or 'model'}): "
                 f"{s['anomaly_count']:,} rows flagged ({100 * (s['anomaly_rate'] or 0):.2f}%)")
    for i, row in enumerate(s.get("top_rows", [])[:3]):
        ids = ", ".join(f"{k}={v}" for k, v in row.items()
                        if k not in ("anomaly_score", "score_percentile", "top_features"))
        led = ", ".join(f["column"] for f in row.get("top_features") or [])
        score = f"{row['anomaly_score']:.4g}"
        lines.append(f"  {'top rows' if i == 0 else '':<14} {score:<6}  {ids}"
                     + (f"  (largest errors: {led})" if led else ""))
    lines.append(f"  report         {run.rstrip('/')}/report.html")
    return "\n".join(lines + [f"warning: {w}" for w in s.get("warnings", [])])


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.score``: parse flags, score, print a one-line result."""
    from jobs.cli import job_main

    return job_main(ScoreConfig, run, format_result, argv, "aescore score", __doc__)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that Ray pickles everything it
    # ships as references to importable modules (the UDFs live in jobs.score_rows).
    from jobs.score import main as module_main

    sys.exit(module_main())
