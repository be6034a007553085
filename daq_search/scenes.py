"""The ``scenes`` data set: animal silhouettes composited onto natural photo textures, generated deterministically.

Every one of animal-mnist's 10,000 silhouettes becomes one RGB image of its class: a square cut from one of
scikit-learn's two bundled sample photographs (china.jpg, flower.jpg) at a random place and zoom is the background,
and the silhouette, scaled to a random size and placed at a random position, is painted over it in a random colour
laid over a second photo texture. Backgrounds, colour, scale and position so vary as they do in real photographs,
which the silhouettes alone (white on black, centred) lack.

Generation uses only numpy's seeded ``Generator`` and integer arithmetic (box averages of integral images, fixed-point
silhouette sampling; its one float64 product sums small integers, which is exact), so one seed gives byte-identical
images on any CPU; the 10,000 32x32 images take about 2 s. Nothing is written to disk.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.io import ImageReadMode, decode_image

from daq_search.errors import DaqSearchError

PHOTO_FILES = ("china.jpg", "flower.jpg")  # scikit-learn's sklearn/datasets/images/
SCENES_SEED = 0  # the seed the `scenes` data set is generated with (its splits use data.seed separately)
MIN_IMAGE_SIZE = 8  # below 8 px a silhouette is a few pixels and no longer recognisable
MAX_IMAGE_SIZE = 427  # the photographs are 427 x 640: a background square must fit at zoom 1
MAX_BACKGROUND_ZOOM = 4  # a background pixel averages up to 4 x 4 photo pixels (textures at 4 scales)
MIN_OBJECT_FRACTION = 2  # the silhouette's 28 x 28 frame spans between 1/2 and all of the image side
TINT_WEIGHT = 3  # the animal is (3 * colour + texture) / 4: a colour with some texture, as a real object
SUPERSAMPLE = 4  # silhouette samples per image pixel and axis (4 x 4 = 16 averaged, an integer area filter)
_CHUNK = 1024  # images composited at once, bounding the gather buffers


@dataclass(frozen=True)
class Scenes:
    """Generated images and how each was made (all numpy arrays, N images of side S pixels).

    `images` uint8 [N, 3, S, S] RGB; `labels` int64 [N]; `alpha` uint8 [N, S, S], the silhouette's coverage of each
    pixel (255 animal, 0 background); `object_boxes` int64 [N, 3], top, left and side in pixels of the square the
    silhouette's 28x28 frame was scaled into; `backgrounds` and `textures` int64 [N, 4], photo index, top, left and
    zoom (photo pixels per image pixel) of the background square and of the animal's texture square; `colours`
    uint8 [N, 3], the animal's RGB colour.
    """

    images: np.ndarray
    labels: np.ndarray
    alpha: np.ndarray
    object_boxes: np.ndarray
    backgrounds: np.ndarray
    textures: np.ndarray
    colours: np.ndarray


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's bundled sample photographs (china.jpg, flower.jpg) as uint8 RGB arrays [H, W, 3].

    Decodes the JPEG files ``sklearn.datasets.load_sample_images`` reads, straight from the installed package.
    """
    sklearn_spec = importlib.util.find_spec("sklearn")
    if sklearn_spec is None:
        raise DaqSearchError(
            "data.name: 'scenes' needs scikit-learn, which ships the photographs: pip install scikit-learn"
        )
    folder = Path(sklearn_spec.origin).parent / "datasets" / "images"
    return [decode_image(str(folder / name), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy() for name in PHOTO_FILES]


def compose_scenes(
    silhouettes: np.ndarray, labels: np.ndarray, photos: list[np.ndarray], image_size: int, seed: int
) -> Scenes:
    """One S x S RGB scene per silhouette (S = `image_size`), all random choices drawn from `seed`.

    `silhouettes` is uint8 [N, h, w] (coverage 0..255), `labels` [N], `photos` uint8 RGB arrays [H, W, 3] at least
    S pixels on each side. Per image, drawn in this order for all N: background photo, zoom k in
    1..min(MAX_BACKGROUND_ZOOM, shortest photo side // S), top and left (the photo square of side k*S, box-averaged
    to S x S); the same for the animal's texture; the colour (uniform 0..255 per channel); the object side m in
    [ceil(S / 2), S] and its top and left in [0, S - m]. Pixel = round((animal * a + background * (255 - a)) / 255)
    with a the silhouette's coverage, area-sampled on a SUPERSAMPLE x SUPERSAMPLE grid.
    """
    count, side = len(silhouettes), image_size
    shortest = min(min(photo.shape[:2]) for photo in photos)
    if not MIN_IMAGE_SIZE <= side <= shortest:
        raise ValueError(f"image_size {side} outside [{MIN_IMAGE_SIZE}, {shortest}] (the shortest photo side)")
    rng = np.random.Generator(np.random.PCG64(seed))
    max_zoom = min(MAX_BACKGROUND_ZOOM, shortest // side)
    backgrounds = _draw_squares(rng, photos, count, side, max_zoom)
    textures = _draw_squares(rng, photos, count, side, max_zoom)
    colours = rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
    object_sides = rng.integers(-(-side // MIN_OBJECT_FRACTION), side + 1, size=count)
    tops = rng.integers(0, side - object_sides + 1)
    lefts = rng.integers(0, side - object_sides + 1)
    object_boxes = np.stack([tops, lefts, object_sides], axis=1).astype(np.int64)

    integrals = _integral_images(photos)
    padded = np.pad(silhouettes, ((0, 0), (0, 1), (0, 1)))  # a zero row and column for samples outside the frame
    images = np.empty((count, 3, side, side), dtype=np.uint8)
    alpha = np.empty((count, side, side), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        part = slice(start, start + _CHUNK)
        background = _box_averages(integrals, backgrounds[part], side)
        texture = _box_averages(integrals, textures[part], side)
        animal = (TINT_WEIGHT * colours[part, None, None, :].astype(np.int32) + texture) // (TINT_WEIGHT + 1)
        coverage = _silhouette_coverage(padded[part], silhouettes.shape[1:], object_boxes[part], side)
        weight = coverage[..., None].astype(np.int32)
        mixed = (animal * weight + background * (255 - weight) + 127) // 255
        images[part] = mixed.transpose(0, 3, 1, 2)
        alpha[part] = coverage
    return Scenes(
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        alpha=alpha,
        object_boxes=object_boxes,
        backgrounds=backgrounds,
        textures=textures,
        colours=colours,
    )


def _draw_squares(
    rng: np.random.Generator, photos: list[np.ndarray], count: int, side: int, max_zoom: int
) -> np.ndarray:
    """int64 [count, 4]: photo index, top, left, zoom k of `count` random photo squares of side k * `side`."""
    heights = np.array([photo.shape[0] for photo in photos])
    widths = np.array([photo.shape[1] for photo in photos])
    photo = rng.integers(0, len(photos), size=count)
    zoom = rng.integers(1, max_zoom + 1, size=count)
    top = rng.integers(0, heights[photo] - zoom * side + 1)
    left = rng.integers(0, widths[photo] - zoom * side + 1)
    return np.stack([photo, top, left, zoom], axis=1).astype(np.int64)


def _integral_images(photos: list[np.ndarray]) -> np.ndarray:
    """int32 [P, H + 1, W + 1, 3] summed-area tables of the photos (zero first row and column; smaller photos
    zero-padded to the largest shape, which no square reaches)."""
    height = max(photo.shape[0] for photo in photos)
    width = max(photo.shape[1] for photo in photos)
    tables = np.zeros((len(photos), height + 1, width + 1, 3), dtype=np.int32)
    for index, photo in enumerate(photos):
        tables[index, 1 : photo.shape[0] + 1, 1 : photo.shape[1] + 1] = photo.astype(np.int32).cumsum(0).cumsum(1)
    return tables


def _box_averages(integrals: np.ndarray, squares: np.ndarray, side: int) -> np.ndarray:
    """int32 [n, side, side, 3]: each photo square (rows of `squares`: photo, top, left, zoom k) averaged over
    k x k blocks, rounded half up."""
    photo, top, left, zoom = (squares[:, column] for column in range(4))
    _, height, width, channels = integrals.shape
    steps = np.arange(side + 1)
    rows = top[:, None] + zoom[:, None] * steps  # [n, side + 1] block edges
    columns = left[:, None] + zoom[:, None] * steps
    flat = (photo[:, None, None] * height + rows[:, :, None]) * width + columns[:, None, :]
    corners = np.take(integrals.reshape(-1, channels), flat, axis=0)
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    area = (zoom * zoom)[:, None, None, None].astype(np.int32)
    return (sums + area // 2) // area


def _silhouette_coverage(padded: np.ndarray, frame: tuple[int, int], boxes: np.ndarray, side: int) -> np.ndarray:
    """uint8 [n, side, side]: each silhouette (frame h x w, `padded` with a zero last row and column) scaled into its
    box (top, left, side m) by averaging SUPERSAMPLE x SUPERSAMPLE nearest samples per pixel, 0 outside the box.

    The sampling is separable: coverage = rows @ silhouette @ columns^T, where rows[i, r] counts the sub-samples of
    image row i that fall on frame row r. The products are sums of small integers, exact in float64 whatever the
    summation order, so the result does not depend on the BLAS or the CPU.
    """
    q = SUPERSAMPLE
    top, left, extent = (boxes[:, column, None, None] for column in range(3))
    offsets = np.arange(side)[None, :, None] * q + np.arange(q)[None, None, :]  # [1, side, q] sub-sample index

    def counts(start: np.ndarray, length: int) -> np.ndarray:
        # sub-sample u of the box's q*m lies at frame coordinate (u + 1/2) * length / (q*m); outside -> padded zero
        inside = offsets - q * start
        index = ((2 * inside + 1) * length) // (2 * q * extent)
        index = np.where((inside >= 0) & (inside < q * extent), index, length)
        return (index[..., None] == np.arange(length + 1)).sum(axis=2, dtype=np.int64).astype(np.float64)

    rows, columns = counts(top, frame[0]), counts(left, frame[1])
    total = rows @ padded.astype(np.float64) @ columns.transpose(0, 2, 1)
    return ((total.astype(np.int64) + q * q // 2) // (q * q)).astype(np.uint8)
