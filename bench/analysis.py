"""From cached run results to the benchmark's numbers: per regime the ground-truth matrix, the noise gate, and
every rule's agreement with the ground truth, pick, regret and compute."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from daq_search.metric import METRIC_MODES

from .regimes import Regime
from .runs import Job
from .search_rule import CONCURRENT_TRIALS, SEARCH_OBJECTIVES, search_key
from .stats import agreement, noise_gate, one_seed_sweep, random_pick_regret

TEACHER_RULES = (
    ("teacher score (align - cmi)", "score", "min"),
    ("teacher score_ce (sample_ce - cmi)", "score_ce", "min"),
    ("teacher cmi", "cmi", "max"),
    ("teacher align", "align", "min"),
    ("teacher sample_ce", "sample_ce", "min"),
    ("T-stddev", "t_stddev", "min"),
)
"""(table name, result field, direction) of the zero-training rules."""

STUDENT_RULES = (
    ("student score (align - cmi)", "score", "min"),
    ("student score_ce (sample_ce - cmi)", "score_ce", "min"),
    ("student val accuracy", "val_acc", "max"),
)
"""(table name, result field, direction) of the rules read after the trial budget."""


@dataclass(frozen=True)
class RuleResult:
    """One rule on one regime: per-candidate values, agreement with the ground truth and compute.

    ``seconds`` are CPU seconds (one thread); ``cost_fraction`` is the rule's CPU seconds over one full sweep (every candidate trained once to completion);
    ``rho_ci`` is a bootstrap interval over seeds (the 1-seed sweep gives the range over left-out seeds instead).
    """

    rule: str
    mode: str
    values: list[float]
    rho: float
    rho_ci: tuple[float, float]
    tau: float
    tau_ci: tuple[float, float]
    pick: str
    regret_pp: float
    seconds: float
    cost_fraction: float


def _result(results: dict, job: Job) -> dict | None:
    return results.get(job.key())


def ground_truth(regime: Regime, results: dict) -> np.ndarray | None:
    """Test top-1 [candidates, seeds] (fractions) of the full runs, or None while any is missing."""
    rows = []
    for candidate in regime.candidates:
        row = []
        for seed in regime.seeds:
            result = _result(results, Job("full", regime, candidate, seed))
            if result is None:
                return None
            row.append(result["test_top1"])
        rows.append(row)
    return np.array(rows)


def completed_seeds(regime: Regime, results: dict) -> list[int]:
    """The seeds whose full runs are done for every candidate."""
    return [s for s in regime.seeds if all(Job("full", regime, c, s).key() in results for c in regime.candidates)]


def sweep_seconds(regime: Regime, results: dict, field: str = "seconds") -> float:
    """CPU seconds (or, with ``field="wall_seconds"``, wall seconds) of one full sweep: every candidate trained once
    to completion, averaged over the seeds."""
    per_seed = [
        sum(_result(results, Job("full", regime, c, s))[field] for c in regime.candidates) for s in regime.seeds
    ]
    return float(np.mean(per_seed))


def _rule(name, mode, values, top1, candidates, seconds, sweep, rng) -> RuleResult:
    agree = agreement(np.array(values), mode, top1, rng=rng)
    return RuleResult(
        rule=name,
        mode=mode,
        values=[float(v) for v in values],
        rho=agree.rho,
        rho_ci=agree.rho_ci,
        tau=agree.tau,
        tau_ci=agree.tau_ci,
        pick=candidates[agree.pick],
        regret_pp=100 * agree.regret,
        seconds=seconds,
        cost_fraction=seconds / sweep,
    )


def rule_results(regime: Regime, results: dict, top1: np.ndarray, trial_seed: int) -> list[RuleResult]:
    """Every rule whose inputs are in ``results``, judged against ``top1``; rules with missing inputs are left out."""
    rng = np.random.default_rng(0)
    candidates = list(regime.candidates)
    sweep = sweep_seconds(regime, results)
    rules: list[RuleResult] = []
    teacher = _result(results, Job("teacher_rules", regime))
    if teacher is not None:
        rows = [teacher["candidates"][c] for c in candidates]
        one_pass = sum(row["one_pass_seconds"] for row in rows)
        for name, field, mode in TEACHER_RULES:
            seconds = sum(row["t_stddev_seconds"] for row in rows) if field == "t_stddev" else one_pass
            rules.append(_rule(name, mode, [row[field] for row in rows], top1, candidates, seconds, sweep, rng))
    trials = [_result(results, Job("trial", regime, c, trial_seed)) for c in candidates]
    if all(trial is not None for trial in trials):
        for name, field, mode in STUDENT_RULES:
            extra = "val_seconds" if field == "val_acc" else "score_seconds"
            seconds = sum(trial["train_seconds"] + trial[extra] for trial in trials)
            rules.append(_rule(name, mode, [trial[field] for trial in trials], top1, candidates, seconds, sweep, rng))
    for objective in SEARCH_OBJECTIVES:
        search = results.get(search_key(regime, objective))
        if search is None:
            continue
        pick = candidates.index(search["winner"])
        truth = top1.mean(1)
        rules.append(
            RuleResult(
                rule=f"search TPE+ASHA, objective {objective}",
                mode=METRIC_MODES[objective],
                values=[],
                rho=float("nan"),
                rho_ci=(float("nan"), float("nan")),
                tau=float("nan"),
                tau_ci=(float("nan"), float("nan")),
                pick=search["winner"],
                regret_pp=100 * float(truth.max() - truth[pick]),
                seconds=CONCURRENT_TRIALS * search["wall_seconds"],
                cost_fraction=CONCURRENT_TRIALS * search["wall_seconds"] / sweep,
            )
        )
    sweep_agree = one_seed_sweep(top1)
    rules.append(
        RuleResult(
            rule="1-seed full sweep (leave-one-out)",
            mode="max",
            values=[float(v) for v in top1[:, 0]],
            rho=sweep_agree.rho,
            rho_ci=sweep_agree.rho_range,
            tau=sweep_agree.tau,
            tau_ci=(float("nan"), float("nan")),
            pick=", ".join(sorted({candidates[p] for p in sweep_agree.picks})),
            regret_pp=100 * sweep_agree.regret,
            seconds=sweep,
            cost_fraction=1.0,
        )
    )
    rules.append(
        RuleResult(
            rule="random pick (expected)",
            mode="max",
            values=[],
            rho=0.0,
            rho_ci=(float("nan"), float("nan")),
            tau=0.0,
            tau_ci=(float("nan"), float("nan")),
            pick="(any)",
            regret_pp=100 * random_pick_regret(top1),
            seconds=0.0,
            cost_fraction=0.0,
        )
    )
    return rules


def scoring_costs(regime: Regime, results: dict) -> dict | None:
    """Per-candidate scoring cost against its floor (one plain teacher forward epoch over the scoring set): the
    one-pass score, the two-pass score and T-stddev, mean seconds per candidate and as multiples of the floor."""
    teacher = _result(results, Job("teacher_rules", regime))
    if teacher is None:
        return None
    rows = list(teacher["candidates"].values())
    floor = teacher["floor_seconds"]
    one = float(np.mean([row["one_pass_seconds"] for row in rows]))
    two = float(np.mean([row["two_pass_seconds"] for row in rows]))
    t_std = float(np.mean([row["t_stddev_seconds"] for row in rows]))
    return {
        "scoring_images": teacher["scoring_images"],
        "floor_seconds": floor,
        "one_pass_seconds": one,
        "two_pass_seconds": two,
        "t_stddev_seconds": t_std,
        "one_pass_over_floor": one / floor,
        "two_pass_over_floor": two / floor,
        "t_stddev_over_floor": t_std / floor,
        "two_pass_over_one_pass": two / one,
        "max_abs_diff_one_vs_two_pass": max(row["two_pass_max_abs_diff"] for row in rows),
        "per_candidate": teacher["candidates"],
    }


def throughput(regime: Regime, results: dict) -> dict | None:
    """Training throughput (images/s, wall) of the trial loop: in plain PyTorch (the benchmark's own trial runs, two
    worker processes) and inside Ray Tune trials (the search's per-epoch ``images_per_s``, two concurrent trials)."""
    trials = [_result(results, Job("trial", regime, c, 0)) for c in regime.candidates]
    searches = [results.get(search_key(regime, objective)) for objective in SEARCH_OBJECTIVES]
    searches = [search for search in searches if search is not None]
    if not all(trials) or not searches:
        return None
    plain = [trial["images"] / trial["train_wall_seconds"] for trial in trials]
    ray = [search["median_images_per_s"] for search in searches]
    return {"plain_median_images_per_s": float(np.median(plain)), "ray_median_images_per_s": float(np.median(ray))}


def regime_summary(regime: Regime, results: dict, trial_seed: int) -> dict:
    """Everything reported about one regime, as plain JSON-ready values (accuracies in percent)."""
    teacher = _result(results, Job("teacher", regime))
    summary = {
        "regime": regime.name,
        "description": regime.description,
        "config": {
            name: getattr(regime, name).model_dump()
            for name in ("data", "teacher", "student", "quant", "kd", "recipe", "trial", "scorer")
        },
        "seeds": list(regime.seeds),
        "candidates": list(regime.candidates),
        "teacher": teacher,
    }
    top1 = ground_truth(regime, results)
    if top1 is None:
        done = completed_seeds(regime, results)
        summary.update(complete=False, completed_seeds=done)
        if done:
            partial = np.array(
                [[results[Job("full", regime, c, s).key()]["test_top1"] for s in done] for c in regime.candidates]
            )
            summary["partial_top1_pct"] = (100 * partial).tolist()
        return summary
    gate = noise_gate(top1)
    summary["scoring_costs"] = scoring_costs(regime, results)
    summary["throughput"] = throughput(regime, results)
    summary["searches"] = [
        results[search_key(regime, o)] for o in SEARCH_OBJECTIVES if search_key(regime, o) in results
    ]
    summary.update(
        complete=True,
        top1_pct=(100 * top1).tolist(),
        mean_pct=(100 * top1.mean(1)).tolist(),
        sd_pct=(100 * top1.std(1, ddof=1)).tolist(),
        gate={key: (100 * value if key.endswith("_sd") else value) for key, value in asdict(gate).items()},
        sweep_seconds=sweep_seconds(regime, results),
        sweep_wall_seconds=sweep_seconds(regime, results, "wall_seconds"),
        rules=[asdict(rule) for rule in rule_results(regime, results, top1, trial_seed)],
    )
    return summary
