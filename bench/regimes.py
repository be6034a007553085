"""The training regimes the benchmark measures: data, teacher, student, quantizer, KD loss, full recipe, budgets,
seeds and candidates. A regime is a frozen dataclass of the package's own config sections; regimes are built by
name (:func:`build_regime`), so one whose data set this checkout lacks is refused with a clear message."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from daq_search.config import (
    DataConfig,
    JobSpec,
    KDConfig,
    QuantConfig,
    RecipeConfig,
    ScorerConfig,
    StudentConfig,
    TeacherConfig,
)
from daq_search.data import DATASETS

from .planted import Nuisance

PAPER_CANDIDATES = (
    "none",
    "autoaugment(policy=cifar10)",
    "autoaugment(policy=imagenet)",
    "autoaugment(policy=svhn)",
    "randaugment(magnitude=9,num_ops=2)",
    "trivialaugment",
    "augmix(severity=3)",
    "random_erasing(p=0.5)",
    "none+cutmix(alpha=1.0)",
    "trivialaugment+cutmix(alpha=1.0)",
)
"""The 10 candidates of the prototype (shared/research/findings.md)."""

WIDE_CANDIDATES = (
    "none",
    "randaugment(magnitude=5,num_ops=2)",
    "randaugment(magnitude=9,num_ops=2)",
    "randaugment(magnitude=14,num_ops=2)",
    "trivialaugment",
    "none+mixup(alpha=0.2)",
    "none+cutmix(alpha=1.0)",
)
"""Natural-image candidates: RandAugment at three magnitudes, TrivialAugment, and the two mixes."""

FAMILY_CANDIDATES = (
    "none",
    "none+mixup(alpha=0.2)",
    "none+cutmix(alpha=1.0)",
    "randaugment(magnitude=9,num_ops=2)",
)
"""One candidate per family (no augmentation, a weak mix, a strong mix, a policy), fixed from the 7-candidate
patient pilot before its confirmatory seeds were run: the pilot's other candidates sat within 0.3 pp of these."""

PLANTED_CANDIDATES = (
    "none",
    "randaugment(magnitude=9,num_ops=2)",
    "randaugment(magnitude=15,num_ops=2)",
    "trivialaugment",
    "random_erasing(p=0.5)",
    "none+cutmix(alpha=1.0)",
)
"""Candidates of the planted control: geometric policies that cover a rotation, and ones that do not."""

PLANTED_AFFINE_CANDIDATES = (
    "none",
    "random_affine(degrees=10,scale=0.0,translate=0.0)",
    "random_affine(degrees=20,scale=0.0,translate=0.0)",
    "random_affine(degrees=30,scale=0.0,translate=0.0)",
    "randaugment(magnitude=9,num_ops=2)",
    "none+cutmix(alpha=1.0)",
)
"""Candidates of the planted control with a pure rotation ladder: rotations of up to 10, 20 and 30 degrees (the
nuisance's range), beside `none` and two candidates that do not cover it (RandAugment rotates in 1 of its 14 ops,
by at most 9 degrees at magnitude 9)."""

LADDER_CANDIDATES = (
    "none",
    "random_erasing(p=0.5)",
    "none+mixup(alpha=0.2)",
    "random_affine(degrees=15,scale=0.1,translate=0.1)",
    "randaugment(magnitude=9,num_ops=2)",
    "randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)",
    "trivialaugment+cutmix(alpha=1.0)",
    "randaugment(magnitude=20,num_ops=4)",
)
"""A ladder from no augmentation to deliberately over-strong ones, fixed before any of its seeds ran: the patient
pilot's candidates sat within 0.6 pp of each other, too close for four seeds to rank them (the gate needs spread);
here mild (erasing, MixUp, a small affine), the pilot's best (RandAugment(2, 9)), that with CutMix (function
matching's mixing of every view), TrivialAugment with CutMix, and RandAugment at 4 ops of magnitude 20."""

BUDGETS = (0.1, 0.25, 0.5)
"""Fractions of the full epochs at which the student-scored rules read a student trained with its own schedule."""

CURVE_BUDGETS = (0.25, 1.0)
"""Budgets whose first-seed runs read every metric after every epoch (the curves the schedulers are replayed on)."""

SEEDS_ENV = "DAQ_BENCH_SEEDS"
"""Environment variable with a comma-separated seed list that replaces every regime's seeds (e.g. ``5,6``)."""


@dataclass(frozen=True)
class Regime:
    """One benchmark regime: everything that fixes a ground-truth run except the candidate and the seed.

    ``recipe`` trains the student to completion (the ground truth); ``teacher_data``, when set, is a larger split of
    the same data set (same seed, so the student's training images are among the teacher's) that the teacher is
    trained on; every test accuracy is then measured on that split's test set, which neither model has seen, and
    both models use its normalisation. ``planted``, when set, is a nuisance applied to the validation and test
    images only (the planted control).
    """

    name: str
    description: str
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    quant: QuantConfig
    kd: KDConfig
    recipe: RecipeConfig
    scorer: ScorerConfig
    seeds: tuple[int, ...]
    candidates: tuple[str, ...]
    teacher_data: DataConfig | None = None
    planted: Nuisance | None = None

    def key(self) -> str:
        """A short hash of what determines a run's result (candidates and seed list left out)."""
        fields = {
            name: getattr(self, name).model_dump()
            for name in ("data", "teacher", "student", "quant", "kd", "recipe", "scorer")
        }
        del fields["teacher"]["train_per_class"]  # a regime's teacher split is teacher_data
        if self.teacher_data is not None:
            fields["teacher_data"] = self.teacher_data.model_dump()
        if self.planted is not None:
            fields["planted"] = self.planted.describe()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def budget_epochs(self, fraction: float) -> int:
        """Epochs of a run at ``fraction`` of the full recipe (at least 1)."""
        return max(1, round(fraction * self.recipe.epochs))

    def curve_seed(self) -> int:
        """The seed whose runs record per-epoch curves and feed the student-scored rules (the first seed)."""
        return self.seeds[0]

    def job_spec(self) -> JobSpec:
        """The regime as a package job (what ``teacher_metrics`` and a search would read): its data, teacher,
        student, quantizer, KD loss and scorer, with the full recipe as the trial recipe."""
        return JobSpec(
            name=self.name,
            data=self.data,
            teacher=self.teacher,
            student=self.student,
            quant=self.quant,
            kd=self.kd,
            scorer=self.scorer,
            trial=self.recipe,
        )


def _kd_regime(
    name: str,
    description: str,
    *,
    data: str,
    image_size: int,
    per_class: int,
    epochs: int,
    candidates: tuple[str, ...],
    init: str = "scratch",
    teacher_epochs: int = 120,
    teacher_per_class: int | None = None,
    batch_size: int = 64,
    planted: Nuisance | None = None,
) -> Regime:
    """A KD regime: ResNet-8 full-precision teacher (no augmentation; on ``teacher_per_class`` images per class when
    given, else on the student's), ResNet-8 student (``init`` scratch or teacher) with LSQ W2A2 (8-bit first and
    last layer), CE + 2 T^2 KL at T = 4, Adam 2e-3, cosine, 4 seeds."""
    teacher_data = None
    if teacher_per_class is not None:
        teacher_data = DataConfig(
            name=data, image_size=image_size, train_per_class=teacher_per_class, val_per_class=10, seed=0
        )
    return Regime(
        name=name,
        description=description,
        data=DataConfig(name=data, image_size=image_size, train_per_class=per_class, val_per_class=10, seed=0),
        teacher=TeacherConfig(
            model="resnet8", width=1.0, recipe=RecipeConfig(epochs=teacher_epochs, batch_size=64, lr=2e-3)
        ),
        student=StudentConfig(model="resnet8", width=1.0, init=init),
        quant=QuantConfig(method="lsq", wbits=2, abits=2, first_last_bits=8),
        kd=KDConfig(gamma=1.0, alpha=2.0, temperature=4.0),
        recipe=RecipeConfig(epochs=epochs, batch_size=batch_size, lr=2e-3),
        scorer=ScorerConfig(subset=500, batch_size=250),
        seeds=(0, 1, 2, 3),
        candidates=candidates,
        teacher_data=teacher_data,
        planted=planted,
    )


def _animals_a() -> Regime:
    return _kd_regime(
        "animals16-50pc-80ep",
        "A: animals 16x16, 50 images/class, student from scratch, 80 epochs, teacher 120 epochs on the same "
        "images (the prototype's passing regime, where the mildest candidate wins)",
        data="animals",
        image_size=16,
        per_class=50,
        epochs=80,
        candidates=PAPER_CANDIDATES,
    )


def _scenes_init_teacher() -> Regime:
    return _kd_regime(
        "scenes32-100pc-init-teacher-60ep",
        "natural nuisances: scenes 32x32 (silhouettes on photo textures), student on 100 images/class initialised "
        "from a teacher trained on 600 images/class (the paper's protocol; teacher queried online on the same "
        "augmented view), 60 epochs",
        data="scenes",
        image_size=32,
        per_class=100,
        epochs=60,
        candidates=WIDE_CANDIDATES,
        init="teacher",
        teacher_epochs=40,
        teacher_per_class=600,
    )


def _patient_regime(name: str, description: str, *, per_class: int, epochs: int, candidates: tuple[str, ...]) -> Regime:
    """Patient function matching on scenes 32x32: a student on ``per_class`` images/class initialised from a teacher
    trained for 40 epochs on 600 images/class, batch 50, ``epochs`` epochs."""
    return _kd_regime(
        name,
        description,
        data="scenes",
        image_size=32,
        per_class=per_class,
        epochs=epochs,
        candidates=candidates,
        init="teacher",
        teacher_epochs=40,
        teacher_per_class=600,
        batch_size=50,
    )


def _scenes_patient() -> Regime:
    return _patient_regime(
        "scenes32-30pc-init-teacher-160ep",
        "patient function matching: scenes 32x32, student on 30 images/class initialised from a teacher trained on "
        "600 images/class, 160 epochs (batch 50): the student can only learn what the teacher knows beyond its 300 "
        "images through the views augmentation shows it",
        per_class=30,
        epochs=160,
        candidates=WIDE_CANDIDATES,
    )


def _scenes_patient_families() -> Regime:
    return replace(
        _scenes_patient(),
        name="scenes32-30pc-families-160ep",
        description="confirmation of the patient regime (scenes 32x32, 30 images/class, student initialised from a "
        "teacher trained on 600 images/class, 160 epochs) on 4 fresh seeds (4-7), with one candidate per family "
        "fixed from its 7-candidate pilot (seeds 0-3): none, MixUp 0.2, CutMix 1.0, RandAugment(2, 9)",
        seeds=(4, 5, 6, 7),
        candidates=FAMILY_CANDIDATES,
    )


def _animals_planted() -> Regime:
    return _kd_regime(
        "animals16-planted-rotation-40ep",
        "planted control: animals 16x16, 50 images/class, from scratch, 40 epochs; validation and test images are "
        "rotated by up to +-30 degrees and shifted by up to 2 px (training images are upright and centred), so a "
        "candidate that rotates its training views must win",
        data="animals",
        image_size=16,
        per_class=50,
        epochs=40,
        candidates=PLANTED_CANDIDATES,
        planted=Nuisance(max_degrees=30.0, max_shift=2),
    )


def _animals_planted_affine() -> Regime:
    return replace(
        _animals_planted(),
        name="animals16-planted-affine-40ep",
        description="planted control with a rotation ladder: the rotation planted control (validation and test "
        "images rotated by up to +-30 degrees and shifted by up to 2 px) with pure random rotations of up to 10, 20 "
        "and 30 degrees among the candidates",
        candidates=PLANTED_AFFINE_CANDIDATES,
    )


def _scenes_ladder(per_class: int) -> Regime:
    return replace(
        _patient_regime(
            f"scenes32-{per_class}pc-ladder-320ep",
            f"longer patient function matching with a candidate ladder: scenes 32x32, student on {per_class} "
            "images/class initialised from a teacher trained on 600 images/class, 320 epochs (batch 50), fresh "
            "seeds 8-11, candidates from none to over-strong",
            per_class=per_class,
            epochs=320,
            candidates=LADDER_CANDIDATES,
        ),
        seeds=(8, 9, 10, 11),
    )


def _quick_digits() -> Regime:
    return Regime(
        name="quick-digits",
        description="digits 16x16, 30 images/class (teacher: 60), tiny CNN, 4 epochs (smoke test only)",
        data=DataConfig(name="digits", image_size=16, train_per_class=30, val_per_class=5, seed=0),
        teacher=TeacherConfig(model="tiny_cnn", width=0.5, recipe=RecipeConfig(epochs=8, batch_size=32, lr=5e-3)),
        student=StudentConfig(model="tiny_cnn", width=0.5, init="scratch"),
        quant=QuantConfig(method="lsq", wbits=2, abits=2, first_last_bits=8),
        kd=KDConfig(),
        recipe=RecipeConfig(epochs=4, batch_size=32, lr=5e-3),
        scorer=ScorerConfig(subset=40, batch_size=20, t_stddev_group=2, t_stddev_epochs=2),
        seeds=(0, 1),
        candidates=("none", "trivialaugment", "none+cutmix(alpha=1.0)"),
        teacher_data=DataConfig(name="digits", image_size=16, train_per_class=60, val_per_class=5, seed=0),
    )


REGIMES: dict[str, tuple[str, Callable[[], Regime]]] = {
    "animals16-50pc-80ep": ("animals", _animals_a),
    "scenes32-100pc-init-teacher-60ep": ("scenes", _scenes_init_teacher),
    "animals16-planted-rotation-40ep": ("animals", _animals_planted),
    "scenes32-30pc-init-teacher-160ep": ("scenes", _scenes_patient),
    "scenes32-30pc-families-160ep": ("scenes", _scenes_patient_families),
    "animals16-planted-affine-40ep": ("animals", _animals_planted_affine),
    "scenes32-30pc-ladder-320ep": ("scenes", lambda: _scenes_ladder(30)),
    "scenes32-10pc-ladder-320ep": ("scenes", lambda: _scenes_ladder(10)),
    "quick-digits": ("digits", _quick_digits),
}
"""Every regime by name: (the data set it needs, its builder)."""

FULL_REGIMES = tuple(name for name in REGIMES if not name.startswith("quick"))
QUICK_REGIMES = ("quick-digits",)


def parse_seeds(text: str) -> tuple[int, ...]:
    """A comma-separated seed list (``"5,6"``) as a tuple of distinct integers; ValueError otherwise."""
    seeds = tuple(int(part) for part in text.split(",") if part.strip())
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {text!r}; allowed: distinct integers separated by commas, e.g. 0,1")
    return seeds


def build_regime(name: str, seeds: tuple[int, ...] | None = None) -> Regime:
    """The regime called ``name``, with ``seeds`` (else ``$DAQ_BENCH_SEEDS``, else its own) as its seed list.
    ValueError for an unknown name or a data set this checkout does not provide."""
    if name not in REGIMES:
        raise ValueError(f"regime {name!r} is unknown; allowed: {', '.join(REGIMES)}")
    data_set, builder = REGIMES[name]
    if data_set not in DATASETS:
        raise ValueError(f"regime {name!r} needs data set {data_set!r}, which this checkout of daq_search lacks")
    regime = builder()
    if seeds is None and os.environ.get(SEEDS_ENV):
        seeds = parse_seeds(os.environ[SEEDS_ENV])
    if seeds is not None:
        regime = Regime(**{**regime.__dict__, "seeds": seeds})
    return regime


SHORT_NAMES = {
    "none": "none",
    "autoaugment(policy=cifar10)": "aa-cifar10",
    "autoaugment(policy=imagenet)": "aa-imagenet",
    "autoaugment(policy=svhn)": "aa-svhn",
    "randaugment(magnitude=5,num_ops=2)": "ra(2,5)",
    "randaugment(magnitude=9,num_ops=2)": "ra(2,9)",
    "randaugment(magnitude=14,num_ops=2)": "ra(2,14)",
    "randaugment(magnitude=15,num_ops=2)": "ra(2,15)",
    "trivialaugment": "trivialaug",
    "augmix(severity=3)": "augmix",
    "random_erasing(p=0.5)": "rand-erasing",
    "none+cutmix(alpha=1.0)": "cutmix",
    "none+mixup(alpha=0.2)": "mixup",
    "trivialaugment+cutmix(alpha=1.0)": "ta+cutmix",
    "randaugment(magnitude=9,num_ops=2)+mixup(alpha=0.2)": "ra(2,9)+mixup",
    "randaugment(magnitude=9,num_ops=2)+cutmix(alpha=1.0)": "ra(2,9)+cutmix",
    "randaugment(magnitude=20,num_ops=4)": "ra(4,20)",
    "random_affine(degrees=10,scale=0.0,translate=0.0)": "rot10",
    "random_affine(degrees=20,scale=0.0,translate=0.0)": "rot20",
    "random_affine(degrees=30,scale=0.0,translate=0.0)": "rot30",
    "random_affine(degrees=15,scale=0.1,translate=0.1)": "affine15",
}
"""Column-friendly names of the candidates in tables and plots."""
