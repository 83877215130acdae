"""Reconstruction losses: one loss per column kind, normalised, combined per row.

Training minimises, per row,

    loss(row) = sum_c  m_c * L_c / b_c  /  sum_c m_c

where, for each feature column c,

* ``L_c`` is the column's loss: squared error of the standardised value (numeric),
  binary cross-entropy of the sigmoid output (binary), or cross-entropy of the softmax
  over the column's vocabulary (categorical);
* ``b_c`` is the loss of the best constant predictor fitted on the training data:
  1 for a standardised numeric column (predicting the mean), the entropy of the training
  distribution for binary and categorical columns (predicting the training frequencies),
  floored so near-constant columns cannot dominate;
* ``m_c`` is 1 if the cell was observed and 0 if it was missing (imputed).

So every column counts the same whatever its scale or cardinality, and a loss of 1.0
means "no better than predicting the training distribution of each column".

The scored ``recon_error`` divides each column once more, by ``s_c``, the column's mean
``L_c / b_c`` on the validation rows (floored; see ``error_scales``):

    recon_error(row) = sum_c  m_c * L_c / (b_c * s_c)  /  sum_c m_c

so 1.0 is the error of a typical validation row, and a column the model reconstructs
well counts for more than one it always reconstructs poorly: a large error in a column
that is normally predictable is the stronger anomaly signal (``bench/quality.py``
measures the effect on real data; the README has the table).

A row can also reconstruct well and still be unusual: its code lies where few training
rows' codes lie. The ``anomaly_score`` that ranks rows and is thresholded adds that as a
second term, the code's negative log-density under a Gaussian mixture fitted to the
training rows' codes, scaled so that a typical training row scores 1.0 (like
``recon_error`` for a validation row); with one component it is the squared Mahalanobis
distance divided by the latent size (``aemodel.latent`` has the formula and the fit):

    latent_distance(row) = (-2 log p(z) - offset) / latent_dim     (p: the codes' mixture)

A third term scores each value on its own, by how rare it is among the training rows'
values of its column (``aemodel.marginal``: -log of a two-sided tail probability for a
numeric value, of the frequency for a binary or categorical one, averaged over the row's
observed cells, about 1.0 for a training row). It catches a value far out in its tail that
agrees with the rest of its row, which the reconstruction then reproduces:

    anomaly_score(row) = recon_error(row) + w * latent_distance(row) + m * marginal_distance(row)

``w`` is ``TrainConfig.latent_weight`` and ``m`` ``TrainConfig.marginal_weight``; both 0
make ``anomaly_score`` equal ``recon_error``. bench/suite measures the effects
(bench/RESULTS.md, "latent term", "marginal tail term").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aemodel.latent import stored_mixture
from aemodel.model import Reconstruction


def column_losses(
    recon: Reconstruction,
    x_num: torch.Tensor,
    x_bin: torch.Tensor,
    x_cat: torch.Tensor,
    baselines: torch.Tensor,
) -> torch.Tensor:
    """Normalised loss of every cell, [B, n_columns], in model column order."""
    parts = [
        (recon.numeric - x_num) ** 2,
        F.binary_cross_entropy_with_logits(recon.binary_logits, x_bin, reduction="none"),
    ]
    parts += [F.cross_entropy(logits, x_cat[:, i], reduction="none").unsqueeze(1)
              for i, logits in enumerate(recon.categorical_logits)]
    return torch.cat(parts, dim=1) / baselines


def row_errors(col_losses: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-row error [B]: mean normalised loss over the row's observed cells.

    A row with no observed cell has error 0; its ``missing_cells`` says why.
    """
    n_obs = observed.sum(dim=1)
    return (col_losses * observed).sum(dim=1) / n_obs.clamp_min(1.0)


def batch_loss(col_losses: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Training objective: the mean per-row error of the batch."""
    return row_errors(col_losses, observed).mean()


def error_scales(validation_means: np.ndarray, floor: float, shared: list[int] | tuple[int, ...] = ()) -> np.ndarray:
    """Per-column divisors ``s_c`` for ``recon_error``: mean validation loss, at least ``floor``.

    The floor (in units of the constant predictor's loss) caps how much a column the model
    reconstructs almost perfectly can be amplified; a column never observed in validation
    gets 1.0. Columns measured in one unit (``aemodel.units``) share one divisor, their
    mean, so the scaling keeps what the shared unit gives: each counts by how much it varies.

    Args:
        validation_means: [n_columns] mean normalised loss of each column on validation rows
            (NaN where a column had no observed validation cell).
        floor: Smallest divisor, > 0.
        shared: Positions of the columns in one unit (``Preprocessor.shared_unit_indices``).
    """
    m = np.array(validation_means, dtype=np.float64)
    idx = np.asarray(shared, dtype=np.int64)
    if idx.size and np.isfinite(m[idx]).any():
        m[idx] = np.nanmean(m[idx])
    return np.where(np.isfinite(m), np.maximum(m, floor), 1.0)


def latent_tensors(latent: dict | None, device: torch.device | str) -> tuple[torch.Tensor, ...] | None:
    """A stored latent term (``reference["latent"]``, either form: ``aemodel.latent.stored_mixture``)
    as the float32 arguments of ``latent_distance``; None if absent."""
    if not latent:
        return None
    log_coef, means, whitenings, offset = stored_mixture(latent)
    k, d, _ = whitenings.shape
    stacked = whitenings.transpose(1, 0, 2).reshape(d, k * d)  # column block k is W_k
    minus_shift = -np.einsum("kd,kde->ke", means, whitenings).reshape(k * d)  # -mu_k W_k
    return tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in (log_coef, stacked, minus_shift, offset))


_LATENT_ROWS = 8192
"""Rows per step of ``latent_distance``: keeps its [rows, K*d] temporaries in cache (bench/RESULTS.md)."""


def latent_distance(z: torch.Tensor, log_coef: torch.Tensor, stacked: torch.Tensor, minus_shift: torch.Tensor,
                    offset: torch.Tensor) -> torch.Tensor:
    """Per-row [B] latent distance of codes ``z`` [B, d] under the stored mixture (``aemodel.latent``).

    One component: the squared Mahalanobis distance divided by ``d``. Every component's
    ``(z - mu_k) W_k`` comes from one matrix product, ``z @ [W_1 .. W_K] - [mu_k W_k]``.

    Stacked (``aemodel.stack``): codes [E, P, d] of E models, each with its own mixture
    (every argument with a leading E), give [E, P].
    """
    if z.dim() == 3:
        e, p, d = z.shape
        k = log_coef.shape[-1]
        sq = torch.baddbmm(minus_shift.unsqueeze(1), z, stacked).square_().view(e, p, k, d).sum(-1)  # [E, P, K]
        return (-2 * torch.logsumexp(log_coef.unsqueeze(1) - 0.5 * sq, dim=2) - offset.view(e, 1)) / d
    k, d = log_coef.shape[0], z.shape[1]
    parts = []
    for chunk in z.split(_LATENT_ROWS):
        sq = torch.addmm(minus_shift, chunk, stacked).square_().view(-1, k, d).sum(-1)  # [rows, K]
        parts.append(torch.logsumexp(log_coef - 0.5 * sq, dim=1))
    log_density = torch.cat(parts) if parts else z.new_zeros(0)
    return (-2 * log_density - offset) / d


def anomaly_score(recon_error: torch.Tensor, latent_dist: torch.Tensor | None, weight: float,
                  marginal: torch.Tensor | None = None, marginal_weight: float = 0.0) -> torch.Tensor:
    """The row score that ranks and thresholds rows:
    ``recon_error + weight * latent_distance + marginal_weight * marginal_distance``."""
    score = recon_error
    if latent_dist is not None and weight != 0:
        score = score + weight * latent_dist
    if marginal is not None and marginal_weight != 0:
        score = score + marginal_weight * marginal
    return score
