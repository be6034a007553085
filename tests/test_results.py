"""The results tables: rows and statuses, per-metric last/best, atomic Parquet files that survive a reload, ranking and
formatting. No Ray: the table is driven directly."""

import json
import math
from io import StringIO

import pandas as pd
import pyarrow.parquet as pq
import pytest

from daq_search.errors import DaqSearchError
from daq_search.metric import METRIC_MODES
from daq_search.results import (
    EPOCHS_FILE,
    EPOCHS_SCHEMA,
    REPORTED_METRICS,
    TRIALS_FILE,
    TRIALS_SCHEMA,
    TrialTable,
    best_trial,
    format_table,
    rank_column,
    rank_trials,
    read_epochs,
    read_trials,
    runner_up_note,
    sort_trials,
    trials_schema,
)

KNOBS = {"policy": "str", "mix": "str", "randaugment.num_ops": "int", "cutmix.alpha": "float"}


def metrics(score: float, val_acc: float, **extra) -> dict:
    values = {metric: 1.0 for metric in REPORTED_METRICS}
    values.update(score=score, val_acc=val_acc, **extra)
    return values


def make_table(run_dir, max_epochs: int = 3) -> TrialTable:
    return TrialTable(run_dir, max_epochs=max_epochs, knob_types=KNOBS, objective="score", mode="min")


def filled_run(run_dir) -> TrialTable:
    """a: 3 epochs, completed (best score 0.2 at epoch 2); b: pruned after 1 epoch with a better score 0.1;
    c: failed; d: still running after 2 epochs."""
    table = make_table(run_dir)
    table.start("a", "none", {"policy": "none", "mix": "none"})
    for epoch, score in enumerate([0.5, 0.2, 0.3], start=1):
        table.add_epoch("a", epoch, metrics(score, 0.5 + 0.1 * epoch), seconds=2.0 * epoch)
    table.end("a")
    table.start(
        "b",
        "randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)",
        {"policy": "randaugment", "randaugment.num_ops": 2, "mix": "cutmix", "cutmix.alpha": 1.0},
    )
    table.add_epoch("b", 1, metrics(0.1, 0.4), seconds=1.5)
    table.end("b")
    table.start("c", "none", {"policy": "none", "mix": "none"})
    table.end("c", "FloatingPointError: training loss became nan after 64 images")
    table.start("d", "none", {"policy": "none", "mix": "none"})
    table.add_epoch("d", 1, metrics(0.05, 0.9))
    table.add_epoch("d", 2, metrics(0.04, 0.9))
    table.write()
    return table


def test_reported_metrics_cover_every_search_metric_with_the_same_direction():
    for metric, mode in METRIC_MODES.items():
        assert REPORTED_METRICS[metric] == mode


def test_statuses_last_best_and_knobs(tmp_path):
    filled_run(tmp_path)
    df = read_trials(tmp_path).set_index("trial_id")
    assert df.loc["a", "status"] == "completed" and df.loc["a", "epochs"] == 3
    assert df.loc["a", "score_last"] == pytest.approx(0.3)
    assert df.loc["a", "score_best"] == pytest.approx(0.2)  # min direction
    assert df.loc["a", "val_acc_best"] == pytest.approx(0.8)  # max direction: epoch 3
    assert df.loc["a", "wall_s"] == pytest.approx(6.0)
    assert df.loc["b", "status"] == "pruned" and df.loc["b", "epochs"] == 1
    assert df.loc["b", "randaugment.num_ops"] == 2 and df.loc["b", "cutmix.alpha"] == 1.0
    assert pd.isna(df.loc["a", "randaugment.num_ops"]) and df.loc["a", "policy"] == "none"
    assert df.loc["c", "status"] == "failed" and df.loc["c", "epochs"] == 0
    assert df.loc["c", "error"].startswith("FloatingPointError")
    assert df.loc["c", "wall_s"] >= 0  # start to end, no result
    assert df.loc["d", "status"] == "running" and pd.isna(df.loc["d", "ended_at"])
    assert df.attrs == {"objective": "score", "mode": "min", "max_epochs": 3}


def test_files_have_the_explicit_schemas(tmp_path):
    filled_run(tmp_path)
    trials = pq.read_schema(tmp_path / TRIALS_FILE)
    assert trials.remove_metadata() == trials_schema(KNOBS).remove_metadata()
    assert trials.names[:2] == ["trial_id", "candidate"] and trials.names[2:6] == list(KNOBS)
    assert set(TRIALS_SCHEMA.names) < set(trials.names)
    assert pq.read_schema(tmp_path / EPOCHS_FILE).remove_metadata() == EPOCHS_SCHEMA
    epochs = read_epochs(tmp_path)
    expected = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("d", 1), ("d", 2)]
    assert list(zip(epochs["trial_id"], epochs["epoch"], strict=False)) == expected


def test_reload_keeps_rows_and_a_resumed_trial_continues(tmp_path):
    filled_run(tmp_path)
    again = make_table(tmp_path)
    again.load()
    assert set(again.trials) == {"a", "b", "c", "d"}
    first_start = again.trials["d"]["started_at"]
    again.start("d", "none", {"policy": "none", "mix": "none"})  # resumed from its epoch-1 checkpoint
    again.add_epoch("d", 2, metrics(0.03, 0.95))  # epoch 2 re-reported: replaces the old row
    again.add_epoch("d", 3, metrics(0.02, 0.96))
    again.end("d")
    again.write()
    df = read_trials(tmp_path).set_index("trial_id")
    assert df.loc["d", "status"] == "completed" and df.loc["d", "started_at"] == first_start
    assert df.loc["d", "score_best"] == pytest.approx(0.02)
    epochs = read_epochs(tmp_path)
    assert len(epochs[epochs["trial_id"] == "d"]) == 3
    assert epochs.query("trial_id == 'd' and epoch == 2")["score"].item() == pytest.approx(0.03)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left no temp file


def test_ranking_prefers_trials_that_got_further(tmp_path):
    df = filled_run(tmp_path).frame()
    # most epochs first (a: 3, d: 2, b: 1) although b and d have better scores; the failed c is left out
    assert list(rank_trials(df, "score", "min")["trial_id"]) == ["a", "d", "b"]
    assert best_trial(df, "score", "min")["trial_id"] == "a"  # winner: completed or pruned only
    only_pruned = df[df["trial_id"].isin(["b", "c"])]
    assert best_trial(only_pruned, "score", "min")["trial_id"] == "b"
    assert best_trial(df[df["trial_id"] == "c"], "score", "min") is None
    assert list(rank_trials(df, "val_acc", "max")["trial_id"]) == ["a", "d", "b"]


def test_trials_equally_far_are_ranked_by_their_last_epoch_not_their_best(tmp_path):
    table = make_table(tmp_path, max_epochs=2)
    for trial_id, scores in (("early", [0.1, 0.6]), ("late", [0.5, 0.3])):
        table.start(trial_id, "none", {"policy": "none", "mix": "none"})
        for epoch, score in enumerate(scores, start=1):
            table.add_epoch(trial_id, epoch, metrics(score, 0.5))
        table.end(trial_id)
    df = table.frame()
    assert df.set_index("trial_id").loc["early", "score_best"] == pytest.approx(0.1)  # the better best epoch
    assert list(rank_trials(df, "score", "min")["trial_id"]) == ["late", "early"]  # 0.3 < 0.6 at the last epoch
    assert rank_column("score") == "score_last"


def val_run(tmp_path, rows: list[tuple[str, str, float, float, float]]):
    """One-epoch completed trials ``(id, candidate, val_acc, val_acc_se, val_loss)`` ranked by ``val_acc``."""
    table = TrialTable(tmp_path, max_epochs=1, knob_types=KNOBS, objective="val_acc", mode="max")
    for trial_id, candidate, acc, se, loss in rows:
        table.start(trial_id, candidate, {})
        table.add_epoch(trial_id, 1, metrics(0.0, acc, val_acc_se=se, val_loss=loss))
        table.end(trial_id)
    return table.frame()


def test_a_tie_in_the_objective_goes_to_the_lower_val_loss_not_the_earlier_trial(tmp_path):
    df = val_run(tmp_path, [("a", "none", 0.6, 0.05, 0.9), ("b", "trivialaugment", 0.6, 0.05, 0.8)])
    assert list(rank_trials(df, "val_acc", "max")["trial_id"]) == ["b", "a"]
    assert list(rank_trials(df, "val_loss", "min")["trial_id"]) == ["b", "a"]  # no second key for its own column


@pytest.mark.parametrize(
    ("second_acc", "says"),
    [(0.52, True), (0.44, False)],  # SE of the difference hypot(0.03, 0.04) = 0.05: within 2 SE below a gap of 0.1
)
def test_the_runner_up_note_says_when_validation_cannot_tell_the_winner_apart(tmp_path, second_acc, says):
    rows = [("a", "none", 0.6, 0.03, 0.9), ("b", "none", 0.59, 0.03, 0.9), ("c", "trivialaugment", second_acc, 0.04, 1)]
    note = runner_up_note(val_run(tmp_path, rows), "val_acc", "max")
    if says:
        assert note == (
            "the winner is within two standard errors of the runner-up trivialaugment (0.6000 vs 0.5200, standard "
            "error of the difference 0.0500): the validation images cannot tell them apart"
        )
    else:
        assert note is None
    assert runner_up_note(val_run(tmp_path / "x", rows), "score", "min") is None


def test_a_file_written_before_the_added_columns_reads_with_nulls_there(tmp_path):
    filled_run(tmp_path)
    path = tmp_path / TRIALS_FILE
    old = pq.read_table(path)
    pq.write_table(old.drop_columns(["node", "attempts", "val_acc_se_last", "val_acc_se_best"]), path)
    epochs = pq.read_table(tmp_path / EPOCHS_FILE)
    pq.write_table(epochs.drop_columns(["val_acc_se"]), tmp_path / EPOCHS_FILE)
    trials = read_trials(tmp_path)
    assert len(trials) == 4 and trials["node"].isna().all() and trials["val_acc_se_last"].isna().all()
    assert read_epochs(tmp_path)["val_acc_se"].isna().all()
    table = make_table(tmp_path)
    table.load()  # a resumed search reads them too
    assert table.trials["a"]["attempts"] is None and table.trials["a"]["epochs"] == 3


def test_sorting(tmp_path):
    df = read_trials(filled_run(tmp_path).run_dir)
    assert list(sort_trials(df)["trial_id"]) == ["a", "d", "b", "c"]  # ranking, failed last
    assert list(sort_trials(df, "val_acc_best")["trial_id"])[:2] == ["d", "a"]  # max metric: descending
    assert list(sort_trials(df, "score_last")["trial_id"])[:2] == ["d", "b"]  # min metric: ascending
    with pytest.raises(DaqSearchError, match="--sort: unknown column 'nope'"):
        sort_trials(df, "nope")


def test_formats_parse_back(tmp_path):
    df = read_trials(filled_run(tmp_path).run_dir)
    back = pd.read_csv(StringIO(format_table(df, "csv")))
    assert list(back.columns) == list(df.columns) and list(back["trial_id"]) == list(df["trial_id"])
    assert back.set_index("trial_id").loc["a", "score_best"] == pytest.approx(0.2)
    records = json.loads(format_table(df, "json"))
    assert [r["status"] for r in records] == list(df["status"])
    assert records[2]["score_best"] is None  # the failed trial: null, not NaN
    markdown = format_table(df, "markdown").splitlines()
    assert markdown[0].startswith("| trial_id | candidate | status | epochs | score_last |")
    assert set(markdown[1]) <= {"|", "-"} and len(markdown) == 2 + len(df)
    table = format_table(df, "table").splitlines()
    assert table[0].split()[:4] == ["trial_id", "candidate", "status", "epochs"]
    assert "FloatingPointError:" in format_table(df, "table")
    with pytest.raises(DaqSearchError, match="--format: unknown format 'xml'"):
        format_table(df, "xml")


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(DaqSearchError, match="no trials.parquet"):
        read_trials(tmp_path)


def test_nan_metric_never_counts_as_best(tmp_path):
    table = make_table(tmp_path, max_epochs=2)
    table.start("x", "none", {})
    table.add_epoch("x", 1, metrics(0.4, 0.5))
    table.add_epoch("x", 2, metrics(math.nan, 0.5))
    row = table.trials["x"]
    assert row["score_best"] == pytest.approx(0.4) and math.isnan(row["score_last"])


@pytest.mark.parametrize("finalists_by", ["screen", "strength"])
def test_the_search_says_what_it_chose_and_why(tmp_path, finalists_by):
    from daq_search.cli import chosen_lines
    from daq_search.config import JobSpec

    rows = [("a", "none", 0.6, 0.03, 0.9), ("c", "trivialaugment", 0.52, 0.04, 1.0)]
    trials = val_run(tmp_path, rows)
    job = JobSpec.model_validate({"name": "j", "final": {"finalists_by": finalists_by}})
    screen_winner = job.model_copy(update={"candidate": "none", "finalists": ["trivialaugment"]})
    lines = chosen_lines(job, trials, screen_winner)
    if finalists_by == "screen":
        assert lines == [
            "chosen: none (val_acc 0.6 after 1 epochs, the best of 2 trials by the selection rule above)",
            "finalists: trivialaugment (the best of the other strength tiers; the final training trains them)",
            "note: " + runner_up_note(trials, "val_acc", "max"),
        ]
    else:  # the readings did not choose, so no note on how close they are; the winner's own reading is shown
        strength_winner = job.model_copy(update={"candidate": "trivialaugment", "finalists": []})
        assert chosen_lines(job, trials, strength_winner) == [
            "chosen: trivialaugment (val_acc 0.52 after 1 epochs, at a golden point of the strength order)"
        ]
        assert lines[1] == (
            "finalists: trivialaugment (the other golden points of the strength order; the final training trains them)"
        )
