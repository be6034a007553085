"""Rank statistics of the benchmark: the split-half noise gate, rule-vs-truth correlations with bootstrap intervals
over seeds, picks and regrets. Accuracies are fractions in [0, 1] here; tables print them in percent."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.stats


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length vectors (``scipy.stats.spearmanr``, average ranks for ties);
    0.0 when either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b of two equal-length vectors (``scipy.stats.kendalltau``); 0.0 when either is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(scipy.stats.kendalltau(a, b).statistic)


def balanced_splits(n_seeds: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every split of seed columns 0..n_seeds-1 into two halves of n_seeds // 2 (each unordered pair once; with an
    odd count the left-over seed sits out, once per choice)."""
    half = n_seeds // 2
    splits = []
    for first in itertools.combinations(range(n_seeds), half):
        rest = [i for i in range(n_seeds) if i not in first]
        for second in itertools.combinations(rest, half):
            if (second, first) not in splits:
                splits.append((first, second))
    return splits


@dataclass(frozen=True)
class Gate:
    """The noise gate of one regime: is the ground-truth ranking more than seed noise?"""

    split_half_rho: float
    n_splits: int
    between_candidate_sd: float
    seed_sd: float
    passes: bool


def noise_gate(top1: np.ndarray, threshold: float = 0.8) -> Gate:
    """Split-half Spearman of per-candidate mean top-1, averaged over the balanced seed splits.

    ``top1`` is [candidates, seeds]; ``seed_sd`` is the pooled within-candidate sd (ddof 1) and
    ``between_candidate_sd`` the sd of the candidate means, both in the units of ``top1``.
    """
    top1 = np.asarray(top1, float)
    splits = balanced_splits(top1.shape[1])
    rhos = [spearman(top1[:, list(a)].mean(1), top1[:, list(b)].mean(1)) for a, b in splits]
    rho = float(np.mean(rhos))
    seed_sd = float(np.sqrt(top1.var(axis=1, ddof=1).mean()))
    return Gate(rho, len(splits), float(top1.mean(1).std(ddof=1)), seed_sd, rho >= threshold)


@dataclass(frozen=True)
class RuleAgreement:
    """How one rule's ranking agrees with the ground truth, and what its pick costs in accuracy.

    ``rho``/``tau`` are sign-corrected (positive: the rule ranks as full training does); ``rho_ci`` is the 95 %
    bootstrap interval over seeds; ``regret`` is best mean top-1 minus the pick's, as a fraction.
    """

    rho: float
    rho_ci: tuple[float, float]
    tau: float
    tau_ci: tuple[float, float]
    pick: int
    regret: float


def goodness(values: np.ndarray, mode: str) -> np.ndarray:
    """Rule values turned so that larger means 'predicted better' (``mode`` is 'max' or 'min')."""
    values = np.asarray(values, float)
    return values if mode == "max" else -values


TIE_TOLERANCE = 1e-12
"""Values closer than this (in the rule's own units) are a tie."""


def pick(good: np.ndarray, secondary: np.ndarray | None = None, seed: int = 0) -> int:
    """Index of the candidate a rule picks: the largest ``good`` (larger means predicted better).

    Ties (values within :data:`TIE_TOLERANCE` of the largest) are broken by a rule that ignores where a candidate
    sits in the list, so that no candidate is favoured by being listed first (every regime lists ``none`` first,
    and a plain argmax gave it every tie): first the larger ``secondary`` (larger is better too, e.g. minus the
    validation loss), when given; among candidates still tied, a uniformly random one drawn with ``seed``.
    """
    good = np.asarray(good, float)
    tied = np.flatnonzero(good >= good.max() - TIE_TOLERANCE)
    if secondary is not None and len(tied) > 1:
        second = np.asarray(secondary, float)[tied]
        tied = tied[second >= second.max() - TIE_TOLERANCE]
    if len(tied) == 1:
        return int(tied[0])
    return int(np.random.default_rng(seed).choice(tied))


def agreement(
    values: np.ndarray,
    mode: str,
    top1: np.ndarray,
    n_boot: int = 1000,
    rng: np.random.Generator | None = None,
    tiebreak: np.ndarray | None = None,
) -> RuleAgreement:
    """Agreement of a rule's per-candidate ``values`` (better in direction ``mode``) with ground truth ``top1``
    [candidates, seeds]; the interval resamples seed columns with replacement ``n_boot`` times. The pick is
    :func:`pick`'s, ``tiebreak`` its secondary values (larger is better)."""
    rng = rng or np.random.default_rng(0)
    top1 = np.asarray(top1, float)
    good = goodness(values, mode)
    truth = top1.mean(1)
    chosen = pick(good, tiebreak)
    rhos, taus = [], []
    for _ in range(n_boot):
        cols = rng.integers(0, top1.shape[1], top1.shape[1])
        boot = top1[:, cols].mean(1)
        rhos.append(spearman(good, boot))
        taus.append(kendall(good, boot))
    return RuleAgreement(
        rho=spearman(good, truth),
        rho_ci=(float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))),
        tau=kendall(good, truth),
        tau_ci=(float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))),
        pick=chosen,
        regret=float(truth.max() - truth[chosen]),
    )


@dataclass(frozen=True)
class SweepAgreement:
    """The 1-seed full sweep, judged leave-one-out: seed s's top-1 as the rule, the other seeds' mean as truth;
    numbers are means over s, with the range of rho over s."""

    rho: float
    rho_range: tuple[float, float]
    tau: float
    regret: float
    picks: tuple[int, ...]


def one_seed_sweep(top1: np.ndarray) -> SweepAgreement:
    """Leave-one-seed-out agreement of a single-seed sweep with the mean of the remaining seeds; seed column s picks
    by :func:`pick` (ties drawn with seed s)."""
    top1 = np.asarray(top1, float)
    rhos, taus, regrets, picks = [], [], [], []
    for s in range(top1.shape[1]):
        rest = np.delete(top1, s, axis=1).mean(1)
        rhos.append(spearman(top1[:, s], rest))
        taus.append(kendall(top1[:, s], rest))
        chosen = pick(top1[:, s], seed=s)
        picks.append(chosen)
        regrets.append(float(rest.max() - rest[chosen]))
    return SweepAgreement(
        float(np.mean(rhos)), (min(rhos), max(rhos)), float(np.mean(taus)), float(np.mean(regrets)), tuple(picks)
    )


def random_pick_regret(top1: np.ndarray) -> float:
    """Expected regret (fraction) of a uniformly random pick: best candidate mean minus the average candidate mean."""
    truth = np.asarray(top1, float).mean(1)
    return float(truth.max() - truth.mean())
