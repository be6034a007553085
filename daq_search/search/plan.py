"""Validating a search before any Ray work (:func:`plan_search`), and the pieces trials and ``daq-search score``
share: the scoring subset, the T-stddev batch rule, a candidate's teacher-only metrics, the results table's knob
columns, and the job file a search keeps so that a resume can check it is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..candidates import MIXES, POLICIES, Candidate
from ..config import JobSpec, ScorerConfig, job_to_yaml, load_job
from ..data import DataBundle, stratified_indices
from ..errors import DaqSearchError
from ..files import atomic_write_text, check_run_name, check_writable_folder, clip, read_yaml
from ..metric import score_candidate, teacher_t_stddev
from ..spaces import SearchSpace

JOB_FILE = "job.yaml"
MIN_T_STDDEV_GROUPS = 10


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: the job, its space, the loaded data and where its results go."""

    job: JobSpec
    space: SearchSpace
    bundle: DataBundle
    storage: Path
    name: str

    @property
    def run_dir(self) -> Path:
        """``<storage>/<name>``: Tune's experiment folder and the home of the results tables and winner file."""
        return self.storage / self.name


def _storage_path(storage: str) -> Path:
    """``storage`` as an absolute local path, checked writable by trying (nothing is left behind); URIs, a file,
    a path under a file and a read-only folder are refused (the tables and teacher cache need a file system)."""
    if "://" in storage:
        raise DaqSearchError(
            f"storage: {clip(storage)} is a URI; allowed: a local or shared (NFS) folder path, "
            "which the results tables and the teacher cache are written to"
        )
    return check_writable_folder(storage, "storage")


def plan_search(job_path: str | Path, *, storage: str | None = None, name: str | None = None) -> SearchPlan:
    """Validate a search before any Ray work: the job file, its search space and points to evaluate (by
    :func:`load_job`), the data (loaded once here, so a missing folder fails now) and the scoring subset.
    ``storage`` and ``name`` override the job's."""
    job = load_job(job_path)
    if name is not None:
        job = job.model_copy(update={"name": check_run_name(name, "--name")})
    storage_path = _storage_path(storage or job.storage)
    space = job.load_search_space()
    bundle = job.load_data()
    scoring_subset(bundle, job.scorer.subset, job.data.seed)
    return SearchPlan(job, space, bundle, storage_path, job.name)


def scoring_subset(bundle: DataBundle, size: int, seed: int):
    """The scoring images: ``size // num_classes`` training images per class (at most the smallest class's count),
    drawn by a seeded stratified shuffle, so every trial and ``daq-search score`` score the same images."""
    counts = torch.bincount(bundle.train.labels, minlength=bundle.num_classes)
    per_class = min(max(1, size // bundle.num_classes), int(counts.min()))
    if per_class < 1:
        raise DaqSearchError("data: a class has no training image; the scoring subset needs every class")
    return bundle.train.subset(stratified_indices(bundle.train.labels, per_class, seed))


def t_stddev_batch_size(n: int, scorer: ScorerConfig) -> int:
    """Batch size for T-stddev over ``n`` scoring images: at most ``scorer.batch_size``, small enough for at least
    :data:`MIN_T_STDDEV_GROUPS` groups of ``scorer.t_stddev_group`` batches over ``scorer.t_stddev_epochs`` passes."""
    target = (n * scorer.t_stddev_epochs) // (MIN_T_STDDEV_GROUPS * scorer.t_stddev_group)
    return max(1, min(scorer.batch_size, target))


def teacher_metrics(
    teacher: torch.nn.Module, subset, candidate: Candidate, bundle: DataBundle, job: JobSpec, device: Any = "cpu"
) -> dict[str, float]:
    """The candidate's teacher-only metrics (no training): the DA score terms of the teacher's outputs on the
    augmented scoring subset (``teacher_score``, ``teacher_score_ce``, ``teacher_cmi``, ``teacher_align``,
    ``teacher_sample_ce``, nats) and Wang et al.'s ``t_stddev``."""
    scorer = job.scorer
    da = score_candidate(
        teacher,
        subset,
        candidate,
        bundle=bundle,
        lam=scorer.lam,
        temperature=scorer.temperature,
        batch_size=scorer.batch_size,
        seed=job.data.seed,
        device=device,
    )
    spread = teacher_t_stddev(
        teacher,
        subset,
        candidate,
        bundle=bundle,
        batch_size=t_stddev_batch_size(len(subset), scorer),
        group_size=scorer.t_stddev_group,
        epochs=scorer.t_stddev_epochs,
        seed=job.data.seed,
        device=device,
    )
    return {
        "teacher_score": da.score,
        "teacher_score_ce": da.score_ce,
        "teacher_cmi": da.cmi,
        "teacher_align": da.align,
        "teacher_sample_ce": da.sample_ce,
        "t_stddev": spread,
    }


@contextmanager
def torch_threads(count: float) -> Iterator[None]:
    """Run the body with ``count`` (at least 1) torch CPU threads, then restore the previous number.

    The driver's own work (teacher training, teacher-only scoring) gets the CPU share a trial gets: small CPU models
    gain little from more threads, and on a busy machine extra threads spin against each other (measured here:
    4 teacher epochs of the demo took 80 s with 2 threads next to other work, 6 s with 1).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def knob_types(space: SearchSpace) -> dict[str, str]:
    """The knob columns of a space's results table: ``policy``, ``mix`` and every ``<policy>.<knob>`` /
    ``<mix>.<knob>`` of the candidates it can produce, with the knob's value type name (``int``, ``float``,
    ``str``)."""
    columns: dict[str, str] = {"policy": "str", "mix": "str"}
    for candidate in space.candidates():
        for name, args in ((candidate.policy, candidate.policy_args), (candidate.mix, candidate.mix_args)):
            catalogue = POLICIES.get(name) or MIXES.get(name) or {}
            for knob, _ in args:
                columns.setdefault(f"{name}.{knob}", catalogue[knob].value_type.__name__)
    return columns


def _save_job(plan: SearchPlan) -> None:
    """Keep the job a search starts with as ``RUN_DIR/job.yaml`` (a resume checks it is unchanged)."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.run_dir / JOB_FILE, job_to_yaml(plan.job))


def check_resumable(plan: SearchPlan, folder: Path, resume: bool) -> bool:
    """Whether Tune can restore the experiment in ``folder`` (the search's, or its calibration's). A restorable
    folder is refused unless ``resume``, and resuming it needs the job the search started with."""
    from ray import tune

    restorable = tune.Tuner.can_restore(str(folder))
    if restorable and not resume:
        raise DaqSearchError(
            f"{plan.run_dir}: a search already ran here; continue it with --resume, or choose another --name"
        )
    if restorable:
        _check_same_job(plan)
    return restorable


def _check_same_job(plan: SearchPlan) -> None:
    """Refuse to resume a search with a job that differs from the one it started with (Tune would go on with the
    old one for the trials it restores)."""
    path = plan.run_dir / JOB_FILE
    if not path.is_file():
        return
    started = read_yaml(path, "the job.yaml a search keeps")
    if not isinstance(started, dict):
        raise DaqSearchError(
            f"{path}: --resume: empty or damaged (not a mapping of job fields); the job this search started with is "
            "unknown, so it cannot be resumed safely; start a new search with another --name"
        )
    current = plan.job.model_dump(mode="json")
    changed = [key for key in current if current[key] != started.get(key)]
    if changed:
        raise DaqSearchError(
            f"{plan.run_dir}: --resume: the job's {', '.join(changed)} differ from the search started in {path}; "
            "resume with the same job, or start a new search with another --name"
        )
