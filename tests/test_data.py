"""Tests for daq_search.data: real bundled sets, CIFAR / image-folder fixtures written here, and every error path."""

import dataclasses
import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from daq_search.data import (
    DATASETS,
    DataSpec,
    TensorImageDataset,
    TransformedDataset,
    _read_numpy_pickle,
    load_data,
    load_student_data,
    stratified_indices,
    validation_per_class,
)
from daq_search.errors import DaqSearchError

# torchvision 0.29 warns on every decode that torchvision.io moves to TorchCodec (not installed here)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def image_keys(images: torch.Tensor) -> set[bytes]:
    """One key per image, so splits can be compared as sets."""
    return {bytes(row.numpy()) for row in images.flatten(1)}


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtype_and_classes():
    bundle = load_data(DataSpec("digits"))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 16)
    assert (bundle.hflip, bundle.crop_padding) == (False, 2)
    image, label = bundle.train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 16, 16)
    assert isinstance(label, int) and label == int(bundle.train.labels[0])
    assert bundle.train.labels.dtype == torch.int64
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    # val_per_class unset: 10 % of the smallest class's training pool (174 - 52 = 122 images -> 12 per class), below
    # the 100 per class that would make 1,000 validation images
    assert class_counts(bundle.val.labels, 10) == [12] * 10
    # test pool = round(30 %) of each class; sklearn's class sizes are 178 182 177 183 181 182 181 179 174 180
    assert class_counts(bundle.test.labels, 10) == [53, 55, 53, 55, 54, 55, 54, 54, 52, 54]


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    bundle = load_data(DataSpec("digits", image_size=8, val_per_class=0))
    expected = {
        bytes(np.rint(image * 255 / 16).astype(np.uint8).tobytes()): int(label)
        for image, label in zip(digits.images, digits.target, strict=False)
    }
    for split in (bundle.train, bundle.test):
        for image, label in zip(split.images, split.labels.tolist(), strict=False):
            assert expected[bytes(image.numpy())] == label


def test_digits_splits_disjoint_cover_pool_and_deterministic():
    first = load_data(DataSpec("digits", image_size=8, seed=3))
    second = load_data(DataSpec("digits", image_size=8, seed=3))
    other_seed = load_data(DataSpec("digits", image_size=8, seed=4))
    train, val, test = (image_keys(split.images) for split in (first.train, first.val, first.test))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 1797
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(first, name).images, getattr(second, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(second, name).labels)
    assert not torch.equal(first.val.images, other_seed.val.images)


def test_digits_train_per_class_is_exact_and_enlarges_test():
    full = load_data(DataSpec("digits", image_size=8))
    small = load_data(DataSpec("digits", image_size=8, train_per_class=7))
    assert class_counts(small.train.labels, 10) == [7] * 10
    assert len(small.test) == len(full.test) + len(full.train) - 70
    assert image_keys(small.train.images) <= image_keys(full.train.images)
    assert image_keys(full.test.images) <= image_keys(small.test.images)
    assert torch.equal(small.val.images, full.val.images)
    assert image_keys(small.train.images).isdisjoint(image_keys(small.test.images))


def test_student_of_a_teacher_on_a_larger_split_takes_its_test_set_and_normalisation():
    spec = DataSpec("digits", image_size=8, train_per_class=7)
    teacher_spec = DataSpec("digits", image_size=8, train_per_class=40)
    student, alone, teacher = load_student_data(spec, teacher_spec), load_data(spec), load_data(teacher_spec)
    assert torch.equal(student.train.images, alone.train.images) and torch.equal(student.val.images, alone.val.images)
    assert image_keys(student.train.images) <= image_keys(teacher.train.images)  # the teacher saw the student's
    assert torch.equal(student.test.images, teacher.test.images)
    assert image_keys(student.test.images).isdisjoint(image_keys(teacher.train.images))
    assert len(student.test) == len(alone.test) - 10 * (40 - 7)
    assert student.mean == teacher.mean and student.std == teacher.std and student.mean != alone.mean
    same = load_student_data(spec, spec)
    assert torch.equal(same.test.images, alone.test.images) and same.mean == alone.mean


def test_teacher_unused_val_pool_adds_the_teacher_split_images_the_student_never_trains_on():
    spec = DataSpec("digits", image_size=8, train_per_class=7, val_per_class=10, val_pool="teacher_unused")
    teacher_spec = DataSpec("digits", image_size=8, train_per_class=40, val_per_class=10)
    student, teacher = load_student_data(spec, teacher_spec), load_data(teacher_spec)
    own = load_data(DataSpec("digits", image_size=8, train_per_class=7, val_per_class=10))
    assert len(student.val) == 10 * 10 + 10 * (40 - 7)  # its own 10 per class, then 33 per class of the teacher's
    assert torch.equal(student.val.images[:100], own.val.images)
    assert image_keys(student.val.images).isdisjoint(image_keys(student.train.images))
    assert image_keys(student.val.images[100:]) <= image_keys(teacher.train.images)
    assert image_keys(student.val.images).isdisjoint(image_keys(student.test.images))
    assert torch.equal(torch.bincount(student.val.labels), torch.full((10,), 43))
    with pytest.raises(DaqSearchError, match=r"^data\.val_pool: 'teacher_unused' needs teacher\.train_per_class"):
        load_student_data(spec, DataSpec("digits", image_size=8, train_per_class=7))


def test_a_val_pool_folder_replaces_only_the_validation_images(tmp_path):
    plain = DataSpec("digits", image_size=8, train_per_class=7, val_per_class=2)
    own = load_data(plain)
    for index, (image, label) in enumerate(zip(own.val.images, own.val.labels, strict=True)):
        (tmp_path / str(int(label))).mkdir(exist_ok=True)
        write_png(255 - image, str(tmp_path / str(int(label)) / f"{index:03d}.png"))  # other images than the split's
    spec = dataclasses.replace(plain, val_pool=str(tmp_path))
    bundle = load_student_data(spec, dataclasses.replace(plain, train_per_class=40))
    order = sorted(range(len(own.val)), key=lambda i: (str(int(own.val.labels[i])), i))  # class folder, then file
    assert torch.equal(bundle.val.images, 255 - own.val.images[order])
    assert torch.equal(bundle.val.labels, own.val.labels[order])
    teacher_split = load_student_data(plain, dataclasses.replace(plain, train_per_class=40))
    assert torch.equal(bundle.train.images, own.train.images)
    assert torch.equal(bundle.test.images, teacher_split.test.images)
    assert bundle.mean == teacher_split.mean != own.mean


def test_a_val_pool_folder_converts_colour_photos_to_the_data_sets_grey_and_size(tmp_path):
    write_png_file(tmp_path / "3" / "photo.png", (90, 90, 90), size=12)
    spec = DataSpec("digits", image_size=8, val_per_class=1, val_pool=str(tmp_path))
    bundle = load_student_data(spec, dataclasses.replace(spec, val_pool="split"))
    assert bundle.val.labels.tolist() == [3]
    assert torch.equal(bundle.val.images, torch.full((1, 1, 8, 8), 90, dtype=torch.uint8))


def test_a_val_pool_folder_names_its_classes_as_the_data_set_does(tmp_path):
    write_image_folder(tmp_path / "data", tiny_val=False)
    write_png_file(tmp_path / "deployed" / "bee" / "one.png", (0, 9, 0), size=12)
    spec = DataSpec("imagefolder", root=str(tmp_path / "data"), val_per_class=1, image_size=6)
    bundle = load_student_data(dataclasses.replace(spec, val_pool=str(tmp_path / "deployed")), spec)
    assert bundle.val.labels.tolist() == [list(COLOURS).index("bee")]
    assert torch.equal(bundle.val[0][0], torch.tensor([0, 9, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 6))


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, r"'.*deployed' is not a folder; allowed: split, teacher_unused, or a folder of <class>/ images"),
        ({"10/a.png"}, r".*deployed/10 is not a class of 'digits'; allowed: split"),
        ({"3/notes.txt"}, r".*deployed holds no \.jpg, \.jpeg or \.png images in class folders$"),
        ({"3/empty.png"}, r".*deployed/3/empty\.png is not a readable image \(.*\); allowed: \.jpg, \.jpeg, \.png$"),
    ],
)
def test_a_bad_val_pool_folder_is_one_line_naming_the_field(tmp_path, layout, message):
    for name in layout or ():
        (tmp_path / "deployed" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "deployed" / name).write_bytes(b"")
    spec = DataSpec("digits", image_size=8, val_per_class=1, val_pool=str(tmp_path / "deployed"))
    with pytest.raises(DaqSearchError, match=r"^data\.val_pool: " + message) as err:
        load_student_data(spec, spec)
    assert "\n" not in str(err.value)


def test_teacher_split_larger_than_the_data_set_names_the_teacher_field():
    spec = DataSpec("digits", image_size=8, train_per_class=7)
    with pytest.raises(DaqSearchError, match=r"^teacher\.train_per_class: 500 is more than the smallest class has"):
        load_student_data(spec, DataSpec("digits", image_size=8, train_per_class=500))


def test_mean_std_are_those_of_the_train_split():
    bundle = load_data(DataSpec("digits", train_per_class=5))
    pixels = bundle.train.images.double() / 255
    assert bundle.mean == pytest.approx([pixels.mean().item()], abs=1e-12)
    assert bundle.std == pytest.approx([pixels.std(unbiased=False).item()], abs=1e-12)


def test_stratified_indices_continue_the_same_order_when_excluding():
    labels = torch.tensor([0, 1, 2] * 6)
    first = stratified_indices(labels, 2, seed=5)
    rest = stratified_indices(labels, 4, seed=5, exclude=first)
    both = stratified_indices(labels, 6, seed=5)
    assert class_counts(labels[first], 3) == [2, 2, 2]
    assert torch.equal(torch.cat([first, rest]).sort().values, both)
    with pytest.raises(ValueError, match="class 0 has 4 images left"):
        stratified_indices(labels, 5, seed=5, exclude=first)


# ---------------------------------------------------------------- animals


@pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="animal-mnist==0.4 wheel not installed")
def test_animals_pools_all_10000_balanced_images():
    bundle = load_data(DataSpec("animals", train_per_class=50))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.hflip) == (10, 1, 28, True)
    assert bundle.train.images.shape[1:] == (1, 28, 28) and bundle.train.images.dtype == torch.uint8
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 10_000
    assert class_counts(bundle.train.labels, 10) == [50] * 10
    # val_per_class unset: 10 % of each class's 700-image training pool
    assert class_counts(bundle.val.labels, 10) == [70] * 10
    assert class_counts(bundle.test.labels, 10) == [1000 - 50 - 70] * 10
    resized = load_data(DataSpec("animals", image_size=14, train_per_class=1))
    assert resized.train.images.shape[1:] == (1, 14, 14)


def test_animals_without_the_wheel_names_the_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "animal_mnist" else find_spec(name, *args)
    )
    with pytest.raises(DaqSearchError, match=r"data\.name: 'animals' needs .*pip install --no-deps animal-mnist==0\.4"):
        load_data(DataSpec("animals"))


# ---------------------------------------------------------------- CIFAR fixtures


def cifar_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [count, 3072] random images whose first two bytes spell their index (a key that survives splitting)."""
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(count) % 256
    data[:, 1] = np.arange(count) // 256
    return data


def image_ids(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def write_cifar10(root: Path, per_class: int = 30, test_per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's CIFAR-10 layout, protocol-2 pickles with Python int labels like the real files."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels = rng.permutation(np.repeat(np.arange(10), per_class))
    train_data = cifar_images(len(train_labels), rng)
    for batch, rows in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        entry = {"batch_label": f"batch {batch}", "data": train_data[rows], "labels": train_labels[rows].tolist()}
        (folder / f"data_batch_{batch}").write_bytes(pickle.dumps(entry, protocol=2))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    test_entry = {"data": cifar_images(len(test_labels), rng), "labels": test_labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test_entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return train_labels, test_labels


def test_cifar10_round_trips_labels_and_splits(tmp_path):
    train_labels, test_labels = write_cifar10(tmp_path)
    bundle = load_data(DataSpec("cifar10", root=str(tmp_path), val_per_class=5))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert (bundle.hflip, bundle.crop_padding) == (True, 4)
    assert torch.equal(bundle.test.labels, torch.from_numpy(test_labels))
    assert torch.equal(image_ids(bundle.test.images), torch.arange(40))
    for split in (bundle.train, bundle.val):
        assert torch.equal(split.labels, torch.from_numpy(train_labels)[image_ids(split.images)])
    train_ids, val_ids = set(image_ids(bundle.train.images).tolist()), set(image_ids(bundle.val.images).tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(300))
    assert class_counts(bundle.val.labels, 10) == [5] * 10

    subset = load_data(DataSpec("cifar10", root=str(tmp_path), val_per_class=5, train_per_class=3, image_size=16))
    assert class_counts(subset.train.labels, 10) == [3] * 10
    assert len(subset.test) == 40 and subset.crop_padding == 2
    assert subset.train.images.shape[1:] == (3, 16, 16)


def test_cifar100_round_trips_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_labels = rng.permutation(np.repeat(np.arange(100), 8))
    test_labels = np.arange(100)
    for name, labels in (("train", train_labels), ("test", test_labels)):
        entry = {"data": cifar_images(len(labels), rng), "fine_labels": labels.tolist()}
        entry["coarse_labels"] = [0] * len(labels)
        (folder / name).write_bytes(pickle.dumps(entry, protocol=5))
    bundle = load_data(DataSpec("cifar100", root=str(tmp_path), val_per_class=2, train_per_class=6))
    assert bundle.num_classes == 100
    assert torch.equal(bundle.test.labels, torch.arange(100))
    assert torch.equal(bundle.train.labels, torch.from_numpy(train_labels)[image_ids(bundle.train.images)])
    assert class_counts(bundle.train.labels, 100) == [6] * 100
    assert class_counts(bundle.val.labels, 100) == [2] * 100


def test_cifar_missing_or_incomplete_folder_names_the_file(tmp_path):
    with pytest.raises(DaqSearchError, match=r"^data\.root: .* has no cifar-10-batches-py/data_batch_1 \(expected"):
        load_data(DataSpec("cifar10", root=str(tmp_path / "nowhere")))
    with pytest.raises(DaqSearchError, match=r"^data\.root: .* has no cifar-100-python/train "):
        load_data(DataSpec("cifar100", root=str(tmp_path)))
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DaqSearchError, match=r"^data\.root: .* has no cifar-10-batches-py/test_batch "):
        load_data(DataSpec("cifar10", root=str(tmp_path)))


def test_cifar_batch_with_wrong_contents_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 10]}))
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*data_batch_2 is not a dict with 'data'"):
        load_data(DataSpec("cifar10", root=str(tmp_path)))


class _RunsShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "executed"
    payload = pickle.dumps({"data": _RunsShellCommand(marker), "labels": []})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|nt|os).system"):
        _read_numpy_pickle(io.BytesIO(payload))
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(payload)
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*data_batch_1 is not a readable CIFAR-10 pickle"):
        load_data(DataSpec("cifar10", root=str(tmp_path)))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays_and_scalars(protocol):
    value = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.float32(1.5), "c": [np.uint8(7)], "d": b"xy"}
    loaded = _read_numpy_pickle(io.BytesIO(pickle.dumps(value, protocol=protocol)))
    assert np.array_equal(loaded["a"], value["a"]) and loaded["a"].dtype == np.int64
    assert loaded["b"] == np.float32(1.5) and loaded["c"] == [7] and loaded["d"] == b"xy"


# ---------------------------------------------------------------- image folder

COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}  # written in unsorted key order on purpose


def write_png_file(path: Path, colour: tuple[int, int, int], size: int = 8, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).contiguous()
    write_png(image[:1] if grey else image, str(path))


def write_image_folder(root: Path, tiny_val: bool) -> None:
    """3 classes x 4 solid-colour training PNGs (Tiny-ImageNet's nested images/ for 'bee'), 2 val PNGs per class."""
    for name, colour in COLOURS.items():
        folder = root / "train" / name / ("images" if name == "bee" else "")
        for i in range(4):
            write_png_file(folder / f"{name}_{i}.png", colour)
    lines = []
    for name, colour in COLOURS.items():
        for i in range(2):
            if tiny_val:
                write_png_file(root / "val" / "images" / f"val_{name}_{i}.png", colour)
                lines.append(f"val_{name}_{i}.png\t{name}\t0\t0\t8\t8")
            else:
                write_png_file(root / "val" / name / f"{i}.png", colour)
    if tiny_val:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("tiny_val", [False, True])
def test_image_folder_both_val_layouts(tmp_path, tiny_val):
    write_image_folder(tmp_path, tiny_val)
    bundle = load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 64)
    assert (bundle.hflip, bundle.crop_padding) == (True, 8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 6)
    assert class_counts(bundle.test.labels, 3) == [2, 2, 2]
    for split in (bundle.train, bundle.val, bundle.test):
        for i in range(len(split)):
            image, label = split[i]
            assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
            expected = torch.tensor(list(COLOURS.values())[label], dtype=torch.uint8).view(3, 1, 1)
            assert torch.equal(image, expected.expand(3, 64, 64))
    assert bundle.mean == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert bundle.std == pytest.approx((2**0.5 / 3,) * 3)


def test_image_folder_decodes_grey_as_rgb_and_resizes(tmp_path):
    write_image_folder(tmp_path, tiny_val=False)
    write_png_file(tmp_path / "val" / "ant" / "grey.png", (90, 0, 0), size=12, grey=True)
    bundle = load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1, image_size=6))
    grey = [bundle.test[i][0] for i in range(len(bundle.test)) if bundle.test.paths[i].endswith("grey.png")]
    assert len(grey) == 1 and torch.equal(grey[0], torch.full((3, 6, 6), 90, dtype=torch.uint8))
    assert bundle.crop_padding == 1


def test_image_folder_errors_name_data_root(tmp_path):
    with pytest.raises(DaqSearchError, match=r"^data\.root: .* has no class folders under train/ \(expected"):
        load_data(DataSpec("imagefolder", root=str(tmp_path)))
    write_image_folder(tmp_path, tiny_val=True)
    (tmp_path / "val" / "images" / "val_cat_1.png").unlink()
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*val_cat_1\.png listed in val_annotations\.txt line 6"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))
    (tmp_path / "val" / "val_annotations.txt").write_text("val_ant_0.png\tdog\t0\t0\t8\t8\n")
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*val_annotations\.txt line 1 .*class from train/"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))


def test_image_folder_val_class_unknown_to_train(tmp_path):
    write_image_folder(tmp_path, tiny_val=False)
    write_png_file(tmp_path / "val" / "dog" / "0.png", (1, 2, 3))
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*dog is a class with no folder in .*train"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))


def test_image_folder_without_val_or_with_empty_class(tmp_path):
    write_image_folder(tmp_path, tiny_val=False)
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*emu holds no \.jpg, \.jpeg or \.png images"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))
    (tmp_path / "train" / "emu").rmdir()
    for path in sorted((tmp_path / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(DaqSearchError, match=r"^data\.root: .*val has neither class folders nor val_annotations"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))
    (tmp_path / "val").rmdir()
    with pytest.raises(DaqSearchError, match=r"^data\.root: .* has no val/ folder"):
        load_data(DataSpec("imagefolder", root=str(tmp_path), val_per_class=1))


# ---------------------------------------------------------------- spec errors


def test_unknown_name_lists_the_data_sets():
    with pytest.raises(DaqSearchError, match=r"^data\.name: unknown data set 'cifar11'; allowed: (.*)$") as error:
        load_data(DataSpec("cifar11"))
    assert all(name in str(error.value) for name in DATASETS)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_root_is_required(name):
    with pytest.raises(DaqSearchError, match=rf"^data\.root: required for '{name}'"):
        load_data(DataSpec(name))


@pytest.mark.parametrize(
    "smallest_class, num_classes, expected",
    [
        (700, 10, 70),  # the bundled sets: 10 % of the pool, under 1,000 / 10
        (5000, 10, 100),  # CIFAR-10: 1,000 images in all
        (500, 100, 10),  # CIFAR-100: 1,000 images in all, the 10 % cap (50) not reached
        (450, 200, 5),  # Tiny-ImageNet: ceil(1,000 / 200)
        (45, 200, 4),  # a small pool: 10 % of 45, rounded down
        (5, 10, 1),  # never fewer than 1
    ],
)
def test_an_unset_val_per_class_aims_at_1000_images_within_a_tenth_of_the_pool(smallest_class, num_classes, expected):
    assert validation_per_class(smallest_class, num_classes) == expected


def test_an_automatic_validation_size_is_the_same_for_the_teachers_larger_split():
    # both splits draw validation from the same training pool first, so the student's val is the teacher's val and
    # the teacher never trains on a student validation image
    spec = DataSpec("digits", image_size=8, train_per_class=7, val_pool="teacher_unused")
    teacher_spec = DataSpec("digits", image_size=8, train_per_class=100)
    student, teacher = load_student_data(spec, teacher_spec), load_data(teacher_spec)
    assert torch.equal(student.val.images[:120], teacher.val.images)  # 12 per class, as for the whole pool
    assert image_keys(student.val.images[:120]).isdisjoint(image_keys(teacher.train.images))
    assert len(student.val) == 120 + 10 * (100 - 7)


def test_train_per_class_larger_than_available_names_the_maximum(tmp_path):
    # smallest digits class (8) has 174 images: 52 go to the test pool, 10 to val, leaving 112
    load_data(DataSpec("digits", train_per_class=112, val_per_class=10))
    with pytest.raises(DaqSearchError, match=r"^data\.train_per_class: 113 .*maximum 112$"):
        load_data(DataSpec("digits", train_per_class=113, val_per_class=10))
    # val_per_class unset takes 12 of the 122 (see test_digits_shapes_dtype_and_classes), leaving 110
    with pytest.raises(DaqSearchError, match=r"^data\.train_per_class: 111 .*maximum 110$"):
        load_data(DataSpec("digits", train_per_class=111))
    write_cifar10(tmp_path)
    with pytest.raises(DaqSearchError, match=r"^data\.train_per_class: 26 .*maximum 25$"):
        load_data(DataSpec("cifar10", root=str(tmp_path), val_per_class=5, train_per_class=26))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"val_per_class": 122}, "val_per_class"),
        ({"val_per_class": -1}, "val_per_class"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_sizes_name_the_field(fields, field):
    with pytest.raises(DaqSearchError, match=rf"^data\.{field}: "):
        load_data(DataSpec("digits", **fields))


# ---------------------------------------------------------------- datasets


def test_transformed_dataset_applies_the_transform():
    images = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).view(2, 1, 2, 2)
    base = TensorImageDataset(images, torch.tensor([4, 1]), num_classes=5)
    transformed = TransformedDataset(base, lambda image: image.float() * 2 + 1)
    image, label = transformed[1]
    assert label == 1 and len(transformed) == 2 and transformed.num_classes == 5
    assert torch.equal(image, torch.tensor([[[9.0, 11.0], [13.0, 15.0]]]))
    assert torch.equal(transformed.labels, base.labels)


def test_tensor_dataset_subset_and_validation():
    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1)
    dataset = TensorImageDataset(images, torch.tensor([0, 1, 2]), num_classes=3)
    subset = dataset.subset([2, 0])
    assert torch.equal(subset.images.flatten(), torch.tensor([2, 0], dtype=torch.uint8))
    assert subset.labels.tolist() == [2, 0] and subset.num_classes == 3
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(images.float(), torch.tensor([0, 1, 2]), num_classes=3)
