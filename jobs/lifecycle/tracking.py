"""MLflow tracking and registry: optional (the ``mlflow`` extra), imported only when a tracking URI is set.

``aescore train`` logs one MLflow run per model version: every resolved option as a param,
the per-epoch training and validation loss as metrics with steps, the diagnostics and the
threshold as metrics and tags, report.html, and a copy of the aescore artefact (under
``aescore-model``). ``--register NAME`` adds a registry version whose source is that copy,
so a version stays readable when a later training into the same ``--out`` replaces its run
folder. A rerun of a committed model finds its MLflow run by the ``aescore.version`` tag
instead of logging a second one. ``aescore score`` and ``aescore nightly`` log a run each
with the summary (and the night's drift figures and alerts).

``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` resolve in ``jobs.lifecycle.registry``.

The client is ``mlflow-skinny`` (no server, no pyarrow pin); the tracking server is the
user's (cluster/README.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import ClassVar

from fsspec.implementations.local import LocalFileSystem

from aemodel.store import url_to_fs
from jobs.runtime.errors import InputError

EXTRA_HINT = "pip install 'aescore[mlflow]'"
ARTIFACT_PATH = "aescore-model"
"""Where a training run keeps its copy of the artefact in MLflow."""
VERSION_TAG = "aescore.version"
ARTIFACT_URI_TAG = "aescore.artifact_uri"
_PARAMS_PER_CALL, _METRICS_PER_CALL, _VALUE_CHARS = 100, 1000, 6000


@dataclass(kw_only=True)
class TrackingOptions:
    """MLflow tracking (the mlflow extra)"""

    ADVANCED: ClassVar[tuple[str, ...]] = ("experiment",)
    """Listed under "Advanced" in --help."""

    tracking_uri: str | None = None
    """MLflow tracking server, e.g. http://mlflow:5000 (default: MLFLOW_TRACKING_URI if set); unset: nothing is logged and MLflow is never imported. Needs pip install 'aescore[mlflow]'."""
    experiment: str = "aescore"
    """MLflow experiment the runs go to (created if missing)."""


def resolved_tracking_uri(flag: str | None) -> str | None:
    """The tracking server to log to: the flag, else ``MLFLOW_TRACKING_URI``; None: no tracking."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or None


def client(tracking_uri: str, source: str = "--tracking-uri"):
    """An ``MlflowClient`` for ``tracking_uri``; one ``error:`` line (exit 2) naming the extra without MLflow."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise InputError(f"MLflow tracking ({tracking_uri}, from {source}) needs the mlflow extra: {EXTRA_HINT}") from e
    from jobs.runtime.progress import is_verbose

    # The job prints its own line naming the run; MLflow's run links and INFO lines come with -v.
    if not is_verbose():
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def check_tracking(opts: TrackingOptions) -> str | None:
    """Before any work: the tracking URI to use (None: no tracking), MLflow importable and the server answering."""
    uri = resolved_tracking_uri(opts.tracking_uri)
    if uri is None:
        return None
    c = client(uri, "--tracking-uri" if opts.tracking_uri else "MLFLOW_TRACKING_URI")
    try:
        _experiment_id(c, opts.experiment)
    except Exception as e:  # noqa: BLE001 - any transport or server error: say where
        raise InputError(f"--tracking-uri {uri}: the MLflow server did not answer ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]})") from e
    return uri


def _experiment_id(c, name: str) -> str:
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return c.create_experiment(name)
    except Exception:  # noqa: BLE001 - another run created it first
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


NESTED_CONFIGS = ("score", "train")
"""A nightly's scoring options and a sweep's training template: their options become ``score.<option>`` params."""


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A (redacted) config as MLflow params: nested configs' keys joined by ``.``, every value as JSON text.

    Dicts keyed by the user's names (column types, storage options) stay one JSON value:
    a column name need not be a valid MLflow key.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        if key in NESTED_CONFIGS and isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            if key == "tracking_uri":  # a user:password@ in the URL is never logged
                text = re.sub(r"//[^/@]*@", "//***@", text)
            out[f"{prefix}{key}"] = text[:_VALUE_CHARS]
    return out


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in a key (it allows letters, digits, ``_-. :/``) as ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def _log(c, run_id: str, params: dict[str, str] = None, metrics: list[tuple[str, float, int]] = (),
         tags: dict[str, str] = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    items = list((params or {}).items())
    for i in range(0, len(items), _PARAMS_PER_CALL):
        c.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + _PARAMS_PER_CALL]])
    finite = [(k, float(v), s) for k, v, s in metrics if v is not None and math.isfinite(float(v))]
    for i in range(0, len(finite), _METRICS_PER_CALL):
        c.log_batch(run_id, metrics=[Metric(k, v, now, s) for k, v, s in finite[i:i + _METRICS_PER_CALL]])
    if tags:
        c.log_batch(run_id, tags=[RunTag(k, str(v)[:_VALUE_CHARS]) for k, v in tags.items()])


def _find_run(c, experiment_id: str, kind: str, tag: str, value: str) -> str | None:
    """The finished run of this ``kind`` whose ``tag`` is ``value`` (tagged last, so it holds everything)."""
    runs = c.search_runs([experiment_id], filter_string=f"tags.`aescore.kind` = '{kind}' and tags.`{tag}` = '{value}'",
                         max_results=1)
    return runs[0].info.run_id if runs else None


def training_metrics(history: list[dict], metrics: dict, threshold: dict) -> tuple[list, dict]:
    """Per-epoch losses with steps, the diagnostics' figures, the threshold: (metrics, tags)."""
    out = [(k, h[k], int(h["epoch"])) for h in history for k in ("train_loss", "val_loss") if k in h]
    for k in ("train_loss", "val_loss", "mean_baseline_val_loss", "best_epoch", "epochs_run"):
        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool):
            out.append((f"best.{k}", metrics[k], 0))
    tags = {}
    for check in metrics.get("diagnostics") or []:
        tags[f"diagnostic.{check['check']}"] = check["status"]
        for name, value in check.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((f"diagnostic.{check['check']}.{name}", value, 0))
    out += [("threshold", threshold.get("value"), 0), ("threshold.validation_fpr", threshold.get("validation_fpr"), 0)]
    tags.update({"threshold_method": str(threshold.get("method")), "warnings": str(len(metrics.get("warnings") or [])),
                 "stopped_early": str(metrics.get("stopped_early"))})
    return out, tags


def log_training(uri: str, opts: TrackingOptions, config: dict, art, artifact_uri: str, model_uri: str,
                 storage_options: dict | None, register: str | None) -> dict:
    """Log a committed model (its ``ModelArtifact`` and where it lies) once; register it under ``register``.

    Returns ``run_id``, ``experiment_id``, ``model_version`` (None without ``register``).
    """
    c = client(uri)
    exp = _experiment_id(c, opts.experiment)
    run_id = _find_run(c, exp, "train", VERSION_TAG, art.version)
    if run_id is None:
        run_id = c.create_run(exp, run_name=f"train-{art.version}", tags={"aescore.kind": "train"}).info.run_id
        try:
            metrics, tags = training_metrics(art.history, art.metrics or {}, art.threshold)
            _log(c, run_id, flat_params(config), metrics,
                 {**tags, ARTIFACT_URI_TAG: artifact_uri, "aescore.model_uri": model_uri})
            fs, path = url_to_fs(artifact_uri, storage_options)
            with tempfile.TemporaryDirectory(prefix="aescore-mlflow-") as tmp:
                local = path if isinstance(fs, LocalFileSystem) else os.path.join(tmp, ARTIFACT_PATH)
                if local != path:  # on object storage: a local copy to upload (a local artefact is read in place)
                    _download_folder(fs, path, local)
                c.log_artifacts(run_id, local, ARTIFACT_PATH)
                if os.path.exists(os.path.join(local, "report.html")):
                    c.log_artifact(run_id, os.path.join(local, "report.html"))
            # Tagged last: a run found by this tag holds everything above.
            _log(c, run_id, tags={VERSION_TAG: art.version})
            c.set_terminated(run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters, not this one
                c.set_terminated(run_id, "FAILED")
            raise
    version = register_version(c, register, run_id, art.version) if register else None
    return {"run_id": run_id, "experiment_id": exp, "registered_model": register, "model_version": version}


def track_training(cfg, uri: str | None, art, result, storage_options: dict | None):
    """``result`` (a ``TrainResult``) with its MLflow run and registry version, once logged (``log_training``).

    The model is committed before this runs: a failure here says so, and the same command
    run again reuses the model and logs it.
    """
    if uri is None:
        return result
    from jobs.runtime.config import config_to_dict
    from jobs.runtime.errors import OutputError, describe
    from jobs.data.storage import redact_config

    try:
        result.tracking = log_training(uri, cfg, redact_config(config_to_dict(cfg)), art, result.artifact_uri,
                                       result.model_uri, storage_options, cfg.register)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - the model is committed; the error says so
        raise OutputError(f"the model was committed at {result.model_uri} (version {art.version}), but MLflow at "
                          f"{uri} did not take it: {describe(e)}; rerun the same command to log it") from e
    return result


def register_version(c, name: str, run_id: str, aescore_version: str) -> str:
    """The registry version of ``name`` holding this run's artefact copy (created once)."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(e, "error_code", "")) + str(e):
            raise
    for mv in c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return str(mv.version)
    source = c.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + ARTIFACT_PATH
    mv = c.create_model_version(name, source, run_id=run_id, tags={VERSION_TAG: aescore_version})
    return str(mv.version)


def _log_files(c, run_id: str, folder: str, names: tuple[str, ...], storage_options: dict | None) -> None:
    fs, path = url_to_fs(folder, storage_options)
    with tempfile.TemporaryDirectory(prefix="aescore-mlflow-") as tmp:
        for name in names:
            remote = path.rstrip("/") + "/" + name
            if fs.exists(remote):
                fs.get_file(remote, os.path.join(tmp, name))
        c.log_artifacts(run_id, tmp)


def _download_folder(fs, path: str, local: str) -> None:
    os.makedirs(local, exist_ok=True)
    for remote in fs.find(path):
        rel = remote[len(path.rstrip("/")) + 1:]
        target = os.path.join(local, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get_file(remote, target)


REPORT_FILES = ("report.html", "summary.json", "drift.html", "drift.json", "comparison.json")
"""A committed scoring run's (or night's) files that its MLflow run keeps as artefacts, where present."""


def log_scoring(uri: str, opts: TrackingOptions, kind: str, config: dict, summary: dict,
                drift: dict | None = None, storage_options: dict | None = None) -> str:
    """One run for a committed scoring run (``kind`` "score") or night ("nightly"), logged once.

    Params: the options; metrics: rows, anomaly count and rate, the score's quantiles, the
    share of drifted columns and, for a night, PSI, KS, their noise levels, the anomaly rate
    against validation's and each column's PSI; tags: the model version, the run's URI, the
    alerts. A rerun of a committed run finds its MLflow run by the ``aescore.run_id`` tag.
    """
    c = client(uri)
    exp = _experiment_id(c, opts.experiment)
    key = str(summary.get("run_id", ""))
    found = _find_run(c, exp, kind, "aescore.run_id", key)
    if found is not None:
        return found
    run_id = c.create_run(exp, run_name=f"{kind}-{drift['date'] if drift else key}",
                          tags={"aescore.kind": kind}).info.run_id
    try:
        metrics = [(k, summary.get(k), 0) for k in ("row_count", "anomaly_count", "anomaly_rate")]
        metrics += [(f"quantile.{q}", v, 0) for q, v in (summary.get("quantiles") or {}).items()]
        metrics.append(("column_drift.drifted_share", (summary.get("column_drift") or {}).get("drifted_share"), 0))
        chal = summary.get("challenger") or {}
        if chal:
            metrics += [("challenger.anomaly_rate", chal.get("anomaly_rate"), 0),
                        ("challenger.spearman", chal.get("spearman"), 0),
                        ("challenger.top_rows_shared", chal.get("top_rows_shared"), 0),
                        ("challenger.flagged_jaccard", (chal.get("flagged") or {}).get("jaccard"), 0)]
            metrics += [(f"challenger.reference_auroc.{k}", v, 0) for k, v in (chal.get("reference_auroc") or {}).items()]
        model = summary.get("model") or {}
        tags = {"aescore.model_version": model.get("version", ""), "aescore.run_uri": summary.get("run_uri", ""),
                "aescore.input": (summary.get("input") or {}).get("uri", "")}
        if model.get("registry"):
            tags["aescore.registry_uri"] = model["registry"]["registry_uri"]
            tags["aescore.registry_version"] = f"{model['registry']['name']}/{model['registry']['version']}"
        if drift is not None:
            vs = drift.get("vs_validation") or {}
            metrics += [(f"drift.{k}", vs.get(k), 0)
                        for k in ("psi", "ks", "psi_noise", "ks_noise", "anomaly_rate_ratio")]
            by_column = ((drift.get("column_drift") or {}).get("vs_training") or {}).get("columns") or {}
            metrics += [(metric_key(f"column_psi.{name}"), col.get("psi"), 0) for name, col in by_column.items()]
            tags.update({"alerts": "; ".join(drift.get("alerts") or []) or "none",
                         "alert": str(bool(drift.get("alerts"))).lower(), "night": str(drift.get("date", ""))})
        _log(c, run_id, flat_params(config), metrics, tags)
        if summary.get("run_uri"):
            _log_files(c, run_id, summary["run_uri"], REPORT_FILES, storage_options)
        _log(c, run_id, tags={"aescore.run_id": key})  # last: a run found by it holds everything above
        c.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters, not this one
            c.set_terminated(run_id, "FAILED")
        raise
    return run_id
