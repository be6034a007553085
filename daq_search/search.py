"""The augmentation search: Ray Tune trials of short QAT+KD trainings, sampled by Optuna TPE and pruned by ASHA.

``plan_search(JOB.yaml)`` validates the job and its data before any Ray work; ``run_search(plan)`` trains (or
loads) the teacher once, then runs ``searcher.num_samples`` trials. A trial (:func:`run_trial`, a plain function of
its config) distils the fake-quantized student from the teacher under its candidate augmentation for
``trial.epochs`` epochs and reports after every epoch the DA score of the student's outputs on the scoring subset,
the teacher-only scores of the candidate, validation accuracy and loss, and throughput. The search's Tune callback
(:class:`SearchCallback`) prints one line per trial event plus a periodic summary, and keeps
``RUN_DIR/trials.parquet`` and ``RUN_DIR/trial_epochs.parquet`` up to date (see :mod:`daq_search.results`). At the
end the best trial becomes ``RUN_DIR/winner.yaml``, the job with ``candidate`` and ``teacher.checkpoint`` set, ready
for ``daq-search train``.

``RUN_DIR`` is ``<storage>/<name>`` and is also Tune's experiment folder, so ``resume=True`` restores it with
``Tuner.restore``: finished trials stay finished, unfinished ones continue from their last epoch checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .augment import MIXES, POLICIES, Candidate, SearchSpace, parse_candidate
from .config import JobSpec, ScorerConfig, job_to_yaml, load_job
from .data import DataBundle, DataSpec, load_data, stratified_indices
from .errors import DaqSearchError
from .files import atomic_write, atomic_write_text, check_run_name, check_writable_folder, clip, read_yaml
from .kd import (
    check_precision,
    ensure_teacher,
    get_teacher,
    load_state,
    load_teacher,
    loader_workers,
)
from .metric import METRIC_MODES, score_candidate, teacher_t_stddev
from .results import TrialTable, best_trial, format_table, rank_trials
from .runtime import ray_session
from .trial_training import TrialTraining

WINNER_FILE = "winner.yaml"
JOB_FILE = "job.yaml"
TEACHER_SCORES_FILE = "teacher_scores.parquet"
TRIAL_STATE_FILE = "trial.pt"
MIN_T_STDDEV_GROUPS = 10
SUMMARY_EVERY_S = 30.0
TOP_SHOWN = 5

# --- validation and the pieces shared by trials and `daq-search score` ------------------------------------------


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
    bundle = load_data(job.data.spec())
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


# --- the trial ------------------------------------------------------------------------------------------------

CANDIDATE_KEY = "candidate_id"
"""The trial config key holding the sampled candidate's id."""

REPEAT_KEY = "repeats_candidate"
"""The trial config key that is True when the searcher proposed a candidate it had proposed before (see
:func:`replay_trial`)."""

RUN_DIR_KEY = "run_dir"
"""The trial config key holding ``RUN_DIR`` (where a repeat trial reads the first trial's recorded epochs)."""

REPLAY_FILE = "replay.json"
"""What a repeat trial's checkpoint holds: the last replayed epoch."""

REPLAY_POLL_S = 1.0


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


_DATA_CACHE: dict[DataSpec, DataBundle] = {}


def cached_data(spec: DataSpec) -> DataBundle:
    """``load_data(spec)``, loaded once per worker process (Tune reuses trial actors)."""
    if spec not in _DATA_CACHE:
        _DATA_CACHE[spec] = load_data(spec)
    return _DATA_CACHE[spec]


def run_trial(config: dict) -> None:
    """One search trial. ``config``: ``job`` (the JobSpec as a dict), ``teacher_checkpoint`` (path of the teacher
    trained before the search) and ``candidate_id`` (the augmentation to train with), next to the searcher's
    parameters.

    Distils the quantized student for ``trial.epochs`` epochs; after each it reports ``epoch``, ``candidate`` and
    every metric of :data:`daq_search.results.REPORTED_METRICS` with a checkpoint, and a restored trial continues
    after its last checkpointed epoch. Raises ``FloatingPointError`` when the training loss stops being finite. A
    trial whose config marks a repeated candidate (:data:`REPEAT_KEY`) reports the first trial's recorded epochs
    instead of training (:func:`replay_trial`).
    """
    logging.getLogger("ray").setLevel(logging.WARNING)
    job = JobSpec.model_validate(config["job"])
    if config.get(REPEAT_KEY) and config.get(RUN_DIR_KEY) and replay_trial(config[CANDIDATE_KEY], config[RUN_DIR_KEY]):
        return
    workers = loader_workers(job.resources.cpus_per_trial, job.resources.loader_workers)
    torch.set_num_threads(max(1, int(job.resources.cpus_per_trial) - workers))
    use_gpu = job.resources.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    check_precision(job.trial.precision, device, "trial.precision")
    candidate = parse_candidate(config[CANDIDATE_KEY])
    bundle = cached_data(job.data.spec())
    teacher = load_teacher(config["teacher_checkpoint"], job.teacher, bundle)
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    training = TrialTraining(
        teacher=teacher,
        bundle=bundle,
        candidate=candidate,
        student=job.student,
        quant=job.quant,
        kd=job.kd,
        recipe=job.trial,
        scorer=job.scorer,
        scoring_set=subset,
        student_seed=job.teacher.seed,
        seed=job.searcher.seed,
        score_seed=job.data.seed,
        device=device,
        workers=workers,
    )

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / TRIAL_STATE_FILE, f"checkpoint of trial {candidate.id}")
        training.load_state_dict(state)
        start, teacher_stats = state["epoch"] + 1, state["teacher"]
    else:
        start, teacher_stats = 1, teacher_metrics(teacher, subset, candidate, bundle, job, device)

    for epoch in range(start, job.trial.epochs + 1):
        stats = training.train_epoch(epoch)
        read = training.read_metrics()
        metrics = {
            "epoch": epoch,
            "candidate": candidate.id,
            **{name: read[name] for name in ("score", "score_ce", "cmi", "align", "sample_ce")},
            **teacher_stats,
            "val_acc": read["val_acc"],
            "val_loss": read["val_loss"],
            "train_loss": stats["train_loss"],
            "images_per_s": stats["images_per_s"],
        }
        state = {**training.state_dict(), "epoch": epoch, "teacher": teacher_stats}
        with tempfile.TemporaryDirectory(prefix="daq-trial-") as folder:
            torch.save(state, Path(folder) / TRIAL_STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _first_trial_of(candidate_id: str, run_dir: Path, own_id: str) -> dict | None:
    """The row of the earliest-started other trial of ``candidate_id`` in ``RUN_DIR/trials.parquet``, or None."""
    from .results import read_trials

    try:
        trials = read_trials(run_dir)
    except DaqSearchError:
        return None
    same = trials[(trials["candidate"] == candidate_id) & (trials["trial_id"] != own_id)]
    return None if same.empty else same.sort_values("started_at", kind="stable").iloc[0].to_dict()


def replay_trial(candidate_id: str, run_dir: str | Path) -> bool:
    """Answer a repeated candidate without training: wait until the first trial of ``candidate_id`` in ``run_dir``
    has ended, then report its recorded per-epoch metrics, epoch by epoch, each with a small checkpoint (so ASHA
    and Optuna see the same numbers, and a restored repeat continues after its last replayed epoch). Returns False,
    reporting nothing, when there is no first trial to replay or it failed (the repeat then trains)."""
    from .results import read_epochs

    run_dir, own_id = Path(run_dir), tune.get_context().get_trial_id()
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


# --- watching the search ----------------------------------------------------------------------------------------


def error_line(trial: Trial) -> str:
    """The last ``Type: message`` line of a failed trial's error (the exception the trial raised)."""
    path = trial.error_file  # written on the driver when the error arrives (storage gets it at the next sync)
    text = Path(path).read_text() if path is not None and Path(path).is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").replace("_", "").isalnum() and head[:1].isupper():
            return line
    return lines[-1] if lines else "trial failed (no error message recorded)"


class SearchCallback(tune.Callback):
    """Records every trial event in the run's :class:`~daq_search.results.TrialTable` (written to Parquet after
    each event) and prints one line per event, plus ``trials: ...; best so far: ...`` every ``summary_every_s``
    seconds and at the end. ``log`` receives the lines (None: silent)."""

    def __init__(
        self,
        table: TrialTable,
        *,
        log: Callable[[str], None] | None = print,
        summary_every_s: float = SUMMARY_EVERY_S,
    ):
        self.table = table
        self.log = log
        self.summary_every_s = summary_every_s
        self._last_summary = 0.0
        self._attempts: dict[str, list[str]] = {}

    def setup(self, **info) -> None:
        """Load the rows of an earlier run of this search (a resume keeps them)."""
        self.table.load()
        self._last_summary = time.monotonic()

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def _start(self, trial: Trial) -> Candidate:
        candidate = parse_candidate(trial.config[CANDIDATE_KEY])
        row = self.table.start(trial.trial_id, candidate.id, candidate.knobs())
        if self._attempts.get(trial.trial_id):
            row["error"] = self._attempt_errors(trial.trial_id)
        return candidate

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        resumed = trial.trial_id in self.table.trials
        candidate = self._start(trial)
        self.table.write()
        repeat = (
            " (proposed before: replays the first trial's epochs, no training)" if trial.config.get(REPEAT_KEY) else ""
        )
        self._say(f"trial {trial.trial_id} {'resumed' if resumed else 'started'}: {candidate.id}{repeat}")

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info) -> None:
        """Record the epoch whose checkpoint Tune has just registered: a row exists only once its checkpoint does,
        so a search interrupted at any moment resumes after its last recorded epoch and keeps every row."""
        result = trial.last_result
        if "epoch" not in result:
            return
        if trial.trial_id not in self.table.trials:
            self._start(trial)
        epoch = int(result["epoch"])
        self.table.add_epoch(trial.trial_id, epoch, result, seconds=result.get("time_total_s"))
        self.table.write()
        objective = self.table.objective
        self._say(
            f"trial {trial.trial_id} epoch {epoch}/{self.table.max_epochs}: "
            f"{objective}={result.get(objective, math.nan):.4f} val_acc={result.get('val_acc', math.nan):.3f}"
        )

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A failed attempt that Tune retries (``max_failures``): its error is kept in the row's ``error``."""
        error = error_line(trial)
        self._attempts.setdefault(trial.trial_id, []).append(error)
        if trial.trial_id in self.table.trials:
            self.table.trials[trial.trial_id]["error"] = self._attempt_errors(trial.trial_id)
            self.table.write()
        attempt = len(self._attempts[trial.trial_id])
        self._say(f"trial {trial.trial_id} attempt {attempt} failed, retrying from its last checkpoint: {error}")

    def _attempt_errors(self, trial_id: str) -> str:
        """``attempt 1: <error>; attempt 2: <error>`` for the recorded failed attempts of a trial."""
        return "; ".join(f"attempt {n}: {error}" for n, error in enumerate(self._attempts[trial_id], start=1))

    def _ended(self, trial: Trial, error: str | None) -> None:
        if trial.trial_id not in self.table.trials:
            self._start(trial)
        if error is not None and self._attempts.get(trial.trial_id):
            self._attempts[trial.trial_id].append(error)
            error = self._attempt_errors(trial.trial_id)
        row = self.table.end(trial.trial_id, error)
        if error is None and self._attempts.get(trial.trial_id):
            row["error"] = self._attempt_errors(trial.trial_id)  # a retry succeeded: the failed attempts stay
        self.table.write()
        if error is not None:
            self._say(f"trial {trial.trial_id} failed: {row['candidate']}: {error}")
            return
        objective = self.table.objective
        self._say(
            f"trial {trial.trial_id} {row['status']} after {row['epochs']}/{self.table.max_epochs} epochs: "
            f"{row['candidate']} {objective}={_fmt(row.get(f'{objective}_best'))}"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._ended(trial, error_line(trial))

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        if self.table.trials and time.monotonic() - self._last_summary >= self.summary_every_s:
            self._say(self.summary())
            self._last_summary = time.monotonic()

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self._say(self.summary())

    def summary(self) -> str:
        """``trials: N done, P pruned, R running, F failed; best so far: <candidate> <objective>=<value>``."""
        counts = {status: 0 for status in ("completed", "pruned", "running", "failed")}
        for row in self.table.trials.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        line = (
            f"trials: {counts['completed']} done, {counts['pruned']} pruned, {counts['running']} running, "
            f"{counts['failed']} failed"
        )
        if not self.table.trials:
            return line
        ranked = rank_trials(self.table.frame(), self.table.objective, self.table.mode)
        if ranked.empty:
            return line + "; best so far: none"
        best = ranked.iloc[0]
        objective = self.table.objective
        return f"{line}; best so far: {best['candidate']} {objective}={_fmt(best[f'{objective}_best'])}"


def _fmt(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


# --- the search ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOutcome:
    """What a search left behind: its folder, the trials table, the winner file (None when no trial finished) and
    whether it ran to the end (False after Ctrl-C)."""

    run_dir: Path
    trials: pd.DataFrame
    winner_file: Path | None
    finished: bool


def _quiet_ray() -> None:
    """Keep Tune's and Ray's own logging off the terminal (the callback's lines are the progress report)."""
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune logs each failed trial's traceback and "Trials did not complete"; the callback's one line says it.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="ray")


def _build_tuner(plan: SearchPlan, teacher_path: Path, callback: SearchCallback, resume: bool):
    """A fresh Tuner for ``plan`` or, with ``resume``, the one restored from its run folder."""
    job, space = plan.job, plan.space
    resources = {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}
    trainable = tune.with_resources(run_trial, resources)
    if resume:
        tuner = tune.Tuner.restore(str(plan.run_dir), trainable, resume_unfinished=True, resume_errored=False)
        # A restored Tuner carries the callbacks pickled by the first run; this run's callback (its log, its
        # RUN_DIR) replaces them. The tables it loads in setup() hold every row the first run wrote.
        if tuner._local_tuner is not None:
            tuner._local_tuner.get_run_config().callbacks = [callback]
        return tuner
    searcher = OptunaSearch(
        space=CandidateSampler(space),
        metric=job.objective,
        mode=job.mode,
        points_to_evaluate=[space.params_of(parse_candidate(p)) for p in job.searcher.points_to_evaluate] or None,
        sampler=_tpe_sampler(job.searcher.seed),
    )
    scheduler = None
    if job.scheduler.enabled:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=job.trial.epochs,
            grace_period=min(job.scheduler.grace_period, job.trial.epochs),
            reduction_factor=job.scheduler.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space={
            "job": job.model_dump(mode="json"),
            "teacher_checkpoint": str(teacher_path),
            RUN_DIR_KEY: str(plan.run_dir),
        },
        tune_config=tune.TuneConfig(
            metric=job.objective,
            mode=job.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=job.searcher.num_samples,
            max_concurrent_trials=job.max_concurrent_trials,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=str(plan.storage),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def trial_dirname(trial: Trial) -> str:
    """A trial's folder name in RUN_DIR: ``trial_<id>`` (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


def _tpe_sampler(seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.samplers.TPESampler(seed=seed)


def _save_job(plan: SearchPlan) -> None:
    """Keep the job a search starts with as ``RUN_DIR/job.yaml`` (a resume checks it is unchanged)."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.run_dir / JOB_FILE, job_to_yaml(plan.job))


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


def write_winner(plan: SearchPlan, trials: pd.DataFrame, teacher_path: Path) -> Path | None:
    """Write ``RUN_DIR/winner.yaml`` (the job with ``candidate`` = the best completed or pruned trial and
    ``teacher.checkpoint`` = the teacher used), or return None when no trial qualifies."""
    best = best_trial(trials, plan.job.objective, plan.job.mode)
    if best is None:
        return None
    winner = plan.job.model_copy(
        update={
            "candidate": best["candidate"],
            "teacher": plan.job.teacher.model_copy(update={"checkpoint": str(teacher_path)}),
            "storage": str(plan.storage),
        }
    )
    path = plan.run_dir / WINNER_FILE
    atomic_write_text(
        path,
        f"# Winner of search {plan.name!r}: trial {best['trial_id']} ({best['status']}, {best['epochs']} epochs), "
        f"{plan.job.objective}={best[f'{plan.job.objective}_best']:.6g}.\n"
        f"# Train it with: daq-search train {path}\n" + job_to_yaml(winner),
    )
    return path


def run_search(
    plan: SearchPlan,
    *,
    address: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    summary_every_s: float = SUMMARY_EVERY_S,
) -> SearchOutcome:
    """Run (or with ``resume`` continue) the search of a validated plan (:func:`plan_search`); see the module
    docstring.

    Without ``address`` an embedded loopback Ray runs on this machine; with it, the search runs on that cluster
    (``storage`` must then be shared by all nodes). The teacher is loaded, or trained once as a Ray task with a
    trial's resources (a whole GPU when trials use one) and cached in ``<storage>/teachers``, before any trial.
    Trials that raise are recorded as failed and the search goes on. A run folder that already holds a search is refused
    unless ``resume``. Returns the outcome; ``finished`` is False when the run was interrupted (Ctrl-C), and
    ``resume=True`` then continues it.
    """
    run_dir = plan.run_dir
    restorable = tune.Tuner.can_restore(str(run_dir))
    if restorable and not resume:
        raise DaqSearchError(
            f"{run_dir}: a search already ran here; continue it with --resume, or choose another --name"
        )
    if restorable:
        _check_same_job(plan)
    _quiet_ray()
    if plan.job.teacher.checkpoint is not None:  # a checkpoint that does not load fails before Ray starts
        load_teacher(plan.job.teacher.checkpoint, plan.job.teacher, plan.bundle)
    given = plan
    if not restorable:
        if resume:
            log(f"resume: nothing to resume in {run_dir}; starting the search")
        _save_job(given)
    with ExitStack() as session:
        try:
            session.enter_context(ray_session(address))
        except ConnectionError as err:
            raise DaqSearchError(
                f"--address: cannot connect to the Ray cluster at {address} ({str(err).strip()}); check the address "
                "and, on a cluster with token authentication, RAY_AUTH_TOKEN"
            ) from None
        resources = plan.job.resources
        teacher_path = ensure_teacher(
            plan.job.data,
            plan.job.teacher,
            plan.storage / "teachers",
            cpus=resources.cpus_per_trial,
            use_gpu=resources.gpus_per_trial > 0,
            workers=loader_workers(resources.cpus_per_trial, resources.loader_workers),
            log=log,
        )
        if plan.job.calibrate is not None:
            from .calibrate import calibrate_search

            plan = calibrate_search(plan, teacher_path, address=address, resume=resume, log=log)
        table = TrialTable(
            run_dir,
            max_epochs=plan.job.trial.epochs,
            knob_types=knob_types(plan.space),
            objective=plan.job.objective,
            mode=plan.job.mode,
        )
        callback = SearchCallback(table, log=log, summary_every_s=summary_every_s)
        log(
            f"search {plan.name}: {plan.job.searcher.num_samples} trials of {plan.job.trial.epochs} epochs, "
            f"objective {plan.job.objective} ({plan.job.mode}), results in {run_dir}"
        )
        tuner = _build_tuner(plan, teacher_path, callback, restorable)
        tuner.fit()
    table.load()
    trials = table.frame()
    finished = len(trials) >= plan.job.searcher.num_samples and not (trials["status"] == "running").any()
    winner = write_winner(plan, trials, teacher_path) if finished else None
    return SearchOutcome(run_dir, trials, winner, finished)


def top_table(trials: pd.DataFrame, objective: str, mode: str, top: int = TOP_SHOWN) -> str:
    """The ``top`` best trials (see :func:`daq_search.results.rank_trials`) as an aligned text table."""
    ranked = rank_trials(trials, objective, mode).head(top)
    columns = ["trial_id", "candidate", "status", "epochs", f"{objective}_best", "val_acc_best"]
    return format_table(ranked[list(dict.fromkeys(columns))], "table")


# --- teacher-only ranking ---------------------------------------------------------------------------------------

SCORE_COLUMNS = ("candidate", "score", "score_ce", "cmi", "align", "sample_ce", "t_stddev")


def score_space(
    job_path: str | Path,
    *,
    space_path: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, Path]:
    """Rank every candidate of a space by the teacher alone (no Ray, no student): the teacher's DA score terms on
    the augmented scoring subset and T-stddev. The space defaults to the job's; the teacher is trained once and
    cached as in a search. Rows are sorted by the job's objective when it is a teacher metric, else by teacher
    ``score``; they are also written to ``RUN_DIR/teacher_scores.parquet``. Returns (table, parquet path)."""
    from .augment import load_search_space

    plan = plan_search(job_path, storage=storage, name=name)
    space = load_search_space(space_path) if space_path is not None else plan.space
    job, bundle = plan.job, plan.bundle
    device = "cuda" if torch.cuda.is_available() else "cpu"
    subset = scoring_subset(bundle, job.scorer.subset, job.data.seed)
    rows = []
    with torch_threads(job.resources.cpus_per_trial):
        teacher, _ = get_teacher(job.data, job.teacher, bundle, plan.storage / "teachers", device=device, log=log)
        teacher.to(device)
        for candidate in space.candidates():
            metrics = teacher_metrics(teacher, subset, candidate, bundle, job, device)
            rows.append({"candidate": candidate.id, **{k.removeprefix("teacher_"): v for k, v in metrics.items()}})
            log(f"scored {candidate.id}: score={metrics['teacher_score']:.4f} t_stddev={metrics['t_stddev']:.5f}")
    table = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    sort_by, mode = "score", "min"
    if job.objective.startswith("teacher_") or job.objective == "t_stddev":
        sort_by, mode = job.objective.removeprefix("teacher_"), METRIC_MODES[job.objective]
    table = table.sort_values(sort_by, ascending=mode == "min", kind="stable").reset_index(drop=True)
    path = plan.run_dir / TEACHER_SCORES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return table, path


# --- submitting to a cluster ------------------------------------------------------------------------------------

UPLOAD_EXCLUDES = [".venv", "runs", ".git", "bench/work", "**/__pycache__", "*.egg-info", ".pytest_cache", "build"]
"""Left out of the working folder uploaded with a submitted search."""


def project_root() -> Path:
    """The source folder that holds the ``daq_search`` package; ``submit`` uploads it as the job's working folder."""
    root = Path(__file__).resolve().parent.parent
    if not ((root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file()):
        raise DaqSearchError(
            f"submit: daq_search is installed at {root}, not in a source checkout; run submit from a checkout "
            "(pip install -e .), whose folder is uploaded to the cluster"
        )
    return root


def _inside(path: Path, root: Path, field: str) -> Path:
    """``path`` relative to ``root``; DaqSearchError naming ``field`` when it lies outside the uploaded folder."""
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        raise DaqSearchError(
            f"{field}: {path} is outside the project folder {root}, which is what gets uploaded; move it inside"
        ) from None


def submission_headers() -> dict[str, str]:
    """HTTP headers for the cluster's Jobs API: ``Authorization: Bearer $RAY_AUTH_TOKEN`` when that is set."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def check_token_transport(address: str, allow_plain_http: bool = False) -> None:
    """Refuse to send ``RAY_AUTH_TOKEN`` unencrypted: over ``http://`` to a host that is not this machine's
    loopback, unless ``allow_plain_http`` (``--allow-plain-http``) says the network between is trusted."""
    if not os.environ.get("RAY_AUTH_TOKEN") or allow_plain_http:
        return
    parsed = urlsplit(address if "://" in address else f"http://{address}")
    if parsed.scheme != "http" or (parsed.hostname or "") in LOOPBACK_HOSTS:
        return
    raise DaqSearchError(
        f"--address: {clip(address)} is plain http to another host, so RAY_AUTH_TOKEN would cross the network "
        "unencrypted; allowed: https://, a loopback address (e.g. an SSH tunnel), or --allow-plain-http"
    )


def submit_search(
    job_path: str | Path,
    address: str,
    *,
    storage: str | None = None,
    name: str | None = None,
    wait: bool = False,
    allow_plain_http: bool = False,
    poll_s: float = 2.0,
    log: Callable[[str], None] = print,
) -> tuple[str, str | None]:
    """Submit ``daq-search search`` of a job to a Ray cluster's Jobs API at ``address`` (``http://HEAD:8265``).

    The job file is validated here first (its data is not: it lives on the cluster); the project folder is
    uploaded as the job's working folder, so the job file and its search space must lie inside it. The search runs
    on the cluster with ``--address auto``. ``RAY_AUTH_TOKEN`` is sent only encrypted or to loopback unless
    ``allow_plain_http`` (:func:`check_token_transport`). Returns (submission id, final status with ``wait``, else None).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    check_token_transport(address, allow_plain_http)
    if name is not None:
        check_run_name(name, "--name")
    job_file = Path(job_path)
    job = load_job(job_file)
    root = project_root()
    relative = _inside(job_file, root, "job")
    _inside(Path(job.search_space), root, "search_space")
    if not Path(storage or job.storage).is_absolute():
        raise DaqSearchError(
            f"storage: {storage or job.storage!r} is relative, so the search would write into the job's temporary "
            "working folder on the head; give a folder shared by all nodes (an NFS mount) with --storage or in the job"
        )
    command = ["python", "-m", "daq_search", "search", relative.as_posix(), "--address", "auto"]
    if storage is not None:
        command += ["--storage", storage]
    if name is not None:
        command += ["--name", name]
    try:
        client = JobSubmissionClient(address, headers=submission_headers())
        submission_id = client.submit_job(
            entrypoint=shlex.join(command),
            runtime_env={"working_dir": str(root), "excludes": UPLOAD_EXCLUDES},
        )
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as err:
        reason = clip(str(err).strip().splitlines()[0], 200) if str(err).strip() else type(err).__name__
        raise DaqSearchError(f"--address: cannot submit to the Ray Jobs API at {address}: {reason}") from None
    log(f"submitted {submission_id}: {shlex.join(command)}")
    log(f"follow its logs with: ray job logs --follow --address {address} {submission_id}")
    if not wait:
        return submission_id, None
    status = client.get_job_status(submission_id)
    while not status.is_terminal():
        time.sleep(poll_s)
        status = client.get_job_status(submission_id)
    log(f"{submission_id}: {status}")
    return submission_id, str(status)
