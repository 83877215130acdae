"""Options of ``aescore score`` (``jobs.score.ScoreConfig``).

``ScoreConfig`` is ``ScoreOptions`` plus the input and output paths; ``ScoreOptions`` is
the template a nightly config holds (``jobs.nightly``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from aemodel.challenger import CHALLENGER_COLUMNS
from aemodel.scoring import COLUMN_ERROR_PREFIX, OUTPUT_COLUMNS, PARTIAL_PREFIX
from jobs.data.datasets import ROW_HASH
from jobs.runtime.ray_runtime import on_one_machine
from jobs.lifecycle.tracking import TrackingOptions


@dataclass(kw_only=True)
class ScoreOptions:
    """Scoring: outputs, compute and storage"""

    ADVANCED: ClassVar[tuple[str, ...]] = ('batch_size', 'concurrency', 'compute', 'precision', 'cpus_per_worker', 'object_store_limit_mb', 'storage_options', 'run_id', 'shared_local_paths', 'ray_address', 'reference_data', 'label_column')
    """Listed under "Advanced" in --help."""

    id_columns: list[str] = field(default_factory=list)
    """Input columns copied to the output to identify rows; empty adds row_hash (file + position)."""
    batch_size: int | None = None
    """Rows per model call; default: as many as keep one call's outputs and loss terms near 64 MiB (256 to 65,536 rows, see aemodel.scoring.rows_per_call)."""
    concurrency: int | None = None
    """Scoring actors (actor path) or max parallel tasks (task path); default: one actor per GPU, on CPUs as many as the CPUs hold, never more than the input's read tasks / Ray decides."""
    compute: Literal["auto", "local", "actors", "tasks"] = "auto"
    """local: this process reads, scores and writes with every core, no Ray; tasks: Ray Data tasks fused with the read; actors: a Ray Data actor pool that loads the model once per actor; auto: local on one machine (no --ray-address, no RAY_ADDRESS, no multi-node Ray already connected, no --concurrency, CPU), else actors on GPU and tasks on CPU."""
    use_gpu: bool = False
    """Score on GPUs (one per actor)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """GPU only: run the network under bf16/fp16 autocast (errors are still computed in float32)."""
    cpus_per_worker: float = 1.0
    """Ray paths: CPUs reserved per scoring actor/task; torch uses this many threads (at least 1). The local path uses every usable core."""
    object_store_limit_mb: int | None = 512
    """Object-store memory Ray Data may fill with in-flight blocks (keeps memory flat as inputs grow); 0: Ray's default."""
    challenger: str | None = None
    """Score the same rows with this model too, in the same read (an artefact, pointer file or models:/ URI with the same feature columns): the rows gain challenger_score and challenger_is_anomaly, the run comparison.json (rates, rank correlation, overlaps, rows only one model flags)."""
    reference_data: str | None = None
    """With --challenger: a labelled Parquet set (known anomalies and normals) on which comparison.json gives both models' AUROC, precision and recall; needs --label-column."""
    label_column: str | None = None
    """The --reference-data column that marks anomalies (1/true)."""
    threshold: float | None = None
    """Override the model's anomaly threshold on anomaly_score."""
    top_k: int = 3
    """Columns listed per row in top_features (largest error first, with share and z-score); 0 turns it off."""
    column_errors: bool = False
    """Also write each feature column's error per row (err_<column>; wide) and its mean in the summary."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for every path (e.g. endpoint_url); prefer env credentials. Never written out."""
    run_id: str | None = None
    """Identity of this run; default: a hash of model version, input files and options."""
    force: bool = False
    """Recompute even if OUT already holds a committed run with the same run id."""
    shared_local_paths: bool = False
    """Local paths are on a filesystem every node mounts at the same place (NFS); otherwise a multi-node cluster refuses them."""
    ray_address: str | None = None
    """Ray cluster address; default RAY_ADDRESS if set, else a private local Ray."""

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.threshold is not None and not 0 <= self.threshold < float("inf"):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.object_store_limit_mb is not None and self.object_store_limit_mb < 0:
            raise ValueError(f"object_store_limit_mb must be >= 0, got {self.object_store_limit_mb}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if ROW_HASH in self.id_columns:
            raise ValueError(f"{ROW_HASH!r} is reserved for the synthetic row id")
        if any(c.startswith(PARTIAL_PREFIX) for c in self.id_columns):
            raise ValueError(f"id columns may not start with {PARTIAL_PREFIX!r} (reserved for aescore's own columns)")
        if (self.reference_data or self.label_column) and not (self.challenger and self.reference_data
                                                                and self.label_column):
            raise ValueError("--reference-data and --label-column go together, with --challenger")
        clash = [c for c in self.id_columns
                 if c in OUTPUT_COLUMNS or (self.column_errors and c.startswith(COLUMN_ERROR_PREFIX))
                 or (self.challenger and c in CHALLENGER_COLUMNS)]
        if clash:  # the computed column would silently replace the user's ids in the rows file
            written = ", ".join([*OUTPUT_COLUMNS, *([f"{COLUMN_ERROR_PREFIX}<column>"] if self.column_errors else []),
                                 *(CHALLENGER_COLUMNS if self.challenger else [])])
            raise ValueError(f"id column {clash[0]!r} has the name of a column aescore writes ({written}); "
                             "rename it in the input")

    @property
    def use_actors(self) -> bool:
        return self.compute == "actors" or (self.compute == "auto" and self.use_gpu)

    def resolved_compute(self) -> str:
        """``local``, ``tasks`` or ``actors``: what ``auto`` means for this run (decided once, on the driver).

        Local when nothing points at a Ray cluster: on one machine Ray's start-up and block
        scheduling cost more than the scoring (bench/score_throughput.py). A Ray this
        process already joined counts as a cluster only if it has more than one node.
        """
        if self.compute != "auto":
            return self.compute
        if self.use_gpu:
            return "actors"
        return "local" if on_one_machine(self.ray_address) and not self.concurrency else "tasks"


@dataclass(kw_only=True)
class ScoreConfig(TrackingOptions, ScoreOptions):
    """Input and output"""

    model: str
    """Model artefact URI written by aescore train, a pointer file from --publish-latest, or a registry version: models:/NAME/VERSION or models:/NAME@ALIAS (with --tracking-uri)."""
    data: str
    """Parquet to score: a file, a directory/prefix of shards, or a glob (any fsspec URI)."""
    out: str
    """Output prefix (a folder aescore owns): each run writes runs/<run>/ (rows/, summary.json, report.html) and commits by pointing _SUCCESS at it; a rerun with the same model, inputs and options reuses it (--force recomputes), a different one replaces it."""

    def __post_init__(self) -> None:
        if not (self.model and self.data and self.out):
            raise ValueError("--model, --data and --out are required")
        super().__post_init__()
