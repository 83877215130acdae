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
(``aemodel.commit``; docs/reliability.md). A rerun with the same run id reuses the committed
output; any other run replaces it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from aemodel import ModelArtifact, load_artifact
from aemodel.bank import validation_reference
from aemodel.scoring import rows_per_call
from aemodel.commit import MANIFEST, OutputCommit, read_committed_json
from aemodel.store import absolute_uri
from jobs import STARTED_AT
from jobs.runtime.config import config_to_dict
from jobs.scoring.bank import bank_lines, check_bank_options
from jobs.monitoring.comparison import (ComparisonAggregate, challenger_lines, challenger_summary, committed_scores, comparison,
                             comparison_tables, labelled_reference, model_figures, prepare_challenger)
from jobs.data.datasets import ROW_HASH, ParquetInput, check_columns, explain_failure, open_parquet_input
from jobs.runtime.errors import InputError, OutputError, describe
from jobs.data.manifest import fingerprint, git_commit, library_versions
from jobs.runtime.progress import Progress
from jobs.runtime.ray_runtime import check_gpu
from jobs.reports.html import scoring_report
from jobs.reports.plots import load_in_background
from jobs.scoring.config import ScoreConfig
from jobs.scoring.local import score_locally
from jobs.scoring.ray_path import score_on_ray
from jobs.scoring.rows import OUTPUT_FORMAT_VERSION, ModelLoader, read_columns, row_file_metadata, write_block
from jobs.scoring.summary import summary_aggregations, summary_from, summary_warnings
from jobs.lifecycle.registry import is_registry_uri, resolve_model
from jobs.lifecycle.tracking import check_tracking, log_scoring
from jobs.data.storage import (arrow_filesystem, check_no_overlap, check_unchanged, check_uris, inspect_parquet_files,
                          normalize_storage_options, redact_config, resolve_model_uri)


@dataclass
class ScoreResult:
    """What ``run`` produced."""

    out: str
    summary: dict
    manifest: dict
    reused: bool = False
    run_uri: str = ""
    """The committed run folder under ``out`` (rows/, summary.json, ...)."""
    warnings: list[str] = field(default_factory=list)
    """What the clean-up after the commit could not do (the run is committed regardless)."""
    tracking: str | None = None
    """The MLflow run this run was logged as, when tracked."""


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


def compute_run_id(cfg: ScoreConfig, art: ModelArtifact, data: ParquetInput,
                   challenger: ModelArtifact | None = None) -> str:
    """Same model, same input files (by size and ETag/mtime) and same options: same run.

    The options are those that change what is written (threshold, ids, the per-row extras,
    precision, a challenger and its reference set), not those that change only how it is
    computed (compute path, batch size).
    """
    extra = {"challenger": challenger.version, "reference": [cfg.reference_data, cfg.label_column]} \
        if challenger is not None else {}
    return fingerprint({"model": art.version, "threshold": cfg.threshold, "id_columns": cfg.id_columns,
                        "top_k": cfg.top_k, "column_errors": cfg.column_errors, "precision": cfg.precision,
                        "inputs": [(f.uri, f.size, f.etag) for f in data.files], "format": OUTPUT_FORMAT_VERSION,
                        **extra})


def run(cfg: ScoreConfig, loader: ModelLoader = load_artifact,
        extra_files: Callable[[dict], dict[str, bytes]] | None = None, track: bool = True) -> ScoreResult:
    """Score ``cfg.data`` into a new run folder under ``cfg.out`` and commit it. CPU-only unless ``use_gpu``.

    Args:
        cfg: The options.
        loader: Loads the model artefact.
        extra_files: Called with the summary before the commit; the files it returns are
            committed with the run (nightly's drift.json).
        track: Log the run to MLflow when a tracking URI is set (a nightly logs its own).
    """
    t0, started = time.perf_counter(), datetime.now(timezone.utc)
    check_gpu(cfg.use_gpu, cfg.ray_address)
    options = normalize_storage_options(cfg.storage_options)
    tracking = check_tracking(cfg) if track else None
    check_uris({"--data": cfg.data, "--out": cfg.out}, options)
    registry = None
    if is_registry_uri(cfg.model):  # resolved once, here: the folder of that registry version
        resolved, registry = resolve_model(cfg.model, cfg.tracking_uri, options, loader)
        cfg = replace(cfg, model=resolved)
    check_uris({"--model": cfg.model}, options)
    check_no_overlap(cfg.out, {"--data": cfg.data, "--model": cfg.model}, options)
    cfg = replace(cfg, model=resolve_model_uri(cfg.model, options))  # follow a LATEST pointer once
    check_no_overlap(cfg.out, {"--model": cfg.model}, options)
    art = loader(cfg.model, options)  # fail fast on a bad artefact, before Ray starts
    check_bank_options(cfg, art)
    cfg, challenger, challenger_registry = prepare_challenger(cfg, art, options, loader)
    if cfg.precision != "fp32" and not cfg.use_gpu:  # decided here, so the manifest says what ran
        print(f"note: --precision {cfg.precision} applies to GPU scoring only (--use-gpu); scoring in fp32", flush=True)
        cfg = replace(cfg, precision="fp32")
    threshold = cfg.threshold if cfg.threshold is not None else art.threshold_value
    data = open_scoring_input(cfg, art)
    content_id = compute_run_id(cfg, art, data, challenger)
    run_id = cfg.run_id or content_id
    out = OutputCommit(cfg.out, options)
    out.begin()  # refuses a prefix aescore does not own, before anything is written or Ray starts
    try:
        committed = read_committed_json(cfg.out, MANIFEST, options)
    except BaseException:
        _abort(out)
        raise
    if committed and committed.get("run_id") == run_id and not cfg.force:
        # A run id names a run; it is reused only if it was scored with this model, these input
        # files and these options (an explicit --run-id could name anything).
        if committed.get("content_id", committed.get("run_id")) == content_id:
            out.abort()
            print(f"{cfg.out} already holds committed run {run_id}; reusing it "
                  "(--force recomputes; --score.force in nightly)", flush=True)
            return _tracked(ScoreResult(out=cfg.out, summary=read_committed_json(cfg.out, "summary.json", options),
                                        manifest=committed, reused=True, run_uri=committed.get("run_uri", cfg.out)),
                            cfg, tracking)
        print(f"note: {cfg.out} holds committed run {run_id} scored with another model, other input files or "
              "other options; scoring anew", flush=True)

    compute = cfg.resolved_compute()
    try:
        resolved = replace(cfg, compute=compute, batch_size=cfg.batch_size or rows_per_call(art.preprocessor))
        summary, manifest = _score_and_summarize(resolved, art, data, out, loader, threshold,
                                                 run_id, t0, started, challenger)
        manifest["content_id"] = content_id
        compared = summary.pop("comparison", None)
        if compared is not None:
            compared["challenger"]["registry"] = challenger_registry
            summary["challenger"] = challenger_summary(compared)
        if registry:
            summary["model"]["registry"] = manifest["model"]["registry"] = registry
        files = {"summary.json": json.dumps(summary, indent=2).encode(),
                 "report.html": scoring_report(summary, validation_reference(art),
                                               comparison_tables(compared, list(cfg.id_columns) or [ROW_HASH])),
                 MANIFEST: json.dumps(manifest, indent=2).encode()}
        if compared is not None:
            files["comparison.json"] = json.dumps(compared, indent=2, default=str).encode()
        files.update(extra_files(summary) if extra_files else {})
        cleanup_warnings = out.commit(files, run_id)
    except BaseException as e:
        if _committed(out):  # only an interrupt gets here after the swap: the run is complete and stays
            e.add_note(f"{cfg.out} committed this run ({out.run_uri}) before the interrupt")
            raise
        _abort(out)
        if not isinstance(e, Exception):
            raise  # an interrupt: nothing to explain
        if _lost_race(out):
            raise out.conflict() from e
        explained = explain_failure(e, data, read_columns(cfg, art), art.preprocessor.specs,
                                    lambda t: art.preprocessor.transform(t))
        if explained is not None:
            raise explained from e
        raise
    result = ScoreResult(out=cfg.out, summary=summary, manifest=manifest, run_uri=out.run_uri,
                         warnings=cleanup_warnings)
    return _tracked(result, cfg, tracking)


def _tracked(result: ScoreResult, cfg: ScoreConfig, tracking: str | None) -> ScoreResult:
    """``result`` with its MLflow run, logged once (``jobs.lifecycle.tracking.log_scoring``); the scores are committed already."""
    if tracking is None:
        return result
    try:
        result.tracking = log_scoring(tracking, cfg, "score", redact_config(config_to_dict(cfg)), result.summary,
                                      storage_options=normalize_storage_options(cfg.storage_options))
    except Exception as e:  # noqa: BLE001 - the run is committed; the error says so
        raise OutputError(f"the scores were committed at {cfg.out}, but MLflow at {tracking} did not take the "
                          f"run: {describe(e)}; rerun the same command to log it") from e
    return result


def _committed(out: OutputCommit) -> bool:
    try:
        return out.names_this_run()
    except Exception:  # noqa: BLE001 - storage unreachable: treat as not committed, delete nothing
        return False


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
                         started: datetime, challenger: ModelArtifact | None = None) -> tuple[dict, dict]:
    """Read -> score -> write the rows into the run folder, then the summary and manifest of them."""
    metadata = row_file_metadata(cfg, art, run_id, threshold)
    rows = out.path_of("rows")
    aggs = summary_aggregations(art, cfg, threshold)
    if challenger is not None:
        aggs.append(ComparisonAggregate(list(cfg.id_columns) or [ROW_HASH]))
    sink = functools.partial(write_block, path=rows, filesystem=arrow_filesystem(out.fs),
                             keep_row_hash=not cfg.id_columns)
    t_pipeline = time.perf_counter()
    progress = Progress("scored", total=data.num_rows)
    try:
        # One file per ROWS_PER_FILE rows: a file (and a set of accumulators) per model
        # batch would cost more than the scoring (bench/score_throughput.py).
        if cfg.compute == "local":
            agg = score_locally(cfg, art, data, metadata, aggs, sink, progress, challenger)
        else:
            load_in_background()  # this process only waits on Ray's workers meanwhile
            agg = score_on_ray(cfg, art, data, loader, metadata, aggs, sink, progress)
    finally:
        progress.close()
    steady = progress.steady_rate()
    check_unchanged(data.fs, data.files)  # a file replaced while it was read: its rows are not what was checked
    t_summary = time.perf_counter()
    summary = summary_from(agg, art, cfg)
    if summary["row_count"] != data.num_rows:
        raise RuntimeError(f"wrote {summary['row_count']} rows for {data.num_rows} input rows; not committing")
    written = inspect_parquet_files(out.fs, sorted(p for p in out.fs.find(rows) if p.endswith(".parquet")))
    if sum(f.num_rows for f in written) != summary["row_count"]:  # e.g. a stray file of a failed attempt
        raise RuntimeError(f"the row files hold {sum(f.num_rows for f in written)} rows, the scoring pass counted "
                           f"{summary['row_count']}; not committing")
    if challenger is not None:  # the rank correlation needs every row: the written rows' two score columns
        override = cfg.threshold is not None
        summary["comparison"] = comparison(
            agg["comparison"], list(cfg.id_columns) or [ROW_HASH],
            committed_scores(arrow_filesystem(out.fs), [f.path for f in written]),
            (model_figures(absolute_uri(cfg.model), art, threshold, override),
             model_figures(absolute_uri(cfg.challenger), challenger, challenger.threshold_value, False)),
            labelled_reference(cfg, art, challenger, normalize_storage_options(cfg.storage_options)))
    summary.update({
        "threshold_source": "override" if cfg.threshold is not None else art.threshold.get("method"),
        "threshold_ci": None if cfg.threshold is not None else art.threshold.get("ci"),
        "model": {"uri": absolute_uri(cfg.model), "version": art.version, "created_at": art.created_at,
                  "warnings": list((art.metrics or {}).get("warnings", []))},
        "input": {"uri": absolute_uri(cfg.data), "files": [f.uri for f in data.files], "rows": data.num_rows,
                  "skipped_empty_files": data.skipped_empty, "skipped_non_parquet_files": data.skipped_other,
                  "ignored_columns": _ignored_columns(cfg, art, data)},
        "format_version": OUTPUT_FORMAT_VERSION,
        "run_id": run_id,
        "run_uri": absolute_uri(out.run_uri),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "compute": cfg.compute,
        "timings": {"read_score_write_s": round(t_summary - t_pipeline, 3),
                    "check_written_s": round(time.perf_counter() - t_summary, 3),
                    # From the process's start (jobs.STARTED_AT): imports, Ray and start-up included.
                    "first_rows_s": None if progress.first_at is None else round(progress.first_at - STARTED_AT, 3),
                    "steady_rows_per_s": None if steady is None else round(steady)},
    })
    manifest = {
        "format_version": OUTPUT_FORMAT_VERSION,
        "run_id": run_id,
        "kind": "aescore-score",
        "run_uri": absolute_uri(out.run_uri),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"uri": absolute_uri(cfg.model), "version": art.version},
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
                        if k not in ("anomaly_score", "score_percentile", "top_features", "values"))
        led = ", ".join(f["column"] for f in row.get("top_features") or [])
        score = f"{row['anomaly_score']:.4g}"
        lines.append(f"  {'top rows' if i == 0 else '':<14} {score:<6}  {ids}"
                     + (f"  (largest errors: {led})" if led else ""))
    lines.append(f"  report         {run.rstrip('/')}/report.html")
    lines += bank_lines(s.get("entities")) + challenger_lines(s)
    registry = (s.get("model") or {}).get("registry")
    if registry:
        lines.append(f"  model          {registry['registry_uri']} = version {registry['version']} of {registry['name']}")
    if r.tracking:
        lines.append(f"  mlflow         run {r.tracking}")
    return "\n".join(lines + [f"warning: {w}" for w in [*s.get("warnings", []), *r.warnings]])


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.score``: parse flags, score, print a one-line result."""
    from jobs.runtime.entry import job_main

    return job_main(ScoreConfig, run, format_result, argv, "aescore score", __doc__)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that Ray pickles everything it
    # ships as references to importable modules (the UDFs live in jobs.scoring.rows).
    from jobs.score import main as module_main

    from jobs.runtime.entry import run_entry_point

    run_entry_point(module_main)
