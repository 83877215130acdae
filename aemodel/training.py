"""Training without Ray: the optimizer steps, the epoch loop with early stopping, the score's terms
and the validation reference. Pure torch over iterables of encoded batches.

``jobs.training.loop`` runs these inside a Ray Train worker (its batches come from Ray Data
or a cached shard, its sums are all-reduced over workers, its hook reports checkpoints);
``aemodel.estimator`` runs them in this process on tensors. Both therefore train, stop and
calibrate by the same rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from aemodel.artifact import ModelArtifact
from aemodel.columns import ColumnCounter
from aemodel.diagnostics import assess, calibrate_threshold, mean_reconstruction
from aemodel.errors import TrainingError
from aemodel.leakage import BloomFilter
from aemodel.latent import MAX_CODES
from aemodel.losses import (anomaly_score, batch_loss, column_losses, error_scales, latent_distance, latent_tensors,
                            row_errors)
from aemodel.marginal import MarginalCounter, marginal_distance, marginal_fit, marginal_tensors
from aemodel.metrics import ErrorStats, histogram_edges
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.options import TrainingOptions
from aemodel.preprocess import Preprocessor
from aemodel.terms import LatentSample, LatentSums, latent_fit, latent_gaussian_fit, one_pass

MODEL_INPUTS = ("x_num", "x_bin", "x_cat", "observed")
"""The encoded batch's tensors (``Preprocessor.transform``)."""
Batches = Iterable[dict[str, torch.Tensor]]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               baselines: torch.Tensor, input_noise: torch.Tensor | None = None) -> float:
    """One optimizer step on an encoded batch; returns the batch's mean row error.

    With ``input_noise`` the network sees a noisy copy of each row and is scored on
    rebuilding the clean one (``aemodel.denoise``).
    """
    model.train()
    recon = model(batch["x_num"], batch["x_bin"], batch["x_cat"], input_noise)
    loss = batch_loss(column_losses(recon, batch["x_num"], batch["x_bin"], batch["x_cat"], baselines),
                      batch["observed"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], baselines: torch.Tensor) -> tuple[float, int]:
    """Sum of row errors and row count of an encoded batch, without gradients."""
    model.eval()
    with torch.inference_mode():
        recon = model(batch["x_num"], batch["x_bin"], batch["x_cat"])
        err = row_errors(column_losses(recon, batch["x_num"], batch["x_bin"], batch["x_cat"], baselines),
                         batch["observed"])
    return float(err.sum()), int(err.shape[0])


def tensor_batches(tensors: dict[str, torch.Tensor], batch_size: int,
                   shuffle_seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of in-memory encoded rows: in order, or a full seeded permutation when ``shuffle_seed`` is set."""
    n = tensors["x_num"].shape[0]
    device = tensors["x_num"].device
    order = (None if shuffle_seed is None else
             torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).to(device))
    for i in range(0, n, batch_size):
        idx = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
        yield {k: v[idx] for k, v in tensors.items()}


@dataclass
class FitState:
    """Where training is: enough to resume it (a checkpoint holds this plus the optimizer's state).

    ``best_val`` is the last loss that counted as progress (for patience); ``lowest`` the
    lowest loss, whose weights ``best_model`` keeps, so the artefact's best epoch is the
    epoch its weights come from.
    """

    best_model: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    epoch: int = -1
    best_val: float = math.inf
    lowest: float = math.inf
    bad_epochs: int = 0
    attempt: int = 0
    finished: bool = False

    def to_dict(self) -> dict:
        return {"best_model": self.best_model, "history": self.history, "epoch": self.epoch,
                "best_val": self.best_val, "lowest": self.lowest, "bad_epochs": self.bad_epochs,
                "attempt": self.attempt, "finished": self.finished}

    @classmethod
    def from_checkpoint(cls, state: dict) -> FitState:
        """A resumed run's state: the checkpoint's, one attempt later."""
        return cls(best_model=state["best_model"], history=state["history"], epoch=state["epoch"],
                   best_val=state["best_val"], lowest=state.get("lowest", state["best_val"]),
                   bad_epochs=state["bad_epochs"], attempt=state.get("attempt", 0) + 1,
                   finished=bool(state.get("finished")))


def fit_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, baselines: torch.Tensor, *,
               train_batches: Callable[[int], Batches], val_batches: Callable[[], Batches], epochs: int,
               patience: int, min_delta: float, input_noise: torch.Tensor | None = None,
               state: FitState | None = None,
               reduce: Callable[[list[float]], list[float]] = lambda v: v,
               on_epoch: Callable[[FitState, bool], None] | None = None) -> FitState:
    """Epochs of training and validation until early stopping or ``epochs``; the lowest-loss weights kept.

    Args:
        model: The network (possibly DDP-wrapped; ``best_model`` holds the unwrapped weights).
        train_batches: Epoch -> that epoch's (shuffled) training batches.
        val_batches: The whole validation set, in batches (every worker sees all of it).
        input_noise: Per model input, the standard deviation of the training inputs' noise
            (``aemodel.denoise.input_noise``); None trains on the rows as they are.
        state: Where a resumed run left off; None starts from scratch.
        reduce: Sums of [training loss sum, training rows] over workers (identity on one).
        on_epoch: Called after every epoch with the state and whether training stops there.

    Raises:
        TrainingError: No rows, or a loss that is not finite.
    """
    raw = model.module if hasattr(model, "module") else model
    state = state or FitState(best_model={k: v.detach().clone() for k, v in raw.state_dict().items()})
    for epoch in range(state.epoch + 1, epochs if not state.finished else 0):  # finished: restored by name
        t0 = time.perf_counter()
        tr_sum, tr_n = 0.0, 0
        for batch in train_batches(epoch):
            n = batch["x_num"].shape[0]
            tr_sum += train_step(model, optimizer, batch, baselines, input_noise) * n
            tr_n += n
        va_sum, va_n = 0.0, 0
        for batch in val_batches():
            s, n = eval_step(raw, batch, baselines)
            va_sum, va_n = va_sum + s, va_n + n
        tr_sum, tr_n = reduce([tr_sum, tr_n])
        lowest, stop = record_epoch(state, epoch, tr_sum, tr_n, va_sum, va_n, time.perf_counter() - t0,
                                    patience, min_delta)
        if lowest:
            state.best_model = {k: v.detach().clone() for k, v in raw.state_dict().items()}
        if on_epoch is not None:
            on_epoch(state, stop)
        if stop:
            break
    raw.load_state_dict(state.best_model)
    return state


def record_epoch(state: FitState, epoch: int, tr_sum: float, tr_n: float, va_sum: float, va_n: float,
                 seconds: float, patience: int, min_delta: float) -> tuple[bool, bool]:
    """An epoch's losses into ``state``: its history, the early-stopping count. The one home of those rules.

    Returns:
        (whether the epoch's validation loss is the lowest so far: its weights are to be
        kept, whether training stops after it).

    Raises:
        TrainingError: No rows, or a loss that is not finite.
    """
    if tr_n == 0 or va_n == 0:
        raise TrainingError(f"no rows reached training (train={tr_n:.0f}, validation={va_n:.0f})")
    train_loss, val_loss = tr_sum / tr_n, va_sum / va_n
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise TrainingError(f"loss became {train_loss} (train) / {val_loss} (validation) at epoch {epoch}; "
                            "lower --learning-rate or check the data for extreme values")
    lowest = val_loss < state.lowest
    if lowest:
        state.lowest = val_loss
    if val_loss < state.best_val * (1.0 - min_delta):
        state.best_val, state.bad_epochs = val_loss, 0
    else:
        state.bad_epochs += 1
    state.epoch = epoch
    state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds,
                          "train_rows": int(tr_n), "val_rows": int(va_n),
                          "attempt": state.attempt})  # > 0: resumed from a checkpoint after a failure
    return lowest, state.bad_epochs >= patience


def fit_score_terms(model: TabularAutoencoder, train_batches: Batches, *, latent_weight: float,
                    latent_components: int, marginal_weight: float, clip_sigma: float, seed: int,
                    reduce: Callable[[list[float]], list[float]] = lambda v: v,
                    gather: Callable[[np.ndarray], np.ndarray] = lambda a: a, workers: int = 1,
                    rank: int = 0) -> tuple[dict | None, dict | None, dict]:
    """The latent and marginal terms of ``anomaly_score``, and the columns' distribution, from one
    pass over the training rows.

    Args:
        model: The trained network (best weights).
        train_batches: Every training row once (a worker's shard).
        reduce: Sums over workers; ``gather``: every worker's sampled codes, in rank order.
        workers, rank: The code sample is split over workers; each keeps its share.

    Returns:
        (latent term or None, marginal term or None, the training rows' per-column
        distribution), as ``reference["latent"|"marginal"|"columns_distribution"]``.
    """
    mc = model.config
    latent_acc = marginal_acc = None
    columns = ColumnCounter(mc.n_numeric, mc.n_binary, mc.category_sizes, clip_sigma)  # per-column drift
    if latent_weight > 0 and latent_components == 1:  # one Gaussian of every worker's codes (all-reduced)
        latent_acc = LatentSums(model, mc.latent_dim)
    elif latent_weight > 0:  # a mixture fitted to a sample of every worker's training codes
        latent_acc = LatentSample(model, MAX_CODES // workers, seed + rank)
    if marginal_weight > 0:  # every worker's counts of its training values, summed
        marginal_acc = MarginalCounter(mc.n_numeric, mc.n_binary, mc.category_sizes, clip_sigma)
    one_pass(train_batches, [a for a in (latent_acc, marginal_acc, columns) if a])
    latent = marginal = None
    if isinstance(latent_acc, LatentSums):
        latent = latent_gaussian_fit(reduce(latent_acc.result()), mc.latent_dim, latent_weight)
    elif latent_acc is not None:
        # Every worker fits the same codes with the same seed, so all hold the same term.
        latent = latent_fit(gather(latent_acc.result()), latent_weight, seed, latent_components)
    if marginal_acc is not None:
        marginal = marginal_fit(reduce(marginal_acc.counts.tolist()), mc.n_numeric, mc.n_binary,
                                mc.category_sizes, clip_sigma, marginal_weight)
    return latent, marginal, columns.reduce(reduce).result()


def validation_reference(model: torch.nn.Module, val_batches: Callable[[], Batches], device: torch.device,
                         baselines: torch.Tensor, quantile: float, constant_outputs: dict, columns: list[str],
                         scale_floor: float | None = 0.05, latent: dict | None = None,
                         marginal: dict | None = None, shared: list[int] | tuple[int, ...] = ()) -> tuple[dict, dict]:
    """Validation error distribution, per-column reference, baseline loss and threshold.

    Two passes over the validation rows: the first measures each column's loss (its mean
    becomes the column's ``scale``, see ``aemodel.losses.error_scales``), the second
    computes every row's ``anomaly_score`` (``recon_error`` with those scales plus the
    latent and marginal terms, see ``aemodel.losses``) exactly as scoring will.

    Args:
        val_batches: The whole validation set in encoded batches on ``device`` (called twice).
        quantile: The threshold's quantile of validation error (1 - target FPR).
        constant_outputs: ``Preprocessor.constant_outputs()`` for the mean baseline.
        columns: Feature names in model order.
        scale_floor: Floor of the per-column scales; None scales every column by 1.
        latent: The training codes' Gaussian (``mean``, ``whitening``) and ``weight`` of
            the latent term in ``anomaly_score``; None: no latent term.
        marginal: ``aemodel.marginal.marginal_fit``'s stored term; None: no marginal term.
        shared: Columns that share one scale (``Preprocessor.shared_unit_indices``).

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
        for batch in val_batches():
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
    scales = error_scales(mean, scale_floor, shared) if scale_floor is not None else np.ones(len(columns))
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


def trained_artifact(cfg: TrainingOptions, model_config: AutoencoderConfig, pp: Preprocessor, state_dict: dict,
                     history: list[dict], reference: dict, threshold: dict, leakage: dict,
                     seen_rows: BloomFilter | None, *, warnings: list[str] = (), train_config: dict | None = None,
                     run_id: str = "") -> ModelArtifact:
    """The artefact of a finished training: its threshold method, its verdicts (``assess``), its weights.

    Raises:
        TrainingError: A diagnostic failed (``--max-overfit-ratio``): no artefact.
    """
    if cfg.contamination is not None:
        threshold = {**threshold, "method": "contamination", "contamination": cfg.contamination}
    metrics = assess(cfg, model_config, history, reference, threshold, leakage, pp, list(warnings))
    failed = [c for c in metrics["diagnostics"] if c["status"] == "fail"]
    if failed:  # checked before anything is written: a failed run leaves no artefact
        raise TrainingError("; ".join(f"{c['check']}: {c['message']}" for c in failed))
    return ModelArtifact(model_config=model_config, preprocessor=pp, state_dict=state_dict, threshold=threshold,
                         reference=reference, history=history, train_config=train_config or {}, run_id=run_id,
                         metrics=metrics, training_rows=seen_rows, training_rows_info=leakage["training_rows"])
