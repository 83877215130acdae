"""The model's training options, one group each: what ``aescore train`` and the Python API share.

``TrainingOptions`` is every option that decides what is trained (data handling, network,
optimisation, score and threshold), with their checks and the defaults decided from the
data (``resolved_*``). ``jobs.training.config.TrainOptions`` adds how and where a job runs
(Ray, storage); ``aemodel.estimator.AnomalyAutoencoder`` takes the same names and defaults
as keyword arguments. Each attribute's docstring is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aemodel.model import Activation, AutoencoderConfig
from aemodel.preprocess import PreprocessConfig, Preprocessor

FEATURES_PER_LATENT = 5
"""The default latent size is one code per this many feature columns, between 2 and ``MAX_DEFAULT_LATENT``."""
MAX_DEFAULT_LATENT = 8
"""The largest default latent size. Tables wider than it accounts for (45 feature columns or more)
get no latent term by default (``TrainingOptions.resolved_latent_weight``)."""


@dataclass(kw_only=True)
class DataOptions:
    """Data: validation split, feature columns, preprocessing"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('val_fraction', 'clip_sigma', 'max_categories', 'min_category_count', 'log_skewness',
                                           'shared_units')
    """Listed under "Advanced" in --help."""

    val_fraction: float = 0.2
    """Fraction of the training rows held out for validation when no validation data is given (20%: early stopping, the per-column error scales and the threshold all come from these rows, and on small tables 10% is a handful)."""
    feature_columns: list[str] = field(default_factory=list)
    """Columns to use as features (comma-separated); empty means every supported column."""
    exclude_columns: list[str] = field(default_factory=list)
    """Columns never used as features: ids, labels, timestamps (comma-separated)."""
    column_types: dict[str, str] = field(default_factory=dict)
    """Override inferred column types, e.g. zip=categorical,flag=binary."""
    clip_sigma: float = 10.0
    """Clip standardised numeric values to +/- this many training standard deviations."""
    max_categories: int = 64
    """Most frequent values kept per categorical column (the rest become <other>)."""
    min_category_count: int = 1
    """Values seen fewer times in training become <other> (1: every value seen in training keeps its own category; bench/RESULTS.md)."""
    log_skewness: float | None = None
    """Model numeric columns whose training skewness exceeds this (absolute) as sign(x)*log1p(|x|), e.g. 1 for amounts and counts; null (default): never. Off by default: it helps some tables a lot and costs others (bench/RESULTS.md, "skewed columns")."""
    shared_units: bool = True
    """Numeric columns measured in one unit (at least half of them share one training range, e.g. pixels or questionnaire items) share one scale instead of each its own, so a column that rarely moves does not count as much as one that always does (aemodel/units.py; bench/RESULTS.md, "shared units"); tables without such a group are unaffected. false: every numeric column its own scale."""


@dataclass(kw_only=True)
class ModelOptions:
    """Model: network shape"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('activation', 'dropout')
    """Listed under "Advanced" in --help."""

    latent_dim: int | None = None
    """Bottleneck width (too small loses detail, too large can copy the input); default: features / 5, in [2, 8]."""
    hidden_dims: list[int] | None = None
    """Encoder hidden layer widths (the decoder mirrors them); default [64, 32]."""
    activation: Activation = "tanh"
    """Activation function: tanh (default: bounded units cannot extrapolate far past the training range, so extreme rows reconstruct badly), relu, gelu or silu."""
    dropout: float = 0.0
    """Dropout rate after hidden layers."""


@dataclass(kw_only=True)
class FitOptions:
    """Training: optimiser, epochs, early stopping"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('batch_size', 'learning_rate', 'weight_decay', 'min_delta', 'max_overfit_ratio',
                                           'input_noise')
    """Listed under "Advanced" in --help."""

    epochs: int = 200
    """Maximum epochs, a safety cap: early stopping on the validation loss ends training (bench/suite: a 40-epoch cap stopped most tables while still improving)."""
    batch_size: int | None = None
    """Rows per optimizer step per worker; default: training rows / 32 per worker, clamped to [16, 256]."""
    learning_rate: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    patience: int = 5
    """Stop after this many epochs without validation improvement."""
    min_delta: float = 1e-3
    """Relative validation-loss improvement that counts as progress."""
    max_overfit_ratio: float | None = None
    """Fail the run (no artefact) if best-epoch validation loss exceeds this many times the training loss."""
    seed: int = 0
    """Random seed for weights and shuffling."""
    input_noise: float | None = None
    """Denoising training: Gaussian noise added to each training row's inputs, the network rebuilds the clean row; this is the noise of a column with a normal's kurtosis (standardised units, e.g. 0.5), heavier-tailed columns get more, per K-DSM's rule (aemodel/denoise.py); scoring is unchanged. null (default): off (bench/RESULTS.md, "denoising")."""


@dataclass(kw_only=True)
class ThresholdOptions:
    """Score and threshold: how anomaly_score is scaled and where the anomaly line sits"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('scale_by_validation', 'scale_floor', 'latent_weight', 'marginal_weight', 'latent_components', 'threshold_fpr')
    """Listed under "Advanced" in --help."""

    scale_by_validation: bool = True
    """Divide each column's error by its mean validation error, so recon_error 1.0 is a typical validation row; off: every column weighs the same."""
    scale_floor: float = 0.05
    """Smallest per-column validation scale (fraction of the constant predictor's loss): caps the weight of near-perfect columns."""
    latent_weight: float | None = None
    """Weight of the latent term in anomaly_score (recon_error + weight x the row code's Mahalanobis distance from the training codes, per latent dimension): catches rows that reconstruct well but sit where few training rows do; 0: no latent term. Default: 0.5, and 0 for 45 feature columns or more, where the default latent size is capped at 8 (bench/RESULTS.md, "latent term on wide tables"); 0.5 at any width with --latent-components above 1."""
    marginal_weight: float = 0.5
    """Weight of the marginal term in anomaly_score: each observed value's -log rarity among the training rows' values of its column (a two-sided tail probability for numeric columns, the frequency for the others), averaged over the row and about 1.0 for a training row; catches a value far out in its tail that agrees with the rest of its row (bench/RESULTS.md, "marginal tail term"); 0: no marginal term."""
    latent_components: int = 1
    """Most Gaussians in the latent term's density of the training codes; above 1, BIC picks 1, 2, 4 or 8 up to this, so codes in clusters get one each and a row between clusters scores high (against one Gaussian it helped image-like and some mixed tables and cost others: bench/RESULTS.md, "latent mixture"); 1 (default): one Gaussian."""
    threshold_quantile: float = 0.99
    """Anomaly threshold: this quantile of validation anomaly_score (ignored if threshold_fpr or contamination is set)."""
    threshold_fpr: float | None = None
    """Anomaly threshold from a target false-positive rate on validation data (e.g. 0.005)."""
    contamination: float | None = None
    """Expected fraction of anomalies (PyOD's convention): the threshold flags this fraction of validation rows, i.e. the (1 - contamination) quantile of validation error."""


@dataclass(kw_only=True)
class TrainingOptions(ThresholdOptions, FitOptions, ModelOptions, DataOptions):
    """Every option that decides what is trained; checked when built."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.latent_dim is None or self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}"),
            (all(h >= 1 for h in self.hidden_dims or []), f"hidden_dims must be >= 1, got {self.hidden_dims}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.input_noise is None or self.input_noise > 0,
             f"input_noise must be > 0, or null to turn it off, got {self.input_noise}"),
            (self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"),
            (self.latent_weight is None or self.latent_weight >= 0,
             f"latent_weight must be >= 0, got {self.latent_weight}"),
            (self.marginal_weight >= 0, f"marginal_weight must be >= 0, got {self.marginal_weight}"),
            (self.latent_components >= 1, f"latent_components must be >= 1, got {self.latent_components}"),
            (0.0 < self.scale_floor <= 1.0, f"scale_floor must be in (0, 1], got {self.scale_floor}"),
            (0.5 <= self.threshold_quantile < 1.0, f"threshold_quantile must be in [0.5, 1), got {self.threshold_quantile}"),
            (self.threshold_fpr is None or 0.0 < self.threshold_fpr <= 0.5,
             f"threshold_fpr must be in (0, 0.5], got {self.threshold_fpr}"),
            (self.contamination is None or 0.0 < self.contamination <= 0.5,
             f"contamination must be in (0, 0.5], got {self.contamination}"),
            (self.contamination is None or self.threshold_fpr is None,
             "give either contamination or threshold_fpr, not both"),
            (self.max_overfit_ratio is None or self.max_overfit_ratio > 1.0,
             f"max_overfit_ratio must be > 1, got {self.max_overfit_ratio}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        overlap = set(self.feature_columns) & set(self.exclude_columns)
        if overlap:
            raise ValueError(f"columns both featured and excluded: {sorted(overlap)}")
        self.preprocess_config()  # validates clip_sigma, max_categories, ...
        for col, kind in self.column_types.items():
            if kind not in ("numeric", "binary", "categorical"):
                raise ValueError(f"column_types: {col}={kind}: unknown column type (numeric, binary, categorical)")

    def resolved_batch_size(self, train_rows: int, workers: int = 1) -> int:
        """The batch size per worker, or the default: at least ~32 steps per epoch on small data."""
        if self.batch_size is not None:
            return self.batch_size
        return int(min(256, max(16, train_rows // (32 * workers))))

    def resolved_hidden_dims(self) -> list[int]:
        """The hidden widths, or the default [64, 32] for every table size.

        Narrower layers for small tables (training rows / 6, at least 16) tied or lost on
        every development table of the quality suite (bench/RESULTS.md, "hidden widths").
        """
        return list(self.hidden_dims) if self.hidden_dims is not None else [64, 32]

    def resolved_latent_dim(self, n_features: int) -> int:
        """The latent size, or the default: a fifth of the features, between 2 and 8.

        A narrow bottleneck keeps the model from reconstructing unusual rows as well as
        normal ones (bench/quality.py: features / 5 beat features / 3 on wine and the
        mixed-type diabetes table and tied on breast cancer; digits gets 8 either way).
        """
        if self.latent_dim is not None:
            return self.latent_dim
        return int(min(MAX_DEFAULT_LATENT, max(2, n_features // FEATURES_PER_LATENT)))

    def resolved_latent_weight(self, n_features: int) -> float:
        """The latent term's weight, or the default: 0.5, and 0 on wide tables (45 features or more).

        On wide tables the default latent size has stopped growing (``MAX_DEFAULT_LATENT``
        codes for any width); on both wide development tables of the quality suite
        (image-like digits, high-dimensional ad_data) the latent term cost AUROC, while on
        the narrow mixed ones it helped (bench/RESULTS.md, "latent term on wide tables").
        A mixture (``latent_components`` above 1) is asked for explicitly: 0.5 at any width.
        """
        if self.latent_weight is not None:
            return self.latent_weight
        wide = n_features // FEATURES_PER_LATENT > MAX_DEFAULT_LATENT
        return 0.5 if not wide or self.latent_components > 1 else 0.0

    @property
    def quantile(self) -> float:
        """The validation-error quantile used as threshold."""
        if self.contamination is not None:
            return 1.0 - self.contamination
        return 1.0 - self.threshold_fpr if self.threshold_fpr is not None else self.threshold_quantile

    def model_config(self, pp: Preprocessor) -> AutoencoderConfig:
        """The network for the fitted preprocessing ``pp``: its input widths, these options' shape."""
        return AutoencoderConfig(n_numeric=len(pp.numeric_names), n_binary=len(pp.binary_names),
                                 category_sizes=pp.category_sizes, hidden_dims=self.resolved_hidden_dims(),
                                 latent_dim=self.resolved_latent_dim(len(pp.specs)), activation=self.activation,
                                 dropout=self.dropout)

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing options as ``aemodel.preprocess`` takes them."""
        return PreprocessConfig(clip_sigma=self.clip_sigma, max_categories=self.max_categories,
                                min_category_count=self.min_category_count, log_skewness=self.log_skewness,
                                shared_units=self.shared_units)
