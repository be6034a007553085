"""Late-phase branching: the trunk trains to its branch epoch and resumes without repeating an epoch, a trunk of
another job is refused, trials read only where a decision reads them, and a branching search end to end: every
branch trains exactly the epochs after the trunk's, is read at its end with the binomial standard error of its
accuracy, and the winner file names the trunk the final training continues."""

import math

import pytest
import torch
import yaml

from daq_search.branching import TRUNK_STATE_FILE, ensure_trunk, read_trunk, train_trunk, trunk_epochs
from daq_search.config import JobSpec, load_job
from daq_search.errors import DaqSearchError
from daq_search.models import create_for
from daq_search.results import read_epochs, read_trials
from daq_search.runtime import ray_session
from daq_search.search import plan_search, run_search
from daq_search.search.trial import reading_epochs

SPACE = ["none", "trivialaugment", "none+cutmix(alpha=1.0)"]


def job_fields(tmp_path, **changes) -> dict:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "tiny", "candidates": SPACE}))
    fields = {
        "name": "branchy",
        "data": {"name": "digits", "train_per_class": 10, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "recipe": {"epochs": 2, "batch_size": 50}},
        "student": {"model": "tiny_cnn"},
        "search_space": str(space),
        "scorer": {"subset": 40, "batch_size": 40},
        "searcher": {"num_samples": 3, "points_to_evaluate": SPACE},
        "max_concurrent_trials": 2,
        "final": {"recipe": {"epochs": 5, "batch_size": 50}, "workers": 1},
        "branch": {"at": 0.6},
        "storage": str(tmp_path / "runs"),
    }
    fields.update(changes)
    return fields


def untrained_teacher(job: JobSpec, path) -> str:
    torch.manual_seed(0)
    torch.save(create_for(job.teacher.model, job.teacher.width, job.load_data()).state_dict(), path)
    return str(path)


def test_trunk_trains_to_its_branch_epoch_and_resumes_after_its_last_saved_epoch(tmp_path):
    job = JobSpec.model_validate(job_fields(tmp_path))
    teacher = untrained_teacher(job, tmp_path / "teacher.pt")
    folder = tmp_path / "trunk"
    state = train_trunk(job, teacher, folder)
    assert trunk_epochs(job) == 3  # 0.6 of 5
    assert (state["epoch"], state["epochs"], state["candidate"]) == (3, 5, job.branch.trunk)
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert all(math.isnan(row["val_acc"]) and row["candidate"] == job.branch.trunk for row in state["history"])
    assert read_trunk(folder)["epoch"] == 3
    steps = state["scheduler"]["last_epoch"]
    partial = {**state, "epoch": 1, "history": state["history"][:1]}
    torch.save(partial, folder / TRUNK_STATE_FILE)
    resumed = train_trunk(job, teacher, folder)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]  # epochs 2 and 3 again, epoch 1 not
    assert resumed["scheduler"]["last_epoch"] == steps + 2 * (steps // 3)  # the saved schedule went on 2 epochs


def test_a_trunk_of_another_job_is_refused_before_any_training(tmp_path):
    job = JobSpec.model_validate(job_fields(tmp_path))
    folder = tmp_path / "run" / "trunk"
    folder.mkdir(parents=True)
    torch.save({"candidate": "none", "epochs": 5, "epoch": 3}, folder / TRUNK_STATE_FILE)
    with pytest.raises(DaqSearchError, match=r"^branch: .* holds a trunk of none over 5 epochs, this job randaug"):
        ensure_trunk(job, tmp_path / "teacher.pt", tmp_path / "run", cpus=1, use_gpu=False)


@pytest.mark.parametrize(
    ("changes", "reads"),
    [
        ({}, {5}),
        ({"branch": None, "trial": {"epochs": 10}, "scheduler": {"enabled": True}}, {1, 2, 4, 8, 10}),
        (
            {
                "branch": None,
                "trial": {"epochs": 10},
                "scheduler": {"enabled": True, "grace_period": 3, "reduction_factor": 3},
            },
            {3, 9, 10},
        ),
        ({"branch": None, "trial": {"epochs": 4}, "calibrate": {"anchors": SPACE[:2]}}, {1, 2, 3, 4}),
    ],
)
def test_trials_read_at_their_end_at_asha_rungs_and_every_epoch_of_a_calibration(tmp_path, changes, reads):
    assert reading_epochs(JobSpec.model_validate(job_fields(tmp_path, **changes))) == frozenset(reads)


@pytest.mark.slow
def test_a_branching_search_trains_each_branch_after_the_trunk_and_names_the_trunk_in_the_winner(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_fields(tmp_path)))
    plan = plan_search(path)
    with ray_session(num_cpus=2):
        outcome = run_search(plan)
    trials, epochs = read_trials(outcome.run_dir), read_epochs(outcome.run_dir)
    assert sorted(trials["candidate"]) == sorted(SPACE) and (trials["status"] == "completed").all()
    for trial_id in trials["trial_id"]:
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert mine["epoch"].tolist() == [4, 5]  # the trunk trained epochs 1-3
        assert mine["val_acc"].isna().tolist() == [True, False]  # read only where the ranking reads it
    n = len(plan.bundle.val)
    expected_se = (trials["val_acc_last"] * (1 - trials["val_acc_last"]) / n) ** 0.5
    assert trials["val_acc_se_last"].tolist() == pytest.approx(expected_se.tolist())
    winner = load_job(outcome.winner_file)
    assert winner.branch.checkpoint == str(outcome.run_dir / "trunk")
    assert read_trunk(winner.branch.checkpoint)["epoch"] == 3
