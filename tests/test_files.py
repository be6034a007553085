"""The shared file rules (daq_search/files.py) and the checks made before any Ray work: job files, run names,
storage, ``--address``, ``--resume`` and ``submit``. Each bad input is one line and exit status 2, and leaves
nothing behind."""

import socket
import time
from pathlib import Path

import pytest
import yaml

from daq_search import files, runtime
from daq_search.cli import main
from daq_search.config import MAX_EPOCHS, MAX_NUM_SAMPLES, load_job
from daq_search.errors import DaqSearchError

ROOT = Path(__file__).resolve().parent.parent
JOB = {
    "name": "t",
    "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
    "teacher": {"model": "tiny_cnn"},
    "student": {"model": "tiny_cnn"},
    "search_space": str(ROOT / "search_spaces" / "default.yaml"),
    "scorer": {"subset": 40, "batch_size": 40},
}


def write_job(folder: Path, text: str | None = None, **changes) -> Path:
    path = folder / "job.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**JOB, "storage": str(folder / "runs"), **changes}))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("daq-search: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err
    return err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- the one YAML reader ---------------------------------------------------------------------------------------


def test_a_job_with_a_duplicate_key_is_refused(tmp_path, capsys):
    text = yaml.safe_dump(JOB)
    path = write_job(tmp_path, text + "name: again\n")
    line = len(text.splitlines()) + 1
    err = one_line_error(capsys, ["search", str(path)])
    assert err.endswith(
        f"{path}: line {line}, column 1: malformed YAML: duplicate key 'name'; allowed: valid YAML, each key once, no aliases"
    )


def test_a_space_file_with_a_duplicate_key_is_refused_by_the_same_reader(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: s\ncandidates: [none]\ncandidates: [none]\n")
    with pytest.raises(DaqSearchError, match=r"line 3, column 1: malformed YAML: duplicate key 'candidates'"):
        load_job(write_job(tmp_path, search_space=str(path)))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"name: t\nstorage: \xff\xfe runs\n", "not UTF-8 text (byte 17); allowed: a job YAML file"),
        (bytes(range(256)) * 4, "not UTF-8 text (byte 128); allowed: a job YAML file"),
        (b"", "expected a YAML mapping of job fields at the top level"),
        (b"\x00\x01name", "malformed YAML: "),
    ],
)
def test_a_job_file_that_is_not_text_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    assert message in one_line_error(capsys, ["search", str(path)])


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    path = write_job(tmp_path, "\n".join(lines) + "\nname: t\n")
    assert path.stat().st_size < 400  # nine levels of nine: 9**9 = 387 million strings when expanded
    err = one_line_error(capsys, ["search", str(path)])
    assert "aliases (*name) are not allowed" in err and len(err) < 300


def test_what_an_error_echoes_is_capped(tmp_path, capsys):
    err = one_line_error(capsys, ["search", str(write_job(tmp_path, name="x" * 100_000))])
    assert "name:" in err and len(err) < 600


def test_a_job_file_too_large_is_refused_unread(tmp_path, capsys):
    path = write_job(tmp_path, "# " + "x" * files.MAX_YAML_BYTES + "\nname: t\n")
    assert f"larger than {files.MAX_YAML_BYTES} bytes" in one_line_error(capsys, ["search", str(path)])


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"trial": {"epochs": True}}, "trial.epochs: Input should be a valid integer (got True)"),
        ({"trial": {"epochs": 2.0}}, "trial.epochs: Input should be a valid integer (got 2.0)"),
        ({"trial": {"epochs": MAX_EPOCHS + 1}}, f"trial.epochs: Input should be less than or equal to {MAX_EPOCHS}"),
        (
            {"searcher": {"num_samples": MAX_NUM_SAMPLES + 1}},
            f"searcher.num_samples: Input should be less than or equal to {MAX_NUM_SAMPLES}",
        ),
        ({"max_concurrent_trials": False}, "max_concurrent_trials: Input should be a valid integer (got False)"),
    ],
)
def test_integers_are_strict_and_bounded(tmp_path, capsys, changes, field):
    assert field in one_line_error(capsys, ["search", str(write_job(tmp_path, **changes))])


def test_floats_still_read_yaml_exponents(tmp_path):
    job = load_job(write_job(tmp_path, trial={"lr": "1e-3"}))  # PyYAML reads `1e-3` as a string
    assert job.trial.lr == 0.001


# --- the one run-name rule -------------------------------------------------------------------------------------

BAD_NAMES = [".", "..", "a/b", "ä", "x" * 101, "", "a b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_run_name_is_refused_everywhere(tmp_path, capsys, name):
    allowed = f"allowed: {files.RUN_NAME_ALLOWED}"
    assert allowed in one_line_error(capsys, ["search", str(write_job(tmp_path, name=name))])
    good = str(write_job(tmp_path))
    for argv in (["search", good], ["score", good], ["submit", good, "--address", "http://127.0.0.1:1"]):
        err = one_line_error(capsys, [*argv, "--name", name])
        assert err.startswith("daq-search: error: --name: ") and allowed in err
    winner = write_job(tmp_path, candidate="none", teacher={"model": "tiny_cnn", "checkpoint": str(tmp_path / "t.pt")})
    (tmp_path / "t.pt").write_bytes(b"unused")
    assert allowed in one_line_error(capsys, ["train", str(winner), "--name", name])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "final").exists()


@pytest.mark.parametrize("name", ["a", "run-1.b_2", "x" * 100, "..a", ".hidden"])
def test_good_run_names_pass(name):
    assert files.check_run_name(name) == name


# --- atomic writes ---------------------------------------------------------------------------------------------


def test_an_interrupted_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    files.atomic_write_text(path, "old")

    def half_then_killed(tmp: Path) -> None:
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, half_then_killed)
    assert path.read_text() == "old" and listing(tmp_path) == ["f.txt"]


def test_stale_temps_are_removed_and_nothing_else(tmp_path):
    path = tmp_path / "trials.parquet"
    path.write_text("keep")
    stale = [tmp_path / ".trials.parquet.123.tmp", files.temp_path(path)]
    for other in stale:
        other.write_text("")
    (tmp_path / ".other.parquet.1.tmp").write_text("keep")
    files.remove_stale_temps(path)
    assert listing(tmp_path) == [".other.parquet.1.tmp", "trials.parquet"]


# --- storage and --address, checked before any work ------------------------------------------------------------


def test_storage_that_is_a_file_or_under_one_is_refused_first(tmp_path, capsys):
    job = str(write_job(tmp_path))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for storage in (blocker, blocker / "runs"):
        err = one_line_error(capsys, ["search", job, "--storage", str(storage)])
        assert f"storage: {storage}: {blocker} is a file, not a folder; allowed: a writable folder" in err
    assert listing(tmp_path) == ["blocker", "job.yaml"]


def test_read_only_storage_is_refused_first(tmp_path, capsys, monkeypatch):
    # chmod does not stop root, so the read-only file system is simulated where the probe file is created
    real_touch = Path.touch

    def read_only_touch(self, *args, **kwargs):
        if self.name.startswith(".write-probe."):
            raise OSError(30, "Read-only file system", str(self))
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", read_only_touch)
    job = str(write_job(tmp_path))
    storage = tmp_path / "ro"
    storage.mkdir()
    err = one_line_error(capsys, ["search", job, "--storage", str(storage)])
    assert err.endswith(
        f"storage: {storage}: cannot write in {storage} (Read-only file system); allowed: a writable folder"
    )
    err = one_line_error(capsys, ["score", job, "--storage", str(storage / "new" / "deeper")])
    assert f"cannot write in {storage} (Read-only file system)" in err
    assert listing(storage) == []


def test_a_writable_storage_check_leaves_nothing(tmp_path):
    assert files.check_writable_folder(tmp_path / "a" / "b", "storage") == tmp_path / "a" / "b"
    assert listing(tmp_path) == []


def test_an_address_where_nothing_listens_fails_fast_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    port = free_port()
    job = str(write_job(tmp_path))
    start = time.monotonic()
    err = one_line_error(capsys, ["search", job, "--address", f"127.0.0.1:{port}"])
    assert time.monotonic() - start < 60  # bounded by the probe's 5 s, not Ray's minutes of retries
    assert f"--address: nothing accepts connections at 127.0.0.1:{port}" in err
    assert listing(tmp_path) == ["job.yaml"]  # no run folder, no job.yaml, no teacher
    assert "is not HOST:PORT" in one_line_error(capsys, ["search", job, "--address", "nonsense"])


def test_the_address_probe_reaches_a_listener(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        runtime.check_address(f"127.0.0.1:{server.getsockname()[1]}")
        runtime.check_address(f"ray://127.0.0.1:{server.getsockname()[1]}")
    runtime.check_address(None)
    runtime.check_address("auto")


# --- --resume with the job.yaml a search keeps -----------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"- not\n- a mapping\n", b"name: [unclosed\n", b"\xff\xfe"])
def test_resume_with_an_empty_or_damaged_job_yaml_is_one_line(tmp_path, content):
    from daq_search.search.plan import JOB_FILE, _check_same_job, _save_job, plan_search

    plan = plan_search(write_job(tmp_path))
    _save_job(plan)
    _check_same_job(plan)  # the saved job reads back equal
    assert listing(plan.run_dir) == [JOB_FILE]  # written through a temp file that is gone
    (plan.run_dir / JOB_FILE).write_bytes(content)
    with pytest.raises(DaqSearchError) as caught:
        _check_same_job(plan)
    assert str(caught.value).startswith(str(plan.run_dir / JOB_FILE)) and "\n" not in str(caught.value)


# --- submit -----------------------------------------------------------------------------------------------------


def test_submit_refuses_a_token_over_plain_http_to_another_host(tmp_path, capsys, monkeypatch):
    from daq_search.search import check_token_transport

    demo = str(ROOT / "jobs" / "demo.yaml")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    err = one_line_error(capsys, ["submit", demo, "--address", "http://203.0.113.9:8265", "--storage", str(tmp_path)])
    assert "RAY_AUTH_TOKEN would cross the network unencrypted" in err and "s3cret" not in err
    check_token_transport("http://203.0.113.9:8265", allow_plain_http=True)
    check_token_transport("https://203.0.113.9:8265")
    check_token_transport("http://127.0.0.1:8265")
    check_token_transport("http://localhost:8265")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    check_token_transport("http://203.0.113.9:8265")  # no token, nothing to leak


def test_submit_names_an_authentication_error_in_one_line(tmp_path, capsys, monkeypatch):
    import ray.job_submission
    from ray.exceptions import AuthenticationError

    class RefusingClient:
        def __init__(self, *args, **kwargs):
            raise AuthenticationError("Authentication failed:\ninvalid token\nmore lines")

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", RefusingClient)
    demo = str(ROOT / "jobs" / "demo.yaml")
    err = one_line_error(capsys, ["submit", demo, "--address", "http://127.0.0.1:8265", "--storage", str(tmp_path)])
    assert "--address: cannot submit to the Ray Jobs API at http://127.0.0.1:8265: " in err
