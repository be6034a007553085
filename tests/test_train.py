"""The final distributed training: winner-file errors, DDP on 2 CPU workers, its cadence, resume, restarts after a
worker loss, continuing a search trunk, baseline, integer artifact."""

import io
import json
import logging
import math
import threading
import time
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from ray.train import Checkpoint
from ray.train.v2.api.exceptions import WorkerGroupError

from daq_search import train
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
    _continues_trunk,
    _find_user_error,
    _fits_together,
    _load_saved_state,
    _planned_runs,
    _resume_schedule,
    _reuse_state,
    _run_all,
    _shard_loader,
    _start_state,
    _trunk_checkpoint,
    epoch_line,
    eta_seconds,
    load_int_artifact,
    next_validation,
    progress_due,
    progress_line,
    routed_worker_logs,
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


def _state(candidate: str, epoch: int, epochs: int, **extra) -> dict:
    keys = {"model": {}, "optimizer": {}, "scheduler": {}, "history": [{"epoch": e} for e in range(1, epoch + 1)]}
    return keys | {"epoch": epoch, "epochs": epochs, "candidate": candidate} | extra


def test_a_reused_start_state_may_train_another_candidate_a_run_checkpoint_may_not(tmp_path):
    trunk = _saved_state(tmp_path / "trunk", _state("none", 3, 10))
    reuse = {"folder": str(tmp_path / "trunk"), "source": "search trunk"}
    saved, origin = _start_state(None, reuse, WINNER, "final")
    assert saved["epoch"] == 3 and saved["candidate"] == "none"
    assert origin == {"source": "search trunk", "folder": reuse["folder"], "candidate": "none", "epoch": 3}
    with pytest.raises(DaqSearchError, match=r"it trains none, this run randaugment"):
        _start_state(trunk, None, WINNER, "final")  # the run's own checkpoint
    own = _saved_state(tmp_path / "own", _state(WINNER, 5, 10, origin=origin))
    assert _start_state(own, reuse, WINNER, "final")[1] == origin  # its own checkpoint wins and keeps the origin
    assert _start_state(None, None, WINNER, "final") == (None, None)


def test_the_winner_continues_a_trunk_of_its_schedule_only(tmp_path):
    save_checkpoint(tmp_path / "trunk" / STATE_FILE, _state("none", 3, 10))
    job = SimpleNamespace(branch=SimpleNamespace(checkpoint=str(tmp_path / "trunk")), calibration=None)
    assert _trunk_checkpoint(job, 10) == str(tmp_path / "trunk")
    assert _trunk_checkpoint(job, 12) is None  # a trunk of another schedule
    trunk = _trunk_checkpoint(job, 10)
    assert _reuse_state(job, True, WINNER, 10, trunk) == {"folder": str(tmp_path / "trunk"), "source": "search trunk"}
    assert _reuse_state(job, False, "none", 10, trunk) is None  # the baseline never continues the trunk
    assert _trunk_checkpoint(SimpleNamespace(branch=SimpleNamespace(checkpoint=str(tmp_path / "gone"))), 10) is None
    assert _trunk_checkpoint(SimpleNamespace(branch=SimpleNamespace(checkpoint=None)), 10) is None
    assert _trunk_checkpoint(SimpleNamespace(), 10) is None  # a job from before branching


def test_a_trunk_deleted_after_the_winner_continued_it_still_counts_as_continued(tmp_path, caplog):
    save_checkpoint(tmp_path / "trunk" / STATE_FILE, _state("none", 3, 10))
    named = SimpleNamespace(branch=SimpleNamespace(checkpoint=str(tmp_path / "trunk")))
    assert _continues_trunk(named, _trunk_checkpoint(named, 10))
    assert not _continues_trunk(named, _trunk_checkpoint(named, 12))  # there, but of another schedule: from scratch
    gone = SimpleNamespace(branch=SimpleNamespace(checkpoint=str(tmp_path / "gone")))
    with caplog.at_level(logging.INFO, logger="daq_search.train"):
        assert _continues_trunk(gone, _trunk_checkpoint(gone, 10))  # so a `none` winner keeps its `none` baseline
    assert "holds no trunk state" in caplog.text
    assert not _continues_trunk(SimpleNamespace(branch=SimpleNamespace(checkpoint=None)), None)
    assert not _continues_trunk(SimpleNamespace(branch=None), None)


def test_validation_and_progress_cadence():
    assert next_validation(10, 10, 0.5, 1.0, 0.1) == 20  # 0.5 s of validation per 10 s of training
    # a validation of 3 s over epochs of 0.3 s: 100 epochs (30 s) later keeps it to 10 % of the training time
    assert next_validation(10, 10, 3.0, 0.3, 0.1) == 110
    assert next_validation(10, 10, 3.1, 0.3, 0.1) == 114  # ceil(103.3)
    assert [e for e in range(1, 321) if progress_due(e, 0, 320)] == list(range(32, 321, 32))
    # resumed after epoch 5 of 25: 20 epochs left, a line every 2 of them
    assert [e for e in range(6, 26) if progress_due(e, 5, 25)] == list(range(7, 26, 2))
    assert [e for e in range(1, 4) if progress_due(e, 0, 3)] == [1, 2, 3]
    assert eta_seconds(4, 36, 2.0) == 18.0


def test_progress_and_epoch_lines():
    row = {"epoch": 32, "train_loss": 1.23456, "val_acc": math.nan, "val_loss": math.nan, "images_per_s": 499.6}
    # 32 epochs in 64 s: 2 s each, 288 left: 576 s
    assert (
        progress_line("final", row, 320, 32, 64.0) == "final epoch 32/320 (10 %): loss 1.2346, 2.00 s/epoch, ETA 9m36s"
    )
    assert epoch_line("final", row, 320, 2) == "final epoch 32/320: loss 1.2346, val acc -, 500 img/s over 2 worker(s)"
    row |= {"epoch": 320, "val_acc": 0.5}
    assert (
        progress_line("f", row, 320, 10, 5.0)
        == "f epoch 320/320 (100 %): loss 1.2346, val acc 0.5000, 0.50 s/epoch, ETA 0s"
    )


def test_worker_lines_arriving_after_the_training_still_reach_the_log_file(tmp_path, monkeypatch):
    """Ray's log monitor delivers a worker's last lines late under load: the routing waits for them (until no line
    has come for LOG_QUIET_S) instead of dropping them when the training returns."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    monkeypatch.setattr(train, "LOG_QUIET_S", 3.0)
    monkeypatch.setattr(train, "LOG_DRAIN_S", 30.0)
    path = tmp_path / "ray.log"

    def emit(text: str, delay_s: float = 0.0) -> None:
        time.sleep(delay_s)
        dispatcher.emit({"is_err": True, "pid": 7, "actor_name": "RayTrainWorker", "lines": [text]})

    with routed_worker_logs(path):
        emit("final epoch 3/4: loss 1.0")
        late = threading.Thread(target=emit, args=("final epoch 4/4: loss 0.9", 0.2))
        late.start()
    late.join()
    emit("after the routing ended")
    assert path.read_text().splitlines() == [
        "(RayTrainWorker pid=7) final epoch 3/4: loss 1.0",
        "(RayTrainWorker pid=7) final epoch 4/4: loss 0.9",
    ]


def test_runs_together_return_in_order_and_the_first_failure_is_raised_at_once():
    assert _run_all([lambda: 1, lambda: 2], together=True) == [1, 2]
    assert _run_all([lambda: 1, lambda: 2], together=False) == [1, 2]
    release = threading.Event()

    def fails():
        raise ValueError("run 2 failed")

    with pytest.raises(ValueError, match="run 2 failed"):
        _run_all([lambda: release.wait(60), fails], together=True)
    assert not release.is_set()  # raised while run 1 still trains
    release.set()


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
    winner = metrics["search_winner"]
    assert winner["resumed_from_epoch"] == 1 and winner["epochs"] == 2
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
    baseline, winner = metrics["baseline"], metrics["search_winner"]
    assert baseline["candidate"] == "none" and baseline["epochs"] == 2 and baseline["resumed_from_epoch"] == 0
    assert winner["difference_pp"] == pytest.approx(100 * (winner["student_test_acc"] - baseline["student_test_acc"]))
    test_images = len(load_data(DataConfig(**_job(None, None)["data"]).spec()).test)
    se = 100 * train.difference_se(winner["student_test_acc"], baseline["student_test_acc"], test_images)
    assert winner["difference_se_pp"] == pytest.approx(se)
    assert f"winner {WINNER}: test acc {100 * winner['student_test_acc']:.2f} % ({winner['difference_pp']:+.2f} pp" in (
        "\n".join(lines)
    )
    shipped = winner if metrics["shipped_run"] == "final" else baseline
    assert (metrics["difference_pp"], metrics["difference_se_pp"]) == (
        shipped["difference_pp"],
        shipped["difference_se_pp"],
    )
    gain = f"shipped {metrics['candidate']} - baseline none = {metrics['difference_pp']:+.2f} pp (standard error"
    assert any(line.startswith(gain) for line in lines) == (metrics["shipped_run"] == "final")
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    assert list(rows[rows["run"] == "final-baseline"]["epoch"]) == [1, 2]
    assert set(rows[rows["run"] == "final-baseline"]["candidate"]) == {"none"}


@pytest.mark.slow
def test_the_artifact_is_the_shipped_run(second_run):
    run_dir, metrics, lines = second_run
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())
    accuracy, _ = evaluate(load_int_artifact(run_dir / "final" / ARTIFACT_FILE), eval_loader(bundle.test, bundle, 512))
    assert accuracy == metrics["student_test_acc"]
    runs = {"final": metrics["search_winner"], "final-baseline": metrics["baseline"]}
    assert (metrics["candidate"], metrics["student_test_acc"]) == (
        runs[metrics["shipped_run"]]["candidate"],
        runs[metrics["shipped_run"]]["student_test_acc"],
    )
    assert any(line.startswith(f"{ARTIFACT_FILE}: the ") for line in lines)


def _outcome(test_acc: float, val_acc: float | None) -> dict:
    """A made-up finished run as ``_fit`` returns it: its test top-1 and its last epoch's val top-1."""
    history = [] if val_acc is None else [{"epoch": 2, "val_acc": val_acc}]
    return {
        "epochs_done": 2, "test_acc": test_acc, "test_loss": 1.0, "teacher_test_acc": 0.9, "teacher_test_loss": 0.3,
        "history": history, "resumed_from_epoch": 0, "continued_from": None, "restarts": 0,
        "restored_from_epochs": [], "replica_checksums": [], "device": "cpu", "backend": "gloo", "wall_s": 1.0,
        "test_images": 400,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("winner_val", "baseline_val", "shipped"),
    [(0.70, 0.72, "f-baseline"), (0.72, 0.72, "f"), (0.72, 0.70, "f"), (None, 0.9, "f"), (math.nan, 0.9, "f")],
)
def test_metrics_name_the_shipped_run_the_baseline_only_when_its_validation_is_higher(
    any_teacher_file, winner_val, baseline_val, shipped
):
    job = JobSpec.model_validate({**_job(any_teacher_file, WINNER), "name": "tiny"})
    outcomes = {"f": _outcome(0.61, winner_val), "f-baseline": _outcome(0.55, baseline_val)}
    runs = [("f", WINNER), ("f-baseline", "none")]
    metrics = train._summarise(job, "f", WINNER, "none", runs, outcomes, 2, False, "s", False)
    assert metrics["shipped_run"] == shipped
    # the top level describes the model that ships; each run keeps its own entry and gain over the baseline
    assert (metrics["candidate"], metrics["student_test_acc"], metrics["difference_pp"]) == (
        ("none", 0.55, 0.0) if shipped == "f-baseline" else (WINNER, 0.61, pytest.approx(6.0))
    )
    winner = metrics["search_winner"]
    assert (winner["run"], winner["student_test_acc"], winner["difference_pp"]) == ("f", 0.61, pytest.approx(6.0))
    assert metrics["baseline"]["difference_pp"] == 0.0
    whose = "baseline's (none)" if shipped == "f-baseline" else f"winner's ({WINNER})"
    lines = train._summary_lines(metrics)
    assert any(line.startswith(f"{ARTIFACT_FILE}: the {whose} model") for line in lines)
    assert any(line.startswith("shipped ") for line in lines) == (shipped == "f")


class _FolderArtifact:
    """Stands in for a Ray Train checkpoint: a folder holding one run's ``student_int.pt``."""

    def __init__(self, folder: Path):
        self.folder = folder

    @contextmanager
    def as_directory(self):
        yield self.folder


@pytest.mark.parametrize(("baseline_val", "written"), [(0.6, b"baseline's"), (0.5, b"winner's")])
def test_run_final_writes_the_shipped_runs_artifact(tmp_path, teacher_file, monkeypatch, baseline_val, written):
    run_dir = tmp_path / "run"
    _write_winner(run_dir, _job(teacher_file, WINNER))

    def two_finished_runs(fits, together):
        results = []
        for name, val_acc in (("winner's", 0.5), ("baseline's", baseline_val)):
            folder = tmp_path / name
            folder.mkdir()
            (folder / ARTIFACT_FILE).write_bytes(name.encode())
            results.append((_outcome(0.6, val_acc), _FolderArtifact(folder)))
        return results

    monkeypatch.setattr(train, "_run_all", two_finished_runs)
    monkeypatch.setattr(train, "ray_session", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "routed_worker_logs", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "_fits_together", lambda *args: False)  # it asks Ray, which this test does not start
    metrics = run_final(str(run_dir))
    assert (run_dir / "final" / ARTIFACT_FILE).read_bytes() == written
    assert metrics["shipped_run"] == ("final-baseline" if written == b"baseline's" else "final")


@pytest.mark.parametrize("continues_trunk", [True, False])
def test_a_winner_none_continuing_the_trunk_still_trains_and_may_ship_its_baseline(
    tmp_path, teacher_file, monkeypatch, continues_trunk
):
    run_dir = tmp_path / "run"
    _write_winner(run_dir, _job(teacher_file, "none"))
    planned = []

    def finished_runs(fits, together):
        planned.extend(fit.args[1] for fit in fits)  # each run's candidate
        results = []
        for i, val_acc in enumerate((0.5, 0.6)[: len(fits)]):
            folder = tmp_path / f"run{i}"
            folder.mkdir()
            (folder / ARTIFACT_FILE).write_bytes(str(i).encode())
            results.append((_outcome(0.6, val_acc), _FolderArtifact(folder)))
        return results

    monkeypatch.setattr(train, "_trunk_checkpoint", lambda *args: str(tmp_path) if continues_trunk else None)
    monkeypatch.setattr(train, "_run_all", finished_runs)
    monkeypatch.setattr(train, "ray_session", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "routed_worker_logs", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "_fits_together", lambda *args: False)
    metrics = run_final(str(run_dir))
    if continues_trunk:  # trunk-then-none is not none from scratch: both train, the higher validation ships
        assert planned == ["none", "none"] and metrics["shipped_run"] == "final-baseline"
        assert (run_dir / "final" / ARTIFACT_FILE).read_bytes() == b"1"
    else:
        assert planned == ["none"] and metrics["baseline"]["skipped"] == "same as the winner"
        assert metrics["shipped_run"] == "final"


def test_without_a_baseline_the_winner_ships(any_teacher_file):
    job = JobSpec.model_validate(_job(any_teacher_file, WINNER))
    for baseline, outcomes in ((None, {"f": _outcome(0.61, 0.5)}), (WINNER, {"f": _outcome(0.61, 0.5)})):
        metrics = train._summarise(job, "f", WINNER, baseline, [("f", WINNER)], outcomes, 2, False, "s", False)
        assert (metrics["shipped_run"], metrics["candidate"], metrics["student_test_acc"]) == ("f", WINNER, 0.61)
        # a baseline that is the winner's own training is measured by the winner's run: no gain; none without one
        assert metrics["difference_pp"] == (None if baseline is None else 0.0)
        assert train._summary_lines(metrics)[1:] == []  # one run: no per-run lines, and no gain over itself


def test_a_finalist_that_ships_over_a_winner_equal_to_the_baseline_reports_its_gain_over_that_run(any_teacher_file):
    job = JobSpec.model_validate(_job(any_teacher_file, "none"))
    runs = [("f", "none"), ("f-finalist-1", "trivialaugment")]
    outcomes = {"f": _outcome(0.55, 0.5), "f-finalist-1": _outcome(0.65, 0.6)}
    metrics = train._summarise(job, "f", "none", "none", runs, outcomes, 2, False, "s", False)
    assert metrics["baseline"] == {"candidate": "none", "skipped": "same as the winner"}
    assert metrics["shipped_run"] == "f-finalist-1" and metrics["difference_pp"] == pytest.approx(10.0)
    assert metrics["search_winner"]["difference_pp"] == 0.0  # none against its own run
    assert train._summary_lines(metrics)[1:] == [
        "winner none: test acc 55.00 % (+0.00 pp over the baseline), validation 50.00 %",
        "finalist trivialaugment: test acc 65.00 % (+10.00 pp over the baseline), validation 60.00 %",
        f"{ARTIFACT_FILE}: the finalist's (trivialaugment) model, the highest on validation at the last epoch",
        "shipped trivialaugment - baseline none = +10.00 pp (standard error 3.45 pp)",
    ]


def test_a_baseline_equal_to_the_winner_is_skipped_unless_the_winner_continues_a_trunk(caplog):
    caplog.set_level(logging.INFO, logger=PACKAGE_LOGGER)
    assert _planned_runs("final", WINNER, WINNER, continues_trunk=False) == [("final", WINNER)]
    assert caplog.messages == [f"baseline {WINNER} is the winner itself: no baseline run"]
    assert _planned_runs("f", WINNER, "none", continues_trunk=False) == [("f", WINNER), ("f-baseline", "none")]
    assert _planned_runs("f", WINNER, None, continues_trunk=False) == [("f", WINNER)] and len(caplog.messages) == 1
    # a winner that continues the search's trunk is not its candidate from scratch: the baseline still trains
    assert _planned_runs("f", "none", "none", continues_trunk=True) == [("f", "none"), ("f-baseline", "none")]
    assert _planned_runs("f", WINNER, None, continues_trunk=True) == [("f", WINNER)] and len(caplog.messages) == 1


@pytest.mark.slow
def test_runs_fit_together_only_with_the_cpus_for_all(ray_up):
    assert _fits_together(2, 1, 1.0, use_gpu=False)  # the module's Ray has 2 CPUs
    assert not _fits_together(2, 2, 1.0, use_gpu=False)
    assert not _fits_together(1, 1, 1.0, use_gpu=False)  # a single run
    assert not _fits_together(2, 1, 1.0, use_gpu=True)  # no GPUs


def _checkpoints(run_dir: Path, name: str) -> list[Path]:
    """The checkpoint folders of Ray Train run ``name`` of the final training in ``run_dir``."""
    return [path for path in (run_dir / "final" / "ray" / name).glob("checkpoint_*") if path.is_dir()]


@pytest.fixture(scope="module")
def branched(first_run, teacher_file, tmp_path_factory):
    """The winner continuing a trunk: the first run's epoch-1 state relabelled as a ``none`` trunk of a 4-epoch
    schedule, named in the winner's ``branch.checkpoint``; trained with the default cadence. Returns the run dir,
    the metrics, the trunk's state and what the run printed."""
    run_dir = tmp_path_factory.mktemp("branched")
    saved = [torch.load(folder / STATE_FILE, weights_only=True) for folder in _checkpoints(first_run[0], "final")]
    state = next(state for state in saved if state["epoch"] == 1)  # the first run's (the second one's is epoch 2)
    state = state | {"candidate": "none", "epochs": 4, "history": [dict(state["history"][0], candidate="none")]}
    save_checkpoint(run_dir / "trunk" / STATE_FILE, state)
    job = _job(teacher_file, WINNER)
    job["final"]["recipe"]["epochs"] = 4
    job["branch"] = {"trunk": "none", "at": 0.25, "checkpoint": str(run_dir / "trunk")}
    _write_winner(run_dir, job)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        metrics = run_final(str(run_dir), baseline=None)
    return run_dir, metrics, state, out.getvalue() + err.getvalue()


@pytest.mark.slow
def test_winner_continues_the_trunk_after_its_branch_epoch(branched):
    run_dir, metrics, trunk, _ = branched
    assert metrics["continued_from"] == {
        "source": "search trunk",
        "folder": str(run_dir / "trunk"),
        "candidate": "none",
        "epoch": 1,
    }
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 4 and metrics["restarts"] == 0
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet").set_index("epoch")
    assert list(rows.index) == [1, 2, 3, 4]
    assert list(rows["candidate"]) == ["none", WINNER, WINNER, WINNER]
    assert rows.loc[1, "train_loss"] == trunk["history"][0]["train_loss"]
    # epochs 2 and 3 are not validated (the first validation is after epoch VALIDATE_EVERY = 10), the last one is
    assert rows.loc[[2, 3], "val_acc"].isna().all() and rows.loc[[2, 3], "val_loss"].isna().all()
    assert 0.0 <= rows.loc[4, "val_acc"] <= 1.0 and metrics["val_acc"] == rows.loc[4, "val_acc"]
    # the trunk's schedule is re-anchored on 4 epochs: epoch 2 starts a quarter down the cosine
    assert rows.loc[2, "lr"] == pytest.approx(LR * (1 + math.cos(math.pi / 4)) / 2)
    # 3 quick epochs: within CHECKPOINT_EVERY_S, so only the last epoch is checkpointed
    assert len(_checkpoints(run_dir, "final")) == 1


@pytest.fixture(scope="module")
def restarted(teacher_file, ray_up, tmp_path_factory):
    """A 5-epoch winner whose rank-1 worker process dies in its third epoch (once), with ``max_failures: 1``, a
    checkpoint every epoch and a validation every 2 epochs."""
    run_dir = tmp_path_factory.mktemp("restarted")
    job = _job(teacher_file, WINNER)
    job["final"]["recipe"]["epochs"] = 5
    job["max_failures"] = 1
    _write_winner(run_dir, job)

    died = str(run_dir / "died")
    snapshot = str(run_dir / "final" / "ray" / "final" / "checkpoint_manager_snapshot.json")

    def dies_once(config):
        import json
        import os
        import time
        from pathlib import Path

        import ray.train

        from daq_search import train as worker_train

        rank = ray.train.get_context().get_world_rank()
        real, calls = worker_train.run_epoch, []

        def run_epoch(*args, **kwargs):
            calls.append(1)
            if rank == 1 and len(calls) == 3 and not Path(died).exists():
                Path(died).touch()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # until Ray Train has registered a checkpoint to restart from
                    try:
                        if json.loads(Path(snapshot).read_text()).get("latest_checkpoint_result") is not None:
                            break
                    except (OSError, ValueError):  # not written yet, or being replaced
                        pass
                    time.sleep(0.5)
                time.sleep(4)  # the controller polls every 2 s: epoch 2's checkpoint too, unless it is starved
                os._exit(1)
            return real(*args, **kwargs)

        worker_train.run_epoch = run_epoch
        return worker_train.train_fn_per_worker(config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "train_fn_per_worker", dies_once)
        patch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)
        patch.setattr(train, "VALIDATE_EVERY", 2)
        patch.setattr(train, "VALIDATION_SHARE", 1e9)  # however long a validation takes
        metrics = run_final(str(run_dir), baseline=None)
    return run_dir, metrics


@pytest.mark.slow
def test_a_lost_worker_restarts_from_the_last_checkpoint(restarted):
    run_dir, metrics = restarted
    assert (run_dir / "died").is_file()
    # epoch 1's checkpoint is registered before the loss, epoch 2's too unless Ray Train's controller is starved
    assert metrics["restarts"] == 1 and metrics["restored_from_epochs"] in ([1], [2])
    assert metrics["resumed_from_epoch"] == metrics["restored_from_epochs"][0]
    assert metrics["replica_checksums"][0] == metrics["replica_checksums"][1]
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    assert list(rows["epoch"]) == [1, 2, 3, 4, 5]  # complete, no epoch twice
    assert list(rows["val_acc"].isna()) == [True, False, True, False, False]


@pytest.mark.slow
def test_a_healthy_run_prints_progress_lines_not_epoch_lines_or_tracebacks(branched):
    run_dir, _, _, printed = branched
    progress = [line for line in printed.splitlines() if " epoch " in line]
    # 3 epochs to train: a line after each (every tenth, rounded up to whole epochs), each with an ETA
    assert [line.split(" epoch ")[1].split(" ")[0] for line in progress] == ["2/4", "3/4", "4/4"]
    assert all("ETA" in line for line in progress) and "Traceback" not in printed
    logged = (run_dir / "final" / "ray.log").read_text()
    assert "final epoch 2/4: loss" in logged and "final epoch 4/4: loss" in logged


def test_other_finalists_run_beside_the_winner_once_each_and_the_baseline_only_where_it_differs():
    planned = _planned_runs("f", WINNER, "none", continues_trunk=False, finalists=["trivialaugment", WINNER, "none"])
    assert planned == [("f", WINNER), ("f-finalist-1", "trivialaugment"), ("f-baseline", "none")]
    planned = _planned_runs("f", WINNER, "none", continues_trunk=True, finalists=["none", "none"])
    assert planned == [("f", WINNER), ("f-finalist-1", "none"), ("f-baseline", "none")]  # trunk-then-none differs


@pytest.mark.parametrize(
    ("vals", "shipped"),
    [
        ((0.6, 0.7, 0.65), "f-finalist-1"),
        ((0.7, 0.7, 0.7), "f"),
        ((0.6, 0.6, 0.65), "f-baseline"),
        ((0.6, None, 0.5), "f"),
    ],
)
def test_the_finalist_with_the_highest_validation_ships_ties_to_the_earlier(any_teacher_file, vals, shipped):
    job = JobSpec.model_validate({**_job(any_teacher_file, WINNER), "name": "tiny"})
    runs = [("f", WINNER), ("f-finalist-1", "trivialaugment"), ("f-baseline", "none")]
    tests = {"f": 0.61, "f-finalist-1": 0.64, "f-baseline": 0.55}
    outcomes = {run: _outcome(tests[run], val) for (run, _), val in zip(runs, vals, strict=True)}
    metrics = train._summarise(job, "f", WINNER, "none", runs, outcomes, 2, False, "s", False)
    candidates = dict(runs)
    assert (metrics["shipped_run"], metrics["candidate"]) == (shipped, candidates[shipped])
    assert (metrics["student_test_acc"], metrics["val_acc"]) == (tests[shipped], dict(zip(tests, vals))[shipped])
    assert [(f["run"], f["candidate"], f["student_test_acc"]) for f in metrics["finalists"]] == [
        ("f-finalist-1", "trivialaugment", 0.64)
    ]
    assert metrics["search_winner"]["difference_pp"] == pytest.approx(6.0)  # the search's winner against the baseline
    assert metrics["finalists"][0]["difference_pp"] == pytest.approx(9.0)
    assert metrics["difference_pp"] == pytest.approx(100 * (tests[shipped] - 0.55))  # what ships against it
    se = 100 * math.hypot(*(math.sqrt(a * (1 - a) / 400) for a in (tests[shipped], 0.55)))
    assert metrics["difference_se_pp"] == pytest.approx(se)
    lines = train._summary_lines(metrics)
    gain = f"shipped {candidates[shipped]} - baseline none = {metrics['difference_pp']:+.2f} pp"
    assert any(line.startswith(gain) for line in lines) == (shipped != "f-baseline")
    assert lines[1:4] == [
        f"winner {WINNER}: test acc 61.00 % (+6.00 pp over the baseline), validation {train._percent(vals[0])}",
        f"finalist trivialaugment: test acc 64.00 % (+9.00 pp over the baseline), validation {train._percent(vals[1])}",
        f"baseline none: test acc 55.00 %, validation {train._percent(vals[2])}",
    ]
    whose = {
        "f": f"winner's ({WINNER})",
        "f-finalist-1": "finalist's (trivialaugment)",
        "f-baseline": "baseline's (none)",
    }
    assert lines[4].startswith(f"{ARTIFACT_FILE}: the {whose[shipped]} model")


def test_run_final_trains_the_winner_files_finalists_and_ships_the_best_on_validation(
    tmp_path, teacher_file, monkeypatch
):
    run_dir = tmp_path / "run"
    _write_winner(run_dir, {**_job(teacher_file, WINNER), "finalists": ["trivialaugment"]})
    planned = []

    def finished_runs(fits, together):
        planned.extend((fit.args[6], fit.args[1]) for fit in fits)  # each run's name and candidate
        results = []
        for i, val_acc in enumerate((0.5, 0.7, 0.6)):
            folder = tmp_path / f"run{i}"
            folder.mkdir()
            (folder / ARTIFACT_FILE).write_bytes(str(i).encode())
            results.append((_outcome(0.6, val_acc), _FolderArtifact(folder)))
        return results

    monkeypatch.setattr(train, "_run_all", finished_runs)
    monkeypatch.setattr(train, "ray_session", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "routed_worker_logs", lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(train, "_fits_together", lambda *args: False)
    metrics = run_final(str(run_dir))
    assert planned == [("final", WINNER), ("final-finalist-1", "trivialaugment"), ("final-baseline", "none")]
    assert (metrics["shipped_run"], metrics["candidate"]) == ("final-finalist-1", "trivialaugment")
    assert (run_dir / "final" / ARTIFACT_FILE).read_bytes() == b"1"
