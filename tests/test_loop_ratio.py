"""bench.loop_ratio.record: a measured trial-loop ratio is merged into results.json without losing its other keys."""

import json

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


def test_the_ratio_is_plain_over_tune_median_epoch_time_without_epoch_1_of_either_plain_run(monkeypatch, tmp_path):
    monkeypatch.setattr(loop_ratio, "get_teacher", lambda *a, **k: (None, tmp_path / "t.pt"))
    plain_runs = iter([[9.0, 1.0, 2.0, 1.5], [8.0, 1.2, 1.4, 3.0]])
    monkeypatch.setattr(loop_ratio, "plain_loop", lambda *a: next(plain_runs))
    monkeypatch.setattr(loop_ratio, "tune_loop", lambda *a: [20.0, 2.0, 1.6, 1.8])
    result = loop_ratio.measure(tmp_path, epochs=4, log=lambda _: None)
    assert result["trial_loop_ratio"] == 1.45 / 1.8
