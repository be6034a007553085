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
``Tuner.restore``: finished trials stay finished, unfinished ones continue from their last epoch checkpoint."""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from ..branching import ensure_trunk
from ..candidates import parse_candidate
from ..config import JobSpec, job_to_yaml
from ..errors import DaqSearchError
from ..files import atomic_write_text
from ..finalists import choose_finalists, strength_finalists
from ..kd import loader_workers
from ..results import TrialTable, best_trial, format_table, rank_column, rank_trials
from ..runtime import ray_session
from ..teacher import ensure_teacher, load_teacher
from .plan import SearchPlan, _save_job, check_resumable, knob_types
from .trial import RUN_DIR_KEY, TRUNK_KEY, CandidateSampler, DistinctOptunaSearch, run_trial
from .watch import SUMMARY_EVERY_S, SearchCallback

logger = logging.getLogger(__name__)

WINNER_FILE = "winner.yaml"
TOP_SHOWN = 5


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


def _build_tuner(plan: SearchPlan, teacher_path: Path, trunk: Path | None, callback: SearchCallback, resume: bool):
    """A fresh Tuner for ``plan`` (its trials branch from ``trunk`` when given) or, with ``resume``, the one
    restored from its run folder."""
    job, space = plan.job, plan.space
    resources = {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}
    trainable = tune.with_resources(run_trial, resources)
    if resume:
        tuner = tune.Tuner.restore(str(plan.run_dir), trainable, resume_unfinished=True, resume_errored=False)
        # A restored Tuner carries the callbacks pickled by the first run; this run's callback (its
        # RUN_DIR) replaces them. The tables it loads in setup() hold every row the first run wrote.
        if tuner._local_tuner is not None:
            tuner._local_tuner.get_run_config().callbacks = [callback]
        return tuner
    searcher = DistinctOptunaSearch(
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
            TRUNK_KEY: None if trunk is None else str(trunk),
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


def write_winner(plan: SearchPlan, trials: pd.DataFrame, teacher_path: Path, trunk: Path | None = None) -> Path | None:
    """Write ``RUN_DIR/winner.yaml`` (the job with ``candidate`` = the first finalist, ``finalists`` = the others,
    ``teacher.checkpoint`` = the teacher used and, for a branching search, ``branch.checkpoint`` = its ``trunk``
    folder, which the final training continues), or return None when no trial qualifies. The finalists are those of
    :func:`daq_search.finalists.choose_finalists` (the best completed or pruned trial first) or, with
    ``final.finalists_by: strength``, of :func:`daq_search.finalists.strength_finalists`; the baseline is not one
    unless it continues a trunk or wins the trials, as the final training trains it anyway."""
    job = plan.job
    trained_anyway = [job.final.baseline] if job.branch is None and job.final.baseline else []
    if job.final.finalists_by == "strength":
        chosen = strength_finalists(trials, job.objective, job.mode, job.final.finalists, trained_anyway)
    else:
        chosen = choose_finalists(trials, job.objective, job.mode, job.final.finalists, trained_anyway)
    if not chosen:
        return None
    best = best_trial(trials[trials["candidate"] == chosen[0]], job.objective, job.mode)
    update = {
        "candidate": chosen[0],
        "finalists": chosen[1:],
        "teacher": job.teacher.model_copy(update={"checkpoint": str(teacher_path)}),
        "storage": str(plan.storage),
    }
    if job.branch is not None and trunk is not None:
        update["branch"] = job.branch.model_copy(update={"checkpoint": str(trunk)})
    winner = job.model_copy(update=update)
    path = plan.run_dir / WINNER_FILE
    atomic_write_text(
        path,
        f"# Winner of search {plan.name!r}: trial {best['trial_id']} ({best['status']}, {best['epochs']} epochs), "
        f"{job.objective}={best[rank_column(job.objective)]:.6g} at its last epoch"
        f"{', at a golden point of the strength order' if job.final.finalists_by == 'strength' else ''}.\n"
        f"# Train it with: daq-search train {path}\n" + job_to_yaml(winner),
    )
    return path


def teacher_cpus(cpus_per_trial: float, max_concurrent_trials: int) -> float:
    """CPUs the teacher's training task reserves (Ray must be up): it runs alone, before any trial, so those of all
    concurrent trials, but no more than the largest live node has (a task larger than every node never starts)."""
    import ray

    largest = max(node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"])
    return max(cpus_per_trial, min(cpus_per_trial * max_concurrent_trials, largest))


def teacher_loader_workers(cpus: float, job: JobSpec) -> int:
    """Loader processes of the teacher's training: ``resources.loader_workers`` when set; else none for a teacher
    without augmentation (its loader only crops and flips, so every CPU goes to torch threads), else the rule of
    :func:`~daq_search.kd.loader_workers`."""
    if job.resources.loader_workers is None and job.teacher.augment == "none":
        return 0
    return loader_workers(cpus, job.resources.loader_workers)


def run_search(
    plan: SearchPlan,
    *,
    address: str | None = None,
    resume: bool = False,
    summary_every_s: float = SUMMARY_EVERY_S,
) -> SearchOutcome:
    """Run (or with ``resume`` continue) the search of a validated plan (:func:`plan_search`); see the module
    docstring.

    Without ``address`` an embedded loopback Ray runs on this machine; with it, the search runs on that cluster
    (``storage`` must then be shared by all nodes). The teacher is loaded, or trained once as a Ray task with
    the CPUs of all concurrent trials (:func:`teacher_cpus`; a whole GPU when trials use one) and cached in
    ``<storage>/teachers``, before any trial.
    Trials that raise are recorded as failed and the search goes on. A run folder that already holds a search is refused
    unless ``resume``. Returns the outcome; ``finished`` is False when the run was interrupted (Ctrl-C), and
    ``resume=True`` then continues it.
    """
    run_dir = plan.run_dir
    restorable = check_resumable(plan, run_dir, resume)
    _quiet_ray()
    if plan.job.teacher.checkpoint is not None:  # a checkpoint that does not load fails before Ray starts
        load_teacher(plan.job.teacher.checkpoint, plan.job.teacher, plan.bundle)
    given = plan
    if not restorable:
        if resume:
            logger.info(f"resume: nothing to resume in {run_dir}; starting the search")
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
        cpus = teacher_cpus(resources.cpus_per_trial, plan.job.max_concurrent_trials)
        teacher_path = ensure_teacher(
            plan.job.teacher_data(),
            plan.job.teacher,
            plan.storage / "teachers",
            cpus=cpus,
            use_gpu=resources.gpus_per_trial > 0,
            workers=teacher_loader_workers(cpus, plan.job),
        )
        trunk = None
        if plan.job.branch is not None:
            trunk = ensure_trunk(plan.job, teacher_path, run_dir, cpus=cpus, use_gpu=resources.gpus_per_trial > 0)
        if plan.job.calibrate is not None:
            from ..calibrate import calibrate_search

            plan = calibrate_search(plan, teacher_path, address=address, resume=resume)
        table = TrialTable(
            run_dir,
            max_epochs=plan.job.trial.epochs,
            knob_types=knob_types(plan.space),
            objective=plan.job.objective,
            mode=plan.job.mode,
        )
        callback = SearchCallback(table, summary_every_s=summary_every_s)
        logger.info(
            f"search {plan.name}: {plan.job.searcher.num_samples} trials of {plan.job.trial.epochs} epochs, "
            f"objective {plan.job.objective} ({plan.job.mode}), results in {run_dir}"
        )
        tuner = _build_tuner(plan, teacher_path, trunk, callback, restorable)
        tuner.fit()
    table.load()
    trials = table.frame()
    finished = len(trials) >= plan.job.searcher.num_samples and not (trials["status"] == "running").any()
    winner = write_winner(plan, trials, teacher_path, trunk) if finished else None
    return SearchOutcome(run_dir, trials, winner, finished)


def top_table(trials: pd.DataFrame, objective: str, mode: str, top: int = TOP_SHOWN) -> str:
    """The ``top`` best trials (see :func:`daq_search.results.rank_trials`) as an aligned text table."""
    ranked = rank_trials(trials, objective, mode).head(top)
    columns = ["trial_id", "candidate", "status", "epochs", rank_column(objective), "val_acc_last"]
    return format_table(ranked[list(dict.fromkeys(columns))], "table")
