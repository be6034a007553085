"""bench.loop_ratio: the ratio rules on hand-computed epoch times, and measured ratios merged into results.json
without losing its other keys."""

import json
import statistics

import pytest

from bench import loop_ratio


def test_record_merges_the_cached_measurement_into_results(tmp_path):
    measured = {"trial_loop_ratio": 0.97, "plain_epoch_s": [2.0, 1.0, 1.0], "tune_epoch_s": [3.0, 1.03, 1.03]}
    (tmp_path / loop_ratio.CACHE_FILE).write_text(json.dumps(measured))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"quick": True, "regimes": [{"regime": "r"}]}))
    assert loop_ratio.record(results, tmp_path, log=lambda _: None) == 0.97
    merged = json.loads(results.read_text())
    assert merged["quick"] is True and merged["regimes"] == [{"regime": "r"}]
    assert merged["trial_loop_ratio"] == 0.97 and merged["trial_loop"] == measured
    assert sorted(p.name for p in tmp_path.iterdir()) == [loop_ratio.CACHE_FILE, "results.json"]


def test_each_tune_run_is_compared_with_the_plain_runs_on_either_side_without_epoch_1():
    plain = [[9.0, 1.0, 2.0, 1.5], [8.0, 1.2, 1.4, 3.0], [7.0, 1.0, 1.0, 1.0]]
    tuned = [[20.0, 2.0, 1.6, 1.8], [30.0, 1.0, 1.1, 0.9]]
    # run 1: median(1.0, 2.0, 1.5, 1.2, 1.4, 3.0) = 1.45 over median(2.0, 1.6, 1.8) = 1.8
    # run 2: median(1.2, 1.4, 3.0, 1.0, 1.0, 1.0) = 1.1 over median(1.0, 1.1, 0.9) = 1.0
    assert loop_ratio.round_ratios(plain, tuned) == pytest.approx([1.45 / 1.8, 1.1 / 1.0])


def test_final_rounds_compare_mean_epoch_seconds_so_rare_slow_epochs_count():
    plain = [[9.0, 1.0, 1.0, 1.0], [8.0, 1.0, 1.0, 1.0], [7.0, 2.0, 2.0, 2.0]]
    ray_train = [[30.0, 1.0, 1.0, 4.0], [20.0, 1.5, 1.5, 1.5]]
    # run 1: mean(1, 1, 1, 1, 1, 1) = 1.0 over mean(1, 1, 4) = 2.0 (the median, 1.0, would hide the slow epoch)
    # run 2: mean(1, 1, 1, 2, 2, 2) = 1.5 over mean(1.5, 1.5, 1.5) = 1.5
    assert loop_ratio.round_ratios(plain, ray_train, statistics.fmean) == pytest.approx([0.5, 1.0])


def test_record_final_merges_the_cached_measurement_next_to_the_trial_ratio(tmp_path):
    measured = {"final_loop_ratio": 0.85, "plain_epoch_s": [[1.0, 0.3]], "ray_train_epoch_s": [[2.0, 0.35]]}
    (tmp_path / loop_ratio.FINAL_CACHE_FILE).write_text(json.dumps(measured))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"trial_loop_ratio": 0.97, "regimes": []}))
    assert loop_ratio.record_final(results, tmp_path, log=lambda _: None) == 0.85
    merged = json.loads(results.read_text())
    assert merged == {"trial_loop_ratio": 0.97, "regimes": [], "final_loop_ratio": 0.85, "final_loop": measured}
