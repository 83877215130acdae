"""Move the model in service (an MLflow alias or a pointer file) in one step, with an audit record.

    aescore promote NAME --to champion --from challenger --tracking-uri URI --comparison OUT
    aescore promote NAME --rollback --reason "alerts since 2026-12-04" --tracking-uri URI
    aescore promote --to s3://b/models/CHAMPION.json --from s3://b/models/ae-2026-12-05 --comparison OUT

The evidence is the challenger's comparison with the champion on a labelled reference set:
``--comparison`` (a comparison.json, or the output of a score or night run with
``--challenger`` and ``--reference-data``) or ``--reference-data`` with ``--label-column``
(both models scored here). A challenger whose AUROC there is below the champion's is
refused (exit 2, nothing changed) unless ``--force`` with a ``--reason``. Each promotion
and rollback appends one record (time, who, old and new version, the figures relied on,
the reason) to the audit log beside the models (``jobs.lifecycle.promotion``), under a lock: two
promotions at once run one after the other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from jobs.runtime.config import parse_config
from jobs.runtime.errors import InputError
from jobs.lifecycle.promotion import PointerLedger, RegistryLedger, now, who
from jobs.lifecycle.evidence import gather_evidence, judge


@dataclass(kw_only=True)
class PromoteConfig:
    """What moves, and the evidence for it"""

    ADVANCED: ClassVar[tuple[str, ...]] = ("wait", "break_lock", "storage_options")
    """Listed under "Advanced" in --help."""
    FLAG_ALIASES: ClassVar[dict[str, str]] = {"from": "candidate", "registry": "tracking_uri"}
    """``--from`` and ``--registry``, as the issue and the README spell them."""

    name: str | None = None
    """Registered model in the MLflow registry (also the first argument: aescore promote NAME ...); unset: --to is a pointer file."""
    to: str | None = None
    """What moves: with NAME the registry alias scoring reads (default: champion, models:/NAME@champion); without NAME the pointer file, required (a --publish-latest path, any fsspec URI)."""
    candidate: str | None = None
    """The model to promote: with NAME a version number or an alias (default: challenger); without NAME a pointer file or model URI."""
    comparison: str | None = None
    """Evidence: a comparison.json, or a committed score/night output holding one (run with --challenger, --reference-data and --label-column), comparing this champion with this candidate."""
    reference_data: str | None = None
    """Evidence computed here: a labelled Parquet set on which both models are scored (with --label-column)."""
    label_column: str | None = None
    """The --reference-data column that marks anomalies (1/true)."""
    reason: str = ""
    """Why, in the audit record; required with --force and --rollback."""
    force: bool = False
    """Promote without evidence, or against it (needs --reason)."""
    rollback: bool = False
    """Return --to to the model it named before the last promotion not yet rolled back."""
    history: bool = False
    """Print the audit log of --to and change nothing."""
    tracking_uri: str | None = None
    """MLflow tracking server holding the registry (default: MLFLOW_TRACKING_URI); needs pip install 'aescore[mlflow]'."""
    wait: float = 60.0
    """Seconds to wait for another promotion of the same target to finish before giving up (exit 2)."""
    break_lock: bool = False
    """Remove the lock a killed promotion left behind (registry and object-store pointers; a local pointer's lock is released by the OS when its process dies), then go on."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for pointer files, --comparison and --reference-data."""

    def __post_init__(self) -> None:
        if self.history and (self.candidate or self.comparison or self.reference_data or self.force or self.rollback
                             or self.reason):
            raise ValueError("--history only prints the audit log: it takes no --from, --comparison, "
                             "--reference-data, --force, --rollback or --reason")
        if self.name is not None and self.to is None:
            self.to = "champion"
        if (self.force or self.rollback) and not self.reason.strip():
            raise ValueError(f"--{'force' if self.force else 'rollback'} needs --reason TEXT (kept in the audit log)")
        if self.rollback and (self.candidate or self.comparison or self.reference_data or self.force):
            raise ValueError("--rollback takes no --from, --comparison, --reference-data or --force")
        if bool(self.reference_data) != bool(self.label_column):
            raise ValueError("--reference-data and --label-column go together")
        if self.comparison and self.reference_data:
            raise ValueError("give one kind of evidence: --comparison or --reference-data")
        if self.name is None and self.to is None:
            raise ValueError("give NAME (a registered model) or --to POINTER_FILE (a pointer file to move)")
        if self.name is None and not (self.candidate or self.rollback or self.history):
            raise ValueError(f"--to {self.to} is a pointer file: --from is required (the pointer file or model URI "
                             "to promote)")
        if self.wait < 0:
            raise ValueError(f"--wait must be >= 0, got {self.wait}")


@dataclass
class PromoteResult:
    """What ``run`` did."""

    target: str
    action: str
    """"promote", "rollback", "unchanged" (already there) or "history"."""
    record: dict | None = None
    records: list[dict] = field(default_factory=list)
    completed: dict | None = None
    """An interrupted earlier promotion this one finished first (its record)."""
    current: dict | None = None
    """The model the target names (--history, and a promotion that changed nothing)."""


def open_ledger(cfg: PromoteConfig, options: dict):
    """The ledger of ``cfg.to``: a registry alias (with NAME) or a pointer file."""
    from aemodel.artifact import load_artifact

    if cfg.name is None:
        return PointerLedger(cfg.to, options, load_artifact)
    from jobs.lifecycle.tracking import client, resolved_tracking_uri

    uri = resolved_tracking_uri(cfg.tracking_uri)
    if uri is None:
        raise InputError(f"promote {cfg.name}: a registry model needs --tracking-uri (or --registry, or "
                         "MLFLOW_TRACKING_URI)")
    return RegistryLedger(client(uri), uri, cfg.name, cfg.to)


def _record(ledger, records: list[dict], action: str, old: dict | None, new: dict, reason: str, **extra) -> dict:
    return {"seq": (records[-1]["seq"] if records else 0) + 1, "id": uuid.uuid4().hex, "time": now(), "by": who(),
            "action": action, "target": ledger.target, "old": old, "new": new, "reason": reason, **extra}


def finish_interrupted(ledger, current: dict | None, records: list[dict]) -> tuple[dict | None, dict | None]:
    """Finish a promotion killed between its record and its move (the record is written first).

    Returns the target's model now, and the finished record (None if there was none to finish).
    """
    if not records:
        return current, None
    last = records[-1]
    if (last["new"]["id"] != (current or {}).get("id")) and (last["old"] or {}).get("id") == (current or {}).get("id"):
        ledger.move(last["new"])
        return last["new"], last
    return current, None


def rollback_target(records: list[dict]) -> tuple[dict | None, dict | None]:
    """The model before the newest promotion not yet rolled back, and that promotion's record.

    The log is a stack: a promotion pushes the model it replaced, a rollback pops it.
    """
    stack: list[dict] = []
    for r in records:
        if r["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(r)
    if not stack or stack[-1]["old"] is None:
        return None, None
    return stack[-1]["old"], stack[-1]


def same_model(a: dict | None, b: dict | None) -> bool:
    """The same model: the same registry version or URI, or the same artefact (its version) under another path."""
    return a is not None and b is not None and (a["id"] == b["id"] or a["aescore_version"] == b["aescore_version"])


def _outside_change(records: list[dict], current: dict | None) -> dict | None:
    """The target as found when it is not what the log's last record moved it to (moved by other means)."""
    if records and not same_model(records[-1]["new"], current):
        return {"log": records[-1]["new"], "found": current}
    return None


def run(cfg: PromoteConfig) -> PromoteResult:
    """Promote, roll back, or list (``cfg.history``); every change is one audit record and one move, under the lock."""
    from jobs.data.storage import normalize_storage_options

    options = normalize_storage_options(cfg.storage_options)
    ledger = open_ledger(cfg, options)
    if cfg.history:
        records = ledger.records()
        return PromoteResult(ledger.target, "history", records=records, current=ledger.current())
    if cfg.rollback:
        if not ledger.records():  # said before the lock: a rollback with nothing to undo writes nothing
            raise InputError(f"{ledger.target}: no promotion recorded, so none to roll back; nothing changed")
        with ledger.lock(cfg.wait, cfg.break_lock):
            records = ledger.records()
            current, completed = finish_interrupted(ledger, ledger.current(), records)
            target, undone = rollback_target(records)
            if target is None:
                raise InputError(f"{ledger.target}: the audit log holds no earlier model to return to "
                                 f"({len(records)} record(s)); nothing changed")
            record = _record(ledger, records, "rollback", current, target, cfg.reason, undoes=undone["seq"],
                             outside_change=_outside_change(records, current))
            ledger.append(record)
            ledger.move(target)
        return PromoteResult(ledger.target, "rollback", record, completed=completed)
    candidate = ledger.resolve(cfg.candidate or "challenger")
    champion = ledger.current()
    if same_model(champion, candidate):
        return PromoteResult(ledger.target, "unchanged", {"new": champion}, records=ledger.records(),
                             current=champion)
    evidence = gather_evidence(cfg, champion, candidate, options) if champion or cfg.comparison else None
    verdict = judge(evidence, champion, candidate, cfg.force)
    with ledger.lock(cfg.wait, cfg.break_lock):
        records = ledger.records()
        current, completed = finish_interrupted(ledger, ledger.current(), records)
        if same_model(current, candidate):  # another promotion of the same model won
            return PromoteResult(ledger.target, "unchanged", {"new": current}, completed=completed)
        if (current or {}).get("id") != (champion or {}).get("id") and not cfg.force:
            raise InputError(f"{ledger.target} moved to {(current or {}).get('uri')} while this promotion was checked "
                             f"against {(champion or {}).get('uri')}; nothing changed: run again with evidence "
                             "against the model in service now")
        record = _record(ledger, records, "promote", current, candidate, cfg.reason, forced=cfg.force,
                         verdict=verdict, evidence=evidence, outside_change=_outside_change(records, current))
        ledger.append(record)
        ledger.move(candidate)
    return PromoteResult(ledger.target, "promote", record, completed=completed)


def _model(m: dict | None) -> str:
    if m is None:
        return "(none)"
    return m["id"] if m["uri"] == m["id"] else f"version {m['id']}"


def _pending(r: PromoteResult) -> str:
    """A note when the log's last record is not what the target names (interrupted, or moved by other means)."""
    if r.records and not same_model(r.records[-1]["new"], r.current):
        last = r.records[-1]
        return (f"  note: record {last['seq']} moved it to {_model(last['new'])}, but it names {_model(r.current)}: "
                "that promotion was interrupted (the next promotion or rollback finishes it) or the target was "
                "changed outside aescore promote")
    return ""


def format_result(r: PromoteResult) -> str:
    """One line per change (and per audit record, for --history)."""
    if r.action == "history":
        if not r.records:
            return f"{r.target}: no promotions recorded" + ("" if r.current else " (and nothing there yet)")
        lines = [f"{r.target}: {len(r.records)} record(s); it names {_model(r.current)}"]
        for x in r.records:
            why = x["reason"] or "-"
            lines.append(f"  {x['seq']:>4} {x['time']} {x['action']:<8} {_model(x['old'])} -> {_model(x['new'])} "
                         f"by {x['by']}{' (forced)' if x.get('forced') else ''}: {why}"
                         + (f" [{x['verdict']}]" if x.get("verdict") else ""))
        return "\n".join(lines + [p for p in [_pending(r)] if p])
    lines = []
    if r.completed:
        lines.append(f"finished promotion {r.completed['seq']} first (it was interrupted before moving "
                     f"{r.target}): {_model(r.completed['old'])} -> {_model(r.completed['new'])}")
    if r.action == "unchanged":
        lines.append(f"{r.target} already names {_model(r.record['new'])}; nothing changed")
        return "\n".join(lines + [p for p in [_pending(r)] if p])
    x = r.record
    verb = "rolled back" if r.action == "rollback" else "promoted"
    lines.append(f"{verb}: {r.target} {_model(x['old'])} -> {_model(x['new'])} (audit record {x['seq']} by {x['by']})")
    if x.get("verdict"):
        lines.append(f"  {x['verdict']}")
    if r.action == "rollback":
        lines.append(f"  undoes record {x['undoes']}")
    if x.get("outside_change"):
        lines.append(f"  warning: the log's last record left it at {_model(x['outside_change']['log'])}, but it named "
                     f"{_model(x['outside_change']['found'])}: changed outside aescore promote (kept in this record)")
    return "\n".join(lines)


_BOOLEAN_WORDS = ("true", "false", "yes", "no", "1", "0", "on", "off")
"""Values a boolean flag may take as the next argument (anything else after it is NAME)."""


def positional_name(argv: list[str]) -> list[str]:
    """``argv`` with a bare NAME argument (anywhere: ``--registry URI NAME --to ...``) as ``--name NAME``."""
    from jobs.runtime.config import flag_kinds

    kinds = flag_kinds(PromoteConfig)
    out, bare, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token.startswith("-") and token != "-":
            name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
            takes_value = "=" not in token and name not in ("v", "verbose", "h", "help", "print_config")
            if name.startswith("no_") or kinds.get(name) == "bool":
                takes_value = takes_value and i < len(argv) and argv[i].lower() in _BOOLEAN_WORDS
            if takes_value and i < len(argv):
                out.append(argv[i])
                i += 1
        else:
            bare.append(out.pop())
    if len(bare) > 1:
        raise InputError(f"one registered model NAME, got {len(bare)} bare arguments: {' '.join(bare)}")
    return out + (["--name", bare[0]] if bare else [])


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.promote``: parse flags, promote (or roll back, or list), print what changed."""
    from jobs.runtime.entry import run_cli, verbose_from

    def job() -> str:
        args = positional_name(verbose_from(argv))
        cfg = parse_config(PromoteConfig, args, prog="aescore promote [NAME]", description=__doc__.split("\n")[0])
        return format_result(run(cfg))

    return run_cli(job)


if __name__ == "__main__":
    from jobs.runtime.entry import run_entry_point
    from jobs.promote import main as module_main

    run_entry_point(module_main)
