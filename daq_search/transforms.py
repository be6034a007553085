"""The transforms a candidate builds: the image-level training transform with its policy, the evaluation transform,
the batch mix (CutMix / MixUp), TrivialAugment Wide with its translation scaled to the image side, and the purely
geometric random affine policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

from daq_search.candidates import Candidate

TRIVIALAUGMENT_TRANSLATE_FRACTION = 32 / 32
"""Largest TrivialAugment translation as a fraction of the image side: the wide space's 32 px on the 32x32 images
(CIFAR, SVHN) it was defined on."""


class ScaledTrivialAugmentWide(v2.TrivialAugmentWide):
    """TrivialAugment Wide with its translation relative to the image side.

    The wide space (Muller & Hutter, ICCV 2021; automl/trivialaugment ``aug_lib.py``) translates up to 32 px and was
    defined and evaluated on 32x32 images, i.e. up to the whole side; the authors' standard space likewise moves
    10 px on 32x32 images and 70 px on 224x224 ones (0.31 of the side at both sizes). torchvision keeps the 32 px
    at every size, which at 16x16 shifts the image wholly out of frame for about half of the 31 magnitudes.
    Here the largest translation is ``TRIVIALAUGMENT_TRANSLATE_FRACTION`` x the side, so 32x32 images get exactly
    torchvision's and the paper's magnitudes. Rotation (up to 135 degrees), shear (up to 0.99) and the colour ops
    are dimensionless and stay as they are.
    """

    _AUGMENTATION_SPACE = {
        **v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        "TranslateX": (
            lambda num_bins, height, width: torch.linspace(0.0, TRIVIALAUGMENT_TRANSLATE_FRACTION * width, num_bins),
            True,
        ),
        "TranslateY": (
            lambda num_bins, height, width: torch.linspace(0.0, TRIVIALAUGMENT_TRANSLATE_FRACTION * height, num_bins),
            True,
        ),
    }


def _policy_transform(candidate: Candidate) -> v2.Transform | None:
    """The uint8 image-level transform of the candidate's policy (None for ``none`` and ``random_erasing``, which
    acts on float images)."""
    args = dict(candidate.policy_args)
    if candidate.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(args["policy"]))
    if candidate.policy == "randaugment":
        return v2.RandAugment(num_ops=args["num_ops"], magnitude=args["magnitude"])
    if candidate.policy == "trivialaugment":
        return ScaledTrivialAugmentWide()
    if candidate.policy == "augmix":
        return v2.AugMix(severity=args["severity"])
    if candidate.policy == "random_affine":
        return random_affine(args["degrees"], args["translate"], args["scale"])
    return None


def random_affine(degrees: int, translate: float, scale: float) -> v2.RandomAffine:
    """A purely geometric policy: rotation by a uniform angle in [-degrees, degrees], a shift by up to ``translate``
    x the side on each axis, and zoom by a factor in [1 - scale, 1 + scale] (bilinear, black fill)."""
    return v2.RandomAffine(
        degrees=degrees,
        translate=(translate, translate) if translate > 0 else None,
        scale=(1.0 - scale, 1.0 + scale) if scale > 0 else None,
        interpolation=v2.InterpolationMode.BILINEAR,
    )


def build_train_transform(candidate: Candidate, bundle: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training transform: uint8 image [C,H,W] -> float32 normalised [C,H,W].

    Order: RandomCrop(bundle.image_size, padding=bundle.crop_padding), RandomHorizontalFlip if ``bundle.hflip``, the
    candidate's policy on uint8, ToDtype(float32, scale=True), RandomErasing if that is the policy, then
    Normalize(bundle.mean, bundle.std).
    """
    steps: list[v2.Transform] = [v2.RandomCrop(bundle.image_size, padding=bundle.crop_padding)]
    if bundle.hflip:
        steps.append(v2.RandomHorizontalFlip())
    policy = _policy_transform(candidate)
    if policy is not None:
        steps.append(policy)
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if candidate.policy == "random_erasing":
        steps.append(v2.RandomErasing(p=dict(candidate.policy_args)["p"]))
    steps.append(v2.Normalize(list(bundle.mean), list(bundle.std)))
    return v2.Compose(steps)


def build_eval_transform(bundle: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Evaluation transform: uint8 image [C,H,W] -> float32 [C,H,W] scaled to [0, 1] and normalised by
    ``bundle.mean`` / ``bundle.std``."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(bundle.mean), list(bundle.std))])


def build_batch_mix(
    candidate: Candidate, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """The candidate's batch mix, or None without one: (images [B,C,H,W] float, labels [B] int64) -> (mixed images
    [B,C,H,W], soft targets [B, num_classes] float32 whose rows sum to 1). Each image is mixed with the one before it
    in the batch (torchvision's CutMix / MixUp)."""
    if candidate.mix is None:
        return None
    alpha = dict(candidate.mix_args)["alpha"]
    if candidate.mix == "cutmix":
        return v2.CutMix(alpha=alpha, num_classes=num_classes)
    return v2.MixUp(alpha=alpha, num_classes=num_classes)
