"""A real 2-node Ray cluster on this machine: a head on 127.0.0.1 and a second node with its own raylet on
127.0.0.2 (both loopback), token authentication on, a shared storage folder, one cluster for the module. A search
with ``--address`` spreads its trials over both nodes and records where each ran; ``daq-search submit --wait`` runs
a search through the head's Jobs API; losing the second node mid-search loses no trial and no epoch; a final
training on 2 workers, one per node, survives the loss and replacement of the second node with equal replicas."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from conftest import python_path
from test_cli import free_port, project_copy, run_cli, write_job
from test_security import _descendants

from daq_search.results import TrialTable, read_epochs, read_trials
from daq_search.runtime import RAY_QUIET_ENV

ROOT = Path(__file__).resolve().parent.parent
HEAD_IP, OTHER_IP = "127.0.0.1", "127.0.0.2"
START_TIMEOUT_S = 120.0
NODE_LOSS_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
"""The GCS declares a node dead after about 3 s without its raylet (Ray's default is about 15 s)."""


@dataclass
class RayNode:
    """One node started by ``ray start --block`` (stopping that process stops the node's processes)."""

    process: subprocess.Popen
    temp_dir: Path
    ip: str
    log: Path
    pids: set[int] = field(default_factory=set)
    """Processes of the node seen so far (stopped by id at the end, also those ``ray start`` no longer parents)."""


@dataclass
class TwoNodeCluster:
    """The running cluster: GCS ``address`` (``127.0.0.1:PORT``), the Jobs API URL, the environment its clients need
    (the token), the storage folder both nodes share, the current second node (``other``, replaced after a loss)
    and every node started (``started``), with their temp folders under ``base`` and logs in ``folder``."""

    head: RayNode
    other: RayNode
    address: str
    jobs_api: str
    env: dict[str, str]
    storage: Path
    base: Path
    folder: Path
    started: list[RayNode]


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen) -> None:
    """Poll ``predicate`` until it holds; the test fails when ``timeout`` seconds pass or ``process`` (which brings
    it about) exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            pytest.fail(f"{' '.join(map(str, process.args[:3]))} ... exited (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _start_node(args: list[str], temp_dir: Path, ip: str, env: dict[str, str], cwd: Path) -> RayNode:
    log = cwd / f"ray-{temp_dir.name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--block",
                f"--node-ip-address={ip}",
                "--num-cpus=1",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    return RayNode(process, temp_dir, ip, log)


def _stop_node(node: RayNode) -> None:
    """Stop a node's processes by id: SIGTERM to ``ray start --block`` (which stops the rest), then SIGKILL to any
    process of the node still there."""
    node.pids.update(_descendants(node.process.pid))
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
    for pid in node.pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _raylet_pid(node: RayNode) -> int | None:
    """The process id of the node's raylet, None when it is gone."""
    for pid in _descendants(node.process.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        except OSError:
            continue
    return None


def kill_raylet(node: RayNode) -> None:
    """Lose the node as a crashed machine would: SIGKILL to its raylet (its other processes are remembered for the
    clean-up)."""
    node.pids.update(_descendants(node.process.pid))
    pid = _raylet_pid(node)
    assert pid is not None, f"no raylet below pid {node.process.pid}"
    os.kill(pid, signal.SIGKILL)


def _alive_nodes(env: dict[str, str], address: str) -> list[dict]:
    probe = f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); print(json.dumps(ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    if done.returncode != 0:
        return []
    return [node for node in json.loads(done.stdout.strip().splitlines()[-1]) if node["Alive"]]


def wait_for_jobs_api(cluster: TwoNodeCluster, timeout: float = START_TIMEOUT_S) -> None:
    """Block until the head's Jobs API takes a job: its dashboard answers before the agent that runs jobs has
    registered ("No available agent to submit job"), so a trivial job is submitted until one is taken."""
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"}
    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(cluster.jobs_api, headers=headers).submit_job(entrypoint="true")
            return
        except (ConnectionError, RuntimeError) as error:
            if time.monotonic() > deadline:
                pytest.fail(f"the head's Jobs API took no job within {timeout:.0f} s: {error}")
            time.sleep(1)


def _node_ips(cluster_env: dict[str, str], address: str) -> list[str]:
    """The addresses of the cluster's live nodes, sorted (empty while the GCS does not answer)."""
    return sorted(node["NodeManagerAddress"] for node in _alive_nodes(cluster_env, address))


def start_other(cluster: TwoNodeCluster) -> RayNode:
    """Start a (new) second node: 127.0.0.2, 1 CPU, resource ``node_b``, its own raylet and temp folder; returns it
    once the GCS lists it alive (and an earlier second node dead)."""
    # Ray refuses to start a second node with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with it on turns a GCS address
    # of 127.0.0.1 into the machine's routable one, where the GCS does not listen; the IPv4-mapped spelling of
    # 127.0.0.1 is left alone.
    port = cluster.address.rsplit(":", 1)[1]
    args = [f"--address=[::ffff:{HEAD_IP}]:{port}", '--resources={"node_b": 1}']
    env = {**cluster.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    node = _start_node(args, cluster.base / f"b{len(cluster.started)}", OTHER_IP, env, cluster.folder)
    cluster.started.append(node)
    cluster.other = node
    wanted = [HEAD_IP, OTHER_IP]
    wait_for(
        lambda: _node_ips(cluster.env, cluster.address) == wanted, START_TIMEOUT_S, "the second node", node.process
    )
    return node


@contextmanager
def running_cluster(folder: Path) -> Iterator[TwoNodeCluster]:
    """A head (``--head``, 127.0.0.1, 1 CPU, resource ``node_head``, its dashboard with the Jobs API on 127.0.0.1)
    and a second node (:func:`start_other`), token authentication with a random token, and ``folder/storage`` as
    shared storage. Every process it started is stopped by id when the body ends, also on errors."""
    base = Path(tempfile.mkdtemp(prefix="dq2n", dir="/tmp"))  # short: Ray's socket paths must stay under 107 chars
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # a submitted job runs `python`
    env = {
        **os.environ,
        **RAY_QUIET_ENV,
        **NODE_LOSS_ENV,
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",  # a stopped node waits at most 5 s for its work to end
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps the node addresses on loopback
        "PYTHONPATH": python_path(),
        "PATH": path,
    }
    env.pop("RAY_ADDRESS", None)
    port, dashboard_port = free_port(), free_port()
    head_args = [
        "--head",
        f"--port={port}",
        f"--ray-client-server-port={free_port()}",
        '--resources={"node_head": 1}',
        "--include-dashboard=true",
        f"--dashboard-host={HEAD_IP}",
        f"--dashboard-port={dashboard_port}",
    ]
    started: list[RayNode] = []
    try:
        head = _start_node(head_args, base / "h", HEAD_IP, env, folder)
        started.append(head)
        address = f"{HEAD_IP}:{port}"
        wait_for(lambda: _node_ips(env, address) == [HEAD_IP], START_TIMEOUT_S, "the head", head.process)
        storage = folder / "storage"
        storage.mkdir()
        jobs_api = f"http://{HEAD_IP}:{dashboard_port}"
        cluster = TwoNodeCluster(head, head, address, jobs_api, env, storage, base, folder, started)
        start_other(cluster)
        yield cluster
    finally:
        for node in reversed(started):
            _stop_node(node)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_up(tmp_path_factory) -> Iterator[TwoNodeCluster]:
    """One cluster (:func:`running_cluster`) for the module's tests, its Jobs API ready."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        wait_for_jobs_api(cluster)
        yield cluster


@pytest.fixture
def two_node_cluster(cluster_up) -> TwoNodeCluster:
    """The module's cluster with both nodes up: a second node an earlier test lost is replaced first."""
    if _raylet_pid(cluster_up.other) is None:
        _stop_node(cluster_up.other)
        start_other(cluster_up)
    return cluster_up


@pytest.mark.slow
def test_two_node_cluster_runs_work_on_both_nodes(two_node_cluster):
    cluster = two_node_cluster
    probe = (
        f"import ray; ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
        "ip = ray.remote(lambda: ray.util.get_node_ip_address())\n"
        "print(ray.get(ip.options(resources={'node_head': 1}).remote()), "
        "ray.get(ip.options(resources={'node_b': 1}).remote()))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cluster.env, timeout=120)
    assert done.stdout.split() == [HEAD_IP, OTHER_IP], done.stderr


def test_trial_rows_count_every_start_and_keep_the_node_of_the_last_epoch(tmp_path):
    table = TrialTable(tmp_path, max_epochs=2, knob_types={}, objective="score", mode="min")
    table.start("t1", "none", {})
    table.add_epoch("t1", 1, {"score": 0.5}, node=OTHER_IP)
    table.start("t1", "none", {})  # a retry after the node was lost
    table.add_epoch("t1", 2, {"score": 0.4}, node=HEAD_IP)
    table.start("t2", "none", {})
    table.end("t1")
    table.write()
    trials = read_trials(tmp_path).set_index("trial_id")
    assert trials["attempts"].to_dict() == {"t1": 2, "t2": 1}
    assert trials.loc["t1", "node"] == HEAD_IP and pd.isna(trials.loc["t2", "node"])  # t2 has recorded no epoch
    reloaded = TrialTable(tmp_path, max_epochs=2, knob_types={}, objective="score", mode="min")
    reloaded.load()
    assert reloaded.start("t1", "none", {})["attempts"] == 3  # a --resume that continues it counts too


def spread_job(folder: Path, cluster: TwoNodeCluster, name: str, **changes) -> Path:
    """A small search job on digits whose two concurrent 1-CPU trials need both 1-CPU nodes, writing to the cluster's
    shared storage; its trials last several seconds each, so that both start before either ends (a trial that ended
    first would leave its actor to the other, Tune reusing actors)."""
    settings = {
        "data": {"name": "digits", "train_per_class": 110, "val_per_class": 5},
        "searcher": {"num_samples": 2},
        "trial": {"epochs": 6, "batch_size": 50},
        "max_concurrent_trials": 2,
        "storage": str(cluster.storage),
        **changes,
    }
    return write_job(folder, name, **settings)


@pytest.mark.slow
def test_two_node_search_puts_trials_on_both_nodes_and_records_where(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    job = spread_job(tmp_path, cluster, "spread")
    done = run_cli("search", str(job), "--address", cluster.address, env=cluster.env)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = read_trials(cluster.storage / "spread")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    assert sorted(trials["node"]) == [HEAD_IP, OTHER_IP]
    assert trials["attempts"].tolist() == [1, 1]


@pytest.mark.slow
def test_two_node_submit_wait_runs_a_search_on_both_nodes(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    project = project_copy(tmp_path / "project")
    job = spread_job(project, cluster, "submitted", search_space=str(project / "search_spaces" / "paper.yaml"))
    env = {**cluster.env, "PYTHONPATH": python_path(project)}
    done = run_cli("submit", str(job), "--address", cluster.jobs_api, "--wait", timeout=400, cwd=project, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": SUCCEEDED" in done.stdout, done.stdout + done.stderr
    trials = read_trials(cluster.storage / "submitted")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    assert sorted(trials["node"]) == [HEAD_IP, OTHER_IP]
    assert (cluster.storage / "submitted" / "winner.yaml").is_file()


def running_on(run_dir: Path, ip: str, epochs: int) -> bool:
    """A trial on node ``ip`` has recorded at least one epoch and has more than that to go."""
    try:
        trials = read_trials(run_dir)
    except Exception:  # not written yet
        return False
    there = trials[(trials["node"] == ip) & (trials["status"] == "running")]
    return bool(((there["epochs"] >= 1) & (there["epochs"] < epochs)).any())


@pytest.mark.slow
def test_two_node_search_survives_losing_a_node(two_node_cluster, tmp_path):
    """The second node's raylet is killed while a trial runs there: that trial continues from its last checkpoint on
    the head (within ``max_failures``), and the search ends with every trial complete, each epoch recorded once."""
    cluster, epochs = two_node_cluster, 6
    job = spread_job(tmp_path, cluster, "lossy", max_failures=2)
    run_dir = cluster.storage / "lossy"
    log_path = tmp_path / "search.log"
    with open(log_path, "w") as log:
        search = subprocess.Popen(
            [sys.executable, "-m", "daq_search", "search", str(job), "--address", cluster.address],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cluster.env,
        )
    try:
        wait_for(lambda: running_on(run_dir, OTHER_IP, epochs), 300, "a trial's epoch on the second node", search)
        lost = read_trials(run_dir).set_index("trial_id")
        before = read_epochs(run_dir)
        kill_raylet(cluster.other)
        code = search.wait(timeout=300)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
    output = log_path.read_text()
    assert code == 0, output
    moved = lost.index[lost["node"] == OTHER_IP]
    trials = read_trials(run_dir).set_index("trial_id")
    assert set(lost.index) <= set(trials.index) and len(trials) == 2  # no trial lost, none added
    assert (trials["status"] == "completed").all() and (trials["epochs"] == epochs).all()
    after = read_epochs(run_dir)
    assert not after.duplicated(["trial_id", "epoch"]).any()
    every_epoch = {trial_id: list(range(1, epochs + 1)) for trial_id in trials.index}
    assert after.groupby("trial_id")["epoch"].apply(sorted).to_dict() == every_epoch
    # The epochs recorded before the loss were not trained again (a retrained epoch would have a new throughput):
    # the retry started after the trial's last checkpoint.
    kept = after.merge(before[["trial_id", "epoch"]], on=["trial_id", "epoch"])
    pd.testing.assert_frame_equal(before.reset_index(drop=True), kept.reset_index(drop=True))
    assert len(moved) == 1
    assert trials.loc[moved[0], "node"] == HEAD_IP
    assert 2 <= trials.loc[moved[0], "attempts"] <= 3  # 1 + retries, at most max_failures of them
    assert f"trial {moved[0]} attempt 1 failed, retrying from its last checkpoint" in output
    assert trials.drop(moved)["attempts"].tolist() == [1]


FINAL_DRIVER = """
import sys
from daq_search import train
train.CHECKPOINT_EVERY_S = 0.0  # a checkpoint after every epoch, so a lost node leaves one to continue from
train.run_final(sys.argv[1], address=sys.argv[2], storage=sys.argv[3], baseline=None)
"""
"""A final training on the cluster, as ``daq-search train WINNER --address ADDR --storage DIR --no-baseline``, with
a checkpoint after every epoch."""


def final_winner(folder: Path, epochs: int) -> Path:
    """A winner file for a final training of ``epochs`` epochs on 2 workers of 1 CPU, with a tiny teacher trained
    here (``teacher.pt``) and ``max_failures: 2``."""
    from daq_search.checkpoints import save_checkpoint
    from daq_search.config import DataConfig, TeacherConfig
    from daq_search.data import load_data
    from daq_search.teacher import train_teacher

    data = {"name": "digits", "train_per_class": 110, "val_per_class": 5}
    teacher = {"model": "tiny_cnn", "recipe": {"epochs": 5, "batch_size": 50, "lr": 0.01}}
    model, _ = train_teacher(TeacherConfig(**teacher), load_data(DataConfig(**data).spec()))
    save_checkpoint(folder / "teacher.pt", {"model": model.state_dict()})
    return write_job(
        folder,
        "winner",
        data=data,
        teacher={**teacher, "checkpoint": str(folder / "teacher.pt")},
        candidate="none",
        final={"recipe": {"epochs": epochs, "batch_size": 64}, "workers": 2, "cpus_per_worker": 1.0},
        max_failures=2,
    )


def start_final(winner: Path, cluster: TwoNodeCluster, storage: Path, log: Path) -> subprocess.Popen:
    """:data:`FINAL_DRIVER` for ``winner`` on the cluster, its output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", FINAL_DRIVER, str(winner), cluster.address, str(storage)],
            cwd=winner.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster.env,
        )


def ran_train_worker(node: RayNode) -> bool:
    """Whether a Ray Train worker ran on ``node`` (its worker logs name the actor class)."""
    return any("RayTrainWorker" in log.read_text() for log in node.temp_dir.glob("session_*/logs/worker-*.out"))


def registered_checkpoint(run: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of the run in ``run`` (its snapshot there names one), so that a
    restart continues from it (a checkpoint folder exists a moment before it is registered)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return False
    return snapshot.get("latest_checkpoint_result") is not None


@pytest.mark.slow
def test_two_node_final_training_survives_losing_a_node(two_node_cluster, tmp_path):
    """Two DDP workers, one per node (each node has 1 CPU): the second node's raylet is killed after a checkpoint,
    a new second node joins, and Ray Train restarts the workers from that checkpoint (within ``max_failures``) on the
    head and the new node; the replicas end equal and every epoch is recorded once."""
    cluster, epochs = two_node_cluster, 8
    winner = final_winner(tmp_path, epochs)
    storage = cluster.storage / "train-loss"
    final = start_final(winner, cluster, storage, tmp_path / "final.log")
    try:
        wait_for(lambda: registered_checkpoint(storage / "final"), 300, "the final training's first checkpoint", final)
        kill_raylet(cluster.other)
        start_other(cluster)  # a replacement node: both workers need a CPU again
        code = final.wait(timeout=300)
    finally:
        if final.poll() is None:
            final.kill()
            final.wait()
    assert code == 0, (tmp_path / "final.log").read_text()[-5000:]
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["epochs"] == epochs
    assert 1 <= metrics["restarts"] <= 2, metrics  # the loss was noticed; at most max_failures restarts
    assert metrics["restored_from_epochs"][0] >= 1, metrics  # continued after a checkpoint, not from scratch
    checksums = metrics["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    rows = pd.read_parquet(tmp_path / "final" / "epochs.parquet")
    assert list(rows["epoch"]) == list(range(1, epochs + 1))  # complete, no epoch twice
    assert ran_train_worker(cluster.head) and ran_train_worker(cluster.other)
