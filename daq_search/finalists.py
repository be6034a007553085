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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .results import rank_trials

STRENGTH_COLUMN = "teacher_align_last"
"""The trial column that orders candidates by strength (higher: stronger)."""


def strength_tiers(candidates: pd.DataFrame, count: int) -> list[list[str]]:
    """``candidates`` (one row per candidate, with ``candidate`` and :data:`STRENGTH_COLUMN`) cut into ``count``
    tiers, mildest first: sorted by alignment, lowest first (ties by candidate id; a missing alignment counts as
    strongest), then split into contiguous groups whose sizes differ by at most one (fewer tiers when there are fewer
    candidates)."""
    ordered = candidates.assign(_align=candidates[STRENGTH_COLUMN].fillna(math.inf)).sort_values(
        ["_align", "candidate"], kind="stable"
    )
    names = list(ordered["candidate"])
    return [list(tier) for tier in np.array_split(np.array(names, dtype=object), min(count, len(names))) if len(tier)]


def choose_finalists(
    trials: pd.DataFrame, objective: str, mode: str, count: int, skip: Sequence[str] = ()
) -> list[str]:
    """The candidate ids of up to ``count`` finalists, best first: the search's winner (the best completed or pruned
    trial, :func:`daq_search.results.rank_trials`), then the best candidate of each other strength tier
    (:func:`strength_tiers` of the ranked candidates other than those in ``skip``) in the order the search ranks
    them; empty when no trial qualifies. ``skip`` names candidates that are not finalists unless they win (the
    baseline, where the final training trains it anyway)."""
    ranked = rank_trials(trials[trials["status"].isin(["completed", "pruned"])], objective, mode)
    ranked = ranked.drop_duplicates("candidate")
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
