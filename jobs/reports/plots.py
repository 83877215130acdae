"""The figures of the HTML reports, as base64 PNGs, drawn from summaries only (never rows).

Scores are heavy-tailed, so distributions are drawn on a log axis over the fixed
log-spaced bins of ``aemodel.metrics.histogram_edges``, as the fraction of rows per bin:
two distributions of different sizes (validation, tonight) then share one scale.
matplotlib runs headless (Agg).
"""

from __future__ import annotations

import base64
import io

import numpy as np

SCORED, VALIDATION, THRESHOLD = "steelblue", "darkorange", "crimson"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    return plt


def load_in_background() -> None:
    """Import matplotlib in a daemon thread: a job that waits on its workers (the Ray Data paths)
    has its half second of import done by the time it draws the report (bench/score_throughput.py)."""
    import threading

    threading.Thread(target=_plt, name="aescore-plots-import", daemon=True).start()


def png(fig) -> str:
    """The figure as a base64 PNG (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _log_scale(ax, which: str, base: float = 10) -> None:
    """A log scale on ``ax``'s ``which`` axis ("x" or "y"), labelled 0.01, 1, 100 rather than 10^-2, 10^0, 10^2.

    Matplotlib's default log labels are mathtext, whose parser takes about half a second
    to set up in every new process: a third of a scoring run's report (bench/score_throughput.py).
    """
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """LogFormatter's choice of which ticks to label, each written as ``%g``."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(PlainLogFormatter(base))
    axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def _threshold_line(ax, threshold: float | None, ci: list[float] | None = None) -> None:
    if threshold is None:
        return
    ax.axvline(threshold, color=THRESHOLD, linestyle="--", linewidth=1.5, label=f"threshold {threshold:.4g}")
    if ci:
        ax.axvspan(ci[0], ci[1], color=THRESHOLD, alpha=0.12, label=f"threshold 95% CI [{ci[0]:.3g}, {ci[1]:.3g}]")


def _fractions(hist: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(edges, fraction of all rows per bin, total rows incl. under/overflow) of a histogram."""
    counts = np.asarray(hist["counts"], dtype=float)
    total = counts.sum() + hist.get("underflow", 0) + hist.get("overflow", 0)
    return np.asarray(hist["edges"], dtype=float), counts / max(total, 1), int(total)


def distribution(hists: list[tuple[str, dict]], threshold: float | None, ci: list[float] | None = None,
                 title: str = "anomaly_score") -> str:
    """Distributions overlaid (the first filled, the rest as outlines) with the threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    lo, hi = None, None
    for i, (label, hist) in enumerate(hists):
        edges, frac, total = _fractions(hist)
        nz = np.nonzero(frac)[0]
        if nz.size:
            lo = nz[0] if lo is None else min(lo, nz[0])
            hi = nz[-1] + 1 if hi is None else max(hi, nz[-1] + 1)
        kw = dict(color=SCORED, alpha=0.55) if i == 0 else dict(color=VALIDATION, histtype="step", linewidth=1.8)
        ax.hist(edges[:-1], bins=edges, weights=frac, label=f"{label} ({total:,} rows)", **kw)
    if lo is not None:
        edges = np.asarray(hists[0][1]["edges"])
        left, right = edges[max(lo - 1, 0)], edges[min(hi + 1, len(edges) - 1)]
        if threshold is not None:
            right = max(right, threshold * 1.5)
        ax.set_xlim(left, right)
    _log_scale(ax, "x")
    _threshold_line(ax, threshold, ci)
    ax.set_xlabel(f"{title} (log scale)")
    ax.set_ylabel("fraction of rows per bin")
    ax.legend(fontsize=8)
    return png(fig)


def _above(hist: dict) -> tuple[np.ndarray, np.ndarray]:
    """(edges, fraction of rows above each edge)."""
    counts = np.asarray(hist["counts"], dtype=float)
    total = counts.sum() + hist.get("underflow", 0) + hist.get("overflow", 0)
    above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]]) + hist.get("overflow", 0)
    return np.asarray(hist["edges"], dtype=float), above / max(total, 1)


def flagged_curve(scored: dict, validation: dict | None, threshold: float, flagged_rate: float | None) -> str:
    """Rows flagged as the threshold moves: scored rows, and validation rows (the false-alarm rate)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    edges, frac = _above(scored)
    keep = frac > 0
    ax.step(edges[keep], frac[keep], where="post", color=SCORED, label="scored rows flagged")
    if validation is not None:
        v_edges, v_frac = _above(validation)
        keep_v = v_frac > 0
        ax.step(v_edges[keep_v], v_frac[keep_v], where="post", color=VALIDATION, linestyle="--",
                label="validation rows flagged (false alarms on normal data)")
    _threshold_line(ax, threshold)
    falling = np.nonzero(frac < 0.995)[0]  # start where the curve leaves 100%: left of it is empty
    if falling.size:
        ax.set_xlim(left=edges[max(falling[0] - 2, 0)])
    if flagged_rate:
        ax.plot([threshold], [flagged_rate], "o", color=THRESHOLD)
        ax.annotate(f" {100 * flagged_rate:.2f}% flagged", (threshold, flagged_rate), fontsize=8, color=THRESHOLD)
    _log_scale(ax, "x")
    _log_scale(ax, "y")
    ax.set_xlabel("threshold on anomaly_score (log scale)")
    ax.set_ylabel("fraction of rows above it")
    ax.legend(fontsize=8)
    return png(fig)


def bar_chart(labels: list[str], values: list[float], title: str, xlabel: str) -> str:
    """Horizontal bars, first label on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color="darkorange")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return png(fig)


def loss_curves(history: list[dict], baseline: float | None = None) -> str:
    """Training and validation loss per epoch, the best epoch and the mean-reconstruction baseline."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker="o", markersize=2, label="training loss")
    ax.plot(ep, [h["val_loss"] for h in history], marker="o", markersize=2, label="validation loss")
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best: epoch {best['epoch']}")
    if baseline:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1,
                   label=f"mean-reconstruction baseline {baseline:.3g} (validation)")
    _log_scale(ax, "y")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss per row (log)")
    ax.legend(fontsize=8)
    return png(fig)


def trend(dates: list[str], series: list[tuple[str, list[float | None]]], ylabel: str,
          limits: list[tuple[str, float]] = (), log: bool = False, alerts: list[bool] | None = None) -> str:
    """Values per night (one line each), limits as dashed lines, nights with an alert marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = np.arange(len(dates))
    for label, values in series:
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", markersize=4, label=label)
    for label, value in limits:
        ax.axhline(value, color=THRESHOLD, linestyle="--", linewidth=1, alpha=0.7, label=label)
    for i, alert in enumerate(alerts or []):
        if alert:
            ax.axvspan(i - 0.4, i + 0.4, color=THRESHOLD, alpha=0.1)
    ax.set_xticks(x, dates, rotation=30, fontsize=8, ha="right")
    if log:
        _log_scale(ax, "y")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return png(fig)


def column_histograms(columns: list[tuple[str, dict]], label: str = "scored", reference: str = "training") -> str:
    """Before/after distributions of up to four columns (``aemodel.columns.compare`` figures), one panel each."""
    plt = _plt()
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.4, 2.9), squeeze=False)
    for ax, (name, col) in zip(axes[0], columns):
        if "plot" in col:  # numeric: shares over bins of the column's range
            p = col["plot"]
            edges = np.asarray(p["edges"])
            left, width = edges[:-1], np.diff(edges)
            ax.bar(left, p["reference_shares"], width=width, align="edge", color=VALIDATION, alpha=0.5,
                   label=reference)
            ax.bar(left, p["shares"], width=width, align="edge", color=SCORED, alpha=0.5, label=label)
            ax.set_xlabel("standardised value" if p.get("standardised") else "value", fontsize=8)
        else:  # binary / categorical: shares of each value
            labels = col.get("labels") or [str(i) for i in range(len(col["shares"]))]
            x = np.arange(len(labels))
            ax.bar(x - 0.2, col["reference_shares"], width=0.4, color=VALIDATION, label=reference)
            ax.bar(x + 0.2, col["shares"], width=0.4, color=SCORED, label=label)
            ax.set_xticks(x, [str(v)[:12] for v in labels], rotation=45, fontsize=7, ha="right")
        ax.set_title(f"{name}: PSI {col['psi']:.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of rows", fontsize=8)
    return png(fig)


def sweep_plot(rows: list[dict], recommended: int, knee_share: float, auroc_tolerance: float) -> bytes:
    """PNG bytes: validation loss (and AUROC if present) against latent size, the rule and its choice marked.

    Without labels the line marks the knee (``knee_share`` of the loss reduction, ``jobs.sweep.recommend``);
    with labels, the AUROC within ``auroc_tolerance`` of the best. Latents that likely copy the
    input are crossed out.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
    k = [r["latent_dim"] for r in rows]
    ax.plot(k, [r["val_loss"] for r in rows], marker="o", color="steelblue", label="validation loss")
    ax.plot(k, [r["train_loss"] for r in rows], marker=".", linestyle=":", color="grey", label="training loss")
    copies = [r for r in rows if r.get("copying")]
    if copies:
        ax.scatter([r["latent_dim"] for r in copies], [r["val_loss"] for r in copies], marker="x", s=90,
                   color=THRESHOLD, zorder=3, label="likely copying the input")
    labelled = all(r.get("auroc") is not None for r in rows)
    if not labelled:
        kept = [r for r in rows if not r.get("copying")] or rows
        first, lowest = kept[0]["val_loss"], min(r["val_loss"] for r in kept)
        ax.axhline(first - knee_share * (first - lowest), color="steelblue", alpha=0.4, linestyle="--",
                   label=f"knee: {knee_share:.0%} of the loss reduction")
    ax.axvline(recommended, color="crimson", linestyle="--", label=f"recommended latent {recommended}")
    _log_scale(ax, "x", base=2)
    ax.set_xticks(k, [str(x) for x in k])
    ax.set_xlabel("latent_dim")
    ax.set_ylabel("loss per row (best epoch)")
    handles, labels = ax.get_legend_handles_labels()
    if any(r.get("auroc") is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(k, [r["auroc"] for r in rows], marker="s", color="darkorange", label="AUROC (labelled data)")
        if labelled:
            best = max(r["auroc"] for r in rows)
            ax2.axhline(best - auroc_tolerance, color="darkorange", alpha=0.4, linestyle="--",
                        label=f"best AUROC - {auroc_tolerance:g}")
        ax2.set_ylabel("AUROC")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # Below the axes: over the plot it hides the points at the largest latents, where the AUROC peaks.
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_title("latent-size sweep")
    return base64.b64decode(png(fig))
