"""The final distributed training: winner-file errors, DDP on 2 CPU workers, resume, baseline, integer artifact."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from daq_search.config import DataConfig, TeacherConfig, RecipeConfig
from daq_search.data import load_data
from daq_search.errors import DaqSearchError
from daq_search.kd import eval_loader, evaluate, save_checkpoint, train_teacher
from daq_search.runtime import ray_session
from daq_search.train import ARTIFACT_FILE, STATE_FILE, load_int_artifact, run_final

REPO = Path(__file__).resolve().parents[1]
WINNER = "randaugment(magnitude=5,num_ops=1)+cutmix(alpha=1.0)"
LR = 0.01


def _job(teacher_path: Path | None, candidate: str | None) -> dict:
    job = {
        "name": "tiny",
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "width": 0.5, "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.01}},
        "student": {"model": "tiny_cnn", "width": 0.5, "init": "teacher"},
        "quant": {"method": "lsq", "wbits": 2, "abits": 2},
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
    """A tiny FP teacher trained for 3 epochs on 200 digits, saved as a daq-search teacher checkpoint."""
    job = _job(None, None)
    data, teacher = DataConfig(**job["data"]), TeacherConfig(**job["teacher"])
    model, _ = train_teacher(teacher, load_data(data.spec()), log=lambda _: None)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, {"model": model.state_dict()})
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


def test_invalid_winner_file_names_the_field(tmp_path, teacher_file):
    job = _job(teacher_file, WINNER)
    job["final"]["workers"] = 0
    path = _write_winner(tmp_path, job)
    with pytest.raises(DaqSearchError, match=r"winner.yaml: final.workers: .*greater than or equal to 1") as err:
        run_final(str(path))
    assert "\n" not in str(err.value)
    path.write_text("name: [unclosed\n")
    with pytest.raises(DaqSearchError, match="not valid YAML"):
        run_final(str(tmp_path))


def test_winner_file_without_candidate_is_rejected(tmp_path, teacher_file):
    path = _write_winner(tmp_path, _job(teacher_file, None))
    with pytest.raises(DaqSearchError, match=r"winner.yaml: candidate: not set"):
        run_final(str(path))


def test_winner_file_without_teacher_checkpoint_is_rejected(tmp_path):
    path = _write_winner(tmp_path, _job(None, WINNER))
    with pytest.raises(DaqSearchError, match=r"winner.yaml: teacher.checkpoint: not set"):
        run_final(str(path))


def test_bad_overrides_are_rejected_before_ray(tmp_path, teacher_file):
    path = _write_winner(tmp_path, _job(teacher_file, WINNER))
    with pytest.raises(DaqSearchError, match=r"^baseline: candidate 'nonsense'"):
        run_final(str(path), baseline="nonsense")
    with pytest.raises(DaqSearchError, match=r"^epochs: 0 is not allowed"):
        run_final(str(path), epochs=0)
    with pytest.raises(DaqSearchError, match=r"^name: 'a/b' is not allowed"):
        run_final(str(path), name="a/b")


def test_corrupt_artifact_is_one_line_error(tmp_path):
    bad = tmp_path / "student_int.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DaqSearchError, match="artifact: .* is not a readable PyTorch checkpoint"):
        load_int_artifact(bad)
    torch.save({"state": {}}, bad)
    with pytest.raises(DaqSearchError, match="needs 'arch' and 'state'"):
        load_int_artifact(bad)


@pytest.fixture(scope="module")
def ray_up():
    """One embedded Ray for all Ray tests of this module (run_final reuses a running Ray)."""
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, teacher_file, ray_up):
    """Winner for 1 epoch on 2 workers plus the ``none`` baseline; returns (run dir, metrics, log lines)."""
    run_dir = tmp_path_factory.mktemp("run")
    _write_winner(run_dir, _job(teacher_file, WINNER))
    lines: list[str] = []
    metrics = run_final(str(run_dir), epochs=1, log=lines.append)
    return run_dir, metrics, lines


@pytest.mark.slow
def test_two_worker_ddp_keeps_replicas_equal_and_reports_baseline(first_run):
    run_dir, metrics, lines = first_run
    assert metrics == json.loads((run_dir / "final" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["epochs"] == 1 and metrics["candidate"] == WINNER
    checksums = metrics["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert 0.0 <= metrics["student_test_acc"] <= 1.0 and metrics["teacher_test_acc"] > 0.5
    assert metrics["baseline"]["candidate"] == "none"
    expected = 100 * (metrics["student_test_acc"] - metrics["baseline"]["student_test_acc"])
    assert metrics["difference_pp"] == pytest.approx(expected)
    assert any("winner - baseline" in line for line in lines)
    epochs = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    assert sorted(epochs["run"]) == ["final", "final-baseline"]
    assert set(epochs["candidate"]) == {WINNER, "none"}
    assert (epochs["lr"] == LR).all() and (epochs["images_per_s"] > 0).all()


@pytest.mark.slow
def test_integer_artifact_reproduces_test_accuracy(first_run):
    run_dir, metrics, _ = first_run
    model = load_int_artifact(run_dir / "final" / ARTIFACT_FILE)
    bundle = load_data(DataConfig(**_job(None, None)["data"]).spec())
    acc, loss = evaluate(model, eval_loader(bundle.test, bundle, 512))
    assert acc == metrics["student_test_acc"]
    assert loss == pytest.approx(metrics["student_test_loss"], rel=1e-5)


@pytest.mark.slow
def test_rerun_continues_from_last_checkpoint(first_run):
    run_dir, first, _ = first_run
    before = pd.read_parquet(run_dir / "final" / "epochs.parquet")
    metrics = run_final(str(run_dir), epochs=2, baseline=None, log=lambda _: None)
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs"] == 2 and metrics["baseline"] is None
    rows = pd.read_parquet(run_dir / "final" / "epochs.parquet").set_index("epoch")
    assert list(rows.index) == [1, 2]
    # epoch 1 comes from the checkpoint: its measured throughput is the first run's, not a re-measurement
    first_row = before[before["run"] == "final"].iloc[0]
    assert rows.loc[1, "images_per_s"] == first_row["images_per_s"]
    assert rows.loc[1, "train_loss"] == first_row["train_loss"]
    # the cosine schedule is re-anchored on 2 epochs: epoch 2 starts half-way, lr = LR * (1 + cos(pi / 2)) / 2
    assert rows.loc[2, "lr"] == pytest.approx(LR * (1 + math.cos(math.pi / 2)) / 2)
    assert metrics["replica_checksums"][0] == metrics["replica_checksums"][1]


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error(first_run):
    run_dir, _, _ = first_run
    states = sorted((run_dir / "final" / "ray" / "final").glob(f"checkpoint_*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    states[-1].write_bytes(b"garbage")
    with pytest.raises(DaqSearchError, match=r"checkpoint of run 'final': .* is not a readable PyTorch checkpoint"):
        run_final(str(run_dir), epochs=3, baseline=None, log=lambda _: None)
