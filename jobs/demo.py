"""Demo: synthetic mixed-type data with injected anomalies -> train -> score -> AUROC.

Submit to a Ray cluster (from the repository root; --out must be storage every node sees)::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.demo --out s3://bucket/aescore-demo

Locally, with nothing else: ``aescore demo`` (writes under ./aescore-demo).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from aemodel import auroc
from jobs import score, train
from aemodel.artifact import check_model_prefix
from aemodel.commit import claim_prefix
from aemodel.store import entry_names, join, url_to_fs
from jobs.data.synthetic import LABEL, ROW_ID, check_shard_folder, make_mixed_table, write_shards


@dataclass
class DemoConfig:
    """Demo data, training and output"""

    out: str = "./aescore-demo"
    """Directory (or URI) for the generated data, the model and the scores."""
    rows: int = 20_000
    """Rows in the training set; the scoring set has half as many."""
    shards: int = 4
    """Parquet files per data set."""
    anomaly_fraction: float = 0.03
    """Fraction of rows with injected anomalies (in both sets)."""
    epochs: int = 200
    """Maximum training epochs, a safety cap: early stopping ends training when validation stops improving."""
    seed: int = 0
    """Seed for data generation and training."""
    ray_address: str | None = None
    """Ray cluster address; default RAY_ADDRESS if set, else a private local Ray."""

    def __post_init__(self) -> None:
        if self.rows < 500:
            raise ValueError(f"rows must be >= 500, got {self.rows}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if not 0.0 < self.anomaly_fraction < 0.5:
            raise ValueError(f"anomaly_fraction must be in (0, 0.5), got {self.anomaly_fraction}")


@dataclass
class DemoResult:
    train: train.TrainResult
    score: score.ScoreResult
    auroc: float
    precision: float
    recall: float
    wall_seconds: float


def run(cfg: DemoConfig) -> DemoResult:
    """Generate, train, score and evaluate; prints each job's result."""
    t0 = time.perf_counter()
    train_uri, score_uri = join(cfg.out, "data", "train"), join(cfg.out, "data", "score")
    model_uri, scores_uri = join(cfg.out, "model"), join(cfg.out, "scores")
    check_out(cfg.out, train_uri, score_uri, model_uri, scores_uri)
    write_shards(make_mixed_table(cfg.rows, cfg.seed, cfg.anomaly_fraction), train_uri, cfg.shards)
    write_shards(make_mixed_table(cfg.rows // 2, cfg.seed + 1, cfg.anomaly_fraction, start_id=cfg.rows),
                 score_uri, cfg.shards)
    tr = train.run(train.TrainConfig(data=train_uri, out=model_uri, exclude_columns=[ROW_ID, LABEL],
                                     epochs=cfg.epochs, seed=cfg.seed, ray_address=cfg.ray_address,
                                     overwrite=True))
    print(train.format_result(tr), flush=True)
    sr = score.run(score.ScoreConfig(model=model_uri, data=score_uri, out=scores_uri,
                                     id_columns=[ROW_ID, LABEL], ray_address=cfg.ray_address))
    print(score.format_result(sr), flush=True)
    # Evaluation only: the demo's scoring set is small, so reading two columns is fine here.
    fs, rows_path = url_to_fs(join(sr.run_uri, "rows"))
    table = pq.read_table(rows_path, filesystem=fs, columns=["anomaly_score", "is_anomaly", LABEL])
    label = np.asarray(table[LABEL])
    score_auc = auroc(np.asarray(table["anomaly_score"]), label)
    precision, recall = precision_recall(np.asarray(table["is_anomaly"]), label)
    return DemoResult(train=tr, score=sr, auroc=score_auc, precision=precision, recall=recall,
                      wall_seconds=time.perf_counter() - t0)


DEMO_ENTRIES = {"data", "model", "scores"}
"""What the demo writes at the top of --out (and, from an older aescore, without a marker)."""


def check_out(out: str, train_uri: str, score_uri: str, model_uri: str, scores_uri: str) -> None:
    """Claim --out for the demo and check every folder it writes, before anything is written or deleted.

    A folder holding a user's files (at the top, in data/train or data/score, in model or
    scores) is refused with nothing touched; a complete demo folder from an older aescore
    (exactly the demo's own entries, no marker) is adopted.

    Raises:
        OutputError: --out or one of its folders holds files the demo did not write.
    """
    fs, path = url_to_fs(out)
    # Only a complete demo of an older aescore is adopted: a user's own data/train could hold part-00000.parquet.
    old_demo = set(entry_names(fs, path)) == DEMO_ENTRIES and set(entry_names(fs, join(path, "data"))) == {"train", "score"}
    claim_prefix(out, "demo", adopt=old_demo, write=False)  # first: refuses a file, or a folder of the user's
    for uri in (train_uri, score_uri):
        check_shard_folder(uri)
    check_model_prefix(model_uri)
    claim_prefix(scores_uri, "scores", write=False)
    claim_prefix(out, "demo", adopt=old_demo)


def precision_recall(flagged: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the rows flagged at the threshold against the true anomalies."""
    hits = int(np.sum(flagged & label))
    return hits / max(int(flagged.sum()), 1), hits / max(int(label.sum()), 1)


def format_result(r: DemoResult) -> str:
    best = min(r.train.history, key=lambda h: h["val_loss"])
    s = r.score.summary
    return (f"demo: AUROC={r.auroc:.3f} (anomaly_score vs injected anomalies), precision={r.precision:.3f} "
            f"recall={r.recall:.3f} at threshold {s['threshold']:.4f}, "
            f"train_loss={best['train_loss']:.4f} val_loss={best['val_loss']:.4f} after {len(r.train.history)} epochs, "
            f"{s['anomaly_count']}/{s['row_count']} flagged, wall {r.wall_seconds:.1f}s\n"
            f"reports: {join(r.train.artifact_uri, 'report.html')} and {join(r.score.run_uri, 'report.html')}")


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.demo``."""
    from jobs.runtime.entry import job_main

    return job_main(DemoConfig, run, format_result, argv, "aescore demo", __doc__)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that Ray pickles the UDFs and
    # the training loop as references to jobs.demo, which every worker can import.
    from jobs.demo import main as module_main

    from jobs.runtime.entry import run_entry_point

    run_entry_point(module_main)
