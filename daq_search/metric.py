"""The DA score (contextual mutual information + class alignment) and the T-stddev baseline.

Notation follows ``shared/research/metric.md``: ``p_i`` is the softmax output for sample ``i``, ``w_ic`` its target
weight for class ``c`` (one-hot for a hard label, the soft target for CutMix/MixUp).

* class centroid ``Q_c = sum_i w_ic p_i / n_c`` with ``n_c = sum_i w_ic``
* ``CMI = (1/n) sum_i sum_c w_ic KL(p_i || Q_c)``, larger is better
* ``Align = mean over seen classes c of -log Q_cc``, smaller is better
* ``CE = (1/n) sum_i sum_c w_ic (-log p_ic)`` (the authors' code uses it in place of Align)
* ``score = Align - lam * CMI`` and ``score_ce = CE - lam * CMI``, lower is better

Everything is computed in one pass from running float64 sums, so accumulators from data-parallel workers merge by
adding their sums: ``KL(p_i||Q_c) = sum_k p_ik log p_ik - sum_k p_ik log Q_ck`` gives
``CMI = (H - sum_c sum_k S_ck log(S_ck / n_c)) / n`` with ``H = sum_i (sum_c w_ic) sum_k p_ik log p_ik`` and
``S_c = sum_i w_ic p_i``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .data import TransformedDataset
from .results import REPORTED_METRICS
from .transforms import build_batch_mix, build_eval_transform, build_train_transform

LOG_FLOOR = 1e-12

METRIC_MODES: dict[str, str] = {
    name: mode for name, mode in REPORTED_METRICS.items() if name not in ("images_per_s", "val_acc_se")
}
"""Every metric a trial reports that can drive a search, with the direction that makes it better."""


@dataclass(frozen=True)
class DAScore:
    """One candidate's DA score terms, in nats; ``n`` is the number of scored samples."""

    cmi: float
    align: float
    sample_ce: float
    score: float
    score_ce: float
    n: int


def _soft_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as a float64 [B, C] weight matrix: one-hot rows for class indices, soft rows as given."""
    if targets.dim() == 1:
        return nn.functional.one_hot(targets.long(), num_classes).double()
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets.double()
    raise ValueError(
        f"targets must be [B] class indices or [B, {num_classes}] soft targets, got {tuple(targets.shape)}"
    )


class ScoreAccumulator:
    """Running float64 sums from which :class:`DAScore` is computed in one pass over the scoring set."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.neg_entropy_sum = 0.0
        self.centroid_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.class_weights = torch.zeros(num_classes, dtype=torch.float64)
        self.ce_sum = 0.0
        self.n = 0

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``probs`` [B, C] softmax outputs, ``targets`` [B] class indices or [B, C] soft targets."""
        p = probs.detach().to("cpu", torch.float64)
        w = _soft_targets(targets.detach().to("cpu"), self.num_classes)
        log_p = p.clamp_min(LOG_FLOOR).log()
        self.neg_entropy_sum += float((w.sum(1) * (p * log_p).sum(1)).sum())
        self.centroid_sums += w.T @ p
        self.class_weights += w.sum(0)
        self.ce_sum += float(-(w * log_p).sum())
        self.n += p.shape[0]

    def merge(self, other: ScoreAccumulator) -> ScoreAccumulator:
        """Add another accumulator's sums into this one (data-parallel scoring); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge accumulators of {other.num_classes} and {self.num_classes} classes")
        self.neg_entropy_sum += other.neg_entropy_sum
        self.centroid_sums += other.centroid_sums
        self.class_weights += other.class_weights
        self.ce_sum += other.ce_sum
        self.n += other.n
        return self

    def compute(self, lam: float = 1.0) -> DAScore:
        """The DA score from the sums; classes never seen are left out of ``align``. ``lam`` weighs CMI."""
        if self.n == 0:
            raise ValueError("no samples were scored")
        seen = self.class_weights > 0
        centroids = self.centroid_sums[seen] / self.class_weights[seen, None]
        cross = float((self.centroid_sums[seen] * centroids.clamp_min(LOG_FLOOR).log()).sum())
        cmi = (self.neg_entropy_sum - cross) / self.n
        seen_idx = seen.nonzero().squeeze(1)
        align = float(-centroids[torch.arange(len(seen_idx)), seen_idx].clamp_min(LOG_FLOOR).log().mean())
        sample_ce = self.ce_sum / self.n
        return DAScore(
            cmi=cmi,
            align=align,
            sample_ce=sample_ce,
            score=align - lam * cmi,
            score_ce=sample_ce - lam * cmi,
            n=self.n,
        )


def da_score(probs: torch.Tensor, targets: torch.Tensor, num_classes: int, lam: float = 1.0) -> DAScore:
    """The DA score of ``probs`` [N, C] against ``targets`` ([N] indices or [N, C] soft) in one call."""
    acc = ScoreAccumulator(num_classes)
    acc.update(probs, targets)
    return acc.compute(lam)


def t_stddev(group_means: torch.Tensor) -> float:
    """Wang et al.'s T-stddev: mean over classes of the unbiased std across groups of the mean softmax [G, C]."""
    if group_means.shape[0] < 2:
        raise ValueError(f"T-stddev needs at least 2 groups, got {group_means.shape[0]}")
    return float(group_means.double().std(dim=0, unbiased=True).mean())


class TStddevAccumulator:
    """Collects batches of teacher softmax outputs into groups of ``group_size`` batches and their mean vectors."""

    def __init__(self, group_size: int = 5):
        self.group_size = group_size
        self.group_means: list[torch.Tensor] = []
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._batches = 0

    def update(self, probs: torch.Tensor) -> None:
        """Add one batch [B, C] (in the baseline: the augmented batch concatenated with its clean batch)."""
        p = probs.detach().to("cpu", torch.float64)
        self._sum = p.sum(0) if self._sum is None else self._sum + p.sum(0)
        self._count += p.shape[0]
        self._batches += 1
        if self._batches == self.group_size:
            self.group_means.append(self._sum / self._count)
            self._sum, self._count, self._batches = None, 0, 0

    def compute(self) -> float:
        """T-stddev over the complete groups seen so far (a trailing partial group is left out)."""
        return t_stddev(torch.stack(self.group_means))


@contextmanager
def _seeded_eval(model: nn.Module, seed: int) -> Iterator[None]:
    """Run the body with ``model`` in eval mode and torch's CPU random generator seeded with ``seed``; afterwards
    the generator's state is what it was and the model is back in its mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _scoring_loader(dataset, candidate, bundle, batch_size: int) -> DataLoader:
    return DataLoader(TransformedDataset(dataset, build_train_transform(candidate, bundle)), batch_size=batch_size)


@torch.no_grad()
def score_candidate(
    model: nn.Module,
    dataset,
    candidate,
    *,
    bundle,
    lam: float = 1.0,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DAScore:
    """One eval-mode pass of ``model`` over ``dataset`` augmented by ``candidate``: its DA score.

    ``dataset`` yields uint8 images (a data set split or subset); ``bundle`` supplies the base transform and
    normalisation. Batch-level mixes (CutMix/MixUp) are applied per batch and scored against their soft targets.
    The augmentation randomness is seeded, so the same call gives the same number.
    """
    mix = build_batch_mix(candidate, bundle.num_classes)
    acc = ScoreAccumulator(bundle.num_classes)
    with _seeded_eval(model, seed):
        for images, labels in _scoring_loader(dataset, candidate, bundle, batch_size):
            targets = labels
            if mix is not None:
                images, targets = mix(images, labels)
            logits = model(images.to(device))
            acc.update(torch.softmax(logits.float() / temperature, dim=1), targets)
    return acc.compute(lam)


@torch.no_grad()
def teacher_t_stddev(
    teacher: nn.Module,
    dataset,
    candidate,
    *,
    bundle,
    batch_size: int = 128,
    group_size: int = 5,
    epochs: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """The T-stddev baseline: per batch the teacher's softmax over (augmented + clean) images, grouped, ``epochs`` passes.

    Groups that do not fill ``group_size`` batches at the end are dropped; a scoring set too small to give two
    groups raises ``ValueError`` (raise ``epochs`` or lower ``group_size``).
    """
    mix = build_batch_mix(candidate, bundle.num_classes)
    clean = DataLoader(TransformedDataset(dataset, build_eval_transform(bundle)), batch_size=batch_size)
    acc = TStddevAccumulator(group_size)
    with _seeded_eval(teacher, seed):
        for _ in range(epochs):
            augmented = _scoring_loader(dataset, candidate, bundle, batch_size)
            for (aug_images, labels), (clean_images, _) in zip(augmented, clean, strict=False):
                if mix is not None:
                    aug_images, _ = mix(aug_images, labels)
                logits = teacher(torch.cat([aug_images, clean_images]).to(device))
                acc.update(torch.softmax(logits.float(), dim=1))
    return acc.compute()
