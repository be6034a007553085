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
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from daq_search.candidates import parse_candidate
from daq_search.config import JobSpec
from daq_search.kd import loader_workers, training_threads
from daq_search.search import CANDIDATE_KEY, run_trial, scoring_subset, teacher_metrics
from daq_search.search.trial import cached_data, job_training
from daq_search.teacher import get_teacher, load_teacher

EPOCHS = 6
QUICK_EPOCHS = 3
ROUNDS = 7
QUICK_ROUNDS = 1
CANDIDATE = "trivialaugment"
CACHE_FILE = "loop_ratio.json"


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


def round_ratios(plain: list[list[float]], tuned: list[list[float]]) -> list[float]:
    """Per Tune run ``i``: the median epoch seconds of plain runs ``i`` and ``i + 1`` (pooled) over the Tune run's
    median, epoch 1 of every run left out; ``plain`` has one run more than ``tuned``."""
    return [
        statistics.median(before[1:] + after[1:]) / statistics.median(trial[1:])
        for before, trial, after in zip(plain, tuned, plain[1:])
    ]


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


def record(results_json: Path, work_dir: Path, log=print, quick: bool = False) -> float:
    """Add ``trial_loop_ratio`` and the ``trial_loop`` details to ``results_json``: measured once per work folder
    (``QUICK_EPOCHS`` epochs with ``quick``), then read from ``work_dir/loop_ratio.json`` like the bench's other
    cached jobs; returns the ratio."""
    cache = work_dir / CACHE_FILE
    if not cache.is_file():
        tmp = cache.with_name(f".{CACHE_FILE}.tmp")
        measured = measure(work_dir, *((QUICK_EPOCHS, QUICK_ROUNDS) if quick else (EPOCHS, ROUNDS)), log=log)
        tmp.write_text(json.dumps(measured, indent=1))
        os.replace(tmp, cache)
    loop = json.loads(cache.read_text())
    results = json.loads(results_json.read_text()) if results_json.is_file() else {}
    results["trial_loop_ratio"] = loop["trial_loop_ratio"]
    results["trial_loop"] = loop
    tmp = results_json.with_name(f".{results_json.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, results_json)
    log(f"trial_loop_ratio {loop['trial_loop_ratio']:.3f} (plain / Tune median epoch seconds)")
    return loop["trial_loop_ratio"]
