"""The per-worker Ray Train loop (layer 2): every ``ray.train`` call, around ``aemodel.training``.

The steps, the epoch loop with early stopping, the score's terms and the validation
reference are pure torch in ``aemodel.training`` (layer 1); this module feeds them a
worker's batches, all-reduces their sums, and reports checkpoints. ``jobs.train`` (layer 3,
the driver) builds the datasets and passes ``train_loop_per_worker`` to a ``TorchTrainer``;
Ray pickles it by reference to this module, which every worker imports.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from aemodel import AutoencoderConfig, TabularAutoencoder
from aemodel.training import (MODEL_INPUTS, FitState, eval_step, fit_epochs, fit_score_terms, tensor_batches,
                              train_step, validation_reference)
from jobs.runtime.progress import EpochProgress

__all__ = ["MODEL_INPUTS", "epoch_batches", "eval_step", "load_shard", "load_state", "train_loop_per_worker",
           "train_step"]


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


def load_shard(shard, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The whole shard as tensors on ``device`` (one pass over it); None if it has no rows.

    A shard already held in memory (``jobs.training.local.TensorShard``) gives its tensors as
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
    yield from tensor_batches(cached, batch_size, shuffle_seed)


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
    """Ray Train loop: ``aemodel.training.fit_epochs`` on this worker's shard, then the score's terms and reference.

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

    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resuming after a worker failure
        with checkpoint.as_directory() as d:
            saved = load_state(d, device)
        raw_model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = FitState.from_checkpoint(saved)

    def snapshot(s: FitState) -> dict:
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), **s.to_dict()}

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    rank = ray.train.get_context().get_world_rank()
    # A shard that fits the budget is read once and shuffled in memory every epoch: Ray
    # Data's per-batch iterator costs more than a small model's step (bench/train_throughput.py).
    cache: dict = {"train": None, "val": None}
    if config["cache_shard"]:
        cache = {"train": load_shard(train_shard, device), "val": load_shard(val_data, device)}
    clock = {"last_report": time.monotonic(), "due": 0.0}

    def reduce(values: list[float]) -> list[float]:
        # Ray Train V2 takes one report per controller poll (~2 s), so reporting after every
        # short epoch would stall training: report when rank 0's clock says a poll is due,
        # shared through the same all-reduce as the losses, so every worker agrees.
        due = float(rank == 0 and time.monotonic() - clock["last_report"] >= config["report_interval_s"])
        *sums, clock["due"] = _global_sums([*values, due], device)
        return sums

    progress = EpochProgress(config["epochs"], config.get("print_every", 1), config.get("progress_bar", False))

    def on_epoch(s: FitState, stop: bool) -> None:
        if rank == 0:
            progress.epoch(s.history[-1], s.lowest, last=stop or s.epoch + 1 == config["epochs"])
        if clock["due"] and not stop:
            clock["last_report"] = time.monotonic()
            _report({**s.history[-1], "best_val_loss": s.lowest}, rank, snapshot(s), keep_dir=config["local_dir"])

    state = fit_epochs(
        model, optimizer, baselines, epochs=config["epochs"], patience=config["patience"],
        min_delta=config["min_delta"], state=state, reduce=reduce, on_epoch=on_epoch,
        input_noise=(torch.tensor(config["input_noise"], dtype=torch.float32, device=device)
                     if config.get("input_noise") else None),
        train_batches=lambda epoch: epoch_batches(train_shard, cache["train"], config["batch_size"], device,
                                                  shuffle_seed=config["seed"] + epoch),
        val_batches=lambda: epoch_batches(val_data, cache["val"], 8192, device))
    progress.close()
    # The latent and marginal terms need every training row once: one pass feeds both.
    latent, marginal, distribution = fit_score_terms(
        raw_model, epoch_batches(train_shard, cache["train"], 8192, device),
        latent_weight=config["latent_weight"], latent_components=config.get("latent_components", 1),
        marginal_weight=config.get("marginal_weight", 0), clip_sigma=config["clip_sigma"], seed=config["seed"],
        reduce=lambda v: _global_sums(v, device), gather=_gather_codes,
        workers=ray.train.get_context().get_world_size(), rank=rank)
    reference, threshold = validation_reference(
        raw_model, lambda: epoch_batches(val_data, cache["val"], 8192, device), device, baselines,
        config["threshold_quantile"], config["constant_outputs"], config["columns"], config["scale_floor"],
        latent, marginal, config.get("shared_unit_indices", ()))
    reference["columns_distribution"] = distribution
    final = {**state.history[-1], "best_val_loss": state.lowest, "finished": True} if state.history else \
        {"finished": True}
    state.finished = True
    _report(final, rank, snapshot(state), {"reference.json": reference, "threshold.json": threshold},
            keep_dir=config["local_dir"])
