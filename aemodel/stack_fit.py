"""Many small models trained as one (a model bank's entity models): ``aemodel.training.fit_epochs``, stacked.

Each model keeps its own training: its rows, batch size, seeded batch order (as
``tensor_batches``), AdamW state, early stopping (``record_epoch``, the one home of its
rules) and lowest-loss weights. Models whose epochs have the same number of steps train
together (``aemodel.stack.StackedNetwork``): at each step every model takes its next batch,
padded to the largest batch of the stack with the padding masked out of its loss, and one
backward pass and one AdamW step update all of them. The loss is the sum of the models'
batch losses, so each model's gradient is its own; AdamW is elementwise, so a stacked
parameter's update is each model's own update. A stopped model's later updates are
discarded (its lowest-loss weights were kept), and once half of a stack has stopped the
rest is compacted. One step for a stack instead of one per model is what makes a bank of a
thousand entities train in minutes on a few CPUs (bench/entity_bank.py, ``cost``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from aemodel.errors import TrainingError
from aemodel.losses import column_losses, row_errors
from aemodel.model import TabularAutoencoder
from aemodel.stack import INPUTS, StackedNetwork, padded_chunks
from aemodel.training import FitState, record_epoch

STEP_ROWS = 16384
"""Most rows (all models' batches, padded) in one stacked step or validation pass."""


@dataclass
class FitJob:
    """One model's training: its encoded rows (``Preprocessor.transform``'s tensors), batch size and seed."""

    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    batch_size: int
    seed: int


def fit_stacked(model: TabularAutoencoder, jobs: list[FitJob], baselines: torch.Tensor, *, learning_rate: float,
                weight_decay: float, epochs: int, patience: int, min_delta: float,
                input_noise: torch.Tensor | None = None) -> list[FitState | TrainingError]:
    """Train one copy of ``model`` (its initial weights) per job; each job's ``FitState``, or its ``TrainingError``.

    A state's ``best_model`` holds the job's lowest-validation-loss weights, its history one
    record per epoch (``seconds``: the stack's epoch time shared among its running models).
    """
    out: list = [None] * len(jobs)
    by_steps: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        n = len(job.train["observed"])
        if n == 0 or len(job.val["observed"]) == 0:
            out[i] = TrainingError(f"no rows reached training (train={n}, validation={len(job.val['observed'])})")
            continue
        by_steps.setdefault(math.ceil(n / job.batch_size), []).append(i)
    for steps, same in by_steps.items():
        for chunk in padded_chunks([jobs[i].batch_size for i in same], max_cells=STEP_ROWS):
            picked = [same[j] for j in chunk]
            results = _fit_stack(model, [jobs[i] for i in picked], steps, baselines, learning_rate, weight_decay,
                                 epochs, patience, min_delta, input_noise)
            for i, r in zip(picked, results):
                out[i] = r
    return out


def _fit_stack(model: TabularAutoencoder, jobs: list[FitJob], steps: int, baselines: torch.Tensor, lr: float,
               weight_decay: float, epochs: int, patience: int, min_delta: float,
               noise: torch.Tensor | None) -> list[FitState | TrainingError]:
    device = jobs[0].train["x_num"].device
    e = len(jobs)
    template = TabularAutoencoder(model.config).to(device)
    params = {k: v.detach().to(device).unsqueeze(0).repeat(e, *[1] * v.dim()).requires_grad_(True)
              for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
    best = {k: v.detach().clone() for k, v in params.items()}  # by job
    states = [FitState(best_model={}) for _ in jobs]
    failed: dict[int, TrainingError] = {}
    done: set[int] = set()
    rows = list(range(e))  # the job of each row of the stack
    data = {k: torch.cat([j.train[k] for j in jobs]) for k in INPUTS}
    starts = torch.cumsum(torch.tensor([0] + [len(j.train["observed"]) for j in jobs[:-1]]), 0).tolist()
    width = max(j.batch_size for j in jobs)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        index, mask = _epoch_batches(jobs, rows, starts, steps, width, epoch, device)
        net = StackedNetwork(template, params)
        tr_sum = torch.zeros(len(rows), dtype=torch.float64, device=device)
        tr_n = torch.zeros(len(rows), dtype=torch.float64, device=device)
        for s in range(steps):
            batch = {k: v[index[:, s].reshape(-1)] for k, v in data.items()}
            m = mask[:, s].to(torch.float32)
            recon = net.forward(batch, width, training=True, input_noise=noise)
            err = row_errors(column_losses(recon, batch["x_num"], batch["x_bin"], batch["x_cat"], baselines),
                             batch["observed"]).view(len(rows), width)
            count = m.sum(1)
            per_model = (err * m).sum(1) / count.clamp_min(1.0)  # each model's batch loss, as batch_loss
            optimizer.zero_grad(set_to_none=True)
            per_model.sum().backward()
            optimizer.step()
            tr_sum += per_model.detach().double() * count
            tr_n += count
        va_sum, va_n = _validation_sums(net, jobs, rows, baselines, device)
        running = [r for r, j in enumerate(rows) if j not in done]
        seconds = (time.perf_counter() - t0) / max(len(running), 1)
        kept_rows, kept_jobs = [], []
        for r in running:
            j = rows[r]
            try:
                lowest, stop = record_epoch(states[j], epoch, float(tr_sum[r]), float(tr_n[r]), float(va_sum[r]),
                                            float(va_n[r]), seconds, patience, min_delta)
            except TrainingError as err_:
                failed[j] = err_
                done.add(j)
                continue
            if lowest:
                kept_rows.append(r)
                kept_jobs.append(j)
            if stop:
                done.add(j)
        if kept_rows:
            for k, v in params.items():
                best[k][kept_jobs] = v.detach()[kept_rows]
        if len(done) == e:
            break
        live = [r for r, j in enumerate(rows) if j not in done]
        if len(live) <= len(rows) // 2:
            params, optimizer = _compact(params, optimizer, live, lr, weight_decay)
            rows = [rows[r] for r in live]
    for j, state in enumerate(states):
        state.best_model = {k: v[j].clone() for k, v in best.items()}
    return [failed.get(j, state) for j, state in enumerate(states)]


def _epoch_batches(jobs: list[FitJob], rows: list[int], starts: list[int], steps: int, width: int, epoch: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, steps, width] each model's batches of the epoch (indices into the stack's rows) and their mask.

    Model ``j``'s step ``s`` is ``tensor_batches``' batch ``s``: its rows under the seeded
    permutation of ``seed + epoch``, ``batch_size`` at a time.
    """
    index = torch.zeros((len(rows), steps, width), dtype=torch.int64)
    mask = torch.zeros((len(rows), steps, width), dtype=torch.bool)
    for r, j in enumerate(rows):
        job = jobs[j]
        n, bs = len(job.train["observed"]), job.batch_size
        order = torch.zeros(steps * bs, dtype=torch.int64)
        order[:n] = torch.randperm(n, generator=torch.Generator().manual_seed(job.seed + epoch)) + starts[j]
        index[r, :, :bs] = order.view(steps, bs)
        mask[r, :, :bs] = (torch.arange(steps * bs) < n).view(steps, bs)
    return index.to(device), mask.to(device)


def _validation_sums(net: StackedNetwork, jobs: list[FitJob], rows: list[int], baselines: torch.Tensor,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each model's sum of validation row errors and row count (``eval_step``), all models at once."""
    sizes = [len(jobs[j].val["observed"]) for j in rows]
    data = {k: torch.cat([jobs[j].val[k] for j in rows]) for k in INPUTS}
    starts = torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0)
    sizes_t = torch.tensor(sizes)
    step = max(1, STEP_ROWS // len(rows))
    sums = torch.zeros(len(rows), dtype=torch.float64)
    counts = sizes_t.to(torch.float64)
    with torch.inference_mode():
        for v0 in range(0, max(sizes), step):
            pos = torch.arange(v0, v0 + step).unsqueeze(0)  # [1, step]
            m = pos < sizes_t.unsqueeze(1)
            index = torch.where(m, starts.unsqueeze(1) + pos, 0).reshape(-1).to(device)
            batch = {k: v[index] for k, v in data.items()}
            recon = net.forward(batch, step)
            err = row_errors(column_losses(recon, batch["x_num"], batch["x_bin"], batch["x_cat"], baselines),
                             batch["observed"]).view(len(rows), step).cpu()
            sums += torch.where(m, err, 0.0).double().sum(1)
    return sums, counts


def _compact(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, live: list[int], lr: float,
             weight_decay: float) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """The stack's ``live`` rows only: their parameters and their AdamW state (moments, step count)."""
    index = torch.tensor(live, device=next(iter(params.values())).device)
    n = next(iter(params.values())).shape[0]
    kept = {k: v.detach().index_select(0, index).requires_grad_(True) for k, v in params.items()}
    new = torch.optim.AdamW(list(kept.values()), lr=lr, weight_decay=weight_decay)
    for old_p, new_p in zip(params.values(), kept.values()):
        state = optimizer.state.get(old_p)
        if state:
            new.state[new_p] = {name: (t.index_select(0, index) if torch.is_tensor(t) and t.dim() and t.shape[0] == n
                                       else t.clone() if torch.is_tensor(t) else t) for name, t in state.items()}
    return kept, new
