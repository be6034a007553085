"""Finalists: the candidates a search hands to the final training, hedged across augmentation strength.

A short screen ranks candidates by how fast they learn, and strong augmentations learn slowly and end best
(docs/benchmark.md): the screen's top few are often all of one strength. With ``final.finalists: m`` the final
training therefore trains the winner and the best trial of each other strength tier to the end, and ships the one
with the highest validation accuracy at its last epoch, the baseline included (:func:`shipped_index`).

Strength is the trial's ``teacher_align``: the DA score's class-alignment term of the full-precision teacher on
images under the candidate's augmentation (:mod:`daq_search.metric`; nats, minus the log of the probability the
teacher's mean output over a class puts on that class, averaged over classes). Higher means the augmentation pushes
the teacher's outputs further from the labels: a stronger augmentation. The distinct candidates a search trained
are sorted by it and cut into ``m`` tiers of near-equal size.

With ``final.finalists_by: strength`` the trials' readings do not choose at all: the finalists are the candidates at
the golden points of the strength order (:func:`strength_finalists`), where a golden-section search for the best
strength starts. Short trials rank candidates by how fast they learn; the middle of the strength order is where the
benchmark's candidates end best (docs/benchmark.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .results import rank_trials

STRENGTH_COLUMN = "teacher_align_last"
"""The trial column that orders candidates by strength (higher: stronger)."""

GOLDEN = (math.sqrt(5) - 1) / 2
"""The golden ratio's fractional part (0.618): where a golden-section search places its inner points in a bracket."""


def strength_tiers(candidates: pd.DataFrame, count: int) -> list[list[str]]:
    """``candidates`` (one row per candidate, with ``candidate`` and :data:`STRENGTH_COLUMN`) cut into ``count``
    tiers, mildest first: sorted by alignment, lowest first (ties by candidate id; a missing alignment counts as
    strongest), then split into contiguous groups whose sizes differ by at most one (fewer tiers when there are fewer
    candidates)."""
    names = _strength_order(candidates)
    return [list(tier) for tier in np.array_split(np.array(names, dtype=object), min(count, len(names))) if len(tier)]


def _strength_order(candidates: pd.DataFrame) -> list[str]:
    """The ``candidate`` ids of ``candidates`` sorted by :data:`STRENGTH_COLUMN`, mildest first (ties by id; a
    missing alignment counts as strongest)."""
    ordered = candidates.assign(_align=candidates[STRENGTH_COLUMN].fillna(math.inf)).sort_values(
        ["_align", "candidate"], kind="stable"
    )
    return list(ordered["candidate"])


def _ranked_candidates(trials: pd.DataFrame, objective: str, mode: str) -> pd.DataFrame:
    """The completed or pruned trials ranked by :func:`daq_search.results.rank_trials`, each candidate's best trial
    only."""
    ranked = rank_trials(trials[trials["status"].isin(["completed", "pruned"])], objective, mode)
    return ranked.drop_duplicates("candidate")


def strength_positions(size: int, count: int) -> list[int]:
    """Positions (0 mildest) of ``count`` candidates in a strength order of ``size``: those nearest to the fractions
    ``1 - GOLDEN`` and ``GOLDEN`` of the range ``[0, size - 1]`` for two (a golden-section search's first points),
    the middle for one, ``count`` fractions evenly spaced from ``1 - GOLDEN`` to ``GOLDEN`` for more. Taken in that
    order, each the nearest position not yet taken (the milder on a tie), so there are ``min(count, size)``."""
    if count == 1:
        fractions = [0.5]
    else:
        fractions = list(np.linspace(1 - GOLDEN, GOLDEN, count))
    taken: list[int] = []
    for fraction in fractions[: min(count, size)]:
        target = fraction * (size - 1)
        taken.append(min((i for i in range(size) if i not in taken), key=lambda i: (abs(i - target), i)))
    return taken


def strength_finalists(
    trials: pd.DataFrame, objective: str, mode: str, count: int, skip: Sequence[str] = ()
) -> list[str]:
    """The candidate ids of up to ``count`` finalists chosen by strength alone: the distinct candidates of the
    completed or pruned trials other than those in ``skip`` (unless ``skip`` holds them all), sorted mild to
    strong, at :func:`strength_positions`; listed in the order the trials rank them
    (:func:`daq_search.results.rank_trials`), so the first is the ``candidate`` of the winner file; empty when no
    trial qualifies."""
    pool = _ranked_candidates(trials, objective, mode)
    if not pool["candidate"].isin(list(skip)).all():
        pool = pool[~pool["candidate"].isin(list(skip))]
    order = _strength_order(pool)
    chosen = {order[i] for i in strength_positions(len(order), count)}
    return [name for name in pool["candidate"] if name in chosen]


def choose_finalists(
    trials: pd.DataFrame, objective: str, mode: str, count: int, skip: Sequence[str] = ()
) -> list[str]:
    """The candidate ids of up to ``count`` finalists, best first: the search's winner (the best completed or pruned
    trial, :func:`daq_search.results.rank_trials`), then the best candidate of each other strength tier
    (:func:`strength_tiers` of the ranked candidates other than those in ``skip``) in the order the search ranks
    them; empty when no trial qualifies. ``skip`` names candidates that are not finalists unless they win (the
    baseline, where the final training trains it anyway)."""
    ranked = _ranked_candidates(trials, objective, mode)
    if ranked.empty:
        return []
    winner = ranked.iloc[0]["candidate"]
    others = ranked[(ranked["candidate"] != winner) & ~ranked["candidate"].isin(list(skip))]
    pool = pd.concat([ranked.iloc[:1], others])
    rank_of = {name: i for i, name in enumerate(pool["candidate"])}
    hedges = [min(tier, key=rank_of.__getitem__) for tier in strength_tiers(pool, count) if winner not in tier]
    return [winner, *sorted(hedges, key=rank_of.__getitem__)]


def shipped_index(val_accs: Sequence[float | None]) -> int:
    """The position of the run the final training ships among its runs' validation accuracies at their last epoch
    (fractions; the winner first, then the other finalists, then the baseline): the first with the highest finite
    reading, so a tie keeps the earlier run; 0 (the winner) when the winner's own reading is missing or NaN."""
    finite = [(value, -i) for i, value in enumerate(val_accs) if value is not None and math.isfinite(value)]
    return -max(finite)[1] if finite and finite[0][1] == 0 else 0
