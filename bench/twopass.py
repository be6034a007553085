"""The DA score computed the way the authors' code does it, in two passes (centroids first, then the per-sample KL
to them), as the reference that the package's one-pass ``score_candidate`` is timed and checked against."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from daq_search.data import TransformedDataset
from daq_search.metric import LOG_FLOOR, DAScore
from daq_search.transforms import build_batch_mix, build_train_transform


def _augmented_batches(model, dataset, candidate, bundle, batch_size, seed, temperature):
    """Yield (softmax [B, C] float64, target weights [B, C] float64) for the seeded augmented scoring set."""
    mix = build_batch_mix(candidate, bundle.num_classes)
    loader = DataLoader(TransformedDataset(dataset, build_train_transform(candidate, bundle)), batch_size=batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for images, labels in loader:
            targets = labels
            if mix is not None:
                images, targets = mix(images, labels)
            probs = torch.softmax(model(images).float() / temperature, dim=1).double()
            if targets.dim() == 1:
                weights = nn.functional.one_hot(targets, bundle.num_classes).double()
            else:
                weights = targets.double()
            yield probs, weights


@torch.no_grad()
def two_pass_score(
    model: nn.Module,
    dataset,
    candidate,
    *,
    bundle,
    lam: float = 1.0,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
) -> DAScore:
    """The DA score in two forward passes over the same seeded augmented images: pass 1 sums the class centroids
    ``Q_c``, pass 2 averages ``sum_c w_ic KL(p_i || Q_c)`` (CMI) and ``-sum_c w_ic log p_ic`` (sample CE).
    Same inputs and result as :func:`daq_search.metric.score_candidate`, at twice the forward passes."""
    was_training = model.training
    model.eval()
    num_classes = bundle.num_classes
    centroid_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    class_weights = torch.zeros(num_classes, dtype=torch.float64)
    for probs, weights in _augmented_batches(model, dataset, candidate, bundle, batch_size, seed, temperature):
        centroid_sums += weights.T @ probs
        class_weights += weights.sum(0)
    seen = class_weights > 0
    centroids = torch.zeros_like(centroid_sums)
    centroids[seen] = centroid_sums[seen] / class_weights[seen, None]
    log_centroids = centroids.clamp_min(LOG_FLOOR).log()
    kl_sum, ce_sum, n = 0.0, 0.0, 0
    for probs, weights in _augmented_batches(model, dataset, candidate, bundle, batch_size, seed, temperature):
        log_p = probs.clamp_min(LOG_FLOOR).log()
        kl_to_each_class = (probs * log_p).sum(1, keepdim=True) - probs @ log_centroids.T
        kl_sum += float((weights * kl_to_each_class).sum())
        ce_sum += float(-(weights * log_p).sum())
        n += probs.shape[0]
    model.train(was_training)
    seen_idx = seen.nonzero().squeeze(1)
    align = float(-log_centroids[seen_idx, seen_idx].mean())
    cmi, sample_ce = kl_sum / n, ce_sum / n
    return DAScore(
        cmi=cmi, align=align, sample_ce=sample_ce, score=align - lam * cmi, score_ce=sample_ce - lam * cmi, n=n
    )
