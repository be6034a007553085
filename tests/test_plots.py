"""The plots of a run: which rows the selection panel draws and in what order, the metric it draws, the final
training's curves and title, and that every file written is a PNG. No Ray: the tables are written directly."""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from daq_search.errors import DaqSearchError
from daq_search.plots import (
    final_plot_path,
    final_run_label,
    final_title,
    plot_metric,
    plot_results,
    plot_run,
    selection_rows,
)
from daq_search.results import REPORTED_METRICS, TrialTable, read_trials

KNOBS = {"policy": "str", "mix": "str"}
CUTMIX = "none+cutmix(alpha=1.0)"


def assert_png(path, min_side: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side
        image.verify()


def hand_trials() -> pd.DataFrame:
    """Four candidates by val_acc at the last epoch (with its SE): trivialaugment 0.70 (twice: a repeat), cutmix
    0.60, none 0.50 and a failed trial that reported 0.90 before it failed."""
    return pd.DataFrame(
        {
            "trial_id": ["t1", "t2", "t3", "t4", "t5"],
            "candidate": ["none", "trivialaugment", CUTMIX, "trivialaugment", "autoaugment(policy=cifar10)"],
            "status": ["completed", "completed", "completed", "completed", "failed"],
            "epochs": [4, 4, 4, 4, 2],
            "val_acc_last": [0.50, 0.70, 0.60, 0.70, 0.90],
            "val_acc_se_last": [0.05, 0.046, 0.049, 0.046, 0.03],
            "score_last": [0.3, 0.1, 0.2, 0.1, 0.0],
        }
    )


def test_selection_rows_are_the_ranking_one_per_candidate_with_none_marked():
    rows = selection_rows(hand_trials(), "val_acc")
    assert list(rows["candidate"]) == ["trivialaugment", CUTMIX, "none"]  # higher first; failed t5 left out
    assert list(rows["trial_id"]) == ["t2", "t3", "t1"]  # the repeat t4 is drawn once, as its first trial
    assert rows["value"].tolist() == [0.70, 0.60, 0.50] and rows["se"].tolist() == [0.046, 0.049, 0.05]
    assert rows["is_none"].tolist() == [False, False, True]
    assert rows["label"].tolist() == ["trivialaugment", CUTMIX, "none (no augmentation)"]
    by_score = selection_rows(hand_trials(), "score")  # lower is better; no score_se_last column: no bars
    assert list(by_score["candidate"]) == ["trivialaugment", CUTMIX, "none"] and by_score["se"].isna().all()
    no_se = selection_rows(hand_trials().drop(columns="val_acc_se_last"), "val_acc")
    assert no_se["se"].isna().all()


def search_run(run_dir, objective: str = "val_acc") -> None:
    """Four candidates over 3 epochs, val_acc read only at epochs 2 and 3 (NaN at epoch 1)."""
    table = TrialTable(run_dir, max_epochs=3, knob_types=KNOBS, objective=objective, mode=REPORTED_METRICS[objective])
    finals = {"none": 0.5, "trivialaugment": 0.8, CUTMIX: 0.7, "random_erasing(p=0.5)": 0.6}
    for number, (candidate, final) in enumerate(finals.items()):
        trial_id = f"t{number}"
        table.start(trial_id, candidate, {"policy": candidate.split("+")[0], "mix": "none"})
        for epoch, acc in ((1, math.nan), (2, final - 0.1), (3, final)):
            metrics = {**dict.fromkeys(REPORTED_METRICS, 1.0), "val_acc": acc, "score_ce": 1.0 / epoch}
            table.add_epoch(trial_id, epoch, metrics)
        table.end(trial_id)
    table.write()


def drawn_figures(monkeypatch) -> list:
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    return figures


def test_plot_run_draws_the_ranking_and_the_top_three_curves(tmp_path, monkeypatch):
    search_run(tmp_path)
    figures = drawn_figures(monkeypatch)
    out = plot_run(tmp_path, tmp_path / "plots" / "run.png")
    assert_png(out)
    values, curves = figures[0].axes
    ticks = zip(values.get_yticks(), (label.get_text() for label in values.get_yticklabels()), strict=True)
    top_down = [label for _, label in sorted(ticks, reverse=True)]
    assert top_down == ["trivialaugment", CUTMIX, "random_erasing(p=0.5)", "none (no augmentation)"]  # winner on top
    none_points = [c for c in values.containers if c.get_label() == "none (no augmentation)"]
    assert len(none_points) == 1 and list(none_points[0].lines[0].get_xdata()) == [0.5]
    assert none_points[0].lines[0].get_color() == "tab:red"
    assert [line.get_label() for line in curves.lines] == ["trivialaugment", CUTMIX, "random_erasing(p=0.5)"]
    assert list(curves.lines[0].get_xdata()) == [2, 3]  # epoch 1 has no value and is skipped
    assert list(curves.lines[0].get_ydata()) == pytest.approx([0.7, 0.8])


def test_branches_read_once_draw_their_training_loss_instead(tmp_path, monkeypatch):
    table = TrialTable(tmp_path, max_epochs=3, knob_types=KNOBS, objective="val_acc", mode="max")
    for number, candidate in enumerate(("none", "trivialaugment")):
        table.start(f"t{number}", candidate, {"policy": candidate, "mix": "none"})
        for epoch in (1, 2, 3):
            read = 0.5 + 0.1 * number if epoch == 3 else math.nan
            table.add_epoch(f"t{number}", epoch, {**dict.fromkeys(REPORTED_METRICS, math.nan), "val_acc": read,
                                                  "train_loss": 2.0 / epoch + number})  # fmt: skip
        table.end(f"t{number}")
    table.write()
    figures = drawn_figures(monkeypatch)
    plot_run(tmp_path, tmp_path / "run.png")
    curves = figures[0].axes[1]
    assert curves.get_ylabel() == "train_loss" and curves.get_title() == "train_loss per epoch, top 2"
    assert [line.get_label() for line in curves.lines] == ["trivialaugment", "none"]
    assert list(curves.lines[0].get_ydata()) == pytest.approx([3.0, 2.0, 5 / 3])
    plot_run(tmp_path, tmp_path / "acc.png", metric="val_acc")  # a metric the user names is drawn as it is
    assert figures[1].axes[1].get_ylabel() == "val_acc" and list(figures[1].axes[1].lines[0].get_xdata()) == [3]


def test_plot_draws_the_runs_objective(tmp_path, monkeypatch):
    search_run(tmp_path, objective="score_ce")
    figures = drawn_figures(monkeypatch)
    plot_run(tmp_path, tmp_path / "run.png")
    assert figures[0].axes[1].get_ylabel() == "score_ce"
    assert list(figures[0].axes[1].lines[0].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3])
    plot_run(tmp_path, tmp_path / "acc.png", metric="val_acc")
    assert figures[1].axes[1].get_ylabel() == "val_acc"
    trials = read_trials(tmp_path)
    assert plot_metric(trials) == "score_ce"
    trials.attrs.clear()  # files written without the run's metadata
    assert plot_metric(trials) == "score"
    with pytest.raises(DaqSearchError, match=r"--plot: unknown metric 'acc'; allowed: score, "):
        plot_metric(trials, "acc")


def final_training(run_dir, *, with_metrics: bool = True) -> None:
    final = run_dir / "final"
    final.mkdir(parents=True)
    rows = []
    for run, candidate, accs in (
        ("final", "trivialaugment", [np.nan, 0.6, np.nan, 0.8]),
        ("final-baseline", "none", [np.nan, 0.5, np.nan, 0.7]),
    ):
        for epoch, acc in enumerate(accs, start=1):
            rows.append(
                {"run": run, "epoch": epoch, "train_loss": 1.0, "val_acc": acc, "val_loss": 1.0,
                 "images_per_s": 100.0, "lr": 0.1, "candidate": candidate}
            )  # fmt: skip
    pd.DataFrame(rows).to_parquet(final / "epochs.parquet", index=False)
    if with_metrics:
        metrics = {
            "candidate": "trivialaugment",
            "student_test_acc": 0.8123,
            "baseline": {
                "candidate": "none",
                "student_test_acc": 0.7,
            },
            "difference_pp": 11.23,
        }
        (final / "metrics.json").write_text(json.dumps(metrics))


def test_results_plot_adds_the_final_training_when_there_is_one(tmp_path, monkeypatch):
    search_run(tmp_path)
    assert plot_results(tmp_path, tmp_path / "search.png") == [tmp_path / "search.png"]
    final_training(tmp_path)
    figures = drawn_figures(monkeypatch)
    written = plot_results(tmp_path, tmp_path / "search.png")
    assert written == [tmp_path / "search.png", tmp_path / "search-final.png"]
    for path in written:
        assert_png(path)
    final = figures[1].axes[0]
    assert [line.get_label() for line in final.lines] == ["trivialaugment (winner)", "none (baseline)"]
    assert list(final.lines[0].get_xdata()) == [2, 4]  # epochs not validated are skipped
    assert list(final.lines[1].get_ydata()) == pytest.approx([50.0, 70.0])
    assert final.get_title() == "test top-1: trivialaugment 81.23 % (+11.23 pp), baseline none 70.00 %"


def test_a_run_that_continued_the_trunk_is_labelled_by_its_own_candidate():
    rows = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "candidate": ["randaugment(magnitude=9,num_ops=2)"] * 3 + ["trivialaugment"]}
    )
    expected = "trivialaugment (winner; epochs 1-3: trunk randaugment(magnitude=9,num_ops=2))"
    assert final_run_label("final", "final", rows) == expected
    assert final_run_label("final", "final-baseline", rows.assign(candidate="none")) == "none (baseline)"
    assert (
        final_run_label("final", "final-finalist-1", rows.assign(candidate="trivialaugment"))
        == "trivialaugment (finalist)"
    )


def test_final_title_without_metrics_or_baseline():
    assert final_title(None) == "final training (no metrics.json yet)"
    alone = {"candidate": "none", "student_test_acc": 0.5, "baseline": None, "difference_pp": None}
    assert final_title(alone) == "test top-1: none 50.00 %"
    assert final_plot_path("out/demo.png").as_posix() == "out/demo-final.png"


def test_final_title_names_a_finalist_that_ships_and_its_gain():
    winner = {"run": "final", "candidate": "augmix(severity=2)", "student_test_acc": 0.6254, "difference_pp": 0.90}
    metrics = {
        "name": "final",
        "shipped_run": "final-finalist-1",
        "candidate": "autoaugment(policy=imagenet)",
        "student_test_acc": 0.6518,
        "difference_pp": 3.54,
        "search_winner": winner,
        "baseline": {"candidate": "none", "student_test_acc": 0.6164},
    }
    assert final_title(metrics) == (
        "test top-1: shipped autoaugment(policy=imagenet) 65.18 % (+3.54 pp), baseline none 61.64 %; "
        "search winner augmix(severity=2) 62.54 % (+0.90 pp)"
    )
    assert final_title({**metrics, **winner, "shipped_run": "final"}) == (
        "test top-1: augmix(severity=2) 62.54 % (+0.90 pp), baseline none 61.64 %"
    )


def test_run_roles_come_from_the_training_name_not_from_parts_of_a_run_name():
    from daq_search.final_runs import baseline_run, finalist_run, run_role

    name = "my-finalist-2-baseline"  # a winner whose name looks like another finalist's and a baseline's
    assert run_role(name, name) == "winner"
    assert run_role(name, baseline_run(name)) == "baseline"
    assert run_role(name, finalist_run(name, 12)) == "finalist"
    for other in ("my-finalist-2", "my-finalist-2-baseline-finalist-x", "other-baseline"):
        with pytest.raises(ValueError, match="is not a run of the final training"):
            run_role(name, other)
