"""Training loaders sized to the trial and seeded per image, and the bf16 / fp32 training step."""

import pytest
import torch

from daq_search import kd
from daq_search import teacher as teacher_cache
from daq_search.candidates import parse_candidate
from daq_search.config import DataConfig, KDConfig, QuantConfig, RecipeConfig, StudentConfig, TeacherConfig
from daq_search.data import load_data
from daq_search.errors import DaqSearchError
from daq_search.models import create_for
from daq_search.student import build_student

AUGMENTING = parse_candidate("randaugment(magnitude=20,num_ops=3)")


@pytest.fixture(scope="module")
def bundle():
    return load_data(DataConfig(name="digits", train_per_class=8, val_per_class=2).spec())


def epoch_batches(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [x for x, _ in loader]


def test_same_seed_gives_the_same_augmented_batches_with_0_and_2_loader_workers(bundle):
    inline = kd.train_loader(bundle.train, AUGMENTING, bundle, batch_size=16, seed=3, workers=0)
    pooled = kd.train_loader(bundle.train, AUGMENTING, bundle, batch_size=16, seed=3, workers=2)
    assert pooled.persistent_workers and pooled.num_workers == 2 and not inline.persistent_workers
    for epoch in (1, 2):
        a, b = epoch_batches(inline, epoch), epoch_batches(pooled, epoch)
        assert len(a) == len(b) == 80 // 16
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(epoch_batches(inline, 1)), torch.cat(epoch_batches(inline, 2)))
    other_seed = kd.train_loader(bundle.train, AUGMENTING, bundle, batch_size=16, seed=4)
    assert not torch.equal(torch.cat(epoch_batches(other_seed, 1)), torch.cat(epoch_batches(inline, 1)))


def test_the_loader_leaves_the_callers_random_stream_alone(bundle):
    loader = kd.train_loader(bundle.train, AUGMENTING, bundle, batch_size=16, seed=0)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def test_iterations_without_set_epoch_count_epochs(bundle):
    loader = kd.train_loader(bundle.train, AUGMENTING, bundle, batch_size=16, seed=0)
    first, second = torch.cat([x for x, _ in loader]), torch.cat([x for x, _ in loader])
    assert torch.equal(first, torch.cat(epoch_batches(loader, 0)))
    assert torch.equal(second, torch.cat(epoch_batches(loader, 1)))


@pytest.mark.parametrize(
    ("cpus", "override", "expected"), [(1, None, 0), (1.5, None, 0), (2, None, 1), (8, None, 7), (8, 2, 2), (1, 3, 3)]
)
def test_loader_workers_come_from_the_trial_cpus_unless_set(cpus, override, expected):
    assert kd.loader_workers(cpus, override) == expected


def test_bf16_step_keeps_parameters_and_quantizer_steps_fp32(bundle):
    teacher = create_for("tiny_cnn", 1.0, bundle)
    student = build_student(StudentConfig(model="tiny_cnn"), QuantConfig(), bundle, teacher)
    seen = []
    student.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    loader = kd.train_loader(bundle.train, parse_candidate("none"), bundle, batch_size=16, seed=0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    stats = kd.run_epoch(student, loader, optimizer, teacher=teacher, kd=KDConfig(), precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert torch.isfinite(torch.tensor(stats.loss))
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    seen.clear()
    kd.run_epoch(student, loader, optimizer, teacher=teacher, kd=KDConfig(), precision="fp32")
    assert set(seen) == {torch.float32}


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(
        DaqSearchError,
        match=r"^trial\.precision: bf16 needs a GPU with bfloat16 support; Old GPU has none; allowed: fp32$",
    ):
        kd.check_precision("bf16", "cuda", "trial.precision")
    kd.check_precision("fp32", "cuda", "trial.precision")
    kd.check_precision("bf16", "cpu", "trial.precision")


def test_teacher_key_ignores_download_and_keeps_fp32_keys_but_not_bf16():
    data, teacher = DataConfig(), TeacherConfig()
    assert teacher_cache.teacher_key(data.model_copy(update={"download": True}), teacher) == teacher_cache.teacher_key(
        data, teacher
    )
    bf16 = teacher.model_copy(update={"recipe": RecipeConfig(epochs=30, precision="bf16")})
    assert teacher_cache.teacher_key(data, bf16) != teacher_cache.teacher_key(data, teacher)


@pytest.mark.parametrize(("cpus", "workers", "expected"), [(4, 1, 3), (4, 3, 1), (1, 0, 1), (2, 5, 1), (2.5, 0, 2)])
def test_training_threads_are_the_cpus_the_loaders_leave_at_least_one(cpus, workers, expected):
    assert kd.training_threads(cpus, workers) == expected
