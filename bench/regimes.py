"""The training regimes the benchmark measures: data, teacher, student, quantizer, KD loss, full and trial recipes,
seeds and candidates. A regime is a frozen dataclass of the package's own config sections."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from daq_search.config import (
    DataConfig,
    KDConfig,
    QuantConfig,
    RecipeConfig,
    ScorerConfig,
    StudentConfig,
    TeacherConfig,
)

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

SHORT_NAMES = {
    "none": "none",
    "autoaugment(policy=cifar10)": "aa-cifar10",
    "autoaugment(policy=imagenet)": "aa-imagenet",
    "autoaugment(policy=svhn)": "aa-svhn",
    "randaugment(magnitude=9,num_ops=2)": "randaug(2,9)",
    "trivialaugment": "trivialaug",
    "augmix(severity=3)": "augmix",
    "random_erasing(p=0.5)": "rand-erasing",
    "none+cutmix(alpha=1.0)": "cutmix",
    "trivialaugment+cutmix(alpha=1.0)": "ta+cutmix",
}
"""Column-friendly names of the candidates in tables and plots."""


@dataclass(frozen=True)
class Regime:
    """One benchmark regime: everything that fixes a ground-truth run except the candidate and the seed.

    ``recipe`` trains the student to completion (the ground truth); ``trial`` is the short budget after which the
    student-scored rules read the student (its own schedule, as a search trial has). ``teacher_data``, when set, is
    a larger split of the same data set (same seed, so the student's training images are among the teacher's) that
    the teacher is trained on; every test accuracy is then measured on that split's test set, which neither model
    has seen, and both models use its normalisation.
    """

    name: str
    description: str
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    quant: QuantConfig
    kd: KDConfig
    recipe: RecipeConfig
    trial: RecipeConfig
    scorer: ScorerConfig
    seeds: tuple[int, ...]
    candidates: tuple[str, ...]
    teacher_data: DataConfig | None = None

    def key(self) -> str:
        """A short hash of what determines a run's result (candidates and seed list left out)."""
        fields = {
            name: getattr(self, name).model_dump()
            for name in ("data", "teacher", "student", "quant", "kd", "recipe", "trial", "scorer")
        }
        if self.teacher_data is not None:
            fields["teacher_data"] = self.teacher_data.model_dump()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _animals_regime(
    name: str,
    description: str,
    *,
    image_size: int,
    per_class: int,
    epochs: int,
    width: float = 1.0,
    teacher_epochs: int = 120,
    teacher_augment: str = "none",
    teacher_per_class: int | None = None,
    batch_size: int = 64,
    seeds: tuple[int, ...] = (0, 1, 2, 3),
) -> Regime:
    """A from-scratch KD regime on animal-mnist: ResNet-8 teacher (trained on the same images under
    ``teacher_augment``),
    ResNet-8 student of ``width`` with LSQ W2A2 (8-bit first and last layer), CE + 2 T^2 KL at T = 4, Adam 2e-3,
    cosine; the trial budget is 10 % of the full epochs. ``teacher_per_class`` trains the teacher on that many
    images per class instead of the student's."""
    teacher_data = None
    if teacher_per_class is not None:
        teacher_data = DataConfig(
            name="animals", image_size=image_size, train_per_class=teacher_per_class, val_per_class=10, seed=0
        )
    return Regime(
        name=name,
        description=description,
        data=DataConfig(name="animals", image_size=image_size, train_per_class=per_class, val_per_class=10, seed=0),
        teacher=TeacherConfig(
            model="resnet8",
            width=1.0,
            augment=teacher_augment,
            recipe=RecipeConfig(epochs=teacher_epochs, batch_size=64, lr=2e-3),
        ),
        student=StudentConfig(model="resnet8", width=width, init="scratch"),
        quant=QuantConfig(method="lsq", wbits=2, abits=2, first_last_bits=8),
        kd=KDConfig(gamma=1.0, alpha=2.0, temperature=4.0),
        recipe=RecipeConfig(epochs=epochs, batch_size=batch_size, lr=2e-3),
        trial=RecipeConfig(epochs=max(1, epochs // 10), batch_size=batch_size, lr=2e-3),
        scorer=ScorerConfig(subset=512, batch_size=256),
        seeds=seeds,
        candidates=PAPER_CANDIDATES,
        teacher_data=teacher_data,
    )


FULL_REGIMES = (
    _animals_regime(
        "animals16-50pc-80ep",
        "animals 16x16, 50 images/class, student from scratch, 80 epochs (the prototype's passing regime)",
        image_size=16,
        per_class=50,
        epochs=80,
    ),
    _animals_regime(
        "animals16-20pc-80ep-bigteacher",
        "animals 16x16, student on 20 images/class from scratch, 80 epochs (batch 50), teacher trained on 300 "
        "images/class (a superset; 40 epochs): the student can only learn what the teacher knows beyond its 200 "
        "images through the views augmentation shows it",
        image_size=16,
        per_class=20,
        epochs=80,
        teacher_epochs=40,
        teacher_per_class=300,
        batch_size=50,
    ),
)


def quick_regimes() -> tuple[Regime, ...]:
    """A CI-sized regime: 3 candidates, 2 seeds, tiny CNNs, a few epochs on the bundled digits (not a claim)."""
    return (
        Regime(
            name="quick-digits",
            description="digits 16x16, 30 images/class (teacher: 60), tiny CNN, 3 epochs (smoke test only)",
            data=DataConfig(name="digits", image_size=16, train_per_class=30, val_per_class=5, seed=0),
            teacher=TeacherConfig(model="tiny_cnn", width=0.5, recipe=RecipeConfig(epochs=8, batch_size=32, lr=5e-3)),
            student=StudentConfig(model="tiny_cnn", width=0.5, init="scratch"),
            quant=QuantConfig(method="lsq", wbits=2, abits=2, first_last_bits=8),
            kd=KDConfig(),
            recipe=RecipeConfig(epochs=3, batch_size=32, lr=5e-3),
            trial=RecipeConfig(epochs=1, batch_size=32, lr=5e-3),
            scorer=ScorerConfig(subset=40, batch_size=20, t_stddev_group=2, t_stddev_epochs=2),
            seeds=(0, 1),
            candidates=("none", "trivialaugment", "none+cutmix(alpha=1.0)"),
            teacher_data=DataConfig(name="digits", image_size=16, train_per_class=60, val_per_class=5, seed=0),
        ),
    )
