"""aemodel: a tabular autoencoder, its preprocessing, losses and metrics (torch only, no Ray).

The Python API: ``AnomalyAutoencoder`` (fit, decision_function, predict, score_samples,
save, load) and ``read_scores``/``read_summary``/``read_drift`` for committed outputs.

Names are imported on first use (PEP 562): ``from aemodel import commit`` or
``aemodel.store`` load fsspec alone, not torch, so the storage helpers start fast in a
subprocess or a CLI that only checks its paths.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "AnomalyAutoencoder": "estimator", "read_scores": "outputs", "read_summary": "outputs", "read_drift": "outputs",
    "TrainingOptions": "options",
    "ArtifactError": "artifact", "ModelArtifact": "artifact", "load_artifact": "artifact", "save_artifact": "artifact",
    "batch_loss": "losses", "column_losses": "losses", "row_errors": "losses",
    "ErrorStats": "metrics", "auroc": "metrics", "histogram_edges": "metrics",
    "AutoencoderConfig": "model", "TabularAutoencoder": "model",
    "Preprocessor": "preprocess", "PreprocessConfig": "preprocess", "merge_stats": "preprocess",
    "partial_stats": "preprocess",
    "ColumnSpec": "schema", "SchemaError": "schema", "check_schema": "schema", "resolve_columns": "schema",
    "RowScorer": "scoring",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aemodel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aemodel.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
