"""Numeric columns measured in one unit: found from their training ranges, scaled together.

Standardising each numeric column on its own makes a column that rarely moves (an image's
border pixel, a questionnaire item almost everyone answers alike) as loud as one that
always moves, so its rare values dominate the row's error. Columns measured in one unit
need no such rescaling. With ``shared_units`` they share one scale, the root mean of their
variances: in that pooled unit a column's constant-predictor loss is its share of the
group's variance (1 on average), so each column counts by how much it varies, as in a plain
autoencoder on min-max scaled pixels (bench/RESULTS.md, "shared units"). Columns of their
own units (most business tables) find no group and keep their own scale.

The rule needs no labels. The envelope is the range from the smallest to the largest
training value of any numeric column; when at least half of the numeric columns (and at
least ``MIN_COLUMNS``) each span at least ``WIDE_SHARE`` of it, the columns look measured on
one scale (pixels in 0..16, questionnaire scores in 1..10), and every numeric column, each
inside the envelope by construction, joins the group: a pixel that never reaches full
intensity in the training rows, or a score nobody gave above 7, is the same measurement.
Columns of their own units fail it: one column in the millions makes every other column's
span a sliver of the envelope. Columns modelled on a log scale keep their own scale.
"""

from __future__ import annotations

import math

MIN_COLUMNS = 3
"""The fewest columns spanning most of the envelope that make a unit."""
WIDE_SHARE = 0.5
"""A column spans the envelope when its training range is at least this share of it."""


def shared_unit_columns(numeric: dict[str, dict], names: list[str]) -> list[str]:
    """The numeric columns in one unit, in ``names`` order; empty when the rule does not hold.

    Args:
        numeric: ``Preprocessor.numeric``: per column its training ``min``, ``max`` and ``transform``.
        names: The numeric columns in model order.
    """
    plain = [n for n in names if numeric[n].get("transform", "identity") == "identity"]  # log-modelled: own unit
    if not plain:
        return []
    lo = min(numeric[n]["min"] for n in plain)
    hi = max(numeric[n]["max"] for n in plain)
    wide = [n for n in plain if hi > lo and numeric[n]["max"] - numeric[n]["min"] >= WIDE_SHARE * (hi - lo)]
    return plain if len(wide) >= max(MIN_COLUMNS, len(names) / 2) else []


def share_units(numeric: dict[str, dict], names: list[str], min_scale_ratio: float) -> list[str]:
    """Give the ``shared_unit_columns`` one scale (in place): the root mean of their training variances.

    Args:
        numeric: ``Preprocessor.numeric`` (each column's ``std``, ``mean``, ``scale``); updated.
        names: The numeric columns in model order.
        min_scale_ratio: ``PreprocessConfig.min_scale_ratio``: the scale's floor relative to the
            largest absolute mean of the group (at least 1).

    Returns:
        The columns given the shared scale (marked ``shared_unit``).
    """
    shared = shared_unit_columns(numeric, names)
    if shared:
        pooled = math.sqrt(sum(numeric[n]["std"] ** 2 for n in shared) / len(shared))
        floor = min_scale_ratio * max(max(abs(numeric[n]["mean"]) for n in shared), 1.0)
        for n in shared:
            numeric[n].update(scale=max(pooled, floor), shared_unit=True)
    return shared
