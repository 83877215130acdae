"""After a training run: its final checkpoint, what it left out of its input, and its result line.

The validation reference, the threshold and the verdicts are computed by
``aemodel.training`` and ``aemodel.diagnostics`` (on the validation split only, so nothing
scored later can leak into them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from aemodel.diagnostics import column_warnings, format_diagnostics
from aemodel.preprocess import Preprocessor
from jobs.data.datasets import skipped_files_warning


def final_checkpoint(result) -> tuple[dict, dict, dict]:
    """Best weights + history, validation reference and threshold from the last checkpoint."""
    from jobs.runtime.errors import TrainingError
    from jobs.training.loop import load_state

    if result.checkpoint is None:
        raise TrainingError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        if not (Path(d) / "reference.json").exists():
            raise TrainingError("training ended before its final checkpoint (see the Ray Train logs)")
        state = load_state(d, "cpu")
        reference = json.loads((Path(d) / "reference.json").read_text())
        threshold = json.loads((Path(d) / "threshold.json").read_text())
    return state, reference, threshold


def input_warnings(cfg, inputs: dict, schema, specs: list, stats: dict, pp: Preprocessor) -> list[str]:
    """What training left out of its input without an error: files, columns, categories.

    Args:
        cfg: The ``TrainConfig``.
        inputs: Option name (``--data``, ``--val-data``) -> its ``ParquetInput`` (or None).
        schema: The training input's Arrow schema.
        specs: The feature columns.
        stats: The training statistics (``partial_stats`` merged): categorical value counts.
        pp: The preprocessing fitted on them (the kept categories).
    """
    out = []
    for flag, data in inputs.items():
        skipped = skipped_files_warning(flag, data.skipped_other) if data is not None else None
        if skipped:
            out.append(skipped)
    return out + column_warnings(cfg, schema, specs, stats, pp)


@dataclass
class TrainResult:
    """What ``jobs.train.run`` produced."""

    model_uri: str
    version: str
    history: list[dict]
    threshold: float
    reference: dict
    train_rows: int
    val_rows: int
    wall_seconds: float
    run_id: str = ""
    reused: bool = False
    metrics: dict | None = None
    artifact_uri: str = ""
    """The committed artefact's folder (``runs/<run>`` under ``model_uri``): report.html is there."""
    warnings: list[str] = field(default_factory=list)
    """What the clean-up after the commit could not do (the model is committed regardless)."""
    tracking: dict | None = None
    """The MLflow run (``run_id``, ``experiment_id``) and registry version (``model_version``), when tracked."""
    bank: dict | None = None
    """A model bank's summary (``model.json``'s ``bank``; ``jobs.training.bank``), None for one model."""


def format_result(r: TrainResult) -> str:
    """The diagnostics, one per line, then a one-line result."""
    best = min(r.history, key=lambda h: h["val_loss"])
    verb = "reused" if r.reused else "trained"
    lines = []
    if r.metrics and r.metrics.get("diagnostics"):
        lines.append(format_diagnostics(r.metrics["diagnostics"]))
    for w in (r.metrics or {}).get("warnings", []):
        lines.append(f"[warning] {w}")
    lines += (r.metrics or {}).get("notes", [])
    if ((r.metrics or {}).get("latent_components") or 1) > 1:  # a mixture was asked for: say what BIC chose
        lines.append(f"latent term: a mixture of {r.metrics['latent_components']} Gaussians over the training codes")
    lines.append(f"{verb} {r.model_uri} (version {r.version}): {len(r.history)} epochs, best: epoch {best['epoch']} "
                 f"train_loss={best['train_loss']:.4f} val_loss={best['val_loss']:.4f}, threshold={r.threshold:.4f}, "
                 f"rows train={r.train_rows} val={r.val_rows}, {r.wall_seconds:.1f}s")
    if r.bank:
        e, flagged = r.bank["entities"], r.bank["flagged"]
        lines.append(f"bank: {e['models']:,} entity models of {e['seen']:,} entities ({e['too_few_rows']:,} below "
                     f"{r.bank['min_entity_rows']} rows, {e['failed_count']:,} failed: scored by the global model; "
                     f"{100 * r.bank['rows']['global_only_share']:.1f}% of rows)"
                     + "".join(f"; {v['count']:,} {c}" for c, v in flagged.items()) + f", {r.bank['seconds']:.1f}s")
    if r.artifact_uri:
        lines.append(f"report: {r.artifact_uri.rstrip('/')}/report.html")
    if r.tracking:
        t = r.tracking
        lines.append(f"mlflow: run {t['run_id']} (experiment {t['experiment_id']})"
                     + (f"; registered: models:/{t['registered_model']}/{t['model_version']}"
                        if t.get("model_version") else ""))
    return "\n".join(lines + [f"warning: {w}" for w in r.warnings])
