"""The `daq-search` command line: `results` (formats, plot, no Ray or torch imported), a search killed with Ctrl-C and
resumed, `train` argument plumbing, and `submit` (to a real local Ray head when its dashboard can start)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import python_path

from daq_search.cli import main
from daq_search.results import REPORTED_METRICS, TrialTable, read_epochs, read_trials

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daq_search", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": python_path(), **(env or {})},
    )


def small_run(run_dir: Path) -> None:
    table = TrialTable(run_dir, max_epochs=2, knob_types={"policy": "str", "mix": "str"}, objective="score", mode="min")
    for trial_id, scores, accuracy in (("t1", [0.9, 0.4], 0.8), ("t2", [0.7], 0.6), ("t3", [0.5, 0.6], 0.9)):
        table.start(trial_id, "none", {"policy": "none", "mix": "none"})
        for epoch, score in enumerate(scores, start=1):
            metrics = {**{m: 1.0 for m in REPORTED_METRICS}, "score": score, "val_acc": accuracy}
            table.add_epoch(trial_id, epoch, metrics)
        table.end(trial_id)
    table.write()


def test_results_formats_and_plot_without_ray_or_torch(tmp_path):
    small_run(tmp_path)
    probe = (
        "import sys, json; from daq_search.cli import main; rc = main(sys.argv[1:]); "
        "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules, 'torch': 'torch' in sys.modules}), file=sys.stderr)"
    )

    def results(*args: str) -> tuple[str, dict]:
        done = subprocess.run(
            [sys.executable, "-c", probe, "results", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": python_path()},
        )
        status = json.loads(done.stderr.strip().splitlines()[-1])
        assert status["rc"] == 0 and not status["ray"] and not status["torch"], done.stderr
        return done.stdout, status

    csv, _ = results("--format", "csv")
    back = pd.read_csv(StringIO(csv))
    assert list(back["trial_id"]) == ["t1", "t3", "t2"]  # 2 epochs first (best 0.4, then 0.5), then the pruned t2
    assert list(back["status"]) == ["completed", "completed", "pruned"]
    assert back["score_best"].tolist() == pytest.approx([0.4, 0.5, 0.7])
    records = json.loads(results("--format", "json", "--sort", "val_acc_best", "--top", "2")[0])
    assert [r["trial_id"] for r in records] == ["t3", "t1"]
    markdown = results("--format", "markdown", "--status", "pruned")[0].splitlines()
    assert len(markdown) == 3 and markdown[2].startswith("| t2 | none | pruned | 1 |")
    table, _ = results("--plot", str(tmp_path / "run.png"))
    assert table.splitlines()[0].split()[:3] == ["trial_id", "candidate", "status"]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_results_errors_are_one_line(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("daq-search: error: ")
    small_run(tmp_path)
    assert main(["results", str(tmp_path), "--sort", "nope"]) == 2
    assert "--sort: unknown column 'nope'" in capsys.readouterr().err
    assert main(["results", str(tmp_path), "--format", "xml"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def write_job(folder: Path, name: str, **changes) -> Path:
    job = {
        "name": name,
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "recipe": {"epochs": 10, "batch_size": 50, "lr": 0.01}},
        "student": {"model": "tiny_cnn"},
        "search_space": str(ROOT / "search_spaces" / "paper.yaml"),
        "scorer": {"subset": 40, "batch_size": 40},
        "trial": {"epochs": 3, "batch_size": 50},
        "searcher": {"num_samples": 4},
        "scheduler": {"enabled": False},
        "max_concurrent_trials": 1,
        "storage": str(folder / "runs"),
        **changes,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def search_under_way(run_dir: Path) -> bool:
    """A trial has reported at least one epoch (so some rows exist that an interruption must keep)."""
    try:
        return (read_trials(run_dir)["epochs"] >= 1).any()
    except Exception:  # not written yet
        return False


@pytest.mark.slow
def test_interrupted_search_resumes_without_losing_or_rerunning_trials(tmp_path):
    """Ctrl-C lands wherever the search happens to be (how many trials have finished depends on the machine's
    speed), so this asserts only what holds for any moment: every row written before the signal is kept, no trial
    finished before it is run again, a trial cut mid-way keeps its epochs, and the resumed search completes."""
    job = write_job(tmp_path, "killed", final={"finalists": 2})
    run_dir = tmp_path / "runs" / "killed"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "daq_search", "search", str(job)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path()},
    )
    try:
        wait_for(lambda: search_under_way(run_dir), 300, "a trial's first epoch", first)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        code = first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    output = (tmp_path / "first.log").read_text()
    assert code in (130, 0), output  # 0 only if the search had just finished when the signal came
    if code == 130:
        assert f"interrupted; rows so far are in {run_dir / 'trials.parquet'}; continue with --resume" in output
    before = read_trials(run_dir).set_index("trial_id")
    epochs_before = read_epochs(run_dir)
    assert len(before) >= 1 and (before["epochs"] >= 1).any()
    done_before = before[before["status"] == "completed"]

    resumed = run_cli("search", str(job), "--resume", timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = read_trials(run_dir).set_index("trial_id")
    epochs_after = read_epochs(run_dir)
    assert set(before.index) <= set(after.index) and len(after) == 4  # no trial lost, none added twice
    assert (after["status"] == "completed").all() and (after["epochs"] == 3).all()
    assert "winner: " in resumed.stdout and (run_dir / "winner.yaml").is_file()
    finalists = yaml.safe_load((run_dir / "winner.yaml").read_text())["finalists"]
    assert len(finalists) == 1 and f"finalists: {finalists[0]} (the best of the other strength tiers" in resumed.stdout
    for trial_id, row in before.iterrows():
        # every epoch row written before the signal is still there, unchanged (throughput included: not re-measured)
        old = epochs_before[epochs_before["trial_id"] == trial_id].reset_index(drop=True)
        new = epochs_after[epochs_after["trial_id"] == trial_id]
        pd.testing.assert_frame_equal(old, new[new["epoch"] <= len(old)].reset_index(drop=True))
        assert after.loc[trial_id, "started_at"] == row["started_at"]
        if trial_id in done_before.index:  # finished trials were not run again
            assert after.loc[trial_id, "ended_at"] == row["ended_at"]
            assert f"trial {trial_id} " not in resumed.stdout
        else:  # a trial cut mid-way continued in place
            assert f"trial {trial_id} resumed: " in resumed.stdout


def test_train_passes_its_options_to_run_final(tmp_path, monkeypatch):
    import daq_search.train

    calls = []

    def run_final(spec, **options):
        calls.append((spec, options))
        return {}

    monkeypatch.setattr(daq_search.train, "run_final", run_final)
    assert main(["train", "runs/demo", "--workers", "3", "--gpu", "--epochs", "4", "--baseline", "trivialaugment"]) == 0
    assert main(["train", "w.yaml", "--no-baseline", "--address", "auto", "--name", "n", "--storage", "/s"]) == 0
    assert main(["train", "w.yaml"]) == 0
    assert calls[0] == (
        "runs/demo",
        dict(workers=3, use_gpu=True, epochs=4, address=None, name=None, storage=None, baseline="trivialaugment"),
    )
    assert calls[1][1]["baseline"] is None and calls[1][1]["address"] == "auto" and calls[1][1]["storage"] == "/s"
    assert "baseline" not in calls[2][1] and calls[2][1]["use_gpu"] is None  # the spec's final section decides


def test_train_of_a_folder_without_winner_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daq-search: error: ") and "winner.yaml" in err and "\n" not in err
    assert main(["train", str(tmp_path), "--workers", "0"]) == 2
    assert "allowed: an integer >= 1" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_refuses_bad_input_before_contacting_a_cluster(tmp_path, capsys):
    outside = write_job(tmp_path, "outside")
    assert main(["submit", str(outside), "--address", "http://127.0.0.1:1"]) == 2
    assert "is outside the project folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrial: {epoch: 3}\n")
    assert main(["submit", str(bad), "--address", "http://127.0.0.1:1"]) == 2
    assert "trial.epoch: unknown key" in capsys.readouterr().err


def test_submit_needs_shared_storage_and_passes_the_auth_token(tmp_path, capsys, monkeypatch):
    from daq_search.search import submission_headers

    assert main(["submit", str(ROOT / "jobs" / "demo.yaml"), "--address", "http://127.0.0.1:1"]) == 2
    assert "storage: 'runs' is relative" in capsys.readouterr().err  # the demo's storage is runs/
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert submission_headers() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    assert submission_headers() == {"Authorization": "Bearer s3cret"}


def test_submit_to_an_unreachable_address_is_one_line(tmp_path, capsys):
    port = free_port()  # nothing listens there
    demo = str(ROOT / "jobs" / "demo.yaml")
    assert main(["submit", demo, "--address", f"http://127.0.0.1:{port}", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"daq-search: error: --address: cannot submit to the Ray Jobs API at http://127.0.0.1:{port}")
    assert "\n" not in err


TOKEN = "0123456789abcdef0123456789abcdef"
HEAD_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": TOKEN,
    # keeps `ray start` on loopback: without it Ray swaps 127.0.0.1 for the machine's routable address
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def start_head(folder: Path, dashboard_port: int | None) -> tuple[subprocess.Popen, int, dict]:
    """A Ray head on loopback with token authentication, run by `ray start --block` so that stopping that one
    process (by its id) stops the head's processes; its session folder is ``head_temp(port)``. Returns (process,
    GCS port, environment of its clients)."""
    port = free_port()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # a submitted job runs `python`
    env = {**os.environ, **HEAD_ENV, "PYTHONPATH": python_path(), "PATH": path}
    dashboard = ["--include-dashboard=false"]
    if dashboard_port is not None:
        dashboard = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={head_temp(port)}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",  # not 52365: another Ray on this machine may hold it
            *dashboard,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=folder,
    )
    wait_for(lambda: listening(port), 120, "the head's GCS port", head)  # a search may not start before the head
    return head, port, env


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def head_temp(port: int) -> Path:
    return Path("/tmp") / f"daq-head-{os.getpid()}-{port}"  # short: Ray's socket paths must stay under 107 characters


def stop_head(head: subprocess.Popen) -> str:
    head.send_signal(signal.SIGTERM)
    try:
        return head.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        head.kill()
        return head.communicate()[0]


def reachable(url: str) -> bool:
    """Whether the dashboard answers at ``url`` with the test token (the head has token auth on)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_search_on_a_running_cluster_with_token_auth(tmp_path):
    head, port, env = start_head(tmp_path, None)
    try:
        job = write_job(tmp_path, "remote", searcher={"num_samples": 2}, trial={"epochs": 1, "batch_size": 50})
        done = run_cli("search", str(job), "--address", f"127.0.0.1:{port}", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        trials = read_trials(tmp_path / "runs" / "remote")
        assert len(trials) == 2 and (trials["status"] == "completed").all()
        worker_logs = head_temp(port).glob("session_*/logs/worker-*.out")
        assert any("ImplicitFunc" in log.read_text() for log in worker_logs)  # the trials ran on that cluster
        assert head.poll() is None  # the cluster outlives the search that used it
    finally:
        stop_head(head)
        shutil.rmtree(head_temp(port), ignore_errors=True)


@pytest.fixture
def local_head_with_jobs_api(tmp_path):
    """A loopback head with its dashboard (the Jobs API); skipped with the reason when the dashboard cannot start."""
    dashboard = free_port()
    head, port, env = start_head(tmp_path, dashboard)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and head.poll() is None and not reachable(f"{address}/api/version"):
        time.sleep(1)
    if not reachable(f"{address}/api/version"):
        output = stop_head(head)
        shutil.rmtree(head_temp(port), ignore_errors=True)
        reason = [line for line in output.splitlines() if "dashboard" in line.lower() or "error" in line.lower()]
        pytest.skip(
            "the Ray dashboard (Jobs API) did not start on loopback; it needs ray[default] "
            f"(aiohttp, aiohttp_cors, grpcio, ...): {' | '.join(reason[-3:]) or output[-300:]}"
        )
    try:
        wait_for_job_agent(address)
        yield address, env
    finally:
        stop_head(head)
        shutil.rmtree(head_temp(port), ignore_errors=True)


def wait_for_job_agent(address: str, timeout: float = 300) -> None:
    """Block until the head accepts a job: its dashboard answers before the agent that runs jobs has registered
    ("No available agent to submit job"), so a trivial job is submitted until one is taken."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {TOKEN}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.submit_job(entrypoint="true")
            return
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def project_copy(folder: Path) -> Path:
    """A copy of the source checkout's package and project files under ``folder``: ``submit`` uploads the checkout
    that holds the package it runs from, and a job must lie inside it, so the test writes its job there and not into
    the source tree."""
    for name in ("daq_search", "search_spaces"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, folder / name)
    return folder


@pytest.mark.slow
def test_submit_to_a_local_head_runs_the_search(local_head_with_jobs_api, tmp_path):
    address, env = local_head_with_jobs_api
    project = project_copy(tmp_path / "project")
    job = write_job(
        project,
        "submitted",
        search_space=str(project / "search_spaces" / "paper.yaml"),
        storage=str(tmp_path / "runs"),
        searcher={"num_samples": 2},
        trial={"epochs": 1, "batch_size": 50},
    )
    done = run_cli(
        "submit",
        str(job),
        "--address",
        address,
        "--wait",
        timeout=500,
        cwd=project,
        env={**env, "PYTHONPATH": python_path(project)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ray job logs --follow --address " + address in done.stdout and ": SUCCEEDED" in done.stdout
    trials = read_trials(tmp_path / "runs" / "submitted")
    assert len(trials) == 2 and (tmp_path / "runs" / "submitted" / "winner.yaml").is_file()
