"""Cluster placement end to end on a loopback Ray: a search trains its teacher in a Ray worker process, not the
driver; a healthy final training prints its progress and none of Ray's warnings, which go to RUN_DIR/final/ray.log."""

import os

import pytest
import torch
import yaml

from daq_search.config import DataConfig, TeacherConfig
from daq_search.errors import DaqSearchError
from daq_search.runtime import ray_session
from daq_search.search import plan_search, run_search
from daq_search.teacher import ensure_teacher
from daq_search.train import RAY_LOG_FILE, run_final
from tests.test_search import MILD, progress_lines, write_job


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher-worker")
    job = write_job(
        folder,
        teacher={"recipe": {"epochs": 2, "batch_size": 50}},
        trial={"epochs": 1},
        searcher={"num_samples": 1, "points_to_evaluate": [MILD]},
    )
    spec = yaml.safe_load(job.read_text())
    spec["final"] = {"recipe": {"epochs": 1, "batch_size": 50}, "workers": 1, "baseline": None}
    job.write_text(yaml.safe_dump(spec))
    with ray_session(num_cpus=2), progress_lines() as lines:
        outcome = run_search(plan_search(job), summary_every_s=0.0)
    return outcome, lines


@pytest.mark.slow
def test_teacher_is_trained_in_a_ray_worker_not_the_driver(searched):
    outcome, lines = searched
    assert outcome.finished and outcome.winner_file is not None
    assert any("as a Ray task" in line for line in lines)
    (checkpoint,) = (outcome.run_dir.parent / "teachers").glob("teacher-*.pt")
    trained_by = torch.load(checkpoint, weights_only=True)["trained_by"]
    assert trained_by["pid"] != os.getpid()


@pytest.mark.slow
def test_healthy_final_training_prints_progress_and_no_ray_warnings(searched, capfd):
    outcome, _ = searched
    metrics = run_final(str(outcome.winner_file))
    out, err = capfd.readouterr()
    assert "final epoch 1/1" in out
    for noise in ("PlacementGroupCleaner", "Failed to query", "WARNING"):
        assert noise not in out + err
    assert (outcome.run_dir / "final" / RAY_LOG_FILE).is_file()
    assert metrics["backend"] == "gloo" and metrics["device"] == "cpu"


@pytest.mark.slow
def test_a_teacher_task_error_is_the_same_one_line(tmp_path):
    with ray_session(num_cpus=1), pytest.raises(DaqSearchError, match=r"^data\.root: .*nowhere has no cifar-10"):
        ensure_teacher(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")), TeacherConfig(), tmp_path)
    assert not list(tmp_path.glob("teacher-*.pt"))
