"""``trial_loop_ratio``: the search's trial loop run by Ray Tune against the same loop in plain PyTorch.

Both run the same job (digits, the tiny CNN, a fixed candidate), the same number of loader workers and torch
threads, and per epoch the same work: one KD epoch of the quantized student, validation, the DA score on the scoring
subset and a checkpoint of the training state. The Tune side is :func:`daq_search.search.run_trial` itself in a
one-trial Tune run (epoch time = Tune's ``time_this_iter_s``); the plain side is that loop written out with
``torch.save`` in place of ``tune.report``. The plain loop runs before and after the Tune trial, so a change
of machine load weighs on both sides. Epoch 1 (which also computes the teacher-only scores) is left out of every
run; the ratio is median plain epoch seconds / median Tune epoch seconds (1.0: Tune adds nothing, >= 0.95 the
target).
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
from daq_search.data import load_data
from daq_search.kd import eval_loader, evaluate, loader_workers, make_optimizer, make_scheduler, run_epoch, train_loader
from daq_search.metric import score_candidate
from daq_search.search import CANDIDATE_KEY, run_trial, scoring_subset, teacher_metrics
from daq_search.student import build_student
from daq_search.teacher import get_teacher, load_teacher
from daq_search.transforms import build_batch_mix

EPOCHS = 6
QUICK_EPOCHS = 3
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
    """Seconds of each epoch of the trial loop in plain PyTorch (the same steps as ``run_trial``)."""
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    torch.set_num_threads(max(1, int(job.resources.cpus_per_trial) - workers))
    candidate = parse_candidate(candidate_id)
    bundle = load_data(job.data.spec())
    teacher = load_teacher(teacher_path, job.teacher, bundle)
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    student = build_student(job.student, job.quant, bundle, teacher, seed=job.teacher.seed)
    seed = job.searcher.seed
    loader = train_loader(bundle.train, candidate, bundle, job.trial.batch_size, seed, workers=workers)
    optimizer = make_optimizer(student.parameters(), job.trial)
    scheduler = make_scheduler(optimizer, job.trial, len(loader))
    mix = build_batch_mix(candidate, bundle.num_classes)
    val = eval_loader(bundle.val, bundle)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="daq-plain-") as folder:
        for epoch in range(1, job.trial.epochs + 1):
            start = time.perf_counter()
            if epoch == 1:
                teacher_metrics(teacher, subset, candidate, bundle, job)
            torch.manual_seed(seed * 1_000_003 + epoch)
            loader.sampler.set_epoch(epoch)
            run_epoch(student, loader, optimizer, mix=mix, teacher=teacher, kd=job.kd, scheduler=scheduler)
            evaluate(student, val)
            score_candidate(
                student,
                subset,
                candidate,
                bundle=bundle,
                lam=job.scorer.lam,
                temperature=job.scorer.temperature,
                batch_size=job.scorer.batch_size,
                seed=job.data.seed,
            )
            state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
            torch.save(state, Path(folder) / "trial.pt")
            seconds.append(time.perf_counter() - start)
    return seconds


def tune_loop(job: JobSpec, teacher_path: Path, candidate_id: str, storage: Path) -> list[float]:
    """Seconds of each epoch (Tune's ``time_this_iter_s``) of ``run_trial`` in a one-trial Tune run."""
    from ray import tune

    from daq_search.runtime import ray_session

    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # "no result.json": Tune's file loggers are off here

    class EpochTimes(tune.Callback):
        def __init__(self):
            self.seconds: dict[int, float] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.seconds[int(result["epoch"])] = float(result["time_this_iter_s"])

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


def measure(work_dir: Path, epochs: int = EPOCHS, log=print) -> dict:
    """Run both loops once (plain first) and return ``trial_loop_ratio`` with the epoch times behind it."""
    job = loop_job(epochs)
    bundle = load_data(job.data.spec())
    _, teacher_path = get_teacher(job.data, job.teacher, bundle, work_dir / "teachers")
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    log(f"loop ratio: plain PyTorch loop, {epochs} epochs, {workers} loader workers")
    before = plain_loop(job, teacher_path, CANDIDATE)
    log("loop ratio: the same loop as a Ray Tune trial")
    tuned = tune_loop(job, teacher_path, CANDIDATE, work_dir / "tune")
    log("loop ratio: the plain loop again (load drift affects both sides alike)")
    after = plain_loop(job, teacher_path, CANDIDATE)
    plain_s, tune_s = statistics.median(before[1:] + after[1:]), statistics.median(tuned[1:])
    return {
        "trial_loop_ratio": plain_s / tune_s,
        "plain_epoch_s": before + after,
        "tune_epoch_s": tuned,
        "loader_workers": workers,
        "torch_threads": max(1, int(job.resources.cpus_per_trial) - workers),
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
        tmp.write_text(json.dumps(measure(work_dir, QUICK_EPOCHS if quick else EPOCHS, log=log), indent=1))
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
