"""GPU scoring: the pipeline's scorer on CUDA against a fused torch loop on the same GPU.

    python bench/gpu_score.py [--rows 2000000] [--precision fp32,bf16,fp16]

Skipped (exit 0, one line saying so) without CUDA. Ray is not needed: it benchmarks the
scorer class that ``aescore score --use-gpu`` runs in each actor (``jobs.scoring.rows.BatchScorer``
when Ray is importable, else ``RowScorer.score_table``: preprocessing, pinned-memory
transfer, optional bf16/fp16 autocast, per-row error, top-k columns, output table) against
a fused loop over the same Arrow batches that only encodes, transfers, runs the model and
computes the per-row error (what a hand-written script would do). A third figure keeps
the encoded batches resident on the GPU: the device's own limit. The model has random weights fitted to nothing; only
speed is measured. The last line is
``gpu_score: ratio=<scorer/fused, fp32> target=0.8 rows/s=<scorer fp32> peak_rss_mb=<process>``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_artifact(table: pa.Table, uri: str) -> None:
    from aemodel import AutoencoderConfig, ModelArtifact, Preprocessor, TabularAutoencoder, resolve_columns
    from aemodel.preprocess import partial_stats
    from aemodel.artifact import save_artifact

    specs = resolve_columns(table.schema, exclude_columns=["id"])
    pp = Preprocessor.fit(specs, partial_stats(table.slice(0, 100_000), specs))
    cfg = AutoencoderConfig(n_numeric=len(specs), n_binary=0, hidden_dims=[64, 32], latent_dim=8)
    save_artifact(ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=TabularAutoencoder(cfg).state_dict(),
                                threshold={"value": 1.0}), uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--precision", default="fp32,bf16,fp16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_score: skipped (no CUDA device)")
        return
    from aemodel import RowScorer, column_losses, load_artifact, row_errors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, 32)).astype(np.float32)
    table = pa.table({"id": np.arange(args.rows), **{f"f{j}": x[:, j] for j in range(32)}})
    batches = [table.slice(i, args.batch_size) for i in range(0, args.rows, args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        make_artifact(table, tmp)
        art = load_artifact(tmp)
        try:
            from jobs.scoring.rows import BatchScorer

            def make(p):
                return BatchScorer(tmp, ["id"], use_gpu=True, top_k=3, precision=p)
            kind = "jobs.scoring.rows.BatchScorer"
        except ImportError:  # no Ray on this machine
            def make(p):
                s = RowScorer(art, "cuda", p)
                return lambda b: s.score_table(b, top_k=3)
            kind = "RowScorer.score_table"
        scorer = RowScorer(art, "cuda")
        scorer.score_encoded(art.preprocessor.transform(batches[0]))  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            scorer.score_encoded(art.preprocessor.transform(b))
        torch.cuda.synchronize()
        fused = args.rows / (time.perf_counter() - t0)
        # Device limit: encoded tensors already on the GPU, model + per-row error only.
        enc = [{k: torch.from_numpy(v).cuda() for k, v in art.preprocessor.transform(b).items()
                if k in ("x_num", "x_bin", "x_cat", "observed")} for b in batches]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for e in enc:
                recon = scorer.model(e["x_num"], e["x_bin"], e["x_cat"])
                row_errors(column_losses(recon, e["x_num"], e["x_bin"], e["x_cat"], scorer.loss_scales),
                           e["observed"]).cpu()
        torch.cuda.synchronize()
        resident = args.rows / (time.perf_counter() - t0)
        rates = {}
        for p in args.precision.split(","):
            fn = make(p)
            fn(batches[0])  # warm-up
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            torch.cuda.synchronize()
            rates[p] = args.rows / (time.perf_counter() - t0)
    print(f"device: {torch.cuda.get_device_name()}; rows={args.rows}; batch={args.batch_size}; scorer={kind}")
    print(f"fused loop (encode, transfer, model, error): {fused:,.0f} rows/s")
    print(f"device limit (encoded batches resident on the GPU): {resident:,.0f} rows/s")
    for p, r in rates.items():
        print(f"scorer {p}: {r:,.0f} rows/s, ratio {r / fused:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"gpu_score: ratio={rates.get('fp32', next(iter(rates.values()))) / fused:.2f} target=0.8 "
          f"rows/s={rates.get('fp32', 0):.0f} peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    main()
