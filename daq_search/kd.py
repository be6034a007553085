"""Knowledge distillation: the KD loss, the optimizer and scheduler, the seeded data loaders, the training
epoch and evaluation loops (the engine the teacher, the trials and the final training share)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .candidates import Candidate
from .config import KDConfig, RecipeConfig
from .data import DataBundle, ImageDataset, TransformedDataset
from .errors import DaqSearchError
from .transforms import build_eval_transform, build_train_transform


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


def loader_workers(cpus: float, override: int | None = None) -> int:
    """DataLoader worker processes for a job reserving ``cpus`` CPUs: ``override`` when set, else one per CPU
    beyond the first (which runs the training loop), so a 1-CPU trial loads in-process."""
    return override if override is not None else max(0, int(cpus) - 1)


def training_threads(cpus: float, workers: int) -> int:
    """Torch threads of a training process reserving ``cpus`` CPUs beside ``workers`` loader processes: the CPUs
    the loaders leave, at least 1."""
    return max(1, int(cpus) - workers)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of image ``index`` in ``epoch`` of a loader seeded with ``seed``."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63)


class SeededSampler(Sampler):
    """Yields ``(index, item_seed)`` pairs: a seeded shuffle of ``range(size)`` per epoch (or the order of
    ``base``, e.g. a ``DistributedSampler``), each index paired with :func:`item_seed`. Because the seeds travel
    with the indices, an image's augmentation depends on (seed, epoch, index) alone, not on which loader worker
    process draws it. :meth:`set_epoch` selects the epoch of the next iteration; without it, iterations count
    epochs 0, 1, 2, ..."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, base: Sampler | None = None):
        self.size, self.seed, self.shuffle, self.base = size, seed, shuffle, base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation seeds the next iteration yields."""
        self.epoch = epoch
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        if self.base is not None:
            order = list(self.base)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            order = order.tolist()
        else:
            order = range(self.size)
        self.set_epoch(epoch + 1)
        return iter([(index, item_seed(self.seed, epoch, index)) for index in order])

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.size


class SeededTransformDataset(Dataset):
    """``base`` under ``transform``, indexed by ``(index, seed)``: the transform draws from torch's CPU generator
    seeded with ``seed`` (the caller's generator state is restored afterwards)."""

    def __init__(self, base: ImageDataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image, label = self.base[index]
        state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.transform(image), label
        finally:
            torch.default_generator.set_state(state)


def train_loader(
    dataset,
    candidate: Candidate,
    bundle: DataBundle,
    batch_size: int,
    seed: int,
    sampler=None,
    *,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Loader of ``dataset`` under the candidate's image-level augmentation, shuffled per epoch (or in
    ``sampler``'s order), with ``workers`` persistent worker processes; its sampler is a :class:`SeededSampler`, so
    call ``loader.sampler.set_epoch(epoch)`` before an epoch to select it. The same seed and epoch give the same
    batches whatever ``workers`` is."""
    return DataLoader(
        SeededTransformDataset(dataset, build_train_transform(candidate, bundle)),
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), seed, base=sampler),
        generator=torch.Generator().manual_seed(seed),  # the workers' base seed, not drawn from the caller's stream
        drop_last=len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def eval_loader(dataset, bundle: DataBundle, batch_size: int = 512, sampler=None) -> DataLoader:
    """Loader of ``dataset`` with normalisation only (no augmentation), in order."""
    return DataLoader(TransformedDataset(dataset, build_eval_transform(bundle)), batch_size=batch_size, sampler=sampler)


def check_precision(precision: str, device: str | torch.device, field: str) -> None:
    """Raise DaqSearchError (naming ``field``) when ``precision`` cannot run on ``device``: bf16 needs a GPU with
    bfloat16 support or the CPU (where torch emulates it, slowly on CPUs without native bf16)."""
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DaqSearchError(
            f"{field}: bf16 needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} has none; "
            "allowed: fp32"
        )


def autocast(precision: str, device: str | torch.device):
    """The forward passes' autocast context: bfloat16 for ``bf16``, none for ``fp32``. Parameters (quantizer step
    sizes included) stay fp32 under autocast; only matmuls and convolutions run in bf16."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` moved to ``device``; on a GPU also in ``channels_last`` memory format (faster convolutions)."""
    model = model.to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


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
    precision: str = "fp32",
) -> EpochStats:
    """One training epoch: cross-entropy alone without a teacher, the KD loss with one.

    ``mix`` is the candidate's batch-level mix (CutMix/MixUp) or None. ``precision`` ``bf16`` runs the forward
    passes under bfloat16 autocast; the losses (the KD loss included) are computed in fp32 from fp32 logits. On a
    GPU the images are passed in ``channels_last``. Raises ``FloatingPointError`` on a non-finite loss, so a
    diverging trial fails loudly instead of reporting NaN scores.
    """
    model.train()
    if teacher is not None:
        teacher.eval()
    channels_last = torch.device(device).type == "cuda"
    total, images, start = 0.0, 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = y
        if mix is not None:
            x, targets = mix(x, y)
        with autocast(precision, device):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
        logits = logits.float()
        if teacher is None:
            loss = F.cross_entropy(logits, targets)
        else:
            loss = kd_loss(logits, teacher_logits.float(), targets, kd)
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


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` images, ``sqrt(p (1 - p) / n)`` (fraction)."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n > 0 else math.nan
