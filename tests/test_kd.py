"""KD loss against hand-computed values; teacher caching and checkpoint errors; the quantized student."""

import math

import pytest
import torch

from daq_search import kd
from daq_search import teacher as teacher_cache
from daq_search.candidates import parse_candidate
from daq_search.config import DataConfig, KDConfig, QuantConfig, RecipeConfig, StudentConfig, TeacherConfig
from daq_search.data import load_data
from daq_search.errors import DaqSearchError
from daq_search.quant import quantized_layers
from daq_search.student import build_student


def test_kd_loss_matches_hand_computation():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ce = math.log(1 + math.exp(-1))
    # KL(teacher || student) at T: both are two-way softmaxes of +-1/T, so KL = (p_hi - p_lo) * 2/T
    for temperature in (1.0, 2.0):
        p_hi = 1 / (1 + math.exp(-1 / temperature))
        kl = (p_hi - (1 - p_hi)) * (1 / temperature)
        loss = kd.kd_loss(s, t, torch.tensor([0]), KDConfig(gamma=1.0, alpha=3.0, temperature=temperature))
        assert loss.item() == pytest.approx(ce + 3.0 * temperature**2 * kl, abs=1e-6)


def test_kd_loss_gamma_zero_is_label_free_and_soft_targets_weigh_ce():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    a = kd.kd_loss(s, t, torch.zeros(6, dtype=torch.long), KDConfig(gamma=0.0, alpha=1.0))
    b = kd.kd_loss(s, t, torch.ones(6, dtype=torch.long), KDConfig(gamma=0.0, alpha=1.0))
    assert a.item() == pytest.approx(b.item())
    soft = torch.tensor([[0.25, 0.75, 0.0, 0.0]]).repeat(6, 1)
    mixed = kd.kd_loss(s, t, soft, KDConfig(gamma=1.0, alpha=0.0))
    ce0 = torch.nn.functional.cross_entropy(s, torch.zeros(6, dtype=torch.long))
    ce1 = torch.nn.functional.cross_entropy(s, torch.ones(6, dtype=torch.long))
    assert mixed.item() == pytest.approx(0.25 * ce0.item() + 0.75 * ce1.item(), abs=1e-6)


@pytest.fixture(scope="module")
def digits():
    data = DataConfig(name="digits", train_per_class=12, val_per_class=5)
    return data, load_data(data.spec())


FAST_TEACHER = TeacherConfig(model="tiny_cnn", recipe=RecipeConfig(epochs=2, batch_size=32, lr=3e-3))


def test_teacher_is_trained_once_then_loaded_from_cache(digits, tmp_path, monkeypatch):
    data, bundle = digits
    first, path = teacher_cache.get_teacher(data, FAST_TEACHER, bundle, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("teacher-")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher must be loaded, not trained again")

    monkeypatch.setattr(teacher_cache, "train_teacher", no_training)
    second, again = teacher_cache.get_teacher(data, FAST_TEACHER, bundle, tmp_path)
    assert again == path
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=False):
        assert torch.equal(a, b), name
    other_seed = FAST_TEACHER.model_copy(update={"seed": 1})
    assert teacher_cache.teacher_key(data, other_seed) != teacher_cache.teacher_key(data, FAST_TEACHER)


def test_corrupt_and_mismatched_teacher_checkpoints_are_one_line_errors(digits, tmp_path):
    _, bundle = digits
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DaqSearchError, match=r"^teacher\.checkpoint: .*broken\.pt is not a readable"):
        teacher_cache.load_teacher(corrupt, FAST_TEACHER, bundle)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, wrong)
    with pytest.raises(DaqSearchError, match=r"teacher\.checkpoint: .*does not fit teacher\.model tiny_cnn"):
        teacher_cache.load_teacher(wrong, FAST_TEACHER, bundle)


def test_student_from_teacher_is_quantized_and_learns(digits, tmp_path):
    data, bundle = digits
    teacher, _ = teacher_cache.get_teacher(data, FAST_TEACHER, bundle, tmp_path)
    student = build_student(StudentConfig(model="tiny_cnn"), QuantConfig(wbits=4, abits=4), bundle, teacher)
    assert len(quantized_layers(student)) >= 2
    assert teacher.training is False
    loader = kd.train_loader(bundle.train, parse_candidate("none"), bundle, batch_size=32, seed=0)
    recipe = RecipeConfig(epochs=4, lr=3e-3)
    optimizer = kd.make_optimizer(student.parameters(), recipe)
    losses = [
        kd.run_epoch(student, loader, optimizer, teacher=teacher, kd=KDConfig()).loss for _ in range(recipe.epochs)
    ]
    assert losses[-1] < losses[0]
    acc, loss = kd.evaluate(student, kd.eval_loader(bundle.val, bundle))
    assert 0.0 <= acc <= 1.0 and loss > 0


def test_non_finite_loss_raises():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    loader = [(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="loss became nan"):
        kd.run_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))


def test_binomial_se_and_the_difference_of_two_accuracies_against_hand_values():
    from daq_search.kd import binomial_se
    from daq_search.train import difference_se

    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.6, 6000) == pytest.approx((0.24 / 6000) ** 0.5)
    assert math.isnan(binomial_se(0.5, 0))
    assert difference_se(0.6, 0.5, 100) == pytest.approx(((0.24 + 0.25) / 100) ** 0.5)  # 0.0700
