"""A strength-ordered search at the full budget, replayed on the ladder's committed runs.

The regime's candidates are sorted mild to strong by the teacher's class-alignment term under each augmentation
(the ``teacher align`` rule's values in ``results.json``, the strength measure of :mod:`daq_search.finalists`). A
golden-section search for the maximum then trains full-schedule runs one at a time: two at the golden points of the
whole range, then each next one at the reflection of the better point inside the shrunken bracket (the nearest
position not yet trained where the reflection is taken). The `none` baseline, trained anyway beside the final model,
is read too; the pick is the best reading of every trained run and the baseline.

Each reading is one ground-truth seed's test top-1, and the pick is judged against the mean of the other seeds, as
the 1-seed full sweep is (:func:`bench.stats.one_seed_sweep`): a replay of runs that exist, not the package's code,
which has no such search. Cost: the trained runs beyond the one final training a user pays for anyway, over the
ladder's size.

Run: ``python -m bench.strength`` (seconds; writes ``strength_search`` into each passing regime of
``bench/results/results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daq_search.finalists import strength_positions

from .stats import pick

EVALUATIONS = (2, 3, 4)
"""Full-schedule runs the replayed searches train (besides the baseline)."""
BASELINE = "none"


def golden_positions(readings: Sequence[float], evaluations: int) -> list[int]:
    """The positions (0 mildest) a golden-section search for the largest of ``readings`` trains, in order, at most
    ``evaluations`` of them: the two golden points of the whole range ``[0, hi]``
    (:func:`daq_search.finalists.strength_positions`, the positions ``final.finalists_by: strength`` trains), then the reflection ``lo + hi - kept`` of the better inner point inside the bracket it bounds (ties keep
    the milder side), moved to the nearest untrained position in the bracket (the milder one on a tie) where it is
    already trained; it stops early when the bracket holds no untrained position."""
    lo, hi = 0, len(readings) - 1
    inner = sorted(strength_positions(len(readings), 2))
    trained = inner[:evaluations]
    while len(trained) < evaluations and len(inner) == 2:
        mild, strong = inner
        if readings[mild] >= readings[strong]:
            hi, kept = strong, mild
        else:
            lo, kept = mild, strong
        untrained = [i for i in range(lo, hi + 1) if i not in trained]
        if not untrained:
            break
        target = lo + hi - kept
        new = min(untrained, key=lambda i: (abs(i - target), i))
        trained.append(new)
        inner = sorted([kept, new])
    return trained


def replay(candidates: list[str], align: Sequence[float], top1: np.ndarray, evaluations: int) -> dict:
    """The search of :func:`golden_positions` over ``candidates`` sorted by ``align`` (ties in listed order), once
    per ground-truth seed (the columns of ``top1``, test top-1 in %): that seed's readings choose, the other seeds'
    mean judges. Returns per seed the candidates trained and the pick, and the mean and worst regret (pp)."""
    order = np.argsort(np.asarray(align, float), kind="stable")
    baseline = candidates.index(BASELINE)
    seeds = top1.shape[1]
    trained, picks, regrets = [], [], []
    for s in range(seeds):
        rest = np.delete(top1, s, axis=1).mean(1)
        positions = golden_positions(top1[order, s], evaluations)
        runs = sorted({int(order[p]) for p in positions} | {baseline})
        chosen = runs[pick(top1[runs, s], seed=s)]
        trained.append([candidates[i] for i in order[positions]])
        picks.append(candidates[chosen])
        regrets.append(float(rest.max() - rest[chosen]))
    extra = [len(set(t) - {BASELINE}) - 1 for t in trained]
    return {
        "evaluations": evaluations,
        "trained": trained,
        "picks": picks,
        "regret_pp": regrets,
        "mean_regret_pp": float(np.mean(regrets)),
        "worst_regret_pp": float(max(regrets)),
        "cost": [max(0, n) / len(candidates) for n in extra],
    }


def regime_replays(entry: dict) -> list[dict]:
    """The replays of one regime's ``results.json`` entry, one per :data:`EVALUATIONS`."""
    align = next(rule["values"] for rule in entry["rules"] if rule["rule"] == "teacher align")
    top1 = np.asarray(entry["top1_pct"], float)
    return [replay(entry["candidates"], align, top1, n) for n in EVALUATIONS]


def main(argv: list[str] | None = None) -> int:
    """Replay the strength-ordered search on every passing regime and record it in ``results.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.strength", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    path = Path(args.out) / "results.json"
    results = json.loads(path.read_text())
    for entry in results["regimes"]:
        if not entry["gate"]["passes"]:
            continue
        entry["strength_search"] = regime_replays(entry)
        for record in entry["strength_search"]:
            print(
                f"{entry['regime']}: {record['evaluations']} runs: regret mean {record['mean_regret_pp']:.2f} pp, "
                f"worst {record['worst_regret_pp']:.2f} pp, cost {max(record['cost']):.2f}, picks {record['picks']}"
            )
    path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
