"""Results and artifacts are never half-written, and a damaged one is one line: results tables, the final
training's outputs, CIFAR pickles and checkpoints."""

import codecs
import hashlib
import io
import json
import pickle
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from numpy._core import multiarray as _np_multiarray

from daq_search import results, train
from daq_search.checkpoints import load_state
from daq_search.cli import main
from daq_search.data import DataSpec, _read_numpy_pickle, load_data
from daq_search.errors import DaqSearchError
from daq_search.models import create_for
from daq_search.results import EPOCHS_FILE, REPORTED_METRICS, TRIALS_FILE, TrialTable, read_epochs, read_trials

KNOBS = {"policy": "str", "mix": "str"}


def new_table(run_dir: Path) -> TrialTable:
    return TrialTable(run_dir, max_epochs=3, knob_types=KNOBS, objective="score", mode="min")


def small_run(run_dir: Path) -> TrialTable:
    table = new_table(run_dir)
    for trial_id, scores in (("t1", [0.9, 0.4]), ("t2", [0.7])):
        table.start(trial_id, "none", {"policy": "none", "mix": "none"})
        for epoch, score in enumerate(scores, start=1):
            table.add_epoch(trial_id, epoch, {**{m: 1.0 for m in REPORTED_METRICS}, "score": score})
        table.end(trial_id)
    table.write()
    return table


def results_error(capsys, run_dir: Path) -> str:
    assert main(["results", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daq-search: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: b"", "not a readable Parquet file"),
        (lambda data: data[: len(data) // 2], "not a readable Parquet file"),
        (lambda data: data[:-3], "not a readable Parquet file"),
        (lambda data: b"PAR1" + bytes(100) + b"PAR1", "not a readable Parquet file"),
    ],
)
def test_a_truncated_or_empty_trials_file_is_one_line(tmp_path, capsys, damage, message):
    small_run(tmp_path)
    path = tmp_path / TRIALS_FILE
    path.write_bytes(damage(path.read_bytes()))
    assert f"{path}: {message}" in results_error(capsys, tmp_path)


def test_a_bit_flip_in_a_data_page_is_found_by_its_checksum(tmp_path, capsys):
    small_run(tmp_path)
    path = tmp_path / TRIALS_FILE
    data = bytearray(path.read_bytes())
    data[len(b"PAR1") + 40] ^= 0x10  # inside the first column chunk's first data page
    path.write_bytes(bytes(data))
    assert "not a readable Parquet file" in results_error(capsys, tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("mode", b"m\xa9n"), ("mode", b"mhn"), ("objective", b"scxre"), ("max_epochs", b"3\xff"), ("max_epochs", b"x")],
)
def test_damaged_run_metadata_is_one_line_naming_the_file(tmp_path, capsys, key, value):
    small_run(tmp_path)
    path = tmp_path / TRIALS_FILE
    table = pq.read_table(path)
    meta = {**table.schema.metadata, f"daq_search.{key}".encode(): value}
    pq.write_table(table.replace_schema_metadata(meta), path)
    shown = value.decode(errors="replace")
    assert f"{path}: damaged metadata daq_search.{key} = {shown!r}" in results_error(capsys, tmp_path)


def test_no_bit_flip_gives_a_traceback(tmp_path, capsys, monkeypatch):
    # fixed start and end times, so the file and the flipped positions are the same on every run
    monkeypatch.setattr(results, "_now", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    small_run(tmp_path)
    path = tmp_path / TRIALS_FILE
    original = path.read_bytes()
    for position in range(0, len(original), max(1, len(original) // 150)):
        data = bytearray(original)
        data[position] ^= 0x10
        path.write_bytes(bytes(data))
        status = main(["results", str(tmp_path)])  # any other exception fails the test
        err = capsys.readouterr().err.strip()
        assert status == 0 or (status == 2 and "\n" not in err), (position, err)


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"x": [1, 2]}), "no column 'trial_id', so not a daq-search results file"),
        (
            pa.table({"trial_id": [1], "candidate": ["a"], "status": ["completed"], "epochs": [1]}),
            "column 'trial_id' is int64, expected string",
        ),
    ],
)
def test_a_foreign_parquet_file_is_one_line(tmp_path, capsys, table, message):
    pq.write_table(table, tmp_path / TRIALS_FILE)
    assert f"{tmp_path / TRIALS_FILE}: {message}" in results_error(capsys, tmp_path)


def test_reading_while_a_search_rewrites_the_files_reads_one_whole_version(tmp_path):
    """A reader (``daq-search results`` during a search) sees either the smaller or the larger run, never a mix:
    a reader that opened the file twice took one file's footer with the other's pages (CI failure on a995b31)."""
    small = small_run(tmp_path)
    large = new_table(tmp_path)
    for trial in range(40):
        large.start(f"t{trial}", "none", {"policy": "none" * trial, "mix": "none"})
        for epoch in range(1, 4):
            large.add_epoch(f"t{trial}", epoch, {m: trial + epoch / 10 for m in REPORTED_METRICS})
    writing = threading.Event()
    writing.set()

    def rewrite():
        while writing.is_set():
            large.write()
            small.write()

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        sizes = {(len(read_trials(tmp_path)), len(read_epochs(tmp_path))) for _ in range(300)}
    finally:
        writing.clear()
        writer.join()
    assert {trials for trials, _ in sizes} <= {2, 40}
    assert {epochs for _, epochs in sizes} <= {3, 120}


def test_a_kill_between_the_two_writes_is_levelled_on_load(tmp_path):
    table = small_run(tmp_path)
    old_trials = (tmp_path / TRIALS_FILE).read_bytes()
    table.add_epoch("t2", 2, {**{m: 1.0 for m in REPORTED_METRICS}, "score": 0.1})
    table.write()
    (tmp_path / TRIALS_FILE).write_bytes(old_trials)  # killed after the epochs file, before the trials file
    (tmp_path / f".{TRIALS_FILE}.4242.tmp").write_bytes(b"")  # and the empty temp file that kill left
    loaded = new_table(tmp_path)
    loaded.load()
    row = loaded.trials["t2"]
    assert (row["epochs"], row["score_last"], row["score_best"]) == (2, 0.1, 0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [EPOCHS_FILE, TRIALS_FILE]


def test_trials_ahead_of_their_epochs_are_brought_back_to_them(tmp_path):
    small_run(tmp_path)
    epochs = pq.read_table(tmp_path / EPOCHS_FILE)
    keep = [i for i, (t, e) in enumerate(zip(epochs["trial_id"].to_pylist(), epochs["epoch"].to_pylist())) if t == "t2"]
    pq.write_table(epochs.take(keep), tmp_path / EPOCHS_FILE)  # the old writer's order: trials first, then killed
    loaded = new_table(tmp_path)
    loaded.load()
    assert loaded.trials["t1"]["epochs"] == 0 and loaded.trials["t1"]["score_best"] is None
    assert loaded.trials["t2"]["epochs"] == 1 and loaded.trials["t2"]["score_best"] == 0.7
    loaded.write()
    assert read_trials(tmp_path).set_index("trial_id").loc["t1", "epochs"] == 0


# --- the final training's outputs ------------------------------------------------------------------------------


def old_outputs(out_dir: Path) -> dict[str, bytes]:
    out_dir.mkdir(parents=True, exist_ok=True)
    old = {train.METRICS_FILE: b'{"old": true}\n', train.ARTIFACT_FILE: b"old artifact", train.EPOCHS_FILE: b"old"}
    for name, content in old.items():
        (out_dir / name).write_bytes(content)
    return old


def test_final_outputs_are_written_together_with_the_artifacts_hash(tmp_path):
    out_dir, artifact = tmp_path / "final", tmp_path / "student_int.pt"
    artifact.write_bytes(b"new artifact")
    old_outputs(out_dir)
    train._write_outputs(out_dir, {"test_acc": 0.5}, pd.DataFrame({"epoch": [1]}), artifact)
    metrics = json.loads((out_dir / train.METRICS_FILE).read_text())
    assert metrics["artifact_sha256"] == hashlib.sha256(b"new artifact").hexdigest()
    assert (out_dir / train.ARTIFACT_FILE).read_bytes() == b"new artifact"
    assert pd.read_parquet(out_dir / train.EPOCHS_FILE)["epoch"].tolist() == [1]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [train.METRICS_FILE, train.ARTIFACT_FILE, "epochs.parquet"]
    )


def test_a_kill_while_writing_the_artifact_never_leaves_old_metrics_beside_it(tmp_path, monkeypatch):
    out_dir, artifact = tmp_path / "final", tmp_path / "student_int.pt"
    artifact.write_bytes(b"new artifact")
    old = old_outputs(out_dir)

    def killed_copy(src, dst):
        Path(dst).write_bytes(b"new art")
        raise KeyboardInterrupt

    monkeypatch.setattr(train.shutil, "copyfile", killed_copy)
    with pytest.raises(KeyboardInterrupt):
        train._write_outputs(out_dir, {"test_acc": 0.5}, pd.DataFrame({"epoch": [1]}), artifact)
    assert not (out_dir / train.METRICS_FILE).exists()  # no metrics that would describe the wrong artifact
    assert (out_dir / train.ARTIFACT_FILE).read_bytes() == old[train.ARTIFACT_FILE]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([train.ARTIFACT_FILE, train.EPOCHS_FILE])


def test_train_checks_the_teacher_in_the_driver_before_ray(tmp_path, capsys, monkeypatch):
    import yaml

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(train, "ray_session", no_ray)
    root = Path(__file__).resolve().parent.parent
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"\x80\x02 not a checkpoint")
    job = {
        "name": "w",
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "checkpoint": str(teacher)},
        "student": {"model": "tiny_cnn"},
        "search_space": str(root / "search_spaces" / "default.yaml"),
        "candidate": "none",
        "final": {"workers": 2, "recipe": {"epochs": 1, "batch_size": 64}},
    }
    winner = tmp_path / "winner.yaml"
    winner.write_text(yaml.safe_dump(job))
    assert main(["train", str(winner)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"daq-search: error: teacher.checkpoint: {teacher} is not a readable PyTorch checkpoint")
    assert "\n" not in err
    torch.save({"model": {}}, teacher)
    assert main(["train", str(winner)]) == 2
    assert "does not fit teacher.model tiny_cnn" in capsys.readouterr().err
    bundle = load_data(DataSpec("digits", train_per_class=20, val_per_class=5))
    torch.save({"model": create_for("tiny_cnn", 1.0, bundle).state_dict()}, teacher)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    assert main(["train", str(winner), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"--address: nothing accepts connections at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "final").exists()
    with pytest.raises(AssertionError, match="Ray was started"):  # a teacher that fits passes the driver's checks
        main(["train", str(winner)])


# --- checkpoints and CIFAR pickles ---------------------------------------------------------------------------------


class _CreatesFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_with_code_is_refused_without_unsafe_advice(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model": _CreatesFile(marker)}, path)
    with pytest.raises(DaqSearchError) as caught:
        load_state(path, "teacher.checkpoint")
    text = str(caught.value)
    assert "weights_only" not in text and "\n" not in text and "objects other than tensors" in text
    assert not marker.exists()


class _Calls:
    """Pickles as a call of ``function(*args)`` when unpickled."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def write_cifar_with(root: Path, payload: bytes) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(good)
    (folder / "data_batch_1").write_bytes(payload)
    return folder / "data_batch_1"


@pytest.mark.parametrize(
    "data, reason",
    [
        (_Calls(np.ndarray, (2**40,)), "does not fit in a file"),  # 1 TiB asked for in a few bytes
        (_Calls(_np_multiarray._reconstruct, np.ndarray, (2**40,), b"b"), "does not fit in a file"),
        (_Calls(codecs.encode, "x", "no-such-codec"), "no-such-codec"),  # LookupError
    ],
)
def test_a_hostile_cifar_pickle_is_one_line(tmp_path, data, reason):
    path = write_cifar_with(tmp_path, pickle.dumps({"data": data, "labels": []}, protocol=2))
    with pytest.raises(DaqSearchError) as caught:
        load_data(DataSpec("cifar10", root=str(tmp_path)))
    text = str(caught.value)
    assert text.startswith(f"data.root: {path} is not a readable CIFAR-10 pickle") and reason in text
    assert "\n" not in text


def test_a_pickle_raising_attribute_error_is_one_line(tmp_path):
    write_cifar_with(tmp_path, b"\x80\x02]}(X\x01\x00\x00\x00aK\x01ub.")  # BUILD on a list
    with pytest.raises(DaqSearchError, match=r"is not a readable CIFAR-10 pickle \(.*__dict__"):
        load_data(DataSpec("cifar10", root=str(tmp_path)))


def test_a_cifar_pickle_that_would_create_a_file_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    write_cifar_with(tmp_path, pickle.dumps({"data": _CreatesFile(marker), "labels": []}, protocol=2))
    with pytest.raises(DaqSearchError, match="refusing to load global"):
        load_data(DataSpec("cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_arrays_that_fit_the_file_still_load():
    value = {"a": np.arange(12, dtype=np.int64).reshape(3, 4)}
    assert np.array_equal(_read_numpy_pickle(io.BytesIO(pickle.dumps(value, protocol=2)))["a"], value["a"])
    with pytest.raises(pickle.UnpicklingError, match="an array of 800 bytes does not fit in a file of 10 bytes"):
        _read_numpy_pickle(io.BytesIO(pickle.dumps(_Calls(np.ndarray, (100,)), protocol=2)), limit=10)
