"""Reconstruction losses: one loss per column kind, normalised, combined per row.

The per-row reconstruction error is

    recon_error(row) = sum_c  m_c * L_c / b_c  /  sum_c m_c

where, for each feature column c,

* ``L_c`` is the column's loss: squared error of the standardised value (numeric),
  binary cross-entropy of the sigmoid output (binary), or cross-entropy of the softmax
  over the column's vocabulary (categorical);
* ``b_c`` is the loss of the best constant predictor fitted on the training data:
  1 for a standardised numeric column (predicting the mean), the entropy of the training
  distribution for binary and categorical columns (predicting the training frequencies),
  floored so near-constant columns cannot dominate;
* ``m_c`` is 1 if the cell was observed and 0 if it was missing (imputed).

So every column counts the same whatever its scale or cardinality, and an error of 1.0
means "no better than predicting the training distribution of each column".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
