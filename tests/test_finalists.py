"""Finalists hedged across strength: the tiers, the search's choice of finalists and the final training's choice of
the run it ships, on hand-made tables."""

import math
from pathlib import Path

import pandas as pd
import pytest

from daq_search.finalists import (
    choose_finalists,
    shipped_index,
    strength_finalists,
    strength_positions,
    strength_tiers,
)


def _trials(rows: list[tuple[str, str, float, float]], status: str = "completed") -> pd.DataFrame:
    """A trials table of ``(trial_id, candidate, val_acc, teacher_align)`` rows (alignment in nats, higher for a
    stronger augmentation), all 8 epochs long."""
    return pd.DataFrame(
        {
            "trial_id": [r[0] for r in rows],
            "candidate": [r[1] for r in rows],
            "status": status,
            "epochs": 8,
            "val_acc_last": [r[2] for r in rows],
            "val_loss_last": 1.0,
            "teacher_align_last": [r[3] for r in rows],
        }
    )


TRIALS = _trials(
    [
        ("a", "none", 0.80, 0.03),
        ("b", "mixup", 0.82, 0.40),
        ("c", "randaugment", 0.70, 0.90),
        ("d", "ta+cutmix", 0.60, 1.60),
        ("e", "erasing", 0.79, 0.10),
        ("f", "none", 0.81, 0.03),  # a repeat of none: its first row keeps its rank
    ]
)


def test_tiers_are_contiguous_by_alignment_lowest_first_sizes_differ_by_at_most_one():
    candidates = TRIALS.drop_duplicates("candidate")
    assert strength_tiers(candidates, 2) == [["none", "erasing", "mixup"], ["randaugment", "ta+cutmix"]]
    assert strength_tiers(candidates, 3) == [["none", "erasing"], ["mixup", "randaugment"], ["ta+cutmix"]]
    assert strength_tiers(candidates.head(2), 5) == [["none"], ["mixup"]]  # no more tiers than candidates


def test_a_missing_alignment_counts_as_strongest_and_ties_go_by_candidate_id():
    frame = pd.DataFrame({"candidate": ["b", "a", "c"], "teacher_align_last": [0.5, 0.5, math.nan]})
    assert strength_tiers(frame, 3) == [["a"], ["b"], ["c"]]


def test_finalists_are_the_winner_then_the_best_of_each_other_tier_in_rank_order():
    assert choose_finalists(TRIALS, "val_acc", "max", 1) == ["mixup"]
    # tiers [none, erasing, mixup] | [randaugment, ta+cutmix]: the winner's tier gives no other finalist
    assert choose_finalists(TRIALS, "val_acc", "max", 2) == ["mixup", "randaugment"]
    # without none (trained anyway as the baseline): [erasing, mixup] | [randaugment] | [ta+cutmix]
    assert choose_finalists(TRIALS, "val_acc", "max", 3, skip=["none"]) == ["mixup", "randaugment", "ta+cutmix"]
    # the objective alone decides the winner: with the readings reversed the strongest candidate wins
    assert choose_finalists(TRIALS.assign(val_acc_last=-TRIALS["val_acc_last"]), "val_acc", "max", 2)[0] == "ta+cutmix"


def test_a_skipped_candidate_that_wins_is_still_the_winner_and_failed_trials_are_never_finalists():
    table = pd.concat([TRIALS, _trials([("g", "augmix", 0.99, 0.5)], status="failed")])
    assert choose_finalists(table, "val_acc", "max", 2, skip=["mixup"]) == ["mixup", "randaugment"]
    assert choose_finalists(table[table["status"] == "failed"], "val_acc", "max", 2) == []


@pytest.mark.parametrize(
    ("size", "count", "positions"),
    [
        (8, 2, [3, 4]),  # 0.382 * 7 = 2.67 -> 3, 0.618 * 7 = 4.33 -> 4
        (7, 2, [2, 4]),  # 2.29 -> 2, 3.71 -> 4
        (10, 2, [3, 6]),  # 3.44 -> 3, 5.56 -> 6
        (3, 2, [1, 2]),  # 0.76 -> 1; 1.24 -> 1 is taken, 2 is nearer than 0
        (2, 2, [0, 1]),
        (1, 2, [0]),  # no more than there are
        (7, 1, [3]),  # one: the middle
        (8, 1, [3]),  # 3.5: the milder on a tie
        (11, 3, [4, 5, 6]),  # 3.82, 5.0, 6.18
    ],
)
def test_strength_positions_are_the_golden_points_of_the_order(size, count, positions):
    assert strength_positions(size, count) == positions


def test_strength_finalists_ignore_the_readings_skip_the_baseline_and_list_in_rank_order():
    # without none, by alignment: erasing 0.10, mixup 0.40, randaugment 0.90, ta+cutmix 1.60: positions 1 and 2
    assert strength_finalists(TRIALS, "val_acc", "max", 2, skip=["none"]) == ["mixup", "randaugment"]
    reversed_readings = TRIALS.assign(val_acc_last=-TRIALS["val_acc_last"])
    assert strength_finalists(reversed_readings, "val_acc", "max", 2, skip=["none"]) == ["randaugment", "mixup"]
    # with none in the pool (5 candidates): positions 2 (1.53 -> 2) and 2.47 -> 2 taken, so 3
    assert strength_finalists(TRIALS, "val_acc", "max", 2) == ["mixup", "randaugment"]
    assert strength_finalists(TRIALS, "val_acc", "max", 1, skip=["none"]) == ["mixup"]  # 1.5: the milder
    only_none = TRIALS[TRIALS["candidate"] == "none"]
    assert strength_finalists(only_none, "val_acc", "max", 2, skip=["none"]) == ["none"]  # nothing else trained
    failed = TRIALS.assign(status="failed")
    assert strength_finalists(failed, "val_acc", "max", 2) == []


@pytest.mark.parametrize(
    ("readings", "index"),
    [
        ([0.70, 0.71], 1),
        ([0.71, 0.71], 0),  # a tie keeps the search's winner, never favouring the baseline
        ([0.71, 0.70], 0),
        ([0.5, 0.8, 0.8], 1),  # then the earlier finalist
        ([0.5, None, 0.6], 2),
        ([0.5, math.nan, 0.4], 0),
        ([None, 0.9], 0),  # without the winner's own reading it ships
        ([math.nan, 0.9], 0),
    ],
)
def test_the_shipped_run_is_the_first_with_the_highest_finite_validation(readings, index):
    assert shipped_index(readings) == index


def _plan(tmp_path, **selection):
    from daq_search.config import JobSpec
    from daq_search.search.plan import SearchPlan

    job = JobSpec.model_validate(
        {
            "name": "s",
            "data": {"name": "digits"},
            "search_space": str(Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"),
            "final": {"recipe": {"epochs": 20}, "finalists": 2},
            "searcher": {"num_samples": 6},
            **selection,
        }
    )
    return SearchPlan(job=job, space=None, bundle=None, storage=tmp_path, name="s")


@pytest.mark.parametrize("branch", [None, {}])
def test_the_winner_file_names_the_other_finalists_and_loads_as_a_job(tmp_path, branch):
    from daq_search.config import load_job
    from daq_search.search.run import write_winner

    plan = _plan(tmp_path, branch=branch)
    (tmp_path / "s").mkdir()
    table = TRIALS.assign(candidate=TRIALS["candidate"].replace({"erasing": "random_erasing(p=0.5)"}))
    table.loc[table["candidate"] == "mixup", "candidate"] = "none+mixup(alpha=0.2)"
    table.loc[table["candidate"] == "ta+cutmix", "candidate"] = "trivialaugment+cutmix(alpha=1.0)"
    table = table.assign(epochs=2)
    (tmp_path / "teacher.pt").write_bytes(b"unused: the job is loaded, not trained")
    path = write_winner(plan, table, tmp_path / "teacher.pt")
    job = load_job(path)
    assert job.candidate == "none+mixup(alpha=0.2)" and job.finalists == ["randaugment(magnitude=9,num_ops=2)"]


def test_the_baseline_is_a_finalist_only_when_it_would_continue_a_trunk(tmp_path):
    from daq_search.search.run import write_winner

    (tmp_path / "s").mkdir()
    strong_none = TRIALS.assign(
        teacher_align_last=[1.9, 0.40, 0.90, 1.60, 0.10, 1.9], val_acc_last=[0.8, 0.82, 0.7, 0.6, 0.79, 0.81]
    )
    strong_none.loc[strong_none["candidate"] == "mixup", "candidate"] = "none+mixup(alpha=0.2)"
    strong_none.loc[strong_none["candidate"] == "erasing", "candidate"] = "random_erasing(p=0.5)"
    strong_none.loc[strong_none["candidate"] == "ta+cutmix", "candidate"] = "trivialaugment+cutmix(alpha=1.0)"
    independent = write_winner(_plan(tmp_path, branch=None), strong_none, tmp_path / "t.pt")
    import yaml

    assert yaml.safe_load(independent.read_text())["finalists"] == ["randaugment"]  # none is the baseline anyway
    branching = write_winner(_plan(tmp_path, branch={}), strong_none, tmp_path / "t.pt")
    assert yaml.safe_load(branching.read_text())["finalists"] == ["none"]  # trunk-then-none is another training


def test_a_strength_winner_file_names_the_golden_points_whatever_the_trials_read(tmp_path):
    import yaml

    from daq_search.search.run import write_winner

    (tmp_path / "s").mkdir()
    table = TRIALS.assign(candidate=TRIALS["candidate"].replace({"erasing": "random_erasing(p=0.5)"}))
    table.loc[table["candidate"] == "mixup", "candidate"] = "none+mixup(alpha=0.2)"
    table.loc[table["candidate"] == "ta+cutmix", "candidate"] = "trivialaugment+cutmix(alpha=1.0)"
    plan = _plan(tmp_path, final={"recipe": {"epochs": 20}, "finalists": 2, "finalists_by": "strength"})
    winner = yaml.safe_load(write_winner(plan, table, tmp_path / "t.pt").read_text())
    # none (the baseline, trained anyway) leaves the pool; mixup ranks above randaugment in the trials
    assert winner["candidate"] == "none+mixup(alpha=0.2)" and winner["finalists"] == ["randaugment"]
    worst_reads_best = table.assign(val_acc_last=1 - table["val_acc_last"])
    winner = yaml.safe_load(write_winner(plan, worst_reads_best, tmp_path / "t.pt").read_text())
    assert winner["candidate"] == "randaugment" and winner["finalists"] == ["none+mixup(alpha=0.2)"]
