"""The search rule: the package's own Ray Tune search (Optuna TPE + ASHA) over a regime's candidates with one
objective, run as a user would run it (a job file, ``plan_search``, ``run_search``), and its winner and cost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from daq_search.results import read_epochs
from daq_search.search import plan_search, run_search

from .regimes import Regime
from .runs import teacher_checkpoint

SEARCH_OBJECTIVES = ("score_ce",)
"""The objectives the search rule is run with (one Ray Tune search each, per regime)."""
CONCURRENT_TRIALS = 2


def search_key(regime: Regime, objective: str) -> str:
    """The cache key of a search rule's result."""
    return f"{regime.name}|{regime.key()}|search|{objective}"


def write_search_job(regime: Regime, objective: str, work_dir: Path, num_samples: int) -> Path:
    """A job file (and a list search space of the regime's candidates) for searching ``regime`` by ``objective``:
    the regime's data, cached teacher, student, quantizer, KD loss, scorer and trial recipe; TPE seed 0, ASHA on,
    two concurrent one-CPU trials. Returns the job file's path."""
    folder = work_dir / "search" / regime.name
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"name": f"{regime.name}-candidates", "candidates": list(regime.candidates)}))
    teacher_file = teacher_checkpoint(regime, work_dir).resolve()
    job = {
        "name": f"{regime.name}-{objective}",
        "data": regime.data.model_dump(),
        "teacher": {**regime.teacher.model_dump(), "checkpoint": str(teacher_file)},
        "student": regime.student.model_dump(),
        "quant": regime.quant.model_dump(),
        "kd": regime.kd.model_dump(),
        "search_space": str(space.resolve()),
        "scorer": regime.scorer.model_dump(),
        "trial": regime.trial.model_dump(),
        "searcher": {"seed": 0, "num_samples": num_samples},
        "scheduler": {"enabled": True, "grace_period": 1, "reduction_factor": 2.0},
        "resources": {"cpus_per_trial": 1.0},
        "max_concurrent_trials": CONCURRENT_TRIALS,
        "objective": objective,
        "storage": str((folder / "runs").resolve()),
    }
    path = folder / f"job-{objective}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_search_rule(regime: Regime, objective: str, work_dir: Path, num_samples: int, log=print) -> dict:
    """Run the search afresh (a folder left by an unfinished earlier attempt is removed: only finished searches
    are cached, by the caller) and return its winner, trial count, epochs trained, wall seconds (whole search and
    summed over trials) and the median training throughput its trials reported (images/s)."""
    job_path = write_search_job(regime, objective, work_dir, num_samples)
    plan = plan_search(job_path)
    if plan.run_dir.exists():
        shutil.rmtree(plan.run_dir)
    start = time.perf_counter()
    outcome = run_search(plan, log=lambda line: None, summary_every_s=1e9)
    wall = time.perf_counter() - start
    if outcome.winner_file is None:
        raise RuntimeError(f"search {plan.name} ended without a winner")
    winner = yaml.safe_load(outcome.winner_file.read_text())["candidate"]
    trials = outcome.trials
    epochs = read_epochs(outcome.run_dir)
    log(f"search {plan.name}: winner {winner} after {len(trials)} trials ({wall:.0f} s)")
    return {
        "objective": objective,
        "winner": winner,
        "trials": int(len(trials)),
        "epochs_trained": int(trials["epochs"].sum()),
        "candidates_tried": sorted(set(trials["candidate"])),
        "wall_seconds": wall,
        "trial_wall_seconds": float(trials["wall_s"].sum()),
        "median_images_per_s": float(epochs["images_per_s"].median()),
    }
