"""The autoencoder a user writes by hand: a plain PyTorch MLP on min-max scaled inputs.

Architecture ``d-64-32-k-32-64-d`` with ReLU hidden layers and a linear output, trained
with MSE by Adam (learning rate 1e-3, batch 64), early-stopped on a random 20% validation
split of the training rows (patience 20 epochs, at most 200 epochs), best validation
weights restored. ``k`` is a quarter of the encoded input width, between 2 and 16. The
score of a row is its mean squared reconstruction error over the scaled columns.
"""

from __future__ import annotations

import copy

import numpy as np


def bottleneck(width: int) -> int:
    """Latent width ``k`` for ``width`` input columns: width / 4, in [2, 16]."""
    return int(min(16, max(2, width // 4)))


def mlp_ae_scores(a: np.ndarray, b: np.ndarray, seed: int, max_epochs: int = 200, patience: int = 20,
                  batch_size: int = 64, learning_rate: float = 1e-3, val_fraction: float = 0.2) -> np.ndarray:
    """Train on ``a`` and return the reconstruction error of every row of ``b``.

    Args:
        a: Training rows, min-max scaled with training statistics.
        b: Rows to score, scaled the same way (values may leave [0, 1]).
        seed: Seeds the validation split, the weights and the batch order.
        max_epochs: Most epochs.
        patience: Stop after this many epochs without a lower validation loss.
        batch_size: Rows per Adam step.
        learning_rate: Adam learning rate.
        val_fraction: Fraction of ``a`` held out for early stopping.

    Returns:
        Mean squared error per row of ``b``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(a))
        n_val = max(1, int(val_fraction * len(a)))
        x_val = torch.tensor(a[order[:n_val]], dtype=torch.float32)
        x_fit = torch.tensor(a[order[n_val:]], dtype=torch.float32)
        d, k = a.shape[1], bottleneck(a.shape[1])
        model = torch.nn.Sequential(
            torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
            torch.nn.Linear(32, k), torch.nn.ReLU(),
            torch.nn.Linear(k, 32), torch.nn.ReLU(), torch.nn.Linear(32, 64), torch.nn.ReLU(),
            torch.nn.Linear(64, d))
        opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
        loss_fn = torch.nn.MSELoss()
        best, best_state, since = float("inf"), copy.deepcopy(model.state_dict()), 0
        for _ in range(max_epochs):
            model.train()
            for idx in torch.randperm(len(x_fit)).split(batch_size):
                opt.zero_grad()
                loss = loss_fn(model(x_fit[idx]), x_fit[idx])
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val = loss_fn(model(x_val), x_val).item()
            if val < best:
                best, best_state, since = val, copy.deepcopy(model.state_dict()), 0
            else:
                since += 1
                if since >= patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            x_b = torch.tensor(b, dtype=torch.float32)
            return ((model(x_b) - x_b) ** 2).mean(1).numpy().astype(np.float64)
    finally:
        torch.set_num_threads(threads)
