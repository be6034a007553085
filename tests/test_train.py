"""The final distributed training: winner-file errors, DDP on 2 CPU workers, resume, baseline, integer artifact."""

import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from ray.train import Checkpoint
from ray.train.v2.api.exceptions import WorkerGroupError

from daq_search.candidates import parse_candidate
from daq_search.checkpoints import save_checkpoint
from daq_search.config import DataConfig, JobSpec, RecipeConfig, TeacherConfig
from daq_search.data import load_data
from daq_search.errors import DaqSearchError
from daq_search.kd import eval_loader, evaluate, make_optimizer, make_scheduler
from daq_search.logs import PACKAGE_LOGGER
from daq_search.runtime import ray_session
from daq_search.student import build_student
from daq_search.teacher import load_teacher, train_teacher
from daq_search.train import (
    ARTIFACT_FILE,
    STATE_FILE,
    _artifact,
    _find_user_error,
    _load_saved_state,
    _planned_runs,
    _resume_schedule,
    _shard_loader,
    load_int_artifact,
    run_final,
)
from tests.test_search import progress_lines

REPO = Path(__file__).resolve().parents[1]
WINNER = "randaugment(magnitude=5,num_ops=1)+cutmix(alpha=1.0)"
LR = 0.002


def _job(teacher_path: Path | None, candidate: str | None) -> dict:
    job = {
        "name": "tiny",
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "width": 1.0, "recipe": {"epochs": 30, "batch_size": 32, "lr": 0.01}},
        "student": {"model": "tiny_cnn", "width": 1.0, "init": "teacher"},
        "quant": {"method": "lsq", "wbits": 4, "abits": 4},
        "search_space": str(REPO / "search_spaces" / "default.yaml"),
        "final": {
            "recipe": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": LR, "schedule": "cosine"},
            "workers": 2,
            "baseline": "none",
        },
    }
    if teacher_path is not None:
        job["teacher"]["checkpoint"] = str(teacher_path)
    if candidate is not None:
        job["candidate"] = candidate
    return job


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A tiny FP teacher trained for 30 epochs (~5 s) on 200 digits, saved as a daq-search teacher checkpoint."""
    job = _job(None, None)
    data, teacher = DataConfig(**job["data"]), TeacherConfig(**job["teacher"])
    model, _ = train_teacher(teacher, load_data(data.spec()))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, {"model": model.state_dict()})
    return path


@pytest.fixture
def any_teacher_file(tmp_path) -> Path:
    """A file standing in for a teacher checkpoint where the spec is rejected before the teacher is read."""
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"unused")
    return path


def _write_winner(run_dir: Path, job: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "winner.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_missing_winner_file_is_one_line_error(tmp_path):
    with pytest.raises(DaqSearchError, match=r"no such winner file \(a search writes RUN_DIR/winner.yaml\)"):
        run_final(str(tmp_path))
    with pytest.raises(DaqSearchError, match="no such winner file"):
        run_final(str(tmp_path / "nope.yaml"))


def test_invalid_winner_file_names_the_field(tmp_path, any_teacher_file):
    job = _job(any_teacher_file, WINNER)
    job["final"]["workers"] = 0
    path = _write_winner(tmp_path, job)
    with pytest.raises(DaqSearchError, match=r"winner.yaml: final.workers: .*greater than or equal to 1") as err:
        run_final(str(path))
    assert "\n" not in str(err.value)
    path.write_text("name: [unclosed\n")
    with pytest.raises(DaqSearchError, match="malformed YAML"):
        run_final(str(tmp_path))


def test_winner_file_without_candidate_is_rejected(tmp_path, any_teacher_file):
    path = _write_winner(tmp_path, _job(any_teacher_file, None))
    with pytest.raises(DaqSearchError, match=r"winner.yaml: candidate: not set"):
        run_final(str(path))


def test_winner_file_without_teacher_checkpoint_is_rejected(tmp_path):
    path = _write_winner(tmp_path, _job(None, WINNER))
    with pytest.raises(DaqSearchError, match=r"winner.yaml: teacher.checkpoint: not set"):
        run_final(str(path))


def test_bad_overrides_are_rejected_before_ray(tmp_path, any_teacher_file):
    path = _write_winner(tmp_path, _job(any_teacher_file, WINNER))
    with pytest.raises(DaqSearchError, match=r"^baseline: candidate 'nonsense'"):
        run_final(str(path), baseline="nonsense")
    with pytest.raises(DaqSearchError, match=r"^epochs: 0 is not allowed"):
        run_final(str(path), epochs=0)
    with pytest.raises(DaqSearchError, match=r"^--name: 'a/b' is not allowed"):
        run_final(str(path), name="a/b")


def test_corrupt_artifact_is_one_line_error(tmp_path):
    bad = tmp_path / "student_int.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DaqSearchError, match="artifact: .* is not a readable PyTorch checkpoint"):
        load_int_artifact(bad)
    torch.save({"state": {}}, bad)
    with pytest.raises(DaqSearchError, match="needs 'arch' and 'state'"):
        load_int_artifact(bad)


@pytest.mark.parametrize("method", ["lsq", "dorefa_pact"])
def test_artifact_round_trip_computes_the_fake_quant_outputs(tmp_path, method):
    job = JobSpec.model_validate(
        {
            "name": "t",
            "teacher": {"model": "tiny_cnn", "width": 0.5},
            "student": {"model": "tiny_cnn", "width": 0.5, "init": "scratch"},
            "quant": {"method": method, "wbits": 2, "abits": 3},
        }
    )
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())
    teacher = torch.nn.Identity()  # unused with init: scratch
    student = build_student(job.student, job.quant, bundle, teacher, seed=3).eval()
    save_checkpoint(tmp_path / ARTIFACT_FILE, _artifact(job, bundle, student))
    loaded = load_int_artifact(tmp_path / ARTIFACT_FILE)
    images = next(iter(eval_loader(bundle.test, bundle, 64)))[0]
    with torch.no_grad():
        assert torch.allclose(loaded(images), student(images), atol=1e-5)
        assert not loaded.training


def _saved_state(folder: Path, payload) -> Checkpoint:
    folder.mkdir()
    if payload is not None:
        save_checkpoint(folder / STATE_FILE, payload)
    return Checkpoint.from_directory(str(folder))


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    garbage = _saved_state(tmp_path / "garbage", None)
    (tmp_path / "garbage" / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(DaqSearchError, match=r"^checkpoint of run 'final': .* is not a readable PyTorch checkpoint"):
        _load_saved_state(garbage, WINNER, "final")
    partial = _saved_state(tmp_path / "partial", {"model": {}, "epoch": 1})
    with pytest.raises(DaqSearchError, match=r"lacks optimizer, scheduler, epochs, candidate, history"):
        _load_saved_state(partial, WINNER, "final")
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "epochs": 2, "candidate": "none", "history": []}
    other = _saved_state(tmp_path / "other", state)
    with pytest.raises(DaqSearchError, match=r"it trains none, this run randaugment.*use another --name"):
        _load_saved_state(other, WINNER, "final")
    assert _load_saved_state(other, "none", "final")["epoch"] == 1
    assert _load_saved_state(None, WINNER, "final") is None


def test_worker_error_is_found_in_ray_train_failure():
    cause = DaqSearchError("checkpoint of run 'final': bad")
    err = WorkerGroupError("rank 1 failed", {0: RuntimeError("peer gone"), 1: cause})
    assert _find_user_error(err) is cause
    assert _find_user_error(WorkerGroupError("x", {0: RuntimeError("y")})) is None


def test_resumed_cosine_schedule_follows_the_new_length():
    """A 1-epoch cosine ends at lr 0; extended to 4 epochs of 10 steps, step 10 continues at 0.75 * lr."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    recipe = RecipeConfig(epochs=1, lr=0.1)
    optimizer = make_optimizer(params, recipe)
    scheduler = make_scheduler(optimizer, recipe, 10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    longer = recipe.model_copy(update={"epochs": 4})
    optimizer2 = make_optimizer(params, longer)
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2 = make_scheduler(optimizer2, longer, 10)
    _resume_schedule(scheduler2, optimizer2, scheduler.state_dict(), 10)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    optimizer2.step()
    scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 11 / 40)) / 2)


def test_resumed_constant_schedule_keeps_the_recipe_learning_rate():
    """A constant schedule saved after 10 steps and resumed with a longer run continues at lr, not at 0 or a cosine
    value, and stays there."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    recipe = RecipeConfig(epochs=1, lr=0.1, schedule="constant")
    optimizer = make_optimizer(params, recipe)
    scheduler = make_scheduler(optimizer, recipe, 10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    longer = recipe.model_copy(update={"epochs": 4})
    optimizer2 = make_optimizer(params, longer)
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2 = make_scheduler(optimizer2, longer, 10)
    _resume_schedule(scheduler2, optimizer2, scheduler.state_dict(), 10)
    assert scheduler2.last_epoch == 10 and optimizer2.param_groups[0]["lr"] == 0.1
    for _ in range(30):
        optimizer2.step()
        scheduler2.step()
        assert optimizer2.param_groups[0]["lr"] == 0.1


def test_worker_batch_is_the_global_batch_split_over_workers():
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())  # 200 training images
    sampler, loader = _shard_loader(bundle, parse_candidate("none"), 64, 0, rank=1, world=2)
    assert len(sampler) == 100 and loader.batch_size == 32 and len(loader) == 3  # 100 // 32, last partial dropped
    with pytest.raises(DaqSearchError, match=r"^final.recipe.batch_size: 256 leaves no full batch of 128 .* 100 "):
        _shard_loader(bundle, parse_candidate("none"), 256, 0, rank=0, world=2)


@pytest.fixture(scope="module")
def ray_up():
    """One embedded Ray for all Ray tests of this module (run_final reuses a running Ray)."""
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, teacher_file, ray_up):
    """The winner for 1 of its 2 epochs on 2 workers, no baseline: (run dir, metrics, epochs table)."""
    run_dir = tmp_path_factory.mktemp("run")
    _write_winner(run_dir, _job(teacher_file, WINNER))
    metrics = run_final(str(run_dir), epochs=1, baseline=None)
    return run_dir, metrics, pd.read_parquet(run_dir / "final" / "epochs.parquet")


@pytest.fixture(scope="module")
def second_run(first_run):
    """The same command with the spec's 2 epochs and its ``none`` baseline: (run dir, metrics, log lines)."""
    run_dir = first_run[0]
    with progress_lines() as lines:
        metrics = run_final(str(run_dir / "winner.yaml"))
    return run_dir, metrics, lines


@pytest.mark.slow
def test_two_worker_ddp_keeps_replicas_equal(first_run, teacher_file):
    run_dir, metrics, epochs = first_run
    assert metrics["workers"] == 2 and metrics["epochs"] == 1 and metrics["candidate"] == WINNER
    checksums = metrics["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())
    teacher = load_teacher(teacher_file, TeacherConfig(**_job(teacher_file, None)["teacher"]), bundle)
    teacher_acc, teacher_loss = evaluate(teacher, eval_loader(bundle.test, bundle, 512))
    assert metrics["teacher_test_acc"] == teacher_acc  # the teacher it was given, evaluated on the whole test split
    assert metrics["teacher_test_loss"] == pytest.approx(teacher_loss, rel=1e-6)
    assert 0.0 <= metrics["student_test_acc"] <= 1.0
    assert metrics["resumed_from_epoch"] == 0 and metrics["baseline"] is None and metrics["difference_pp"] is None
    assert list(epochs["epoch"]) == [1] and list(epochs["lr"]) == [LR] and epochs["images_per_s"].iloc[0] > 0


@pytest.mark.slow
def test_integer_artifact_reproduces_test_accuracy(first_run):
    run_dir = first_run[0]
    metrics = json.loads((run_dir / "final" / "metrics.json").read_text())
    model = load_int_artifact(run_dir / "final" / ARTIFACT_FILE)
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())
    acc, loss = evaluate(model, eval_loader(bundle.test, bundle, 512))
    assert acc == metrics["student_test_acc"]
    assert loss == pytest.approx(metrics["student_test_loss"], rel=1e-5)


@pytest.mark.slow
def test_rerun_continues_from_last_checkpoint(first_run, second_run):
    _, _, before = first_run
    run_dir, metrics, _ = second_run
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 2
    assert metrics == json.loads((run_dir / "final" / "metrics.json").read_text())
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    winner = rows[rows["run"] == "final"].set_index("epoch")
    assert list(winner.index) == [1, 2]
    # epoch 1 comes from the checkpoint: its measured throughput is the first run's, not a re-measurement
    assert winner.loc[1, "images_per_s"] == before["images_per_s"].iloc[0]
    assert winner.loc[1, "train_loss"] == before["train_loss"].iloc[0]
    # the schedule is re-anchored on 2 epochs: epoch 2 starts half-way down the cosine, LR * (1 + cos(pi / 2)) / 2
    assert winner.loc[2, "lr"] == pytest.approx(LR * (1 + math.cos(math.pi / 2)) / 2)
    assert metrics["replica_checksums"][0] == metrics["replica_checksums"][1]


@pytest.mark.slow
def test_baseline_is_trained_and_compared(second_run):
    run_dir, metrics, lines = second_run
    baseline = metrics["baseline"]
    assert baseline["candidate"] == "none" and baseline["epochs"] == 2 and baseline["resumed_from_epoch"] == 0
    assert metrics["difference_pp"] == pytest.approx(100 * (metrics["student_test_acc"] - baseline["student_test_acc"]))
    assert any(f"winner - baseline = {metrics['difference_pp']:+.2f} pp" in line for line in lines)
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    assert list(rows[rows["run"] == "final-baseline"]["epoch"]) == [1, 2]
    assert set(rows[rows["run"] == "final-baseline"]["candidate"]) == {"none"}


def test_baseline_equal_to_winner_is_skipped(caplog):
    caplog.set_level(logging.INFO, logger=PACKAGE_LOGGER)
    assert _planned_runs("final", WINNER, WINNER) == [("final", WINNER)]
    assert caplog.messages == [f"baseline {WINNER} is the winner itself: no baseline run"]
    assert _planned_runs("f", WINNER, "none") == [("f", WINNER), ("f-baseline", "none")]
    assert _planned_runs("f", WINNER, None) == [("f", WINNER)] and len(caplog.messages) == 1
