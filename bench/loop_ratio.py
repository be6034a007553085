"""``trial_loop_ratio``: the search's trial loop run by Ray Tune against the same loop in plain PyTorch.

Both run the same job (digits, the tiny CNN, a fixed candidate), the same number of loader workers and torch
threads, and per epoch the same work: the package's :class:`~daq_search.trial_training.TrialTraining` epoch (one
KD epoch of the quantized student), its metrics (validation and the DA score on the scoring subset) and a checkpoint
of the training state. The Tune side is :func:`daq_search.search.run_trial` itself in a one-trial Tune run (epoch
time = the interval between its results' arrivals at the driver); the plain side drives the same ``TrialTraining`` with ``torch.save`` in place of
``tune.report``. The two alternate, plain first and last (``ROUNDS`` Tune runs in one Ray session), so a drift of
machine load weighs on both sides. Epoch 1 (which also computes the teacher-only scores) is left out of every run.
Each Tune run is compared with the plain runs on either side of it (median epoch seconds); ``trial_loop_ratio`` is
the median of those ratios (1.0: Tune adds nothing; >= 0.95 the target).

``final_loop_ratio``: the final training's epoch inside its Ray Train job against the same epoch in a plain PyTorch
DDP job. Both run the demo's final training (jobs/demo.yaml: scenes 32x32, 10 images per class, the W2A2 resnet8
student, global batch 50 on 2 gloo workers of 1 CPU) under a fixed candidate, distilling from an untrained resnet8
teacher (the loop's cost is the same). The plain side is 2 processes running the package's per-worker epoch
(:func:`daq_search.kd.run_epoch` on the run's ``DistributedSampler`` shard, DDP, the loss and throughput
all-reduce) with the same validations (:func:`daq_search.train.next_validation`, each worker on its share of the
split) and a ``torch.save`` checkpoint on the same cadence; the Ray Train side is :func:`daq_search.train._fit`
itself (the worker's ``epoch_s``), which adds Ray Train's reports and checkpoints. They alternate, plain first
and last (``FINAL_ROUNDS`` Ray Train runs in one Ray session); epoch 1 is left out of every run, and a round's
ratio is the mean epoch seconds of the plain runs on either side over the Ray Train run's (a mean, not a median:
the rare epochs that validate or checkpoint count); ``final_loop_ratio`` is the median round (>= 0.8 the target).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from daq_search.candidates import parse_candidate
from daq_search.checkpoints import save_checkpoint
from daq_search.config import JobSpec, load_job
from daq_search.kd import eval_loader, loader_workers, make_optimizer, make_scheduler, run_epoch, training_threads
from daq_search.models import create_for
from daq_search.search import CANDIDATE_KEY, run_trial, scoring_subset, teacher_metrics
from daq_search.search.trial import cached_data, job_training
from daq_search.student import build_student
from daq_search.teacher import get_teacher, load_teacher
from daq_search.transforms import build_batch_mix

EPOCHS = 6
QUICK_EPOCHS = 3
ROUNDS = 7
QUICK_ROUNDS = 1
CANDIDATE = "trivialaugment"
CACHE_FILE = "loop_ratio.json"
FINAL_EPOCHS = 30
FINAL_QUICK_EPOCHS = 12
FINAL_ROUNDS = 5
FINAL_QUICK_ROUNDS = 1
FINAL_CANDIDATE = "trivialaugment+cutmix(alpha=1.0)"
FINAL_CACHE_FILE = "final_loop_ratio.json"
DEMO_JOB = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"


def loop_job(epochs: int = EPOCHS, loader_workers: int | None = None) -> JobSpec:
    """The measured job: digits, the tiny CNN as teacher and W2A2 student, ``epochs`` trial epochs."""
    return JobSpec.model_validate(
        {
            "name": "loop-ratio",
            "data": {"name": "digits", "val_per_class": 10},
            "teacher": {"model": "tiny_cnn", "recipe": {"epochs": 5, "batch_size": 64, "lr": 0.01}},
            "student": {"model": "tiny_cnn"},
            "scorer": {"subset": 200, "batch_size": 100},
            "trial": {"epochs": epochs, "batch_size": 64},
            "resources": {"cpus_per_trial": 1, "loader_workers": loader_workers},
        }
    )


def plain_loop(job: JobSpec, teacher_path: Path, candidate_id: str) -> list[float]:
    """Seconds of each epoch of the trial loop in plain PyTorch: ``run_trial``'s steps without Tune."""
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    torch.set_num_threads(training_threads(job.resources.cpus_per_trial, workers))
    candidate = parse_candidate(candidate_id)
    bundle = cached_data(job)
    teacher = load_teacher(teacher_path, job.teacher, bundle)
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    training = job_training(job, teacher, bundle, candidate, subset, "cpu", workers)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="daq-plain-") as folder:
        for epoch in range(1, job.trial.epochs + 1):
            start = time.perf_counter()
            if epoch == 1:
                teacher_metrics(teacher, subset, candidate, bundle, job)
            training.train_epoch(epoch)
            training.read_metrics()
            torch.save({**training.state_dict(), "epoch": epoch}, Path(folder) / "trial.pt")
            seconds.append(time.perf_counter() - start)
    return seconds


def tune_loop(job: JobSpec, teacher_path: Path, candidate_id: str, storage: Path) -> list[float]:
    """Seconds of each epoch of ``run_trial`` in a one-trial Tune run, as the driver sees them: the time between
    the arrivals of consecutive epochs' results (so the report's round trip counts); epoch 1 is Tune's
    ``time_this_iter_s``."""
    from ray import tune

    from daq_search.runtime import ray_session

    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # "no result.json": Tune's file loggers are off here

    class EpochTimes(tune.Callback):
        def __init__(self):
            self.seconds: dict[int, float] = {}
            self.last_arrival: float | None = None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            now = time.perf_counter()
            first = self.last_arrival is None
            self.seconds[int(result["epoch"])] = result["time_this_iter_s"] if first else now - self.last_arrival
            self.last_arrival = now

    times = EpochTimes()
    resources = {"cpu": job.resources.cpus_per_trial}
    with ray_session(num_cpus=max(1, int(job.resources.cpus_per_trial))):
        tuner = tune.Tuner(
            tune.with_resources(run_trial, resources),
            param_space={
                "job": job.model_dump(mode="json"),
                "teacher_checkpoint": str(teacher_path),
                CANDIDATE_KEY: candidate_id,
            },
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(
                name=f"loop-{time.time_ns()}", storage_path=str(storage), callbacks=[times], verbose=0
            ),
        )
        result = tuner.fit()[0]
    if result.error is not None:
        raise RuntimeError(f"the Tune trial failed: {result.error}")
    return [times.seconds[epoch] for epoch in sorted(times.seconds)]


def round_ratios(
    plain: list[list[float]], tuned: list[list[float]], center: Callable[[list[float]], float] = statistics.median
) -> list[float]:
    """Per Tune (or Ray Train) run ``i``: the ``center`` (median, or mean) epoch seconds of plain runs ``i`` and
    ``i + 1`` (pooled) over the run's, epoch 1 of every run left out; ``plain`` has one run more than ``tuned``."""
    return [center(before[1:] + after[1:]) / center(trial[1:]) for before, trial, after in zip(plain, tuned, plain[1:])]


def measure(work_dir: Path, epochs: int = EPOCHS, rounds: int = ROUNDS, log=print) -> dict:
    """Alternate the plain loop and the Tune trial (plain, Tune, plain, ... plain: ``rounds`` Tune runs) and
    return ``trial_loop_ratio`` with the epoch times behind it."""
    from daq_search.runtime import ray_session

    job = loop_job(epochs)
    bundle = cached_data(job)
    _, teacher_path = get_teacher(job.data, job.teacher, bundle, work_dir / "teachers")
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    log(
        f"loop ratio: {rounds} Tune trials between {rounds + 1} plain PyTorch loops, {epochs} epochs, {workers} loader workers"
    )
    plain, tuned = [plain_loop(job, teacher_path, CANDIDATE)], []
    with ray_session(num_cpus=max(1, int(job.resources.cpus_per_trial))):
        for _ in range(rounds):
            tuned.append(tune_loop(job, teacher_path, CANDIDATE, work_dir / "tune"))
            plain.append(plain_loop(job, teacher_path, CANDIDATE))
    ratios = round_ratios(plain, tuned)
    return {
        "trial_loop_ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "plain_epoch_s": plain,
        "tune_epoch_s": tuned,
        "loader_workers": workers,
        "torch_threads": training_threads(job.resources.cpus_per_trial, workers),
        "candidate": CANDIDATE,
        "train_images": len(bundle.train),
    }


def final_job(work_dir: Path, epochs: int) -> JobSpec:
    """The demo's final training (jobs/demo.yaml) for ``epochs`` epochs under :data:`FINAL_CANDIDATE`, distilling
    from an untrained resnet8 teacher saved once in ``work_dir``."""
    job = load_job(DEMO_JOB)
    path = (work_dir / "final-loop-teacher.pt").resolve()
    if not path.is_file():
        torch.manual_seed(job.teacher.seed)
        save_checkpoint(path, {"model": create_for(job.teacher.model, job.teacher.width, job.load_data()).state_dict()})
    return job.model_copy(
        update={
            "candidate": FINAL_CANDIDATE,
            "teacher": job.teacher.model_copy(update={"checkpoint": str(path)}),
            "final": job.final.model_copy(update={"recipe": job.final.recipe.model_copy(update={"epochs": epochs})}),
        }
    )


def _plain_worker(rank: int, world: int, job: JobSpec, port: int, out: str) -> None:
    """One process of the plain PyTorch DDP job: the final training's per-worker setup and epochs with the same
    validations (:func:`~daq_search.train.next_validation`) and checkpoints (``torch.save`` every
    ``CHECKPOINT_EVERY_S``; the last epoch's is the final report's, outside the epochs, on both sides), no Ray;
    rank 0 writes each epoch's wall seconds to ``out`` as JSON."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from daq_search.train import (
        CHECKPOINT_EVERY_S,
        EVAL_BATCH_SIZE,
        VALIDATE_EVERY,
        VALIDATION_SHARE,
        _aggregate,
        _shard_loader,
        _validate,
        next_validation,
    )

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    workers = loader_workers(job.final.cpus_per_worker, job.resources.loader_workers)
    torch.set_num_threads(training_threads(job.final.cpus_per_worker, workers))
    candidate, recipe, seed, device = (
        parse_candidate(job.candidate),
        job.final.recipe,
        job.teacher.seed,
        torch.device("cpu"),
    )
    bundle = job.load_data()
    teacher = load_teacher(job.teacher.checkpoint, job.teacher, bundle)
    student = build_student(job.student, job.quant, bundle, teacher, seed)
    _, loader = _shard_loader(bundle, candidate, recipe.batch_size, seed, rank, world, workers)
    model = DistributedDataParallel(student)
    optimizer = make_optimizer(student.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loader))
    mix = build_batch_mix(candidate, bundle.num_classes)
    val = eval_loader(bundle.val, bundle, EVAL_BATCH_SIZE, sampler=range(rank, len(bundle.val), world))
    seconds, next_due, last_checkpoint = [], VALIDATE_EVERY, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="daq-plain-state-") as folder:
        for epoch in range(1, recipe.epochs + 1):
            start = time.perf_counter()
            loader.sampler.set_epoch(epoch)
            torch.manual_seed(seed * 1_000_000 + epoch * 1_000 + rank)
            stats = run_epoch(model, loader, optimizer, mix=mix, teacher=teacher, kd=job.kd, scheduler=scheduler)
            checkpoint_now = time.perf_counter() - last_checkpoint >= CHECKPOINT_EVERY_S
            _, images_per_s, checkpoint_now = _aggregate(
                stats.loss, stats.images, stats.seconds, checkpoint_now, device
            )
            if epoch >= next_due or epoch == recipe.epochs:
                val_s = _validate(student, val, device)[2]
                next_due = next_validation(
                    epoch, VALIDATE_EVERY, val_s, stats.images * world / images_per_s, VALIDATION_SHARE
                )
            if checkpoint_now and epoch < recipe.epochs:
                if rank == 0:
                    state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
                    torch.save(state, Path(folder) / "state.pt")
                last_checkpoint = time.perf_counter()
            seconds.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(seconds))
    dist.destroy_process_group()


def plain_final_loop(job: JobSpec) -> list[float]:
    """Seconds of each epoch of the final training as a plain PyTorch DDP job of ``final.workers`` processes, with
    ``OMP_NUM_THREADS`` set to their torch threads as Ray sets it in its workers."""
    import torch.multiprocessing as mp

    cpus = job.final.cpus_per_worker
    threads = training_threads(cpus, loader_workers(cpus, job.resources.loader_workers))
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        with socket.socket() as probe, tempfile.TemporaryDirectory(prefix="daq-plain-final-") as folder:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            out = Path(folder) / "epochs.json"
            mp.spawn(_plain_worker, args=(job.final.workers, job, port, str(out)), nprocs=job.final.workers)
            return json.loads(out.read_text())
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def ray_final_loop(job: JobSpec, storage: Path) -> list[float]:
    """Seconds of each epoch of the final training inside its Ray Train job (:func:`daq_search.train._fit`, with
    its cadence of validations, reports and checkpoints), as its rank-0 worker measured them."""
    from daq_search.train import _fit

    name = f"final-loop-{time.time_ns()}"
    outcome, _ = _fit(
        job, job.candidate, job.final.recipe.epochs, job.final.workers, False, str(storage.resolve()), name
    )
    return outcome["epoch_s"]


def measure_final(work_dir: Path, epochs: int = FINAL_EPOCHS, rounds: int = FINAL_ROUNDS, log=print) -> dict:
    """Alternate the plain DDP job and the Ray Train job (plain, Ray Train, plain, ... plain: ``rounds`` Ray Train
    runs in one Ray session) and return ``final_loop_ratio`` with the epoch times behind it."""
    from daq_search.runtime import ray_session
    from daq_search.train import CHECKPOINT_EVERY_S, VALIDATE_EVERY, routed_worker_logs

    job = final_job(work_dir, epochs)
    log(
        f"final loop ratio: {rounds} Ray Train runs between {rounds + 1} plain PyTorch DDP runs, {epochs} epochs of "
        f"the demo's final training on {job.final.workers} workers"
    )
    plain, trained = [plain_final_loop(job)], []
    with ray_session(num_cpus=job.final.workers), routed_worker_logs(work_dir / "final_loop_ray.log"):
        for _ in range(rounds):
            trained.append(ray_final_loop(job, work_dir / "final-loop-ray"))
            plain.append(plain_final_loop(job))
    ratios = round_ratios(plain, trained, statistics.fmean)
    return {
        "final_loop_ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "plain_epoch_s": plain,
        "ray_train_epoch_s": trained,
        "workers": job.final.workers,
        "batch_size": job.final.recipe.batch_size,
        "validate_every": VALIDATE_EVERY,
        "checkpoint_every_s": CHECKPOINT_EVERY_S,
        "candidate": FINAL_CANDIDATE,
        "train_images": len(job.load_data().train),
    }


def _cached(work_dir: Path, cache_file: str, compute: Callable[[], dict]) -> dict:
    """``work_dir/cache_file``'s measurement, computed (and written atomically) when absent."""
    cache = work_dir / cache_file
    if not cache.is_file():
        tmp = cache.with_name(f".{cache_file}.tmp")
        tmp.write_text(json.dumps(compute(), indent=1))
        os.replace(tmp, cache)
    return json.loads(cache.read_text())


def _merge(results_json: Path, keys: dict) -> None:
    """Set ``keys`` in ``results_json`` (created when absent), keeping its other keys; replaced atomically."""
    results = json.loads(results_json.read_text()) if results_json.is_file() else {}
    results.update(keys)
    tmp = results_json.with_name(f".{results_json.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, results_json)


def record(results_json: Path, work_dir: Path, log=print, quick: bool = False) -> float:
    """Add ``trial_loop_ratio`` and the ``trial_loop`` details to ``results_json``: measured once per work folder
    (``QUICK_EPOCHS`` epochs with ``quick``), then read from ``work_dir/loop_ratio.json`` like the bench's other
    cached jobs; returns the ratio."""
    shape = (QUICK_EPOCHS, QUICK_ROUNDS) if quick else (EPOCHS, ROUNDS)
    loop = _cached(work_dir, CACHE_FILE, lambda: measure(work_dir, *shape, log=log))
    _merge(results_json, {"trial_loop_ratio": loop["trial_loop_ratio"], "trial_loop": loop})
    log(f"trial_loop_ratio {loop['trial_loop_ratio']:.3f} (plain / Tune median epoch seconds)")
    return loop["trial_loop_ratio"]


def record_final(results_json: Path, work_dir: Path, log=print, quick: bool = False) -> float:
    """Add ``final_loop_ratio`` and the ``final_loop`` details to ``results_json``: measured once per work folder
    (``FINAL_QUICK_EPOCHS`` epochs and one round with ``quick``), then read from ``work_dir/final_loop_ratio.json``;
    returns the ratio."""
    shape = (FINAL_QUICK_EPOCHS, FINAL_QUICK_ROUNDS) if quick else (FINAL_EPOCHS, FINAL_ROUNDS)
    loop = _cached(work_dir, FINAL_CACHE_FILE, lambda: measure_final(work_dir, *shape, log=log))
    _merge(results_json, {"final_loop_ratio": loop["final_loop_ratio"], "final_loop": loop})
    log(f"final_loop_ratio {loop['final_loop_ratio']:.3f} (plain DDP / Ray Train mean epoch seconds)")
    return loop["final_loop_ratio"]
