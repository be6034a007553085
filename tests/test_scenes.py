"""Tests for daq_search.scenes (the generated `scenes` data set) and its registration in daq_search.data."""

import hashlib

import numpy as np
import pytest
import torch

from daq_search import scenes
from daq_search.config import DataConfig
from daq_search.data import DATASETS, DataSpec, _animal_images, load_data
from daq_search.errors import DaqSearchError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

FRAME = 28
# sha256 of compose_scenes' images in test_same_seed_same_bytes_and_a_pinned_digest (numpy 2.4.6, pinned)
PINNED_DIGEST = "66e0ede487749235f8b1f3cb5961322fe2ad6f031af300f2fbfaae0d37cc820c"


def gradient_photos() -> list[np.ndarray]:
    """Two synthetic 'photos' of different shapes whose every pixel differs from its neighbours."""
    first = np.fromfunction(lambda y, x, c: (3 * y + 7 * x + 85 * c) % 256, (70, 90, 3)).astype(np.uint8)
    second = np.fromfunction(lambda y, x, c: (11 * y + 5 * x * x + 40 * c) % 256, (80, 64, 3)).astype(np.uint8)
    return [first, second]


def reference_square(photos: list[np.ndarray], square: np.ndarray, side: int) -> np.ndarray:
    """The photo square (photo, top, left, zoom k) averaged over k x k blocks, rounded half up, computed directly."""
    photo, top, left, zoom = (int(value) for value in square)
    window = photos[photo][top : top + zoom * side, left : left + zoom * side].astype(np.int64)
    sums = window.reshape(side, zoom, side, zoom, 3).sum(axis=(1, 3))
    return (sums + zoom * zoom // 2) // (zoom * zoom)


def axis_counts(start: int, extent: int, side: int) -> np.ndarray:
    """Per pixel of one axis, how many of its 4 sub-samples fall in the first half of a box [start, start+extent):
    sub-sample u = 4 * (pixel - start) + t lands on frame index (2u + 1) * 28 // (8 * extent), < 14 iff u < 2m."""
    pixel = np.arange(side) - start
    counts = np.clip(2 * extent - 4 * pixel, 0, 4)
    return np.where((pixel >= 0) & (pixel < extent), counts, 0)


def test_background_is_the_box_averaged_photo_square_where_no_animal_is():
    photos, side = gradient_photos(), 16
    silhouettes = np.zeros((40, FRAME, FRAME), dtype=np.uint8)
    generated = scenes.compose_scenes(silhouettes, np.arange(40) % 10, photos, side, seed=5)
    assert not generated.alpha.any()
    assert set(generated.backgrounds[:, 3].tolist()) == {1, 2, 3, 4}  # zoom up to min(4, 64 // 16)
    assert set(generated.backgrounds[:, 0].tolist()) == {0, 1}
    for image, square in zip(generated.images, generated.backgrounds):
        photo, top, left, zoom = square
        assert top + zoom * side <= photos[photo].shape[0] and left + zoom * side <= photos[photo].shape[1]
        assert np.array_equal(image.transpose(1, 2, 0), reference_square(photos, square, side))


def test_a_full_frame_is_the_tinted_texture_exactly_inside_its_box():
    photos, side = gradient_photos(), 12
    silhouettes = np.full((30, FRAME, FRAME), 255, dtype=np.uint8)
    generated = scenes.compose_scenes(silhouettes, np.arange(30) % 10, photos, side, seed=1)
    for index in range(30):
        top, left, extent = generated.object_boxes[index]
        assert 6 <= extent <= side and 0 <= top <= side - extent and 0 <= left <= side - extent
        box = np.zeros((side, side), dtype=bool)
        box[top : top + extent, left : left + extent] = True
        assert np.array_equal(generated.alpha[index], np.where(box, 255, 0))
        texture = reference_square(photos, generated.textures[index], side)
        animal = (3 * generated.colours[index].astype(np.int64) + texture) // 4
        background = reference_square(photos, generated.backgrounds[index], side)
        expected = np.where(box[..., None], animal, background)
        assert np.array_equal(generated.images[index].transpose(1, 2, 0), expected)


def test_the_silhouette_keeps_its_orientation_and_partial_pixels_blend():
    photos, side = gradient_photos(), 15
    silhouettes = np.zeros((50, FRAME, FRAME), dtype=np.uint8)
    silhouettes[:, : FRAME // 2, : FRAME // 2] = 255  # top-left quadrant of the frame
    generated = scenes.compose_scenes(silhouettes, np.zeros(50, dtype=np.int64), photos, side, seed=2)
    assert len(set(generated.object_boxes[:, 2].tolist()) & {9, 10}) == 2  # odd and even object sides occur
    for index in range(50):
        top, left, extent = generated.object_boxes[index]
        rows, columns = axis_counts(top, extent, side), axis_counts(left, extent, side)
        coverage = (255 * rows[:, None] * columns[None, :] + 8) // 16
        assert np.array_equal(generated.alpha[index], coverage)
        texture = reference_square(photos, generated.textures[index], side)
        animal = (3 * generated.colours[index].astype(np.int64) + texture) // 4
        background = reference_square(photos, generated.backgrounds[index], side)
        weight = coverage[..., None]
        expected = (animal * weight + background * (255 - weight) + 127) // 255
        assert np.array_equal(generated.images[index].transpose(1, 2, 0), expected)


def test_same_seed_same_bytes_and_a_pinned_digest():
    photos = gradient_photos()
    silhouettes = np.random.default_rng(0).integers(0, 256, size=(64, FRAME, FRAME), dtype=np.uint8)
    labels = np.arange(64) % 10
    first = scenes.compose_scenes(silhouettes, labels, photos, 16, seed=3)
    second = scenes.compose_scenes(silhouettes, labels, photos, 16, seed=3)
    other = scenes.compose_scenes(silhouettes, labels, photos, 16, seed=4)
    assert first.images.tobytes() == second.images.tobytes()
    assert first.images.tobytes() != other.images.tobytes()
    # numpy 2.4's PCG64 stream and the integer arithmetic fix these bytes on every CPU
    assert hashlib.sha256(first.images.tobytes()).hexdigest() == PINNED_DIGEST


def test_image_sizes_outside_the_photos_are_refused():
    photos = gradient_photos()
    silhouettes = np.zeros((2, FRAME, FRAME), dtype=np.uint8)
    with pytest.raises(ValueError, match="image_size 65"):
        scenes.compose_scenes(silhouettes, np.zeros(2), photos, 65, seed=0)
    with pytest.raises(ValueError, match="image_size 7"):
        scenes.compose_scenes(silhouettes, np.zeros(2), photos, 7, seed=0)


def test_scenes_split_like_the_pooled_sets_with_varied_rgb_images():
    assert "scenes" in DATASETS
    bundle = load_data(DataSpec("scenes", image_size=16, train_per_class=20, val_per_class=5))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.hflip) == (10, 3, 16, True)
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [20] * 10
    assert torch.bincount(bundle.val.labels, minlength=10).tolist() == [5] * 10
    # 1,000 per class: 300 test pool + the 675 training-pool images neither val nor train took
    assert torch.bincount(bundle.test.labels, minlength=10).tolist() == [975] * 10
    images = torch.cat([bundle.train.images, bundle.val.images, bundle.test.images])
    assert images.dtype == torch.uint8 and images.shape == (10000, 3, 16, 16)
    assert len({bytes(image.numpy()) for image in images}) == 10000
    assert (images.flatten(1).float().std(dim=1) > 0).all()
    channel_means = images.float().mean(dim=(2, 3))
    assert (channel_means.std(dim=0) > 10).all()  # colours vary from image to image, per channel
    assert (channel_means[:, 0] - channel_means[:, 2]).abs().mean() > 5  # not grey
    assert load_data(DataSpec("scenes")).image_size == 32


def test_the_animal_mask_is_the_labelled_silhouette_scaled_into_its_box():
    silhouettes, labels = _animal_images(FRAME)
    silhouettes, labels = silhouettes[:, 0, :, :].numpy()[::50], labels.numpy()[::50]
    photos = scenes.sample_photos()
    assert [photo.shape for photo in photos] == [(427, 640, 3), (427, 640, 3)]
    generated = scenes.compose_scenes(silhouettes, labels, photos, 32, scenes.SCENES_SEED)
    assert np.array_equal(generated.labels, labels)
    fully_covered = 0
    for index in range(len(labels)):
        top, left, extent = generated.object_boxes[index]
        outside = np.ones((32, 32), dtype=bool)
        outside[top : top + extent, left : left + extent] = False
        assert not generated.alpha[index][outside].any()
        # the area-sampled silhouette keeps its share of the frame (within sampling error)
        share = generated.alpha[index].sum() / (255 * extent * extent)
        assert share == pytest.approx(silhouettes[index].sum() / (255 * FRAME * FRAME), abs=0.03)
        # where the animal covers a pixel fully, the pixel is the tinted texture, not the background
        full = generated.alpha[index] == 255
        texture = reference_square(photos, generated.textures[index], 32)
        animal = (3 * generated.colours[index].astype(np.int64) + texture) // 4
        fully_covered += int(full.sum())
        assert np.array_equal(generated.images[index].transpose(1, 2, 0)[full], animal[full])
    assert fully_covered > 20 * len(labels)


@pytest.mark.parametrize("size", [7, 428])
def test_scenes_image_size_outside_the_allowed_range_is_one_error_line(size):
    with pytest.raises(DaqSearchError, match=rf"data.image_size: {size} for 'scenes'; allowed: 8 to 427 pixels"):
        load_data(DataSpec("scenes", image_size=size))


def test_config_accepts_scenes():
    assert DataConfig(name="scenes", image_size=16).name == "scenes"


def test_the_shipped_set_is_pinned_byte_for_byte():
    # decoded photographs (torchvision 0.29.1's libjpeg-turbo, whose SIMD paths match its C code bit for bit) and the
    # 16x16 set built from them: a machine that decodes or generates differently fails here
    photos = hashlib.sha256(b"".join(photo.tobytes() for photo in scenes.sample_photos())).hexdigest()
    assert photos == "99310b92a8963a4b9118f3a93695bf9d2f7c20a03361f1962972901ccd5560da"
    bundle = load_data(DataSpec("scenes", image_size=16, val_per_class=0))
    images = torch.cat([bundle.train.images, bundle.test.images])
    order = torch.cat([bundle.train.labels, bundle.test.labels])
    assert len(images) == 10000 and torch.bincount(order).tolist() == [1000] * 10
    generated = scenes.compose_scenes(
        _animal_images(FRAME)[0][:, 0].numpy(), np.zeros(10000), scenes.sample_photos(), 16, scenes.SCENES_SEED
    )
    assert hashlib.sha256(generated.images.tobytes()).hexdigest() == (
        "59e4043411389c51d4d50b5f981bdc2786faa31719d7c0337d873674b285b595"
    )
    assert {bytes(image.numpy()) for image in images} == {bytes(image) for image in generated.images}
