"""Nightly scoring: score one date partition, commit it, report drift, page on an alert.

Submit to a Ray cluster (from the repository root), e.g. from a scheduler::

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env cluster/runtime_env.yaml -- \\
        python -m jobs.nightly --model s3://bucket/models/LATEST.json \\
        --data 's3://bucket/events/dt={date}/' --out 's3://bucket/scores/dt={date}/' --score.id_columns event_id

Locally: ``aescore nightly --date 2026-11-27 --model ./model --data './events/dt={date}' --out './scores/dt={date}'``.

``--date`` defaults to yesterday (UTC); ``--start``/``--end`` backfill a range in order.
Each night is an ordinary committed scoring run (idempotent: a rerun reuses it) whose
``drift.json``, committed with it beside its ``summary.json``, compares the night with the model's validation
reference and with the previous ``--history-nights`` committed nights.

Exit codes: 0 all nights fine; 3 at least one night crossed an alert limit; 2 bad input or
configuration (e.g. a missing input partition); 1 any other failure.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import ClassVar

import numpy as np

from aemodel import columns, drift
from aemodel.bank import validation_reference
from aemodel.columns import drifted_columns
from jobs import score
from aemodel.commit import claim_prefix, read_committed_json
from jobs.monitoring.comparison import challenger_lines
from jobs.runtime.config import parse_config
from jobs.runtime.errors import OutputError, describe
from jobs.reports.html import nightly_report
from jobs.scoring.config import ScoreOptions
from jobs.data.storage import check_uris, normalize_storage_options, redact_config
from jobs.lifecycle.registry import is_registry_uri, pin_challenger, pin_version, resolve_model
from jobs.lifecycle.tracking import TrackingOptions, check_tracking, log_scoring

DRIFT_EXIT_CODE = 3


MAX_HISTORY_NIGHTS = 3660
"""Most calendar days of history a night compares with (ten years; each day is one summary read)."""
MAX_NIGHTS = 3660
"""Most nights one backfill runs."""


def check_template(flag: str, template: str) -> None:
    """Refuse a URI template that does not have exactly the ``{date}`` placeholder to fill.

    Raises:
        ValueError: No ``{date}``, another placeholder (``{region}``, ``{}``), a format spec or
            an unbalanced brace; the message says how to write a literal brace.
    """
    import string

    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{flag} {template}: {e} (write {{{{ and }}}} for a literal brace)") from None
    other = ["{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
             for name, spec, conv in fields if name != "date" or spec or conv]
    if other:
        raise ValueError(f"{flag} {template}: placeholder {other[0]} is not filled in; only a plain {{date}} is "
                         "(YYYY-MM-DD; write {{ and }} for a literal brace)")
    if not fields:
        raise ValueError(f"{flag} must contain {{date}} so each night has its own partition")


@dataclass
class NightlyConfig(TrackingOptions):
    """Model, nights and alert limits"""

    model: str
    """Model artefact URI, a pointer file written by aescore train --publish-latest, or a registry version (models:/NAME/VERSION, models:/NAME@ALIAS: the alias is read once, before the first night)."""
    data: str
    """Input URI template with {date}, e.g. s3://bucket/events/dt={date}/."""
    out: str
    """Output URI template with {date}, e.g. s3://bucket/scores/dt={date}/."""
    date: str | None = None
    """Night to score (YYYY-MM-DD); default yesterday in UTC."""
    start: str | None = None
    """First night of a backfill (with --end); nights run in date order."""
    end: str | None = None
    """Last night of a backfill (inclusive)."""
    history_nights: int = 7
    """Calendar days before each night whose committed nights form the recent baseline (a day without a committed night is skipped, so gaps shrink it)."""
    psi_alert: float = 0.2
    """Alert when PSI of anomaly_score against a baseline exceeds this."""
    ks_alert: float = 0.15
    """Alert when the KS statistic against a baseline exceeds this."""
    anomaly_rate_alert: float = 3.0
    """Alert when the anomaly rate exceeds this multiple of the baseline's."""
    column_drift_alert: float | None = None
    """Alert when at least this share of the feature columns drifted from training (each column's PSI above --psi-alert and its noise level), e.g. 0.2; default: reported, never alerts."""
    score: ScoreOptions = field(default_factory=ScoreOptions)
    """Scoring options of every night, as --score.<option> (aescore score's)"""

    FLAG_ALIASES: ClassVar[dict[str, str]] = {"challenger": "score.challenger",
                                              "reference_data": "score.reference_data",
                                              "label_column": "score.label_column"}
    """The challenger's options as aescore score spells them (--challenger, --reference-data, --label-column)."""

    def __post_init__(self) -> None:
        for name in ("data", "out"):
            check_template(f"--{name}", getattr(self, name))
        if (self.start is None) != (self.end is None):
            raise ValueError("--start and --end go together")
        if self.date and self.start:
            raise ValueError("give either --date or --start/--end")
        if not 0 <= self.history_nights <= MAX_HISTORY_NIGHTS:
            raise ValueError(f"--history-nights must be between 0 and {MAX_HISTORY_NIGHTS}, got {self.history_nights}")
        nights = self.nights()  # parses every date
        if len(nights) > MAX_NIGHTS:
            raise ValueError(f"--start {self.start} to --end {self.end} is {len(nights)} nights; a backfill runs at "
                             f"most {MAX_NIGHTS}: split it")
        if (nights[0] - date.min).days < self.history_nights:
            raise ValueError(f"{nights[0]} minus --history-nights {self.history_nights} days is before the year 1")
        for name in ("psi_alert", "ks_alert", "anomaly_rate_alert"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.column_drift_alert is not None and not 0 < self.column_drift_alert <= 1:
            raise ValueError(f"--column-drift-alert must be in (0, 1], got {self.column_drift_alert}")

    def nights(self) -> list[date]:
        """The dates to run, in order."""
        def parse(s: str) -> date:
            try:
                return date.fromisoformat(s)
            except ValueError as e:
                raise ValueError(f"not a date (YYYY-MM-DD): {s!r}") from e

        if self.start:
            first, last = parse(self.start), parse(self.end)
            if last < first:
                raise ValueError(f"--end {self.end} is before --start {self.start}")
            return [first + timedelta(days=i) for i in range((last - first).days + 1)]
        if self.date:
            return [parse(self.date)]
        return [datetime.now(timezone.utc).date() - timedelta(days=1)]


@dataclass
class NightResult:
    night: str
    out: str
    reused: bool
    drift: dict
    warnings: list[str] = field(default_factory=list)
    """The scoring run's warnings (``summary.json``), printed under the night's line."""
    tracking: str | None = None
    """The MLflow run the night was logged as, when tracked."""
    challenger: dict | None = None
    """The comparison's headline figures (``summary.json`` ``challenger``) with --score.challenger."""


def run_night(cfg: NightlyConfig, night: date, tracking: str | None = None) -> NightResult:
    """Score one night; its drift report is committed with it, beside its summary; log it to MLflow at ``tracking``."""
    from aemodel import load_artifact

    options = normalize_storage_options(cfg.score.storage_options)
    stamp = night.isoformat()
    out = cfg.out.format(date=stamp)
    model_uri, _ = resolve_model(cfg.model, cfg.tracking_uri, options, load_artifact)
    art = load_artifact(model_uri, options)
    reports: list[dict] = []

    def drift_files(tonight: dict) -> dict[str, bytes]:
        history = committed_nights(cfg, night, options)
        reports.append(drift_report(cfg, night, tonight, art, history))
        page = nightly_report(reports[-1], trend_rows(cfg, night, tonight, reports[-1], history, options))
        return {"drift.json": json.dumps(reports[-1], indent=2).encode(), "drift.html": page}

    # A registry version goes to the scoring run as such, so its summary names it.
    result = score.run(night_config(cfg, night, cfg.model if is_registry_uri(cfg.model) else model_uri),
                       extra_files=drift_files, track=False)
    if result.reused:  # committed by an earlier run, with its drift report
        report = read_committed_json(out, "drift.json", options) or drift_report(
            cfg, night, result.summary, art, committed_nights(cfg, night, options))
        report = with_limits(cfg, report)
    else:
        report = reports[-1]
    logged = None
    if tracking is not None:
        try:
            logged = log_scoring(tracking, cfg, "nightly", redact_config(asdict(cfg)), result.summary, report,
                                 options)
        except Exception as e:  # noqa: BLE001 - the night is committed; the error says so
            raise OutputError(f"night {stamp} was committed at {out}, but MLflow at {tracking} did not take the run: "
                              f"{describe(e)}; rerun the same command to log it") from e
    return NightResult(night=stamp, out=result.run_uri or out, reused=result.reused, drift=report,
                       warnings=list((result.summary or {}).get("warnings", [])), tracking=logged,
                       challenger=(result.summary or {}).get("challenger"))


def limits(cfg: NightlyConfig) -> dict:
    return {"psi": cfg.psi_alert, "ks": cfg.ks_alert, "anomaly_rate_ratio": cfg.anomaly_rate_alert,
            "column_drift_share": cfg.column_drift_alert}


def alerts_of(report: dict, limit: dict) -> list[str]:
    """The alerts of a drift report's comparisons under ``limit`` (``limits``)."""
    out = [f"{name}: {a}" for name in ("vs_validation", "vs_previous_nights") if name in report
           for a in drift.alerts(report[name], limit["psi"], limit["ks"], limit["anomaly_rate_ratio"])]
    share_limit = limit.get("column_drift_share")
    vs_training = (report.get("column_drift") or {}).get("vs_training")
    if share_limit and vs_training:
        moved = drifted_columns(vs_training, limit["psi"])
        share = len(moved) / max(len(vs_training["columns"]), 1)
        if share >= share_limit:
            out.append(f"columns: {len(moved)} of {len(vs_training['columns'])} feature columns drifted from training "
                       f"({100 * share:.0f}% >= {100 * share_limit:.0f}%): {', '.join(moved[:5])}"
                       + (", ..." if len(moved) > 5 else ""))
    return out


def with_limits(cfg: NightlyConfig, report: dict) -> dict:
    """A reused night's drift report judged by this run's alert limits.

    The committed drift.json keeps the limits it was written with; a rerun with new limits
    (say, after a false alarm) re-evaluates its stored comparisons instead of repeating the
    old verdict.
    """
    if report.get("limits") == limits(cfg):
        return report
    return {**report, "limits": limits(cfg), "alerts": alerts_of(report, limits(cfg)),
            "committed_limits": report.get("limits"), "committed_alerts": report.get("alerts", [])}


def night_config(cfg: NightlyConfig, night: date, model_uri: str) -> score.ScoreConfig:
    """The scoring options of one night."""
    stamp = night.isoformat()
    return score.ScoreConfig(model=model_uri, data=cfg.data.format(date=stamp), out=cfg.out.format(date=stamp),
                             tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, **asdict(cfg.score))


def check_nights(cfg: NightlyConfig, nights: list[date]) -> None:
    """Refuse a backfill up front if any night's input or output would fail it: checked from the
    footers of every night's files before the first night runs.

    Checked night by night instead, a backfill would stop halfway, after committing the
    first nights.

    Raises:
        InputError: A night's input path does not exist, holds no Parquet file, or lacks an
            id column; a path with an empty segment.
        SchemaError: A night's files lack a feature column or hold it with another type.
        OutputError: A night's output prefix holds files aescore did not write, or another kind of output.
        ArtifactError: The model cannot be loaded.
    """
    from aemodel import load_artifact

    options = normalize_storage_options(cfg.score.storage_options)
    model_uri, _ = resolve_model(cfg.model, cfg.tracking_uri, options, load_artifact)
    art = load_artifact(model_uri, options)
    for night in nights:
        night_cfg = night_config(cfg, night, model_uri)
        check_uris({"--data": night_cfg.data, "--out": night_cfg.out}, options)
        score.open_scoring_input(night_cfg, art)
        claim_prefix(night_cfg.out, "scores", options, write=False)


def committed_nights(cfg: NightlyConfig, night: date, options: dict) -> list[tuple[str, dict]]:
    """(date, summary) of the committed nights among the ``history_nights`` days before ``night``, oldest first.

    Read once per night, for both the drift baseline and the trend in drift.html; an
    uncommitted night counts as absent.
    """
    out = []
    for back in range(cfg.history_nights, 0, -1):
        day = (night - timedelta(days=back)).isoformat()
        summary = read_committed_json(cfg.out.format(date=day), "summary.json", options)
        if summary is not None:
            out.append((day, summary))
    return out


def drift_report(cfg: NightlyConfig, night: date, tonight: dict, art,
                 history: list[tuple[str, dict]]) -> dict:
    """One night's summary against the model (its validation score distribution, its training columns) and
    the previous committed nights (``history``)."""
    reference = validation_reference(art)
    stamp = night.isoformat()
    report: dict = {"date": stamp, "model": tonight["model"], "row_count": tonight["row_count"],
                    "limits": limits(cfg), "vs_validation": drift.compare(tonight, reference), "alerts": []}
    # Only nights whose distribution is of the same score (older outputs hold recon_error),
    # newest first as before.
    # Nights scored by another model version are left out: a retrained model's scores have
    # another distribution, and comparing them would alert on the retraining, not on the data.
    version = (tonight.get("model") or {}).get("version")
    same = [(day, s) for day, s in reversed(history) if (s.get("model") or {}).get("version") == version]
    previous = [{**s, "date": day} for day, s in same
                if s["histogram"]["edges"] == tonight["histogram"]["edges"] and s.get("score") == tonight.get("score")]
    report["previous_nights"] = [p["date"] for p in previous]
    other = [day for day, s in reversed(history) if (s.get("model") or {}).get("version") != version]
    if other:
        report["previous_nights_other_model"] = other
    if previous:
        report["vs_previous_nights"] = drift.compare(tonight, drift.pool(previous))
        report["columns"] = column_shift(tonight, previous)
    # Which feature moved: each column against the training rows, and against the previous nights pooled.
    current = tonight.get("columns_distribution")
    vs_training = columns.compare_to_model(current, art, cfg.psi_alert)
    if vs_training is not None:
        report["column_drift"] = {"vs_training": vs_training}
        pooled = functools.reduce(columns.merge, [p.get("columns_distribution") for p in previous], None)
        if pooled:
            report["column_drift"]["vs_previous_nights"] = columns.compare_to_model(current, art, cfg.psi_alert,
                                                                                    reference=pooled)
    report["alerts"] = alerts_of(report, report["limits"])
    return report


def column_shift(tonight: dict, previous: list[dict]) -> dict:
    """Which columns moved: each column's share of the rows it leads (largest error), tonight vs the previous nights.

    From ``columns.top1_rows`` of the summaries (there whenever top_k > 0), so it needs no
    per-column error output; with --score.column_errors the mean errors are compared too.
    """
    def shares(summaries: list[dict]) -> dict[str, float]:
        counts: dict[str, int] = {}
        for s in summaries:
            for col, n in (s.get("columns") or {}).get("top1_rows", {}).items():
                counts[col] = counts.get(col, 0) + n
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()} if total else {}

    now, before = shares([tonight]), shares(previous)
    out: dict = {}
    if now and before:
        out["top1_share"] = {c: {"share": now.get(c, 0.0), "baseline_share": before.get(c, 0.0),
                                 "change": now.get(c, 0.0) - before.get(c, 0.0)}
                             for c in sorted(set(now) | set(before))}
    means_now = (tonight.get("columns") or {}).get("mean_error")
    means_before = [m for m in ((s.get("columns") or {}).get("mean_error") for s in previous) if m]
    if means_now and means_before:
        out["mean_error"] = {c: {"mean_error": v, "baseline_mean_error": float(np.mean([m.get(c, np.nan)
                                                                                      for m in means_before]))}
                             for c, v in means_now.items()}
    return out


def trend_rows(cfg: NightlyConfig, night: date, tonight: dict, report: dict, history: list[tuple[str, dict]],
               options: dict) -> list[dict]:
    """Tonight and the previous committed nights (oldest first) as rows of the drift.html trend."""
    def row(day: str, summary: dict, drift_json: dict | None) -> dict:
        vs = (drift_json or {}).get("vs_validation") or {}
        return {"date": day, "row_count": summary["row_count"], "quantiles": summary["quantiles"],
                "anomaly_rate": drift.anomaly_rate(summary), "psi": vs.get("psi", float("nan")),
                "ks": vs.get("ks", float("nan")), "alerts": (drift_json or {}).get("alerts", [])}

    rows = [row(day, s, read_committed_json(cfg.out.format(date=day), "drift.json", options)) for day, s in history]
    return rows + [row(night.isoformat(), tonight, report)]


def run(cfg: NightlyConfig) -> list[NightResult]:
    """Every night of ``cfg`` in date order."""
    cfg, tracking = prepare(cfg)
    return [run_night(cfg, night, tracking) for night in cfg.nights()]


def prepare(cfg: NightlyConfig) -> tuple[NightlyConfig, str | None]:
    """Before the first night: MLflow importable and answering (the tracking URI, or None), a registry
    alias pinned to the version it names now (read once, for every night), every night's input and output."""
    tracking = check_tracking(cfg)
    cfg = replace(cfg, model=pin_version(cfg.model, cfg.tracking_uri))
    if cfg.score.challenger:
        challenger, why = pin_challenger(cfg.score.challenger, cfg.model, cfg.tracking_uri, "--challenger")
        if challenger is None:
            print(f"warning: {why}", file=sys.stderr, flush=True)
            cfg = replace(cfg, score=replace(cfg.score, challenger=None, reference_data=None, label_column=None))
        else:
            cfg = replace(cfg, score=replace(cfg.score, challenger=challenger))
    check_nights(cfg, cfg.nights())
    return cfg, tracking


def format_night(r: NightResult) -> str:
    d = r.drift["vs_validation"]
    state = "ALERT " + "; ".join(r.drift["alerts"]) if r.drift["alerts"] else "ok"
    line = (f"{r.night}: {'reused' if r.reused else 'scored'} {r.drift['row_count']} rows -> {r.out} "
            f"(report.html, drift.html); vs validation PSI={d['psi']:.3f} KS={d['ks']:.3f}; {state}")
    noisy = drift.within_noise(d, r.drift["limits"]["psi"], r.drift["limits"]["ks"])
    if noisy:  # above the limit, but two samples this small differ that much by chance
        line += (f"\n  {' and '.join(noisy)} above the limit but within sampling noise for "
                 f"{r.drift['row_count']} rows against the model's validation rows "
                 f"(noise level PSI {d['psi_noise']:.3f}, KS {d['ks_noise']:.3f}): not alerted")
    other = r.drift.get("previous_nights_other_model", [])
    if other:
        line += (f"\n  {len(other)} previous night(s) scored by another model version left out of "
                 f"vs_previous_nights ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
    if "committed_limits" in r.drift:
        line += (f"\n  alerts judged by this run's limits; the committed drift.json has "
                 f"{len(r.drift['committed_alerts'])} alert(s) under the limits it was written with"
                 + (f" {r.drift['committed_limits']}" if r.drift["committed_limits"] else ""))
    if r.challenger:
        line += "\n" + "\n".join(challenger_lines({"challenger": r.challenger}))
    if r.tracking:
        line += f"\n  mlflow: run {r.tracking}"
    # A nightly log may be all anyone reads: the scoring warnings (skipped files, unseen values) too.
    return line + "".join(f"\n  warning: {w}" for w in r.warnings)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.nightly``: exit 3 when a night crossed an alert limit."""
    from jobs.runtime.entry import run_cli, verbose_from

    results: list[NightResult] = []

    def job() -> str:
        cfg = parse_config(NightlyConfig, verbose_from(argv), prog="aescore nightly",
                           description=__doc__.split("\n")[0])
        cfg, tracking = prepare(cfg)
        for night in cfg.nights():
            try:
                results.append(run_night(cfg, night, tracking))
            except BaseException:
                if results:  # the error line follows; the nights already committed must not go unmentioned
                    print(f"nightly: stopped at {night} after {len(results)} committed night(s), alerts on "
                          f"{[r.night for r in results if r.drift['alerts']] or 'none'}", flush=True)
                raise
            print(format_night(results[-1]), flush=True)
        alerted = [r.night for r in results if r.drift["alerts"]]
        return f"nightly: {len(results)} night(s), alerts on {alerted or 'none'}"

    code = run_cli(job)
    if code == 0 and any(r.drift["alerts"] for r in results):
        return DRIFT_EXIT_CODE
    return code


if __name__ == "__main__":
    # Run the importable module so Ray pickles references to jobs.* (see jobs/score.py).
    from jobs.nightly import main as module_main

    from jobs.runtime.entry import run_entry_point

    run_entry_point(module_main)
