"""TrivialAugment's translation scales with the image side (daq_search.transforms.ScaledTrivialAugmentWide)."""

import pytest
import torch
from torchvision.transforms import v2

from daq_search.candidates import parse_candidate
from daq_search.transforms import ScaledTrivialAugmentWide, _policy_transform


def translate_only(transform: v2.TrivialAugmentWide) -> v2.TrivialAugmentWide:
    """The transform restricted to its TranslateX op (every draw translates, by one of its 31 magnitudes)."""
    transform._AUGMENTATION_SPACE = {"TranslateX": transform._AUGMENTATION_SPACE["TranslateX"]}
    return transform


def observed_shifts(transform: v2.Transform, side: int, draws: int) -> list[int | None]:
    """Horizontal shift in pixels of each of `draws` seeded applications to a ramp image (column j holds j + 1);
    None when the image left the frame entirely."""
    ramp = (torch.arange(side, dtype=torch.uint8) + 1).expand(1, side, side).contiguous()
    torch.manual_seed(0)
    shifts = []
    for _ in range(draws):
        row = transform(ramp)[0, side // 2]
        visible = torch.nonzero(row).flatten()
        shifts.append(None if len(visible) == 0 else int(visible[0] - row[visible[0]] + 1))
    return shifts


@pytest.mark.parametrize("side", [16, 28, 32, 64])
def test_largest_translation_is_the_image_side_and_rotation_stays_135_degrees(side):
    space = ScaledTrivialAugmentWide._AUGMENTATION_SPACE
    for op in ("TranslateX", "TranslateY"):
        magnitudes = space[op][0](31, side, side)
        assert float(magnitudes.max()) == side
        assert torch.allclose(magnitudes, torch.arange(31) * side / 30)
    assert float(space["Rotate"][0](31, side, side).max()) == 135.0
    assert list(space) == list(v2.TrivialAugmentWide._AUGMENTATION_SPACE)  # same ops, drawn with equal odds


def test_the_package_builds_the_scaled_variant():
    assert type(_policy_transform(parse_candidate("trivialaugment"))) is ScaledTrivialAugmentWide


@pytest.mark.parametrize("side", [16, 32])
def test_applied_translations_reach_but_never_exceed_the_side(side):
    transform = translate_only(ScaledTrivialAugmentWide())
    shifts = observed_shifts(transform, side, draws=400)
    # torchvision shifts by int(magnitude) px; float32 linspace may land just below an integer (15.99... -> 15)
    allowed = {int(m) for m in transform._AUGMENTATION_SPACE["TranslateX"][0](31, side, side).tolist()}
    assert max(allowed) == side
    visible = [shift for shift in shifts if shift is not None]
    assert {abs(shift) for shift in visible} <= allowed - {side}
    assert max(abs(shift) for shift in visible) == max(allowed - {side})  # the largest shift that leaves a column
    assert 0 < shifts.count(None) < 0.1 * len(shifts)  # only the top magnitude (1 of 31) clears the frame


def test_torchvision_stock_translation_clears_a_16px_image_half_the_time():
    shifts = observed_shifts(translate_only(v2.TrivialAugmentWide()), 16, draws=400)
    assert 0.4 < shifts.count(None) / len(shifts) < 0.65  # 16 of 31 magnitudes are >= 16 px
