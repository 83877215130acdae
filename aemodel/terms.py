"""The score's reference terms gathered after training (pure torch, no Ray).

Once the best weights are restored, the latent term (the training codes' Gaussian sums, or a
sample of codes for a mixture) and the marginal term (counts of the training values) each
need every training row once. ``one_pass`` feeds each batch to all of them, so a streamed
shard (``--cache-shard-mb 0``) is read once, not once per term. ``jobs.training.loop`` sums
the results over workers and fits the terms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

from aemodel.model import TabularAutoencoder
from aemodel.latent import COMPONENTS, fit_mixture, gaussian_from_moments


class Accumulator(Protocol):
    def add(self, batch: dict[str, torch.Tensor]) -> None: ...


def one_pass(batches: Iterable[dict[str, torch.Tensor]], accumulators: Iterable[Accumulator]) -> None:
    """Feed every batch to every accumulator: one read of ``batches`` for all of them."""
    accumulators = list(accumulators)
    if not accumulators:
        return
    for batch in batches:
        for acc in accumulators:
            acc.add(batch)


def _codes(model: TabularAutoencoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(batch["x_num"], batch["x_bin"], batch["x_cat"]).double().cpu()


class LatentSums:
    """Count, sum and sum of outer products of the training codes (exact over every row)."""

    def __init__(self, model: TabularAutoencoder, latent_dim: int):
        model.eval()
        self.model, self.n = model, 0.0
        self.total = torch.zeros(latent_dim, dtype=torch.float64)
        self.outer = torch.zeros(latent_dim, latent_dim, dtype=torch.float64)

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        z = _codes(self.model, batch)
        self.n, self.total, self.outer = self.n + z.shape[0], self.total + z.sum(0), self.outer + z.T @ z

    def result(self) -> list[float]:
        """The sums, flattened (for an all-reduce): [n, sum (d), outer products (d*d)]."""
        return [self.n, *self.total.tolist(), *self.outer.flatten().tolist()]


class LatentSample:
    """A uniform sample of at most ``max_rows`` training codes, in input order.

    Each code gets a seeded random key and the ``max_rows`` smallest keys are kept as the
    batches go by, so memory stays bounded whatever the shard size.
    """

    def __init__(self, model: TabularAutoencoder, max_rows: int, seed: int):
        model.eval()
        self.model, self.max_rows = model, max_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.kept = torch.zeros(0, model.config.latent_dim, dtype=torch.float64)
        self.keys = torch.zeros(0, dtype=torch.float64)

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        z = _codes(self.model, batch)
        self.kept = torch.cat([self.kept, z])
        self.keys = torch.cat([self.keys, torch.rand(z.shape[0], generator=self.gen, dtype=torch.float64)])
        if self.kept.shape[0] > self.max_rows:
            idx = torch.sort(torch.topk(self.keys, self.max_rows, largest=False).indices).values
            self.kept, self.keys = self.kept[idx], self.keys[idx]

    def result(self) -> np.ndarray:
        """The sampled codes, float64 [n, d]."""
        return self.kept.numpy()


def latent_sums(model: TabularAutoencoder, batches, latent_dim: int) -> list[float]:
    """``LatentSums`` over ``batches``: count, sum and sum of outer products of their codes, flattened."""
    acc = LatentSums(model, latent_dim)
    one_pass(batches, [acc])
    return acc.result()


def latent_codes(model: TabularAutoencoder, batches, max_rows: int, seed: int) -> np.ndarray:
    """``LatentSample`` over ``batches``: a seeded uniform sample of at most ``max_rows`` codes, in input order."""
    acc = LatentSample(model, max_rows, seed)
    one_pass(batches, [acc])
    return acc.result()


def latent_gaussian_fit(sums: list[float], latent_dim: int, weight: float) -> dict:
    """The latent term with one Gaussian, from (all-reduced) ``latent_sums``: exact over every training row."""
    d = latent_dim
    return {**gaussian_from_moments(sums[0], np.array(sums[1:1 + d]), np.array(sums[1 + d:]).reshape(d, d)),
            "weight": weight}


def latent_fit(codes: np.ndarray, weight: float, seed: int, max_components: int = COMPONENTS[-1]) -> dict:
    """The latent term with a mixture of up to ``max_components`` Gaussians fitted to ``codes`` (``aemodel.latent``)."""
    return {**fit_mixture(codes, seed, tuple(k for k in COMPONENTS if k <= max_components)), "weight": weight}
