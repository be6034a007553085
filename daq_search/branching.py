"""Late-phase branching's shared trunk: the student trained under ``branch.trunk`` for the first epochs of the final
recipe's schedule, before the search's branches continue it (see :mod:`daq_search.selection`).

The trunk trains once per search, as a Ray task before any trial, into ``RUN_DIR/trunk/state.pt``: the final
training's state format (``model``, ``optimizer``, ``scheduler``, ``epoch``, ``epochs``, ``candidate`` = the trunk's
policy, ``history``), so a branch trial and the final training both start from it. It is written atomically every
:data:`TRUNK_CHECKPOINT_EVERY_S` seconds and at its end; an interrupted search resumes the trunk from there.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from .candidates import parse_candidate
from .checkpoints import load_state
from .config import JobSpec
from .errors import DaqSearchError
from .files import atomic_write
from .kd import training_threads
from .logs import show_progress
from .runtime import run_as_task
from .selection import branch_epoch
from .teacher import load_teacher

logger = logging.getLogger(__name__)

TRUNK_DIR = "trunk"
TRUNK_STATE_FILE = "state.pt"
"""The trunk's state file in ``RUN_DIR/trunk``; the final training's checkpoints use the same name and format."""
TRUNK_CHECKPOINT_EVERY_S = 60.0
"""How often (seconds of training) the trunk's state is written; an interruption loses at most this much."""
PROGRESS_EVERY = 0.1
"""The trunk logs a progress line each time this fraction of its epochs is done."""


def trunk_folder(run_dir: str | Path) -> Path:
    """``RUN_DIR/trunk``: where a search's trunk state lives."""
    return Path(run_dir) / TRUNK_DIR


def trunk_epochs(job: JobSpec) -> int:
    """How many epochs of the final recipe the trunk trains (the branch epoch)."""
    return branch_epoch(job.final.recipe.epochs, job.branch.at)


def read_trunk(folder: str | Path) -> dict | None:
    """The trunk state saved in ``folder``, or None when there is none yet."""
    path = Path(folder) / TRUNK_STATE_FILE
    return load_state(path, "trunk state") if path.is_file() else None


def trunk_matches(state: dict | None, job: JobSpec) -> bool:
    """Whether ``state`` is a (possibly partial) trunk of ``job``: its policy and the final recipe's length."""
    return (
        state is not None
        and state.get("candidate") == job.branch.trunk
        and state.get("epochs") == (job.final.recipe.epochs)
    )


def ensure_trunk(job: JobSpec, teacher_path: Path, run_dir: Path, *, cpus: float, use_gpu: bool) -> Path:
    """The folder holding ``job``'s finished trunk: as found in ``RUN_DIR/trunk``, or trained (or finished after an
    interruption) now as a Ray task reserving ``cpus`` CPUs and, with ``use_gpu``, one GPU (Ray must be up). A state
    there of another trunk policy or schedule is refused (one line)."""
    folder = trunk_folder(run_dir)
    state = read_trunk(folder)
    if state is not None and not trunk_matches(state, job):
        raise DaqSearchError(
            f"branch: {folder} holds a trunk of {state.get('candidate')} over {state.get('epochs')} epochs, this job "
            f"{job.branch.trunk} over {job.final.recipe.epochs}; allowed: the same job, or a new --name"
        )
    epochs = trunk_epochs(job)
    if state is not None and state["epoch"] >= epochs:
        logger.info(f"trunk: found {folder} ({job.branch.trunk}, {epochs} of {job.final.recipe.epochs} epochs)")
        return folder
    done = 0 if state is None else state["epoch"]
    logger.info(
        f"trunk: training under {job.branch.trunk} for epochs {done + 1}-{epochs} of {job.final.recipe.epochs} "
        "as a Ray task"
    )
    run_as_task(_train_trunk_task, job, str(teacher_path), str(folder), cpus, use_gpu, cpus=cpus, use_gpu=use_gpu)
    return folder


def _train_trunk_task(job: JobSpec, teacher_path: str, folder: str, cpus: float, use_gpu: bool) -> None:
    """Inside a Ray worker: train the trunk on the GPU Ray gave it or its CPUs (see :func:`train_trunk`)."""
    show_progress()
    torch.set_num_threads(training_threads(cpus, 0))
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    train_trunk(job, Path(teacher_path), Path(folder), device)


def train_trunk(job: JobSpec, teacher_path: Path, folder: Path, device: Any = "cpu") -> dict:
    """Train ``job``'s trunk to its branch epoch in this process, continuing a partial state in ``folder``; writes
    the state every :data:`TRUNK_CHECKPOINT_EVERY_S` seconds and at the end, and returns the final state."""
    from .search.trial import job_training

    bundle = job.load_data()
    teacher = load_teacher(teacher_path, job.teacher, bundle)
    training = job_training(job, teacher, bundle, parse_candidate(job.branch.trunk), None, device, 0)
    epochs, total = trunk_epochs(job), job.final.recipe.epochs
    folder.mkdir(parents=True, exist_ok=True)
    state = read_trunk(folder)
    history: list[dict] = []
    start = 1
    if trunk_matches(state, job):
        training.load_state_dict(state)
        start, history = state["epoch"] + 1, list(state["history"])
    saved_at = time.monotonic()
    step = max(1, int(epochs * PROGRESS_EVERY))
    for epoch in range(start, epochs + 1):
        lr = training.optimizer.param_groups[0]["lr"]
        stats = training.train_epoch(epoch)
        history.append(
            {
                "epoch": epoch,
                "train_loss": stats["train_loss"],
                "val_acc": math.nan,
                "val_loss": math.nan,
                "images_per_s": stats["images_per_s"],
                "lr": lr,
                "candidate": job.branch.trunk,
            }
        )
        if not math.isfinite(stats["train_loss"]):
            raise DaqSearchError(f"branch.trunk: the trunk's training loss is {stats['train_loss']} at epoch {epoch}")
        if epoch == epochs or time.monotonic() - saved_at >= TRUNK_CHECKPOINT_EVERY_S:
            state = {**training.state_dict(), "epoch": epoch, "epochs": total, "candidate": job.branch.trunk}
            state["history"] = history
            atomic_write(folder / TRUNK_STATE_FILE, lambda tmp, s=state: torch.save(s, tmp))
            saved_at = time.monotonic()
        if epoch % step == 0 or epoch == epochs:
            logger.info(f"trunk: epoch {epoch}/{epochs}, loss {stats['train_loss']:.4f}")
    return state
