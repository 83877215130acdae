"""Self-contained HTML reports (embedded PNGs) for training and scoring runs.

Plots come from the summaries alone (fixed-grid histograms, per-column aggregates), never
from the rows, so a report costs the same for 1k or 1B rows. matplotlib runs headless.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _threshold_line(ax, threshold: float | None, ci: list[float] | None = None) -> None:
    if threshold is None:
        return
    ax.axvline(threshold, color="crimson", linestyle="--", linewidth=1.5, label=f"threshold {threshold:.4g}")
    if ci:
        ax.axvspan(ci[0], ci[1], color="crimson", alpha=0.12, label=f"threshold 95% CI [{ci[0]:.3g}, {ci[1]:.3g}]")


def error_histograms(hist: dict, threshold: float | None, title: str, ci: list[float] | None = None) -> list[str]:
    """Two PNGs of one error histogram: density on linear axes, and counts per log-spaced bin."""
    plt = _plt()
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=float)
    widths = np.diff(edges)
    nz = np.nonzero(counts)[0]
    lo, hi = (nz[0], nz[-1] + 1) if nz.size else (0, len(counts))
    out = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    # Bins are log-spaced, so on a linear axis plot density (rows per unit of error),
    # not counts, or wide bins would look tall. Cut the long tail at the 99.5th count.
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    hi_lin = min(hi, int(np.searchsorted(cum, 0.995)) + 1)
    if threshold is not None:
        hi_lin = max(hi_lin, int(np.searchsorted(edges, threshold * 1.3)))
    sl = slice(lo, max(hi_lin, lo + 1))
    ax.bar(edges[:-1][sl], counts[sl] / widths[sl], width=widths[sl], align="edge", color="steelblue",
           edgecolor="none")
    _threshold_line(ax, threshold, ci)
    ax.set_xlabel("anomaly_score")
    ax.set_ylabel("rows per unit of error")
    ax.set_title(f"{title} (linear; tail beyond {edges[sl.stop]:.3g} not shown)")
    if threshold is not None:
        ax.legend(fontsize=8)
    out.append(_png(fig))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    a, b = max(lo - 1, 0), min(hi + 1, len(counts))
    ax.bar(edges[a:b], counts[a:b], width=widths[a:b], align="edge", color="seagreen", edgecolor="none")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    _threshold_line(ax, threshold, ci)
    ax.set_xlabel("anomaly_score (log scale)")
    ax.set_ylabel("rows per bin")
    under, over = hist.get("underflow", 0), hist.get("overflow", 0)
    ax.set_title(f"{title} (log) - {under} rows below {edges[0]:g}, {over} above {edges[-1]:g}")
    if threshold is not None:
        ax.legend(fontsize=8)
    out.append(_png(fig))
    return out


def bar_chart(labels: list[str], values: list[float], title: str, xlabel: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color="darkorange")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig)


def loss_curves(history: list[dict], title: str = "loss per epoch") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker="o", markersize=3, label="train")
    ax.plot(ep, [h["val_loss"] for h in history], marker="o", markersize=3, label="validation")
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean reconstruction error (log)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def render(title: str, facts: list[tuple[str, str]], notes: list[tuple[str, str]], images: list[tuple[str, str]],
           raw: dict | None = None) -> bytes:
    """A self-contained HTML page: facts table, notes (status, text), images (caption, base64 PNG)."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    colors = {"ok": "#2e7d32", "warning": "#e65100", "fail": "#c62828", "info": "#455a64"}
    items = "".join(f'<li><b style="color:{colors.get(s, "#000")}">{esc(s)}</b> {esc(t)}</li>' for s, t in notes)
    figs = "".join(f'<figure><img alt="{esc(c)}" src="data:image/png;base64,{b}"><figcaption>{esc(c)}'
                   f"</figcaption></figure>" for c, b in images)
    details = (f"<details><summary>raw summary</summary><pre>{esc(json.dumps(raw, indent=2))}</pre></details>"
               if raw is not None else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}
img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#555;font-size:90%}}</style></head>
<body><h1>{esc(title)}</h1><table>{rows}</table><ul>{items}</ul>{figs}{details}</body></html>"""
    return page.encode()


def training_report(model_uri: str, history: list[dict], reference: dict, threshold: dict, metrics: dict) -> bytes:
    """report.html for a model artefact: losses, verdicts, validation error distribution."""
    facts = [("model", model_uri), ("epochs run", str(len(history))), ("best epoch", str(metrics["best_epoch"])),
             ("train / validation loss", f"{metrics['train_loss']:.4g} / {metrics['val_loss']:.4g}"),
             ("mean-reconstruction baseline", f"{metrics['mean_baseline_val_loss']:.4g}"),
             ("threshold", f"{threshold['value']:.4g} (quantile {threshold['quantile']:g} of "
                           f"{threshold['validation_rows']} validation rows; 95% CI "
                           f"{threshold['ci'][0]:.4g} to {threshold['ci'][1]:.4g})")]
    notes = [(c["status"], f"{c['check']}: {c['message']}") for c in metrics["diagnostics"]]
    notes += [("warning", w) for w in metrics.get("warnings", [])]
    images = [("Training and validation loss per epoch", loss_curves(history))]
    lin, log = error_histograms(reference["histogram"], threshold["value"], "validation anomaly_score",
                                threshold.get("ci"))
    images += [("Validation error distribution with the calibrated threshold", lin),
               ("Validation error distribution, log scale", log)]
    return render(f"aescore training report: {model_uri}", facts, notes, images, raw=metrics)


def scoring_report(summary: dict) -> bytes:
    """report.html for a scoring run: error distribution, threshold, top columns, leakage."""
    q = summary["quantiles"]
    facts = [("input", summary["input"]["uri"]), ("model", f"{summary['model']['uri']} ({summary['model']['version']})"),
             ("rows", str(summary["row_count"])),
             ("mean / p50 / p99 / max", f"{summary['mean']:.4g} / {q['p50']:.4g} / {q['p99']:.4g} / {summary['max']:.4g}"
              if summary["count"] else "no finite errors"),
             ("threshold", f"{summary['threshold']:.4g} ({summary['threshold_source']})"),
             ("anomalies", f"{summary['anomaly_count']} ({100 * (summary['anomaly_rate'] or 0):.2f}%)")]
    notes = [("warning", w) for w in summary.get("warnings", [])]
    images = []
    if summary["count"]:
        lin, log = error_histograms(summary["histogram"], summary["threshold"], "anomaly_score",
                                    summary.get("threshold_ci"))
        images += [("Distribution of anomaly_score with the threshold", lin), ("Same distribution, log scale", log)]
    cols = summary.get("columns") or {}
    if cols.get("mean_error"):
        top = sorted(cols["mean_error"].items(), key=lambda kv: -kv[1])[:15]
        images.append(("Columns by mean error (normalised loss per observed cell)",
                       bar_chart([k for k, _ in top], [v for _, v in top], "top columns by mean error",
                                 "mean normalised loss")))
    if cols.get("top1_rows"):
        top = sorted(cols["top1_rows"].items(), key=lambda kv: -kv[1])[:15]
        images.append(("Columns that most often contribute the largest error of a row",
                       bar_chart([k for k, _ in top], [v for _, v in top], "top columns by rows led",
                                 "rows where the column has the largest error")))
    raw = {k: v for k, v in summary.items() if k != "histogram"}
    return render(f"aescore scoring report: {summary['input']['uri']}", facts, notes, images, raw=raw)


def sweep_plot(rows: list[dict], recommended: int, tolerance: float) -> bytes:
    """PNG: validation loss (and AUROC if present) against latent size, recommendation marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    k = [r["latent_dim"] for r in rows]
    ax.plot(k, [r["val_loss"] for r in rows], marker="o", color="steelblue", label="validation loss")
    ax.plot(k, [r["train_loss"] for r in rows], marker=".", linestyle=":", color="grey", label="train loss")
    best = min(r["val_loss"] for r in rows)
    ax.axhline(best * (1 + tolerance), color="steelblue", alpha=0.3, linestyle="--",
               label=f"best + {100 * tolerance:g}%")
    ax.axvline(recommended, color="crimson", linestyle="--", label=f"recommended latent {recommended}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(k, [str(x) for x in k])
    ax.set_xlabel("latent_dim")
    ax.set_ylabel("mean reconstruction error")
    handles, labels = ax.get_legend_handles_labels()
    if any(r.get("auroc") is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(k, [r["auroc"] for r in rows], marker="s", color="darkorange", label="AUROC (labelled data)")
        ax2.set_ylabel("AUROC")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title("latent-size sweep")
    return base64.b64decode(_png(fig))
