"""Denoising: the training inputs' noise, set per column from its kurtosis (K-DSM's rule).

With ``input_noise`` set, every training step feeds the network a noisy copy of each row and
asks for the clean row back (a denoising autoencoder); validation, calibration and scoring
see clean rows only, so scoring costs the same one forward pass. A denoising autoencoder's
residual estimates the score of the data density, ``r(x) - x ~ sigma^2 grad log p(x)``
(Alain and Bengio, JMLR 2014), so the row's reconstruction error measures how steeply the
density falls at the row: the score-matching view of DTE (Livernoche et al., ICLR 2024) and
K-DSM (repository vicliv/K-DSM). Each column's error is already divided by its mean
validation error (``aemodel.losses``), which removes the per-column ``1 / sigma^4`` of the
score's norm, so ``recon_error`` is the score-matching score up to that per-column constant.

The noise of each model input, in standardised units (K-DSM's ``compute_sigma_by_kurtosis``):

    numeric column:          sigma = clip(base * (1 + 0.33 * (kurtosis - 3)), 0.1, 3.0)
    binary or one-hot input: sigma = clip(base * (1 + 0.33 * (0.9 / base - 3)), 0.1, 3.0)

Heavy-tailed columns (kurtosis above a normal column's 3) get more noise, so the network
learns the density's slope out into their tails; light-tailed and bounded ones less. The
kurtosis here is of every training value (mergeable moments, ``aemodel.moments``), where
K-DSM trims 4% of the tails first: a column with a few extreme values reaches the cap sooner.
"""

from __future__ import annotations

import numpy as np

from aemodel.preprocess import Preprocessor

KURTOSIS_SLOPE = 0.33
"""K-DSM's ``c``: the change of sigma per unit of excess kurtosis, relative to ``base``."""
SIGMA_RANGE = (0.1, 3.0)
"""K-DSM's bounds on a column's sigma (standardised units)."""
BINARY_KURTOSIS_TIMES_BASE = 0.9
"""K-DSM treats a 0/1 input as having kurtosis ``0.9 / base``."""


def column_sigma(kurtosis: float, base: float) -> float:
    """A numeric column's noise (standardised units) from its kurtosis: K-DSM's linear rule, clipped."""
    return float(np.clip(base * (1.0 + KURTOSIS_SLOPE * (kurtosis - 3.0)), *SIGMA_RANGE))


def input_noise(pp: Preprocessor, base: float) -> list[float]:
    """The noise of every model input, in the network's input order (numeric, binary, one-hot).

    Args:
        pp: The fitted preprocessing (its numeric columns carry their training kurtosis).
        base: ``TrainingOptions.input_noise``: the sigma of a column with a normal's kurtosis.
    """
    flat = column_sigma(BINARY_KURTOSIS_TIMES_BASE / base, base)
    numeric = [column_sigma(pp.numeric[n].get("kurtosis", 3.0), base) for n in pp.numeric_names]
    return numeric + [flat] * (len(pp.binary_names) + sum(pp.category_sizes))
