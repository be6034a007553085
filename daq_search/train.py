"""The final distributed QAT+KD training of a search's winner with Ray Train (DDP), and its deployable artifact.

``run_final(RUN_DIR/winner.yaml)`` trains the fake-quantized student for ``final.recipe.epochs`` on
``final.workers`` Ray Train workers (gloo on CPU, NCCL on GPU) under the winning augmentation, distilling from the
teacher in ``teacher.checkpoint``. Every worker builds the same calibrated student, then DDP keeps the replicas
equal; each worker trains on its own ``DistributedSampler`` shard with a per-worker batch of
``final.recipe.batch_size // workers`` (the recipe's batch size is the global one).

Outputs, all under ``RUN_DIR/final/`` (``RUN_DIR/final/<name>/`` for a ``name`` other than ``final``):

- ``metrics.json``: at the top level the model that ships (the one ``student_int.pt`` holds): ``shipped_run``, its
  ``candidate``, test top-1 (fraction in [0, 1]) and cross-entropy (nats), validation accuracy at its last epoch, and
  ``difference_pp`` = (shipped - baseline) test top-1 in percentage points with ``difference_se_pp``; the run that
  ships is the one with the highest validation accuracy at its last epoch among the search's winner, the other
  finalists the search named (``finalists`` in the winner file, ``final.finalists`` above 1) and the baseline, a tie
  going to the earlier (:func:`daq_search.finalists.shipped_index`). Beside it the full-precision teacher's test
  top-1 and loss, bits, epochs, workers, wall seconds, ``artifact_sha256`` (the SHA-256 of ``student_int.pt``), and
  one entry per run with the same numbers: ``search_winner`` (the trials' top candidate), ``finalists`` (the others)
  and ``baseline`` (the same student trained with the baseline augmentation; ``skipped`` where it would be the
  winner's own training, whose run then measures the baseline).
- ``epochs.parquet``: one row per epoch and run (``run`` is ``<name>``, ``<name>-finalist-<i>`` or
  ``<name>-baseline``): mean train loss
  per image over all workers, val top-1 and loss (on the epochs :func:`next_validation` picks and the last; NaN on
  the others), aggregate images/s, and the learning rate at the epoch's start.
- ``ray.log``: Ray's and the workers' log lines and one line per epoch; the terminal gets a progress line with an
  ETA after every tenth of each run.
- ``student_int.pt``: ``{"arch": {...}, "state": export_int_state(student)}`` of the shipped run;
  :func:`load_int_artifact` rebuilds it.
- ``RUN_DIR/final/ray/<name>/`` and ``RUN_DIR/final/ray/<name>-baseline/``: Ray Train's run folders, with a
  checkpoint after the first epoch ending :data:`CHECKPOINT_EVERY_S` seconds after the previous one and after the
  last epoch (the last two kept). Re-running the same command with the same name continues each run from its last
  checkpoint; a different number of epochs extends (or ends) the cosine schedule at the step reached. Ray Train
  restarts a run from its last checkpoint after a worker or node loss, up to ``max_failures`` times.

The winner and its baseline train at the same time when the cluster has the CPUs (and GPUs) for both, else one
after the other. A winner whose ``branch.checkpoint`` holds a search trunk's state of this schedule continues it
after its branch epoch (a calibration anchor's full training of a run's candidate is reused the same way).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from .candidates import parse_candidate
from .checkpoints import load_state, save_checkpoint
from .config import JobSpec, load_job
from .data import DataBundle
from .errors import DaqSearchError
from .files import RUN_NAME_ALLOWED, atomic_write, atomic_write_text, check_run_name
from .final_runs import baseline_run, finalist_run, run_role
from .finalists import shipped_index
from .kd import (
    binomial_se,
    check_precision,
    eval_loader,
    evaluate,
    loader_workers,
    make_optimizer,
    make_scheduler,
    place,
    run_epoch,
    train_loader,
    training_threads,
)
from .logs import show_progress
from .models import create_model
from .quant import export_int_state, load_int_state, quantize
from .runtime import check_address, ray_session
from .student import build_student
from .teacher import load_teacher
from .transforms import build_batch_mix

logger = logging.getLogger(__name__)

USE_SPEC = object()
"""Default of ``run_final(baseline=...)``: take the baseline from the spec's ``final.baseline``."""

WINNER_FILE = "winner.yaml"
STATE_FILE = "state.pt"
ARTIFACT_FILE = "student_int.pt"
METRICS_FILE = "metrics.json"
EPOCHS_FILE = "epochs.parquet"
RAY_LOG_FILE = "ray.log"
CHECKPOINTS_KEPT = 2
EVAL_BATCH_SIZE = 512
EPOCH_COLUMNS = ("run", "epoch", "train_loss", "val_acc", "val_loss", "images_per_s", "lr", "candidate")
_STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "epochs", "candidate", "history")
VALIDATE_EVERY = 10
"""The workers validate after epoch ``VALIDATE_EVERY``, then at least this many epochs apart (see
:data:`VALIDATION_SHARE`), and always after the last epoch; other epochs' rows carry NaN ``val_acc`` and ``val_loss``.
(A ``final.validate_every`` field would carry it per job.)"""
VALIDATION_SHARE = 0.1
"""Validations are spaced so that they take at most about this share of the training time (a large validation
split is validated less often). (A ``final.validation_share`` field would carry it per job.)"""
CHECKPOINT_EVERY_S = 60.0
"""A run checkpoints after the first epoch that ends this many seconds or more after its start or its last
checkpoint, and always after its last epoch, so an interruption loses at most this long plus one epoch of
training. (A ``final.checkpoint_every_s`` field would carry it per job.)"""
PROGRESS_LINES = 10
"""Terminal progress lines per run: one after every tenth of the epochs it trains (and after its last epoch)."""


def resolve_winner_file(spec_path: str | Path) -> Path:
    """The winner file ``spec_path`` names: the file itself, or ``RUN_DIR/winner.yaml`` for a folder."""
    path = Path(spec_path).expanduser()
    if path.is_dir():
        path = path / WINNER_FILE
    if not path.is_file():
        raise DaqSearchError(f"{path}: no such winner file (a search writes RUN_DIR/{WINNER_FILE})")
    return path


def load_winner(path: Path) -> JobSpec:
    """The validated winner spec at ``path``: a job with ``candidate`` and ``teacher.checkpoint`` set."""
    job = load_job(path)
    try:
        job.winner_candidate()
    except DaqSearchError as err:
        raise DaqSearchError(f"{path}: {err}") from None
    if job.teacher.checkpoint is None:
        raise DaqSearchError(
            f"{path}: teacher.checkpoint: not set; the final training distils from a trained teacher "
            "(a search writes its path into winner.yaml)"
        )
    return job


def _baseline_id(baseline: Any, job: JobSpec) -> str | None:
    """The baseline candidate's canonical id (``USE_SPEC`` takes ``final.baseline``), or None for no baseline."""
    if baseline is USE_SPEC:
        return job.final.baseline
    if baseline is None:
        return None
    try:
        return parse_candidate(baseline).id
    except DaqSearchError as err:
        raise DaqSearchError(f"baseline: {err}") from None


def _check_count(field: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DaqSearchError(f"{field}: {value!r} is not allowed; allowed: an integer >= 1")


def run_final(
    spec_path: str,
    *,
    workers: int | None = None,
    use_gpu: bool | None = None,
    epochs: int | None = None,
    address: str | None = None,
    name: str | None = None,
    baseline: str | None | object = USE_SPEC,
    storage: str | None = None,
) -> dict:
    """Train the winner of ``spec_path`` (a winner.yaml or its RUN_DIR) to the end; returns ``metrics.json``'s dict.

    ``workers``, ``use_gpu`` and ``epochs`` override ``final.workers``, ``final.use_gpu`` and
    ``final.recipe.epochs``; ``address`` runs on an existing Ray cluster; ``name`` (default ``final``) names the
    Ray Train run, so re-running with the same name resumes it; ``baseline`` overrides ``final.baseline`` (None: no
    baseline); ``storage`` overrides Ray Train's storage path ``RUN_DIR/final/ray`` (give shared storage or a cloud
    URI on a multi-node cluster). The driver's progress lines are logged (:mod:`daq_search.logs`); the rank-0 worker
    prints a progress line with an ETA every tenth of a run and writes one line per epoch to ``ray.log``.
    """
    import ray

    start = time.perf_counter()
    path = resolve_winner_file(spec_path)
    job = load_winner(path)
    candidate = job.winner_candidate().id
    baseline_id = _baseline_id(baseline, job)
    _check_count("workers", workers)
    _check_count("epochs", epochs)
    workers = workers or job.final.workers
    use_gpu = job.final.use_gpu if use_gpu is None else bool(use_gpu)
    epochs = epochs or job.final.recipe.epochs
    name = check_run_name("final" if name is None else name, "--name")
    if name == "ray":
        raise DaqSearchError(f"--name: 'ray' is not allowed (Ray Train's folder); allowed: {RUN_NAME_ALLOWED}")
    if address is None and use_gpu and torch.cuda.device_count() < workers:
        raise DaqSearchError(
            f"workers: {workers} GPU workers need {workers} GPUs, this machine has {torch.cuda.device_count()}; "
            "lower --workers, or pass --address of a cluster"
        )
    final_dir = path.resolve().parent / "final"
    out_dir = final_dir if name == "final" else final_dir / name
    storage = storage or str(final_dir / "ray")
    trunk = _trunk_checkpoint(job, epochs)
    runs = _planned_runs(
        name, candidate, baseline_id, continues_trunk=_continues_trunk(job, trunk), finalists=job.finalists
    )
    _check_in_driver(job, runs, workers)
    check_address(address)
    out_dir.mkdir(parents=True, exist_ok=True)

    num_cpus = max(os.cpu_count() or 1, math.ceil(workers * job.final.cpus_per_worker)) if address is None else None
    owns_ray = not ray.is_initialized()  # else run_final leaves Ray up
    with ray_session(address, num_cpus=num_cpus), routed_worker_logs(out_dir / RAY_LOG_FILE, shutdown=owns_ray):
        together = _fits_together(len(runs), workers, job.final.cpus_per_worker, use_gpu)
        fits = []
        for run_name, run_candidate in runs:
            reuse = _reuse_state(job, run_name != baseline_run(name), run_candidate, epochs, trunk)
            logger.info(f"{run_name}: training {run_candidate} for {epochs} epochs on {workers} worker(s)")
            if reuse is not None:
                logger.info(f"{run_name}: starts from the {reuse['source']}'s state in {reuse['folder']} "
                            "(unless it has a checkpoint of its own)")  # fmt: skip
            fits.append(functools.partial(_fit, job, run_candidate, epochs, workers, use_gpu, storage, run_name, reuse))
        if together:
            logger.info(f"the {len(runs)} runs train at the same time (the cluster has the CPUs for both)")
        results = _run_all(fits, together)
    outcomes = {run_name: outcome for (run_name, _), (outcome, _) in zip(runs, results, strict=True)}
    artifacts = {run_name: artifact for (run_name, _), (_, artifact) in zip(runs, results, strict=True)}

    metrics = _summarise(job, name, candidate, baseline_id, runs, outcomes, workers, use_gpu, storage, together)
    artifact = artifacts[metrics["shipped_run"]]
    metrics["wall_s"] = time.perf_counter() - start
    rows = [dict(row, run=run_name) for run_name, outcome in outcomes.items() for row in outcome["history"]]
    with artifact.as_directory() as folder:
        _write_outputs(out_dir, metrics, pd.DataFrame(rows, columns=list(EPOCH_COLUMNS)), Path(folder) / ARTIFACT_FILE)
    for line in _summary_lines(metrics):
        logger.info(line)
    logger.info(f"{name}: wrote {out_dir / 'metrics.json'}, epochs.parquet and {ARTIFACT_FILE}")
    return metrics


def _check_in_driver(job: JobSpec, runs: list[tuple[str, str]], workers: int) -> None:
    """What each worker would refuse, checked here before Ray starts: the data loads, the teacher checkpoint loads
    into the teacher, and the batch leaves every worker a full batch under each run's candidate."""
    bundle = job.load_data()
    load_teacher(job.teacher.checkpoint, job.teacher, bundle)
    for _, run_candidate in runs:
        _shard_loader(bundle, parse_candidate(run_candidate), job.final.recipe.batch_size, job.teacher.seed, 0, workers)


def _write_outputs(out_dir: Path, metrics: dict, epochs: pd.DataFrame, artifact: Path) -> None:
    """Write ``student_int.pt``, ``epochs.parquet`` and ``metrics.json`` (with the artifact's SHA-256) so that a
    kill at any moment leaves either the old three, or no ``metrics.json``, or the new three: the old metrics go
    first, each file is replaced atomically, and the new metrics come last."""
    metrics["artifact_sha256"] = hashlib.sha256(artifact.read_bytes()).hexdigest()
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    atomic_write(out_dir / ARTIFACT_FILE, lambda tmp: shutil.copyfile(artifact, tmp))
    atomic_write(out_dir / EPOCHS_FILE, lambda tmp: epochs.to_parquet(tmp, index=False))
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


RAY_TRAIN_HOUSEKEEPING = ("PlacementGroupCleaner",)
"""Ray Train's own actors whose every line (it polls a state API that an embedded Ray without dashboard lacks, and
under load says so on standard output too) goes to the log file, never to the terminal."""
LOG_QUIET_S = 1.0
"""Worker lines reach the driver through Ray's log monitor, seconds late under load: after the training the routing
waits until no line has come for this long (at most :data:`LOG_DRAIN_S`), so that the last epoch's lines land in
the log file and on the terminal rather than after the routing ends."""
LOG_DRAIN_S = 5.0


@contextmanager
def routed_worker_logs(path: Path, shutdown: bool = False) -> Iterator[None]:
    """While the body runs (Ray up), the Ray workers' standard output is printed as before, while their standard
    error (Ray's and the libraries' warnings and log records, the per-epoch lines) and everything Ray Train's
    housekeeping actors print (:data:`RAY_TRAIN_HOUSEKEEPING`) are appended to ``path`` instead of the terminal.
    Lines still arriving after the body go the same way (:data:`LOG_QUIET_S`). With ``shutdown``, Ray is shut down
    before the printers come back, so that the lines of processes ending after the body (a worker's exit on SIGTERM)
    go to ``path`` too."""
    import ray
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    name = "ray_print_logs"  # the handler ray.init(log_to_driver=True) installs
    printers = [handler for key, handler in dispatcher.handlers if key == name]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log_file:
        last_line = [time.monotonic()]

        def route(data: dict) -> None:
            last_line[0] = time.monotonic()
            source = data.get("actor_name") or data.get("task_name") or "worker"
            if not data.get("is_err") and not source.startswith(RAY_TRAIN_HOUSEKEEPING):
                for printer in printers:
                    printer(data)
                return
            log_file.writelines(f"({source} pid={data.get('pid')}) {line}\n" for line in data.get("lines", ()))
            log_file.flush()

        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, route)
        try:
            yield
        finally:
            drained_by = time.monotonic() + LOG_DRAIN_S
            while time.monotonic() - last_line[0] < LOG_QUIET_S and time.monotonic() < drained_by:
                time.sleep(0.1)
            if shutdown:
                ray.shutdown()
            dispatcher.remove_handler(name)
            for printer in printers if ray.is_initialized() else ():
                dispatcher.add_handler(name, printer)


def _planned_runs(
    name: str, candidate: str, baseline_id: str | None, *, continues_trunk: bool, finalists: list[str] = ()
) -> list[tuple[str, str]]:
    """``(Ray run name, candidate id)`` of the winner run, of each other finalist that is neither the winner nor
    (unless it continues a trunk) the baseline, and of the baseline unless absent or the same training as the
    winner's. A run that ``continues_trunk`` (a branching search's winner and finalists) differs from its own
    candidate trained from scratch, so a baseline of that candidate still runs."""
    same_training = baseline_id == candidate and not continues_trunk
    if same_training:
        logger.info(f"baseline {baseline_id} is the winner itself: no baseline run")
    others = [c for c in dict.fromkeys(finalists) if c != candidate and (continues_trunk or c != baseline_id)]
    runs = [(name, candidate), *((finalist_run(name, i), c) for i, c in enumerate(others, 1))]
    if baseline_id is None or same_training:
        return runs
    return [*runs, (baseline_run(name), baseline_id)]


def _anchor_checkpoint(job: JobSpec, candidate: str, epochs: int) -> str | None:
    """The folder of a calibration anchor's full training of ``candidate`` to ``epochs`` epochs (written by
    :mod:`daq_search.calibrate`, named in the winner's ``calibration.checkpoints``), or None when there is none."""
    record = job.calibration
    if record is None or record.anchor_epochs != epochs or candidate not in record.checkpoints:
        return None
    folder = record.checkpoints[candidate]
    return folder if (Path(folder) / STATE_FILE).is_file() else None


def _named_trunk(job: JobSpec) -> str | None:
    """The trunk folder a winner file names (``branch.checkpoint``), or None (no branching, or a job from before
    it)."""
    return getattr(getattr(job, "branch", None), "checkpoint", None)


def _trunk_checkpoint(job: JobSpec, epochs: int) -> str | None:
    """The folder of the search trunk's state that a winner continues (``branch.checkpoint``, written by a
    branching search: the trunk trained to its branch epoch of the final schedule), or None when the job names
    none, the folder holds no state, or that state's schedule is not ``epochs`` epochs long."""
    folder = _named_trunk(job)
    if folder is None or not (Path(folder) / STATE_FILE).is_file():
        return None
    state = load_state(Path(folder) / STATE_FILE, "branch.checkpoint")
    if not isinstance(state, dict) or state.get("epochs") != epochs:
        logger.info(f"branch.checkpoint: {folder} is a trunk of another schedule than {epochs} epochs; not continued")
        return None
    return folder


def _continues_trunk(job: JobSpec, trunk: str | None) -> bool:
    """Whether the winner's run may hold a search trunk's training: the trunk is there to continue (``trunk``, from
    :func:`_trunk_checkpoint`), or the job names one whose folder holds no state any more (deleted after a run that
    continued it was interrupted: that run resumes from its own checkpoint). Either way a baseline of the winner's
    own candidate is another training and runs beside it."""
    if trunk is not None:
        return True
    folder = _named_trunk(job)
    if folder is None or (Path(folder) / STATE_FILE).is_file():
        return False
    logger.info(
        f"branch.checkpoint: {folder} holds no trunk state; a run that continued it resumes from its own checkpoint, "
        "one that did not trains from scratch"
    )
    return True


def _reuse_state(job: JobSpec, finalist: bool, candidate: str, epochs: int, trunk: str | None) -> dict | None:
    """``{"folder", "source"}`` of the state a run of ``candidate`` over ``epochs`` epochs starts from when it has
    no checkpoint of its own: for a ``finalist`` run (the winner's or another finalist's) the search trunk's,
    ``trunk`` (:func:`_trunk_checkpoint`), else (or without one) a calibration anchor's full training of
    ``candidate`` (:func:`_anchor_checkpoint`); or None."""
    if finalist and trunk is not None:
        return {"folder": trunk, "source": "search trunk"}
    anchor = _anchor_checkpoint(job, candidate, epochs)
    return None if anchor is None else {"folder": anchor, "source": "calibration anchor"}


def _fits_together(runs: int, workers: int, cpus_per_worker: float, use_gpu: bool) -> bool:
    """Whether ``runs`` Ray Train runs of ``workers`` workers each fit on the cluster at the same time: it has
    their CPUs (and GPUs) for all of them at once."""
    import ray

    resources = ray.cluster_resources()
    cpus_ok = resources.get("CPU", 0) >= runs * workers * cpus_per_worker
    return runs > 1 and cpus_ok and (not use_gpu or resources.get("GPU", 0) >= runs * workers)


def _run_all(fits: list, together: bool) -> list:
    """The results of calling each of ``fits``: one after the other, or ``together`` in one thread each (a Ray
    Train run's driver side only waits for its controller actor). The first failure is raised as soon as it
    happens; the other runs stop when Ray shuts down."""
    if not together:
        return [fit() for fit in fits]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def call(index: int) -> None:
        try:
            results[index] = fits[index]()
        except BaseException as err:  # handed to the main thread, which raises it
            errors.append(err)
        done.release()

    for index in range(len(fits)):
        threading.Thread(target=call, args=(index,), name=f"fit-{index}", daemon=True).start()
    for _ in fits:
        done.acquire()
        if errors:
            raise errors[0]
    return [results[index] for index in range(len(fits))]


def _fit(
    job: JobSpec,
    candidate: str,
    epochs: int,
    workers: int,
    use_gpu: bool,
    storage: str,
    run_name: str,
    reuse: dict | None = None,
) -> tuple[dict, Any]:
    """One Ray Train run; returns the rank-0 worker's return value (with the run's wall seconds, ``restarts`` and
    ``restored_from_epochs``: the epoch each restart after a worker or node loss continued after) and the last
    checkpoint. ``reuse`` is ``{"folder", "source"}`` of a start state for a run with no checkpoint of its own."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    start = time.perf_counter()
    # on the driver's node (like Ray Train's controller), so that it outlives the loss of any other node
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    attempts = ray.remote(num_cpus=0, scheduling_strategy=driver_node)(Attempts).remote()
    config = {
        "job": job.model_copy(update={"candidate": candidate}),
        "epochs": epochs,
        "reuse": reuse,
        "validate_every": VALIDATE_EVERY,
        "validation_share": VALIDATION_SHARE,
        "checkpoint_every_s": CHECKPOINT_EVERY_S,
        "attempts": attempts,
    }
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": job.final.cpus_per_worker}
        ),
        run_config=RunConfig(
            storage_path=storage,
            name=run_name,
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=FailureConfig(max_failures=job.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        user_error = _find_user_error(err)
        if user_error is not None:
            raise DaqSearchError(str(user_error)) from None
        raise
    starts = ray.get(attempts.get.remote())
    ray.kill(attempts)
    outcome = dict(result.return_value, wall_s=time.perf_counter() - start)
    return outcome | {"restarts": len(starts) - 1, "restored_from_epochs": starts[1:]}, result.checkpoint


def _find_user_error(err: BaseException) -> DaqSearchError | None:
    """The DaqSearchError a worker raised (lowest rank first), from Ray Train's ``WorkerGroupError``, or None."""
    failures = getattr(err, "worker_failures", None) or {}
    return next((failures[rank] for rank in sorted(failures) if isinstance(failures[rank], DaqSearchError)), None)


def _summarise(
    job: JobSpec,
    name: str,
    candidate: str,
    baseline_id: str | None,
    runs: list[tuple[str, str]],
    outcomes: dict,
    workers: int,
    use_gpu: bool,
    storage: str,
    together: bool,
) -> dict:
    """The metrics.json dict: at the top level the run that ships (:func:`daq_search.finalists.shipped_index` of the
    validation accuracies of the search's winner, the other finalists' ``runs`` and, when run, the baseline, in that
    order) with its gain over the baseline, and the job's settings; under ``search_winner``, ``finalists`` and
    ``baseline`` each run's own entry (:func:`_run_metrics`; ``together``: all trained at the same time)."""
    baseline = baseline_run(name)
    plain = outcomes.get(baseline) or (outcomes[name] if baseline_id is not None and baseline_id == candidate else None)
    entries = {run: _run_metrics(outcomes[run], run, run_candidate, plain) for run, run_candidate in runs}
    finalists = [entries[run] for run in entries if run_role(name, run) == "finalist"]
    contenders = [entries[name], *finalists, *([entries[baseline]] if baseline in entries else [])]
    shipped = contenders[shipped_index([run["val_acc"] for run in contenders])]
    outcome = outcomes[shipped["run"]]
    return {
        "name": name,
        "shipped_run": shipped["run"],
        "candidate": shipped["candidate"],
        "student_test_acc": shipped["student_test_acc"],
        "student_test_loss": shipped["student_test_loss"],
        "val_acc": shipped["val_acc"],
        "difference_pp": shipped["difference_pp"],
        "difference_se_pp": shipped["difference_se_pp"],
        "teacher_test_acc": outcome["teacher_test_acc"],
        "teacher_test_loss": outcome["teacher_test_loss"],
        "model": job.student.model,
        "width": job.student.width,
        "quant": job.quant.model_dump(),
        "epochs": shipped["epochs"],
        "workers": workers,
        "use_gpu": use_gpu,
        "batch_size": job.final.recipe.batch_size,
        "resumed_from_epoch": shipped["resumed_from_epoch"],
        "continued_from": shipped["continued_from"],
        "restarts": shipped["restarts"],
        "restored_from_epochs": shipped["restored_from_epochs"],
        "validate_every": VALIDATE_EVERY,
        "validation_share": VALIDATION_SHARE,
        "checkpoint_every_s": CHECKPOINT_EVERY_S,
        "runs_together": together,
        "replica_checksums": outcome["replica_checksums"],
        "device": outcome["device"],
        "backend": outcome["backend"],
        "precision": job.final.recipe.precision,
        "train_wall_s": shipped["train_wall_s"],
        "artifact": ARTIFACT_FILE,
        "ray_storage": storage,
        "search_winner": entries[name],
        "finalists": finalists,
        "baseline": (
            None
            if baseline_id is None
            else entries.get(baseline, {"candidate": baseline_id, "skipped": "same as the winner"})
        ),
    }


def _run_metrics(outcome: dict, run: str, candidate: str, baseline: dict | None) -> dict:
    """The metrics.json entry of one run of the final training: its candidate, test top-1 and loss, validation
    accuracy at its last epoch, epochs, resume and restart record, wall seconds, and its test top-1 gain over the
    ``baseline`` run's outcome with the standard error (pp; None without a baseline)."""
    entry = {
        "run": run,
        "candidate": candidate,
        "student_test_acc": outcome["test_acc"],
        "student_test_loss": outcome["test_loss"],
        "val_acc": outcome["history"][-1]["val_acc"] if outcome["history"] else None,
        "difference_pp": None,
        "difference_se_pp": None,
        "epochs": outcome["epochs_done"],
        "resumed_from_epoch": outcome["resumed_from_epoch"],
        "continued_from": outcome["continued_from"],
        "restarts": outcome["restarts"],
        "restored_from_epochs": outcome["restored_from_epochs"],
        "train_wall_s": outcome["wall_s"],
    }
    if baseline is not None:
        entry["difference_pp"] = 100.0 * (outcome["test_acc"] - baseline["test_acc"])
        entry["difference_se_pp"] = 100.0 * difference_se(
            outcome["test_acc"], baseline["test_acc"], outcome["test_images"]
        )
    return entry


def difference_se(first: float, second: float, n: int) -> float:
    """The standard error of the difference of two accuracies measured on ``n`` images each, as independent binomial
    readings: ``sqrt(SE_1^2 + SE_2^2)`` (fraction; the same test images make the true error somewhat smaller)."""
    return math.hypot(binomial_se(first, n), binomial_se(second, n))


def _summary_lines(metrics: dict) -> list[str]:
    """The printed summary: the shipped model's test accuracy next to the teacher's; where the final training trained
    more than one run, each run's test accuracy (with its gain over the baseline) and last validation accuracy and
    which one ships; then the shipped model's gain over the baseline with its standard error, unless the shipped run is
    the one that measured the baseline."""
    q = metrics["quant"]
    lines = [
        f"{metrics['name']}: {metrics['model']} W{q['wbits']}A{q['abits']} ({q['method']}) "
        f"with {metrics['candidate']}, "
        f"{metrics['epochs']} epochs: test acc {100 * metrics['student_test_acc']:.2f} % "
        f"(loss {metrics['student_test_loss']:.4f}); FP teacher {100 * metrics['teacher_test_acc']:.2f} %"
    ]
    baseline = metrics["baseline"]
    ran_baseline = baseline is not None and "skipped" not in baseline
    runs = [("winner", metrics["search_winner"]), *(("finalist", run) for run in metrics["finalists"])]
    if ran_baseline:
        runs.append(("baseline", baseline))
    if len(runs) > 1:
        for role, run in runs:
            gain = "" if role == "baseline" else f" ({run['difference_pp']:+.2f} pp over the baseline)"
            lines.append(
                f"{role} {run['candidate']}: test acc {_percent(run['student_test_acc'])}{gain}, "
                f"validation {_percent(run['val_acc'])}"
            )
        whose = next(role for role, run in runs if run["run"] == metrics["shipped_run"])
        lines.append(
            f"{ARTIFACT_FILE}: the {whose}'s ({metrics['candidate']}) model, the highest on validation at the last epoch"
        )
    measured_baseline = baseline["run"] if ran_baseline else metrics["name"]  # a skipped baseline is the winner's run
    if metrics["difference_pp"] is not None and metrics["shipped_run"] != measured_baseline:
        lines.append(
            f"shipped {metrics['candidate']} - baseline {baseline['candidate']} = {metrics['difference_pp']:+.2f} pp "
            f"(standard error {metrics['difference_se_pp']:.2f} pp)"
        )
    return lines


def _percent(fraction: float | None) -> str:
    """``fraction`` as a percentage with two decimals, or ``n/a`` when it is missing or NaN."""
    return "n/a" if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.2f} %"


# --- inside a Ray Train worker -------------------------------------------------------------------------------


def train_fn_per_worker(config: dict) -> dict:
    """One DDP worker of the final training; the workers validate together, rank 0 checkpoints and returns the
    summary.

    ``config``: ``{"job": JobSpec with candidate set, "epochs": total epochs, "reuse": {"folder", "source"} of a
    start state for a run with no checkpoint of its own (a search trunk's or a calibration anchor's), or None,
    "validate_every": epochs, "validation_share": fraction, "checkpoint_every_s": seconds, "attempts": an
    :class:`Attempts` actor or None}``. Every epoch's row goes to the history; the workers validate (each on its
    share of the split) on the epochs :func:`next_validation` picks and after the last,
    and the run reports to Ray Train only after a validation or a checkpoint (a checkpoint when
    ``checkpoint_every_s`` have passed since the last one, and after the last epoch). Per-epoch lines go to
    standard error (the run's log file), a progress line with an ETA every tenth of the run to standard output.
    Returns (on every rank; Ray keeps rank 0's) ``{"history": [epoch rows], "epochs_done", "resumed_from_epoch",
    "continued_from", "epoch_s", "replica_checksums", "test_acc", "test_loss", "teacher_test_acc",
    "teacher_test_loss"}``; ``epoch_s`` holds the wall seconds of each epoch this attempt trained, its validation,
    report and checkpoint included (not the last epoch's final report).
    """
    import ray.train
    import ray.train.torch
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # Ray Train logs every report at INFO under a logger named after its file; the progress line says it all.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    show_progress()
    job: JobSpec = config["job"]
    epochs: int = config["epochs"]
    candidate = parse_candidate(job.candidate)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run_name = context.get_experiment_name()
    device = ray.train.torch.get_device()
    seed = job.teacher.seed
    recipe = job.final.recipe.model_copy(update={"epochs": epochs})
    check_precision(recipe.precision, device, "final.recipe.precision")
    workers = loader_workers(job.final.cpus_per_worker, job.resources.loader_workers)
    torch.set_num_threads(training_threads(job.final.cpus_per_worker, workers))

    bundle = job.load_data()
    teacher = load_teacher(job.teacher.checkpoint, job.teacher, bundle)
    student = place(build_student(job.student, job.quant, bundle, teacher, seed), device)
    place(teacher, device)
    sampler, loader = _shard_loader(bundle, candidate, recipe.batch_size, seed, rank, world, workers, device)
    saved, origin = _start_state(ray.train.get_checkpoint(), config.get("reuse"), job.candidate, run_name)
    if saved is not None:
        _load_model_state(student, saved["model"], run_name)
    model = ray.train.torch.prepare_model(student)
    optimizer = make_optimizer(student.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loader))
    start_epoch, history = 0, []
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        _resume_schedule(scheduler, optimizer, saved["scheduler"], saved["epoch"] * len(loader))
        start_epoch, history = saved["epoch"], list(saved["history"])
    if rank == 0 and config.get("attempts") is not None:
        ray.get(config["attempts"].add.remote(start_epoch))
    mix = build_batch_mix(candidate, bundle.num_classes)
    val = eval_loader(bundle.val, bundle, EVAL_BATCH_SIZE, sampler=range(rank, len(bundle.val), world))
    next_due = (start_epoch // config["validate_every"] + 1) * config["validate_every"]

    def state(epoch: int) -> dict:
        return {
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "epochs": epochs,
            "candidate": job.candidate,
            "history": history,
            "origin": origin,
        }

    loop_start = last_checkpoint = epoch_end = time.perf_counter()
    epoch_s = []
    for epoch in range(start_epoch + 1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(seed * 1_000_000 + epoch * 1_000 + rank)
        lr = optimizer.param_groups[0]["lr"]
        stats = run_epoch(
            model,
            loader,
            optimizer,
            mix=mix,
            teacher=teacher,
            kd=job.kd,
            scheduler=scheduler,
            device=device,
            precision=recipe.precision,
        )
        checkpoint_now = epoch == epochs or time.perf_counter() - last_checkpoint >= config["checkpoint_every_s"]
        aggregated = _aggregate(stats.loss, stats.images, stats.seconds, checkpoint_now, device)
        loss, images_per_s, checkpoint_now = aggregated
        validate = epoch >= next_due or epoch == epochs
        val_acc, val_loss = math.nan, math.nan
        if validate:
            val_acc, val_loss, val_s = _validate(student, val, device)
            epoch_train_s = stats.images * world / images_per_s
            next_due = next_validation(
                epoch, config["validate_every"], val_s, epoch_train_s, config["validation_share"]
            )
        row = {
            "epoch": epoch,
            "train_loss": loss,
            "val_acc": val_acc,
            "val_loss": val_loss,
            "images_per_s": images_per_s,
            "lr": lr,
            "candidate": job.candidate,
        }
        history.append(row)
        if rank == 0:
            _write_line(sys.stderr, epoch_line(run_name, row, epochs, world))
            if progress_due(epoch, start_epoch, epochs):
                _write_line(
                    sys.stdout,
                    progress_line(run_name, row, epochs, epoch - start_epoch, time.perf_counter() - loop_start),
                )
        if epoch < epochs and (checkpoint_now or validate):
            _report(row, state(epoch) if checkpoint_now else None, None, rank)
        if checkpoint_now:
            last_checkpoint = time.perf_counter()
        epoch_s.append(time.perf_counter() - epoch_end)
        epoch_end += epoch_s[-1]

    summary = _final_summary(bundle, student, teacher, device, rank)
    done = max(start_epoch, epochs)
    _report(dict(history[-1], **summary), state(done), _artifact(job, bundle, student), rank)
    return {
        "history": history,
        "epochs_done": done,
        "resumed_from_epoch": start_epoch,
        "continued_from": origin,
        "epoch_s": epoch_s,
        "replica_checksums": _gather(_parameter_checksum(student), device, world),
        "device": str(next(student.parameters()).device),
        "backend": _backend(),
        **summary,
    }


def next_validation(epoch: int, every: int, val_s: float, epoch_s: float, share: float) -> int:
    """The epoch of the next validation after one after epoch ``epoch`` that took ``val_s`` seconds, when a training
    epoch takes ``epoch_s`` seconds: ``every`` epochs later, or later still so that validating takes at most
    ``share`` of the training time."""
    return epoch + max(every, math.ceil(val_s / (share * max(epoch_s, 1e-9))))


def _validate(student: nn.Module, loader, device: torch.device) -> tuple[float, float, float]:
    """Top-1 (fraction) and mean cross-entropy (nats) over the whole validation split, each worker evaluating its
    share (``loader``), and the slowest worker's seconds."""
    start = time.perf_counter()
    acc, loss = evaluate(student, loader, device)
    images = float(len(loader.sampler))
    correct, loss_sum, total = _all_reduce([acc * images, loss * images, images], device, "sum")
    (seconds,) = _all_reduce([time.perf_counter() - start], device, "max")
    return correct / max(total, 1.0), loss_sum / max(total, 1.0), seconds


def progress_due(epoch: int, start_epoch: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` of a run that trains epochs ``start_epoch + 1 .. epochs`` prints a progress line:
    after every :data:`PROGRESS_LINES`-th part of those epochs (rounded up to whole epochs) and after the last."""
    step = max(1, math.ceil((epochs - start_epoch) / PROGRESS_LINES))
    return epoch == epochs or (epoch - start_epoch) % step == 0


def eta_seconds(trained: int, remaining: int, elapsed_s: float) -> float:
    """Seconds left for ``remaining`` epochs at the mean pace of the ``trained`` epochs that took ``elapsed_s``."""
    return elapsed_s / max(trained, 1) * remaining


def _duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``42s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(run_name: str, row: dict, epochs: int, trained: int, elapsed: float) -> str:
    """The terminal's progress line after ``row``'s epoch, the ``trained``-th this attempt trained in ``elapsed``
    wall seconds: the epoch reached, train loss, val accuracy when validated, seconds per epoch (validation and
    checkpoints included) and the ETA of the run's remaining epochs."""
    val = "" if math.isnan(row["val_acc"]) else f", val acc {row['val_acc']:.4f}"
    eta = eta_seconds(trained, epochs - row["epoch"], elapsed)
    return (
        f"{run_name} epoch {row['epoch']}/{epochs} ({100 * row['epoch'] / epochs:.0f} %): loss "
        f"{row['train_loss']:.4f}{val}, {elapsed / max(trained, 1):.2f} s/epoch, ETA {_duration(eta)}"
    )


def epoch_line(run_name: str, row: dict, epochs: int, world: int) -> str:
    """The log file's line of one epoch: train loss, val accuracy (``-`` when not validated) and throughput."""
    val = "-" if math.isnan(row["val_acc"]) else f"{row['val_acc']:.4f}"
    return (
        f"{run_name} epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}, val acc {val}, "
        f"{row['images_per_s']:.0f} img/s over {world} worker(s)"
    )


def _write_line(stream, line: str) -> None:
    """Write one line and flush (not print: Ray Train's patched print would show a line twice)."""
    stream.write(line + "\n")
    stream.flush()


class Attempts:
    """The epoch each attempt of one Ray Train run started after (0: from scratch), in order: the first attempt's,
    then one per restart after a worker or node loss (Ray Train restores the last checkpoint)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def add(self, epoch: int) -> None:
        """Record that an attempt starts after epoch ``epoch``."""
        self.epochs.append(epoch)

    def get(self) -> list[int]:
        """Every attempt's start epoch, in order."""
        return self.epochs


def _backend() -> str | None:
    """The torch.distributed backend of this worker's process group (``gloo``, ``nccl``), or None without one."""
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def _shard_loader(
    bundle: DataBundle,
    candidate,
    global_batch_size: int,
    seed: int,
    rank: int,
    world: int,
    workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[DistributedSampler, Any]:
    """This worker's ``DistributedSampler`` over the training set and its augmented loader (``workers`` loader
    processes, pinned memory on a GPU), whose batch is ``global_batch_size // world`` images (at least 1); an error
    when that leaves the worker no full batch."""
    batch_size = max(1, global_batch_size // world)
    sampler = DistributedSampler(bundle.train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    pin = torch.device(device).type == "cuda"
    loader = train_loader(
        bundle.train, candidate, bundle, batch_size, seed, sampler=sampler, workers=workers, pin_memory=pin
    )
    if len(loader) == 0:
        raise DaqSearchError(
            f"final.recipe.batch_size: {global_batch_size} leaves no full batch of {batch_size} in a worker's "
            f"share of {len(sampler)} training images; lower it or use fewer workers"
        )
    return sampler, loader


def _start_state(checkpoint, reuse: dict | None, candidate: str, run_name: str) -> tuple[dict | None, dict | None]:
    """The training state a run starts from and where it came from (``origin``): its own latest checkpoint (which
    must train ``candidate``; its origin is kept), else the ``reuse`` folder's state (of any candidate: a search
    trunk's or a calibration anchor's; the origin names its ``source``, ``folder``, ``candidate`` and ``epoch``),
    else ``(None, None)``: from scratch."""
    if checkpoint is not None:
        saved = _load_saved_state(checkpoint, candidate, run_name)
        return saved, saved.get("origin")
    if reuse is None:
        return None, None
    import ray.train

    saved = _load_saved_state(ray.train.Checkpoint.from_directory(reuse["folder"]), candidate, run_name, own=False)
    origin = {"source": reuse["source"], "folder": reuse["folder"], "candidate": saved["candidate"]}
    return saved, origin | {"epoch": saved["epoch"]}


def _load_saved_state(checkpoint, candidate: str, run_name: str, own: bool = True) -> dict | None:
    """The training state in ``checkpoint``, or None for none: the run's own latest checkpoint (``own``: it must
    train ``candidate``) or a reused start state (of any candidate)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        state = load_state(path, f"checkpoint of run {run_name!r}")
    missing = [key for key in _STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise DaqSearchError(
            f"checkpoint of run {run_name!r}: {checkpoint.path} lacks {', '.join(missing)}; "
            "start over with another --name"
        )
    if own and state["candidate"] != candidate:
        raise DaqSearchError(
            f"checkpoint of run {run_name!r}: it trains {state['candidate']}, this run {candidate}; "
            "use another --name for a different candidate"
        )
    return state


def _load_model_state(student: nn.Module, state: dict, run_name: str) -> None:
    """Load a checkpoint's student state (weights, BN statistics, quantizer steps) into ``student``."""
    try:
        student.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        reason = str(err).splitlines()[0]
        raise DaqSearchError(
            f"checkpoint of run {run_name!r}: does not fit the spec's student ({reason}); "
            "start over with another --name"
        ) from None


def _resume_schedule(scheduler, optimizer: torch.optim.Optimizer, saved: dict, step: int) -> None:
    """Load a saved schedule and re-anchor it at ``step`` of this run's schedule (its length may differ)."""
    total = getattr(scheduler, "T_max", None)
    scheduler.load_state_dict(saved)
    if total is None:
        return
    scheduler.T_max, scheduler.last_epoch = total, step
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=False):
        cosine = (1 + math.cos(math.pi * min(step, total) / total)) / 2
        group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * cosine


def _all_reduce(values: list[float], device: torch.device, op: str) -> list[float]:
    """``values`` reduced over all workers with ``op`` (``sum`` or ``max``); unchanged without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def _aggregate(loss: float, images: int, seconds: float, flag: bool, device: torch.device) -> tuple[float, float, bool]:
    """Mean loss per image over all workers, the aggregate throughput (all images / slowest worker's time), and
    whether any worker's ``flag`` is set (so that all take the same decision)."""
    weighted_loss, total_images = _all_reduce([loss * images, float(images)], device, "sum")
    slowest, any_flag = _all_reduce([seconds, float(flag)], device, "max")
    return weighted_loss / max(total_images, 1.0), total_images / max(slowest, 1e-9), any_flag > 0


def _parameter_checksum(model: nn.Module) -> float:
    """``sum(p) + sum(p^2)`` over every parameter in float64: equal on every rank iff DDP kept the replicas equal."""
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().pow(2).sum() for p in model.parameters()))


def _gather(value: float, device: torch.device, world: int) -> list[float]:
    """``value`` of every rank, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    parts = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(parts, torch.tensor([value], dtype=torch.float64, device=device))
    return [part.item() for part in parts]


def _final_summary(bundle: DataBundle, student: nn.Module, teacher: nn.Module, device: torch.device, rank: int) -> dict:
    """Test top-1 and loss of the student and the teacher, and the number of test images (evaluated on rank 0; NaN
    elsewhere)."""
    if rank != 0:
        return dict.fromkeys(
            ("test_acc", "test_loss", "teacher_test_acc", "teacher_test_loss", "test_images"), math.nan
        )
    test = eval_loader(bundle.test, bundle, EVAL_BATCH_SIZE)
    test_acc, test_loss = evaluate(student, test, device)
    teacher_acc, teacher_loss = evaluate(teacher, test, device)
    return {
        "test_images": len(bundle.test),
        "test_acc": test_acc,
        "test_loss": test_loss,
        "teacher_test_acc": teacher_acc,
        "teacher_test_loss": teacher_loss,
    }


def _artifact(job: JobSpec, bundle: DataBundle, student: nn.Module) -> dict:
    """The deployable integer artifact of ``student``: its architecture and ``export_int_state``."""
    arch = {
        "model": job.student.model,
        "width": job.student.width,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
        "method": job.quant.method,
        "wbits": job.quant.wbits,
        "abits": job.quant.abits,
        "first_last_bits": job.quant.first_last_bits,
    }
    return {"arch": arch, "state": export_int_state(student)}


def _report(metrics: dict, state: dict | None, artifact: dict | None, rank: int) -> None:
    """``ray.train.report`` on every rank; with a ``state``, rank 0 attaches a checkpoint of it (and the artifact,
    if any)."""
    import ray.train

    if rank != 0 or state is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(Path(folder) / STATE_FILE, state)
        if artifact is not None:
            save_checkpoint(Path(folder) / ARTIFACT_FILE, artifact)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


# --- the deployable artifact ---------------------------------------------------------------------------------


def load_int_artifact(path: str | Path) -> nn.Module:
    """The student of a ``student_int.pt`` artifact, in eval mode: the architecture rebuilt with ``create_model``
    and ``quantize``, then ``load_int_state``; it computes what the trained fake-quantized student computed."""
    path = Path(path)
    payload = load_state(path, "artifact")
    if not isinstance(payload, dict) or not isinstance(payload.get("arch"), dict) or "state" not in payload:
        raise DaqSearchError(f"artifact: {path} is not a daq-search integer artifact (needs 'arch' and 'state')")
    arch = payload["arch"]
    try:
        model = create_model(
            arch["model"],
            num_classes=arch["num_classes"],
            in_channels=arch["in_channels"],
            image_size=arch["image_size"],
            width=arch["width"],
        )
        model = quantize(
            model, arch["wbits"], arch["abits"], method=arch["method"], first_last_bits=arch["first_last_bits"]
        )
        load_int_state(model, payload["state"])
    except KeyError as err:
        raise DaqSearchError(f"artifact: {path}: 'arch' lacks {err}") from None
    except DaqSearchError as err:
        raise DaqSearchError(f"artifact: {path}: {err}") from None
    return model.eval()
