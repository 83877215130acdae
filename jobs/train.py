"""Train the autoencoder with Ray Train and write one model artefact.

Submit to a Ray cluster (from the repository root)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.train --data s3://bucket/train/ --out s3://bucket/models/ae-v1 \\
        --num-workers 4 --use-gpu --storage-path s3://bucket/ray-train

Locally: ``aescore train --data ./data/train --out ./model`` (on one machine with data that fits in
memory no Ray is started: ``jobs.training.local``; otherwise a private local Ray).

Layers: ``train_step``/``eval_step`` are plain torch and ``train_loop_per_worker`` holds every
``ray.train`` call (both in ``jobs.training.loop``); ``run(cfg)`` builds datasets, fits preprocessing, trains, computes
the validation error distribution and saves the artefact; ``main()`` parses the CLI.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time

import ray
import ray.train
import torch
from fsspec.implementations.local import LocalFileSystem
from ray.train.torch import TorchTrainer

from aemodel import ModelArtifact, Preprocessor, load_artifact, resolve_columns, save_artifact
from aemodel.artifact import check_model_prefix, flat_layout_files
from aemodel.commit import OutputCommit
from aemodel.denoise import input_noise
from aemodel.preprocess import partial_stats
from jobs.runtime.config import config_to_dict
from jobs.lifecycle.tracking import check_tracking, track_training
from aemodel.statistics import fit_statistics
from jobs.data.datasets import ParquetInput, check_features, encode, explain_failure, hash_split, open_parquet_input
from jobs.runtime.signals import keep_signal_handlers
from jobs.runtime.errors import InputError, OutputError, TrainingError, describe
from jobs.data.manifest import fingerprint
from jobs.runtime.progress import is_terminal, is_verbose
from jobs.runtime.ray_runtime import alive_nodes, check_gpu, ensure_ray, on_one_machine, quiet_ray_console
from jobs.reports.html import training_report
from jobs.data.storage import (arrow_filesystem, check_no_overlap, check_pointer_target, check_shared_paths,
                          check_unchanged, check_uris, is_within, normalize_storage_options, publish_pointer,
                          redact_config, url_to_fs)
from jobs.training.bank import check_entity_columns, train_bank
from jobs.training.config import TrainConfig
from jobs.training.loop import eval_step, train_loop_per_worker, train_step
from aemodel.training import trained_artifact
from jobs.training.result import TrainResult, final_checkpoint, format_result, input_warnings
from jobs.training.local import LocalInput, input_bytes, local_shards
from jobs.training.stats import RayInput


# --- layer 3: the driver ----------------------------------------------------------------

def _run_storage(storage_path: str | None, options: dict) -> dict:
    """RunConfig storage arguments: object stores go through the same fsspec filesystem."""
    if storage_path is None:
        return {}
    fs, path = url_to_fs(storage_path, options)
    if isinstance(fs, LocalFileSystem):
        return {"storage_path": path}
    return {"storage_path": path, "storage_filesystem": arrow_filesystem(fs)}


MIN_ROWS = 10
"""Fewest training input rows: with fewer, the validation split may hold none."""


def run(cfg: TrainConfig, report_links: list[tuple[str, str]] = ()) -> TrainResult:
    """Train on ``cfg.data`` and write the artefact to ``cfg.out``. CPU-only unless ``use_gpu``.

    Args:
        cfg: The options.
        report_links: (text, relative href) shown at the top of the model's report.html
            (a sweep links its comparison page).
    """
    t0 = time.perf_counter()
    check_gpu(cfg.use_gpu, cfg.ray_address)
    options = normalize_storage_options(cfg.storage_options)
    check_uris({"--data": cfg.data, "--val-data": cfg.val_data, "--out": cfg.out,
                "--publish-latest": cfg.publish_latest, "--storage-path": cfg.storage_path}, options)
    check_no_overlap(cfg.out, {"--data": cfg.data, "--val-data": cfg.val_data}, options)
    tracking = check_tracking(cfg)  # the extra installed, the server answering: before any training
    if cfg.register and tracking is None:
        raise InputError(f"--register {cfg.register} needs an MLflow server: --tracking-uri or MLFLOW_TRACKING_URI")
    train_in = open_parquet_input(cfg.data, options)
    check_entity_columns(cfg.entity_columns, train_in)
    specs = resolve_columns(train_in.schema, cfg.feature_columns or None, [*cfg.exclude_columns, *cfg.entity_columns],
                            cfg.column_types)
    for f in train_in.files:
        check_features(f, specs)
    val_in = open_parquet_input(cfg.val_data, options, specs=specs) if cfg.val_data else None
    if val_in is not None:
        check_entity_columns(cfg.entity_columns, val_in, "--val-data")
    if train_in.num_rows < MIN_ROWS:  # bad input, said before Ray starts (the loop would find no rows to split)
        raise InputError(f"--data {cfg.data}: {train_in.num_rows} row(s); training needs at least {MIN_ROWS}, "
                         "part of them held out for validation")
    names = [s.name for s in specs]
    run_id = fingerprint({"config": _identity(cfg), "inputs": [(f.uri, f.size, f.etag) for f in train_in.files],
                          "val_inputs": [(f.uri, f.size, f.etag) for f in val_in.files] if val_in else None})
    # The pointer as it is now: the model commits only if no other run commits here first,
    # so two trainings into one --out cannot both report success (docs/reliability.md).
    commit = OutputCommit(cfg.out, options, kind="model")
    commit.observe()
    existing = load_artifact(cfg.out, options) if check_model_prefix(cfg.out, options) else None
    if cfg.publish_latest:
        check_pointer_target(cfg.publish_latest, options)
        if is_within(cfg.publish_latest, cfg.out, options):  # the commit would own (and clean up) that path
            raise InputError(f"--publish-latest {cfg.publish_latest} lies inside --out {cfg.out}; the pointer file "
                             "must be outside the model's folder (e.g. beside it: models/LATEST.json)")
    if existing is not None and existing.run_id == run_id and not cfg.overwrite:
        print(f"{cfg.out} already holds the model of run {run_id}; reusing it "
              "(--overwrite retrains; --train.overwrite in a sweep)", flush=True)
        if cfg.publish_latest:  # a run that died after saving, rerun: finish what it started
            publish_pointer(cfg.publish_latest, cfg.out, existing.version, options)
        return track_training(cfg, tracking, existing, _result_from(existing, cfg.out, time.perf_counter() - t0,
                                                                    reused=True), options)
    if existing is not None and not cfg.overwrite:
        raise InputError(f"a model artefact from another run ({existing.run_id or 'unknown'}, version "
                         f"{existing.version}, created {existing.created_at}) is already at {cfg.out}; "
                         "pass --overwrite (--train.overwrite in a sweep) to replace it or choose another --out")

    local = cfg.resolved_local_data(on_one_machine(cfg.ray_address), input_bytes([train_in, val_in], len(specs)))
    if local:
        nodes = 1
        if not is_verbose():
            quiet_ray_console()  # Ray Train's local mode logs every report at INFO (ensure_ray does this otherwise)
    else:
        ensure_ray(cfg.ray_address)
        # Ray Data tasks on every node read the inputs; Train workers write checkpoints to
        # --storage-path (Ray's default, ~/ray_results, is node-local). The artefact is written
        # by this driver, so a local --out is fine.
        nodes = alive_nodes()
        check_shared_paths({"--data": cfg.data, "--val-data": cfg.val_data, "--storage-path": cfg.storage_path},
                           nodes, cfg.shared_local_paths, options)
        if cfg.storage_path is None:  # Ray's default is each node's own home folder, never a shared mount
            check_shared_paths({"--storage-path": "~/ray_results (Ray's default)"}, nodes, False, options)
    ctx = ray.data.DataContext.get_current()
    # Errors raised in our UDFs reach the driver as themselves (see jobs/score.py).
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    try:
        art, result = _fit_and_save(cfg, options, t0, train_in, val_in, specs, run_id, commit, nodes, local,
                                    report_links)
    except BaseException as e:
        if commit.committed:  # only an interrupt gets here after the swap: the model is complete and stays
            e.add_note(f"{cfg.out} committed this run's model ({commit.run_uri}) before the interrupt")
            raise
        if not isinstance(e, Exception):
            raise  # an interrupt: no file to blame
        for data in (train_in, val_in):
            explained = data and explain_failure(e, data, names, specs, lambda t: partial_stats(t, specs))
            if explained:
                raise explained from e
        raise
    finally:
        ctx.raise_original_map_exception = raise_original
    return track_training(cfg, tracking, art, result, options)


def _fit_and_save(cfg: TrainConfig, options: dict, t0: float, train_in: ParquetInput, val_in: ParquetInput | None,
                  specs: list, run_id: str, commit: OutputCommit, nodes: int, local: bool,
                  report_links: list[tuple[str, str]] = ()) -> tuple[ModelArtifact, TrainResult]:
    """Statistics, Ray Train fit, diagnostics, then the artefact (on a running Ray unless ``local``)."""
    names = [s.name for s in specs]
    if local:  # each input read once into memory; every later step reads these tables
        train_src, val_src = LocalInput(train_in, specs), val_in and LocalInput(val_in, specs)
    else:
        train_src, val_src = RayInput(train_in, specs), val_in and RayInput(val_in, specs)
    stats, seen_rows, leakage = fit_statistics(cfg, specs, train_src, val_src)
    pp = Preprocessor.fit(specs, stats, cfg.preprocess_config())  # training rows only: no leakage
    model_config = cfg.model_config(pp)
    if local:
        train_enc, val_enc = local_shards(pp, names, train_src, val_src, cfg.val_fraction)
        train_src = val_src = None  # the raw tables are not needed while training
    elif val_in is None:
        train_enc, val_enc = (encode(d, pp) for d in hash_split(train_in.read(names, specs), names, cfg.val_fraction))
    else:
        train_enc, val_enc = encode(train_in.read(names, specs), pp), encode(val_in.read(names, specs), pp)
    if cfg.materialize and not local:
        train_enc, val_enc = train_enc.materialize(), val_enc.materialize()
    if cfg.materialize or local:
        expected = train_in.num_rows + (val_in.num_rows if val_in else 0)
        if train_enc.count() + val_enc.count() != expected:  # free on materialized data
            raise TrainingError(f"read {train_enc.count() + val_enc.count()} rows but the input files hold "
                                f"{expected}; refusing to train on partial data")

    loop_config = {
        "model_config": model_config.to_dict(), "baselines": pp.baselines, "epochs": cfg.epochs,
        "batch_size": cfg.resolved_batch_size(pp.train_rows, cfg.num_workers), "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay, "patience": cfg.patience, "min_delta": cfg.min_delta, "seed": cfg.seed,
        # One thread per reserved CPU on every path. Not every core on the local path: small
        # models gain nothing from more intra-op threads, and two jobs sharing a machine
        # with a thread per core each stalled for seconds per epoch (bench/RESULTS.md,
        # train_throughput).
        "torch_threads": max(1, int(cfg.cpus_per_worker)), "threshold_quantile": cfg.quantile,
        "latent_weight": cfg.resolved_latent_weight(len(specs)), "latent_components": cfg.latent_components,
        "marginal_weight": cfg.marginal_weight, "clip_sigma": cfg.clip_sigma,
        "constant_outputs": pp.constant_outputs(), "columns": names,
        "scale_floor": cfg.scale_floor if cfg.scale_by_validation else None,
        "input_noise": input_noise(pp, cfg.input_noise) if cfg.input_noise else None,
        "shared_unit_indices": pp.shared_unit_indices,
        # Each worker would hold its training shard and the whole validation set.
        "cache_shard": local or cfg.materialize and (train_enc.size_bytes() / cfg.num_workers
                                                     + val_enc.size_bytes() <= cfg.cache_shard_mb * 2**20),
    }
    state, reference, threshold, run_folder = _fit(cfg, options, loop_config, run_id, {"train": train_enc, "val": val_enc},
                                       in_process=local or cfg.resolved_in_process(nodes == 1))
    for data in (train_in, val_in):  # a file replaced while training read it: not the data that was checked
        if data is not None:
            check_unchanged(data.fs, data.files)
    noted = input_warnings(cfg, {"--data": train_in, "--val-data": val_in}, train_in.schema, specs, stats, pp)
    art = trained_artifact(cfg, model_config, pp, state["best_model"], state["history"], reference, threshold,
                           leakage, seen_rows, warnings=noted, train_config=redact_config(config_to_dict(cfg)),
                           run_id=run_id)
    if cfg.entity_columns:  # the entity models go into the run folder before the global model commits it
        commit.begin(adopt=bool(flat_layout_files(commit.fs, commit.path)))
        try:
            ensure_ray(cfg.ray_address)
            art.bank = train_bank(cfg, art, train_in, val_in, commit, int(ray.cluster_resources().get("CPU", 1)))
        except BaseException:
            with contextlib.suppress(Exception):
                commit.abort()
            raise
    # The report sits two folders below the prefix (runs/<run>/); the links are relative to the prefix.
    art.extra_files = {"report.html": training_report(cfg.out, art.history, reference, art.threshold, art.metrics,
                                                         [(text, f"../../{href}") for text, href in report_links],
                                                         art.bank)}
    save_artifact(art, cfg.out, options, commit=commit)
    if cfg.publish_latest:
        try:
            publish_pointer(cfg.publish_latest, cfg.out, art.version, options)
        except Exception as e:  # noqa: BLE001 - the model is committed; the error says so
            raise OutputError(f"the model was committed at {cfg.out} (version {art.version}), but --publish-latest "
                              f"{cfg.publish_latest} was not written: {describe(e)}; rerun the same command to "
                              "publish it") from e
    if run_folder is not None:  # its checkpoints only served a resume; the artefact now holds the model
        with contextlib.suppress(OSError):
            run_folder[0].delete_dir(run_folder[1])
        if cfg.storage_path is None:
            _remove_empty_default_folder()
    return art, _result_from(art, cfg.out, time.perf_counter() - t0, warnings=commit.warnings)


def _fit(cfg: TrainConfig, options: dict, loop_config: dict, run_id: str, datasets: dict,
         in_process: bool) -> tuple[dict, dict, dict, tuple | None]:
    """One Ray Train run; returns the final checkpoint's (state, reference, threshold) and the run's folder.

    The folder, (pyarrow filesystem, path), is the Ray Train run's checkpoints under
    ``--storage-path``, for the caller to delete once the artefact is saved; None when the
    run trained in this process (its temporary folder is gone already) or ``--run-name``
    named it (a folder the user chose is left alone).

    ``in_process`` (decided by the caller, once): one CPU worker on a single node gains
    nothing from its own actor but start-up time (bench/train_wall.py), so it trains in
    this process (Ray Train's local mode), on the device chosen here, keeping its
    checkpoint in a temporary folder.
    """
    threads, local_dir = torch.get_num_threads(), None
    try:
        if in_process:
            local_dir = tempfile.mkdtemp(prefix="aescore-train-")
        # In local mode nothing resumes from a checkpoint: only the final report writes one.
        loop_config = {**loop_config, "local_dir": local_dir, "report_interval_s": math.inf if in_process else 2.0,
                       "device": ("cuda" if cfg.use_gpu else "cpu") if in_process else None,
                       # An epoch line every few epochs (every one with -v); a bar only when
                       # this process trains and prints to a terminal.
                       "print_every": 1 if is_verbose() else max(1, cfg.epochs // 20),
                       "progress_bar": in_process and is_terminal() and not is_verbose()}
        # Named by run id, so rerunning a crashed run resumes from its checkpoints; a forced
        # retrain (--overwrite) of the same run starts a fresh Ray Train run instead.
        run_name = cfg.run_name or (f"aescore-train-{run_id}" +
                                    (time.strftime("-%Y%m%d-%H%M%S") if cfg.overwrite else ""))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=(ray.train.ScalingConfig(num_workers=0) if in_process else
                            ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                                    resources_per_worker={**cfg.worker_resources,
                                                                          "CPU": cfg.cpus_per_worker})),
            run_config=ray.train.RunConfig(
                name=run_name, **_run_storage(cfg.storage_path, options),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
            datasets=datasets,
            # Only the training set is sharded. Ray Train's shards are equal-sized (it drops
            # up to num_workers-1 rows), which is fine for SGD but not for validation: every
            # worker evaluates the whole validation set, so val_loss and the threshold are exact.
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        )
        try:
            with keep_signal_handlers():  # Ray Train's own SIGINT handler ends the run without a word
                result = trainer.fit()
        except KeyboardInterrupt:  # Interrupted, or Ray's own after an interrupted wait
            _remove_default_run_folder(cfg, run_name, in_process)
            raise
        own_folder = not in_process and not cfg.run_name
        return (*final_checkpoint(result), (result.filesystem, result.path) if own_folder else None)
    finally:
        torch.set_num_threads(threads)  # in local mode the loop set them in this process
        if local_dir:
            shutil.rmtree(local_dir, ignore_errors=True)


def _remove_default_run_folder(cfg: TrainConfig, run_name: str, in_process: bool) -> None:
    """After an interrupt: delete the run's checkpoints if they sit in Ray's default folder (~/ray_results).

    A run stopped on purpose leaves nothing behind there; with ``--storage-path`` or
    ``--run-name`` the checkpoints stay, so that a rerun resumes from them (a preempted node).
    """
    if in_process or cfg.storage_path or cfg.run_name:
        return
    shutil.rmtree(os.path.join(RAY_DEFAULT_STORAGE, run_name), ignore_errors=True)
    _remove_empty_default_folder()


RAY_DEFAULT_STORAGE = os.path.expanduser("~/ray_results")
"""Where Ray Train keeps a run's checkpoints without --storage-path."""


def _remove_empty_default_folder() -> None:
    """Ray creates ~/ray_results for a run; once the run's own folder is gone, an empty one goes too."""
    with contextlib.suppress(OSError):  # not empty (other runs, the user's): stays
        os.rmdir(RAY_DEFAULT_STORAGE)


def _identity(cfg: TrainConfig) -> dict:
    """The options that define what is trained (not where or how it is launched)."""
    d = redact_config(config_to_dict(cfg))
    for key in ("out", "overwrite", "ray_address", "storage_path", "run_name", "max_failures", "storage_options",
                "publish_latest", "in_process", "local_data", "shared_local_paths", "worker_resources",
                "tracking_uri", "experiment", "register"):
        d.pop(key, None)
    return d


def _result_from(art: ModelArtifact, uri: str, seconds: float, reused: bool = False,
                 warnings: list[str] = ()) -> TrainResult:
    best = min(art.history, key=lambda h: h["val_loss"])
    return TrainResult(model_uri=uri, version=art.version, history=art.history, threshold=art.threshold["value"],
                       reference=art.reference, train_rows=best["train_rows"], val_rows=best["val_rows"],
                       wall_seconds=seconds, run_id=art.run_id, reused=reused, metrics=art.metrics,
                       artifact_uri=art.location or uri, warnings=list(warnings), bank=art.bank)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.train``: parse flags, train, print a one-line result."""
    from jobs.runtime.entry import job_main

    return job_main(TrainConfig, run, format_result, argv, "aescore train", __doc__)


__all__ = ["TrainConfig", "TrainResult", "eval_step", "main", "run", "train_loop_per_worker", "train_step"]

if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that Ray pickles the UDFs and
    # the training loop as references to importable modules (jobs.train, jobs.training.loop).
    from jobs.train import main as module_main

    from jobs.runtime.entry import run_entry_point

    run_entry_point(module_main)
