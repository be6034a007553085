"""Knowledge distillation: the KD loss, the training and evaluation loops, the teacher (trained once, cached) and
the quantized student built from it."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .augment import Candidate, build_batch_mix, build_eval_transform, build_train_transform, parse_candidate
from .config import DataConfig, KDConfig, QuantConfig, RecipeConfig, StudentConfig, TeacherConfig
from .data import DataBundle, TransformedDataset
from .errors import DaqSearchError
from .files import atomic_write
from .models import create_model
from .quant import calibrate, quantize


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, kd: KDConfig
) -> torch.Tensor:
    """``gamma * CE(student, targets) + alpha * T^2 * KL(teacher_T || student_T)``, mean over the batch, in nats.

    ``targets`` are [B] class indices or [B, C] soft targets (CutMix/MixUp); ``gamma = 0`` is SQAKD's label-free loss.
    """
    loss = student_logits.new_zeros(())
    if kd.gamma:
        loss = loss + kd.gamma * F.cross_entropy(student_logits, targets)
    if kd.alpha:
        t = kd.temperature
        kl = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + kd.alpha * t * t * kl
    return loss


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: mean loss per image, images seen, wall seconds."""

    loss: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Training throughput in images per second."""
        return self.images / max(self.seconds, 1e-9)


def make_optimizer(params, recipe: RecipeConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser (adam, adamw or sgd with Nesterov momentum) over ``params``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.momentum > 0,
        )
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: RecipeConfig, steps_per_epoch: int):
    """Per-step learning-rate schedule over the recipe's epochs: cosine to zero, or constant."""
    if recipe.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, recipe.epochs * steps_per_epoch))


def train_loader(
    dataset, candidate: Candidate, bundle: DataBundle, batch_size: int, seed: int, sampler=None
) -> DataLoader:
    """Shuffled (or ``sampler``-driven) loader of ``dataset`` under the candidate's image-level augmentation."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TransformedDataset(dataset, build_train_transform(candidate, bundle)),
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        drop_last=len(dataset) > batch_size,
    )


def eval_loader(dataset, bundle: DataBundle, batch_size: int = 512, sampler=None) -> DataLoader:
    """Loader of ``dataset`` with normalisation only (no augmentation), in order."""
    return DataLoader(TransformedDataset(dataset, build_eval_transform(bundle)), batch_size=batch_size, sampler=sampler)


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    mix=None,
    teacher: nn.Module | None = None,
    kd: KDConfig | None = None,
    scheduler=None,
    device: str | torch.device = "cpu",
) -> EpochStats:
    """One training epoch: cross-entropy alone without a teacher, the KD loss with one.

    ``mix`` is the candidate's batch-level mix (CutMix/MixUp) or None. Raises ``FloatingPointError`` on a
    non-finite loss, so a diverging trial fails loudly instead of reporting NaN scores.
    """
    model.train()
    if teacher is not None:
        teacher.eval()
    total, images, start = 0.0, 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        targets = y
        if mix is not None:
            x, targets = mix(x, y)
        logits = model(x)
        if teacher is None:
            loss = F.cross_entropy(logits, targets)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = kd_loss(logits, teacher_logits, targets, kd)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} after {images} images")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * x.shape[0]
        images += x.shape[0]
    return EpochStats(loss=total / max(images, 1), images=images, seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Top-1 accuracy (fraction in [0, 1]) and mean cross-entropy (nats) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.numel()
    model.train(was_training)
    return correct / max(n, 1), loss / max(n, 1)


def _arch(model_name: str, width: float, bundle: DataBundle) -> dict:
    return {
        "model": model_name,
        "width": width,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
    }


def create_for(model_name: str, width: float, bundle: DataBundle) -> nn.Module:
    """A fresh full-precision model of the named architecture shaped for ``bundle``'s images and classes."""
    arch = _arch(model_name, width, bundle)
    return create_model(arch.pop("model"), **arch)


def teacher_key(data: DataConfig, teacher: TeacherConfig) -> str:
    """A short hash of everything that determines a trained teacher (data set, split, architecture, recipe, seed)."""
    recipe = {"data": data.model_dump(), "teacher": teacher.model_dump(exclude={"checkpoint"})}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically (temp file, then rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: str | Path, field: str) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint; a missing or corrupt file is a one-line error on ``field``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DaqSearchError(f"{field}: no such file {path}") from None
    except Exception as err:  # torch raises many types for a damaged file; all mean the same to a user
        raise DaqSearchError(f"{field}: {path} is not a readable PyTorch checkpoint ({_load_reason(err)})") from None


def _load_reason(err: Exception) -> str:
    """A short reason why ``torch.load`` failed, without torch's advice to load with ``weights_only=False``
    (which would run whatever code the file carries)."""
    text = str(err)
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, which are never loaded"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]


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
    teacher: TeacherConfig, bundle: DataBundle, device: str | torch.device = "cpu", log=print
) -> tuple[nn.Module, float]:
    """Train the full-precision teacher with cross-entropy under ``teacher.augment``; returns it and its val accuracy."""
    torch.manual_seed(teacher.seed)
    model = create_for(teacher.model, teacher.width, bundle).to(device)
    candidate = parse_candidate(teacher.augment)
    loader = train_loader(bundle.train, candidate, bundle, teacher.recipe.batch_size, teacher.seed)
    optimizer = make_optimizer(model.parameters(), teacher.recipe)
    scheduler = make_scheduler(optimizer, teacher.recipe, len(loader))
    mix = build_batch_mix(candidate, bundle.num_classes)
    val = eval_loader(bundle.val, bundle)
    val_acc = 0.0
    for epoch in range(1, teacher.recipe.epochs + 1):
        stats = run_epoch(model, loader, optimizer, mix=mix, scheduler=scheduler, device=device)
        if epoch % 10 == 0 or epoch == teacher.recipe.epochs:
            val_acc, _ = evaluate(model, val, device)
            log(f"teacher epoch {epoch}/{teacher.recipe.epochs}: loss {stats.loss:.3f}, val acc {val_acc:.3f}")
    return model.eval(), val_acc


def get_teacher(
    data: DataConfig,
    teacher: TeacherConfig,
    bundle: DataBundle,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    log=print,
) -> tuple[nn.Module, Path]:
    """The teacher and the checkpoint file every trial reads: the configured checkpoint, else a cached training.

    A teacher is trained once per (data, architecture, recipe, seed, teacher augmentation) and stored as
    ``cache_dir/teacher-<hash>.pt``; later calls load that file.
    """
    if teacher.checkpoint is not None:
        return load_teacher(teacher.checkpoint, teacher, bundle), Path(teacher.checkpoint)
    path = Path(cache_dir) / f"teacher-{teacher_key(data, teacher)}.pt"
    if path.is_file():
        log(f"teacher: cached {path}")
        return load_teacher(path, teacher, bundle), path
    log(f"teacher: training {teacher.model} for {teacher.recipe.epochs} epochs")
    model, val_acc = train_teacher(teacher, bundle, device, log)
    save_checkpoint(
        path, {"model": model.state_dict(), "arch": _arch(teacher.model, teacher.width, bundle), "val_acc": val_acc}
    )
    return model.cpu(), path


def build_student(
    student: StudentConfig, quant: QuantConfig, bundle: DataBundle, teacher: nn.Module, seed: int = 0
) -> nn.Module:
    """The fake-quantized student: the teacher's weights (``init: teacher``) or a fresh seeded model, then
    ``quantize`` and step-size calibration on a fixed clean batch of training images (identical on every rank)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(teacher) if student.init == "teacher" else create_for(student.model, student.width, bundle)
    model = quantize(model, quant.wbits, quant.abits, method=quant.method, first_last_bits=quant.first_last_bits)
    picks = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[:256].tolist()
    calibration = next(iter(eval_loader(Subset(bundle.train, picks), bundle, batch_size=256)))[0]
    calibrate(model, calibration)
    return model.train()
