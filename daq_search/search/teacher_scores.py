"""Teacher-only ranking of a search space (``daq-search score``): no Ray, no student."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from ..data import load_data
from ..files import atomic_write
from ..metric import METRIC_MODES
from ..teacher import get_teacher
from .plan import plan_search, scoring_subset, teacher_metrics, torch_threads

logger = logging.getLogger(__name__)

TEACHER_SCORES_FILE = "teacher_scores.parquet"
SCORE_COLUMNS = ("candidate", "score", "score_ce", "cmi", "align", "sample_ce", "t_stddev")


def score_space(
    job_path: str | Path,
    *,
    space_path: str | None = None,
    storage: str | None = None,
    name: str | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Rank every candidate of a space by the teacher alone (no Ray, no student): the teacher's DA score terms on
    the augmented scoring subset and T-stddev. The space defaults to the job's; the teacher is trained once and
    cached as in a search. Rows are sorted by the job's objective when it is a teacher metric, else by teacher
    ``score``; they are also written to ``RUN_DIR/teacher_scores.parquet``. Returns (table, parquet path)."""
    from ..spaces import load_search_space

    plan = plan_search(job_path, storage=storage, name=name)
    space = load_search_space(space_path) if space_path is not None else plan.space
    job, bundle = plan.job, plan.bundle
    device = "cuda" if torch.cuda.is_available() else "cpu"
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    rows = []
    with torch_threads(job.resources.cpus_per_trial):
        same_data = job.teacher.train_per_class is None and job.data.val_pool == "split"  # else its own split, val
        teacher_bundle = bundle if same_data else load_data(job.teacher_data().spec())
        teacher, _ = get_teacher(
            job.teacher_data(), job.teacher, teacher_bundle, plan.storage / "teachers", device=device
        )
        teacher.to(device)
        for candidate in space.candidates():
            metrics = teacher_metrics(teacher, subset, candidate, bundle, job, device)
            rows.append({"candidate": candidate.id, **{k.removeprefix("teacher_"): v for k, v in metrics.items()}})
            logger.info(
                f"scored {candidate.id}: score={metrics['teacher_score']:.4f} t_stddev={metrics['t_stddev']:.5f}"
            )
    table = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    sort_by, mode = "score", "min"
    if job.objective.startswith("teacher_") or job.objective == "t_stddev":
        sort_by, mode = job.objective.removeprefix("teacher_"), METRIC_MODES[job.objective]
    table = table.sort_values(sort_by, ascending=mode == "min", kind="stable").reset_index(drop=True)
    path = plan.run_dir / TEACHER_SCORES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return table, path
