"""The self-calibrating search: the choice of a rule on hand-made anchor tables (a rule that ranks the anchors right
beats one that ranks them wrong, ties go to the cheaper budget, indistinguishable anchors fall back to the job's
objective), the default anchors and budgets, the ``calibrate:`` section's validation, the evidence file and its
view, and (slow, real Ray) a search killed during calibration that resumes without re-running finished anchors."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from daq_search.calibrate import (
    Choice,
    Rule,
    budget_epochs,
    calibration_rules,
    calibration_table,
    choose_rule,
    default_anchors,
    kendall_tau_b,
    rule_agreements,
    strength_key,
)
from daq_search.candidates import parse_candidate
from daq_search.config import job_from_dict
from daq_search.errors import DaqSearchError
from daq_search.results import format_calibration, read_calibration, read_epochs, read_trials
from daq_search.spaces import load_search_space

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ["none", "trivialaugment", "trivialaugment+cutmix(alpha=1.0)"]
FINAL = [0.90, 0.80, 0.70]  # none best, the strongest worst


def table(rules: dict[tuple[str, int], list[float | None]], finals=FINAL, anchors=ANCHORS) -> pd.DataFrame:
    """One row per anchor and rule, from ``{(objective, budget): [value per anchor]}``."""
    rows = [
        {"anchor": a, "objective": o, "budget": b, "value": v, "final_acc": f}
        for (o, b), values in rules.items()
        for a, v, f in zip(anchors, values, finals, strict=True)
    ]
    return pd.DataFrame(rows)


DEFAULT = Rule("score_ce", 6)


# --- Kendall's tau-b, against hand-counted pairs -----------------------------------------------------------------


def test_kendall_tau_b_counts_pairs_and_ties():
    assert kendall_tau_b([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau_b([3, 2, 1], [10, 20, 30]) == -1.0
    # x ties one pair: 2 concordant, 0 discordant, sqrt((3 - 1) * (3 - 0))
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # 4 items: pairs (1,2) C, (1,3) C, (1,4) D, (2,3) C, (2,4) D, (3,4) D -> 0
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 0]) == 0.0
    assert kendall_tau_b([5, 5, 5], [1, 2, 3]) is None
    assert kendall_tau_b([1, 2, 3], [7, 7, 7]) is None


# --- the choice on hand-made anchor tables -----------------------------------------------------------------------


def test_a_rule_that_ranks_the_anchors_right_beats_one_that_ranks_them_wrong():
    # score_ce is lower-is-better: 1 < 2 < 3 predicts none > TA > TA+CutMix, as the final accuracy has it.
    # cmi is higher-is-better: the same numbers predict the reverse order.
    anchors = table({("cmi", 1): [1.0, 2.0, 3.0], ("score_ce", 3): [1.0, 2.0, 3.0]})
    choice, agreements = choose_rule(anchors, DEFAULT)
    assert choice == Choice("score_ce", 3, 1.0, None)
    assert list(agreements["agreement"]) == [-1.0, 1.0]


def test_the_sign_follows_each_metrics_direction():
    # val_acc is higher-is-better: 0.5 > 0.4 > 0.3 ranks right; val_loss lower-is-better, the same numbers rank wrong
    anchors = table({("val_loss", 1): [0.5, 0.4, 0.3], ("val_acc", 2): [0.5, 0.4, 0.3]})
    choice, _ = choose_rule(anchors, DEFAULT)
    assert (choice.objective, choice.budget, choice.agreement) == ("val_acc", 2, 1.0)


def test_ties_go_to_the_cheaper_budget_then_to_the_jobs_objective():
    perfect = [1.0, 2.0, 3.0]
    anchors = table({("score_ce", 3): perfect, ("sample_ce", 3): perfect, ("score_ce", 1): perfect})
    assert choose_rule(anchors, DEFAULT)[0] == Choice("score_ce", 1, 1.0)
    anchors = table({("sample_ce", 2): perfect, ("score_ce", 2): perfect})
    assert choose_rule(anchors, DEFAULT)[0].objective == "score_ce"  # the job's objective
    assert choose_rule(anchors, Rule("val_loss", 6))[0].objective == "sample_ce"  # else the first listed
    # a better agreement beats a cheaper budget
    anchors = table({("score_ce", 1): [1.0, 3.0, 2.0], ("score_ce", 3): perfect})
    assert choose_rule(anchors, DEFAULT)[0] == Choice("score_ce", 3, 1.0)


def test_a_rule_that_cannot_separate_the_anchors_loses_to_one_that_can():
    anchors = table({("teacher_score", 1): [0.5, 0.5, 0.5], ("score", 2): [1.0, 3.0, 2.0]})
    choice, agreements = choose_rule(anchors, DEFAULT)
    assert pd.isna(agreements["agreement"].iloc[0])
    assert (choice.objective, choice.budget) == ("score", 2)
    assert choice.agreement == pytest.approx(1 / 3)  # pairs: (none,TA) C, (none,TA+CM) C, (TA,TA+CM) D


def test_indistinguishable_anchors_fall_back_to_the_jobs_objective():
    anchors = table({("score_ce", 1): [1.0, 2.0, 3.0]}, finals=[0.8, 0.8, 0.8])
    choice, _ = choose_rule(anchors, DEFAULT)
    assert choice == Choice("score_ce", 6, None, "fewer than 2 anchors with distinct final accuracy (1 distinct of 3)")
    # two anchors failed their full run: one final accuracy is not a ranking
    anchors = table({("score_ce", 1): [1.0, 2.0, 3.0]}, finals=[0.8, None, None])
    assert choose_rule(anchors, DEFAULT)[0].fallback.startswith("fewer than 2 anchors")


def test_no_separating_rule_falls_back_to_the_jobs_objective():
    anchors = table({("teacher_cmi", 1): [2.0, 2.0, 2.0], ("score", 3): [None, 1.0, None]})
    assert choose_rule(anchors, DEFAULT)[0] == Choice("score_ce", 6, None, "no rule separates the anchors")


def test_a_failed_budget_run_leaves_its_anchor_out_of_that_rule():
    anchors = table({("score_ce", 1): [1.0, None, 3.0]})
    agreements = rule_agreements(anchors)
    assert list(agreements["agreement"]) == [1.0]  # none (0.90) vs TA+CutMix (0.70), ranked right


# --- the anchors and rules, from the job alone ---------------------------------------------------------------


def test_default_anchors_span_the_space_from_mild_to_strong():
    paper = load_search_space(ROOT / "search_spaces" / "paper.yaml")
    assert default_anchors(paper) == ["none", "trivialaugment", "trivialaugment+cutmix(alpha=1.0)"]
    default = load_search_space(ROOT / "search_spaces" / "default.yaml")
    picked = default_anchors(default)
    ordered = sorted(default.candidates(), key=strength_key)
    assert picked == [ordered[0].id, ordered[len(ordered) // 2].id, ordered[-1].id]
    assert picked[0] == "none" and picked[-1] == "trivialaugment+cutmix(alpha=1.0)"


def test_strength_orders_knobs_and_parts():
    mild, strong = parse_candidate("randaugment(magnitude=5,num_ops=2)"), parse_candidate("randaugment(magnitude=20)")
    assert strength_key(mild) < strength_key(strong)
    one_part, two_parts = parse_candidate("trivialaugment"), parse_candidate("random_erasing(p=0.1)+mixup(alpha=0.2)")
    assert strength_key(parse_candidate("none")) < strength_key(one_part) < strength_key(two_parts)
    assert strength_key(parse_candidate("none+cutmix(alpha=1.0)")) < strength_key(one_part)  # by policy first


def test_small_spaces_give_every_candidate_or_an_error(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({"name": "two", "candidates": ["trivialaugment", "none"]}))
    assert default_anchors(load_search_space(two)) == ["none", "trivialaugment"]
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({"name": "one", "candidates": ["none"]}))
    with pytest.raises(DaqSearchError, match="a ranking needs at least 2"):
        default_anchors(load_search_space(one))


def test_budgets_are_whole_epochs_of_the_full_budget():
    assert [budget_epochs(f, 5) for f in (0.1, 0.25, 0.5, 1.0)] == [1, 2, 3, 5]
    assert [budget_epochs(f, 30) for f in (0.1, 0.25, 0.5)] == [3, 8, 15]  # 0.1 * 30 is 3.0000000000000004


# --- the job section -----------------------------------------------------------------------------------------


def job(tmp_path, **changes):
    raw = {"name": "c", "search_space": str(ROOT / "search_spaces" / "paper.yaml"), **changes}
    return job_from_dict(raw, "job.yaml", tmp_path)


def test_calibration_is_off_unless_present_and_defaults_fill_in(tmp_path):
    assert job(tmp_path).calibrate is None
    spec = job(tmp_path, calibrate={}, final={"recipe": {"epochs": 4}})
    assert spec.calibrate.anchors is None and spec.calibrate.epochs is None
    rules = calibration_rules(spec)
    assert {r.budget for r in rules} == {1, 2}  # 10 % and 25 % of 4 -> 1, 50 % -> 2
    assert len(rules) == 2 * len({r.objective for r in rules}) and "score_ce" in {r.objective for r in rules}
    spec = job(tmp_path, calibrate={"epochs": 10, "rules": {"objectives": ["val_acc", "score"], "budgets": [0.3]}})
    assert calibration_rules(spec) == [Rule("val_acc", 3), Rule("score", 3)]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"anchor": ["none"]}, "calibrate.anchor: unknown key; allowed: anchors, epochs, rules"),
        ({"rules": {"budget": [0.1]}}, "calibrate.rules.budget: unknown key; allowed: objectives, budgets"),
        ({"anchors": ["none", "none"]}, "calibrate.anchors: a ranking needs at least 2 different anchors"),
        ({"anchors": ["none", "mixup"]}, "calibrate.anchors: .*not in space 'paper'"),
        ({"anchors": ["none", "blur"]}, "calibrate.anchors.1: candidate 'blur': unknown policy"),
        ({"epochs": 0}, "calibrate.epochs: Input should be greater than or equal to 1"),
        ({"rules": {"objectives": ["accuracy"]}}, "calibrate.rules.objectives: unknown metric 'accuracy'"),
        ({"rules": {"budgets": [0.5, 1.5]}}, r"calibrate.rules.budgets: each budget .*allowed: a non-empty list in"),
    ],
)
def test_bad_calibrate_sections_are_one_line_errors(tmp_path, section, message):
    with pytest.raises(DaqSearchError, match=f"^job.yaml: {message}"):
        job(tmp_path, calibrate=section)


# --- the evidence file and its view --------------------------------------------------------------------------


def test_calibration_file_has_a_row_per_anchor_and_rule_and_reads_back(tmp_path):
    values = table({("score_ce", 1): [1.0, 2.0, 3.0], ("cmi", 1): [1.0, 2.0, 3.0], ("t_stddev", 1): [1.0] * 3})
    choice, agreements = choose_rule(values, DEFAULT)
    import pyarrow.parquet as pq

    pq.write_table(calibration_table(values, agreements, choice), tmp_path / "calibration.parquet")
    back = read_calibration(tmp_path)
    assert len(back) == 9 and back.attrs["fallback"] == ""
    assert list(back.loc[back["chosen"], "anchor"]) == ANCHORS
    assert set(back.loc[back["chosen"], "rule"]) == {"score_ce@1"}
    assert back.loc[back["rule"] == "t_stddev@1", "agreement"].isna().all()
    assert list(back.loc[back["rule"] == "cmi@1", "final_acc"]) == FINAL
    text = format_calibration(back)
    lines = text.splitlines()
    assert "chose score_ce@1 (Kendall agreement +1.00)" in lines[0] and "none 0.9" in lines[0]
    assert lines[2].startswith("score_ce@1") and lines[2].split()[3] == "*"  # best first, marked
    assert lines[-2].startswith("t_stddev@1")  # no agreement: last
    assert read_calibration(tmp_path / "nothing") is None


def test_anchor_checkpoint_is_reused_only_for_its_own_budget(tmp_path):
    from daq_search.config import CalibrationRecord
    from daq_search.train import STATE_FILE, _anchor_checkpoint

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / STATE_FILE).write_bytes(b"x")
    record = CalibrationRecord(
        rule="score_ce",
        budget=1,
        anchors=["none", "trivialaugment"],
        anchor_epochs=5,
        checkpoints={"none": str(tmp_path / "a"), "trivialaugment": str(tmp_path / "gone")},
    )
    spec = job(tmp_path).model_copy(update={"calibration": record})
    assert _anchor_checkpoint(spec, "none", 5) == str(tmp_path / "a")
    assert _anchor_checkpoint(spec, "none", 6) is None  # another budget: train it
    assert _anchor_checkpoint(spec, "trivialaugment", 5) is None  # its folder is gone
    assert _anchor_checkpoint(spec, "augmix(severity=3)", 5) is None
    assert _anchor_checkpoint(job(tmp_path), "none", 5) is None


# --- a search killed during calibration resumes without re-running finished anchors (real Ray) ------------------


def write_calibrated_job(folder: Path) -> Path:
    spec = {
        "name": "calib",
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "recipe": {"epochs": 10, "batch_size": 50, "lr": 0.01}},
        "student": {"model": "tiny_cnn"},
        "search_space": str(ROOT / "search_spaces" / "paper.yaml"),
        "scorer": {"subset": 40, "batch_size": 40},
        "trial": {"epochs": 1, "batch_size": 50},
        "searcher": {"num_samples": 2},
        "scheduler": {"enabled": False},
        "max_concurrent_trials": 1,
        "storage": str(folder / "runs"),
        "final": {"recipe": {"epochs": 2, "batch_size": 50}},
        "calibrate": {
            "anchors": ["none", "trivialaugment+cutmix(alpha=1.0)"],
            "rules": {"objectives": ["score_ce", "val_acc"], "budgets": [0.5]},
        },
    }
    path = folder / "calib.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def calibration_cut(run_dir: Path) -> bool:
    """At least one calibration run completed and another is still to finish."""
    try:
        runs = read_trials(run_dir / "calibration")
    except Exception:  # not written yet
        return False
    return (runs["status"] == "completed").any() and (runs["status"] == "completed").sum() < 4


@pytest.mark.slow
def test_search_killed_during_calibration_keeps_finished_anchors(tmp_path):
    path = write_calibrated_job(tmp_path)
    run_dir = tmp_path / "runs" / "calib"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "daq_search", "search", str(path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not calibration_cut(run_dir):
                assert first.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "timed out waiting for a finished calibration run"
                time.sleep(0.2)
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()
        finally:
            if first.poll() is None:
                first.kill()
    assert not (run_dir / "calibration.parquet").exists() and not (run_dir / "winner.yaml").exists()
    before = read_trials(run_dir / "calibration").set_index("trial_id")
    done = before[before["status"] == "completed"]
    epochs_before = read_epochs(run_dir / "calibration")

    again = subprocess.run(
        [sys.executable, "-m", "daq_search", "search", str(path)], cwd=ROOT, capture_output=True, text=True, env=env
    )  # fmt: skip
    assert again.returncode == 2 and "a search already ran here; continue it with --resume" in again.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "daq_search", "search", str(path), "--resume"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = read_trials(run_dir / "calibration").set_index("trial_id")
    epochs_after = read_epochs(run_dir / "calibration")
    assert len(after) == 4 and set(after["status"]) == {"completed"}  # 2 anchors x (full run + 1-epoch run)
    assert sorted(after["budget"]) == [1, 1, 2, 2] and (after["epochs"] == after["budget"]).all()
    for trial_id, row in done.iterrows():  # finished runs were kept, not run again
        assert after.loc[trial_id, "ended_at"] == row["ended_at"]
        assert f"trial {trial_id} " not in resumed.stdout
        pd.testing.assert_frame_equal(
            epochs_before[epochs_before["trial_id"] == trial_id].reset_index(drop=True),
            epochs_after[epochs_after["trial_id"] == trial_id].reset_index(drop=True),
        )
    evidence = read_calibration(run_dir)
    assert len(evidence) == 4  # 2 anchors x 2 rules
    assert set(evidence["rule"]) == {"score_ce@1", "val_acc@1"}
    winner = yaml.safe_load((run_dir / "winner.yaml").read_text())
    record = winner["calibration"]
    assert record["anchors"] == ["none", "trivialaugment+cutmix(alpha=1.0)"] and record["anchor_epochs"] == 2
    assert (winner["objective"], winner["trial"]["epochs"]) == (record["rule"], record["budget"])
    assert winner["searcher"]["points_to_evaluate"][:2] == record["anchors"]
    assert set(record["checkpoints"]) == set(record["anchors"])
    # each anchor's full training is a checkpoint the final training accepts for that candidate
    from ray.train import Checkpoint

    from daq_search.train import _load_saved_state

    for anchor, folder in record["checkpoints"].items():
        state = _load_saved_state(Checkpoint.from_directory(folder), anchor, "final")
        assert state["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2]
    shown = subprocess.run(
        [sys.executable, "-m", "daq_search", "results", str(run_dir)], cwd=ROOT, capture_output=True, text=True, env=env
    )  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.startswith("calibration: anchors' final val_acc: none ")
    assert shown.stdout.index("score_ce@1") < shown.stdout.index("trial_id")
