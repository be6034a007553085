"""The benchmark: its rank statistics against hand-computed values, and a CI-sized end-to-end run of --quick."""

import json

import numpy as np
import pytest

from bench.run import main
from bench.stats import agreement, balanced_splits, kendall, noise_gate, one_seed_sweep, random_pick_regret, spearman


def test_spearman_and_kendall_match_hand_computed_values():
    # ranks (1,2,3,4) vs (1,3,2,4): d^2 = 0+1+1+0 = 2, rho = 1 - 6*2/(4*15) = 0.8
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(0.8)
    # 6 pairs, 1 discordant: tau = (5 - 1) / 6
    assert kendall(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(4 / 6)
    # ties share average ranks: a = (1, 1, 2) -> ranks (1.5, 1.5, 3)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    )
    assert spearman(np.array([1, 1, 1]), np.array([1, 2, 3])) == 0.0


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


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end_and_resumes(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    report = json.loads((out / "results.json").read_text())
    regime = report["regimes"][0]
    assert regime["complete"]
    top1 = np.array(regime["top1_pct"])
    assert top1.shape == (len(regime["candidates"]), len(regime["seeds"]))
    assert ((top1 >= 0) & (top1 <= 100)).all()
    rules = {rule["rule"]: rule for rule in regime["rules"]}
    for name in (
        "teacher score (align - cmi)",
        "T-stddev",
        "student val accuracy",
        "1-seed full sweep (leave-one-out)",
    ):
        assert -1.0 <= rules[name]["rho"] <= 1.0
        assert rules[name]["regret_pp"] >= 0.0
    assert rules["1-seed full sweep (leave-one-out)"]["cost_fraction"] == 1.0
    costs = regime["scoring_costs"]
    assert costs["max_abs_diff_one_vs_two_pass"] < 1e-9
    for name in ("results.md", f"scatter-{regime['regime']}.png", "cost-regret.png"):
        assert (out / name).stat().st_size > 0
    cached = (work / "results.json").read_text()
    assert main(["--quick", "--out", str(out), "--work", str(work), "--workers", "1"]) == 0
    assert (work / "results.json").read_text() == cached
