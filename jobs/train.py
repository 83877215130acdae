"""Train the autoencoder with Ray Train and write one model artefact.

Submit to a Ray cluster (from the repository root)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.train --data s3://bucket/train/ --out s3://bucket/models/ae-v1 \\
        --num-workers 4 --use-gpu --storage-path s3://bucket/ray-train

Locally: ``aescore train --data ./data/train --out ./model`` (starts a private local Ray).

Layers: ``train_step``/``eval_step`` are plain torch; ``train_loop_per_worker`` holds every
``ray.train`` call; ``run(cfg)`` builds datasets, fits preprocessing, trains, computes
the validation error distribution and saves the artefact; ``main()`` parses the CLI.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from fsspec.implementations.local import LocalFileSystem
from ray.train.torch import TorchTrainer

from aemodel import (AutoencoderConfig, ModelArtifact, Preprocessor, TabularAutoencoder, batch_loss,
                     check_schema, column_losses, load_artifact, resolve_columns, row_errors, save_artifact)
from jobs.config import config_to_dict
from aemodel.leakage import BloomFilter, id_like_columns
from aemodel.preprocess import partial_stats
from jobs.commit import claim_prefix
from jobs.datasets import ParquetInput, encode, explain_failure, hash_split, keep_split, open_parquet_input, split_cut
from jobs.errors import InputError, TrainingError
from jobs.manifest import fingerprint
from jobs.storage import (arrow_filesystem, check_no_overlap, normalize_storage_options, publish_pointer, redact_config,
                          url_to_fs)
from jobs.train_config import TrainConfig
from jobs.ray_runtime import ColumnStatsAggregate, RowBloomAggregate, aggregate_blocks, decode_bloom, ensure_ray
from jobs.report import training_report
from jobs.train_eval import TrainResult, assess, final_checkpoint, format_result, validation_reference


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


MODEL_INPUTS = ("x_num", "x_bin", "x_cat", "observed")


def _load_shard(shard, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The whole shard as tensors on ``device`` (one pass over it); None if it has no rows."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in MODEL_INPUTS}
    for batch in shard.iter_torch_batches(batch_size=65536, device=device, prefetch_batches=2):
        for k in MODEL_INPUTS:
            parts[k].append(batch[k])
    # An empty shard stays on the streaming path, where the empty-epoch check names the problem.
    return {k: torch.cat(v) for k, v in parts.items()} if parts["x_num"] else None


def _batches(source, cached: dict[str, torch.Tensor] | None, batch_size: int, device: torch.device,
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


def _load_state(checkpoint_dir: str, device: torch.device | str) -> dict:
    """A training checkpoint's state; weights_only=True, so nothing in it is unpickled as code."""
    return torch.load(Path(checkpoint_dir) / "state.pt", weights_only=True, map_location=device)


def _report(metrics: dict, rank: int, state: dict, extra_files: dict[str, dict] | None = None) -> None:
    """``ray.train.report`` with a checkpoint written by rank 0 (weights are replicated)."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            torch.save(state, Path(tmp) / "state.pt")
            for name, content in (extra_files or {}).items():
                (Path(tmp) / name).write_text(json.dumps(content))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train loop: epochs of train/validation, global metrics, early stopping, checkpoints.

    Every worker computes the same global losses (all-reduced), so every worker takes the
    same stop decision and calls ``ray.train.report`` the same number of times. The last
    checkpoint holds the best weights and the validation reference (``reference.json``).
    """
    torch.manual_seed(config["seed"])
    torch.set_num_threads(config["torch_threads"])
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(TabularAutoencoder(AutoencoderConfig(**config["model_config"])))
    raw_model = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    baselines = torch.tensor(config["baselines"], dtype=torch.float32, device=device)

    start_epoch, best_val, bad_epochs, history, attempt = 0, math.inf, 0, [], 0
    best_state = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resuming after a worker failure
        with checkpoint.as_directory() as d:
            state = _load_state(d, device)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state, history = state["best_model"], state["history"]
        start_epoch, best_val, bad_epochs = state["epoch"] + 1, state["best_val"], state["bad_epochs"]
        attempt = state.get("attempt", 0) + 1

    def snapshot(epoch: int) -> dict:
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "best_model": best_state,
                "history": history, "epoch": epoch, "best_val": best_val, "bad_epochs": bad_epochs,
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
    for epoch in range(start_epoch, config["epochs"] if not finished else start_epoch):
        t0 = time.perf_counter()
        tr_sum, tr_n = 0.0, 0
        if load_cache:
            cached, val_cached, load_cache = _load_shard(train_shard, device), _load_shard(val_data, device), False
        for batch in _batches(train_shard, cached, config["batch_size"], device, shuffle_seed=config["seed"] + epoch):
            n = batch["x_num"].shape[0]
            tr_sum += train_step(model, optimizer, batch, baselines) * n
            tr_n += n
        va_sum, va_n = 0.0, 0  # every worker sees the whole validation set: no all-reduce
        for batch in _batches(val_data, val_cached, 8192, device):
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
        if val_loss < best_val * (1.0 - config["min_delta"]):
            best_val, bad_epochs = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
        else:
            bad_epochs += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "seconds": time.perf_counter() - t0, "train_rows": int(tr_n), "val_rows": int(va_n),
                        "attempt": attempt})  # > 0: resumed from a checkpoint after a failure
        if rank == 0:  # one progress line per epoch in the driver's log
            print(f"epoch {epoch}: train_loss={train_loss:.5f} val_loss={val_loss:.5f} best={best_val:.5f} "
                  f"({history[-1]['seconds']:.2f}s)", flush=True)
        if bad_epochs >= config["patience"]:
            break
        if due:
            last_report = time.monotonic()
            _report({**history[-1], "best_val_loss": best_val}, rank, snapshot(epoch))

    raw_model.load_state_dict(best_state)
    reference, threshold = validation_reference(raw_model, val_data, device, baselines, config["threshold_quantile"],
                                                config["constant_outputs"], config["columns"], config["scale_floor"])
    final = {**history[-1], "best_val_loss": best_val, "finished": True} if history else {"finished": True}
    _report(final, rank, {**snapshot(max(epoch, start_epoch - 1)), "finished": True},
            {"reference.json": reference, "threshold.json": threshold})


# --- layer 3: the driver ----------------------------------------------------------------

def _run_storage(storage_path: str | None, options: dict) -> dict:
    """RunConfig storage arguments: object stores go through the same fsspec filesystem."""
    if storage_path is None:
        return {}
    fs, path = url_to_fs(storage_path, options)
    if isinstance(fs, LocalFileSystem):
        return {"storage_path": path}
    return {"storage_path": path, "storage_filesystem": arrow_filesystem(fs)}


def run(cfg: TrainConfig) -> TrainResult:
    """Train on ``cfg.data`` and write the artefact to ``cfg.out``. CPU-only unless ``use_gpu``."""
    t0 = time.perf_counter()
    options = normalize_storage_options(cfg.storage_options)
    check_no_overlap(cfg.out, {"--data": cfg.data, "--val-data": cfg.val_data}, options)
    train_in = open_parquet_input(cfg.data, options)
    specs = resolve_columns(train_in.schema, cfg.feature_columns or None, cfg.exclude_columns, cfg.column_types)
    for f in train_in.files:
        check_schema(f.schema, specs, f.uri)
    val_in = open_parquet_input(cfg.val_data, options, specs=specs) if cfg.val_data else None
    names = [s.name for s in specs]
    run_id = fingerprint({"config": _identity(cfg), "inputs": [(f.uri, f.size, f.etag) for f in train_in.files],
                          "val_inputs": [(f.uri, f.size, f.etag) for f in val_in.files] if val_in else None})
    existing = _committed_artifact(cfg.out, options)
    # Checked before training; the marker is written only with the artefact.
    claim_prefix(cfg.out, "model", options, adopt=existing is not None, write=False)
    if existing is not None and existing.run_id == run_id and not cfg.overwrite:
        print(f"{cfg.out} already holds the model of run {run_id}; reusing it (--overwrite retrains)", flush=True)
        return _result_from(existing, cfg.out, time.perf_counter() - t0, reused=True)
    if existing is not None and not cfg.overwrite:
        raise InputError(f"a model artefact from another run ({existing.run_id or 'unknown'}, version "
                         f"{existing.version}, created {existing.created_at}) is already at {cfg.out}; "
                         "pass --overwrite to replace it or choose another --out")

    ensure_ray(cfg.ray_address)
    ctx = ray.data.DataContext.get_current()
    # Errors raised in our UDFs reach the driver as themselves (see jobs/score.py).
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    try:
        return _fit_and_save(cfg, options, t0, train_in, val_in, specs, run_id, existing)
    except BaseException as e:
        for data in (train_in, val_in):
            explained = data and explain_failure(e, data, names, specs, lambda t: partial_stats(t, specs))
            if explained:
                raise explained from e
        raise
    finally:
        ctx.raise_original_map_exception = raise_original


def _fit_and_save(cfg: TrainConfig, options: dict, t0: float, train_in: ParquetInput, val_in: ParquetInput | None,
                  specs: list, run_id: str, existing: ModelArtifact | None) -> TrainResult:
    """Statistics, Ray Train fit, diagnostics, then the artefact (on a running Ray)."""
    names = [s.name for s in specs]
    stats, seen_rows, leakage = _fit_statistics(cfg, specs, train_in, val_in)
    pp = Preprocessor.fit(specs, stats, cfg.preprocess_config())  # training rows only: no leakage
    model_config = AutoencoderConfig(n_numeric=len(pp.numeric_names), n_binary=len(pp.binary_names),
                                     category_sizes=pp.category_sizes,
                                     hidden_dims=cfg.resolved_hidden_dims(pp.train_rows),
                                     latent_dim=cfg.resolved_latent_dim(len(specs)), activation=cfg.activation,
                                     dropout=cfg.dropout)
    if val_in is None:
        train_ds, val_ds = hash_split(train_in.read(names, specs), names, cfg.val_fraction)
    else:
        train_ds, val_ds = train_in.read(names, specs), val_in.read(names, specs)
    train_enc, val_enc = encode(train_ds, pp), encode(val_ds, pp)
    if cfg.materialize:
        train_enc, val_enc = train_enc.materialize(), val_enc.materialize()
        expected = train_in.num_rows + (val_in.num_rows if val_in else 0)
        if train_enc.count() + val_enc.count() != expected:  # free on materialized data
            raise TrainingError(f"read {train_enc.count() + val_enc.count()} rows but the input files hold "
                                f"{expected}; refusing to train on partial data")

    loop_config = {
        "model_config": model_config.to_dict(), "baselines": pp.baselines, "epochs": cfg.epochs,
        "batch_size": cfg.resolved_batch_size(pp.train_rows), "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "patience": cfg.patience, "min_delta": cfg.min_delta, "seed": cfg.seed,
        "torch_threads": max(1, int(cfg.cpus_per_worker)), "report_interval_s": 2.0,
        "threshold_quantile": cfg.quantile, "constant_outputs": pp.constant_outputs(), "columns": names,
        "scale_floor": cfg.scale_floor if cfg.scale_by_validation else None,
        # Each worker would hold its training shard and the whole validation set.
        "cache_shard": cfg.materialize and (train_enc.size_bytes() / cfg.num_workers + val_enc.size_bytes()
                                            <= cfg.cache_shard_mb * 2**20),
    }
    # Named by run id, so rerunning a crashed run resumes from its checkpoints; a forced
    # retrain (--overwrite) of the same run starts a fresh Ray Train run instead.
    run_name = cfg.run_name or (f"aescore-train-{run_id}" + (time.strftime("-%Y%m%d-%H%M%S") if cfg.overwrite else ""))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, **_run_storage(cfg.storage_path, options),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": train_enc, "val": val_enc},
        # Only the training set is sharded. Ray Train's shards are equal-sized (it drops
        # up to num_workers-1 rows), which is fine for SGD but not for validation: every
        # worker evaluates the whole validation set, so val_loss and the threshold are exact.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    state, reference, threshold = final_checkpoint(trainer.fit())
    if cfg.contamination is not None:
        threshold = {**threshold, "method": "contamination", "contamination": cfg.contamination}
    history = state["history"]
    metrics = assess(cfg, model_config, history, reference, threshold, leakage)
    failed = [c for c in metrics["diagnostics"] if c["status"] == "fail"]
    if failed:  # checked before anything is written: a failed run leaves no artefact
        raise TrainingError("; ".join(f"{c['check']}: {c['message']}" for c in failed))
    art = ModelArtifact(model_config=model_config, preprocessor=pp, state_dict=state["best_model"],
                        threshold=threshold, reference=reference, history=history,
                        train_config=redact_config(config_to_dict(cfg)), run_id=run_id, metrics=metrics,
                        training_rows=seen_rows, training_rows_info=leakage["training_rows"])
    art.extra_files = {"report.html": training_report(cfg.out, history, reference, threshold, metrics)}
    claim_prefix(cfg.out, "model", options, adopt=existing is not None)
    save_artifact(art, cfg.out, options)
    if cfg.publish_latest:
        publish_pointer(cfg.publish_latest, cfg.out, art.version, options)
    return _result_from(art, cfg.out, time.perf_counter() - t0)


def _fit_statistics(cfg: TrainConfig, specs: list, train_in, val_in) -> tuple[dict, BloomFilter, dict]:
    """Preprocessing statistics of the training rows and a Bloom filter of all rows seen.

    One Ray Data pass over the training input computes both; with a separate validation
    input, a second pass over it adds its rows and counts those already in training.
    """
    names = [s.name for s in specs]
    seen = BloomFilter.for_rows(train_in.num_rows + (val_in.num_rows if val_in else 0))
    shape = (seen.n_bits, seen.n_hashes)
    if val_in is None:
        keep_train = functools.partial(keep_split, columns=names, cut=split_cut(cfg.val_fraction), validation=False)
        agg = aggregate_blocks(train_in.read(names, specs), ColumnStatsAggregate(specs, keep_train),
                               RowBloomAggregate(specs, *shape))
        overlap = {"train_val_overlap_rows": 0, "method": "row-hash split: identical rows always share a side"}
    else:
        agg = aggregate_blocks(train_in.read(names, specs), ColumnStatsAggregate(specs), RowBloomAggregate(specs, *shape))
    seen, rows, _ = decode_bloom(agg["row_bloom"], *shape)
    if val_in is not None:
        val_agg = aggregate_blocks(val_in.read(names, specs), RowBloomAggregate(specs, *shape, against=seen))
        val_seen, val_rows, hits = decode_bloom(val_agg["row_bloom"], *shape)
        fpr = seen.false_positive_rate
        overlap = {"train_val_overlap_rows": hits, "train_val_overlap_fraction": hits / max(val_rows, 1),
                   "expected_false_matches": fpr * val_rows, "method": "Bloom filter of training row hashes"}
        seen.merge(val_seen)
        rows += val_rows
    stats = agg["column_stats"]
    if stats is None or stats["__rows__"]["n"] == 0:
        raise TrainingError("the training split is empty")
    leakage = {**overlap, "id_like_columns": id_like_columns(specs, stats),
               "training_rows": {"rows": rows, "false_positive_rate": seen.false_positive_rate}}
    return stats, seen, leakage


def _identity(cfg: TrainConfig) -> dict:
    """The options that define what is trained (not where or how it is launched)."""
    d = redact_config(config_to_dict(cfg))
    for key in ("out", "overwrite", "ray_address", "storage_path", "run_name", "max_failures", "storage_options",
                "publish_latest"):
        d.pop(key, None)
    return d


def _committed_artifact(uri: str, options: dict) -> ModelArtifact | None:
    """The artefact committed at ``uri``, None if there is none; a broken one is an error."""
    fs, path = url_to_fs(uri, options)
    if not fs.exists(path.rstrip("/") + "/_SUCCESS"):
        return None
    return load_artifact(uri, options)


def _result_from(art: ModelArtifact, uri: str, seconds: float, reused: bool = False) -> TrainResult:
    best = min(art.history, key=lambda h: h["val_loss"])
    return TrainResult(model_uri=uri, version=art.version, history=art.history, threshold=art.threshold["value"],
                       reference=art.reference, train_rows=best["train_rows"], val_rows=best["val_rows"],
                       wall_seconds=seconds, run_id=art.run_id, reused=reused, metrics=art.metrics)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.train``: parse flags, train, print a one-line result."""
    from jobs.cli import job_main

    return job_main(TrainConfig, run, format_result, argv, "aescore train", __doc__)


__all__ = ["TrainConfig", "TrainResult", "eval_step", "main", "run", "train_loop_per_worker", "train_step"]

if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that Ray pickles the UDFs and
    # the training loop as references to jobs.train, which every worker can import.
    from jobs.train import main as module_main

    sys.exit(module_main())
