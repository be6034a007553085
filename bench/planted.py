"""The planted control's nuisance: a seeded rotation and shift applied once to every validation and test image (the
training images keep their pose), so that a candidate whose training views cover that pose must generalise best."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as tv_functional

from daq_search.data import TensorImageDataset


@dataclass(frozen=True)
class Nuisance:
    """Rotation by a uniform angle in [-max_degrees, max_degrees] and a shift by uniform integer pixels in
    [-max_shift, max_shift] on each axis, drawn per image."""

    max_degrees: float
    max_shift: int

    def describe(self) -> dict:
        """The nuisance as plain values (part of the regime's cache key)."""
        return {"max_degrees": self.max_degrees, "max_shift": self.max_shift}


def apply_nuisance(dataset: TensorImageDataset, nuisance: Nuisance, seed: int) -> TensorImageDataset:
    """A copy of ``dataset`` with every image rotated and shifted by ``nuisance`` (bilinear, zero fill); the draws
    come from a generator seeded with ``seed``, so the same call gives the same images."""
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset)
    angles = (torch.rand(n, generator=generator) * 2 - 1) * nuisance.max_degrees
    shifts = torch.randint(-nuisance.max_shift, nuisance.max_shift + 1, (n, 2), generator=generator)
    images = torch.stack(
        [
            tv_functional.affine(
                image,
                angle=float(angle),
                translate=[int(dx), int(dy)],
                scale=1.0,
                shear=[0.0, 0.0],
                interpolation=tv_functional.InterpolationMode.BILINEAR,
            )
            for image, angle, (dx, dy) in zip(dataset.images, angles, shifts, strict=True)
        ]
    )
    return TensorImageDataset(images, dataset.labels.clone(), dataset.num_classes)
