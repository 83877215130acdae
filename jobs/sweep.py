"""Latent-size sweep: one model per latent size, trained as parallel Ray Train runs.

Submit to a Ray cluster (from the repository root)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.sweep --data s3://bucket/train/ --out s3://bucket/sweeps/s1 \\
        --latent 2,4,8,16,32 --label-data s3://bucket/labelled/ --label-column is_fraud

Locally: ``aescore sweep --data ./data/train --out ./sweep --latent 2,4,8,16``.

Each trial is a Ray task that runs the whole ``jobs.train.run`` (its own Ray Train run,
up to ``--max-concurrent`` at a time), writing the model to ``OUT/latent-<k>``. The sweep then writes ``sweep.csv``, ``sweep.json`` and ``sweep.png``
(validation loss, and AUROC when labels are given, against latent size), and recommends a
latent (``recommend``): with labels, the smallest within ``--auroc-tolerance`` of the best
AUROC; without, the knee of the loss curve among latents that do not look like a copy of
the input (``copying``: a bottleneck near the feature count, a loss near zero).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa
import ray
import ray.data

from aemodel import check_schema, load_artifact, resolve_columns
from aemodel.metrics import auroc_from_sketches, histogram_edges
from aemodel.artifact import check_model_prefix
from aemodel.commit import OutputError, claim_prefix
from jobs.runtime.config import config_to_dict
from jobs.data.datasets import open_parquet_input
from jobs.runtime.errors import InputError, TrainingError, find_user_error
from aemodel.aggregates import ErrorStatsAggregate
from jobs.runtime.progress import is_verbose
from jobs.runtime.ray_runtime import aggregate_blocks, check_gpu, ensure_ray, quiet_ray_console
from aemodel.store import join, url_to_fs
from jobs.data.storage import check_no_overlap, normalize_storage_options
from jobs.training.config import TrainConfig, TrainOptions


@dataclass
class SweepConfig:
    """Data, latent sizes and labels"""

    data: str
    """Training Parquet (any fsspec URI)."""
    out: str
    """Output prefix: latent-<k>/ model artefacts, sweep.csv, sweep.json, sweep.png, sweep.html."""
    val_data: str | None = None
    """Separate validation Parquet for every trial; if unset, each trial's deterministic row-hash split of --data."""
    latent: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Latent sizes to train (comma-separated)."""
    knee_share: float = 0.8
    """Without labels: recommend the smallest latent that reaches this share of the largest validation-loss reduction over the smallest latent, among latents that do not look like copying (the loss keeps falling as the latent grows, towards a copy of the input)."""
    auroc_tolerance: float = 0.005
    """With --label-data: AUROCs within this of the best count as tied; the smallest latent among them is recommended."""
    label_data: str | None = None
    """Labelled Parquet (anomaly = 1) to compute each model's AUROC on; never used for training."""
    label_column: str | None = None
    """Column of --label-data holding the 0/1 anomaly label."""
    max_concurrent: int = 2
    """Trials trained at the same time."""
    train: TrainOptions = field(default_factory=lambda: TrainOptions(cpus_per_worker=0.5))
    """Training options of every trial, as --train.<option> (0.5 CPUs per worker: trials run side by side)"""

    REFUSED_OPTIONS: ClassVar[dict[str, str]] = {
        "train.in_process": "trials train in Train workers, several at once",
        "train.local_data": "trials train in Train workers, several at once",
        "train.latent_dim": "each trial's comes from --latent",
        "train.run_name": "each trial has its own",
        "train.publish_latest": "a sweep recommends a model; publish it with aescore train",
        "train.register": "a sweep recommends a model; register it with aescore train --register",
    }
    """``--train.<option>`` a sweep decides itself: refused with the reason, and left out of ``--help``."""

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("--data and --out are required")
        if not self.latent or any(k < 1 for k in self.latent) or len(set(self.latent)) != len(self.latent):
            raise ValueError(f"latent must be distinct sizes >= 1, got {self.latent}")
        if not 0 < self.knee_share <= 1:
            raise ValueError(f"knee_share must be in (0, 1], got {self.knee_share}")
        if not 0 <= self.auroc_tolerance < 1:
            raise ValueError(f"auroc_tolerance must be in [0, 1), got {self.auroc_tolerance}")
        if bool(self.label_data) != bool(self.label_column):
            raise ValueError("--label-data and --label-column go together")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        for name, why in self.REFUSED_OPTIONS.items():
            if getattr(self.train, name.removeprefix("train.")):
                raise ValueError(f"{name} cannot be set in a sweep: {why}")

    def train_config(self, latent_dim: int) -> TrainConfig:
        """The trial's ``aescore train`` config: the template with this latent size and output."""
        # Trials run concurrently as 0-CPU tasks: each trains in Train workers that reserve
        # their CPUs (checked in run), never inside the task itself.
        template = {**asdict(self.train), "latent_dim": latent_dim, "in_process": False,
                    "local_data": False}
        return TrainConfig(data=self.data, val_data=self.val_data, out=join(self.out, f"latent-{latent_dim}"),
                           **template)


def errors_by_class(batch: pa.Table, model_uri: str, label: str, options: dict) -> pa.Table:
    """anomaly_score split into ``pos`` / ``neg`` columns by label (NaN in the other)."""
    from jobs.scoring.rows import cached_scorer

    # Only the error is needed: the per-process cached model, without the output columns
    # (top features, training-row check) that a scoring run adds.
    scorer = cached_scorer(model_uri, (), None, False, 1, load_artifact, json.dumps(options, sort_keys=True),
                            0, False, "fp32").scorer
    err = scorer.score_table(batch)["anomaly_score"].astype(np.float64)
    values = np.asarray(batch.column(label).to_numpy(zero_copy_only=False), dtype=np.float64)  # null -> NaN
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise InputError(f"label column {label!r} must hold only 0/1 or true/false, found {values[bad][0]:g}")
    y = values.astype(bool)
    return pa.table({"pos": np.where(y, err, np.nan), "neg": np.where(y, np.nan, err)})


def labelled_auroc(model_uri: str, data: str, label: str, options: dict) -> float:
    """AUROC of anomaly_score against ``label``, from per-class sketches merged by Ray Data."""
    art = load_artifact(model_uri, options)
    labelled = open_parquet_input(data, options, specs=art.preprocessor.specs)
    features = [s.name for s in art.preprocessor.specs]
    check_label_column(labelled.schema, data, label)

    # Tasks fused with the read, not an actor pool: concurrent trials each holding actors
    # can reserve the CPUs that the reads need (seen here: it deadlocks on 2 CPUs).
    scored = labelled.read([*features, label], art.preprocessor.specs).map_batches(
        errors_by_class, fn_kwargs={"model_uri": model_uri, "label": label, "options": options},
        batch_format="pyarrow")
    agg = aggregate_blocks(scored, *(ErrorStatsAggregate(c, histogram_edges(), None, with_sketch=True) for c in ("pos", "neg")))
    pos, neg = ({int(k): int(c) for k, c in agg[f"error_stats({c})"]["sketch"]} for c in ("pos", "neg"))
    return auroc_from_sketches(pos, neg)


def check_label_column(schema: pa.Schema, data: str, label: str) -> None:
    """Refuse a label column that is absent or cannot hold 0/1 (its values are checked as they are read)."""
    if label not in schema.names:
        raise InputError(f"{data}: label column {label!r} not found")
    kind = schema.field(label).type
    if not (pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise InputError(f"{data}: label column {label!r} is {kind}; it must hold 0/1 or true/false")


def train_one(sweep: dict, latent_dim: int) -> dict:
    """One sweep trial: train (and evaluate) the model of one latent size."""
    from jobs import train

    if not is_verbose():  # this task's own Ray Data context: no progress blocks on the driver's console
        quiet_ray_console()
    cfg = SweepConfig(**{**sweep, "train": TrainOptions(**sweep["train"])})
    result = train.run(cfg.train_config(latent_dim), report_links=[("latent-size sweep", "../sweep.html")])
    best = min(result.history, key=lambda h: h["val_loss"])
    metrics = {"latent_dim": latent_dim, "val_loss": best["val_loss"], "train_loss": best["train_loss"],
               "epochs": len(result.history), "model": result.model_uri,
               # Relative to the sweep's --out, for sweep.html's links.
               "report": f"latent-{latent_dim}/{result.artifact_uri[len(result.model_uri.rstrip('/')) + 1:]}/report.html",
               "warnings": [c["check"] for c in result.metrics["diagnostics"] if c["status"] != "ok"]
               + ([f"{len(result.metrics['warnings'])} more in report.html"] if result.metrics.get("warnings") else []),
               "n_features": result.metrics["n_features"],
               "baseline_val_loss": result.metrics.get("mean_baseline_val_loss"), "auroc": None}
    if cfg.label_data:
        metrics["auroc"] = labelled_auroc(result.model_uri, cfg.label_data, cfg.label_column,
                                          normalize_storage_options(cfg.train.storage_options))
    return metrics


@dataclass
class SweepResult:
    out: str
    rows: list[dict]
    recommended: int
    rule: str = ""
    """Why that latent: the rule and the figures it used."""


COPY_LATENT_SHARE = 0.75
"""A latent of at least this share of the feature columns can nearly copy the input."""
COPY_LOSS_SHARE = 0.02
"""A validation loss below this share of the mean-prediction baseline is near zero: likely a copy."""


def copying(row: dict) -> str | None:
    """Why a trial's latent likely copies its input (a bottleneck too wide, a loss near zero), or None."""
    k, n = row["latent_dim"], row.get("n_features")
    if n and k >= COPY_LATENT_SHARE * n:
        return f"latent {k} is {k / n:.0%} of the {n} feature columns"
    base = row.get("baseline_val_loss")
    if base and row["val_loss"] < COPY_LOSS_SHARE * base:
        return f"validation loss {row['val_loss']:.3g} is {row['val_loss'] / base:.1%} of the mean-prediction baseline"
    return None


def recommend(rows: list[dict], knee_share: float = 0.8, auroc_tolerance: float = 0.005) -> tuple[int, str]:
    """The latent to use, and the rule's words (``rows`` sorted by latent size).

    With labels (every row has ``auroc``): the smallest latent whose AUROC is within
    ``auroc_tolerance`` of the best. Without: the knee of the validation-loss curve, among
    latents that do not look like copying (``copying``): the smallest latent whose loss
    reduction over the smallest latent reaches ``knee_share`` of the largest one. Validation
    loss keeps falling as the latent grows towards a copy of the input, so "the lowest loss"
    would always pick the widest bottleneck.
    """
    if all(r.get("auroc") is not None for r in rows):
        best = max(r["auroc"] for r in rows)
        pick = min(r["latent_dim"] for r in rows if r["auroc"] >= best - auroc_tolerance)
        return pick, (f"the smallest latent whose AUROC on the labelled data is within {auroc_tolerance:g} of the "
                      f"best ({best:.3f})")
    candidates = [r for r in rows if not copying(r)] or rows
    first, lowest = candidates[0]["val_loss"], min(r["val_loss"] for r in candidates)
    reduction = first - lowest
    if reduction <= 0:
        pick = candidates[0]["latent_dim"]
    else:
        pick = min(r["latent_dim"] for r in candidates if first - r["val_loss"] >= knee_share * reduction)
    left_out = [r["latent_dim"] for r in rows if r not in candidates]
    return pick, (f"the knee: the smallest latent reaching {knee_share:.0%} of the largest validation-loss reduction "
                  f"({first:.4g} -> {lowest:.4g})" + (f", leaving out latents that likely copy the input "
                                                      f"({', '.join(map(str, left_out))})" if left_out else ""))


LEGACY_FILES = {"sweep.json", "sweep.csv", "sweep.png", "sweep.html"}
"""What a sweep wrote at its prefix before sweeps marked it, besides its ``latent-<k>`` models."""


def _legacy_sweep(out: str, options: dict) -> bool:
    """Whether ``out`` holds a sweep written before sweeps marked their prefix, and nothing else.

    Its sweep.json names the latents, each ``latent-<k>`` holds an aescore model, and the
    prefix holds no other entry: a folder of the user's that merely has a sweep.json is
    never adopted (its files would be replaced).
    """
    fs, path = url_to_fs(out, options)
    try:
        with fs.open(join(path, "sweep.json"), "rb") as f:
            table = json.load(f)
        latents = {f"latent-{int(r['latent_dim'])}" for r in table["rows"]}
        if "recommended_latent_dim" not in table or not latents:
            return False
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)}
        return names <= LEGACY_FILES | latents and all(check_model_prefix(join(path, k), options) for k in latents)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OutputError):
        return False


def check_inputs(cfg: SweepConfig, options: dict) -> tuple[SweepConfig, bool]:
    """Everything a sweep can refuse before Ray starts: paths, the output prefix, the label column.

    Returns:
        ``cfg`` with the label column among the excluded columns where the training data
        holds it (a label is never a feature), and whether ``--out`` holds a sweep written
        before sweeps marked their prefix.

    Raises:
        InputError, SchemaError: Missing or unreadable data; a label column that is absent or
            not numeric or boolean; label data lacking a feature column.
        OutputError: ``--out`` overlaps an input or holds files aescore did not write.
    """
    check_no_overlap(cfg.out, {"--data": cfg.data, "--label-data": cfg.label_data}, options)
    legacy = _legacy_sweep(cfg.out, options)
    claim_prefix(cfg.out, "sweep", options, adopt=legacy, write=False)
    for k in cfg.latent:  # each trial's model folder too, or a trial would find it only after others trained
        check_model_prefix(join(cfg.out, f"latent-{k}"), options)
    data = open_parquet_input(cfg.data, options)
    t = cfg.train
    if cfg.label_column and cfg.label_column not in t.exclude_columns and cfg.label_column in data.schema.names:
        t = replace(t, exclude_columns=[*t.exclude_columns, cfg.label_column])
        cfg = replace(cfg, train=t)
    if cfg.label_data:
        features = resolve_columns(data.schema, t.feature_columns or None, t.exclude_columns, t.column_types)
        labelled = open_parquet_input(cfg.label_data, options)
        check_label_column(labelled.schema, cfg.label_data, cfg.label_column)
        check_schema(labelled.schema, features, cfg.label_data)
        check_label_values(labelled, cfg.label_data, cfg.label_column)
    return cfg, legacy


def check_label_values(labelled, data: str, label: str) -> None:
    """Refuse, before any trial trains, labels outside 0/1 or of one class only (AUROC needs both).

    Reads the label column alone (one column of the labelled files).
    """
    positives = negatives = 0
    for _, _, table in labelled.iter_tables([label], None, 1 << 20, (label,)):
        values = np.asarray(table.column(label).to_numpy(zero_copy_only=False), dtype=np.float64)
        values = values[~np.isnan(values)]
        bad = values[(values != 0) & (values != 1)]
        if len(bad):
            raise InputError(f"{data}: label column {label!r} holds {bad[0]:g}; it must hold 0/1 or true/false")
        positives += int((values == 1).sum())
        negatives += int((values == 0).sum())
    if not positives or not negatives:
        raise InputError(f"{data}: label column {label!r} holds {positives} anomalies and {negatives} normal rows; "
                         "AUROC needs both")


def run(cfg: SweepConfig) -> SweepResult:
    """Train one model per latent size as parallel Ray Train runs and write the comparison."""
    check_gpu(cfg.train.use_gpu, cfg.train.ray_address)
    options = normalize_storage_options(cfg.train.storage_options)
    cfg, legacy = check_inputs(cfg, options)
    # Without -v the trials' own output (Ray Train's messages, epoch lines of trials side by
    # side) stays in Ray's logs; a line per finished trial says how the sweep goes.
    ensure_ray(cfg.train.ray_address, log_to_driver=is_verbose())
    cpus = ray.cluster_resources().get("CPU", 0)
    t = cfg.train
    reserved = min(cfg.max_concurrent, len(cfg.latent)) * t.num_workers * t.cpus_per_worker
    if not t.use_gpu and cpus and reserved >= cpus:
        raise InputError(f"{reserved:g} CPUs reserved by concurrent trials would leave none of the {cpus:g} "
                         "for reading data; lower --max-concurrent or --train.cpus_per_worker")
    # Each trial is a zero-CPU Ray task that drives its own Ray Train run (whose workers
    # reserve CPUs) and Ray Data reads. Not a Tune trial: Tune puts a trial in a placement
    # group that captures its child tasks, so the trial's Ray Data tasks could not get CPUs.
    remote = ray.remote(num_cpus=0, max_retries=0)(train_one)
    claim_prefix(cfg.out, "sweep", options, adopt=legacy)  # checked above; now ours
    if cfg.train.overwrite:  # trials replace models: a previous summary would describe models that are gone
        fs, path = url_to_fs(cfg.out, options)
        for name in sorted(LEGACY_FILES):  # a claimed sweep prefix: these names are the sweep's own
            if fs.isfile(join(path, name)):
                fs.rm(join(path, name))
    sweep, pending, rows = config_to_dict(cfg), [], []
    for k in cfg.latent:
        if len(pending) >= cfg.max_concurrent:
            done, pending = ray.wait(pending, num_returns=1)
            rows += _finished(done, len(rows), len(cfg.latent))
        pending.append(remote.remote(sweep, k))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rows += _finished(done, len(rows), len(cfg.latent))
    rows.sort(key=lambda m: m["latent_dim"])
    best, rule = recommend(rows, cfg.knee_share, cfg.auroc_tolerance)
    for r in rows:
        r["recommended"] = r["latent_dim"] == best
        r["copying"] = copying(r)
    _write_outputs(cfg, rows, best, rule)
    return SweepResult(out=cfg.out, rows=rows, recommended=best, rule=rule)


def _finished(refs: list, before: int, total: int) -> list[dict]:
    """The finished trials' rows, each announced on the console."""
    rows = _results(refs)
    for i, r in enumerate(rows, before + 1):
        print(f"sweep: trial {i}/{total} done: latent {r['latent_dim']}, val_loss {r['val_loss']:.4f}, "
              f"train_loss {r['train_loss']:.4f}", flush=True)
    return rows


def _results(refs: list) -> list[dict]:
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        user = find_user_error(e)
        if user is not None and not isinstance(user, TrainingError):
            raise user from e  # bad input found by a trial: the CLI's exit 2, with its own message
        raise TrainingError(f"a sweep trial failed: {e.cause if e.cause is not None else e}") from e


def _write_outputs(cfg: SweepConfig, rows: list[dict], best: int, rule: str) -> None:
    from jobs.reports.html import sweep_plot, sweep_report

    fs, path = url_to_fs(cfg.out, normalize_storage_options(cfg.train.storage_options))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{**r, "warnings": ";".join(r["warnings"])} for r in rows])
    files = {"sweep.csv": buf.getvalue().encode(),
             "sweep.json": json.dumps({"recommended_latent_dim": best, "rule": rule, "knee_share": cfg.knee_share,
                                       "auroc_tolerance": cfg.auroc_tolerance, "rows": rows}, indent=2).encode(),
             "sweep.png": sweep_plot(rows, best, cfg.knee_share, cfg.auroc_tolerance)}
    files["sweep.html"] = sweep_report(rows, best, rule, files["sweep.png"])
    for name, data in files.items():
        with fs.open(path.rstrip("/") + "/" + name, "wb") as f:
            f.write(data)


def format_result(r: SweepResult) -> str:
    lines = [f"{'latent':>6} {'val_loss':>9} {'train_loss':>10} {'auroc':>6}  warnings"]
    for row in r.rows:
        auc = f"{row['auroc']:.3f}" if row["auroc"] is not None else "-"
        mark = "  <- recommended" if row["recommended"] else ""
        warned = row["warnings"] + (["likely copying"] if row.get("copying") else [])
        lines.append(f"{row['latent_dim']:>6} {row['val_loss']:>9.4f} {row['train_loss']:>10.4f} {auc:>6}  "
                     f"{','.join(warned) or '-'}{mark}")
    lines.append(f"sweep -> {r.out}: recommended latent_dim={r.recommended}: {r.rule}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.sweep``."""
    from jobs.runtime.entry import job_main

    return job_main(SweepConfig, run, format_result, argv, "aescore sweep", __doc__)


__all__ = ["SweepConfig", "SweepResult", "main", "recommend", "run", "train_one"]

if __name__ == "__main__":
    from jobs.sweep import main as module_main  # pickle UDFs as jobs.sweep, importable on workers

    from jobs.runtime.entry import run_entry_point

    run_entry_point(module_main)
