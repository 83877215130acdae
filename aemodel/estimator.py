"""The Python API: ``AnomalyAutoencoder``, an estimator in scikit-learn's and PyOD's shape.

    from aemodel import AnomalyAutoencoder
    det = AnomalyAutoencoder(exclude_columns=["event_id"]).fit(train_df)
    det.decision_function(new_df)      # anomaly_score per row, higher is more anomalous
    det.predict(new_df)                # 1 where anomaly_score > det.threshold_
    det.score_samples(new_df)          # every column aescore score writes, as a DataFrame
    det.save("s3://bucket/models/ae") # the very artefact aescore train writes
    AnomalyAutoencoder.load("s3://bucket/models/ae")

It takes ``aescore train``'s training options as keyword arguments, with the same names
and defaults (``aemodel.options.TrainingOptions``), and trains in this process with the
same statistics, split, loop and calibration (``aemodel.statistics``, ``aemodel.training``):
on the same single table and seed it gives the same weights as ``aescore train`` on one
Parquet file of it. No Ray. Parameters live in ``__init__``, fitted attributes end in an
underscore, and ``get_params``/``set_params`` follow scikit-learn, so ``sklearn.base.clone``
and parameter searches work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from aemodel.artifact import ModelArtifact, check_model_prefix, load_artifact, save_artifact
from aemodel.commit import OutputCommit, OutputError
from aemodel.denoise import input_noise
from aemodel.diagnostics import column_warnings
from aemodel.errors import TrainingError
from aemodel.model import TabularAutoencoder
from aemodel.options import TrainingOptions
from aemodel.preprocess import Preprocessor
from aemodel.schema import check_schema, feature_table, resolve_columns
from aemodel.scoring import RowScorer
from aemodel.statistics import TableInput, encode_tables, fit_statistics, split_tables
from aemodel.training import (FitState, fit_epochs, fit_score_terms, tensor_batches, trained_artifact,
                              validation_reference)

MIN_ROWS = 10
"""Fewest training rows: with fewer, the validation split may hold none."""


class NotFittedError(ValueError, AttributeError):
    """The estimator was used before ``fit`` (scikit-learn's convention: both a ValueError and an AttributeError)."""


def as_table(X, what: str = "X") -> pa.Table:
    """A pandas DataFrame, Arrow table or record batch, or a 2-D array (columns ``x0``, ``x1``, ...) as a table."""
    if isinstance(X, pa.Table):
        return X
    if isinstance(X, pa.RecordBatch):
        return pa.Table.from_batches([X])
    if hasattr(X, "columns") and hasattr(X, "dtypes"):  # pandas
        return pa.Table.from_pandas(X, preserve_index=False)
    array = np.asarray(X)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a DataFrame, an Arrow table or a 2-D array, got shape {array.shape}")
    return pa.table({f"x{i}": array[:, i] for i in range(array.shape[1])})


@dataclass
class _Prepared:
    """A fit's rows, ready to train on: the preprocessor, encoded splits, statistics, leakage filter."""

    pp: Preprocessor
    train_t: dict[str, torch.Tensor]
    val_t: dict[str, torch.Tensor]
    stats: dict
    seen_rows: object
    leakage: dict
    schema: pa.Schema
    rows: int


@dataclass(kw_only=True, eq=False, repr=False)
class AnomalyAutoencoder(TrainingOptions):
    """A tabular autoencoder anomaly detector: ``aescore train``'s model, fitted and scored in this process.

    Parameters are ``aescore train``'s training options (``aemodel.options``), plus:
    """

    threads: int = 1
    """torch intra-op threads while fitting and scoring (``aescore train --cpus-per-worker``)."""
    device: str = "cpu"
    """torch device to train and score on (cpu, cuda)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def __repr__(self) -> str:
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(self) if f.init}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k, object()) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    # --- scikit-learn's parameter protocol -------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def get_params(self, deep: bool = True) -> dict:  # noqa: ARG002 - no nested estimators
        """The constructor's parameters as set (scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> AnomalyAutoencoder:
        """Set parameters by name and check them again (scikit-learn's ``set_params``)."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {type(self).__name__}")
        for name, value in params.items():
            setattr(self, name, value)
        self.__post_init__()
        return self

    # --- fitting ----------------------------------------------------------------------

    def fit(self, X, y=None, X_val=None, *, preprocessor: Preprocessor | None = None  # noqa: ARG002 - y: sklearn's
            ) -> AnomalyAutoencoder:
        """Train on ``X`` (mostly normal rows); ``X_val``, or a row-hash split of ``X``, calibrates the threshold.

        ``y`` is ignored (unsupervised, as in PyOD). Columns are picked and typed as
        ``aescore train`` does (``feature_columns``, ``exclude_columns``, ``column_types``).
        ``preprocessor``: a fitted one to use instead of fitting one on ``X`` (its columns
        are the features): an entity model of a bank shares its global model's
        (``aemodel.bank``); the statistics of ``X`` still give the leakage filter and the
        column warnings.

        Raises:
            SchemaError: A column of an unusable type, or ``X_val`` without ``X``'s features.
            TrainingError: Training produced no usable model (a failed diagnostic, NaN loss).
            ValueError: Fewer than ``MIN_ROWS`` rows.
        """
        prep = self._prepare(X, X_val, preprocessor)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model, state = self._fit_weights(prep)
            art = self._finish(prep, model, state)
        finally:
            torch.set_num_threads(threads)
        self._fitted(art)
        return self

    def fit_each(self, datasets: list[tuple], *, preprocessor: Preprocessor) -> list[AnomalyAutoencoder | Exception]:
        """One model per ``(X, X_val)`` of ``datasets`` with these parameters and one shared ``preprocessor``.

        Each model is what ``fit(X, X_val=X_val, preprocessor=preprocessor)`` gives (its own
        split, batches, early stopping, weights, terms, threshold and verdicts); the weights
        of models whose epochs have as many steps train stacked (``aemodel.stack_fit``), one
        batched step for all of them: a model bank's entity models.

        Returns:
            Per dataset, a fitted estimator, or the exception ``fit`` would have raised.
        """
        from aemodel.stack_fit import FitJob, fit_stacked

        preps: list = []
        for X, X_val in datasets:
            try:
                preps.append(self._prepare(X, X_val, preprocessor))
            except ValueError as e:  # SchemaError, too few rows
                preps.append(e)
        ready = [i for i, p in enumerate(preps) if not isinstance(p, Exception)]
        out: list = list(preps)
        if not ready:
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model = self._initial_model(preprocessor)
            jobs = [FitJob(preps[i].train_t, preps[i].val_t, self.resolved_batch_size(preps[i].rows), self.seed)
                    for i in ready]
            states = fit_stacked(model, jobs, torch.tensor(preprocessor.baselines, dtype=torch.float32),
                                 learning_rate=self.learning_rate, weight_decay=self.weight_decay, epochs=self.epochs,
                                 patience=self.patience, min_delta=self.min_delta, input_noise=self._noise(preprocessor))
            for i, state in zip(ready, states):
                if isinstance(state, Exception):
                    out[i] = state
                    continue
                try:
                    trained = TabularAutoencoder(model.config)
                    trained.load_state_dict(state.best_model)
                    est = type(self)(**self.get_params())
                    est._fitted(est._finish(preps[i], trained, state))
                    out[i] = est
                except (TrainingError, ValueError) as e:
                    out[i] = e
        finally:
            torch.set_num_threads(threads)
        return out

    def _prepare(self, X, X_val, preprocessor: Preprocessor | None) -> _Prepared:
        """Columns, statistics, preprocessor, split and encoding of a fit's rows."""
        table = as_table(X)
        if preprocessor is not None:
            specs = preprocessor.specs
            check_schema(table.schema, specs, "X")
        else:
            specs = resolve_columns(table.schema, self.feature_columns or None, self.exclude_columns,
                                    self.column_types)
        names = [s.name for s in specs]
        if table.num_rows < MIN_ROWS:
            raise ValueError(f"X: {table.num_rows} row(s); training needs at least {MIN_ROWS}, part of them held out "
                             "for validation")
        train_in = TableInput.of(feature_table(table, specs))
        val_in = None
        if X_val is not None:
            val_table = as_table(X_val, "X_val")
            check_schema(val_table.schema, specs, "X_val")
            val_in = TableInput.of(feature_table(val_table, specs))
        stats, seen_rows, leakage = fit_statistics(self, specs, train_in, val_in)
        pp = preprocessor or Preprocessor.fit(specs, stats, self.preprocess_config())  # training rows only
        if val_in is None:
            train_t = encode_tables(pp, split_tables(train_in.chunks(), names, self.val_fraction, validation=False))
            val_t = encode_tables(pp, split_tables(train_in.chunks(), names, self.val_fraction, validation=True))
        else:
            train_t, val_t = encode_tables(pp, train_in.chunks()), encode_tables(pp, val_in.chunks())
        device = torch.device(self.device)
        train_t, val_t = ({k: v.to(device) for k, v in t.items()} for t in (train_t, val_t))
        rows = pp.train_rows if preprocessor is None else len(train_t["observed"])  # a shared one counts others
        return _Prepared(pp, train_t, val_t, stats, seen_rows, leakage, table.schema, rows)

    def _noise(self, pp: Preprocessor) -> torch.Tensor | None:
        return (torch.tensor(input_noise(pp, self.input_noise), dtype=torch.float32, device=torch.device(self.device))
                if self.input_noise else None)

    def _initial_model(self, pp: Preprocessor) -> TabularAutoencoder:
        """The network before training: seeded, so a model fitted alone and in a stack start from the same weights."""
        torch.manual_seed(self.seed)
        return TabularAutoencoder(self.model_config(pp))

    def _fit_weights(self, prep: _Prepared) -> tuple[TabularAutoencoder, FitState]:
        """The loop of ``jobs.training.loop.train_loop_per_worker`` on one worker in this process."""
        device, pp = torch.device(self.device), prep.pp
        model = self._initial_model(pp).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        baselines = torch.tensor(pp.baselines, dtype=torch.float32, device=device)
        batch_size = self.resolved_batch_size(prep.rows)
        state = fit_epochs(model, optimizer, baselines, epochs=self.epochs, patience=self.patience,
                           min_delta=self.min_delta, input_noise=self._noise(pp),
                           train_batches=lambda epoch: tensor_batches(prep.train_t, batch_size, self.seed + epoch),
                           val_batches=lambda: tensor_batches(prep.val_t, 8192))
        return model, state

    def _finish(self, prep: _Prepared, model: TabularAutoencoder, state: FitState) -> ModelArtifact:
        """The score's terms, the validation reference and threshold, the verdicts: the artefact of trained weights."""
        device, pp = torch.device(self.device), prep.pp
        model = model.to(device)
        baselines = torch.tensor(pp.baselines, dtype=torch.float32, device=device)
        latent, marginal, distribution = fit_score_terms(model, tensor_batches(prep.train_t, 8192),
                                                         latent_weight=self.resolved_latent_weight(len(pp.specs)),
                                                         latent_components=self.latent_components,
                                                         marginal_weight=self.marginal_weight,
                                                         clip_sigma=self.clip_sigma, seed=self.seed)
        reference, threshold = validation_reference(
            model, lambda: tensor_batches(prep.val_t, 8192), device, baselines, self.quantile, pp.constant_outputs(),
            [s.name for s in pp.specs], self.scale_floor if self.scale_by_validation else None, latent, marginal,
            pp.shared_unit_indices)
        reference["columns_distribution"] = distribution
        params = self.get_params()
        run_id = hashlib.sha256(json.dumps({"params": params, "rows": prep.rows}, sort_keys=True,
                                           default=str).encode()).hexdigest()[:16]
        return trained_artifact(self, model.config, pp, {k: v.cpu() for k, v in state.best_model.items()},
                                state.history, reference, threshold, prep.leakage, prep.seen_rows,
                                warnings=column_warnings(self, prep.schema, pp.specs, prep.stats, pp),
                                train_config={**params, "api": "python"}, run_id=run_id)

    def _fitted(self, art: ModelArtifact) -> None:
        self.artifact_ = art
        self.threshold_ = art.threshold_value
        self.feature_names_in_ = np.array([s.name for s in art.preprocessor.specs], dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.history_ = art.history
        self.metrics_ = art.metrics
        self._scorer = None

    # --- scoring ----------------------------------------------------------------------

    def _row_scorer(self) -> RowScorer:
        art = getattr(self, "artifact_", None)
        if art is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit (or load) first")
        if self._scorer is None:
            self._scorer = RowScorer(art, self.device)
        return self._scorer

    def _features(self, X) -> pa.Table:
        table = as_table(X)
        check_schema(table.schema, self._row_scorer().preprocessor.specs, "X")
        return table

    def _scored(self, X, passthrough: list[str] = (), top_k: int = 0, column_errors: bool = False) -> pa.Table:
        scorer = self._row_scorer()
        table = self._features(X)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return scorer.output_table(table, list(passthrough), top_k, column_errors)
        finally:
            torch.set_num_threads(threads)

    def decision_function(self, X) -> np.ndarray:
        """``anomaly_score`` per row (float32): higher is more anomalous (PyOD's convention)."""
        return self._scored(X).column("anomaly_score").to_numpy()

    def predict(self, X) -> np.ndarray:
        """1 where the row's ``anomaly_score`` is above ``threshold_``, else 0 (PyOD's convention)."""
        return self._scored(X).column("is_anomaly").to_numpy(zero_copy_only=False).astype(np.int64)

    def score_samples(self, X, *, id_columns: list[str] = (), top_k: int = 3, column_errors: bool = False):
        """Every column ``aescore score`` writes for ``X``'s rows, as a pandas DataFrame in ``X``'s row order.

        Args:
            X: The rows (a DataFrame keeps its index).
            id_columns: Columns of ``X`` copied to the front (as ``--id-columns``).
            top_k: Columns listed per row in ``top_features`` (0: none).
            column_errors: Add ``err_<column>`` per feature.
        """
        frame = self._scored(X, id_columns, top_k, column_errors).to_pandas()
        if hasattr(X, "index") and hasattr(X, "columns"):
            frame.index = X.index
        return frame

    # --- the artefact -------------------------------------------------------------------

    def save(self, uri: str, *, overwrite: bool = False, storage_options: dict | None = None) -> str:
        """Commit the fitted model at ``uri`` (any fsspec URI) as ``aescore train`` does; returns its version.

        Raises:
            OutputError: ``uri`` holds a model and ``overwrite`` is false, holds files aescore
                did not write, or another writer committed there first.
        """
        art = getattr(self, "artifact_", None)
        if art is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: nothing to save")
        commit = OutputCommit(uri, storage_options, kind="model")
        commit.observe()
        if check_model_prefix(uri, storage_options) and not overwrite:
            raise OutputError(f"{uri} already holds a model artefact; pass overwrite=True to replace it")
        art.created_at = ""  # this commit's time
        return save_artifact(art, uri, storage_options, commit=commit)

    @classmethod
    def load(cls, uri: str, *, storage_options: dict | None = None) -> AnomalyAutoencoder:
        """The model committed at ``uri`` (by ``save`` or ``aescore train``), ready to score."""
        art = load_artifact(uri, storage_options)
        names = set(cls._param_names())
        est = cls(**{k: v for k, v in art.train_config.items() if k in names})
        est._fitted(art)
        return est
