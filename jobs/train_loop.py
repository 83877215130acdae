"""The training loop: pure torch steps (layer 1) and the per-worker Ray Train loop (layer 2).

``jobs.train`` (layer 3, the driver) builds the datasets and passes ``train_loop_per_worker``
to a ``TorchTrainer``; Ray pickles it by reference to this module, which every worker imports.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from aemodel import AutoencoderConfig, TabularAutoencoder, batch_loss, column_losses, row_errors
from aemodel.latent import MAX_CODES
from aemodel.marginal import MarginalCounter, marginal_fit
from jobs.errors import TrainingError
from jobs.progress import EpochProgress
from jobs.train_eval import validation_reference
from jobs.train_terms import LatentSample, LatentSums, latent_fit, latent_gaussian_fit, one_pass


# --- layer 1: pure torch ---------------------------------------------------------------

def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               baselines: torch.Tensor) -> float:
    """One optimizer step on an encoded batch; returns the batch's mean row error."""
    model.train()
    recon = model(batch["x_num"], batch["x_bin"], batch["x_cat"])
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


# --- layer 2: everything that talks to ray.train ----------------------------------------

def _global_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all workers (identity with one worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _gather_codes(codes: np.ndarray) -> np.ndarray:
    """Every worker's ``codes``, concatenated in rank order (the same array with one worker)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, codes)
        return np.concatenate(parts)
    return codes


MODEL_INPUTS = ("x_num", "x_bin", "x_cat", "observed")


def load_shard(shard, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The whole shard as tensors on ``device`` (one pass over it); None if it has no rows.

    A shard already held in memory (``jobs.train_local.TensorShard``) gives its tensors as
    they are: copying them batch by batch would hold the encoded data twice while training.
    """
    if hasattr(shard, "on"):
        tensors = shard.on(device)
        return tensors if tensors["x_num"].shape[0] else None
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in MODEL_INPUTS}
    for batch in shard.iter_torch_batches(batch_size=65536, device=device, prefetch_batches=2):
        for k in MODEL_INPUTS:
            parts[k].append(batch[k])
    # An empty shard stays on the streaming path, where the empty-epoch check names the problem.
    return {k: torch.cat(v) for k, v in parts.items()} if parts["x_num"] else None


def epoch_batches(source, cached: dict[str, torch.Tensor] | None, batch_size: int, device: torch.device,
             shuffle_seed: int | None = None):
    """Batches of a training shard or the validation set: from its in-memory copy when there
    is one (a full permutation when ``shuffle_seed`` is set), else streamed from Ray Data
    (shuffled through a local buffer when ``shuffle_seed`` is set).

    Every worker's training shard has the same number of rows (Ray Train splits equally),
    so every worker takes the same number of steps either way, as DDP requires.
    """
    if cached is None:
        shuffle = ({} if shuffle_seed is None else
                   {"local_shuffle_buffer_size": batch_size * 8, "local_shuffle_seed": shuffle_seed})
        yield from source.iter_torch_batches(batch_size=batch_size, device=device, prefetch_batches=2, **shuffle)
        return
    n = cached["x_num"].shape[0]
    order = (None if shuffle_seed is None else
             torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).to(device))
    for i in range(0, n, batch_size):
        idx = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
        yield {k: v[idx] for k, v in cached.items()}


def load_state(checkpoint_dir: str, device: torch.device | str) -> dict:
    """A training checkpoint's state; weights_only=True, so nothing in it is unpickled as code."""
    return torch.load(Path(checkpoint_dir) / "state.pt", weights_only=True, map_location=device)


def _report(metrics: dict, rank: int, state: dict, extra_files: dict[str, dict] | None = None,
            keep_dir: str | None = None) -> None:
    """``ray.train.report`` with a checkpoint written by rank 0 (weights are replicated).

    Ray Train copies a worker's checkpoint to its storage during ``report``, so the files
    can go to a temporary folder. In local mode (``keep_dir`` set) nothing is copied: the
    checkpoint stays in ``keep_dir``, which the driver removes after reading it.
    """
    def write(folder: Path) -> ray.train.Checkpoint | None:
        if rank != 0:
            return None
        torch.save(state, folder / "state.pt")
        for name, content in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(content))
        return ray.train.Checkpoint.from_directory(str(folder))

    if keep_dir:
        ray.train.report(metrics, checkpoint=write(Path(tempfile.mkdtemp(dir=keep_dir))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ray.train.report(metrics, checkpoint=write(Path(tmp)))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train loop: epochs of train/validation, global metrics, early stopping, checkpoints.

    Every worker computes the same global losses (all-reduced), so every worker takes the
    same stop decision and calls ``ray.train.report`` the same number of times. The last
    checkpoint holds the best weights and the validation reference (``reference.json``).
    """
    torch.manual_seed(config["seed"])
    torch.set_num_threads(config["torch_threads"])
    # In local mode (the driver trains) the device was decided on the driver: Ray's
    # get_device() there picks any visible GPU, even when --use-gpu was not given.
    local_device = config.get("device")
    device = torch.device(local_device) if local_device else ray.train.torch.get_device()
    model = TabularAutoencoder(AutoencoderConfig(**config["model_config"]))
    model = model.to(device) if local_device else ray.train.torch.prepare_model(model)
    raw_model = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    baselines = torch.tensor(config["baselines"], dtype=torch.float32, device=device)

    # best_val: the last loss that counted as progress (patience); lowest: the lowest loss,
    # whose weights are kept, so the artefact's best epoch is the epoch its weights come from.
    start_epoch, best_val, lowest, bad_epochs, history, attempt = 0, math.inf, math.inf, 0, [], 0
    best_state = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resuming after a worker failure
        with checkpoint.as_directory() as d:
            state = load_state(d, device)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state, history = state["best_model"], state["history"]
        start_epoch, best_val, bad_epochs = state["epoch"] + 1, state["best_val"], state["bad_epochs"]
        lowest = state.get("lowest", best_val)
        attempt = state.get("attempt", 0) + 1

    def snapshot(epoch: int) -> dict:
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "best_model": best_state,
                "history": history, "epoch": epoch, "best_val": best_val, "lowest": lowest, "bad_epochs": bad_epochs,
                "attempt": attempt}

    finished = False
    if checkpoint and state.get("finished"):
        finished = True  # a completed run restored by name: nothing left to train
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    rank = ray.train.get_context().get_world_rank()
    last_report = time.monotonic()
    epoch = start_epoch - 1
    # A shard that fits the budget is read once and shuffled in memory every epoch: Ray
    # Data's per-batch iterator costs more than a small model's step (bench/train_throughput.py).
    cached = val_cached = None
    load_cache = config["cache_shard"]
    progress = EpochProgress(config["epochs"], config.get("print_every", 1), config.get("progress_bar", False))
    for epoch in range(start_epoch, config["epochs"] if not finished else start_epoch):
        t0 = time.perf_counter()
        tr_sum, tr_n = 0.0, 0
        if load_cache:
            cached, val_cached, load_cache = load_shard(train_shard, device), load_shard(val_data, device), False
        for batch in epoch_batches(train_shard, cached, config["batch_size"], device, shuffle_seed=config["seed"] + epoch):
            n = batch["x_num"].shape[0]
            tr_sum += train_step(model, optimizer, batch, baselines) * n
            tr_n += n
        va_sum, va_n = 0.0, 0  # every worker sees the whole validation set: no all-reduce
        for batch in epoch_batches(val_data, val_cached, 8192, device):
            s, n = eval_step(raw_model, batch, baselines)
            va_sum, va_n = va_sum + s, va_n + n
        # Ray Train V2 takes one report per controller poll (~2 s), so reporting after every
        # short epoch would stall training: report when rank 0's clock says a poll is due
        # (shared through the all-reduce, so every worker agrees), and at the end.
        due = float(rank == 0 and time.monotonic() - last_report >= config["report_interval_s"])
        tr_sum, tr_n, due = _global_sums([tr_sum, tr_n, due], device)
        if tr_n == 0 or va_n == 0:
            raise TrainingError(f"no rows reached training (train={tr_n:.0f}, validation={va_n:.0f})")
        train_loss, val_loss = tr_sum / tr_n, va_sum / va_n
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingError(f"loss became {train_loss} (train) / {val_loss} (validation) at epoch {epoch}; "
                                "lower --learning-rate or check the data for extreme values")
        if val_loss < lowest:
            lowest = val_loss
            best_state = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
        if val_loss < best_val * (1.0 - config["min_delta"]):
            best_val, bad_epochs = val_loss, 0
        else:
            bad_epochs += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "seconds": time.perf_counter() - t0, "train_rows": int(tr_n), "val_rows": int(va_n),
                        "attempt": attempt})  # > 0: resumed from a checkpoint after a failure
        stop = bad_epochs >= config["patience"]
        if rank == 0:
            progress.epoch(history[-1], lowest, last=stop or epoch + 1 == config["epochs"])
        if stop:
            break
        if due:
            last_report = time.monotonic()
            _report({**history[-1], "best_val_loss": lowest}, rank, snapshot(epoch), keep_dir=config["local_dir"])

    progress.close()
    raw_model.load_state_dict(best_state)
    # The latent and marginal terms need every training row once: one pass feeds both.
    mc, max_components = raw_model.config, config.get("latent_components", 1)
    latent_acc = marginal_acc = None
    if config["latent_weight"] > 0 and max_components == 1:  # one Gaussian of every worker's codes (all-reduced)
        latent_acc = LatentSums(raw_model, mc.latent_dim)
    elif config["latent_weight"] > 0:  # a mixture fitted to a sample of every worker's training codes
        world = ray.train.get_context().get_world_size()
        latent_acc = LatentSample(raw_model, MAX_CODES // world, config["seed"] + rank)
    if config.get("marginal_weight", 0) > 0:  # every worker's counts of its training values, summed
        marginal_acc = MarginalCounter(mc.n_numeric, mc.n_binary, mc.category_sizes, config["clip_sigma"])
    one_pass(epoch_batches(train_shard, cached, 8192, device), [a for a in (latent_acc, marginal_acc) if a])
    latent = marginal = None
    if isinstance(latent_acc, LatentSums):
        latent = latent_gaussian_fit(_global_sums(latent_acc.result(), device), mc.latent_dim, config["latent_weight"])
    elif latent_acc is not None:
        # Every worker fits the same codes with the same seed, so all hold the same term.
        latent = latent_fit(_gather_codes(latent_acc.result()), config["latent_weight"], config["seed"],
                            max_components)
    if marginal_acc is not None:
        marginal = marginal_fit(_global_sums(marginal_acc.counts.tolist(), device), mc.n_numeric, mc.n_binary,
                                mc.category_sizes, config["clip_sigma"], config["marginal_weight"])
    reference, threshold = validation_reference(raw_model, val_data, device, baselines, config["threshold_quantile"],
                                                config["constant_outputs"], config["columns"], config["scale_floor"],
                                                latent, marginal)
    final = {**history[-1], "best_val_loss": lowest, "finished": True} if history else {"finished": True}
    _report(final, rank, {**snapshot(max(epoch, start_epoch - 1)), "finished": True},
            {"reference.json": reference, "threshold.json": threshold}, keep_dir=config["local_dir"])
