"""Candidates (ids, parsing), the transforms they build, batch mixes, and YAML search spaces."""

import math
import random
import types
from pathlib import Path

import optuna
import pytest
import torch

from daq_search.candidates import MIXES, POLICIES, Candidate, parse_candidate
from daq_search.errors import DaqSearchError
from daq_search.spaces import load_search_space
from daq_search.transforms import build_batch_mix, build_eval_transform, build_train_transform

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
POLICY_LIST = "none, autoaugment, randaugment, trivialaugment, augmix, random_erasing, random_affine"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_bundle(channels: int, size: int, padding: int = 0, hflip: bool = False, num_classes: int = 10):
    """Stand-in for data.DataBundle with the attributes the transforms read."""
    mean = (0.5,) if channels == 1 else (0.4914, 0.4822, 0.4465)
    std = (0.25,) if channels == 1 else (0.247, 0.243, 0.261)
    return types.SimpleNamespace(
        image_size=size,
        crop_padding=padding,
        hflip=hflip,
        mean=mean,
        std=std,
        num_classes=num_classes,
        in_channels=channels,
    )


def normalised(image: torch.Tensor, bundle) -> torch.Tensor:
    """Hand-computed (x / 255 - mean) / std, per channel, in float64."""
    mean = torch.tensor(bundle.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float64).view(-1, 1, 1)
    return (image.double() / 255 - mean) / std


# ---------------------------------------------------------------- ids and parsing


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (Candidate(), "none"),
        (Candidate("randaugment", mix="cutmix"), "randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)"),
        (Candidate("trivialaugment", mix="mixup"), "trivialaugment+mixup(alpha=0.2)"),
        (Candidate("autoaugment", {"policy": "svhn"}), "autoaugment(policy=svhn)"),
        (Candidate("random_erasing", {"p": 0.1 + 0.2}), "random_erasing(p=0.30000000000000004)"),
        (Candidate("augmix", (("severity", 10),), "cutmix", (("alpha", 2),)), "augmix(severity=10)+cutmix(alpha=2.0)"),
        (Candidate("none", mix="mixup", mix_args={"alpha": 1e-05}), "none+mixup(alpha=1e-05)"),
        (Candidate("random_erasing", {"p": -0.0}), "random_erasing(p=0.0)"),
    ],
)
def test_candidate_id_examples(candidate, expected):
    assert candidate.id == expected
    assert parse_candidate(expected) == candidate


@pytest.mark.parametrize(
    ("text", "expected_id"),
    [
        ("cutmix", "none+cutmix(alpha=1.0)"),
        (
            " randaugment ( num_ops = 3 ) + cutmix ( alpha = 0.5 ) ",
            "randaugment(magnitude=9,num_ops=3)+cutmix(alpha=0.5)",
        ),
        ("randaugment()", "randaugment(magnitude=9,num_ops=2)"),
        ("augmix", "augmix(severity=3)"),
        ("random_erasing(p=1)", "random_erasing(p=1.0)"),
        ("mixup(alpha=1e+0)", "none+mixup(alpha=1.0)"),
        ("autoaugment", "autoaugment(policy=cifar10)"),
        ("none+mixup", "none+mixup(alpha=0.2)"),
    ],
)
def test_parse_examples(text, expected_id):
    assert parse_candidate(text).id == expected_id


def test_arguments_are_canonicalised_sorted_and_complete():
    short = Candidate("randaugment", {"num_ops": 3})
    assert short.policy_args == (("magnitude", 9), ("num_ops", 3))
    assert short == Candidate("randaugment", (("num_ops", 3), ("magnitude", 9)))
    assert hash(short) == hash(Candidate("randaugment", (("num_ops", 3), ("magnitude", 9))))
    integer_alpha = Candidate("none", mix="cutmix", mix_args={"alpha": 2})
    assert integer_alpha.mix_args == (("alpha", 2.0),) and isinstance(integer_alpha.mix_args[0][1], float)
    assert Candidate("trivialaugment", mix_args={}).mix_args == ()


def test_knobs_is_a_flat_record():
    assert parse_candidate("randaugment+cutmix").knobs() == {
        "policy": "randaugment",
        "randaugment.magnitude": 9,
        "randaugment.num_ops": 2,
        "mix": "cutmix",
        "cutmix.alpha": 1.0,
    }
    assert parse_candidate("trivialaugment").knobs() == {"policy": "trivialaugment", "mix": "none"}


def random_candidate(rng: random.Random) -> Candidate:
    """A candidate with random knobs inside every spec, floats of awkward shapes included."""

    def value(spec):
        if spec.value_type is str:
            return rng.choice(spec.choices)
        if spec.value_type is int:
            return rng.randint(spec.low, spec.high)
        number = rng.choice(
            [
                rng.uniform(spec.low, spec.high),
                round(rng.uniform(spec.low, spec.high), 2),
                spec.high,
                spec.high * 10 ** -rng.randint(1, 9),
                0.1 + 0.2,
            ]
        )
        return min(number, spec.high)

    policy = rng.choice(list(POLICIES))
    mix = rng.choice([None, *MIXES])
    return Candidate(
        policy,
        {knob: value(spec) for knob, spec in POLICIES[policy].items()},
        mix,
        {knob: value(spec) for knob, spec in MIXES[mix].items()} if mix else {},
    )


def test_parse_inverts_id_for_random_candidates():
    rng = random.Random(7)
    for _ in range(500):
        candidate = random_candidate(rng)
        assert parse_candidate(candidate.id) == candidate
        spaced = candidate.id.replace("(", " ( ").replace(",", " , ").replace("=", " = ").replace("+", " + ")
        assert parse_candidate(f"  {spaced}  ") == candidate
        assert parse_candidate(candidate.id).id == candidate.id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("randaugmnt", f"unknown policy 'randaugmnt'; allowed: {POLICY_LIST} (or a mix alone: cutmix, mixup)"),
        ("randaugment(num_ops=7)", "randaugment.num_ops: 7 is out of range; allowed: integer in [1, 5]"),
        ("randaugment(num_ops=two)", "randaugment.num_ops: 'two' is not an integer; allowed: integer in [1, 5]"),
        ("randaugment(n=2)", "randaugment: unknown knob 'n'; allowed: magnitude, num_ops"),
        ("trivialaugment(p=1)", "trivialaugment: unknown knob 'p'; allowed: none (trivialaugment has no knobs)"),
        ("trivialaugment+cutmix(alpha=0)", "cutmix.alpha: 0.0 is out of range; allowed: float in (0.0, 10.0]"),
        ("cutmix(alpha=nan)", "cutmix.alpha: nan is out of range; allowed: float in (0.0, 10.0]"),
        ("random_erasing(p=x)", "random_erasing.p: 'x' is not a number; allowed: float in [0.0, 1.0]"),
        (
            "autoaugment(policy=cifar100)",
            "autoaugment.policy: 'cifar100' is not allowed; allowed: one of cifar10, imagenet, svhn",
        ),
        ("trivialaugment+randaugment", "unknown mix 'randaugment'; allowed: cutmix, mixup"),
        ("cutmix+mixup", "'cutmix' is a mix and must come second; allowed: "),
        ("none+cutmix+mixup", "more than one '+'; allowed: "),
        ("", "empty; allowed: "),
        ("randaugment(num_ops=2", "cannot parse 'randaugment(num_ops=2'; allowed: "),
        ("randaugment(num_ops)", "randaugment: cannot parse 'num_ops'; allowed: knob=value"),
        ("randaugment(num_ops=2,num_ops=3)", "randaugment: knob 'num_ops' given twice; allowed: each knob once"),
    ],
)
def test_parse_errors_name_the_text_and_what_is_allowed(text, message):
    with pytest.raises(DaqSearchError) as caught:
        parse_candidate(text)
    assert str(caught.value).startswith(f"candidate {text!r}: {message}")
    assert "\n" not in str(caught.value)


def test_direct_construction_is_validated():
    with pytest.raises(DaqSearchError) as caught:
        Candidate("randaugment", {"num_ops": 2.5})
    assert str(caught.value) == "randaugment.num_ops: 2.5 is not an integer; allowed: integer in [1, 5]"
    with pytest.raises(DaqSearchError, match=r"^randaugment: a knob is given twice"):
        Candidate("randaugment", (("num_ops", 2), ("num_ops", 3)))
    with pytest.raises(DaqSearchError, match=r"^unknown mix 'none'; allowed: cutmix, mixup"):
        Candidate(mix="none")
    with pytest.raises(DaqSearchError, match="given without a mix"):
        Candidate(mix_args={"alpha": 1.0})
    with pytest.raises(DaqSearchError, match=r"^augmix\.severity: True is not an integer"):
        Candidate("augmix", {"severity": True})


# ---------------------------------------------------------------- image transforms


def test_none_policy_is_exact_normalisation_without_crop():
    bundle = make_bundle(3, 16, padding=0, hflip=True)
    image = torch.stack([torch.full((16, 16), value, dtype=torch.uint8) for value in (0, 128, 255)])
    out = build_train_transform(Candidate(), bundle)(image)
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    torch.testing.assert_close(out.double(), normalised(image, bundle), atol=1e-6, rtol=0)
    gray = make_bundle(1, 16)
    out = build_train_transform(Candidate(), gray)(torch.full((1, 16, 16), 51, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.full((1, 16, 16), -1.2), atol=1e-6, rtol=0)  # (0.2 - 0.5) / 0.25


def test_eval_transform_is_exact_normalisation():
    bundle = make_bundle(3, 8)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = build_eval_transform(bundle)(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), normalised(image, bundle), atol=1e-6, rtol=0)


def test_base_transform_flips_and_pads_the_crop():
    torch.manual_seed(0)
    ramp = torch.arange(16, dtype=torch.uint8).mul(15).expand(1, 16, 16).contiguous()
    flip_only = build_train_transform(Candidate(), make_bundle(1, 16, padding=0, hflip=True))
    outs = [flip_only(ramp) for _ in range(20)]
    straight, flipped = normalised(ramp, make_bundle(1, 16)), normalised(ramp.flip(-1), make_bundle(1, 16))
    is_straight = [torch.allclose(out.double(), straight, atol=1e-6) for out in outs]
    is_flipped = [torch.allclose(out.double(), flipped, atol=1e-6) for out in outs]
    assert all(a != b for a, b in zip(is_straight, is_flipped, strict=False)) and any(is_straight) and any(is_flipped)

    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    bundle = make_bundle(3, 32, padding=4)
    crop = build_train_transform(Candidate(), bundle)
    fill, full = normalised(torch.zeros(3, 1, 1), bundle).float(), normalised(white[:, :1, :1], bundle).float()
    saw_padding = False
    for _ in range(10):
        out = crop(white)
        assert out.shape == (3, 32, 32)
        is_fill, is_full = torch.isclose(out, fill, atol=1e-5), torch.isclose(out, full, atol=1e-5)
        assert bool((is_fill | is_full).all())
        assert int(is_fill[0].sum()) <= 32 * 32 - 28 * 28  # at most 4 padded rows and 4 columns are seen
        saw_padding |= bool(is_fill.any())
    assert saw_padding


POLICY_CANDIDATES = [
    Candidate(),
    *(Candidate("autoaugment", {"policy": policy}) for policy in ("cifar10", "imagenet", "svhn")),
    Candidate("randaugment"),
    Candidate("randaugment", {"num_ops": 5, "magnitude": 30}),
    Candidate("trivialaugment"),
    Candidate("augmix"),
    Candidate("augmix", {"severity": 10}),
    Candidate("random_erasing"),
    Candidate("random_erasing", {"p": 1.0}),
    Candidate("random_affine"),
    Candidate("random_affine", {"degrees": 180, "translate": 0.5, "scale": 0.5}),
]


@pytest.mark.parametrize("candidate", POLICY_CANDIDATES, ids=lambda c: c.id)
@pytest.mark.parametrize(("channels", "size"), [(1, 16), (1, 28), (3, 32), (3, 64)])
def test_every_policy_runs_and_stays_in_the_normalised_range(candidate, channels, size):
    torch.manual_seed(3)
    bundle = make_bundle(channels, size, padding=2, hflip=True)
    transform = build_train_transform(candidate, bundle)
    low = normalised(torch.zeros(channels, 1, 1), bundle).float()
    high = normalised(torch.full((channels, 1, 1), 255), bundle).float()
    for _ in range(4):
        image = torch.randint(0, 256, (channels, size, size), dtype=torch.uint8)
        out = transform(image)
        assert out.dtype == torch.float32 and out.shape == (channels, size, size)
        assert bool(torch.isfinite(out).all())
        assert bool((out >= low - 1e-5).all() and (out <= high + 1e-5).all())


@pytest.mark.parametrize("candidate", POLICY_CANDIDATES[1:], ids=lambda c: c.id)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_policy_changes_images(candidate, channels):
    torch.manual_seed(5)
    bundle = make_bundle(channels, 16)
    image = torch.randint(0, 256, (channels, 16, 16), dtype=torch.uint8)
    plain = build_eval_transform(bundle)(image)
    transform = build_train_transform(candidate, bundle)
    assert any(not torch.allclose(transform(image), plain) for _ in range(10))


def test_random_erasing_blanks_a_rectangle_after_scaling():
    torch.manual_seed(11)
    bundle = make_bundle(3, 32)
    out = build_train_transform(Candidate("random_erasing", {"p": 1.0}), bundle)(
        torch.full((3, 32, 32), 255, dtype=torch.uint8)
    )
    erased = torch.isclose(out, normalised(torch.zeros(3, 1, 1), bundle).float(), atol=1e-5)
    kept = torch.isclose(out, normalised(torch.full((3, 1, 1), 255), bundle).float(), atol=1e-5)
    assert bool((erased | kept).all()) and bool(erased.any()) and bool(kept.any())
    rows, cols = erased[0].any(dim=1).nonzero().flatten(), erased[0].any(dim=0).nonzero().flatten()
    box = erased[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert bool(box.all()) and int(erased[0].sum()) == box.numel()


def bright_pixel_offsets(candidate: Candidate, draws: int) -> list[tuple[int, int]]:
    """Where a single bright pixel at (8, 8) of a dark 16x16 image lands under ``candidate`` (no crop padding, no
    flip), as (row, column) offsets of the brightest output pixel."""
    bundle = make_bundle(1, 16, padding=0, hflip=False)
    transform = build_train_transform(candidate, bundle)
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[0, 8, 8] = 255
    offsets = []
    for _ in range(draws):
        index = int(transform(image)[0].argmax())
        offsets.append((index // 16 - 8, index % 16 - 8))
    return offsets


def test_random_affine_id_and_defaults():
    assert Candidate("random_affine").id == "random_affine(degrees=15,scale=0.1,translate=0.1)"
    assert parse_candidate("random_affine(degrees=30,translate=0,scale=0)").policy_args == (
        ("degrees", 30),
        ("scale", 0.0),
        ("translate", 0.0),
    )


def test_random_affine_shifts_by_at_most_its_fraction_of_the_side():
    torch.manual_seed(2)
    offsets = bright_pixel_offsets(Candidate("random_affine", {"degrees": 0, "translate": 0.25, "scale": 0.0}), 60)
    assert all(abs(dy) <= 4 and abs(dx) <= 4 for dy, dx in offsets)  # 0.25 x 16 px
    assert any(abs(dy) >= 3 for dy, _ in offsets) and any(abs(dx) >= 3 for _, dx in offsets)


def test_random_affine_with_every_knob_at_zero_is_the_identity():
    torch.manual_seed(4)
    bundle = make_bundle(3, 16, padding=0, hflip=False)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    transform = build_train_transform(
        Candidate("random_affine", {"degrees": 0, "translate": 0.0, "scale": 0.0}), bundle
    )
    assert torch.equal(transform(image), build_eval_transform(bundle)(image))


def test_random_affine_rotates_about_the_centre_by_at_most_its_degrees():
    torch.manual_seed(6)
    bundle = make_bundle(1, 16, padding=0, hflip=False)
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[0, 2, 7:9] = 255  # a bar 6 px above the centre (7.5, 7.5), 2 px wide
    transform = build_train_transform(
        Candidate("random_affine", {"degrees": 90, "translate": 0.0, "scale": 0.0}), bundle
    )
    angles = []
    for _ in range(40):
        out = transform(image)[0]
        rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        weight = out - out.min()
        row = float((weight * rows).sum() / weight.sum()) - 7.5
        col = float((weight * cols).sum() / weight.sum()) - 7.5
        assert 5.0 <= math.hypot(row, col) <= 6.5  # the bar stays 6 px from the centre
        angles.append(math.degrees(math.atan2(col, -row)))
    assert all(abs(angle) <= 90 + 6 for angle in angles)  # 6 degrees of slack for the bar's 2 px width
    assert max(angles) > 45 and min(angles) < -45


# ---------------------------------------------------------------- batch mixes


def test_no_mix_builds_nothing():
    assert build_batch_mix(Candidate("trivialaugment"), 10) is None


def test_cutmix_targets_are_the_pasted_pixel_fractions():
    torch.manual_seed(0)
    labels = torch.tensor([3, 0, 4, 1])
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    mix = build_batch_mix(parse_candidate("cutmix"), num_classes=5)
    saw_a_mix = False
    for _ in range(5):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (4, 5) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
        for i in range(4):
            own, partner = int(labels[i]), int(labels[i - 1])
            assert bool((mixed[i] == i).logical_or(mixed[i] == (i - 1) % 4).all())
            own_fraction = float((mixed[i] == i).float().mean())
            assert targets[i, own].item() == pytest.approx(own_fraction, abs=1e-6)
            assert targets[i, partner].item() == pytest.approx(1 - own_fraction, abs=1e-6)
            others = [c for c in range(5) if c not in (own, partner)]
            assert bool((targets[i, others] == 0).all())
            saw_a_mix |= 0 < own_fraction < 1
    assert saw_a_mix


def test_mixup_targets_are_the_blend_weights():
    torch.manual_seed(1)
    labels = torch.tensor([2, 5, 0, 7, 1])
    values = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    images = values.view(5, 1, 1, 1).expand(5, 1, 4, 4).contiguous()
    mixed, targets = build_batch_mix(parse_candidate("mixup(alpha=1.0)"), num_classes=8)(images, labels)
    assert targets.shape == (5, 8)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5))
    for i in range(5):
        own, partner = int(labels[i]), int(labels[i - 1])
        assert int((targets[i] > 0).sum()) == 2
        blend = targets[i, own] * values[i] + targets[i, partner] * values[i - 1]
        torch.testing.assert_close(mixed[i], torch.full((1, 4, 4), float(blend)), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- search spaces

PAPER_POLICIES = [
    Candidate(),
    *(Candidate("autoaugment", {"policy": policy}) for policy in ("cifar10", "imagenet", "svhn")),
    Candidate("randaugment", {"num_ops": 2, "magnitude": 9}),
    Candidate("trivialaugment"),
    Candidate("augmix"),
    Candidate("random_erasing"),
]
DEFAULT_POLICIES = [*PAPER_POLICIES, Candidate("random_affine")]


def with_mix(candidate: Candidate, mix: str | None) -> Candidate:
    return Candidate(candidate.policy, candidate.policy_args, mix)


def test_paper_space_lists_the_authors_16_candidates():
    space = load_search_space(SPACES / "paper.yaml")
    assert space.name == "paper"
    candidates = space.candidates()
    assert len(candidates) == 16 and len(set(candidates)) == 16
    assert set(candidates) == {with_mix(c, mix) for c in PAPER_POLICIES for mix in (None, "cutmix")}
    assert "trivialaugment+cutmix(alpha=1.0)" in [c.id for c in candidates]
    default = load_search_space(SPACES / "default.yaml")
    assert all(candidate in default for candidate in candidates)


def test_list_space_with_optuna_round_trips():
    space = load_search_space(SPACES / "paper.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(10):
        trial = study.ask()
        space.suggest(trial)
        assert set(trial.params) == {"candidate"}
        candidate = space.candidate_from_params(trial.params)
        assert candidate.id == trial.params["candidate"] and candidate in space
        assert space.params_of(candidate) == trial.params
        study.tell(trial, 0.0)
    with pytest.raises(DaqSearchError, match=r"paper\.yaml: candidate 'trivialaugment\+mixup\(alpha=0\.2\)': not in"):
        space.params_of(parse_candidate("trivialaugment+mixup"))
    with pytest.raises(DaqSearchError, match=r"paper\.yaml: params: missing 'candidate'"):
        space.candidate_from_params({"policy": "none"})
    with pytest.raises(DaqSearchError, match=r"paper\.yaml: params: candidate 'cutout': unknown policy 'cutout'"):
        space.candidate_from_params({"candidate": "cutout"})


SEARCHED = {
    "randaugment.num_ops": (1, 3),
    "randaugment.magnitude": (1, 15),
    "augmix.severity": (1, 5),
    "random_erasing.p": (0.1, 0.9),
    "random_affine.degrees": (0, 45),
    "random_affine.translate": (0.0, 0.25),
    "random_affine.scale": (0.0, 0.25),
    "cutmix.alpha": (0.2, 2.0),
    "mixup.alpha": (0.1, 1.0),
}


def test_default_space_grid():
    space = load_search_space(SPACES / "default.yaml")
    assert space.name == "default"
    candidates = space.candidates()
    mixes = [None, "cutmix", "mixup"]
    assert set(candidates) == {with_mix(c, mix) for c in DEFAULT_POLICIES for mix in mixes}
    assert len(candidates) == 27


def test_default_space_suggests_only_the_chosen_knobs_inside_their_ranges():
    space = load_search_space(SPACES / "default.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_policies, seen_mixes = set(), set()
    for _ in range(50):
        trial = study.ask()
        space.suggest(trial)
        params = trial.params
        policy, mix = params["policy"], params["mix"]
        seen_policies.add(policy)
        seen_mixes.add(mix)
        knob_keys = {key for key in params if key not in ("policy", "mix")}
        expected = {key for key in SEARCHED if key.startswith((f"{policy}.", f"{mix}."))}
        if policy == "autoaugment":
            expected.add("autoaugment.policy")
            assert params["autoaugment.policy"] in ("cifar10", "imagenet", "svhn")
        assert knob_keys == expected
        for key in knob_keys & set(SEARCHED):
            low, high = SEARCHED[key]
            assert low <= params[key] <= high
            assert isinstance(params[key], type(low))
        candidate = space.candidate_from_params(params)
        assert candidate in space
        assert candidate.policy == policy and (candidate.mix or "none") == mix
        back = space.params_of(candidate)
        assert back.keys() == params.keys()
        for key, value in params.items():  # Optuna's step grid gives e.g. 1.4000000000000001; the candidate 1.4
            assert back[key] == (pytest.approx(value, abs=1e-9) if isinstance(value, float) else value)
        for _, value in candidate.policy_args + candidate.mix_args:
            if isinstance(value, float):  # on the 0.05 grid and written so in the id
                assert value == round(value, 2) and len(repr(value)) <= 4, candidate.id
        study.tell(trial, 0.0)
    assert seen_policies == set(POLICIES) and seen_mixes == {"none", "cutmix", "mixup"}


def test_ranges_are_sampled_on_their_step_so_ids_stay_short(tmp_path):
    path = write(tmp_path, "name: s\npolicies: {none: {}}\nmixes: {cutmix: {alpha: {low: 0.1, high: 1.0}}}\n")
    space = load_search_space(path)
    grid = {round(0.1 + 0.05 * k, 2) for k in range(19)}
    # what Optuna's step grid hands back, e.g. 0.1 + 4 * 0.05 = 0.30000000000000004, names cutmix(alpha=0.3)
    params = {"policy": "none", "mix": "cutmix", "cutmix.alpha": 0.1 + 4 * 0.05}
    assert params["cutmix.alpha"] != 0.3 and space.candidate_from_params(params).id == "none+cutmix(alpha=0.3)"
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        space.suggest(trial)
        candidate = space.candidate_from_params(trial.params)
        if candidate.mix is not None:
            alpha = dict(candidate.mix_args)["alpha"]
            assert alpha in grid and candidate.id == f"none+cutmix(alpha={round(alpha, 2)})"
        study.tell(trial, 0.0)
    off_grid = parse_candidate("cutmix(alpha=0.33)")
    assert off_grid not in space and parse_candidate("cutmix(alpha=0.35)") in space
    with pytest.raises(
        DaqSearchError, match=r"cutmix\.alpha=0\.33 is outside the space; allowed: float in \[0\.1, 1\.0\], step"
    ):
        space.params_of(off_grid)
    steps = write(tmp_path, "name: s\npolicies: {randaugment: {magnitude: {low: 2, high: 10, step: 4}}}\n", "i.yaml")
    domain = dict(load_search_space(steps).policies[0].knobs)["magnitude"]
    assert (domain.low, domain.high, domain.step) == (2, 10, 4) and domain.describe() == "integer in [2, 10], step 4"
    assert [domain.contains(m) for m in (2, 4, 6, 10)] == [True, False, True, True]


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fixed_knobs_are_not_suggested_but_filled_in(tmp_path):
    path = write(
        tmp_path,
        """
name: fixed
policies:
  augmix: {severity: 4}
  randaugment: {num_ops: [1, 3], magnitude: {low: 5, high: 5}}
  autoaugment:
  random_erasing: {p: {low: 0.6, high: 0.9}}
mixes:
  cutmix: {alpha: 0.5}
allow_no_mix: false
""",
    )
    space = load_search_space(path)
    assert [c.id for c in space.candidates()] == [
        "augmix(severity=4)+cutmix(alpha=0.5)",
        "randaugment(magnitude=5,num_ops=1)+cutmix(alpha=0.5)",
        "randaugment(magnitude=5,num_ops=3)+cutmix(alpha=0.5)",
        "autoaugment(policy=cifar10)+cutmix(alpha=0.5)",
        "random_erasing(p=0.6)+cutmix(alpha=0.5)",  # default 0.5 clamped into [0.6, 0.9]
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    for _ in range(20):
        trial = study.ask()
        space.suggest(trial)
        assert set(trial.params) <= {"policy", "mix", "randaugment.num_ops", "random_erasing.p"}
        assert trial.params["mix"] == "cutmix"
        candidate = space.candidate_from_params(trial.params)
        assert candidate.mix_args == (("alpha", 0.5),)
        p = trial.params.get("random_erasing.p")
        assert (
            dict(candidate.policy_args)
            == {
                "augmix": {"severity": 4},
                "randaugment": {"magnitude": 5, "num_ops": trial.params.get("randaugment.num_ops")},
                "autoaugment": {"policy": "cifar10"},
                "random_erasing": {"p": None if p is None else round(p, 2)},  # the default step is 0.05
            }[candidate.policy]
        )
        study.tell(trial, 0.0)


def test_candidates_outside_a_structured_space_are_rejected():
    space = load_search_space(SPACES / "default.yaml")
    path = str(SPACES / "default.yaml")
    outside = Candidate("randaugment", {"num_ops": 5})
    assert outside not in space
    with pytest.raises(DaqSearchError) as caught:
        space.params_of(outside)
    assert str(caught.value) == (
        f"{path}: candidate 'randaugment(magnitude=9,num_ops=5)': randaugment.num_ops=5 is outside the space; "
        "allowed: integer in [1, 3]"
    )
    alpha_range = r"allowed: float in \[0\.2, 2\.0\], step 0\.05$"
    with pytest.raises(DaqSearchError, match=r"cutmix\.alpha=5\.0 is outside the space; " + alpha_range):
        space.params_of(parse_candidate("none+cutmix(alpha=5)"))
    with pytest.raises(DaqSearchError, match=r"params: mix 'cutout' is not in the space; allowed: none, cutmix, mix"):
        space.candidate_from_params({"policy": "none", "mix": "cutout"})
    with pytest.raises(DaqSearchError, match=r"params: missing 'randaugment\.magnitude'"):
        space.candidate_from_params({"policy": "randaugment", "randaugment.num_ops": 2, "mix": "none"})
    with pytest.raises(DaqSearchError, match=r"augmix\.severity=7 is outside the space; allowed: integer in \[1, 5\]"):
        space.candidate_from_params({"policy": "augmix", "augmix.severity": 7, "mix": "none"})
    with pytest.raises(DaqSearchError, match=r"params: policy 'cutout' is not in the space; allowed: none, "):
        space.candidate_from_params({"policy": "cutout", "mix": "none"})


MALFORMED = [
    ("name: x\npolicies: {randaugment: {num_ops: 2}\n", "line 3, column 1: malformed YAML: "),
    (
        "name: x\npolicies:\n  randaugment: {}\n  randaugment: {}\n",
        "line 4, column 3: malformed YAML: duplicate key 'randaugment'",
    ),
    ("", "top level: expected a mapping; allowed keys: name, candidates, policies, mixes, allow_no_mix"),
    ("- none\n", "top level: expected a mapping"),
    ("name: x\npolicy: {none: {}}\n", "policy: unknown key; allowed: name, candidates, policies, mixes, allow_no_mix"),
    ("policies: {none: {}}\n", "name: None is not a non-empty string"),
    ("name: x\n", "policies: missing; allowed: 'candidates' (a list) or 'policies' (a mapping)"),
    ("name: x\ncandidates: [none]\nmixes: {}\n", "mixes: cannot be combined with candidates"),
    ("name: x\ncandidates: []\n", "candidates: expected a non-empty list"),
    (
        "name: x\ncandidates: [none, randaugmnt]\n",
        f"candidates[1]: candidate 'randaugmnt': unknown policy 'randaugmnt'; allowed: {POLICY_LIST}",
    ),
    ("name: x\ncandidates: [none, 3]\n", "candidates[1]: 3 is not a string"),
    (
        "name: x\ncandidates: [cutmix, none+cutmix(alpha=1)]\n",
        "candidates[1]: duplicate of candidates[0] (none+cutmix(alpha=1.0)); allowed: each once",
    ),
    ("name: x\npolicies: [none]\n", "policies: expected a mapping of policy name -> knobs"),
    ("name: x\npolicies: {}\n", "policies: empty; allowed: one or more of"),
    ("name: x\npolicies: {randaug: {}}\n", f"policies.randaug: unknown policy; allowed: {POLICY_LIST}"),
    ("name: x\npolicies: {none: {}}\nmixes: {cutmx: {}}\n", "mixes.cutmx: unknown mix; allowed: cutmix, mixup"),
    ("name: x\npolicies: {trivialaugment: 3}\n", "policies.trivialaugment: expected a mapping of knob -> values"),
    ("name: x\npolicies: {randaugment: {n: 2}}\n", "policies.randaugment.n: unknown knob; allowed: magnitude, num_ops"),
    (
        "name: x\npolicies: {randaugment: {num_ops: {low: 0, high: 3}}}\n",
        "policies.randaugment.num_ops.low: 0 is out of range; allowed: integer in [1, 5]",
    ),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 9, high: 2}}}\n",
        "policies.randaugment.magnitude: low 9 > high 2; allowed: low <= high",
    ),
    ("name: x\npolicies: {randaugment: {magnitude: {low: 2}}}\n", "policies.randaugment.magnitude: missing 'high'"),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 2, high: 5, stride: 1}}}\n",
        "policies.randaugment.magnitude: unknown key 'stride'; allowed: low, high, step, log",
    ),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 2, high: 5, step: 2}}}\n",
        "policies.randaugment.magnitude: high - low = 3 is not a whole number of steps of 2; allowed: high = low + k",
    ),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 2, high: 5, step: 1.5}}}\n",
        "policies.randaugment.magnitude.step: 1.5 is not allowed; allowed: an integer >= 1 (default 1)",
    ),
    (
        "name: x\npolicies: {random_erasing: {p: {low: 0.1, high: 0.5, step: 0}}}\n",
        "policies.random_erasing.p.step: 0 is not allowed; allowed: a number > 0 (default 0.05)",
    ),
    (
        "name: x\npolicies: {random_erasing: {p: {low: 0.1, high: 0.52}}}\n",
        "policies.random_erasing.p: high - low = 0.42 is not a whole number of steps of 0.05",
    ),
    (
        "name: x\npolicies: {random_erasing: {p: {low: 0.1, high: 0.5, log: true}}}\n",
        "policies.random_erasing.p.log: a log scale cannot keep a step grid; allowed: log only for integer knobs",
    ),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 1, high: 9, step: 2, log: true}}}\n",
        "policies.randaugment.magnitude.log: a log scale cannot keep a step grid",
    ),
    (
        "name: x\npolicies: {augmix: {severity: {low: 1.5, high: 3}}}\n",
        "policies.augmix.severity.low: 1.5 is not an integer; allowed: integer in [1, 10]",
    ),
    (
        "name: x\npolicies: {augmix: {severity: three}}\n",
        "policies.augmix.severity: 'three' is not an integer; allowed: integer in [1, 10]",
    ),
    ("name: x\npolicies: {augmix: {severity: }}\n", "policies.augmix.severity: no value; allowed: "),
    (
        "name: x\npolicies: {autoaugment: {policy: [cifar10, cifar100]}}\n",
        "policies.autoaugment.policy[1]: 'cifar100' is not allowed; allowed: one of cifar10, imagenet, svhn",
    ),
    (
        "name: x\npolicies: {autoaugment: {policy: [svhn, svhn]}}\n",
        "policies.autoaugment.policy[1]: duplicate value 'svhn'; allowed: each value once",
    ),
    ("name: x\npolicies: {autoaugment: {policy: []}}\n", "policies.autoaugment.policy: empty list"),
    (
        "name: x\npolicies: {autoaugment: {policy: {low: a, high: b}}}\n",
        "policies.autoaugment.policy: a range needs a numeric knob",
    ),
    (
        "name: x\npolicies: {randaugment: {magnitude: {low: 0, high: 5, log: true}}}\n",
        "policies.randaugment.magnitude.log: log scale needs low > 0, got 0",
    ),
    (
        "name: x\npolicies: {random_erasing: {p: {low: 0.1, high: 0.5, log: maybe}}}\n",
        "policies.random_erasing.p.log: 'maybe' is not a boolean; allowed: true, false",
    ),
    (
        "name: x\npolicies: {none: {}}\nmixes: {cutmix: {alpha: {low: 0, high: 1}}}\n",
        "mixes.cutmix.alpha.low: 0.0 is out of range; allowed: float in (0.0, 10.0]",
    ),
    ("name: x\npolicies: {none: {}}\nallow_no_mix: sometimes\n", "allow_no_mix: 'sometimes' is not a boolean"),
    ("name: x\npolicies: {none: {}}\nallow_no_mix: false\n", "allow_no_mix: false with no mixes leaves no choice"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_space_raises_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DaqSearchError) as caught:
        load_search_space(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(DaqSearchError, match=r"nowhere\.yaml: no such file; allowed: a search-space YAML file$"):
        load_search_space(tmp_path / "nowhere.yaml")
    with pytest.raises(DaqSearchError, match=r"^\S+: cannot read \("):
        load_search_space(tmp_path)
