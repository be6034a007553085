"""The full-precision teacher: its cache key, its training, the cache every search shares (trained once, as a Ray
task in a search) and loading it from a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path

import torch
import torch.nn as nn

from .candidates import parse_candidate
from .checkpoints import load_state, save_checkpoint
from .config import DataConfig, TeacherConfig
from .data import DataBundle, load_data
from .errors import DaqSearchError
from .kd import (
    check_precision,
    eval_loader,
    evaluate,
    make_optimizer,
    make_scheduler,
    place,
    run_epoch,
    train_loader,
    training_threads,
)
from .logs import show_progress
from .models import create_for, model_arch
from .runtime import run_as_task
from .transforms import build_batch_mix

logger = logging.getLogger(__name__)


def teacher_key(data: DataConfig, teacher: TeacherConfig) -> str:
    """A short hash of everything that determines a trained teacher (data set, split, architecture, recipe, seed);
    ``data`` is the split it trains on (:meth:`JobSpec.teacher_data`), so ``teacher.train_per_class`` is in it."""
    recipe = {
        "data": data.model_dump(exclude={"download", "val_pool"}),
        "teacher": teacher.model_dump(exclude={"checkpoint", "train_per_class"}),
    }
    if teacher.recipe.precision == "fp32":  # keys of fp32 teachers stay those of caches made before the field
        del recipe["teacher"]["recipe"]["precision"]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def load_teacher(path: str | Path, teacher: TeacherConfig, bundle: DataBundle) -> nn.Module:
    """The teacher from a checkpoint: a daq-search teacher file or a plain state_dict of the configured architecture."""
    state = load_state(path, "teacher.checkpoint")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = create_for(teacher.model, teacher.width, bundle)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        reason = str(err).splitlines()[0]
        raise DaqSearchError(
            f"teacher.checkpoint: {path} does not fit teacher.model {teacher.model} (width {teacher.width}): {reason}"
        ) from None
    return model.eval()


def train_teacher(
    teacher: TeacherConfig, bundle: DataBundle, device: str | torch.device = "cpu", workers: int = 0
) -> tuple[nn.Module, float]:
    """Train the full-precision teacher with cross-entropy under ``teacher.augment`` (``workers`` loader processes);
    returns it and its val accuracy."""
    check_precision(teacher.recipe.precision, device, "teacher.recipe.precision")
    torch.manual_seed(teacher.seed)
    model = place(create_for(teacher.model, teacher.width, bundle), device)
    candidate = parse_candidate(teacher.augment)
    pin = torch.device(device).type == "cuda"
    loader = train_loader(
        bundle.train, candidate, bundle, teacher.recipe.batch_size, teacher.seed, workers=workers, pin_memory=pin
    )
    optimizer = make_optimizer(model.parameters(), teacher.recipe)
    scheduler = make_scheduler(optimizer, teacher.recipe, len(loader))
    mix = build_batch_mix(candidate, bundle.num_classes)
    val = eval_loader(bundle.val, bundle)
    val_acc = 0.0
    for epoch in range(1, teacher.recipe.epochs + 1):
        loader.sampler.set_epoch(epoch)
        stats = run_epoch(
            model, loader, optimizer, mix=mix, scheduler=scheduler, device=device, precision=teacher.recipe.precision
        )
        if epoch % 10 == 0 or epoch == teacher.recipe.epochs:
            val_acc, _ = evaluate(model, val, device)
            logger.info(f"teacher epoch {epoch}/{teacher.recipe.epochs}: loss {stats.loss:.3f}, val acc {val_acc:.3f}")
    return model.eval(), val_acc


def get_teacher(
    data: DataConfig,
    teacher: TeacherConfig,
    bundle: DataBundle,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> tuple[nn.Module, Path]:
    """The teacher and the checkpoint file every trial reads: the configured checkpoint, else a cached training.

    A teacher is trained once per (data, architecture, recipe, seed, teacher augmentation) and stored as
    ``cache_dir/teacher-<hash>.pt``, with ``trained_by`` = the host name and process id that trained it; later
    calls load that file.
    """
    if teacher.checkpoint is not None:
        return load_teacher(teacher.checkpoint, teacher, bundle), Path(teacher.checkpoint)
    path = teacher_cache_path(data, teacher, cache_dir)
    if path.is_file():
        logger.info(f"teacher: cached {path}")
        return load_teacher(path, teacher, bundle), path
    logger.info(f"teacher: training {teacher.model} for {teacher.recipe.epochs} epochs on {torch.device(device).type}")
    model, val_acc = train_teacher(teacher, bundle, device, workers)
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "arch": model_arch(teacher.model, teacher.width, bundle),
            "val_acc": val_acc,
            "trained_by": {"host": socket.gethostname(), "pid": os.getpid()},
        },
    )
    return model.cpu().to(memory_format=torch.contiguous_format), path


def teacher_cache_path(data: DataConfig, teacher: TeacherConfig, cache_dir: str | Path) -> Path:
    """Where a trained teacher is cached: ``cache_dir/teacher-<teacher_key>.pt``."""
    return Path(cache_dir) / f"teacher-{teacher_key(data, teacher)}.pt"


def ensure_teacher(
    data: DataConfig,
    teacher: TeacherConfig,
    cache_dir: str | Path,
    *,
    cpus: float = 1.0,
    use_gpu: bool = False,
    workers: int = 0,
) -> Path:
    """The teacher checkpoint a search's trials read: ``teacher.checkpoint`` as given, else the cached training,
    else a training run now as a Ray task reserving ``cpus`` CPUs and, with ``use_gpu``, one GPU (Ray must be up);
    the caller only waits for it. A DaqSearchError raised in the task is raised here as is."""
    if teacher.checkpoint is not None:
        return Path(teacher.checkpoint)
    path = teacher_cache_path(data, teacher, cache_dir)
    if path.is_file():
        logger.info(f"teacher: cached {path}")
        return path
    logger.info(f"teacher: training {teacher.model} for {teacher.recipe.epochs} epochs as a Ray task")
    return Path(
        run_as_task(
            _train_teacher_task, data, teacher, str(cache_dir), cpus, use_gpu, workers, cpus=cpus, use_gpu=use_gpu
        )
    )


def _train_teacher_task(
    data: DataConfig, teacher: TeacherConfig, cache_dir: str, cpus: float, use_gpu: bool, workers: int
) -> str:
    """Inside a Ray worker: load the data, train and cache the teacher on the GPU Ray gave it (``use_gpu``) or its
    CPUs; returns the checkpoint path."""
    show_progress()
    torch.set_num_threads(training_threads(cpus, workers))
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    bundle = load_data(data.spec())
    _, path = get_teacher(data, teacher, bundle, cache_dir, device=device, workers=workers)
    return str(path)
