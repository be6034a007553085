"""The benchmark: its rank statistics, scheduler replays and cross-regime choice against hand-computed values, and a
CI-sized end-to-end run of --quick that asserts what the code guarantees whatever the training outcome (files and
schemas written, statistics recomputed from the numbers the run produced, exact resume). Set DAQ_BENCH_SEEDS (e.g.
``5,6``) to run the quick regime with other seeds."""

import dataclasses
import json

import numpy as np
import pytest
import scipy.stats
import torch

from bench.analysis import (
    CALIBRATED_RULE,
    calibrated_rule,
    calibrated_search,
    calibration_anchors,
    cross_regime,
    rejudge,
    strong_margin,
)
from bench.planted import Nuisance, apply_nuisance
from bench.regimes import build_regime
from bench.report import recommendation_sentence
from bench.run import main, summary_lines
from bench.runs import READ_FIELDS, Job
from bench.schedulers import AshaBracket, replay_hyperband, replay_tpe_asha
from bench.stats import (
    agreement,
    balanced_splits,
    kendall,
    noise_gate,
    one_seed_sweep,
    pick,
    random_pick_regret,
    spearman,
)
from daq_search.data import TensorImageDataset


def test_spearman_and_kendall_match_hand_computed_values():
    # ranks (1,2,3,4) vs (1,3,2,4): d^2 = 0+1+1+0 = 2, rho = 1 - 6*2/(4*15) = 0.8
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(0.8)
    # 6 pairs, 1 discordant: tau = (5 - 1) / 6
    assert kendall(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(4 / 6)
    # ties share average ranks: a = (1, 1, 2) -> ranks (1.5, 1.5, 3)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    )
    # tau-b with a tie in a: pairs (1,1),(1,2),(1,2) -> 0 + 1 + 1 concordant; sqrt(2 * 3) in the denominator
    assert kendall(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(2 / np.sqrt(6))
    assert spearman(np.array([1, 1, 1]), np.array([1, 2, 3])) == 0.0
    assert kendall(np.array([1, 1, 1]), np.array([1, 2, 3])) == 0.0


def test_balanced_splits_cover_each_halving_once():
    assert balanced_splits(4) == [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    assert len(balanced_splits(6)) == 10


def test_noise_gate_separates_signal_from_noise():
    signal = np.array([[0.9, 0.91, 0.9, 0.91], [0.8, 0.81, 0.8, 0.81], [0.7, 0.71, 0.7, 0.71]])
    gate = noise_gate(signal)
    assert gate.split_half_rho == pytest.approx(1.0) and gate.passes
    assert gate.between_candidate_sd == pytest.approx(0.1)
    # split {0,1}|{2,3}: ranks (3,2,1) vs (2,3,1), rho 0.5; the other two splits give equal halves, rho 1
    mixed = np.array([[0.9, 0.9, 0.8, 0.8], [0.8, 0.8, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]])
    assert noise_gate(mixed).split_half_rho == pytest.approx(2.5 / 3)
    # two splits leave both halves tied (rho 0), the third reverses the order (rho -1)
    noise = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    gate = noise_gate(noise)
    assert gate.split_half_rho == pytest.approx(-1 / 3) and not gate.passes


def test_agreement_sign_corrects_and_measures_regret():
    top1 = np.array([[0.90, 0.92], [0.80, 0.82], [0.70, 0.72]])
    lower_is_better = agreement(np.array([1.0, 2.0, 3.0]), "min", top1, n_boot=20)
    assert lower_is_better.rho == pytest.approx(1.0) and lower_is_better.regret == 0.0
    wrong = agreement(np.array([1.0, 2.0, 3.0]), "max", top1, n_boot=20)
    assert wrong.rho == pytest.approx(-1.0) and wrong.pick == 2 and wrong.regret == pytest.approx(0.2)
    assert random_pick_regret(top1) == pytest.approx(0.91 - 0.81)
    sweep = one_seed_sweep(top1)
    assert sweep.rho == pytest.approx(1.0) and sweep.regret == 0.0


def test_a_tie_is_not_given_to_the_first_listed_candidate():
    good = np.array([0.6, 0.6, 0.4])  # none (listed first) ties with a strong candidate
    assert int(np.argmax(good)) == 0  # what a plain argmax picked
    assert pick(good, secondary=np.array([-0.9, -0.7, -0.1])) == 1  # the lower validation loss of the tied two
    assert pick(good, secondary=np.array([-0.7, -0.9, -0.1])) == 0
    draws = [pick(good, seed=seed) for seed in range(40)]  # no secondary: a seeded draw among the tied
    assert set(draws) == {0, 1} and draws == [pick(good, seed=seed) for seed in range(40)]
    assert pick(good, secondary=np.array([-0.5, -0.5, 0.0]), seed=3) == pick(good, seed=3)  # still tied: the draw
    assert pick(np.array([0.6, 0.6 + 1e-9, 0.4]), seed=0) == 1  # a real difference is no tie
    top1 = np.array([[0.70, 0.70], [0.80, 0.80], [0.60, 0.60]])
    tied = agreement(np.array([0.5, 0.5, 0.1]), "max", top1, n_boot=5, tiebreak=np.array([-2.0, -1.0, 0.0]))
    assert tied.pick == 1 and tied.regret == 0.0  # argmax would have picked none: regret 0.1


def test_asha_bracket_follows_ray_rungs_and_cutoffs():
    bracket = AshaBracket(grace=1, max_t=8, reduction_factor=2)
    assert [milestone for milestone, _ in bracket.rungs] == [8, 4, 2, 1]
    assert bracket.keeps(0, 1, 2.0)  # first at rung 1: nothing recorded, continues
    assert bracket.keeps(1, 1, 4.0)  # cutoff = median of {2} = 2
    assert not bracket.keeps(2, 1, 1.0)  # cutoff = median of {2, 4} = 3 > 1: stopped
    assert bracket.keeps(0, 1, 0.0)  # already recorded at rung 1 and not yet at rung 2: continues
    assert bracket.keeps(1, 2, 5.0) and not bracket.keeps(0, 2, 4.0)  # rung 2 cutoff = 5


def _curves(finals: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {
        c: [
            {"epoch": e + 1, "score_ce": v, "val_acc": -v, "train_seconds": 1.0, "read_seconds": 0.5}
            for e, v in enumerate(values)
        ]
        for c, values in finals.items()
    }


def test_replays_count_epochs_and_pick_by_the_package_rule():
    # "late" loses until the last epoch: grace 1 prunes it; a full-budget Hyperband bracket trains it to the end
    curves = _curves(
        {
            "none": [1.0, 0.9, 0.8, 0.7],
            "trivialaugment": [2.0, 1.5, 1.0, 0.5],
            "none+cutmix(alpha=1.0)": [3.0, 3.0, 3.0, 3.0],
        }
    )
    candidates = ("none", "trivialaugment", "none+cutmix(alpha=1.0)")
    asha = replay_tpe_asha(curves, candidates, "score_ce", "min", grace=1, num_samples=3)
    # TPE seed 0 draws (its start-up trials are random) trivialaugment, cutmix, cutmix. Rungs at 1, 2 and 4 epochs:
    # trivialaugment is first at every rung and trains all 4; each cutmix trial scores 3.0 at epoch 1, worse than
    # the rung's median so far (2.0, then 2.5), and stops there: 4 + 1 + 1 epochs
    assert asha.candidates_tried == ("none+cutmix(alpha=1.0)", "trivialaugment")
    assert asha.trials == 3 and asha.epochs_trained == 6 and asha.winner == "trivialaugment"
    assert asha.seconds == pytest.approx(1.5 * 6)
    band = replay_hyperband(curves, candidates, "score_ce", "min", eta=3, seed=0)
    # R = 4, eta 3: s_max 1; bracket 1: 3 configs at round(4/3) = 1 epoch, the best 1 continues to 4 (+3);
    # bracket 0: 2 configs at 4 epochs
    assert band.trials == 5 and band.epochs_trained == 3 + 3 + 8
    # seed 0's permutation is (2, 0, 1): bracket 0 draws cutmix and none, so trivialaugment (best at epoch 4,
    # pruned at epoch 1 in bracket 1) is never trained to the end, and none (0.7 at 4 epochs) wins
    assert band.candidates_tried == tuple(sorted(candidates)) and band.winner == "none"


def test_cross_regime_names_the_cheap_rule_with_lowest_worst_case_regret():
    def summary(name, passes, rules):
        return {
            "regime": name,
            "complete": True,
            "gate": {"passes": passes},
            "rules": [
                {"rule": r, "rho": 0.5, "regret_pp": regret, "cost_fraction": cost, "pick": "x"}
                for r, regret, cost in rules
            ],
        }

    table = cross_regime(
        [
            summary(
                "a",
                True,
                [("cheap", 2.0, 0.1), ("steady", 1.0, 0.2), ("dear", 0.0, 1.0), ("random pick (expected)", 0.5, 0.0)],
            ),
            summary(
                "b",
                True,
                [("cheap", 0.0, 0.1), ("steady", 1.5, 0.25), ("dear", 0.0, 1.0), ("random pick (expected)", 0.5, 0.0)],
            ),
            summary("c", False, [("cheap", 9.0, 0.1), ("steady", 9.0, 0.2)]),
        ]
    )
    assert table["passing_regimes"] == ["a", "b"]
    rows = {row["rule"]: row for row in table["rules"]}
    assert rows["steady"]["worst_regret_pp"] == 1.5 and rows["steady"]["max_cost_fraction"] == 0.25
    assert table["recommended"] == "steady"  # cheap's worst is 2.0; dear costs a whole sweep; random is excluded
    assert cross_regime([summary("c", False, [("cheap", 9.0, 0.1)])])["recommended"] is None


def test_summary_states_the_rule_its_results_recommend():
    row = {
        "rule": "steady",
        "per_regime": {
            name: {"rho": 0.5, "regret_pp": regret, "cost_fraction": 0.25, "pick": "x"}
            for name, regret in (("a", 0.0), ("b", 1.5))
        },
        "worst_regret_pp": 1.5,
        "mean_regret_pp": 0.75,
        "max_cost_fraction": 0.25,
        "in_every_passing_regime": True,
    }
    table = {"passing_regimes": ["a", "b"], "rules": [row], "cost_limit": 0.3, "recommended": "steady"}
    expected = (
        "The rule recommended by these results is steady: worst-case regret 1.50 pp (0 in 1 of the 2 passing "
        "regimes), at most 0.25 of a full sweep's compute."
    )
    assert recommendation_sentence(table) == expected
    meta = {"device": "cpu", "jobs": 1, "wall_seconds": 60.0, "cut_short": False}
    assert any(expected in line for line in summary_lines([], table, False, meta))
    assert recommendation_sentence({**table, "recommended": None}) == (
        "No rule is recommended: none costing at most 30% of a full sweep is judged on every one of the 2 passing "
        "regimes."
    )
    assert recommendation_sentence({**table, "passing_regimes": [], "recommended": None}) == (
        "No rule is recommended: no regime passes the noise gate."
    )


def _run(epochs: int, **read) -> dict:
    """A synthetic seed-0 student run: 1 CPU s per epoch, 0.5 s per read, every metric 1.0 unless given."""
    return {"seconds": float(epochs), "read": {**dict.fromkeys(READ_FIELDS, 1.0), **read, "read_seconds": 0.5}}


def test_calibrated_search_picks_and_costs_as_computed_by_hand():
    base = build_regime("quick-digits", seeds=(0, 1))
    candidates = (
        "none",
        "random_erasing(p=0.5)",
        "trivialaugment",
        "randaugment(magnitude=9,num_ops=2)",
        "none+cutmix(alpha=1.0)",
    )
    regime = dataclasses.replace(base, candidates=candidates, recipe=base.recipe.model_copy(update={"epochs": 20}))
    # strength order: none < none+cutmix < random_erasing < randaugment < trivialaugment: first, middle, last
    anchors = ["none", "random_erasing(p=0.5)", "trivialaugment"]
    assert calibration_anchors(list(candidates)) == anchors
    final_val = {"none": 0.6, "random_erasing(p=0.5)": 0.7, "trivialaugment": 0.8}
    # val_loss at 5 epochs (the 25 % run records every epoch): the last epoch ranks the anchors right, the best of
    # its epochs (epoch 2's, lower still) would rank them wrong
    last = dict(zip(candidates, [3.0, 2.0, 1.0, 4.0, 0.5], strict=True))
    early = dict(zip(candidates, [0.3, 0.4, 0.45, 0.5, 0.45], strict=True))
    results = {}
    for c in candidates:
        for seed, top1 in enumerate({"none": (0.59, 0.61), "random_erasing(p=0.5)": (0.69, 0.71),
                                     "trivialaugment": (0.79, 0.81), "randaugment(magnitude=9,num_ops=2)": (0.84, 0.86),
                                     "none+cutmix(alpha=1.0)": (0.74, 0.76)}[c]):  # fmt: skip
            results[Job("student", regime, c, seed).key()] = {
                **_run(20, val_acc=final_val.get(c, 0.5)), "test_top1": top1
            }  # fmt: skip
        # score_ce after 2 epochs ranks the anchors (3, 1, 2): tau = (2 - 1) / 3; cmi after 10 epochs ranks them right
        results[Job("student", regime, c, 0, 0.1).key()] = _run(
            2, score_ce={"none": 3.0, "trivialaugment": 2.0}.get(c, 1.0)
        )
        results[Job("student", regime, c, 0, 0.5).key()] = _run(
            10, cmi={"none": 0.1, "random_erasing(p=0.5)": 0.2, "trivialaugment": 0.3}.get(c, 0.0)
        )
        curve = [{**dict.fromkeys(READ_FIELDS, 1.0), "epoch": e, "read_seconds": 0.5,
                  "val_loss": {2: early[c], 5: last[c]}.get(e, 5.0)} for e in range(1, 6)]  # fmt: skip
        results[Job("student", regime, c, 0, 0.25).key()] = {**_run(5), "curve": curve}
    calibrated = calibrated_search(regime, results)
    # val_loss@5 and cmi@10 both agree perfectly (tau 1): the cheaper budget wins
    assert calibrated.anchors == anchors and calibrated.anchor_val_acc == [0.6, 0.7, 0.8]
    assert (calibrated.objective, calibrated.budget_epochs, calibrated.fraction) == ("val_loss", 5, 0.25)
    assert calibrated.agreement == pytest.approx(1.0) and calibrated.fallback is None
    assert calibrated.value_read == "last epoch" and calibrated.values == [3.0, 2.0, 1.0, 4.0, 0.5]
    # anchors' full runs 3 x (20 + 0.5), their budget runs 3 x ((2 + 0.5) + (5 + 5 x 0.5) + (10 + 0.5)),
    # every candidate at 5 epochs read every epoch: 5 x (5 + 2.5)
    assert calibrated.seconds == pytest.approx(61.5 + 61.5 + 37.5)
    top1 = np.array([[0.59, 0.61], [0.69, 0.71], [0.79, 0.81], [0.84, 0.86], [0.74, 0.76]])
    rule = calibrated_rule(calibrated, top1, list(candidates), sweep=100.0)
    assert rule.pick == "none+cutmix(alpha=1.0)" and rule.regret_pp == pytest.approx(10.0)
    assert rule.cost_fraction == pytest.approx(1.605) and "val_loss after 5 ep" in rule.chosen_rule
    del results[Job("student", regime, "trivialaugment", 0).key()]
    assert calibrated_search(regime, results) is None


def test_strong_margin_applies_the_issue_bar():
    top1 = np.array([[0.80, 0.81, 0.80, 0.81], [0.83, 0.82, 0.83, 0.82], [0.90, 0.90, 0.90, 0.90]])
    result = strong_margin(["none", "trivialaugment", "random_erasing(p=0.5)"], top1)
    assert result["candidate"] == "trivialaugment" and result["margin_pp"] == pytest.approx(2.0)
    assert result["beats_none"]  # 2 pp >= 1 pp and >= 2 x pooled sd (about 1.2 pp); random erasing does not count


def test_planted_nuisance_is_seeded_and_keeps_labels():
    images = torch.zeros(4, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 7:9] = 255  # a vertical bar: any rotation or shift moves it
    dataset = TensorImageDataset(images, torch.arange(4), 4)
    nuisance = Nuisance(max_degrees=30.0, max_shift=2)
    first, again = apply_nuisance(dataset, nuisance, seed=1), apply_nuisance(dataset, nuisance, seed=1)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, dataset.labels)
    assert first.images.shape == dataset.images.shape and not torch.equal(first.images, dataset.images)


def test_unknown_regime_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        build_regime("no-such-regime")


@pytest.mark.slow
def test_quick_benchmark_writes_its_outputs_whatever_the_gate_and_resumes_exactly(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    regime_config = build_regime("quick-digits")
    report = json.loads((out / "results.json").read_text())
    regime = report["regimes"][0]
    assert regime["complete"] and regime["seeds"] == list(regime_config.seeds)
    # every output is written, whether or not the gate passes, and the verdict is stated
    for name in ("results.md", "summary.md", f"scatter-{regime['regime']}.png", "cost-regret.png"):
        assert (out / name).stat().st_size > 0
    verdict = "passes" if regime["gate"]["passes"] else "fails (seed noise)"
    assert verdict in (out / "summary.md").read_text()
    # the ground truth is the cached runs' numbers, and the gate is recomputed from it
    cache = json.loads((work / "results.json").read_text())
    top1 = np.array(regime["top1_pct"]) / 100
    assert top1.shape == (len(regime["candidates"]), len(regime["seeds"]))
    full_epochs = f"|{regime_config.recipe.epochs}ep"
    fulls = sorted(r["test_top1"] for k, r in cache.items() if "|student|" in k and k.endswith(full_epochs))
    assert sorted(top1.ravel().tolist()) == pytest.approx(fulls)
    gate = noise_gate(top1)
    assert regime["gate"]["split_half_rho"] == pytest.approx(gate.split_half_rho)
    assert regime["gate"]["passes"] == (gate.split_half_rho >= 0.8)
    # each ranking rule's Spearman and regret follow from its values and the ground truth of every seed but the
    # curve seed (the first), whose runs the student rules read
    assert regime["judged_seeds"] == regime["seeds"][1:]
    truth = top1[:, 1:].mean(1)
    rules = {rule["rule"]: rule for rule in regime["rules"]}
    for name in (
        "teacher score_ce (sample_ce - cmi)",
        "T-stddev",
        "student score_ce (sample_ce - cmi) after 25 % training",
        "student val accuracy after 50 % training",
        CALIBRATED_RULE,
    ):
        rule = rules[name]
        good = np.array(rule["values"]) * (1 if rule["mode"] == "max" else -1)
        expected = scipy.stats.spearmanr(good, truth).statistic if np.ptp(good) and np.ptp(truth) else 0.0
        assert rule["rho"] == pytest.approx(expected)
        tiebreak = None if rule["tiebreak"] is None else np.array(rule["tiebreak"])
        picked = regime["candidates"][pick(good, tiebreak)]
        assert rule["pick"] == picked
        assert rule["regret_pp"] == pytest.approx(100 * (truth.max() - truth[regime["candidates"].index(picked)]))
    # judged again from results.json alone (no cache), every rule comes out the same (to float rounding: the
    # accuracies went through percent)
    for again, first in zip(rejudge(regime)["rules"], regime["rules"], strict=True):
        assert again.keys() == first.keys()
        for key, value in first.items():
            numbers = isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float))
            assert again[key] == (pytest.approx(value, nan_ok=True) if numbers else value), (first["rule"], key)
    shipped = [r for r in regime["rules"] if "(former default)" in r["rule"]]
    assert len(shipped) == 1 and shipped[0]["pick"] in regime["candidates"]
    assert rules["1-seed full sweep (leave-one-out)"]["cost_fraction"] == 1.0
    assert regime["scoring_costs"]["max_abs_diff_one_vs_two_pass"] < 1e-9
    assert report["cross_regime"]["passing_regimes"] == ([regime["regime"]] if regime["gate"]["passes"] else [])
    # a second run finds every job cached: nothing is re-run (the cache is byte-identical)
    cached = (work / "results.json").read_text()
    assert main(["--quick", "--out", str(out), "--work", str(work), "--jobs", "1"]) == 0
    assert (work / "results.json").read_text() == cached


def test_trial_training_resumed_from_its_state_matches_an_uninterrupted_run():
    from daq_search.candidates import parse_candidate
    from daq_search.config import KDConfig, QuantConfig, RecipeConfig, ScorerConfig, StudentConfig
    from daq_search.data import DataSpec, load_data
    from daq_search.models import create_for
    from daq_search.search import scoring_subset
    from daq_search.trial_training import TrialTraining

    bundle = load_data(DataSpec(name="digits", image_size=16, train_per_class=8, val_per_class=3))
    torch.manual_seed(0)
    teacher = create_for("tiny_cnn", 0.5, bundle).eval()

    def training() -> TrialTraining:
        return TrialTraining(
            teacher=teacher,
            bundle=bundle,
            candidate=parse_candidate("trivialaugment+cutmix(alpha=1.0)"),
            student=StudentConfig(model="tiny_cnn", width=0.5, init="scratch"),
            quant=QuantConfig(wbits=2, abits=2),
            kd=KDConfig(),
            recipe=RecipeConfig(epochs=2, batch_size=16, lr=5e-3),
            scorer=ScorerConfig(subset=20, batch_size=10),
            scoring_set=scoring_subset(bundle, 20, 0),
            student_seed=3,
            seed=4,
            score_seed=0,
        )

    straight = training()
    straight.train_epoch(1)
    straight.train_epoch(2)
    first = training()
    first.train_epoch(1)
    resumed = training()
    resumed.load_state_dict(first.state_dict())
    resumed.train_epoch(2)
    expected, got = straight.read_metrics(), resumed.read_metrics()
    for name in ("score", "score_ce", "cmi", "align", "sample_ce", "val_acc", "val_loss"):
        assert got[name] == expected[name], name


def test_shipped_search_summary_regret_and_cost_from_hand_values():
    from bench.regimes import build_regime
    from bench.shipped import BASELINE, summarise

    regime = build_regime("scenes32-10pc-ladder-320ep")
    run = {"distinct_trained": 8, "branch_test_top1": 0.66, "trial_seconds": 1.0, "search_wall_s": 2.0}
    searches = [  # winner_val: the winning branch's own validation reading in its search
        {**run, "searcher_seed": 0, "pick": "x", "winner_val": 0.70},
        {**run, "searcher_seed": 1, "pick": "b", "distinct_trained": 4, "winner_val": 0.65},
        {**run, "searcher_seed": 2, "pick": "none", "winner_val": 0.10},
    ]
    delivered = {  # per ground-truth seed: the pick continuing the trunk, and the baseline alone
        "x": [{"test": 69.0, "val": 70.0}, {"test": 71.0, "val": 70.0}],
        "b": [{"test": 72.0, "val": 60.0}, {"test": 72.0, "val": 75.0}],
        "none": [{"test": 50.0, "val": 10.0}, {"test": 52.0, "val": 10.0}],
        BASELINE: [{"test": 74.0, "val": 70.0}, {"test": 60.0, "val": 71.0}],
    }
    summary = summarise(regime, searches, {"x": [70.0, 72.0]}, {"none": 60.0, "b": 65.0}, delivered)
    assert summary["picks"] == ["x", "b", "none"] and summary["best"] == "x" and summary["best_pct"] == 71.0
    assert summary["regret_pp"] == [0.0, 6.0, 11.0] and summary["none_pct"] == 60.0
    assert summary["cost"] == [8 * 96 / (8 * 320), 4 * 96 / (8 * 320), 0.3]  # shares of the 8-candidate sweep
    assert summary["branch_test_pct"] == [66.0, 66.0, 66.0] and summary["num_samples"] == 8
    assert summary["delivered_pct"] == [70.0, 72.0, 51.0]
    # the baseline's validation against the search's reading: x (0.70) ties on seed 0 (keeps x, 69) and loses to
    # 0.71 on seed 1 (ships the baseline, 60); b's 0.65 loses on both seeds (74, 60), although b's own delivered
    # runs read 0.75 on seed 1; the pick none continues the trunk, so its baseline (none from scratch) still trains,
    # and its 0.10 loses on both seeds (74, 60)
    assert summary["baseline_shipped"] == [1, 2, 2]
    assert summary["shipped_pct"] == [64.5, 67.0, 67.0]
    # against the best of alone (x, 71), delivered (b, 72) and shipped (67)
    assert summary["delivered_regret_pp"] == [2.0, 0.0, 21.0]
    assert summary["shipped_regret_pp"] == [7.5, 5.0, 5.0]
    assert summary["baseline_alone_pct"] == 67.0


def test_delivered_pick_continues_the_trunk_so_the_trunks_own_candidate_equals_training_alone(tmp_path):
    from bench.runs import run_student, run_teacher
    from bench.shipped import BASELINE, _delivered_key, _run_delivered, shipped_job

    regime = build_regime("quick-digits")
    trunk = shipped_job(regime, 0).branch.trunk
    run_teacher(Job("teacher", regime), tmp_path, "cpu")
    threads = torch.get_num_threads()
    try:
        delivered = _run_delivered((regime.name, 1, ["none", trunk, BASELINE], str(tmp_path), trunk))  # its own 2nd
        alone = run_student(Job("student", regime, trunk, 1), tmp_path, "cpu")
        none_alone = run_student(Job("student", regime, "none", 1), tmp_path, "cpu")
    finally:
        torch.set_num_threads(threads)
    keys = [_delivered_key(regime, name, 1) for name in (trunk, "none", BASELINE)]
    assert set(delivered) == set(keys) and len(set(keys)) == 3
    # the trunk continued under its own candidate is the same training as that candidate alone, batch for batch
    assert delivered[keys[0]]["test"] == 100 * alone["test_top1"]
    # the baseline is `none` trained alone from scratch, not continuing the trunk
    assert delivered[keys[2]]["test"] == 100 * none_alone["test_top1"]


def test_the_benchmark_keeps_the_shipped_search_of_a_regime_whose_config_is_unchanged(tmp_path):
    from bench.run import with_shipped_search

    previous = tmp_path / "results.json"
    shipped = {"picks": ["x"], "regret_pp": [0.5]}
    trunks = {"u": {"picks": ["y"], "regret_pp": [1.5]}}
    same = {"config": {"epochs": 80}, "seeds": [0, 1], "candidates": ["none", "x"]}
    old = [
        {"regime": "a", **same, "shipped_search": shipped, "shipped_search_trunks": trunks},
        {"regime": "b", **same, "config": {"epochs": 40}, "shipped_search": shipped},
        {"regime": "c", **same},
        {"regime": "d", **same, "shipped_search": shipped},
    ]
    previous.write_text(json.dumps({"regimes": old}))
    new = [
        {"regime": "a", **same},
        {"regime": "b", **same, "config": {"epochs": 60}},
        {"regime": "c", **same},
        {"regime": "d", **same, "seeds": [0, 1, 2]},
    ]
    kept = with_shipped_search(new, previous)
    assert kept[0] == {"regime": "a", **same, "shipped_search": shipped, "shipped_search_trunks": trunks}
    # b's config and d's seeds changed; c had none
    assert not any("shipped_search" in summary for summary in kept[1:])
    assert with_shipped_search(new, tmp_path / "absent.json") == new


def test_shipped_table_rows_and_worst_regrets_from_hand_values():
    from bench.shipped import shipped_lines

    record = {
        "ground_truth_seeds": [8, 9],
        "searcher_seeds": [0, 1],
        "picks": ["x", "none"],
        "pick_true_pct": [70.0, 60.0],
        "regret_pp": [1.0, 11.0],
        "delivered_pct": [71.0, 62.0],
        "delivered_regret_pp": [0.5, 9.5],
        "shipped_pct": [71.5, 62.0],
        "shipped_regret_pp": [0.0, 9.5],
        "baseline_shipped": [1, 0],
        "cost": [0.3, 0.15],
        "trial_seconds": [50.0, 75.0],
        "trunk": "t",
    }
    other = {**record, "regret_pp": [12.0, 0.0], "delivered_regret_pp": [0.0, 0.0], "shipped_regret_pp": [0.0, 0.0]}
    another_trunk = {**record, "trunk": "u", "shipped_regret_pp": [3.0, 4.0]}
    hedged = {
        **record,
        "finalist_candidates": [["x", "y"], ["none", "z"]],
        "shipped_runs": [["y", "baseline"], ["z", "z"]],
        "shipped_regret_pp": [2.0, 5.0],
    }
    timed = {"sweep_wall_seconds": 100.0, "candidates": ["p", "q", "r", "s"]}  # 25 s per candidate
    lines = shipped_lines(
        [
            {"regime": "a", "shipped_search": record, **timed},
            {"regime": "b", "shipped_search_trunks": {"u": another_trunk}, "shipped_search_finalists": hedged, **timed},
            {"regime": "c", "shipped_search": other, "candidates": ["p"]},
        ]
    )
    rows = [line for line in lines if line.startswith("| a |")]
    # branching's time: its trials' seconds less one candidate's full training, over the sweep: (50 - 25) / 100
    assert rows == [
        "| a | t | 0 | x | 70.00 (1.00) | 71.00 (0.50) | 71.50 (0.00) | 1 of 2 | 0.30 / 0.25 |",
        "| a | t | 1 | none | 60.00 (11.00) | 62.00 (9.50) | 62.00 (9.50) | 0 of 2 | 0.15 / 0.50 |",
    ]
    assert [line for line in lines if line.startswith("| c | t | 0 |")][0].endswith("| 0.30 / n/a |")
    # the default's measurement (finalists) comes first, then branching's table (a, c) with its worst regrets, then
    # b's other trunk in a section of its own
    finalists_section = lines.index("## Finalists (the default; `--finalists 2`, `shipped_search_finalists`)")
    branching_section = lines.index("## Late-phase branching (the former default; `shipped_search`)")
    other_section = lines.index("## Late-phase branching from other trunks (`--trunk`, `shipped_search_trunks`)")
    assert finalists_section < branching_section < other_section
    assert [line for line in lines[finalists_section:branching_section] if line.startswith("| b |")] == [
        "| b | 0 | x, y | 70.00 (1.00) | 71.50 (2.00) | y, baseline | 0.30 / 0.75 |",  # (50 + 1 x 25) / 100
        "| b | 1 | none, z | 60.00 (11.00) | 62.00 (5.00) | z x2 | 0.15 / 1.00 |",
    ]
    assert "Worst regret over the 1 regime measured: winner alone 11.00 pp, shipped 5.00 pp." in lines
    default_worst = "Worst regret over the 2 regimes measured: alone 12.00 pp, delivered 9.50 pp, shipped 9.50 pp."
    assert branching_section < lines.index(default_worst) < other_section
    assert not any(line.startswith("| b |") for line in lines[branching_section:other_section])
    assert [line for line in lines[other_section:] if line.startswith("| b | u | 1 |")] == [
        "| b | u | 1 | none | 60.00 (11.00) | 62.00 (9.50) | 62.00 (4.00) | 0 of 2 | 0.15 / 0.50 |"
    ]
    assert "Worst regret over the 1 regime measured: alone 11.00 pp, delivered 9.50 pp, shipped 4.00 pp." in lines


def test_the_method_is_chosen_on_the_other_regimes_and_judged_on_the_held_out_one():
    from bench.shipped import _out_of_sample_lines, leave_one_regime_out

    def regime(name: str, finalists: list[float], strength: list[float], branching: list[float]) -> dict:
        keys = ("shipped_search_finalists", "shipped_search_strength", "shipped_search")
        methods = (finalists, strength, branching)
        return {"regime": name, **{key: {"shipped_regret_pp": r} for key, r in zip(keys, methods, strict=True)}}

    regimes = [
        regime("a", [0.0, 3.0], [1.0, 1.0], [0.0, 0.5]),
        regime("b", [1.0, 1.0], [2.0, 0.0], [4.0, 0.0]),
        regime("c", [2.0, 0.0], [2.0, 2.0], [0.0, 0.0]),
        {"regime": "d", "shipped_search_finalists": {"shipped_regret_pp": [9.0]}},  # not every method: left out
    ]
    folds = leave_one_regime_out(regimes)
    # held out a: on b and c finalists 2.0 / 1.0, strength 2.0 / 1.5, branching 4.0 / 1.0 -> finalists (lower mean)
    # held out b: finalists 3.0, strength 2.0, branching 0.5 -> branching
    # held out c: finalists 3.0 / 1.25, strength 2.0 / 1.0, branching 4.0 -> strength
    assert [(f["held_out"], f["method"], f["held_out_regret_pp"]) for f in folds] == [
        ("a", "finalists", [0.0, 3.0]),
        ("b", "late-phase branching", [4.0, 0.0]),
        ("c", "finalists by strength", [2.0, 2.0]),
    ]
    assert (folds[0]["in_sample_worst_pp"], folds[0]["in_sample_mean_pp"]) == (2.0, 1.0)
    tie = [regime("a", [1.0], [1.0], [1.0]), regime("b", [2.0], [2.0], [2.0])]
    assert [f["method"] for f in leave_one_regime_out(tie)] == ["finalists", "finalists"]  # the declared order
    assert leave_one_regime_out(regimes[:1]) == []
    lines = _out_of_sample_lines(regimes)
    assert "| a | finalists | 2.00 / 1.00 | 0.00, 3.00 |" in lines
    assert "Out of sample: worst 4.00 pp, mean 1.83 pp over the 6 searches of the 3 held-out regimes." in lines


def test_a_cached_search_of_another_trunk_is_not_read_as_the_defaults(tmp_path):
    from bench.shipped import _check_cached_job, shipped_job
    from daq_search.config import job_to_yaml

    regime = build_regime("quick-digits")
    default, other = shipped_job(regime, 0), shipped_job(regime, 0, "trivialaugment")
    assert default.name != other.name and other.branch.trunk == "trivialaugment"
    (tmp_path / "job.yaml").write_text(
        job_to_yaml(default.model_copy(update={"search_space": "/elsewhere/default.yaml"}))
    )
    _check_cached_job(tmp_path, default)  # the same job, its space resolved in another checkout
    with pytest.raises(RuntimeError, match="another job \\(branch differ\\)"):
        _check_cached_job(tmp_path, other)


def test_every_search_of_a_regime_is_judged_against_the_best_any_of_its_records_found(tmp_path):
    import gzip

    from bench.shipped import BASELINE, _recorded_elsewhere, summarise

    regime = build_regime("scenes32-10pc-ladder-320ep")
    current = {"regime_key": regime.key(), "ground_truth_seeds": list(regime.seeds)}

    def record(name: str, alone: dict, delivered: dict, searches=(), identity=current) -> None:
        with gzip.open(tmp_path / f"{name}.json.gz", "wt") as handle:
            fields = {"searches": list(searches), "ground_truth_pct": alone, "delivered_pct": delivered}
            json.dump({**identity, **fields}, handle)

    runs = [{"test": 70.0, "val": 60.0}, {"test": 74.0, "val": 60.0}]
    baseline = [{"test": 99.0, "val": 70.0}, {"test": 1.0, "val": 50.0}]
    record(regime.name, {"own": [1.0, 1.0]}, {"own": runs})  # this search's own record: not "elsewhere"
    other = f"{regime.name}--trunk-abc123"
    record(other, {"y": [80.0, 82.0]}, {"y": runs, BASELINE: baseline}, [{"pick": "y", "winner_val": 0.65}])
    record(f"{regime.name}--trunk-old", {"z": [99.0, 99.0]}, {}, identity={**current, "regime_key": "old"})
    record(f"{regime.name}x", {"z": [99.0, 99.0]}, {})  # another regime whose name starts with this one's
    alone, finished = _recorded_elsewhere(tmp_path, regime, regime.name)
    # y delivered: (70 + 74) / 2; y's search shipped the baseline on seed 0 (0.70 > 0.65), y on seed 1: (99 + 74) / 2
    assert alone == {"y": [80.0, 82.0]} and finished == [72.0, 86.5]

    search = {"searcher_seed": 0, "pick": "x", "winner_val": 0.99, "distinct_trained": 8, "branch_test_top1": None}
    own = {"x": [{"test": 60.0, "val": 50.0}] * 2, BASELINE: [{"test": 50.0, "val": 40.0}] * 2}
    summary = summarise(regime, [{**search, "trial_seconds": 1.0, "search_wall_s": 1.0}], {"x": [70.0, 70.0]},
                        {"none": 50.0}, own, elsewhere=(alone, finished))  # fmt: skip
    assert summary["best"] == "y" and summary["regret_pp"] == [11.0]  # 81 - 70
    assert summary["delivered_regret_pp"] == [26.5] and summary["shipped_regret_pp"] == [26.5]  # 86.5 - 60


def test_finalists_summary_ships_the_best_validation_per_seed_with_regret_and_cost_from_hand_values(tmp_path):
    import gzip

    from bench.shipped import (
        BASELINE,
        _alone_key,
        _delivered_key,
        _recorded_elsewhere,
        shipped_job,
        summarise_finalists,
    )

    regime = build_regime("scenes32-10pc-ladder-320ep")
    job = shipped_job(regime, 0, finalists=2)
    assert job.branch is None and job.trial.epochs == 32 and job.final.finalists == 2
    assert _alone_key(regime, "none", 1) == _delivered_key(regime, BASELINE, 1)  # the baseline's runs are shared
    run = {"trial_seconds": 1.0}
    searches = [
        {**run, "searcher_seed": 0, "pick": "x", "finalists": ["x", "y"], "trial_epochs": 8 * 32},
        {**run, "searcher_seed": 1, "pick": "y", "finalists": ["y", "z"], "trial_epochs": 6 * 32},
    ]
    alone = {  # per ground-truth seed, each trained alone from scratch, read on the job's validation pool
        "x": [{"test": 70.0, "val": 60.0}, {"test": 72.0, "val": 70.0}],
        "y": [{"test": 66.0, "val": 65.0}, {"test": 68.0, "val": 65.0}],
        "z": [{"test": 50.0, "val": 90.0}, {"test": 52.0, "val": 10.0}],
        "none": [{"test": 60.0, "val": 62.0}, {"test": 58.0, "val": 70.0}],
    }
    summary = summarise_finalists(regime, searches, alone, {"none": 59.0, "b": 71.5}, 2)
    # seed 0 of search 0: y reads 65 > none 62 > x 60; seed 1: x and none tie at 70, the earlier (x) ships
    # search 1: z reads 90 on seed 0, none 70 on seed 1
    assert summary["shipped_runs"] == [["y", "x"], ["z", BASELINE]] and summary["baseline_shipped"] == [0, 1]
    assert summary["shipped_pct"] == [69.0, 54.0] and summary["best_pct"] == 71.5  # b, from the ladder
    assert summary["pick_true_pct"] == [71.0, 67.0] and summary["regret_pp"] == [0.5, 4.5]
    assert summary["shipped_regret_pp"] == [2.5, 17.5]
    # the screen's trial epochs plus one more full training, over a sweep of the 8 ladder candidates
    assert summary["cost"] == [(256 + 320) / (8 * 320), (192 + 320) / (8 * 320)]
    with gzip.open(tmp_path / f"{regime.name}--finalists-2.json.gz", "wt") as handle:
        identity = {"regime_key": regime.key(), "ground_truth_seeds": list(regime.seeds)}
        json.dump({**identity, "searches": searches, "alone_pct": alone}, handle)
    elsewhere, finished = _recorded_elsewhere(tmp_path, regime, regime.name)  # a branching summary sees them
    assert elsewhere["x"] == [70.0, 72.0] and set(elsewhere) == set(alone) and finished == []


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")
def test_a_planted_regimes_shipped_job_validates_on_its_nuisance_images_as_a_folder(tmp_path, monkeypatch):
    import bench.shipped
    from bench.runs import student_bundle

    monkeypatch.setattr(bench.shipped, "PLANTED_VALIDATION", tmp_path)
    regime = build_regime("animals16-planted-affine-40ep")
    folder = bench.shipped.write_planted_validation(regime)
    job = bench.shipped.shipped_job(regime, 0)
    assert job.data.val_pool == str(folder) and folder.parent == tmp_path
    shipped, planted = job.load_data().val, student_bundle(regime).val
    assert len(shipped) == len(planted) == 100
    pairs = {(int(label), image.numpy().tobytes()) for image, label in zip(planted.images, planted.labels)}
    assert {(shipped[i][1], shipped[i][0].numpy().tobytes()) for i in range(len(shipped))} == pairs
    unplanted = student_bundle(dataclasses.replace(regime, planted=None)).val
    assert not pairs & {
        (int(label), image.numpy().tobytes()) for image, label in zip(unplanted.images, unplanted.labels)
    }


def test_golden_section_positions_follow_the_better_side_by_hand():
    from bench.strength import golden_positions

    # 8 positions: golden points 3 and 4 of [0, 7]; 4 is better, so [3, 7] and the reflection 3 + 7 - 4 = 6
    assert golden_positions([0, 1, 2, 3, 5, 4, 6, 2], 3) == [3, 4, 6]
    # 10 positions: points 3 and 6; 3 is better, so [0, 6]; its reflection 0 + 6 - 3 is 3 itself, trained:
    # the nearest untrained position, the milder of 2 and 4
    assert golden_positions([9, 8, 7, 8, 7, 6, 5, 4, 3, 2], 3) == [3, 6, 2]
    assert golden_positions([9, 8, 7, 8, 7, 6, 5, 4, 3, 2], 2) == [3, 6]
    # 3 positions: both golden points are 1, so the second moves to 2; 2 is better: [1, 2] has nothing left to train
    assert golden_positions([1, 2, 3], 3) == [1, 2]
    assert golden_positions([3, 2, 2], 3) == [1, 2, 0]  # a tie keeps the milder side: [0, 2], reflection 0 + 2 - 1
    assert golden_positions([5, 5], 9) == [0, 1]  # stops when nothing in the bracket is left to train


def test_strength_search_replay_picks_by_one_seed_and_is_judged_by_the_others():
    from bench.strength import replay

    candidates = ["none", "mild", "middle", "strong"]
    align = [0.0, 0.5, 0.3, 0.9]  # sorted: none, middle, mild, strong
    top1 = np.array([[60.0, 60.0], [70.0, 64.0], [65.0, 66.0], [50.0, 50.0]])  # rows as listed, a column per seed
    record = replay(candidates, align, top1, 2)
    # golden points of [0, 3]: positions 1 and 2, i.e. middle and mild; with none (the baseline) read too
    assert record["trained"] == [["middle", "mild"], ["middle", "mild"]]
    # seed 0 reads mild 70 best, judged on seed 1: best there is middle 66, so 2 pp; seed 1 picks middle (66),
    # judged on seed 0: best is mild 70, so 5 pp
    assert record["picks"] == ["mild", "middle"] and record["regret_pp"] == [2.0, 5.0]
    assert record["mean_regret_pp"] == 3.5 and record["worst_regret_pp"] == 5.0
    assert record["cost"] == [0.25, 0.25]  # one run beyond the final training, of 4 candidates


def test_rules_are_judged_without_the_curve_seed_whose_runs_they_read():
    from bench.analysis import judged_truth

    top1 = np.array([[0.9, 0.5, 0.5], [0.5, 0.6, 0.6]])  # a and b; seed 0 (the curve seed) flatters a
    assert np.array_equal(judged_truth([0, 1, 2], 0, top1), top1[:, 1:])
    assert np.array_equal(judged_truth([8, 9, 10], 9, top1), top1[:, [0, 2]])
    summary = {
        "regime": "quick-digits",
        "seeds": [0, 1, 2],
        "candidates": ["a", "b"],
        "sweep_seconds": 10.0,
        "top1_pct": (100 * top1).tolist(),
        "rules": [
            {"rule": "reads a", "mode": "max", "values": [1.0, 0.0], "seconds": 1.0, "pick": "a"},
            {"rule": "a replay (replayed)", "mode": "max", "values": [], "seconds": 5.0, "pick": "b"},
            {"rule": "1-seed full sweep (leave-one-out)", "mode": "max", "values": [90.0, 50.0], "seconds": 10.0},
            {"rule": "random pick (expected)", "mode": "max", "values": [], "seconds": 0.0, "pick": "(any)"},
        ],
    }
    judged = rejudge(summary)
    regrets = {rule["rule"]: rule["regret_pp"] for rule in judged["rules"]}
    # on seeds 1 and 2: a 50 %, b 60 % (with seed 0 a would lead, 63.3 against 56.7, and "reads a" lose nothing)
    assert regrets["reads a"] == pytest.approx(10.0) and regrets["a replay (replayed)"] == 0.0
    assert regrets["random pick (expected)"] == pytest.approx(5.0)  # 60 - (50 + 60) / 2
    # the sweep stays leave one seed out over all 3: seed 0 picks a, 10 below b on the rest; seeds 1 and 2 pick b,
    # and on the rest a leads, (90 + 50) / 2 = 70 against (50 + 60) / 2 = 55: 15 each; mean (10 + 15 + 15) / 3
    assert regrets["1-seed full sweep (leave-one-out)"] == pytest.approx(40 / 3)
    assert judged["judged_seeds"] == [1, 2] and judged["rules"][0]["cost_fraction"] == 0.1
