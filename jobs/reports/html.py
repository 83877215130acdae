"""Self-contained HTML reports (embedded PNGs) for training, scoring, nightly and sweep runs.

Everything comes from the summaries (fixed-grid histograms, per-column aggregates, the
top rows kept while scoring), never from the rows, so a report costs the same for 1k or
1B rows. The figures live in ``jobs.reports.plots``.
"""

from __future__ import annotations

import base64
import html
import json

from aemodel.drift import NOISE_LEVEL, anomaly_rate, finite_count, within_noise
from jobs.reports.plots import (bar_chart, column_histograms, distribution, flagged_curve, loss_curves, sweep_plot,
                                trend)

Table = tuple[str, list[str], list[list[str]]]  # caption, headers, rows
_COLORS = {"ok": "#2e7d32", "warning": "#e65100", "fail": "#c62828", "info": "#455a64"}


def render(title: str, facts: list[tuple[str, str]], notes: list[tuple[str, str]], images: list[tuple[str, str]],
           raw: dict | None = None, tables: list[Table] = (), links: list[tuple[str, str]] = ()) -> bytes:
    """A self-contained HTML page.

    Args:
        title: Page heading.
        facts: (name, value) rows of the facts table.
        notes: (status, text): ok/info as a list; warnings and failures also in a box on top.
        images: (caption, base64 PNG).
        raw: Shown folded at the end as JSON.
        tables: (caption, headers, rows) after the figures.
        links: (text, relative href) to related reports.
    """
    esc = html.escape
    alarms = [(s, t) for s, t in notes if s in ("warning", "fail")]
    banner = ("<div class=alarm>" + "".join(f"<p><b>{esc(s)}</b> {esc(t)}</p>" for s, t in alarms) + "</div>"
              if alarms else "")
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    # Warnings and failures are in the box on top; the list holds the rest, so nothing is said twice.
    items = "".join(f'<li><b style="color:{_COLORS.get(s, "#000")}">{esc(s)}</b> {esc(t)}</li>'
                    for s, t in notes if s not in ("warning", "fail"))
    figs = "".join(f'<figure><img alt="{esc(c)}" src="data:image/png;base64,{b}"><figcaption>{esc(c)}'
                   f"</figcaption></figure>" for c, b in images)
    tabs = "".join(f"<h2>{esc(c)}</h2><table class=data><tr>{''.join(f'<th>{esc(h)}</th>' for h in hs)}</tr>"
                   + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rs) + "</table>"
                   for c, hs, rs in tables)
    nav = ("<p>" + " · ".join(f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in links) + "</p>"
           if links else "")
    details = (f"<details><summary>raw summary</summary><pre>{esc(json.dumps(raw, indent=2))}</pre></details>"
               if raw is not None else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:920px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}
table.data td{{font-family:monospace;font-size:90%}}h2{{font-size:110%;margin-top:1.5em}}
.alarm{{border:2px solid #e65100;background:#fff3e0;padding:0 1em;margin:1em 0}}
img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#555;font-size:90%}}</style></head>
<body><h1>{esc(title)}</h1>{nav}{banner}<table>{rows}</table><ul>{items}</ul>{figs}{tabs}{details}</body></html>"""
    return page.encode()


def _bank_section(bank: dict) -> tuple[list[tuple[str, str]], list[Table]]:
    """A model bank's facts and its table of entity verdicts."""
    e, r = bank["entities"], bank["rows"]
    facts = [("model bank", f"{e['models']:,} entity models ({', '.join(bank['entity_columns'])}) of {e['seen']:,} "
                            f"entities; {e['too_few_rows']:,} below {bank['min_entity_rows']} rows and "
                            f"{e['failed_count']:,} failed are scored by the global model"),
             ("rows scored by the global model", f"{100 * r['global_only_share']:.1f}% of the training rows "
                                                 f"({r['null_entity']:,} with no entity value)")]
    what = {"overfitting": "overfits (training loss far below validation loss)",
            "convergence": "stopped while still improving (not converged)",
            "vs_mean_baseline": "no better than predicting each column's mean",
            "learning": "flat or jumping loss (no learning)", "latent_size": "latent size as wide as the input"}
    rows = [[what.get(c, c), f"{v['count']:,}", ", ".join(v["entities"]) + (" ..." if v["count"] > len(v["entities"])
                                                                            else "")]
            for c, v in bank["flagged"].items()]
    if e["failed_count"]:
        rows.append(["failed a diagnostic: no model", f"{e['failed_count']:,}", ", ".join(e["failed"])])
    return facts, [("Entity models with a warning (entities/index.json lists every entity)",
                    ["verdict", "entities", "which"], rows)] if rows else []


def training_report(model_uri: str, history: list[dict], reference: dict, threshold: dict, metrics: dict,
                    links: list[tuple[str, str]] = (), bank: dict | None = None) -> bytes:
    """report.html of a model artefact: losses against the baseline, verdicts, validation distribution
    (and for a model bank, its entity models' verdicts)."""
    facts = [("model", model_uri), ("epochs run", str(len(history))), ("best epoch", str(metrics["best_epoch"])),
             ("training / validation loss", f"{metrics['train_loss']:.4g} / {metrics['val_loss']:.4g}"),
             ("mean-reconstruction baseline", f"{metrics['mean_baseline_val_loss']:.4g} (validation loss of "
                                              "predicting each column's training distribution)"),
             ("threshold", f"{threshold['value']:.4g} on anomaly_score (quantile {threshold['quantile']:g} of "
                           f"{threshold['validation_rows']} validation rows; 95% CI "
                           f"{threshold['ci'][0]:.4g} to {threshold['ci'][1]:.4g})")]
    notes = [(c["status"], f"{c['check']}: {c['message']}") for c in metrics["diagnostics"]]
    notes += [("warning", w) for w in metrics.get("warnings", [])]
    images = [("Training objective per epoch (the loss, not anomaly_score): the dashed line is what predicting "
               "each column's mean would score; a model far below it has learned the data's structure",
               loss_curves(history, metrics.get("mean_baseline_val_loss"))),
              ("Validation anomaly_score with the calibrated threshold (normal rows: the threshold should sit "
               "in the far tail)",
               distribution([("validation", reference["histogram"])], threshold["value"], threshold.get("ci")))]
    tables: list[Table] = []
    if bank:
        more, tables = _bank_section(bank)
        facts += more
    return render(f"aescore training report: {model_uri}", facts, notes, images, raw=metrics, links=links,
                  tables=tables)


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _top_rows_table(summary: dict) -> Table | None:
    rows = summary.get("top_rows") or []
    if not rows:
        return None
    ids = [k for k in rows[0] if k not in ("anomaly_score", "score_percentile", "top_features", "values")]
    body = []
    for i, r in enumerate(rows, 1):
        feats = ", ".join(f"{f['column']} ({100 * f['share']:.0f}%)" for f in r.get("top_features") or [])
        pct = f"{r['score_percentile']:.2f}" if r.get("score_percentile") is not None else "-"
        # The row's values, the columns that explain its error first.
        values = r.get("values") or {}
        led = [f["column"] for f in r.get("top_features") or [] if f["column"] in values]
        shown = ", ".join(f"{c}={_value(values[c])}" for c in [*led, *(c for c in values if c not in led)])
        body.append([str(i), *(str(r[k]) for k in ids), f"{r['anomaly_score']:.4g}", pct, feats or "-",
                     shown or "-"])
    return (f"The {len(rows)} rows with the highest anomaly_score",
            ["#", *ids, "anomaly_score", "score_percentile", "largest errors (share of the row's error)",
             "the row's values"], body)


def _column_drift(comparison: dict | None, against: str, rows: int = 15) -> tuple[Table | None, tuple | None]:
    """A table of the columns ranked by PSI, and before/after histograms of the top ones (those that drifted)."""
    if not comparison:
        return None, None
    cols = list(comparison["columns"].items())
    body = []
    for name, c in cols[:rows]:
        shift = (f"{c['mean_shift_sd']:+.2f} sd" if c.get("mean_shift_sd") is not None else
                 f"JS {c['js']:.3f}" if "js" in c else "-")
        values = (f"{_value(c.get('reference_mean_value', c.get('reference_mean')))} -> "
                  f"{_value(c.get('mean_value', c.get('mean')))}" if c["kind"] == "numeric" else
                  ", ".join(f"{lab}: {100 * q:.0f}%->{100 * p:.0f}%" for lab, p, q in
                            sorted(zip(c["labels"], c["shares"], c["reference_shares"]),
                                   key=lambda t: -abs(t[1] - t[2]))[:3]))
        body.append([name, c["kind"], f"{c['psi']:.3f}", _value(c.get("psi_noise")),
                     f"{c['ks']:.3f}" if "ks" in c else "-", shift, values,
                     f"{100 * c['reference_missing_share']:.1f}% -> {100 * c['missing_share']:.1f}%",
                     "yes" if c["drifted"] else "-"])
    table = (f"Feature columns against {against}, by PSI ({len(comparison['drifted'])} of {len(cols)} drifted: "
             f"PSI above {comparison['psi_limit']:g} and its noise level)",
             ["column", "kind", "PSI", "PSI noise", "KS", "mean shift / JS", f"{against} -> now (mean, or top shares)",
              "missing", "drifted"], body)
    top = [(n, c) for n, c in cols[:4] if c["drifted"]] or cols[:2]
    image = (f"The columns that moved most, against {against}: shares of rows per value or bin",
             column_histograms(top, "now", against))
    return table, image


def _entities_table(entities: dict | None) -> Table | None:
    if not entities or not entities["highest_rate"]:
        return None
    return (f"Entities with the highest anomaly rate (of those with at least 20 rows; {entities['entities']:,} "
            "entities in all)", ["entity", "rows", "flagged", "rate", "scored by"],
            [[e["entity"], f"{e['rows']:,}", f"{e['anomaly_count']:,}", f"{100 * e['anomaly_rate']:.1f}%",
              f"{e['scope']} model"] for e in entities["highest_rate"]])


def scoring_report(summary: dict, reference: dict | None = None, extra_tables: list | None = None) -> bytes:
    """report.html of a scoring run: distribution vs validation, flagged-vs-threshold, top rows and columns."""
    q = summary["quantiles"]
    finite = finite_count(summary)
    model = summary["model"]
    facts = [("input", summary["input"]["uri"]), ("model", f"{model['uri']} ({model['version']})"),
             ("rows", f"{summary['row_count']:,}"),
             ("anomaly_score mean / p50 / p99 / max",
              f"{summary['mean']:.4g} / {q['p50']:.4g} / {q['p99']:.4g} / {summary['max']:.4g}"
              if finite else "no finite scores"),
             ("threshold", f"{summary['threshold']:.4g} ({summary['threshold_source']})"),
             ("rows flagged", f"{summary['anomaly_count']:,} ({100 * (summary['anomaly_rate'] or 0):.2f}%)")]
    if reference is not None and anomaly_rate(reference) is not None:
        n_val = finite_count(reference)
        above = round(anomaly_rate(reference) * n_val)
        rough = f"; {above} of {n_val:,} rows: a rough estimate" if above < 5 else f" over {n_val:,} rows"
        facts.append(("validation rows above the threshold", f"{100 * anomaly_rate(reference):.2f}% (expected "
                                                             f"false-alarm rate on normal data{rough})"))
    notes = [("warning", w) for w in summary.get("warnings", [])]
    images = []
    if finite:
        hists = [("scored", summary["histogram"])]
        if reference is not None and reference.get("histogram", {}).get("edges") == summary["histogram"]["edges"]:
            hists.append(("the model's validation rows", reference["histogram"]))
        images.append(("anomaly_score of the scored rows over the model's validation distribution: a scored "
                       "distribution shifted right of validation means the data moved, not only a few anomalies",
                       distribution(hists, summary["threshold"], summary.get("threshold_ci"))))
        images.append(("Rows flagged as the threshold moves: pick a threshold where the scored curve stands well "
                       "above the validation curve (false alarms)",
                       flagged_curve(summary["histogram"], hists[1][1] if len(hists) > 1 else None,
                                     summary["threshold"], summary.get("anomaly_rate"))))
    cols = summary.get("columns") or {}
    led = cols.get("top1_flagged_rows") or {}
    if led:
        top = sorted(led.items(), key=lambda kv: -kv[1])[:15]
        images.append(("Columns that most often carry the largest error of a flagged row",
                       bar_chart([k for k, _ in top], [v for _, v in top], "columns by flagged rows led",
                                 "flagged rows where the column has the largest error")))
    if cols.get("mean_error"):
        top = sorted(cols["mean_error"].items(), key=lambda kv: -kv[1])[:15]
        images.append(("Columns by mean error (normalised loss per observed cell)",
                       bar_chart([k for k, _ in top], [v for _, v in top], "top columns by mean error",
                                 "mean normalised loss")))
    drift_table, drift_image = _column_drift(summary.get("column_drift"), "training")
    if drift_image:
        images.append(drift_image)
    entities = summary.get("entities")
    if entities:  # a model bank: each row's own model's threshold flagged it
        facts[4] = ("threshold", f"each entity model's own; the global model's {summary['threshold']:.4g}")
        facts.append(("entities", f"{entities['entities']:,}: {entities['entities_by_scope']['entity']:,} scored by "
                                  f"their own model; {100 * entities['global_share']:.1f}% of rows "
                                  f"({entities['rows_by_scope']['global']:,}) by the global model"))
    tables = [t for t in (_top_rows_table(summary), drift_table, _entities_table(entities)) if t]
    tables += list(extra_tables or [])
    raw = {k: v for k, v in summary.items() if k not in ("histogram", "top_rows", "columns_distribution")}
    return render(f"aescore scoring report: {summary['input']['uri']}", facts, notes, images, raw=raw,
                  tables=tables)


def nightly_report(report: dict, nights: list[dict]) -> bytes:
    """drift.html of one night: the trend over the recent nights and which columns moved.

    Args:
        report: Tonight's drift report (drift.json).
        nights: One dict per night, oldest first, tonight last: date, quantiles, anomaly_rate,
            psi, ks (vs validation) and alerts.
    """
    dates = [n["date"] for n in nights]
    alerted = [bool(n["alerts"]) for n in nights]
    lim = report["limits"]
    images = [
        ("anomaly_score quantiles per night", trend(dates, [(k, [n["quantiles"].get(k) for n in nights])
                                                            for k in ("p50", "p90", "p99")], "anomaly_score",
                                                    log=True, alerts=alerted)),
        ("Anomaly rate per night (fraction above the model's threshold), with the model's validation rate and "
         "the rate that alerts",
         trend(dates, [("anomaly rate", [n["anomaly_rate"] for n in nights])], "fraction flagged",
               limits=_rate_lines(report), alerts=alerted)),
        ("Drift of each night against the model's validation rows (shaded: nights with an alert; above a limit "
         "line, a night alerts only if it is also above the sampling noise of its row count)",
         trend(dates, [("PSI", [n["psi"] for n in nights]), ("KS", [n["ks"] for n in nights])], "statistic",
               limits=[(f"PSI limit {lim['psi']}", lim["psi"]), (f"KS limit {lim['ks']}", lim["ks"])],
               alerts=alerted)),
    ]
    moved = report.get("columns", {}).get("top1_share") or {}
    tables = []
    column_drift = report.get("column_drift") or {}
    for key, against in (("vs_training", "training"), ("vs_previous_nights", "the previous nights")):
        table, image = _column_drift(column_drift.get(key), against)
        if table:
            tables.append(table)
            images.append(image)
    if moved:
        top = sorted(moved.items(), key=lambda kv: -abs(kv[1]["change"]))[:10]
        tables.append(("Columns that moved: share of rows whose largest error is in the column, tonight vs the "
                       "previous nights", ["column", "tonight", "previous nights", "change"],
                       [[c, f"{100 * v['share']:.1f}%", f"{100 * v['baseline_share']:.1f}%",
                         f"{100 * v['change']:+.1f} pts"] for c, v in top]))
    tables.append(("Nights", ["date", "rows", "p99", "anomaly rate", "PSI", "KS", "alerts"],
                   [[n["date"], f"{n['row_count']:,}", f"{n['quantiles'].get('p99', 0):.4g}",
                     f"{100 * (n['anomaly_rate'] or 0):.2f}%", f"{n['psi']:.3f}", f"{n['ks']:.3f}",
                     "; ".join(n["alerts"]) or "-"] for n in reversed(nights)]))
    notes = [("fail", a) for a in report["alerts"]] or [("ok", "no alert tonight")]
    facts = [("night", report["date"]), ("model", report["model"]["uri"] if isinstance(report["model"], dict)
                                          else str(report["model"])),
             ("rows", f"{report['row_count']:,}"), ("previous nights compared", str(len(report["previous_nights"])))]
    vs = report.get("vs_validation") or {}
    if vs.get("psi_noise") is not None:
        facts.append((f"sampling noise vs validation, PSI / KS ({NOISE_LEVEL} level for these row counts)",
                      f"{vs['psi_noise']:.3f} / {vs['ks_noise']:.3f}"))
        noisy = within_noise(vs, lim["psi"], lim["ks"])
        if noisy:
            notes.append(("info", f"{' and '.join(noisy)} above the limit against the validation rows, but within "
                                  "the sampling noise of these row counts: not an alert"))
    return render(f"aescore nightly drift: {report['date']}", facts, notes, images, raw=report, tables=tables)


def _rate_lines(report: dict) -> list[tuple[str, float]]:
    """The anomaly-rate plot's reference lines: the validation rows' rate and the alert's (ratio limit x it)."""
    rate = (report.get("vs_validation") or {}).get("reference_anomaly_rate")
    if rate is None:
        return []
    ratio = report["limits"]["anomaly_rate_ratio"]
    return [(f"validation rate {100 * rate:.2f}%", rate), (f"alert: {ratio:g}x validation", ratio * rate)]


def sweep_report(rows: list[dict], recommended: int, rule: str, plot_png: bytes) -> bytes:
    """sweep.html: the sweep plot (``sweep_plot``'s PNG) and a table linking every trial's own report."""
    table = ("Trials", ["latent_dim", "validation loss", "training loss", "AUROC", "epochs", "warnings", "report"],
             [[str(r["latent_dim"]) + (" (recommended)" if r["latent_dim"] == recommended else ""),
               f"{r['val_loss']:.4g}", f"{r['train_loss']:.4g}",
               f"{r['auroc']:.3f}" if r.get("auroc") is not None else "-", str(r["epochs"]),
               ", ".join([*r["warnings"], *([f"likely copying: {r['copying']}"] if r.get("copying") else [])]) or "-",
               r["report"]] for r in rows])
    image = base64.b64encode(plot_png).decode()
    return render("aescore latent-size sweep", [("recommended latent_dim", str(recommended)), ("rule", rule)],
                  [], [("Validation loss (and AUROC when labels were given) by latent size", image)],
                  tables=[table], links=[(f"latent {r['latent_dim']} report", r["report"]) for r in rows])


__all__ = ["nightly_report", "render", "scoring_report", "sweep_plot", "sweep_report", "training_report"]
