"""Image data sets, split into train / val / test, nothing downloaded unless asked (CIFAR) and nothing cached on disk.

Every split is an `ImageDataset` whose items are ``(uint8 tensor [C, H, W], int label)``; augmentation and
normalisation happen later (see `TransformedDataset` and `DataBundle.mean` / `DataBundle.std`).

Sources:
- ``digits``: scikit-learn's bundled 1,797 real 8x8 hand-written digits, upsampled to 16x16 by default.
- ``animals``: the 10,000 real 28x28 animal silhouettes shipped inside the ``animal-mnist==0.4`` wheel.
- ``scenes``: those 10,000 silhouettes composited at random scale, position and colour onto textures cut from
  scikit-learn's two bundled sample photographs, RGB, 32x32 by default (generated deterministically, see
  `daq_search.scenes`).
- ``cifar10`` / ``cifar100``: torchvision's python-pickle folder layout under ``root`` (``download``: fetched there
  first from the official archive, see :mod:`daq_search.download`).
- ``imagefolder``: ``root/train/<class>/`` images and ``root/val/`` (class folders or Tiny-ImageNet's layout).

The three bundled sets (digits, animals, scenes) have no official test split, so all their images are pooled and split
per class by a seeded shuffle: a fixed 30 % test pool, then ``val_per_class`` validation images (unset: see
:func:`validation_per_class`), then the training pool. With ``train_per_class`` set, training-pool images left
unselected join the test set.

When a teacher trains on a larger split (:func:`load_student_data`), ``val_pool: teacher_unused`` validates the
student on its own val images plus the teacher split's training images the student does not train on (the student
never sees them; the test set stays disjoint from both splits). ``val_pool`` set to a folder validates the student on
the user's own labelled images instead, say ones taken where the model will be deployed
(:func:`folder_validation`); the teacher and the splits are unchanged.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import importlib.util
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from numpy._core import multiarray as _np_multiarray
from numpy._core import numeric as _np_numeric
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as tv_functional

from daq_search import scenes
from daq_search.download import ensure_downloaded
from daq_search.errors import DaqSearchError

DATASETS = ("digits", "animals", "scenes", "cifar10", "cifar100", "imagefolder")

# Default side in pixels. Digits are native 8x8; 16x16 is the smallest side that still leaves room for
# RandomCrop / AutoAugment's geometric ops and for three stride-2 stages of a small ResNet (16 -> 8 -> 4 -> 2),
# while costing 4x fewer pixels per image than 32x32.
DEFAULT_IMAGE_SIZE = {"digits": 16, "animals": 28, "scenes": 32, "cifar10": 32, "cifar100": 32, "imagefolder": 64}

POOLED_TEST_FRACTION = 0.3  # share of every class held out as the test pool of digits / animals / scenes
MEAN_STD_SAMPLE = 2048  # lazily decoded training images used to estimate mean/std of an image folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_RESIZE_CHUNK = 2048  # images resized at once, bounding the float buffer of a whole-set resize
_STATS_CHUNK = 1024  # images summed at once when computing channel statistics
AUTO_VAL_IMAGES = 1000  # validation images an unset val_per_class aims for: a binomial standard error <= 1.6 pp
AUTO_VAL_SHARE = 0.1  # the most of the smallest class's training pool an unset val_per_class takes

VAL_POOLS = ("split", "teacher_unused")
"""The named validation pools; any other ``val_pool`` is a folder of labelled images (:func:`folder_validation`)."""

_ANIMALS_INSTALL = "data.name: 'animals' needs the animal-mnist wheel: pip install --no-deps animal-mnist==0.4"


@dataclass(frozen=True)
class DataSpec:
    """Which data set to load and how to split it (all sizes in images per class)."""

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None
    train_per_class: int | None = None
    val_per_class: int | None = None
    seed: int = 0
    download: bool = False
    val_pool: str = "split"


class ImageDataset(Dataset):
    """Items are ``(uint8 tensor [C, H, W], int label)``; `labels` is int64 [N], `num_classes` the class count."""

    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


class TensorImageDataset(ImageDataset):
    """In-memory images, uint8 [N, C, H, W], with int64 labels [N]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be int64 [{len(images)}], got {labels.dtype} {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> TensorImageDataset:
        """A copy holding only the images at `indices`, in that order."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(self.images[indices], self.labels[indices], self.num_classes)


class ImageFolderDataset(ImageDataset):
    """Image files decoded on access as RGB and resized (bilinear, antialiased) to `image_size` x `image_size`."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, num_classes: int, image_size: int):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = labels
        self.num_classes = num_classes
        self.image_size = image_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.paths[index], mode=ImageReadMode.RGB)
        return _resize(image, self.image_size), int(self.labels[index])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageFolderDataset:
        """The files at `indices`, in that order (nothing is decoded)."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        paths = [self.paths[i] for i in indices.tolist()]
        return ImageFolderDataset(paths, self.labels[indices], self.num_classes, self.image_size)


class TransformedDataset(Dataset):
    """`base` with `transform` applied to every image: item = ``(transform(image), label)``."""

    def __init__(self, base: ImageDataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.base = base
        self.transform = transform

    @property
    def labels(self) -> torch.Tensor:
        return self.base.labels

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


@dataclass(frozen=True)
class DataBundle:
    """The three splits of one data set plus what a training pipeline needs to know about its images.

    `mean` / `std` are per channel in [0, 1] units, computed on the train split; `crop_padding` is the padding in
    pixels of the base RandomCrop (image_size // 8: 2 for 16x16, 4 for 32x32, 8 for 64x64).
    """

    spec: DataSpec
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_padding: int


def load_data(spec: DataSpec) -> DataBundle:
    """Load the data set `spec` names and split it into train / val / test (see the module docstring)."""
    _check_spec(spec)
    image_size = spec.image_size or DEFAULT_IMAGE_SIZE[spec.name]
    if spec.name in POOLED_DATASETS:
        images, labels = POOLED_DATASETS[spec.name](image_size)
        train, val, test = _split_pooled(TensorImageDataset(images, labels, 10), spec)
    else:
        root = Path(spec.root)
        if spec.name == "imagefolder":
            train_pool, test = _image_folder_datasets(root, image_size)
        else:
            if spec.download:
                ensure_downloaded(spec.name, root)
            train_pool, test = _cifar_datasets(spec.name, root, image_size)
        train_indices, val_indices, _ = _split_training_pool(train_pool.labels, train_pool.num_classes, spec)
        train, val = train_pool.subset(train_indices), train_pool.subset(val_indices)
    mean, std = _channel_mean_std(_images_for_statistics(train, spec.seed))
    return DataBundle(
        spec=spec,
        train=train,
        val=val,
        test=test,
        num_classes=train.num_classes,
        in_channels=len(mean),
        image_size=image_size,
        mean=mean,
        std=std,
        hflip=spec.name != "digits",
        crop_padding=max(1, image_size // 8),
    )


def load_student_data(spec: DataSpec, teacher_spec: DataSpec) -> DataBundle:
    """The student's data when its teacher trains on ``teacher_spec``: ``load_data(spec)`` when both are the same
    split; else, with the teacher on a larger split of the same data set, the student's train and val images with
    the teacher split's normalisation (both models see identical inputs) and test set (no image either trained on).
    A teacher split the data set cannot hold is reported as ``teacher.train_per_class``."""
    student = load_data(spec)
    if dataclasses.replace(teacher_spec, val_pool=spec.val_pool) != spec:  # the pool is the student's alone
        student = _with_teacher_split(student, teacher_spec)
    if spec.val_pool not in VAL_POOLS:
        student = dataclasses.replace(student, val=folder_validation(Path(spec.val_pool), student))
    return student


def _with_teacher_split(student: DataBundle, teacher_spec: DataSpec) -> DataBundle:
    """``student`` with the normalisation and test set of the teacher's larger split ``teacher_spec`` (validated
    on that split's unused training images too with ``val_pool: teacher_unused``)."""
    spec = student.spec
    if spec.val_pool == "teacher_unused" and teacher_spec.train_per_class == spec.train_per_class:
        raise DaqSearchError(
            "data.val_pool: 'teacher_unused' needs teacher.train_per_class larger than data.train_per_class; "
            "allowed: split"
        )
    try:
        teacher = load_data(teacher_spec)
    except DaqSearchError as err:
        raise DaqSearchError(str(err).replace("data.train_per_class", "teacher.train_per_class")) from None
    val = student.val
    if spec.val_pool == "teacher_unused":
        val = _joined(student.val, _without(teacher.train, student.train))
    return dataclasses.replace(student, val=val, test=teacher.test, mean=teacher.mean, std=teacher.std)


def folder_validation(folder: Path, bundle: DataBundle) -> TensorImageDataset:
    """The validation images of a ``val_pool`` folder: ``folder/<class>/`` image files (searched recursively), a
    class folder named as the data set names its classes (:func:`class_names`), decoded once in ``bundle``'s colour
    mode (grey or RGB) and resized to its side; raises DaqSearchError naming ``data.val_pool`` for a missing folder,
    an unknown class folder, an unreadable image or no images at all."""
    if not folder.is_dir():
        raise DaqSearchError(f"data.val_pool: {str(folder)!r} is not a folder; {VAL_POOL_ALLOWED}")
    class_index = {name: index for index, name in enumerate(class_names(bundle))}
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    unknown = [name for name in found if name not in class_index]
    if unknown:
        raise DaqSearchError(
            f"data.val_pool: {folder / unknown[0]} is not a class of {bundle.spec.name!r}; {VAL_POOL_ALLOWED}"
        )
    labelled = [(path, class_index[name]) for name in found for path in _image_files(folder / name)]
    if not labelled:
        raise DaqSearchError(f"data.val_pool: {folder} holds no .jpg, .jpeg or .png images in class folders")
    images = torch.stack([_decoded(path, bundle.in_channels, bundle.image_size) for path, _ in labelled])
    labels = torch.tensor([label for _, label in labelled], dtype=torch.int64)
    return TensorImageDataset(images, labels, bundle.num_classes)


VAL_POOL_ALLOWED = (
    f"allowed: {', '.join(VAL_POOLS)}, or a folder of <class>/ images (class folders named 0, 1, ... by class index, "
    "or as train/'s folders for imagefolder)"
)


def _decoded(path: str, channels: int, image_size: int) -> torch.Tensor:
    """The image file at ``path`` as uint8 [channels, image_size, image_size] (``channels`` 1: grey, 3: RGB); one
    error line naming ``data.val_pool`` when it cannot be decoded."""
    try:
        image = decode_image(path, mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY)
    except (RuntimeError, ValueError) as err:
        raise DaqSearchError(
            f"data.val_pool: {path} is not a readable image ({err}); allowed: .jpg, .jpeg, .png"
        ) from None
    return _resize(image, image_size)


def class_names(bundle: DataBundle) -> list[str]:
    """The name of each class by index: ``root/train``'s sorted folder names for an image folder, else the index
    itself (``"0"``, ``"1"``, ...)."""
    if bundle.spec.name == "imagefolder":
        return _image_folder_classes(Path(bundle.spec.root) / "train")
    return [str(index) for index in range(bundle.num_classes)]


def _image_keys(dataset: ImageDataset) -> list[Any]:
    """One hashable key per item that tells its image apart: the file path, or the label and pixel bytes."""
    if isinstance(dataset, ImageFolderDataset):
        return list(dataset.paths)
    return [(int(label), image.numpy().tobytes()) for image, label in zip(dataset.images, dataset.labels, strict=True)]


def _without(pool: ImageDataset, taken: ImageDataset) -> ImageDataset:
    """The images of ``pool`` that are not in ``taken`` (compared by :func:`_image_keys`), in pool order."""
    excluded = set(_image_keys(taken))
    return pool.subset([i for i, key in enumerate(_image_keys(pool)) if key not in excluded])


def _joined(first: ImageDataset, second: ImageDataset) -> ImageDataset:
    """``first``'s items followed by ``second``'s (both of one kind: in-memory or files)."""
    labels = torch.cat([first.labels, second.labels])
    if isinstance(first, ImageFolderDataset):
        return ImageFolderDataset(first.paths + second.paths, labels, first.num_classes, first.image_size)
    return TensorImageDataset(torch.cat([first.images, second.images]), labels, first.num_classes)


def stratified_indices(
    labels: torch.Tensor, per_class: int, seed: int, exclude: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """Sorted int64 indices of `per_class` images of every class 0..labels.max(), never one in `exclude`.

    Each class is shuffled by a generator seeded with `seed` and the first `per_class` indices not excluded are
    taken, so a second draw with the same seed that excludes the first continues the same per-class order.
    Raises ValueError when a class has fewer than `per_class` images left.
    """
    excluded = torch.zeros(len(labels), dtype=torch.bool)
    if exclude is not None:
        excluded[torch.as_tensor(exclude, dtype=torch.int64)] = True
    picked = []
    for label, order in enumerate(_class_orders(labels, seed)):
        available = order[~excluded[order]]
        if len(available) < per_class:
            raise ValueError(f"class {label} has {len(available)} images left, {per_class} requested")
        picked.append(available[:per_class])
    return torch.cat(picked).sort().values


def _class_orders(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """For every class 0..labels.max(), its image indices in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    orders = []
    for label in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == label).flatten()
        orders.append(members[torch.randperm(len(members), generator=generator)])
    return orders


def _check_spec(spec: DataSpec) -> None:
    """Raise DaqSearchError for a field of `spec` outside what `load_data` accepts."""
    if spec.name not in DATASETS:
        raise DaqSearchError(f"data.name: unknown data set {spec.name!r}; allowed: {', '.join(DATASETS)}")
    if spec.name in ("cifar10", "cifar100", "imagefolder") and not spec.root:
        raise DaqSearchError(f"data.root: required for {spec.name!r} (its folder, or where data.download puts it)")
    if spec.download and spec.name not in ("cifar10", "cifar100"):
        raise DaqSearchError(f"data.download: {spec.name!r} cannot be downloaded; allowed: cifar10, cifar100")
    if spec.image_size is not None and spec.image_size < 1:
        raise DaqSearchError(f"data.image_size: {spec.image_size} is not a positive number of pixels")
    if (
        spec.name == "scenes"
        and spec.image_size is not None
        and not (scenes.MIN_IMAGE_SIZE <= spec.image_size <= scenes.MAX_IMAGE_SIZE)
    ):
        raise DaqSearchError(
            f"data.image_size: {spec.image_size} for 'scenes'; allowed: {scenes.MIN_IMAGE_SIZE} to "
            f"{scenes.MAX_IMAGE_SIZE} pixels"
        )
    if spec.train_per_class is not None and spec.train_per_class < 1:
        raise DaqSearchError(f"data.train_per_class: {spec.train_per_class}; allowed: a positive integer or null (all)")
    if spec.val_per_class is not None and spec.val_per_class < 0:
        raise DaqSearchError(f"data.val_per_class: {spec.val_per_class}; allowed: an integer >= 0 or null (automatic)")


def _split_pooled(
    pool: TensorImageDataset, spec: DataSpec
) -> tuple[TensorImageDataset, TensorImageDataset, TensorImageDataset]:
    """Train / val / test of a pooled set: a seeded 30 % per class is the test pool, the rest the training pool;
    training-pool images that neither val nor a `train_per_class` train subset takes also go to test."""
    orders = _class_orders(pool.labels, spec.seed)
    test_pool = torch.cat([order[: int(POOLED_TEST_FRACTION * len(order) + 0.5)] for order in orders])
    train_indices, val_indices, unused = _split_training_pool(pool.labels, pool.num_classes, spec, test_pool)
    test_indices = torch.cat([test_pool, unused]).sort().values
    return pool.subset(train_indices), pool.subset(val_indices), pool.subset(test_indices)


def validation_per_class(smallest_class: int, num_classes: int) -> int:
    """Validation images per class when ``val_per_class`` is unset: enough for about :data:`AUTO_VAL_IMAGES` in all
    (``ceil(AUTO_VAL_IMAGES / num_classes)``), but at most :data:`AUTO_VAL_SHARE` of the smallest class's training
    pool (``smallest_class`` images), and at least 1."""
    return max(1, min(math.ceil(AUTO_VAL_IMAGES / num_classes), int(AUTO_VAL_SHARE * smallest_class)))


def _split_training_pool(
    labels: torch.Tensor, num_classes: int, spec: DataSpec, held_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the training pool (every index not in `held_out`) into (train, val, unused) index tensors.

    val takes `spec.val_per_class` per class (or :func:`validation_per_class` when it is None); train takes
    `spec.train_per_class` per class of the rest, or all of it when that is None; unused holds the pool indices in
    neither.
    """
    in_pool = torch.ones(len(labels), dtype=torch.bool)
    if held_out is not None:
        in_pool[held_out] = False
    smallest_class = int(torch.bincount(labels[in_pool], minlength=num_classes).min())
    val_per_class = spec.val_per_class
    if val_per_class is None:
        val_per_class = validation_per_class(smallest_class, num_classes)
    if val_per_class >= smallest_class:
        automatic = " (automatic)" if spec.val_per_class is None else ""
        raise DaqSearchError(
            f"data.val_per_class: {val_per_class}{automatic} leaves no training image in the smallest class "
            f"({smallest_class} images in the training pool); maximum {smallest_class - 1}"
        )
    val_indices = stratified_indices(labels, val_per_class, spec.seed, exclude=held_out)
    in_pool[val_indices] = False
    if spec.train_per_class is None:
        return torch.nonzero(in_pool).flatten(), val_indices, torch.empty(0, dtype=torch.int64)
    maximum = smallest_class - val_per_class
    if spec.train_per_class > maximum:
        raise DaqSearchError(
            f"data.train_per_class: {spec.train_per_class} is more than the smallest class has after validation; "
            f"maximum {maximum}"
        )
    taken = torch.nonzero(~in_pool).flatten()
    train_indices = stratified_indices(labels, spec.train_per_class, spec.seed, exclude=taken)
    in_pool[train_indices] = False
    return train_indices, val_indices, torch.nonzero(in_pool).flatten()


def _resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 images [..., C, H, W] resized bilinearly with antialiasing to [..., C, image_size, image_size]."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    return tv_functional.resize(images, [image_size, image_size], antialias=True)


def _resize_all(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """`_resize` over uint8 [N, C, H, W] in chunks, so a whole data set never needs one huge float buffer."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    return torch.cat([_resize(chunk, image_size) for chunk in images.split(_RESIZE_CHUNK)])


def _channel_mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images [N, C, H, W], in [0, 1] units."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    total_of_squares = torch.zeros(channels, dtype=torch.int64)
    for chunk in images.split(_STATS_CHUNK):
        wide = chunk.to(torch.int32)
        total += wide.sum(dim=(0, 2, 3), dtype=torch.int64)
        total_of_squares += (wide * wide).sum(dim=(0, 2, 3), dtype=torch.int64)
    count = images.numel() // channels
    mean = total.double() / count / 255.0
    variance = (total_of_squares.double() / count / 255.0**2 - mean**2).clamp(min=0.0)
    return tuple(mean.tolist()), tuple(variance.sqrt().tolist())


def _images_for_statistics(train: ImageDataset, seed: int) -> torch.Tensor:
    """The uint8 images [N, C, H, W] that mean/std are computed on: all of an in-memory train split, or a seeded
    sample of at most MEAN_STD_SAMPLE images of a lazily decoded one."""
    if isinstance(train, TensorImageDataset):
        return train.images
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(train), generator=generator)[:MEAN_STD_SAMPLE]
    return torch.stack([train[i][0] for i in sample.tolist()])


_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 rebuild bytes
}
for _core in ("numpy.core", "numpy._core"):
    _PICKLE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _PICKLE_GLOBALS[(f"{_core}.multiarray", "scalar")] = _np_multiarray.scalar
    _PICKLE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _np_numeric._frombuffer


def _check_array_bytes(shape: Any, dtype: Any, limit: int) -> None:
    """Refuse an array allocation of more than ``limit`` bytes (a pickle can ask for any shape in a few bytes)."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {str(shape)[:80]} is not a tuple of sizes")
    size = math.prod(dims) * np.dtype(dtype).itemsize
    if size > limit:
        raise pickle.UnpicklingError(f"an array of {size} bytes does not fit in a file of {limit} bytes")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain Python containers and numpy arrays / scalars and refuses any other global,
    and any array larger than the file it comes from (``limit`` bytes)."""

    def __init__(self, file: BinaryIO, limit: int):
        super().__init__(file, encoding="latin1")
        self.limit = limit

    def find_class(self, module: str, name: str) -> object:
        try:
            found = _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None
        if found is np.ndarray:
            return self._ndarray
        if found is _np_multiarray._reconstruct:
            return self._reconstruct
        return found

    def _ndarray(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        _check_array_bytes(shape, dtype, self.limit)
        return np.ndarray(shape, dtype, *args, **kwargs)

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype != self._ndarray:
            raise pickle.UnpicklingError("only numpy.ndarray arrays are allowed")
        _check_array_bytes(shape, dtype, self.limit)
        return _np_multiarray._reconstruct(np.ndarray, shape, dtype)


def _read_numpy_pickle(file: BinaryIO, limit: int | None = None) -> object:
    """Unpickle `file` allowing only Python containers and numpy arrays of at most ``limit`` bytes (default: the
    file's size); Python 2 strings are decoded as latin-1."""
    if limit is None:
        start = file.tell()
        limit = file.seek(0, os.SEEK_END) - start
        file.seek(start)
    return _NumpyOnlyUnpickler(file, limit).load()


def _digits_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as uint8 [N, 1, image_size, image_size] (0..16 scaled to 0..255) and labels.

    Reads the CSV that ``sklearn.datasets.load_digits`` reads (64 pixel columns, then the label) straight from the
    installed package, which skips the ~1.5 s import of scikit-learn and SciPy.
    """
    sklearn_spec = importlib.util.find_spec("sklearn")
    if sklearn_spec is None:
        raise DaqSearchError("data.name: 'digits' needs scikit-learn, which ships the digits: pip install scikit-learn")
    csv_path = Path(sklearn_spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(csv_path, delimiter=",")
    pixels = torch.from_numpy(np.rint(table[:, :-1] * (255.0 / 16.0)).astype(np.uint8))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return _resize_all(pixels.reshape(-1, 1, 8, 8), image_size), labels


def _animal_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """animal-mnist's 10,000 28x28 silhouettes as uint8 [N, 1, image_size, image_size] and labels 0..9."""
    if importlib.util.find_spec("animal_mnist") is None:
        raise DaqSearchError(_ANIMALS_INSTALL)
    folder = files("animal_mnist") / "data" / "Animal_MNIST"
    pixels, labels = (
        _read_gzipped_numpy_pickle(folder / file_name)
        for file_name in ("animal_data_version_3.gz", "animal_label_version_3.gz")
    )
    images = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8)).unsqueeze(1)
    return _resize_all(images, image_size), torch.from_numpy(np.asarray(labels, dtype=np.int64))


PACKAGED_PICKLE_LIMIT = 1 << 28
"""The largest array (bytes) read from a gzip-compressed package resource (its file size says nothing)."""


def _scene_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `scenes` set: animal-mnist's 10,000 silhouettes composited onto photo textures (see `daq_search.scenes`),
    uint8 [N, 3, image_size, image_size], and labels 0..9."""
    silhouettes, labels = _animal_images(28)
    generated = scenes.compose_scenes(
        silhouettes[:, 0].numpy(), labels.numpy(), scenes.sample_photos(), image_size, scenes.SCENES_SEED
    )
    return torch.from_numpy(generated.images), torch.from_numpy(generated.labels)


POOLED_DATASETS: dict[str, Callable[[int], tuple[torch.Tensor, torch.Tensor]]] = {
    "digits": _digits_images,
    "animals": _animal_images,
    "scenes": _scene_images,
}
"""Bundled data sets (pooled and split by `_split_pooled`): name -> function of the image side returning uint8
images [N, C, S, S] and int64 labels [N]."""


def _read_gzipped_numpy_pickle(resource: Traversable) -> object:
    """`_read_numpy_pickle` of a gzip-compressed package resource."""
    with resource.open("rb") as raw, gzip.GzipFile(fileobj=raw) as file:
        return _read_numpy_pickle(file, PACKAGED_PICKLE_LIMIT)


@dataclass(frozen=True)
class _CifarLayout:
    """Where torchvision's python version of one CIFAR data set keeps its pickles."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10
    ),
    "cifar100": _CifarLayout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}


def _cifar_datasets(name: str, root: Path, image_size: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    """(training pool, official test set) of CIFAR-10 or CIFAR-100 read from torchvision's layout under `root`."""
    layout = _CIFAR_LAYOUTS[name]
    for file_name in layout.train_files + layout.test_files:
        if not (root / layout.folder / file_name).is_file():
            raise DaqSearchError(
                f"data.root: {root} has no {layout.folder}/{file_name} "
                f"(expected torchvision's {layout.title} python layout; set data.download: true to fetch it)"
            )
    datasets = []
    for file_names in (layout.train_files, layout.test_files):
        batches = [_read_cifar_batch(root / layout.folder / f, layout) for f in file_names]
        images = torch.cat([images for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches])
        datasets.append(TensorImageDataset(_resize_all(images, image_size), labels, layout.num_classes))
    return datasets[0], datasets[1]


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR pickle as uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    try:
        with open(path, "rb") as file:
            entry = _read_numpy_pickle(file)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        MemoryError,
        LookupError,
        AttributeError,
        OverflowError,
    ) as error:
        reason = str(error)[:200] or type(error).__name__
        raise DaqSearchError(f"data.root: {path} is not a readable {layout.title} pickle ({reason})") from None
    expected = f"a dict with 'data' (uint8 [N, 3072]) and '{layout.label_key}' (N labels 0..{layout.num_classes - 1})"
    if not isinstance(entry, dict) or "data" not in entry or layout.label_key not in entry:
        raise DaqSearchError(f"data.root: {path} is not {expected}")
    data = entry["data"]
    labels = np.asarray(entry[layout.label_key])
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.shape[1:] != (3072,)
        or labels.shape != data.shape[:1]
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= layout.num_classes
    ):
        raise DaqSearchError(f"data.root: {path} is not {expected}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


_IMAGE_FOLDER_LAYOUT = (
    "expected root/train/<class>/ images (.jpg, .jpeg, .png) and root/val/ as class folders "
    "or Tiny-ImageNet's val/images/ + val/val_annotations.txt"
)


def _image_folder_datasets(root: Path, image_size: int) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(training pool from root/train, test set from root/val) of an image folder; classes = sorted train folders."""
    train_dir, val_dir = root / "train", root / "val"
    classes = _image_folder_classes(train_dir)
    if not classes:
        raise DaqSearchError(f"data.root: {root} has no class folders under train/ ({_IMAGE_FOLDER_LAYOUT})")
    if not val_dir.is_dir():
        raise DaqSearchError(f"data.root: {root} has no val/ folder ({_IMAGE_FOLDER_LAYOUT})")
    class_index = {name: index for index, name in enumerate(classes)}
    train_paths, train_labels = _class_folder_images(train_dir, classes, class_index)
    annotations = val_dir / "val_annotations.txt"
    if annotations.is_file():
        test_paths, test_labels = _tiny_imagenet_val_images(annotations, class_index)
    else:
        val_classes = sorted(entry.name for entry in os.scandir(val_dir) if entry.is_dir())
        if not val_classes:
            raise DaqSearchError(f"data.root: {val_dir} has neither class folders nor val_annotations.txt")
        test_paths, test_labels = _class_folder_images(val_dir, val_classes, class_index)
    num_classes = len(classes)
    return (
        ImageFolderDataset(train_paths, torch.tensor(train_labels, dtype=torch.int64), num_classes, image_size),
        ImageFolderDataset(test_paths, torch.tensor(test_labels, dtype=torch.int64), num_classes, image_size),
    )


def _image_folder_classes(train_dir: Path) -> list[str]:
    """The sorted class folder names under an image folder's ``train/`` (none when it is missing)."""
    return sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir()) if train_dir.is_dir() else []


def _image_files(folder: Path) -> list[str]:
    """Sorted paths of the .jpg, .jpeg and .png files under ``folder``, searched recursively."""
    return sorted(
        os.path.join(directory, file_name)
        for directory, _, file_names in os.walk(folder)
        for file_name in file_names
        if file_name.lower().endswith(IMAGE_SUFFIXES)
    )


def _class_folder_images(folder: Path, classes: list[str], class_index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Sorted image paths under folder/<class>/ (searched recursively) for every class, with their class indices."""
    paths, labels = [], []
    for name in classes:
        if name not in class_index:
            raise DaqSearchError(f"data.root: {folder / name} is a class with no folder in {folder.parent / 'train'}")
        found = _image_files(folder / name)
        if not found:
            raise DaqSearchError(f"data.root: {folder / name} holds no .jpg, .jpeg or .png images")
        paths += found
        labels += [class_index[name]] * len(found)
    return paths, labels


def _tiny_imagenet_val_images(annotations: Path, class_index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image paths under val/images/ and class indices listed by Tiny-ImageNet's tab-separated val_annotations.txt."""
    paths, labels = [], []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_index:
            raise DaqSearchError(
                f"data.root: {annotations} line {line_number} is not '<file>\\t<class>' with a class from train/"
            )
        path = annotations.parent / "images" / fields[0]
        if not path.is_file():
            raise DaqSearchError(f"data.root: {path} listed in {annotations.name} line {line_number} does not exist")
        paths.append(str(path))
        labels.append(class_index[fields[1]])
    if not paths:
        raise DaqSearchError(f"data.root: {annotations} lists no images")
    return paths, labels
