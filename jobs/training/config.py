"""Options of ``aescore train`` (``jobs.train.TrainConfig``), in groups a sweep reuses.

``TrainConfig`` is ``TrainOptions`` plus the input and output paths; ``TrainOptions`` is the
model's training options (``aemodel.options.TrainingOptions``, which the Python API takes
too) plus how and where the job runs, one ``--help`` group each, and is the template a
sweep holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aemodel.options import TrainingOptions
from jobs.lifecycle.tracking import TrackingOptions


@dataclass(kw_only=True)
class RunOptions:
    """Ray, storage and publishing"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('cpus_per_worker', 'worker_resources', 'in_process', 'local_data', 'materialize', 'cache_shard_mb', 'max_failures', 'storage_path', 'run_name', 'storage_options', 'shared_local_paths', 'ray_address')
    """Listed under "Advanced" in --help."""

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
class RegistryOptions(TrackingOptions):
    """MLflow registry"""

    register: str | None = None
    """After a successful run, register the model in the MLflow registry under this name (needs --tracking-uri or MLFLOW_TRACKING_URI); score it as --model models:/NAME/VERSION or models:/NAME@ALIAS."""


@dataclass(kw_only=True)
class TrainOptions(RegistryOptions, RunOptions, TrainingOptions):
    """Every option of ``aescore train`` but its input and output: the template a sweep holds."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.num_workers >= 1, f"num_workers must be >= 1, got {self.num_workers}"),
            (self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"),
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


@dataclass(kw_only=True)
class TrainConfig(TrainOptions):
    """Input and output"""

    data: str
    """Training Parquet: a file, a directory/prefix of shards, or a glob (any fsspec URI)."""
    val_data: str | None = None
    """Separate validation Parquet; if unset, a deterministic row-hash split of --data."""
    out: str
    """Where to write the model artefact (a folder or object prefix aescore owns); a rerun with the same data and options reuses it, a different one needs --overwrite."""
    entity_columns: list[str] = field(default_factory=list)
    """Train a model bank: one model per value of these columns (user_id, device; never features) with at least --min-entity-rows rows, beside the global model on all rows (docs/how-it-works.md, "Model banks")."""
    min_entity_rows: int = 500
    """Fewest rows an entity needs for a model of its own (a fifth become its validation rows); its rows are scored by the global model otherwise."""

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("--data and --out are required")
        super().__post_init__()
        both = [c for c in self.entity_columns if c in (self.feature_columns or [])]
        if both:
            raise ValueError(f"entity_columns: {both[0]!r} is also in --feature-columns; an entity column is never a "
                             "feature (rows are routed by it): remove it from --feature-columns")
        if self.entity_columns and self.min_entity_rows < 50:
            raise ValueError(f"min_entity_rows must be >= 50 (a tenth of them validate), got {self.min_entity_rows}")
