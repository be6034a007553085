"""One search trial (:func:`run_trial`, the function Tune runs in its workers) and the replay of a candidate the
searcher proposed again (:func:`replay_trial`), with the trial config keys they read and the sampler that sets them.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ..branching import read_trunk, trunk_matches
from ..candidates import Candidate, parse_candidate
from ..checkpoints import load_state
from ..config import JobSpec
from ..data import DataBundle, DataSpec
from ..errors import DaqSearchError
from ..kd import check_precision, loader_workers, training_threads
from ..logs import quiet_worker_shutdown, show_progress
from ..spaces import SearchSpace
from ..teacher import load_teacher
from ..trial_training import TrialTraining
from .plan import scoring_subset, teacher_metrics

TRIAL_STATE_FILE = "trial.pt"

CANDIDATE_KEY = "candidate_id"
"""The trial config key holding the sampled candidate's id."""

REPEAT_KEY = "repeats_candidate"
"""The trial config key that is True when the searcher proposed a candidate it had proposed before (see
:func:`replay_trial`)."""

RUN_DIR_KEY = "run_dir"
"""The trial config key holding ``RUN_DIR`` (where a repeat trial reads the first trial's recorded epochs)."""

TRUNK_KEY = "trunk_dir"
"""The trial config key holding the folder of a branching search's trunk state (absent without branching)."""

READ_METRICS = ("score", "score_ce", "cmi", "align", "sample_ce", "val_acc", "val_acc_se", "val_loss")
"""What a trial reads from its student (validation and DA score); NaN at an epoch where nothing reads them."""

REPLAY_FILE = "replay.json"
"""What a repeat trial's checkpoint holds: the last replayed epoch."""

REPLAY_POLL_S = 1.0
REPLAY_APPEAR_S = 120.0
"""How long a repeat waits for the row of the trial it repeats to appear (the driver writes it when that trial starts,
which can be after the repeat's worker has started) before it trains instead."""


@dataclass(frozen=True)
class CandidateSampler:
    """Optuna's define-by-run space for a search space: samples the parameters of one candidate (see
    :meth:`SearchSpace.suggest`) and hands the trial the candidate's id as config key :data:`CANDIDATE_KEY`, so
    trials need neither the searcher nor the space file. :data:`REPEAT_KEY` says whether an earlier trial of the
    same study already has this candidate (numeric knobs are compared on the space's step grid)."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        self.space.suggest(trial)
        candidate = self.space.candidate_from_params(trial.params)
        earlier = trial.study.get_trials(deepcopy=False)
        repeat = any(
            self.space.candidate_from_params(other.params) == candidate
            for other in earlier
            if other.number < trial.number and other.params
        )
        return {CANDIDATE_KEY: candidate.id, REPEAT_KEY: repeat}


MAX_REDRAWS = 20
"""How many times the searcher may propose again when it repeats a candidate, before the repeat is run (replayed)."""


class DistinctOptunaSearch(OptunaSearch):
    """Ray Tune's OptunaSearch whose proposals do not repeat a candidate while it can help it: a proposal that
    :class:`CandidateSampler` marks as a repeat is told to Optuna as failed (TPE learns nothing from it) and the
    searcher proposes again, up to :data:`MAX_REDRAWS` times, so a repeat does not use up a sample; in a space the
    search has exhausted, the repeat is run (and replayed, :func:`replay_trial`)."""

    def suggest(self, trial_id: str) -> dict | None:
        """A config whose candidate no earlier trial has, if one is found within :data:`MAX_REDRAWS` proposals."""
        import optuna

        config = super().suggest(trial_id)
        for _ in range(MAX_REDRAWS):
            if config is None or not config.get(REPEAT_KEY):
                return config
            self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.FAIL)
            config = super().suggest(trial_id)
        return config


_DATA_CACHE: dict[tuple[DataSpec, DataSpec], DataBundle] = {}


def cached_data(job: JobSpec) -> DataBundle:
    """The job's student data (``job.load_data()``), loaded once per worker process (Tune reuses trial actors)."""
    key = (job.data.spec(), job.teacher_data().spec())
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = job.load_data()
    return _DATA_CACHE[key]


def job_training(
    job: JobSpec,
    teacher: torch.nn.Module,
    bundle: DataBundle,
    candidate: Candidate,
    scoring_set: Any,
    device: Any,
    workers: int,
) -> TrialTraining:
    """The training of one search trial of ``job`` under ``candidate``: the job's student, quantizer, KD loss,
    trial recipe and scorer, the DA score read on ``scoring_set``, with the job's seeds."""
    return TrialTraining(
        teacher=teacher,
        bundle=bundle,
        candidate=candidate,
        student=job.student,
        quant=job.quant,
        kd=job.kd,
        recipe=job.trial,
        scorer=job.scorer,
        scoring_set=scoring_set,
        student_seed=job.teacher.seed,
        seed=job.searcher.seed,
        score_seed=job.data.seed,
        device=device,
        workers=workers,
    )


def reading_epochs(job: JobSpec) -> frozenset[int]:
    """The epochs at which a trial of ``job`` reads :data:`READ_METRICS`: its last (what ranks it), each ASHA rung
    when early stopping is on (the first epoch at or past ``grace * reduction**k``), and every epoch of a calibrated
    search (its rules read any budget)."""
    last = job.trial.epochs
    if job.calibrate is not None:
        return frozenset(range(1, last + 1))
    reads = {last}
    if job.scheduler.enabled:
        milestone = float(min(job.scheduler.grace_period, last))
        while milestone < last:
            reads.add(math.ceil(milestone))
            milestone *= job.scheduler.reduction_factor
    return frozenset(reads)


def run_trial(config: dict) -> None:
    """One search trial. ``config``: ``job`` (the JobSpec as a dict), ``teacher_checkpoint`` (path of the teacher
    trained before the search) and ``candidate_id`` (the augmentation to train with), next to the searcher's
    parameters.

    Distils the quantized student for ``trial.epochs`` epochs; after each it reports ``epoch``, ``candidate`` and
    every metric of :data:`daq_search.results.REPORTED_METRICS` with a checkpoint (the student's reads only at
    :func:`reading_epochs`, NaN elsewhere), and a restored trial continues after its last checkpointed epoch. With
    ``trunk_dir`` (a branching search) the trial is a branch: it starts from the trunk's student, optimiser and
    schedule and trains the epochs after the trunk's. Raises ``FloatingPointError`` when the training loss stops being finite. A
    trial whose config marks a repeated candidate (:data:`REPEAT_KEY`) reports the first trial's recorded epochs
    instead of training (:func:`replay_trial`).
    """
    logging.getLogger("ray").setLevel(logging.WARNING)
    show_progress()
    quiet_worker_shutdown()
    job = JobSpec.model_validate(config["job"])
    if config.get(REPEAT_KEY) and config.get(RUN_DIR_KEY) and replay_trial(config[CANDIDATE_KEY], config[RUN_DIR_KEY]):
        return
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    torch.set_num_threads(training_threads(job.resources.cpus_per_trial, workers))
    use_gpu = job.resources.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    check_precision(job.trial.precision, device, "trial.precision")
    candidate = parse_candidate(config[CANDIDATE_KEY])
    bundle = cached_data(job)
    teacher = load_teacher(config["teacher_checkpoint"], job.teacher, bundle)
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    training = job_training(job, teacher, bundle, candidate, subset, device, workers)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / TRIAL_STATE_FILE, f"checkpoint of trial {candidate.id}")
        training.load_state_dict(state)
        start, teacher_stats = state["epoch"] + 1, state["teacher"]
    else:
        start, teacher_stats = 1, teacher_metrics(teacher, subset, candidate, bundle, job, device)
        if config.get(TRUNK_KEY) is not None:
            start = _start_from_trunk(training, config[TRUNK_KEY], job)

    reads = reading_epochs(job)
    for epoch in range(start, job.trial.epochs + 1):
        stats = training.train_epoch(epoch)
        read = training.read_metrics() if epoch in reads else dict.fromkeys(READ_METRICS, math.nan)
        metrics = {
            "epoch": epoch,
            "candidate": candidate.id,
            **{name: read[name] for name in READ_METRICS},
            **teacher_stats,
            "train_loss": stats["train_loss"],
            "images_per_s": stats["images_per_s"],
        }
        state = {**training.state_dict(), "epoch": epoch, "teacher": teacher_stats}
        with tempfile.TemporaryDirectory(prefix="daq-trial-") as folder:
            torch.save(state, Path(folder) / TRIAL_STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _start_from_trunk(training: TrialTraining, folder: str, job: JobSpec) -> int:
    """Load the finished trunk in ``folder`` into a branch's ``training``; returns the branch's first epoch."""
    state = read_trunk(folder)
    if not trunk_matches(state, job) or state["epoch"] >= job.trial.epochs:
        raise DaqSearchError(f"branch: {folder} holds no trunk of this job; allowed: the trunk the search trained")
    training.load_state_dict(state)
    return state["epoch"] + 1


def _first_trial_of(candidate_id: str, run_dir: Path, own_id: str) -> dict | None:
    """The row of the earliest-started other trial of ``candidate_id`` in ``RUN_DIR/trials.parquet``, or None."""
    from ..results import read_trials

    try:
        trials = read_trials(run_dir)
    except DaqSearchError:
        return None
    same = trials[(trials["candidate"] == candidate_id) & (trials["trial_id"] != own_id)]
    return None if same.empty else same.sort_values("started_at", kind="stable").iloc[0].to_dict()


def replay_trial(candidate_id: str, run_dir: str | Path) -> bool:
    """Answer a repeated candidate without training: wait until the first trial of ``candidate_id`` in ``run_dir``
    has started (at most :data:`REPLAY_APPEAR_S`) and ended, then report its recorded per-epoch metrics, epoch by epoch, each with a small checkpoint (so ASHA
    and Optuna see the same numbers, and a restored repeat continues after its last replayed epoch). Returns False,
    reporting nothing, when there is no first trial to replay or it failed (the repeat then trains)."""
    from ..results import read_epochs

    run_dir, own_id = Path(run_dir), tune.get_context().get_trial_id()
    first = _first_trial_of(candidate_id, run_dir, own_id)
    deadline = time.monotonic() + REPLAY_APPEAR_S
    while first is None and time.monotonic() < deadline:
        time.sleep(REPLAY_POLL_S)
        first = _first_trial_of(candidate_id, run_dir, own_id)
    while first is not None and first["status"] == "running":
        time.sleep(REPLAY_POLL_S)
        first = _first_trial_of(candidate_id, run_dir, own_id)
    if first is None or first["status"] == "failed":
        return False
    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / REPLAY_FILE).read_text())["epoch"] + 1
    epochs = read_epochs(run_dir)
    rows = epochs[epochs["trial_id"] == first["trial_id"]].sort_values("epoch")
    for row in rows[rows["epoch"] >= start].to_dict("records"):
        metrics = {key: value for key, value in row.items() if key != "trial_id"}
        metrics["epoch"] = int(metrics["epoch"])
        with tempfile.TemporaryDirectory(prefix="daq-replay-") as folder:
            (Path(folder) / REPLAY_FILE).write_text(json.dumps({"epoch": metrics["epoch"], "of": first["trial_id"]}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    return True
