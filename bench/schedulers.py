"""Search rules replayed on recorded curves: every candidate's first-seed run read after every epoch stands for the
trial a search would run for it, so a scheduler's decisions can be replayed exactly, without Ray, for any grace
period or bracket. Replays are sequential (one trial at a time; the shipped search runs two concurrently, which
changes which results ASHA has seen when it decides).

- TPE + ASHA: Optuna's own ``TPESampler`` proposes candidates through the package's ``SearchSpace.suggest`` (as
  the search's ``OptunaSearch`` does) and is told each trial's last reported value; ASHA is Ray Tune 2.60's
  single-bracket ``AsyncHyperBandScheduler`` rule (rungs at ``grace * rf**k``; at a rung a trial stops when its value
  is below the ``1 - 1/rf`` quantile of the values recorded there so far; a trial reaching ``max_t`` stops).
- Hyperband (Li et al., JMLR 2018): brackets ``s = s_max .. 0`` of successive halving with ``eta``; bracket 0
  trains its configurations at the full trial budget. Configurations are drawn from a seeded permutation of the
  candidates (a bracket holds each candidate at most once); survivors continue their run.

The winner is the package's rule (``results.rank_trials``: most epochs trained, then the last epoch's value)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from daq_search.candidates import parse_candidate
from daq_search.results import rank_column, rank_trials
from daq_search.spaces import SearchSpace


@dataclass(frozen=True)
class Replay:
    """A replayed search: its winner, trials run, epochs trained and the CPU seconds those epochs and reads took."""

    winner: str
    trials: int
    epochs_trained: int
    seconds: float
    candidates_tried: tuple[str, ...]


class AshaBracket:
    """Ray Tune's asynchronous successive-halving bracket (``AsyncHyperBandScheduler`` with one bracket)."""

    def __init__(self, grace: int, max_t: int, reduction_factor: float):
        self.rf = reduction_factor
        max_rungs = int(np.log(max_t / grace) / np.log(reduction_factor) + 1)
        self.rungs = [(grace * reduction_factor**k, {}) for k in reversed(range(max_rungs))]

    def keeps(self, trial_id: int, epoch: int, reward: float) -> bool:
        """Whether the trial continues after reporting ``reward`` (larger is better) at ``epoch``."""
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial_id in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[trial_id] = reward
            return not (cutoff is not None and reward < cutoff)
        return True


def _winner(rows: list[dict], objective: str, mode: str) -> str:
    table = pd.DataFrame(rows)
    return str(rank_trials(table, objective, mode).iloc[0]["candidate"])


def replay_tpe_asha(
    curves: dict[str, list[dict]],
    candidates: tuple[str, ...],
    objective: str,
    mode: str,
    *,
    grace: int,
    reduction_factor: float = 2.0,
    num_samples: int | None = None,
    seed: int = 0,
) -> Replay:
    """Replay TPE (seed ``seed``) + ASHA over ``curves`` (candidate -> per-epoch rows holding ``objective``,
    ``train_seconds`` and ``read_seconds``) for ``num_samples`` trials (default: one per candidate)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(name="bench", path="<bench>", listed=tuple(parse_candidate(c) for c in candidates))
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize", sampler=optuna.samplers.TPESampler(seed=seed)
    )
    max_t = min(len(curve) for curve in curves.values())
    bracket = AshaBracket(min(grace, max_t), max_t, reduction_factor)
    sign = 1.0 if mode == "max" else -1.0
    rows, epochs, seconds = [], 0, 0.0
    for trial_id in range(num_samples or len(candidates)):
        trial = study.ask()
        space.suggest(trial)
        candidate = space.candidate_from_params(trial.params).id
        values = []
        for row in curves[candidate][:max_t]:
            values.append(row[objective])
            epochs += 1
            seconds += row["train_seconds"] + row["read_seconds"]
            if row["epoch"] >= max_t or not bracket.keeps(trial_id, row["epoch"], sign * row[objective]):
                break
        study.tell(trial, values[-1])
        rows.append(
            {
                "trial_id": trial_id,
                "candidate": candidate,
                "status": "completed" if len(values) == max_t else "pruned",
                "epochs": len(values),
                rank_column(objective): values[-1],
            }
        )
    return Replay(
        _winner(rows, objective, mode), len(rows), epochs, seconds, tuple(sorted({r["candidate"] for r in rows}))
    )


def replay_hyperband(
    curves: dict[str, list[dict]],
    candidates: tuple[str, ...],
    objective: str,
    mode: str,
    *,
    eta: int = 3,
    seed: int = 0,
) -> Replay:
    """Replay Hyperband with ``eta`` and the full trial budget ``R`` = the curves' length (bracket 0 trains at R)."""
    max_t = min(len(curve) for curve in curves.values())
    s_max = int(math.floor(math.log(max_t) / math.log(eta) + 1e-9))
    order = list(np.random.default_rng(seed).permutation(len(candidates)))
    sign = 1.0 if mode == "max" else -1.0
    rows, epochs, seconds, trial_id, drawn = [], 0, 0.0, 0, 0
    for s in range(s_max, -1, -1):
        n = min(len(candidates), math.ceil((s_max + 1) / (s + 1) * eta**s))
        configs = [candidates[order[(drawn + k) % len(order)]] for k in range(n)]
        drawn += n
        trained = {c: 0 for c in configs}
        alive = list(configs)
        for i in range(s + 1):
            budget = min(max_t, max(1, round(max_t * eta ** (i - s))))
            for candidate in alive:
                for row in curves[candidate][trained[candidate] : budget]:
                    epochs += 1
                    seconds += row["train_seconds"] + row["read_seconds"]
                trained[candidate] = budget
            if i == s:
                break
            keep = max(1, math.floor(n / eta ** (i + 1)))
            alive = sorted(alive, key=lambda c: -sign * curves[c][trained[c] - 1][objective])[:keep]
        for candidate in configs:
            values = [row[objective] for row in curves[candidate][: trained[candidate]]]
            rows.append(
                {
                    "trial_id": trial_id,
                    "candidate": candidate,
                    "status": "completed" if trained[candidate] == max_t else "pruned",
                    "epochs": trained[candidate],
                    rank_column(objective): values[-1],
                }
            )
            trial_id += 1
    return Replay(
        _winner(rows, objective, mode), len(rows), epochs, seconds, tuple(sorted({r["candidate"] for r in rows}))
    )
