"""The benchmark's units of work, each run in a worker process: train a teacher, train a student to completion
(ground truth), train a student for the trial budget and read the student-scored rules, and score every candidate
with the teacher (the zero-training rules and their costs)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from daq_search.augment import build_batch_mix, parse_candidate
from daq_search.data import DataBundle, load_data, stratified_indices
from daq_search.kd import (
    build_student,
    eval_loader,
    evaluate,
    get_teacher,
    make_optimizer,
    make_scheduler,
    run_epoch,
    teacher_key,
    train_loader,
)
from daq_search.metric import score_candidate, teacher_t_stddev

from .regimes import Regime
from .twopass import two_pass_score

JOB_KINDS = ("teacher", "full", "trial", "teacher_rules")


def cpu_seconds() -> float:
    """CPU seconds used by this process so far. Every worker runs one torch thread, so on an idle core this is its
    wall time, and unlike wall time it does not grow when other programs share the machine; all costs use it."""
    return time.process_time()


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` (one of JOB_KINDS) for ``regime``, a candidate id and a seed where they apply."""

    kind: str
    regime: Regime
    candidate: str = ""
    seed: int = 0

    def key(self) -> str:
        """The cache key of this job's result (changes when anything that fixes the result changes)."""
        return f"{self.regime.name}|{self.regime.key()}|{self.kind}|{self.candidate}|{self.seed}"


_BUNDLES: dict[tuple[str, str], DataBundle] = {}


def _teacher_bundle(regime: Regime) -> DataBundle:
    """The split the teacher is trained on (``teacher_data``, else the student's), loaded once per process."""
    if regime.teacher_data is None:
        return _bundle(regime)
    key = (regime.name, "teacher")
    if key not in _BUNDLES:
        _BUNDLES[key] = load_data(regime.teacher_data.spec())
    return _BUNDLES[key]


def _bundle(regime: Regime) -> DataBundle:
    """The student's data, loaded once per worker process; with ``teacher_data`` its normalisation is the
    teacher's split's, so both models see identical inputs."""
    key = (regime.name, "student")
    if key not in _BUNDLES:
        bundle = load_data(regime.data.spec())
        if regime.teacher_data is not None:
            teacher_bundle = _teacher_bundle(regime)
            bundle = dataclasses.replace(bundle, mean=teacher_bundle.mean, std=teacher_bundle.std)
        _BUNDLES[key] = bundle
    return _BUNDLES[key]


def test_set(regime: Regime):
    """The images every test accuracy of the regime is measured on: the teacher split's test set (it holds no
    image either model trained on; with no ``teacher_data`` it is the student's own test set)."""
    return _teacher_bundle(regime).test


def _teacher(regime: Regime, work_dir: Path, log=lambda message: None) -> torch.nn.Module:
    """The regime's teacher from the cache in ``work_dir/teachers`` (trained there the first time)."""
    data = regime.teacher_data or regime.data
    model, _ = get_teacher(data, regime.teacher, _teacher_bundle(regime), work_dir / "teachers", log=log)
    return model.eval()


def teacher_checkpoint(regime: Regime, work_dir: Path) -> Path:
    """Where the regime's teacher checkpoint is cached."""
    return work_dir / "teachers" / f"teacher-{teacher_key(regime.teacher_data or regime.data, regime.teacher)}.pt"


def scoring_set(regime: Regime, bundle: DataBundle) -> Subset:
    """The seeded stratified subset of the training split that every rule scores: ``scorer.subset`` images spread
    evenly over the classes (all of a class when it has fewer)."""
    counts = torch.bincount(bundle.train.labels, minlength=bundle.num_classes)
    per_class = min(regime.scorer.subset // bundle.num_classes, int(counts.min()))
    picks = stratified_indices(bundle.train.labels, per_class, seed=regime.data.seed)
    return Subset(bundle.train, picks.tolist())


def _train_student(regime: Regime, candidate_id: str, seed: int, epochs: int, work_dir: Path):
    """A quantized student trained with KD under the candidate for ``epochs`` (cosine over those epochs); returns
    it, the images seen, training CPU seconds and wall seconds."""
    bundle = _bundle(regime)
    teacher = _teacher(regime, work_dir)
    candidate = parse_candidate(candidate_id)
    recipe = regime.recipe.model_copy(update={"epochs": epochs})
    student = build_student(regime.student, regime.quant, bundle, teacher, seed=seed)
    loader = train_loader(bundle.train, candidate, bundle, recipe.batch_size, seed)
    optimizer = make_optimizer(student.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loader))
    mix = build_batch_mix(candidate, bundle.num_classes)
    images = 0
    start, wall_start = cpu_seconds(), time.perf_counter()
    for _ in range(epochs):
        stats = run_epoch(student, loader, optimizer, mix=mix, teacher=teacher, kd=regime.kd, scheduler=scheduler)
        images += stats.images
    return student, images, cpu_seconds() - start, time.perf_counter() - wall_start


def run_teacher(job: Job, work_dir: Path) -> dict:
    """Train the regime's teacher, or load it when its checkpoint is already cached (``cached``: True, and then
    ``seconds`` is None); returns its test and val top-1 and the training CPU seconds."""
    regime = job.regime
    bundle = _bundle(regime)
    cached = teacher_checkpoint(regime, work_dir).is_file()
    start = cpu_seconds()
    teacher = _teacher(regime, work_dir)
    seconds = None if cached else cpu_seconds() - start
    test_acc, _ = evaluate(teacher, eval_loader(test_set(regime), bundle))
    val_acc, _ = evaluate(teacher, eval_loader(bundle.val, bundle))
    return {"test_top1": test_acc, "val_top1": val_acc, "seconds": seconds, "cached": cached}


def run_full(job: Job, work_dir: Path) -> dict:
    """Ground truth: the student trained to completion under the candidate; its test top-1 (fraction), training
    CPU seconds and wall seconds."""
    regime = job.regime
    student, images, seconds, wall = _train_student(regime, job.candidate, job.seed, regime.recipe.epochs, work_dir)
    bundle = _bundle(regime)
    test_acc, test_loss = evaluate(student, eval_loader(test_set(regime), bundle))
    val_acc, _ = evaluate(student, eval_loader(bundle.val, bundle))
    return {
        "test_top1": test_acc,
        "test_loss": test_loss,
        "val_top1": val_acc,
        "seconds": seconds,
        "wall_seconds": wall,
        "images": images,
    }


def run_trial(job: Job, work_dir: Path) -> dict:
    """The trial budget: a short KD training, then the student's DA score on the scoring set and its val accuracy."""
    regime = job.regime
    student, images, train_seconds, train_wall = _train_student(
        regime, job.candidate, job.seed, regime.trial.epochs, work_dir
    )
    bundle = _bundle(regime)
    start = cpu_seconds()
    score = score_candidate(
        student,
        scoring_set(regime, bundle),
        parse_candidate(job.candidate),
        bundle=bundle,
        lam=regime.scorer.lam,
        temperature=regime.scorer.temperature,
        batch_size=regime.scorer.batch_size,
        seed=job.seed,
    )
    score_seconds = cpu_seconds() - start
    start = cpu_seconds()
    val_acc, val_loss = evaluate(student, eval_loader(bundle.val, bundle))
    val_seconds = cpu_seconds() - start
    return {
        "score": score.score,
        "score_ce": score.score_ce,
        "cmi": score.cmi,
        "align": score.align,
        "sample_ce": score.sample_ce,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "train_seconds": train_seconds,
        "train_wall_seconds": train_wall,
        "score_seconds": score_seconds,
        "val_seconds": val_seconds,
        "images": images,
    }


T_STDDEV_MIN_GROUPS = 8


def t_stddev_batch_size(images: int, group_size: int, epochs: int) -> int:
    """The T-stddev batch size: 128 as in the baseline, smaller when the scoring set would give fewer than
    T_STDDEV_MIN_GROUPS groups of ``group_size`` batches over ``epochs`` passes (at least 2 images a batch)."""
    return max(2, min(128, images * epochs // (group_size * T_STDDEV_MIN_GROUPS)))


@torch.no_grad()
def _forward_epoch_seconds(model: torch.nn.Module, dataset, bundle: DataBundle, batch_size: int) -> float:
    """CPU seconds of one plain eval-mode forward pass over ``dataset`` (normalisation only): the scoring floor."""
    start = cpu_seconds()
    for images, _ in eval_loader(dataset, bundle, batch_size=batch_size):
        model(images)
    return cpu_seconds() - start


def run_teacher_rules(job: Job, work_dir: Path, repeats: int = 3) -> dict:
    """Every teacher-scored rule for every candidate, timed: the one-pass DA score, the two-pass DA score (same
    numbers, checked), T-stddev, and the floor (a plain forward epoch over the scoring set). Times are the minimum
    over ``repeats`` runs, in seconds."""
    regime = job.regime
    bundle = _bundle(regime)
    teacher = _teacher(regime, work_dir)
    dataset = scoring_set(regime, bundle)
    scorer = regime.scorer
    floor = min(_forward_epoch_seconds(teacher, dataset, bundle, scorer.batch_size) for _ in range(repeats))
    per_candidate = {}
    for candidate_id in regime.candidates:
        candidate = parse_candidate(candidate_id)
        kwargs = {
            "bundle": bundle,
            "lam": scorer.lam,
            "temperature": scorer.temperature,
            "batch_size": scorer.batch_size,
        }
        one_pass_seconds, two_pass_seconds = [], []
        for _ in range(repeats):
            start = cpu_seconds()
            score = score_candidate(teacher, dataset, candidate, **kwargs)
            one_pass_seconds.append(cpu_seconds() - start)
            start = cpu_seconds()
            two_pass = two_pass_score(teacher, dataset, candidate, **kwargs)
            two_pass_seconds.append(cpu_seconds() - start)
        start = cpu_seconds()
        t_std = teacher_t_stddev(
            teacher,
            dataset,
            candidate,
            bundle=bundle,
            batch_size=t_stddev_batch_size(len(dataset), scorer.t_stddev_group, scorer.t_stddev_epochs),
            group_size=scorer.t_stddev_group,
            epochs=scorer.t_stddev_epochs,
        )
        t_std_seconds = cpu_seconds() - start
        per_candidate[candidate_id] = {
            "score": score.score,
            "score_ce": score.score_ce,
            "cmi": score.cmi,
            "align": score.align,
            "sample_ce": score.sample_ce,
            "t_stddev": t_std,
            "one_pass_seconds": min(one_pass_seconds),
            "two_pass_seconds": min(two_pass_seconds),
            "t_stddev_seconds": t_std_seconds,
            "two_pass_max_abs_diff": max(
                abs(getattr(score, term) - getattr(two_pass, term)) for term in ("cmi", "align", "sample_ce")
            ),
        }
    return {"floor_seconds": floor, "scoring_images": len(dataset), "candidates": per_candidate}


RUNNERS = {"teacher": run_teacher, "full": run_full, "trial": run_trial, "teacher_rules": run_teacher_rules}


def execute(job: Job, work_dir: str) -> tuple[str, dict]:
    """Run ``job`` in this process (one torch thread) and return (its cache key, its result)."""
    torch.set_num_threads(1)
    return job.key(), RUNNERS[job.kind](job, Path(work_dir))
