"""The benchmark's units of work, each run in a worker process through the package's own pipeline: train a teacher
(``teacher.get_teacher``), train a student under a candidate for a budget (``trial_training.TrialTraining``, the loop a
search trial runs), score every candidate with the teacher (``search.teacher_metrics`` on ``search.scoring_subset``),
and a CPU probe that times one epoch per candidate to estimate the regime's wall time on 2 idle cores."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from daq_search.candidates import parse_candidate
from daq_search.data import DataBundle, load_data, load_student_data
from daq_search.kd import eval_loader, evaluate
from daq_search.metric import score_candidate
from daq_search.search import scoring_subset, teacher_metrics
from daq_search.teacher import get_teacher, teacher_key
from daq_search.trial_training import TrialTraining

from .planted import apply_nuisance
from .regimes import CURVE_BUDGETS, Regime
from .twopass import two_pass_score

JOB_KINDS = ("teacher", "student", "teacher_rules", "cpu_probe")
READ_FIELDS = ("score", "score_ce", "cmi", "align", "sample_ce", "val_acc", "val_loss")
"""The student metrics a run reads (the per-epoch metrics of a search trial)."""


def cpu_seconds() -> float:
    """CPU seconds used by this process so far. Every worker runs one torch thread, so on an idle core this is its
    wall time, and unlike wall time it does not grow when other programs share the machine."""
    return time.process_time()


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` (one of JOB_KINDS) for ``regime``; a student job has a candidate, a seed and a
    budget ``fraction`` of the full epochs."""

    kind: str
    regime: Regime
    candidate: str = ""
    seed: int = 0
    fraction: float = 1.0

    def key(self) -> str:
        """The cache key of this job's result (changes when anything that fixes the result changes); student jobs
        are keyed by their epochs, so budgets that round to the same epochs share one run."""
        budget = f"{self.epochs()}ep" if self.kind == "student" else ""
        return f"{self.regime.name}|{self.regime.key()}|{self.kind}|{self.candidate}|{self.seed}|{budget}"

    def epochs(self) -> int:
        """Training epochs of a student job (its budget)."""
        return self.regime.budget_epochs(self.fraction)

    def records_curve(self) -> bool:
        """Whether this student job reads every metric after every epoch (the first seed's runs at a curve budget)."""
        curve_epochs = {self.regime.budget_epochs(f) for f in CURVE_BUDGETS}
        return self.seed == self.regime.curve_seed() and self.epochs() in curve_epochs

    def reads_student(self) -> bool:
        """Whether this student job reads the student's metrics at its end (the curve seed's runs)."""
        return self.seed == self.regime.curve_seed()


_BUNDLES: dict[tuple[str, str], DataBundle] = {}


def _teacher_bundle(regime: Regime) -> DataBundle:
    """The split the teacher is trained on (``teacher_data``, else the student's), loaded once per process."""
    if regime.teacher_data is None:
        return student_bundle(regime)
    key = (regime.key(), "teacher")
    if key not in _BUNDLES:
        _BUNDLES[key] = load_data(regime.teacher_data.spec())
    return _BUNDLES[key]


def student_bundle(regime: Regime) -> DataBundle:
    """The student's data as a job with the same teacher split loads it (:func:`load_student_data`: with
    ``teacher_data``, that split's normalisation and test set), loaded once per worker process; with ``planted`` its
    validation and test images carry the nuisance."""
    key = (regime.key(), "student")
    if key not in _BUNDLES:
        bundle = load_student_data(regime.data.spec(), (regime.teacher_data or regime.data).spec())
        if regime.planted is not None:
            bundle = dataclasses.replace(
                bundle,
                val=apply_nuisance(bundle.val, regime.planted, seed=1),
                test=apply_nuisance(bundle.test, regime.planted, seed=2),
            )
        _BUNDLES[key] = bundle
    return _BUNDLES[key]


def test_set(regime: Regime):
    """The images every test accuracy of the regime is measured on: the student's test set (the teacher split's when
    the teacher has its own, nuisance included when planted)."""
    return student_bundle(regime).test


def _teacher(regime: Regime, work_dir: Path) -> torch.nn.Module:
    """The regime's teacher from the cache in ``work_dir/teachers`` (trained there the first time, on CPU)."""
    data = regime.teacher_data or regime.data
    model, _ = get_teacher(data, regime.teacher, _teacher_bundle(regime), work_dir / "teachers")
    return model.eval()


def teacher_checkpoint(regime: Regime, work_dir: Path) -> Path:
    """Where the regime's teacher checkpoint is cached."""
    return work_dir / "teachers" / f"teacher-{teacher_key(regime.teacher_data or regime.data, regime.teacher)}.pt"


def run_teacher(job: Job, work_dir: Path, device: str) -> dict:
    """Train the regime's teacher on ``device`` (or load it when its checkpoint is cached: ``cached`` True and
    ``seconds`` None); returns its test and val top-1 (fractions) and the training CPU seconds."""
    regime = job.regime
    bundle = student_bundle(regime)
    cached = teacher_checkpoint(regime, work_dir).is_file()
    start = cpu_seconds()
    data = regime.teacher_data or regime.data
    model, _ = get_teacher(data, regime.teacher, _teacher_bundle(regime), work_dir / "teachers", device=device)
    model = model.cpu().eval()
    seconds = None if cached else cpu_seconds() - start
    test_acc, _ = evaluate(model, eval_loader(test_set(regime), bundle))
    val_acc, _ = evaluate(model, eval_loader(bundle.val, bundle))
    return {"test_top1": test_acc, "val_top1": val_acc, "seconds": seconds, "cached": cached}


def student_training(job: Job, work_dir: Path, device: str, epochs: int, read: bool) -> TrialTraining:
    """The package's ``TrialTraining`` of a student job: its candidate, its seed as the student's and the data's
    seed, the regime's recipe over ``epochs`` epochs (a complete cosine schedule), reading the DA score when
    ``read``."""
    regime = job.regime
    bundle = student_bundle(regime)
    return TrialTraining(
        teacher=_teacher(regime, work_dir),
        bundle=bundle,
        candidate=parse_candidate(job.candidate),
        student=regime.student,
        quant=regime.quant,
        kd=regime.kd,
        recipe=regime.recipe.model_copy(update={"epochs": epochs}),
        scorer=regime.scorer,
        scoring_set=scoring_subset(bundle, regime.scorer.subset, regime.data.seed) if read else None,
        student_seed=job.seed,
        seed=job.seed,
        score_seed=regime.data.seed,
        device=device,
    )


def run_student(job: Job, work_dir: Path, device: str) -> dict:
    """The student trained with KD under the candidate for the job's budget (a complete cosine schedule over its
    epochs). Returns its test top-1 and loss, val top-1, training CPU and wall seconds, images; the curve seed's
    runs also return ``read`` (the metrics after the last epoch) and, at a curve budget, ``curve`` (one row per
    epoch: ``epoch``, the read metrics, ``train_seconds`` and ``read_seconds`` in CPU seconds)."""
    regime = job.regime
    epochs = job.epochs()
    training = student_training(job, work_dir, device, epochs, read=job.reads_student())
    curve, train_seconds, images = [], 0.0, 0
    wall_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        start = cpu_seconds()
        stats = training.train_epoch(epoch)
        seconds = cpu_seconds() - start
        train_seconds += seconds
        images += stats["images"]
        if job.records_curve() or (job.reads_student() and epoch == epochs):
            start = cpu_seconds()
            read = training.read_metrics()
            row = {name: read[name] for name in READ_FIELDS}
            curve.append({"epoch": epoch, **row, "train_seconds": seconds, "read_seconds": cpu_seconds() - start})
    wall = time.perf_counter() - wall_start
    bundle = student_bundle(regime)
    test_acc, test_loss = evaluate(training.student, eval_loader(test_set(regime), bundle), device)
    val_acc, _ = evaluate(training.student, eval_loader(bundle.val, bundle), device)
    result = {
        "epochs": epochs,
        "test_top1": test_acc,
        "test_loss": test_loss,
        "val_top1": val_acc,
        "seconds": train_seconds,
        "wall_seconds": wall,
        "images": images,
    }
    if job.reads_student():
        result["read"] = curve[-1]
    if job.records_curve():
        result["curve"] = curve
    return result


@torch.no_grad()
def _forward_epoch_seconds(model: torch.nn.Module, dataset, bundle: DataBundle, batch_size: int) -> float:
    """CPU seconds of one plain eval-mode forward pass over ``dataset`` (normalisation only): the scoring floor."""
    start = cpu_seconds()
    for images, _ in eval_loader(dataset, bundle, batch_size=batch_size):
        model(images)
    return cpu_seconds() - start


def run_teacher_rules(job: Job, work_dir: Path, device: str, repeats: int = 2) -> dict:
    """Every teacher-scored rule for every candidate, on CPU with one thread: the package's ``teacher_metrics``
    (DA score terms and T-stddev with the shipped batch rule), the one-pass score alone and the two-pass reference
    (same numbers, checked), and the floor (a plain forward epoch over the scoring subset). Times are CPU seconds,
    the minimum over ``repeats`` runs for the one- and two-pass scores."""
    regime = job.regime
    bundle = student_bundle(regime)
    teacher = _teacher(regime, work_dir)
    spec = regime.job_spec()
    dataset = scoring_subset(bundle, regime.scorer.subset, regime.data.seed)
    scorer = regime.scorer
    floor = min(_forward_epoch_seconds(teacher, dataset, bundle, scorer.batch_size) for _ in range(repeats))
    kwargs = {
        "bundle": bundle,
        "lam": scorer.lam,
        "temperature": scorer.temperature,
        "batch_size": scorer.batch_size,
        "seed": regime.data.seed,
    }
    per_candidate = {}
    for candidate_id in regime.candidates:
        candidate = parse_candidate(candidate_id)
        start = cpu_seconds()
        metrics = teacher_metrics(teacher, dataset, candidate, bundle, spec)
        all_seconds = cpu_seconds() - start
        one_pass_seconds, two_pass_seconds = [], []
        for _ in range(repeats):
            start = cpu_seconds()
            score = score_candidate(teacher, dataset, candidate, **kwargs)
            one_pass_seconds.append(cpu_seconds() - start)
            start = cpu_seconds()
            two_pass = two_pass_score(teacher, dataset, candidate, **kwargs)
            two_pass_seconds.append(cpu_seconds() - start)
        per_candidate[candidate_id] = {
            **metrics,
            "one_pass_seconds": min(one_pass_seconds),
            "two_pass_seconds": min(two_pass_seconds),
            "t_stddev_seconds": max(0.0, all_seconds - min(one_pass_seconds)),
            "two_pass_max_abs_diff": max(
                abs(getattr(score, term) - getattr(two_pass, term)) for term in ("cmi", "align", "sample_ce")
            ),
            "one_pass_matches_teacher_metrics": abs(score.score_ce - metrics["teacher_score_ce"]) < 1e-9,
        }
    return {"floor_seconds": floor, "scoring_images": len(dataset), "candidates": per_candidate}


def run_cpu_probe(job: Job, work_dir: Path, device: str) -> dict:
    """One training epoch and one read (DA score + validation) per candidate on CPU with one thread, in CPU
    seconds: the per-epoch costs from which the regime's wall time on 2 idle cores is estimated."""
    per_candidate = {}
    for candidate_id in job.regime.candidates:
        probe = Job("student", job.regime, candidate_id, job.regime.curve_seed(), 1.0)
        training = student_training(probe, work_dir, "cpu", job.regime.recipe.epochs, read=True)
        start = cpu_seconds()
        training.train_epoch(1)
        epoch_seconds = cpu_seconds() - start
        start = cpu_seconds()
        training.read_metrics()
        per_candidate[candidate_id] = {"epoch_seconds": epoch_seconds, "read_seconds": cpu_seconds() - start}
    bundle, teacher_bundle = student_bundle(job.regime), _teacher_bundle(job.regime)
    return {
        "candidates": per_candidate,
        "student_images": len(bundle.train),
        "teacher_images": len(teacher_bundle.train),
    }


RUNNERS = {
    "teacher": run_teacher,
    "student": run_student,
    "teacher_rules": run_teacher_rules,
    "cpu_probe": run_cpu_probe,
}


def device_name(device: str) -> str:
    """``device`` as a result records it: ``cpu``, or ``cuda`` with the card's name."""
    return f"cuda ({torch.cuda.get_device_name()})" if torch.device(device).type == "cuda" else "cpu"


def execute(job: Job, work_dir: str, device: str = "cpu") -> tuple[str, dict]:
    """Run ``job`` in this process (one torch thread; student and teacher training on ``device``) and return (its
    cache key, its result, with the ``device`` it trained on)."""
    torch.set_num_threads(1)
    run_device = device if job.kind in ("teacher", "student") else "cpu"
    return job.key(), {**RUNNERS[job.kind](job, Path(work_dir), run_device), "device": device_name(run_device)}
