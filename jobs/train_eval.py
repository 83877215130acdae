"""After training: the validation reference, the calibrated threshold and the run's verdicts.

Everything here uses the validation split only (never data scored later), so the
threshold, the per-column error reference and the diagnostics cannot leak scoring data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aemodel import column_losses, row_errors
from aemodel.losses import anomaly_score, error_scales, latent_distance, latent_tensors
from aemodel.marginal import marginal_distance, marginal_tensors
from aemodel.diagnostics import calibrate_threshold, diagnose, format_diagnostics, mean_reconstruction
from aemodel.model import AutoencoderConfig
from aemodel.preprocess import MAX_TRACKED_VALUES, Preprocessor
from aemodel.metrics import ErrorStats, histogram_edges
from aemodel.schema import infer_kind
from jobs.datasets import skipped_files_warning


def validation_reference(model: torch.nn.Module, val_data, device: torch.device, baselines: torch.Tensor,
                         quantile: float, constant_outputs: dict, columns: list[str],
                         scale_floor: float | None = 0.05, latent: dict | None = None,
                         marginal: dict | None = None) -> tuple[dict, dict]:
    """Validation error distribution, per-column reference, baseline loss and threshold.

    Two passes over the validation rows: the first measures each column's loss (its mean
    becomes the column's ``scale``, see ``aemodel.losses.error_scales``), the second
    computes every row's ``anomaly_score`` (``recon_error`` with those scales plus the
    latent and marginal terms, see ``aemodel.losses``) exactly as scoring will.

    Args:
        val_data: A Ray Data iterator over the encoded validation rows (the whole set).
        quantile: The threshold's quantile of validation error (1 - target FPR).
        constant_outputs: ``Preprocessor.constant_outputs()`` for the mean baseline.
        columns: Feature names in model order.
        scale_floor: Floor of the per-column scales; None scales every column by 1.
        latent: The training codes' Gaussian (``mean``, ``whitening``) and ``weight`` of
            the latent term in ``anomaly_score``; None: no latent term.
        marginal: ``aemodel.marginal.marginal_fit``'s stored term; None: no marginal term.

    Returns:
        ``reference``: ``ErrorStats.summary()`` of validation ``anomaly_score`` plus
        ``columns`` (count, mean and std of each column's normalised loss, and its
        ``scale``), ``mean_baseline_loss``, ``latent`` (``latent`` plus the validation
        rows' mean ``latent_distance``) and ``marginal`` (``marginal`` plus the validation
        rows' mean ``marginal_distance``); ``threshold``: ``calibrate_threshold``'s result.
    """
    lat = latent_tensors(latent, device)
    marg = marginal_tensors(marginal, device)

    def batches(terms: bool):
        """Encoded batches with their losses; with ``terms``, also the latent and marginal terms."""
        for batch in val_data.iter_torch_batches(batch_size=8192, device=device, prefetch_batches=2):
            x = (batch["x_num"], batch["x_bin"], batch["x_cat"])
            with torch.inference_mode():
                recon = model(*x)
                dist = latent_distance(recon.latent, *lat) if terms and lat is not None else None
                rare = marginal_distance(*x, batch["observed"], *marg) if terms and marg is not None else None
                losses = column_losses(recon, *x, baselines)
            yield x, batch["observed"], losses, (dist, rare)

    model.eval()
    col_sums, baseline_sum = np.zeros((3, len(columns))), 0.0
    for x, observed, losses, _ in batches(terms=False):  # the terms are not needed for the scales
        with torch.inference_mode():
            const = mean_reconstruction(constant_outputs, x[0].shape[0], device)
            baseline_sum += float(row_errors(column_losses(const, *x, baselines), observed).sum())
        obs = observed.cpu().numpy() > 0
        lo = losses.double().cpu().numpy()
        col_sums += np.stack([obs.sum(0), np.where(obs, lo, 0).sum(0), np.where(obs, lo * lo, 0).sum(0)])
    n, s1, s2 = col_sums
    mean = np.where(n > 0, s1 / np.maximum(n, 1), np.nan)
    std = np.sqrt(np.maximum(np.nan_to_num(s2 / np.maximum(n, 1) - mean * mean), 0.0))
    scales = error_scales(mean, scale_floor) if scale_floor is not None else np.ones(len(columns))
    scale_t = torch.tensor(scales, dtype=torch.float32, device=device)
    weight = latent["weight"] if latent is not None else 0.0
    marginal_weight = marginal["weight"] if marginal is not None else 0.0
    parts = [(anomaly_score(row_errors(losses / scale_t, observed), dist, weight, rare, marginal_weight)
              .float().cpu().numpy(),
              *(t.double().cpu().numpy() if t is not None else None for t in (dist, rare)))
             for _, observed, losses, (dist, rare) in batches(terms=True)]
    values = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.float32)
    threshold = calibrate_threshold(values, quantile)
    stats = ErrorStats(edges=histogram_edges(), threshold=threshold["value"]).update(values)
    reference = {**stats.summary(), "mean_baseline_loss": baseline_sum / max(len(values), 1),
                 "columns": {c: {"count": int(n[i]), "mean": float(np.nan_to_num(mean[i])), "std": float(std[i]),
                                 "scale": float(scales[i])} for i, c in enumerate(columns)}}
    if latent is not None:
        dists = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        reference["latent"] = {**latent, "validation_mean_distance": float(dists.mean()) if len(dists) else None}
    if marginal is not None:
        rares = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
        reference["marginal"] = {**marginal, "validation_mean_distance": float(rares.mean()) if len(rares) else None}
    return reference, threshold


def final_checkpoint(result) -> tuple[dict, dict, dict]:
    """Best weights + history, validation reference and threshold from the last checkpoint."""
    from jobs.errors import TrainingError
    from jobs.train_loop import load_state

    if result.checkpoint is None:
        raise TrainingError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        if not (Path(d) / "reference.json").exists():
            raise TrainingError("training ended before its final checkpoint (see the Ray Train logs)")
        state = load_state(d, "cpu")
        reference = json.loads((Path(d) / "reference.json").read_text())
        threshold = json.loads((Path(d) / "threshold.json").read_text())
    return state, reference, threshold


MIN_TAIL_ROWS = 5
"""Fewest validation rows above the threshold for its false-alarm rate to mean something."""


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
    used = {s.name for s in specs} | set(cfg.exclude_columns or [])
    if not cfg.feature_columns:
        left = [f"{f.name} ({f.type})" for f in schema if f.name not in used and infer_kind(f.type) is None]
        if left:
            out.append(f"column(s) of types aescore does not model were left out: {', '.join(left)} "
                       "(--exclude-columns names them to silence this)")
    for s in specs:
        counts = stats.get(s.name, {}).get("counts") if s.kind == "categorical" else None
        if counts and len(counts) > cfg.max_categories:
            many = f"at least {len(counts)}" if len(counts) >= MAX_TRACKED_VALUES else str(len(counts))
            # The <other> share from the fitted vocabulary: every observed cell not kept, including
            # values past the tracked ones (an id-like column tracks only its most frequent values).
            freq = pp.categorical[s.name]["freq"]
            share = freq[-1] / max(sum(freq), 1)
            out.append(f"column {s.name!r} has {many} distinct training values; the {len(freq) - 1} most frequent "
                       f"are kept and the rest ({100 * share:.1f}% of its cells) all count as one value, <other> "
                       "(--max-categories)")
    return out


def assess(cfg, model_config: AutoencoderConfig, history: list[dict], reference: dict, threshold: dict,
           leakage: dict, pp: Preprocessor | None = None, more_warnings: list[str] = ()) -> dict:
    """The run's ``metrics.json``: final losses, diagnostics with verdicts, leakage checks.

    Args:
        cfg: The ``TrainConfig``.
        leakage: From ``jobs.train_stats.fit_statistics``: overlap counts and id-like columns.
        pp: The fitted preprocessing, for warnings about columns (one training value, numbers as text).
        more_warnings: Warnings found before training (``input_warnings``), listed first.
    """
    best = min(history, key=lambda h: h["val_loss"])
    checks = diagnose(history, n_features=model_config.n_columns, input_width=model_config.input_dim,
                      latent_dim=model_config.latent_dim, baseline_val_loss=reference.get("mean_baseline_loss"),
                      max_overfit_ratio=cfg.max_overfit_ratio, max_epochs=cfg.epochs, patience=cfg.patience)
    warnings = list(more_warnings) + [f"column {c['column']!r} looks like a row id ({c['reason']}); ids as features let the model "
                "memorise rows: exclude it (--exclude-columns)" for c in leakage["id_like_columns"]]
    if pp is not None:
        warnings += [f"column {name!r} holds one value in every training row ({value}): any other value will "
                     "dominate its row's score; if it is a label or an outcome, exclude it (--exclude-columns)"
                     for name, value in pp.constant_columns().items()]
        warnings += [f"column {name!r} is text, but most of its values are numbers ({distinct} distinct): it is "
                     f"modelled as categorical (its {len(pp.categorical[name]['vocab']) - 1} most frequent values "
                     "kept, no notion of nearness); store it as a number to model it as one"
                     for name, distinct in pp.numeric_like_categoricals().items()]
    tail, n_val = threshold.get("tail_rows"), threshold.get("validation_rows")
    if tail is not None and n_val and tail < MIN_TAIL_ROWS:  # the quantile is one of the last few rows
        q = threshold["quantile"]
        warnings.append(f"threshold: the {q:g} quantile of {n_val} validation rows has {tail} row(s) above it, "
                        f"so the share of new normal rows flagged can be far from {1 - q:.1%}; about "
                        f"{math.ceil(MIN_TAIL_ROWS / (1 - q))} validation rows would put {MIN_TAIL_ROWS} above it "
                        "(--val-data, a larger --val-fraction, or a lower --threshold-quantile)")
    if leakage.get("train_val_overlap_rows", 0) > max(1.0, 3 * leakage.get("expected_false_matches", 0.0)):
        warnings.append(f"{leakage['train_val_overlap_rows']} validation rows also occur in the training data "
                        "(leakage: validation loss and threshold look better than they are)")
    latent = reference.get("latent")
    notes = []
    if cfg.latent_weight is None and not latent:  # the default turned the latent term off: say so, and how to add it
        notes.append(f"latent term: off (the default for 45 or more feature columns; this table has "
                     f"{model_config.n_columns}); --latent-weight 0.5 adds it")
    return {"best_epoch": best["epoch"], "epochs_run": len(history), "train_loss": best["train_loss"],
            "val_loss": best["val_loss"], "mean_baseline_val_loss": reference.get("mean_baseline_loss"),
            "stopped_early": len(history) < cfg.epochs, "latent_dim": model_config.latent_dim,
            "latent_components": latent.get("components", 1) if latent else None,
            "latent_weight": float(latent["weight"]) if latent else 0.0, "notes": notes,
            "n_features": model_config.n_columns, "diagnostics": checks, "warnings": warnings, "leakage": leakage}


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
    if r.artifact_uri:
        lines.append(f"report: {r.artifact_uri.rstrip('/')}/report.html")
    return "\n".join(lines + [f"warning: {w}" for w in r.warnings])
