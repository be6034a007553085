"""The DA score against hand-computed values and a direct two-pass numpy implementation."""

import math

import numpy as np
import pytest
import torch

from daq_search.metric import ScoreAccumulator, TStddevAccumulator, da_score, t_stddev


def two_pass_numpy(probs: np.ndarray, weights: np.ndarray, lam: float = 1.0) -> dict:
    """The definitions of metric.md computed the slow, obvious way: centroids first, then the KL of every sample."""
    n, c = probs.shape
    n_c = weights.sum(0)
    centroids = (weights.T @ probs) / np.where(n_c > 0, n_c, 1)[:, None]
    cmi = 0.0
    for i in range(n):
        for k in range(c):
            if weights[i, k] > 0:
                kl = np.sum(probs[i] * (np.log(probs[i]) - np.log(centroids[k])))
                cmi += weights[i, k] * kl
    cmi /= n
    seen = [k for k in range(c) if n_c[k] > 0]
    align = float(np.mean([-np.log(centroids[k, k]) for k in seen]))
    ce = float(-(weights * np.log(probs)).sum() / n)
    return {"cmi": cmi, "align": align, "sample_ce": ce, "score": align - lam * cmi, "score_ce": ce - lam * cmi}


def random_probs(n: int, c: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, c, generator=gen, dtype=torch.float64), dim=1)


def test_three_class_toy_matches_hand_computation():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.2, 0.6, 0.2]])
    labels = torch.tensor([0, 0, 1])
    s = da_score(probs, labels, num_classes=3)
    # class 0 centroid = [0.6, 0.2, 0.2]; class 1 centroid = sample 3 itself (KL 0); class 2 never seen
    kl1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.1 / 0.2)
    kl2 = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.3 / 0.2)
    assert s.cmi == pytest.approx((kl1 + kl2) / 3, abs=1e-6)
    assert s.cmi == pytest.approx(0.0575363, abs=1e-6)
    assert s.align == pytest.approx(-math.log(0.6), abs=1e-6)
    assert s.sample_ce == pytest.approx((-math.log(0.8) - math.log(0.4) - math.log(0.6)) / 3, abs=1e-6)
    assert s.score == pytest.approx(s.align - s.cmi, abs=1e-12)
    assert s.n == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_labels_match_two_pass(seed):
    probs = random_probs(200, 7, seed)
    labels = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(seed))
    weights = torch.nn.functional.one_hot(labels, 7).double()
    expected = two_pass_numpy(probs.numpy(), weights.numpy(), lam=0.5)
    s = da_score(probs, labels, 7, lam=0.5)
    for key, value in expected.items():
        assert getattr(s, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_soft_targets_match_two_pass():
    probs = random_probs(150, 5, 3)
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 5, (150,), generator=gen), torch.randint(0, 5, (150,), generator=gen)
    lam_mix = torch.rand(150, generator=gen, dtype=torch.float64)
    soft = lam_mix[:, None] * torch.nn.functional.one_hot(a, 5) + (1 - lam_mix[:, None]) * torch.nn.functional.one_hot(
        b, 5
    )
    expected = two_pass_numpy(probs.numpy(), soft.numpy())
    s = da_score(probs, soft, 5)
    for key, value in expected.items():
        assert getattr(s, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_soft_centroids_are_read_by_label_row_not_transposed():
    # Centroids are rows of S = W^T P (label -> mean prediction). The authors' code builds P^T W and reads it by
    # label row, which here would give class 0 the "centroid" [0.2, 0.3] and a different CMI.
    probs = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    soft = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s = da_score(probs, soft, 2)
    # Q_0 = [0.2, 0.8], Q_1 = [0.6, 0.4]
    kl1 = 0.1 * math.log(0.1 / 0.2) + 0.9 * math.log(0.9 / 0.8)
    kl2 = 0.3 * math.log(0.3 / 0.2) + 0.7 * math.log(0.7 / 0.8)
    assert s.cmi == pytest.approx((kl1 + kl2) / 3, abs=1e-12)
    assert s.align == pytest.approx((-math.log(0.2) - math.log(0.4)) / 2, abs=1e-12)


def test_merge_equals_single_pass():
    probs = random_probs(300, 10, 5)
    labels = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(6))
    whole = da_score(probs, labels, 10)
    parts = [ScoreAccumulator(10) for _ in range(3)]
    for k, acc in enumerate(parts):
        for start in range(k * 100, (k + 1) * 100, 32):
            stop = min(start + 32, (k + 1) * 100)
            acc.update(probs[start:stop], labels[start:stop])
    merged = parts[0].merge(parts[1]).merge(parts[2]).compute()
    for key in ("cmi", "align", "sample_ce", "score", "score_ce"):
        assert getattr(merged, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    assert merged.n == 300


def test_identical_outputs_per_class_have_zero_cmi_and_confident_correct_align_near_zero():
    probs = torch.tensor([[0.98, 0.01, 0.01]] * 4 + [[0.01, 0.98, 0.01]] * 4, dtype=torch.float64)
    labels = torch.tensor([0] * 4 + [1] * 4)
    s = da_score(probs, labels, 3)
    assert s.cmi == pytest.approx(0.0, abs=1e-12)
    assert s.align == pytest.approx(-math.log(0.98), abs=1e-9)


def test_lambda_weighs_cmi():
    probs = random_probs(50, 4, 7)
    labels = torch.arange(50) % 4
    s0, s2 = da_score(probs, labels, 4, lam=0.0), da_score(probs, labels, 4, lam=2.0)
    assert s0.score == pytest.approx(s0.align)
    assert s2.score == pytest.approx(s2.align - 2 * s2.cmi)
    assert s2.cmi > 0


def test_bad_target_shape_raises():
    with pytest.raises(ValueError, match="soft targets"):
        da_score(random_probs(4, 3, 0), torch.zeros(4, 2), 3)


def test_t_stddev_hand_computed():
    means = torch.tensor([[0.5, 0.5], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    # per class unbiased std of (0.5, 0.7, 0.6) and (0.5, 0.3, 0.4) is 0.1 each
    assert t_stddev(means) == pytest.approx(0.1, abs=1e-12)
    with pytest.raises(ValueError, match="2 groups"):
        t_stddev(means[:1])


def test_t_stddev_accumulator_groups_batches_and_drops_partial_group():
    acc = TStddevAccumulator(group_size=2)
    batches = [
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.0, 1.0]]),
    ]
    for b in batches:
        acc.update(b)
    # groups: mean([1,0],[0,1]) = [.5,.5]; mean([1,0],[1,0]) = [1,0]; the 5th batch is a partial group
    assert len(acc.group_means) == 2
    expected = float(np.mean([np.std([0.5, 1.0], ddof=1), np.std([0.5, 0.0], ddof=1)]))
    assert acc.compute() == pytest.approx(expected, abs=1e-12)
