"""From cached run results to the benchmark's numbers: per regime the ground-truth matrix, the noise gate, and
every rule's agreement with the ground truth, pick, regret and compute; across regimes one table of every rule and
the recommended default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from daq_search.calibrate import Rule, choose_rule, default_anchors
from daq_search.candidates import parse_candidate
from daq_search.metric import METRIC_MODES
from daq_search.selection import DEFAULT_OBJECTIVE, DEFAULT_TRIAL_FRACTION
from daq_search.spaces import SearchSpace

from .regimes import BUDGETS, CURVE_BUDGETS, Regime, build_regime
from .runs import READ_FIELDS, Job
from .schedulers import Replay, replay_hyperband, replay_tpe_asha
from .stats import agreement, noise_gate, one_seed_sweep, random_pick_regret

TEACHER_RULES = (
    ("teacher score (align - cmi)", "teacher_score", "min"),
    ("teacher score_ce (sample_ce - cmi)", "teacher_score_ce", "min"),
    ("teacher cmi", "teacher_cmi", "max"),
    ("teacher align", "teacher_align", "min"),
    ("teacher sample_ce", "teacher_sample_ce", "min"),
    ("T-stddev", "t_stddev", "min"),
)
"""(table name, ``teacher_metrics`` field, direction) of the zero-training rules."""

STUDENT_RULES = (
    ("student score (align - cmi)", "score", "min"),
    ("student score_ce (sample_ce - cmi)", "score_ce", "min"),
    ("student val accuracy", "val_acc", "max"),
)
"""(table name, read field, direction) of the rules read after a short training with its own schedule."""

SEARCH_OBJECTIVES = ("score_ce", "val_acc")
"""Objectives the replayed searches optimise."""

FORMER_SEARCH_BUDGET = 0.25
"""The trial budget (fraction of the full epochs) of the former default search (TPE + ASHA grace 1 on
``score_ce``), kept as a reference; the package's default rule is :mod:`daq_search.selection`'s."""

DEFAULT_COST_LIMIT = 0.3
"""A recommended default may cost at most this share of one full sweep in every passing regime."""

WEAK_CANDIDATES = ("none", "random_erasing(p=0.5)")
"""Candidates that do not count as a strong augmentation (``none``, RandomErasing alone)."""


@dataclass(frozen=True)
class RuleResult:
    """One rule on one regime: per-candidate values, agreement with the ground truth and compute.

    ``seconds`` are CPU seconds (one thread); ``cost_fraction`` is the rule's seconds over one full sweep (every
    candidate trained once to completion); ``rho_ci`` is a bootstrap interval over seeds (the 1-seed sweep gives
    the range over left-out seeds instead); searches pick without ranking (rho NaN). ``tiebreak`` holds the values
    that break a tie for the pick (:func:`bench.stats.pick`; minus the validation loss of the same runs, larger is
    better), None where the rule has none and a tie is drawn at random.
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
    chosen_rule: str | None = None
    tiebreak: list[float] | None = None


NAN_PAIR = (float("nan"), float("nan"))


def _result(results: dict, job: Job) -> dict | None:
    return results.get(job.key())


def ground_truth(regime: Regime, results: dict) -> np.ndarray | None:
    """Test top-1 [candidates, seeds] (fractions) of the full runs, or None while any is missing."""
    rows = []
    for candidate in regime.candidates:
        row = []
        for seed in regime.seeds:
            result = _result(results, Job("student", regime, candidate, seed))
            if result is None:
                return None
            row.append(result["test_top1"])
        rows.append(row)
    return np.array(rows)


def judged_seeds(seeds: list[int], curve_seed: int) -> list[int]:
    """The seeds whose full runs judge the rules: every seed but the curve seed, whose runs the student-scored rules,
    replays and calibration anchors read (judged by their own runs, they would look better than they are)."""
    return [seed for seed in seeds if seed != curve_seed]


def judged_truth(seeds: list[int], curve_seed: int, top1: np.ndarray) -> np.ndarray:
    """The ground truth the rules are judged against: the columns of ``top1`` (test top-1 [candidates, seeds], one
    column per seed in ``seeds``) of :func:`judged_seeds`."""
    return np.asarray(top1)[:, [seeds.index(seed) for seed in judged_seeds(seeds, curve_seed)]]


def completed_seeds(regime: Regime, results: dict) -> list[int]:
    """The seeds whose full runs are done for every candidate."""
    return [s for s in regime.seeds if all(Job("student", regime, c, s).key() in results for c in regime.candidates)]


def sweep_seconds(regime: Regime, results: dict, field: str = "seconds") -> float:
    """CPU seconds (or, with ``field="wall_seconds"``, wall seconds) of one full sweep: every candidate trained once
    to completion, averaged over the seeds."""
    per_seed = [
        sum(_result(results, Job("student", regime, c, s))[field] for c in regime.candidates) for s in regime.seeds
    ]
    return float(np.mean(per_seed))


def _rule(name, mode, values, top1, candidates, seconds, sweep, rng, tiebreak=None) -> RuleResult:
    agree = agreement(np.array(values), mode, top1, rng=rng, tiebreak=tiebreak)
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
        tiebreak=None if tiebreak is None else [float(v) for v in tiebreak],
    )


def _pick_rule(name: str, mode: str, pick: str, top1: np.ndarray, candidates: list[str], seconds, sweep):
    truth = top1.mean(1)
    return RuleResult(
        rule=name,
        mode=mode,
        values=[],
        rho=float("nan"),
        rho_ci=NAN_PAIR,
        tau=float("nan"),
        tau_ci=NAN_PAIR,
        pick=pick,
        regret_pp=100 * float(truth.max() - truth[candidates.index(pick)]),
        seconds=seconds,
        cost_fraction=seconds / sweep,
    )


def budget_label(fraction: float) -> str:
    """A budget as a percentage label (``"25 %"``)."""
    return f"{100 * fraction:g} %"


def curves(regime: Regime, results: dict, fraction: float) -> dict[str, list[dict]] | None:
    """Per candidate the per-epoch rows of the curve seed's run at ``fraction``, or None while any is missing."""
    found = {}
    for candidate in regime.candidates:
        result = _result(results, Job("student", regime, candidate, regime.curve_seed(), fraction))
        if result is None or "curve" not in result:
            return None
        found[candidate] = result["curve"]
    return found


def replays(regime: Regime, results: dict) -> list[tuple[str, str, Replay]]:
    """Every replayed search (name, objective, outcome) whose curves are in ``results``: TPE + ASHA with grace 1
    (the former default) and with grace max_t/4 (named as that fraction, so it is one rule across regimes of
    different lengths), and Hyperband (eta 3), at each curve budget and objective."""
    found = []
    for fraction in CURVE_BUDGETS:
        recorded = curves(regime, results, fraction)
        if recorded is None:
            continue
        max_t = regime.budget_epochs(fraction)
        label = f"trial = {budget_label(fraction)}"
        for objective in SEARCH_OBJECTIVES:
            mode = METRIC_MODES[objective]
            shipped = " (former default)" if fraction == FORMER_SEARCH_BUDGET and objective == "score_ce" else ""
            found.append(
                (
                    f"search TPE+ASHA grace 1, {label}, {objective}{shipped}",
                    objective,
                    replay_tpe_asha(recorded, regime.candidates, objective, mode, grace=1),
                )
            )
            grace = max(2, max_t // 4)
            found.append(
                (
                    f"search TPE+ASHA grace 1/4 of the trial, {label}, {objective}",
                    objective,
                    replay_tpe_asha(recorded, regime.candidates, objective, mode, grace=grace),
                )
            )
            found.append(
                (
                    f"search Hyperband eta 3, {label}, {objective}",
                    objective,
                    replay_hyperband(recorded, regime.candidates, objective, mode),
                )
            )
    return found


def rule_results(regime: Regime, results: dict, all_seeds: np.ndarray) -> list[RuleResult]:
    """Every rule whose inputs are in ``results``, judged against :func:`judged_truth` of ``all_seeds`` (test top-1
    [candidates, seeds]) but the single-seed sweep, which is judged leave one seed out over all of them; rules with
    missing inputs are left out."""
    top1 = judged_truth(list(regime.seeds), regime.curve_seed(), all_seeds)
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
    for fraction in BUDGETS:
        runs = [_result(results, Job("student", regime, c, regime.curve_seed(), fraction)) for c in candidates]
        if not all(run is not None for run in runs):
            continue
        seconds = sum(run["seconds"] + run["read"]["read_seconds"] for run in runs)
        lower_loss = [-run["read"]["val_loss"] for run in runs]
        for name, field, mode in STUDENT_RULES:
            values = [run["read"][field] for run in runs]
            label = f"{name} after {budget_label(fraction)} training"
            rules.append(_rule(label, mode, values, top1, candidates, seconds, sweep, rng, lower_loss))
    calibrated = calibrated_search(regime, results)
    if calibrated is not None:
        rules.append(calibrated_rule(calibrated, top1, candidates, sweep))
    for name, objective, replay in replays(regime, results):
        mode = METRIC_MODES[objective]
        rules.append(_pick_rule(name + " (replayed)", mode, replay.winner, top1, candidates, replay.seconds, sweep))
    rules.append(_one_seed_sweep_rule(all_seeds, candidates, sweep))
    rules.append(_random_pick_rule(top1))
    return rules


ONE_SEED_SWEEP_RULE = "1-seed full sweep (leave-one-out)"
RANDOM_PICK_RULE = "random pick (expected)"


def _one_seed_sweep_rule(top1: np.ndarray, candidates: list[str], sweep: float) -> RuleResult:
    """A sweep of every candidate on one seed, judged leave one seed out against the mean of the other seeds."""
    sweep_agree = one_seed_sweep(top1)
    return RuleResult(
        rule=ONE_SEED_SWEEP_RULE,
        mode="max",
        values=[float(v) for v in top1[:, 0]],
        rho=sweep_agree.rho,
        rho_ci=sweep_agree.rho_range,
        tau=sweep_agree.tau,
        tau_ci=NAN_PAIR,
        pick=", ".join(sorted({candidates[p] for p in sweep_agree.picks})),
        regret_pp=100 * sweep_agree.regret,
        seconds=sweep,
        cost_fraction=1.0,
    )


def _random_pick_rule(top1: np.ndarray) -> RuleResult:
    """The expected regret of a uniformly random pick against ``top1``."""
    return RuleResult(
        rule=RANDOM_PICK_RULE,
        mode="max",
        values=[],
        rho=0.0,
        rho_ci=NAN_PAIR,
        tau=0.0,
        tau_ci=NAN_PAIR,
        pick="(any)",
        regret_pp=100 * random_pick_regret(top1),
        seconds=0.0,
        cost_fraction=0.0,
    )


def rejudge(summary: dict) -> dict:
    """A complete regime ``summary`` (a ``results.json`` entry) with its rules judged again from what it recorded, as
    :func:`rule_results` judges them, without the runs: each rule's readings (``values``, with its ``tiebreak``
    where recorded; a tie without one is drawn, seeded) or, for a replay, its pick, against :func:`judged_truth`
    of ``top1_pct`` (``judged_seeds`` says which); the single-seed sweep from ``top1_pct`` itself."""
    seeds, candidates, sweep = summary["seeds"], summary["candidates"], summary["sweep_seconds"]
    curve_seed = build_regime(summary["regime"], tuple(seeds)).curve_seed()
    all_seeds = np.asarray(summary["top1_pct"], float) / 100
    top1 = judged_truth(seeds, curve_seed, all_seeds)
    rng = np.random.default_rng(0)
    rules = []
    for rule in summary["rules"]:
        name, mode, seconds = rule["rule"], rule["mode"], rule["seconds"]
        if name == ONE_SEED_SWEEP_RULE:
            judged = _one_seed_sweep_rule(all_seeds, candidates, sweep)
        elif name == RANDOM_PICK_RULE:
            judged = _random_pick_rule(top1)
        elif not rule["values"]:
            judged = _pick_rule(name, mode, rule["pick"], top1, candidates, seconds, sweep)
        else:
            own_rng = np.random.default_rng(0) if name == CALIBRATED_RULE else rng
            values, tiebreak = rule["values"], rule.get("tiebreak")
            judged = _rule(name, mode, values, top1, candidates, seconds, sweep, own_rng, tiebreak)
            judged = replace(judged, chosen_rule=rule.get("chosen_rule"))
        rules.append(asdict(judged))
    return {**summary, "rules": rules, "judged_seeds": judged_seeds(seeds, curve_seed)}


CALIBRATED_RULE = "calibrated search (3 anchors, rule chosen per regime)"
"""The table name of the calibrated search (daq_search/calibrate.py replayed on the recorded runs)."""

CALIBRATION_OBJECTIVES = tuple(name for name in METRIC_MODES if name in READ_FIELDS)
"""The objectives the calibrated search chooses among: every package metric the bench's student runs read."""


@dataclass(frozen=True)
class Calibrated:
    """The calibrated search on one regime, replayed on the first seed's runs: the anchors (``default_anchors`` of the
    regime's candidates, the ground truth unseen), their final validation accuracy (fraction), the chosen objective
    and budget (epochs and fraction of the full epochs; the package's fallback when the anchors cannot choose), the
    chosen rule's Kendall agreement with the anchors, how its value is read (``last epoch``, as the package ranks
    trials), its value per candidate, each candidate's validation loss at the same read (the pick's tie-break) and
    the CPU seconds of every run it needs."""

    anchors: list[str]
    anchor_val_acc: list[float]
    objective: str
    budget_epochs: int
    fraction: float
    agreement: float | None
    fallback: str | None
    value_read: str
    values: list[float]
    val_loss: list[float]
    seconds: float

    def describe(self) -> str:
        """The choice in words, for tables."""
        rule = f"{self.objective} after {self.budget_epochs} ep ({budget_label(self.fraction)}, {self.value_read})"
        if self.fallback is not None:
            return f"fallback ({self.fallback}): {rule}"
        return f"{rule}, anchor agreement {self.agreement:+.2f}"


def calibration_anchors(candidates: list[str]) -> list[str]:
    """The package's default anchors (:func:`daq_search.calibrate.default_anchors`: mildest, middle and strongest
    by its strength order) of a list space made of ``candidates``, as the bench's candidate ids."""
    listed = {parse_candidate(c).id: c for c in candidates}
    space = SearchSpace(name="bench", path="", listed=tuple(parse_candidate(c) for c in candidates))
    return [listed[anchor] for anchor in default_anchors(space)]


def run_value(run: dict, objective: str) -> tuple[float, float, str]:
    """A rule's value on one student run, as the package's calibration and search read it: the objective after the
    run's last epoch. Returns (value, seconds of the run: its training CPU seconds plus the read seconds the package
    spends on it, every epoch's when the run recorded every epoch as a trial does, how it was read)."""
    if "curve" in run:
        reads = sum(row["read_seconds"] for row in run["curve"])
        return float(run["curve"][-1][objective]), run["seconds"] + reads, "last epoch"
    return float(run["read"][objective]), run["seconds"] + run["read"]["read_seconds"], "last epoch"


def calibrated_search(regime: Regime, results: dict) -> Calibrated | None:
    """The calibrated search replayed on the first seed's runs (None while any is missing), as daq_search/calibrate.py
    runs it: the anchors' final accuracy is their full run's validation accuracy after the last epoch; each rule
    (objective in :data:`CALIBRATION_OBJECTIVES` x budget in BUDGETS, each budget a run with its own schedule) is
    read on every anchor with :func:`run_value`; ``choose_rule`` picks the rule (when the anchors cannot choose, it
    falls back to the package's default rule, :data:`~daq_search.selection.DEFAULT_OBJECTIVE` after
    :data:`~daq_search.selection.DEFAULT_TRIAL_FRACTION` of the full epochs); that rule's value on every candidate's
    run at its budget picks the candidate (ties: the lower validation loss of the same run). Cost: the
    anchors' full runs (training and their last read), the anchors' budget runs, and every candidate's run at the
    chosen budget (the search trains the anchors again, as the package does)."""
    candidates, seed = list(regime.candidates), regime.curve_seed()
    fractions = {regime.budget_epochs(f): f for f in reversed(BUDGETS)}
    runs = {
        (c, epochs): _result(results, Job("student", regime, c, seed, fraction))
        for c in candidates
        for epochs, fraction in fractions.items()
    }
    anchors = calibration_anchors(candidates)
    full = {a: _result(results, Job("student", regime, a, seed)) for a in anchors}
    if any(run is None for run in [*runs.values(), *full.values()]):
        return None
    rows = [
        {"anchor": a, "objective": o, "budget": epochs, "value": run_value(runs[a, epochs], o)[0],
         "final_acc": full[a]["read"]["val_acc"]}
        for a in anchors
        for o in CALIBRATION_OBJECTIVES
        for epochs in sorted(fractions)
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["anchor", "objective", "budget", "value", "final_acc"])
    default = Rule(DEFAULT_OBJECTIVE, regime.budget_epochs(DEFAULT_TRIAL_FRACTION))
    choice, _ = choose_rule(table, default)
    picked = [run_value(runs[c, choice.budget], choice.objective) for c in candidates]
    anchor_seconds = sum(full[a]["seconds"] + full[a]["read"]["read_seconds"] for a in anchors) + sum(
        run_value(runs[a, epochs], choice.objective)[1] for a in anchors for epochs in fractions
    )
    return Calibrated(
        anchors=anchors,
        anchor_val_acc=[float(full[a]["read"]["val_acc"]) for a in anchors],
        objective=choice.objective,
        budget_epochs=choice.budget,
        fraction=fractions[choice.budget],
        agreement=choice.agreement,
        fallback=choice.fallback,
        value_read=picked[0][2],
        values=[value for value, _, _ in picked],
        val_loss=[run_value(runs[c, choice.budget], "val_loss")[0] for c in candidates],
        seconds=anchor_seconds + sum(seconds for _, seconds, _ in picked),
    )


def calibrated_rule(calibrated: Calibrated, top1: np.ndarray, candidates: list[str], sweep: float) -> RuleResult:
    """The calibrated search as a row of the rules table: its chosen rule's values judged against ``top1``."""
    mode = METRIC_MODES[calibrated.objective]
    rng = np.random.default_rng(0)
    lower_loss = [-loss for loss in calibrated.val_loss]
    result = _rule(
        CALIBRATED_RULE, mode, calibrated.values, top1, candidates, calibrated.seconds, sweep, rng, lower_loss
    )
    return replace(result, chosen_rule=calibrated.describe())


def scoring_costs(regime: Regime, results: dict) -> dict | None:
    """Per-candidate scoring cost against its floor (one plain teacher forward epoch over the scoring subset): the
    one-pass score, the two-pass score and T-stddev, mean CPU seconds per candidate and as multiples of the floor."""
    teacher = _result(results, Job("teacher_rules", regime))
    if teacher is None:
        return None
    rows = list(teacher["candidates"].values())
    floor = max(teacher["floor_seconds"], 1e-9)
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
        "two_pass_over_one_pass": two / max(one, 1e-9),
        "max_abs_diff_one_vs_two_pass": max(row["two_pass_max_abs_diff"] for row in rows),
    }


def strong_margin(candidates: list[str], top1: np.ndarray) -> dict:
    """The best strong candidate (not ``none`` nor RandomErasing alone) against ``none``: its name, the margin of
    its mean top-1 over ``none``'s and twice the pooled seed sd (both pp), and whether the margin is >= 1 pp and
    >= 2 seed sd (the issue's bar)."""
    means = 100 * top1.mean(1)
    seed_sd = float(100 * np.sqrt(top1.var(axis=1, ddof=1).mean())) if top1.shape[1] > 1 else float("nan")
    strong = [i for i, c in enumerate(candidates) if c not in WEAK_CANDIDATES]
    if "none" not in candidates or not strong:
        return {"candidate": None, "margin_pp": float("nan"), "two_seed_sd_pp": 2 * seed_sd, "beats_none": False}
    best = max(strong, key=lambda i: means[i])
    margin = float(means[best] - means[candidates.index("none")])
    return {
        "candidate": candidates[best],
        "margin_pp": margin,
        "two_seed_sd_pp": 2 * seed_sd,
        "beats_none": bool(margin >= 1.0 and margin >= 2 * seed_sd),
    }


def wall_estimate(regime: Regime, results: dict) -> dict | None:
    """The regime's estimated wall seconds on 2 idle cores (two one-thread workers): every training epoch and read
    of its jobs at the CPU probe's per-candidate seconds, the teacher's epochs at ``none``'s per-image rate, halved."""
    probe = _result(results, Job("cpu_probe", regime))
    if probe is None:
        return None
    rates = probe["candidates"]
    reads = sum(regime.budget_epochs(f) for f in CURVE_BUDGETS) + sum(1 for f in BUDGETS if f not in CURVE_BUDGETS)
    total = 0.0
    for candidate in regime.candidates:
        epoch, read = rates[candidate]["epoch_seconds"], rates[candidate]["read_seconds"]
        total += (
            len(regime.seeds) * regime.recipe.epochs * epoch + sum(regime.budget_epochs(f) for f in BUDGETS) * epoch
        )
        total += reads * read
    per_image = rates["none"]["epoch_seconds"] / max(1, probe["student_images"])
    teacher = regime.teacher.recipe.epochs * probe["teacher_images"] * per_image
    return {"cpu_seconds": total + teacher, "wall_seconds_2_cores": (total + teacher) / 2}


def regime_summary(regime: Regime, results: dict) -> dict:
    """Everything reported about one regime, as plain JSON-ready values (accuracies in percent)."""
    teacher = _result(results, Job("teacher", regime))
    summary = {
        "regime": regime.name,
        "description": regime.description,
        "config": {
            name: getattr(regime, name).model_dump()
            for name in ("data", "teacher", "student", "quant", "kd", "recipe", "scorer")
        },
        "planted": regime.planted.describe() if regime.planted is not None else None,
        "seeds": list(regime.seeds),
        "candidates": list(regime.candidates),
        "teacher": teacher,
        "wall_estimate": wall_estimate(regime, results),
        "devices": sorted(
            {
                result.get("device", "not recorded")
                for key, result in results.items()
                if key.startswith(f"{regime.name}|") and "|student|" in key
            }
        ),
    }
    top1 = ground_truth(regime, results)
    if top1 is None:
        done = completed_seeds(regime, results)
        summary.update(complete=False, completed_seeds=done)
        if done:
            partial = np.array(
                [[results[Job("student", regime, c, s).key()]["test_top1"] for s in done] for c in regime.candidates]
            )
            summary["partial_top1_pct"] = (100 * partial).tolist()
        return summary
    gate = noise_gate(top1)
    summary.update(
        complete=True,
        top1_pct=(100 * top1).tolist(),
        mean_pct=(100 * top1.mean(1)).tolist(),
        sd_pct=(100 * top1.std(1, ddof=1)).tolist(),
        gate={key: (100 * value if key.endswith("_sd") else value) for key, value in asdict(gate).items()},
        strong_vs_none=strong_margin(list(regime.candidates), top1),
        sweep_seconds=sweep_seconds(regime, results),
        sweep_wall_seconds=sweep_seconds(regime, results, "wall_seconds"),
        scoring_costs=scoring_costs(regime, results),
        judged_seeds=judged_seeds(list(regime.seeds), regime.curve_seed()),
        rules=[asdict(rule) for rule in rule_results(regime, results, top1)],
    )
    calibrated = calibrated_search(regime, results)
    summary["calibration"] = None if calibrated is None else asdict(calibrated)
    return summary


def passing(summaries: list[dict]) -> list[dict]:
    """The complete regimes whose ground truth passes the noise gate."""
    return [s for s in summaries if s.get("complete") and s["gate"]["passes"]]


def cross_regime(summaries: list[dict]) -> dict:
    """Every rule across the passing regimes: per regime its Spearman, regret (pp) and cost (share of a sweep), its
    worst-case regret and largest cost; and the recommended default, the rule with the lowest worst-case regret
    among those costing at most :data:`DEFAULT_COST_LIMIT` of a sweep in every passing regime (ties: lower mean
    regret, then lower cost). ``recommended`` is None when no regime passes."""
    good = passing(summaries)
    names: list[str] = []
    for summary in good:
        names += [rule["rule"] for rule in summary["rules"] if rule["rule"] not in names]
    rows = []
    for name in names:
        per_regime = {}
        for summary in good:
            rule = next((r for r in summary["rules"] if r["rule"] == name), None)
            if rule is not None:
                per_regime[summary["regime"]] = {
                    "rho": rule["rho"],
                    "regret_pp": rule["regret_pp"],
                    "cost_fraction": rule["cost_fraction"],
                    "pick": rule["pick"],
                    "chosen_rule": rule.get("chosen_rule"),
                }
        complete = len(per_regime) == len(good)
        regrets = [v["regret_pp"] for v in per_regime.values()]
        costs = [v["cost_fraction"] for v in per_regime.values()]
        rows.append(
            {
                "rule": name,
                "per_regime": per_regime,
                "in_every_passing_regime": complete,
                "worst_regret_pp": max(regrets),
                "mean_regret_pp": float(np.mean(regrets)),
                "max_cost_fraction": max(costs),
            }
        )
    eligible = [
        row
        for row in rows
        if row["in_every_passing_regime"]
        and row["max_cost_fraction"] <= DEFAULT_COST_LIMIT
        and not row["rule"].startswith("random pick")
    ]
    eligible.sort(key=lambda row: (row["worst_regret_pp"], row["mean_regret_pp"], row["max_cost_fraction"]))
    return {
        "passing_regimes": [s["regime"] for s in good],
        "rules": rows,
        "cost_limit": DEFAULT_COST_LIMIT,
        "recommended": eligible[0]["rule"] if eligible else None,
    }
