"""Options of ``aescore train`` (``jobs.train.TrainConfig``), in groups a sweep reuses.

``TrainConfig`` is ``TrainOptions`` plus the input and output paths; ``TrainOptions`` is the
option mixins below, one ``--help`` group each, and is the template a sweep holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aemodel.model import Activation
from aemodel.preprocess import PreprocessConfig

FEATURES_PER_LATENT = 5
"""The default latent size is one code per this many feature columns, between 2 and ``MAX_DEFAULT_LATENT``."""
MAX_DEFAULT_LATENT = 8
"""The largest default latent size. Tables wider than it accounts for (45 feature columns or more)
get no latent term by default (``TrainConfig.resolved_latent_weight``)."""


@dataclass(kw_only=True)
class DataOptions:
    """Data: validation split, feature columns, preprocessing"""

    val_data: str | None = None
    """Separate validation Parquet; if unset, a deterministic row-hash split of --data."""
    val_fraction: float = 0.2
    """Fraction of --data rows held out for validation when --val-data is unset (20%: early stopping, the per-column error scales and the threshold all come from these rows, and on small tables 10% is a handful)."""
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


@dataclass(kw_only=True)
class ModelOptions:
    """Model: network shape"""

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


@dataclass(kw_only=True)
class ThresholdOptions:
    """Score and threshold: how anomaly_score is scaled and where the anomaly line sits"""

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
class RunOptions:
    """Ray, storage and publishing"""

    num_workers: int = 1
    """Ray Train workers (data-parallel replicas)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; keep it below the node's CPUs so Ray Data can read."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each Train worker reserves besides its CPUs/GPU, e.g. a custom node resource (name=amount) to place workers on chosen nodes."""
    in_process: bool | None = None
    """Train in the driver process (Ray Train's local mode) instead of a Train worker actor, saving the worker's start-up; default: yes when one CPU worker trains on a single-node Ray with no --max-failures and no --storage-path (no checkpoints to resume from in this mode)."""
    local_data: bool | None = None
    """Read, split and encode the data in this process with pyarrow instead of Ray Data, train here (one worker, --cpus-per-worker torch threads), and start no Ray at all; default: yes when training would run in this process (see --in-process) on one machine (no --ray-address, no RAY_ADDRESS, no multi-node Ray already connected) and the input's feature values fit --cache-shard-mb."""
    materialize: bool = True
    """Cache the encoded training data in the Ray object store instead of re-reading every epoch."""
    cache_shard_mb: int = 1024
    """Hold each worker's encoded training shard and the validation set in memory (on its device), reshuffling the shard fully every epoch, when together they are at most this size (needs --materialize); 0: stream from Ray Data every epoch."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from by restarting from the last checkpoint."""
    storage_path: str | None = None
    """Ray Train checkpoint storage (shared storage such as s3:// on multi-node clusters)."""
    run_name: str | None = None
    """Ray Train run name; default aescore-train-<run id>, so rerunning the same run resumes it."""
    publish_latest: str | None = None
    """After a successful run, point this file (e.g. s3://bucket/models/LATEST.json) at --out."""
    overwrite: bool = False
    """Replace a model artefact at --out that another run wrote (the same run is reused)."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for every path (e.g. endpoint_url); prefer env credentials. Never written out."""
    shared_local_paths: bool = False
    """Local paths are on a filesystem every node mounts at the same place (NFS); otherwise a multi-node cluster refuses them."""
    ray_address: str | None = None
    """Ray cluster address; default RAY_ADDRESS if set, else a private local Ray."""


@dataclass(kw_only=True)
class TrainOptions(RunOptions, ThresholdOptions, FitOptions, ModelOptions, DataOptions):
    """Every option of ``aescore train`` but its input and output: the template a sweep holds."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.num_workers >= 1, f"num_workers must be >= 1, got {self.num_workers}"),
            (self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.latent_dim is None or self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}"),
            (all(h >= 1 for h in self.hidden_dims or []), f"hidden_dims must be >= 1, got {self.hidden_dims}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
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
            (self.cache_shard_mb >= 0, f"cache_shard_mb must be >= 0, got {self.cache_shard_mb}"),
            (self.max_failures >= 0, f"max_failures must be >= 0, got {self.max_failures}"),
            (not self.in_process or (self.num_workers == 1 and self.max_failures == 0),
             "in_process trains one worker without fault tolerance: it needs num_workers=1 and max_failures=0"),
            (not self.local_data or (self.in_process is not False and self.num_workers == 1
                                     and self.max_failures == 0 and not self.worker_resources),
             "local_data trains in this process: it needs num_workers=1, max_failures=0, no worker_resources "
             "and in_process not false"),
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

    def resolved_in_process(self, single_node: bool) -> bool:
        """Whether to train in the driver process (see ``in_process``); decided once, on the driver."""
        if self.in_process is not None:
            return self.in_process
        return (single_node and self.num_workers == 1 and not self.use_gpu and self.max_failures == 0
                and self.storage_path is None and not self.worker_resources)

    def resolved_local_data(self, one_machine: bool, input_bytes: int) -> bool:
        """Whether to prepare the data without Ray Data and train in this process (see ``local_data``).

        Args:
            one_machine: Nothing points at a Ray cluster (``ray_runtime.on_one_machine``).
            input_bytes: Memory the inputs take in this process (``train_local.input_bytes``).
        """
        if self.local_data is not None:
            return self.local_data
        return (one_machine and self.resolved_in_process(one_machine) and self.materialize
                and input_bytes <= self.cache_shard_mb * 2**20)

    def resolved_batch_size(self, train_rows: int) -> int:
        """The batch size, or the default: at least ~32 steps per epoch on small data."""
        if self.batch_size is not None:
            return self.batch_size
        return int(min(256, max(16, train_rows // (32 * self.num_workers))))

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

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(clip_sigma=self.clip_sigma, max_categories=self.max_categories,
                                min_category_count=self.min_category_count, log_skewness=self.log_skewness)


@dataclass(kw_only=True)
class TrainConfig(TrainOptions):
    """Input and output"""

    data: str
    """Training Parquet: a file, a directory/prefix of shards, or a glob (any fsspec URI)."""
    out: str
    """Where to write the model artefact (a folder or object prefix aescore owns); a rerun with the same data and options reuses it, a different one needs --overwrite."""

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("--data and --out are required")
        super().__post_init__()
