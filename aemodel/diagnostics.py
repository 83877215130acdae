"""Training diagnostics and threshold calibration: pure functions over losses and errors.

Each diagnostic returns a verdict in plain language, so a run that did not learn, that
overfits, or whose bottleneck is wide enough to copy its input says so instead of
passing as a success. ``status`` is ``ok``, ``warning`` or ``fail``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aemodel.model import AutoencoderConfig, Reconstruction
from aemodel.preprocess import MAX_TRACKED_VALUES, Preprocessor
from aemodel.schema import infer_kind

OVERFIT_WARN_RATIO = 1.5
"""val/train loss ratio above which the overfitting check warns."""
FLAT_IMPROVEMENT = 0.05
"""Below this relative improvement of the validation loss over training, it is flat."""
NO_BETTER_THAN_MEAN = 0.9
"""Model error at or above this fraction of the mean-prediction baseline: not learned."""
JUMP = 0.10
"""An epoch whose validation loss rises by more than this fraction counts as a jump."""


def calibrate_threshold(values: np.ndarray, quantile: float, n_boot: int = 200, level: float = 0.95,
                        seed: int = 0) -> dict:
    """Threshold = the ``quantile`` order statistic of validation errors, with a bootstrap CI.

    The threshold is the smallest validation error with at most ``1 - quantile`` of the
    validation rows above it, so the false-positive rate on clean validation data is at
    most the target. The confidence interval resamples the validation rows ``n_boot``
    times (percentile bootstrap); on sorted values a resample's order statistic is the
    value at the same order statistic of the resampled indices, which costs O(n) each.

    Raises:
        ValueError: no finite validation error.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        raise ValueError("no finite validation error to calibrate a threshold on")
    k = min(n - 1, max(0, math.ceil(quantile * n) - 1))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        boot[b] = v[np.partition(idx, k)[k]]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return {"value": float(v[k]), "method": "validation_quantile", "quantile": quantile,
            "target_fpr": 1.0 - quantile, "validation_rows": int(n),
            "validation_fpr": float((v > v[k]).mean()),
            "ci": [float(lo), float(hi)], "ci_level": level, "bootstrap_resamples": n_boot,
            "tail_rows": int(n - k - 1)}


def mean_reconstruction(baseline_outputs: dict, batch_size: int, device: torch.device | str = "cpu"
                        ) -> Reconstruction:
    """The "predict the training distribution" reconstruction for ``batch_size`` rows.

    Args:
        baseline_outputs: ``Preprocessor.constant_outputs()``: numeric means (0 after
            standardising), binary logits and categorical log-frequencies.
    """
    num = torch.zeros(batch_size, baseline_outputs["n_numeric"], device=device)
    bins = torch.tensor(baseline_outputs["binary_logits"], dtype=torch.float32, device=device)
    cats = [torch.tensor(c, dtype=torch.float32, device=device).expand(batch_size, -1)
            for c in baseline_outputs["categorical_logits"]]
    return Reconstruction(numeric=num, binary_logits=bins.expand(batch_size, -1), categorical_logits=cats)


def _check(name: str, status: str, message: str, **values) -> dict:
    return {"check": name, "status": status, "message": message, **values}


def diagnose(history: list[dict], *, n_features: int, input_width: int, latent_dim: int,
             baseline_val_loss: float | None, max_overfit_ratio: float | None = None,
             max_epochs: int | None = None, patience: int | None = None) -> list[dict]:
    """Verdicts on a finished training run.

    Args:
        history: Per-epoch ``train_loss`` and ``val_loss``.
        n_features: Feature columns.
        input_width: Encoder input width (numerics + binaries + one-hot categories).
        latent_dim: Bottleneck width.
        baseline_val_loss: Validation error of predicting the training distribution of
            each column (the mean-reconstruction baseline); 1.0 on data like training.
        max_overfit_ratio: If set, a val/train ratio above it fails the check.
        max_epochs: The epoch cap; with ``patience``, a run that reached it while the
            validation loss was still improving is reported as not converged.
        patience: Early-stopping patience (epochs without improvement before stopping).
    """
    out: list[dict] = []
    val = np.array([h["val_loss"] for h in history], dtype=np.float64)
    best = min(history, key=lambda h: h["val_loss"])
    tr, va = best["train_loss"], best["val_loss"]

    ratio = va / tr if tr > 0 else math.inf
    limit = max_overfit_ratio or math.inf
    if ratio > limit:
        status = "fail"
    elif ratio > OVERFIT_WARN_RATIO:
        status = "warning"
    else:
        status = "ok"
    msg = (f"validation loss {va:.4g} is {ratio:.1f}x the training loss {tr:.4g} at the best epoch: "
           + ("the model memorises its training rows (overfitting); use more data, a smaller model, "
              "dropout or weight decay" if status != "ok" else "no sign of overfitting"))
    out.append(_check("overfitting", status, msg, train_loss=tr, val_loss=va, ratio=ratio,
                      warn_ratio=OVERFIT_WARN_RATIO, fail_ratio=max_overfit_ratio))

    if baseline_val_loss is not None and baseline_val_loss > 0:
        frac = va / baseline_val_loss
        status = "warning" if frac >= NO_BETTER_THAN_MEAN else "ok"
        msg = (f"model error is {100 * frac:.1f}% of the mean-reconstruction baseline "
               f"({baseline_val_loss:.4g}, predicting each column's training distribution)"
               + (f"; it {'barely beats' if frac < 1 else 'does no better than'} predicting the mean: the model "
                  "did not learn the data's structure" if status != "ok" else ""))
        out.append(_check("vs_mean_baseline", status, msg, baseline_val_loss=baseline_val_loss, fraction=frac))

    if len(val) >= 3:
        improvement = (val[0] - val.min()) / val[0] if val[0] > 0 else 0.0
        rises = np.diff(val) / np.maximum(val[:-1], 1e-12)
        jumps = int((rises > JUMP).sum())
        if improvement < FLAT_IMPROVEMENT:
            out.append(_check("learning", "warning",
                              f"validation loss is flat: it improved {100 * improvement:.1f}% over "
                              f"{len(val)} epochs; the model is not learning (raise the learning rate, "
                              "check the features)", improvement=improvement, jumps=jumps))
        elif jumps >= max(2, math.ceil(0.25 * (len(val) - 1))):
            out.append(_check("learning", "warning",
                              f"validation loss jumps: it rose by more than {100 * JUMP:.0f}% in {jumps} of "
                              f"{len(val) - 1} epochs; training is unstable (lower the learning rate)",
                              improvement=improvement, jumps=jumps))
        else:
            out.append(_check("learning", "ok", f"validation loss fell {100 * improvement:.1f}% from the first "
                              f"epoch ({val[0]:.4g} -> {val.min():.4g})", improvement=improvement, jumps=jumps))

    if max_epochs is not None and patience is not None and history:
        out.append(convergence(history, max_epochs, patience))

    if latent_dim >= n_features:
        out.append(_check("latent_size", "warning",
                          f"latent_dim {latent_dim} >= {n_features} input features (encoder width "
                          f"{input_width}): the bottleneck is wide enough to copy the input, so a low error "
                          "may not mean the model learned structure; use a smaller --latent-dim "
                          "(aescore sweep --latent compares sizes)", latent_dim=latent_dim,
                          n_features=n_features))
    else:
        out.append(_check("latent_size", "ok", f"latent_dim {latent_dim} < {n_features} input features",
                          latent_dim=latent_dim, n_features=n_features))
    return out


def convergence(history: list[dict], max_epochs: int, patience: int) -> dict:
    """Whether training ended by early stopping, or at the epoch cap while still improving.

    A run that used every epoch and whose best validation loss came within the last
    ``patience`` epochs was stopped by the cap, not by convergence: more epochs would
    likely lower the loss (and change every score).
    """
    epochs = len(history)
    best = min(range(epochs), key=lambda i: history[i]["val_loss"])
    best_epoch = history[best].get("epoch", best)  # numbered from 0, as in the epoch lines
    if epochs < max_epochs:
        return _check("convergence", "ok", f"early stopping ended training after {epochs} epochs "
                      f"(best: epoch {best_epoch})", epochs=epochs, best_epoch=best_epoch, max_epochs=max_epochs)
    if epochs - 1 - best < patience:
        return _check("convergence", "warning",
                      f"training stopped at the epoch cap ({max_epochs}) while the validation loss was still "
                      f"falling (best: epoch {best_epoch}, the last is {history[-1].get('epoch', epochs - 1)}): "
                      "the model has not converged; raise --epochs",
                      epochs=epochs, best_epoch=best_epoch, max_epochs=max_epochs)
    return _check("convergence", "ok", f"validation loss stopped improving at epoch {best_epoch} of {epochs} "
                  "(the epoch cap)", epochs=epochs, best_epoch=best_epoch, max_epochs=max_epochs)


def format_diagnostics(checks: list[dict]) -> str:
    """One line per check, e.g. ``[warning] overfitting: ...``."""
    return "\n".join(f"[{c['status']}] {c['check']}: {c['message']}" for c in checks)


MIN_TAIL_ROWS = 5
"""Fewest validation rows above the threshold for its false-alarm rate to mean something."""


def assess(cfg, model_config: AutoencoderConfig, history: list[dict], reference: dict, threshold: dict,
           leakage: dict, pp: Preprocessor | None = None, more_warnings: list[str] = ()) -> dict:
    """The run's ``metrics.json``: final losses, diagnostics with verdicts, leakage checks.

    Args:
        cfg: The training options (``aemodel.options.TrainingOptions``; ``aescore train``'s).
        leakage: The statistics pass's overlap counts and id-like columns (``aemodel.leakage``).
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


def column_warnings(cfg, schema, specs: list, stats: dict, pp: Preprocessor) -> list[str]:
    """What training left out of its input's columns without an error: unmodelled types, categories.

    Args:
        cfg: The training options (``feature_columns``, ``exclude_columns``, ``max_categories``).
        schema: The training input's Arrow schema.
        specs: The feature columns.
        stats: The training statistics (``partial_stats`` merged): categorical value counts.
        pp: The preprocessing fitted on them (the kept categories).
    """
    out = []
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
