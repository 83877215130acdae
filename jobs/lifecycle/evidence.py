"""The evidence a promotion relies on, and the rule that refuses one: the reference-set comparison.

A comparison is the candidate (the challenger) against the model in service (the champion)
on a labelled reference set: AUROC, precision and recall of each (``jobs.monitoring.comparison``).
A candidate whose AUROC there is lower than the champion's is refused unless forced; a
comparison of other models than these two is refused even when forced, since the audit
record would keep it as what the promotion relied on.
"""

from __future__ import annotations

from aemodel.store import absolute_uri
from jobs.runtime.errors import InputError


def read_comparison(uri: str, options: dict) -> dict:
    """comparison.json at ``uri``, or the one a committed score or night output at ``uri`` holds."""
    import json

    from aemodel.commit import read_committed_json
    from aemodel.store import read_bytes, url_to_fs

    fs, path = url_to_fs(uri, options)
    try:
        data = read_bytes(fs, path) if fs.isfile(path) else None
        found = json.loads(data) if data is not None else read_committed_json(uri, "comparison.json", options)
    except (ValueError, OSError) as e:
        raise InputError(f"--comparison {uri}: not readable as comparison.json ({e})") from e
    if found is None:
        raise InputError(f"--comparison {uri}: no committed comparison.json there (aescore score with --challenger "
                         "writes one)")
    if not isinstance(found, dict) or "champion" not in found or "challenger" not in found:
        raise InputError(f"--comparison {uri}: not a comparison.json (no champion and challenger figures)")
    return found


def gather_evidence(cfg, champion: dict, candidate: dict, options: dict) -> dict | None:
    """The figures a promotion relies on (None: none given), as the audit record keeps them.

    Args:
        cfg: A ``PromoteConfig`` (``comparison``, or ``reference_data`` with ``label_column``).
        champion, candidate: The two models (``uri`` and ``aescore_version``).
        options: fsspec options.
    """
    if cfg.comparison:
        c = read_comparison(cfg.comparison, options)
        return {"source": absolute_uri(cfg.comparison), "champion_version": c["champion"].get("version"),
                "challenger_version": c["challenger"].get("version"), "rows": c.get("rows"),
                "spearman": c.get("spearman"), "reference": c.get("reference"),
                "anomaly_rate": {k: c[k].get("anomaly_rate") for k in ("champion", "challenger")}}
    if cfg.reference_data:
        from aemodel.artifact import load_artifact
        from jobs.monitoring.comparison import labelled_reference
        from jobs.lifecycle.registry import resolve_model

        arts = [load_artifact(resolve_model(m["uri"], cfg.tracking_uri, options, load_artifact)[0], options)
                for m in (champion, candidate)]
        reference = labelled_reference(cfg, arts[0], arts[1], options)
        return {"source": absolute_uri(cfg.reference_data), "champion_version": arts[0].version,
                "challenger_version": arts[1].version, "reference": reference}
    return None


def _auroc_line(reference: dict) -> str:
    a, b = reference["challenger"]["auroc"], reference["champion"]["auroc"]
    return (f"reference AUROC {a:.4f} (candidate) vs {b:.4f} (champion) on {reference['rows']:,} rows with "
            f"{reference['anomalies']:,} anomalies")


def judge(evidence: dict | None, champion: dict | None, candidate: dict, force: bool) -> str:
    """What the evidence says ("first", "better", "forced: ..."); refuses (InputError) when it is against the candidate.

    Evidence about other models than these two is refused even with --force: it would be
    recorded as what the promotion relied on.
    """
    if champion is None:
        return "first champion"
    if evidence is not None:
        pair = (evidence.get("champion_version"), evidence.get("challenger_version"))
        if pair != (champion["aescore_version"], candidate["aescore_version"]):
            raise InputError(f"the evidence ({evidence['source']}) compares model {pair[0]} with {pair[1]}, not the "
                             f"champion ({champion['aescore_version']}) with the candidate "
                             f"({candidate['aescore_version']}); nothing changed: compare these two with aescore "
                             f"score --model {champion['uri']} --challenger {candidate['uri']} --reference-data DATA "
                             "--label-column COL, or pass --reference-data here")
    reference = (evidence or {}).get("reference")
    if not reference:
        if force:
            return "forced without reference figures"
        why = ("no evidence given" if evidence is None else f"{evidence['source']} has no reference-set figures "
               "(score with --reference-data and --label-column)")
        raise InputError(f"{why}: promotion needs the candidate's comparison with the champion on a labelled set "
                         "(--comparison or --reference-data with --label-column), or --force --reason TEXT; nothing "
                         "changed")
    a, b = reference["challenger"].get("auroc"), reference["champion"].get("auroc")
    worse = a is None or (b is not None and a < b)
    if worse and not force:
        raise InputError(f"refused: the candidate ranks the reference set worse than the champion "
                         f"({_auroc_line(reference)}); nothing changed (--force --reason TEXT to promote anyway)")
    return f"{'forced against' if worse else 'relied on'} {_auroc_line(reference)}"
