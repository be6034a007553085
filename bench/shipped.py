"""The search that ships, measured end to end: for a regime, the package's own ``plan_search``/``run_search`` (its
sampler over ``search_spaces/default.yaml``, ``num_samples`` as shipped) runs once per searcher seed as a user's job,
and what its final training would ship is trained on the regime's ground-truth seeds, so its true accuracy is known;
regret is measured against the best that any record of the regime found.

``--finalists 2`` measures the default selection (independent trials of 10 %, two finalists hedged by strength): each
finalist and the ``none`` baseline are trained alone from scratch and read on the job's validation pool, and per seed
the run with the highest reading ships (``shipped_search_finalists``, ``<regime>--finalists-2.json.gz``).
``--finalists-by strength`` measures the strength-ordered choice the same way: the same screen, but the finalists
are the candidates at the golden points of the strength order (``shipped_search_strength``,
``<regime>--strength-2.json.gz``).

Without it, late-phase branching, the former default, from the package's trunk or ``--trunk``: each pick is trained
alone, and as the final training delivers it (a trunk to the branch epoch, continued under the pick to the end),
beside the baseline alone, and the model the final training ships (the better of the two on the job's validation
pool) (``shipped_search``, ``<regime>.json.gz``; another trunk's: ``shipped_search_trunks`` and
``<regime>--trunk-<tag>.json.gz``; after measuring one, rerun the others so that their summaries see its picks).

``python -m bench.shipped --report-only`` rewrites ``shipped.md`` from ``results.json`` (its tables, each search's
cost in epochs and in measured time, and the choice of method judged leave-one-regime-out).

Run: ``python -m bench.shipped --regime scenes32-10pc-ladder-320ep [--finalists 2]`` (resumable: each finished search
and each training is cached under ``--work``, whose ``teachers/`` the searches and the benchmark share). The records
hold every trial row, every trial epoch and every ground-truth run. A planted control's job validates on the
benchmark's validation images with the nuisance, given as a user's ``data.val_pool`` folder (images taken in
deployment conditions); its test images carry the nuisance too.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from daq_search.candidates import parse_candidate
from daq_search.checkpoints import load_state
from daq_search.config import DataConfig, JobSpec
from daq_search.finalists import shipped_index
from daq_search.kd import eval_loader, evaluate
from daq_search.results import read_epochs, read_trials
from daq_search.search import plan_search, run_search
from daq_search.search.trial import TRIAL_STATE_FILE
from daq_search.selection import DEFAULT_TRUNK, branch_epoch, branching_cost
from daq_search.teacher import load_teacher

from .regimes import build_regime
from .runs import Job, run_student, student_bundle, student_training, test_set

SEARCHER_SEEDS = (0, 1, 2)
VAL_POOL = "teacher_unused"
"""The shipped jobs validate on the teacher split's unused images, as ``jobs/demo.yaml`` does."""
PLANTED_VALIDATION = Path(__file__).parent / "work" / "planted-validation"
"""Where a planted regime's validation images, nuisance applied, are written as a user's ``val_pool`` folder."""


def shipped_job(
    regime, searcher_seed: int, trunk: str = DEFAULT_TRUNK, finalists: int = 1, finalists_by: str = "screen"
) -> JobSpec:
    """The regime as a user's job with every selection setting at the package's default but the trunk's policy
    (``trunk``, the default's unless asked) or, with ``finalists`` above 1, the finalists method instead of
    branching (independent trials of the default trial length, then ``final.finalists`` named by
    ``finalists_by``): its data (validated on
    :data:`VAL_POOL` when the teacher has a larger split; a planted regime on its validation images with the
    nuisance, as a folder a user would give, written by :func:`write_planted_validation`), teacher, student,
    quantizer, KD loss and scorer, the full recipe as the final training, and ``searcher.seed``."""
    data: DataConfig = regime.data
    teacher = regime.teacher
    if regime.teacher_data is not None:
        data = data.model_copy(update={"val_pool": VAL_POOL})
        teacher = teacher.model_copy(update={"train_per_class": regime.teacher_data.train_per_class})
    if regime.planted is not None:
        data = data.model_copy(update={"val_pool": str(planted_validation_folder(regime))})
    final = {"recipe": regime.recipe.model_dump(), "workers": 1, "finalists": finalists, "finalists_by": finalists_by}
    selection = {"branch": {"trunk": trunk}} if finalists == 1 else {"branch": None}
    return JobSpec.model_validate(
        {
            "name": f"{_measured_name(regime.name, trunk, finalists, finalists_by)}-s{searcher_seed}",
            "data": data.model_dump(),
            "teacher": teacher.model_dump(),
            "student": regime.student.model_dump(),
            "quant": regime.quant.model_dump(),
            "kd": regime.kd.model_dump(),
            "scorer": regime.scorer.model_dump(),
            "search_space": str(Path("search_spaces/default.yaml").resolve()),
            **selection,
            "searcher": {"seed": searcher_seed, "points_to_evaluate": ["none"]},
            "final": final,
        }
    )


def planted_validation_folder(regime) -> Path:
    """The ``val_pool`` folder of a planted regime's shipped jobs (one per regime config)."""
    return PLANTED_VALIDATION / f"{regime.name}-{regime.key()}"


def write_planted_validation(regime) -> Path | None:
    """Write a planted regime's validation images, nuisance applied (the benchmark's own validation set,
    :func:`bench.runs.student_bundle`), as ``<class>/<index>.png`` under :func:`planted_validation_folder` unless
    it is there; returns the folder (None, writing nothing, for a regime without a nuisance). PNG keeps the uint8
    pixels exactly."""
    from torchvision.io import write_png

    if regime.planted is None:
        return None
    folder = planted_validation_folder(regime)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    val = student_bundle(regime).val
    for index, (image, label) in enumerate(zip(val.images, val.labels, strict=True)):
        (partial / str(int(label))).mkdir(exist_ok=True)
        write_png(image, str(partial / str(int(label)) / f"{index:05d}.png"))
    try:
        partial.rename(folder)
    except OSError:  # another process wrote the same images first
        shutil.rmtree(partial)
    return folder


def _pool_label(job: JobSpec) -> str:
    """The job's validation pool as the records name it: a named pool, or a folder's own name (the same either
    way in every checkout)."""
    return Path(job.data.val_pool).name


def _measured_name(regime_name: str, trunk: str, finalists: int = 1, finalists_by: str = "screen") -> str:
    """The name of what is measured on a regime, which its search folders (``-s<seed>``) and its records file carry:
    the regime's name for late-phase branching from the package's trunk, ``<regime>--trunk-<six hex digits>`` from
    another trunk, ``<regime>--finalists-<m>`` for the finalists method, ``<regime>--strength-<m>`` for finalists
    named by strength."""
    if finalists_by == "strength":
        return f"{regime_name}--strength-{finalists}"
    if finalists > 1:
        return f"{regime_name}--finalists-{finalists}"
    if trunk == DEFAULT_TRUNK:
        return regime_name
    return f"{regime_name}--trunk-{hashlib.sha1(trunk.encode()).hexdigest()[:6]}"


def run_one_search(
    regime,
    searcher_seed: int,
    work: Path,
    log,
    trunk: str = DEFAULT_TRUNK,
    finalists: int = 1,
    finalists_by: str = "screen",
) -> dict:
    """One shipped search of ``regime`` from a ``trunk`` trunk, or of the finalists method (cached: a finished run
    folder is read, not rerun); returns its record."""
    write_planted_validation(regime)
    job = shipped_job(regime, searcher_seed, trunk, finalists, finalists_by)
    storage = work  # its teachers/ folder is the one the ground-truth runs read
    run_dir = storage / job.name
    _check_cached_job(run_dir, job)
    if not (run_dir / "winner.yaml").is_file():
        job_file = work / "shipped-jobs" / f"{job.name}.yaml"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job.model_dump(mode="json")))
        log(f"search {job.name}: running")
        start = time.perf_counter()
        plan = plan_search(job_file, storage=str(storage))
        outcome = run_search(plan, resume=run_dir.is_dir())
        (run_dir / "bench-wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - start}))
        if outcome.winner_file is None:
            raise RuntimeError(f"search {job.name} chose nothing")
    trials, epochs = read_trials(run_dir), read_epochs(run_dir)
    winner = _winner(run_dir)
    firsts = trials.sort_values("started_at", kind="stable").drop_duplicates("candidate")  # later ones replayed
    trained = trials[trials["trial_id"].isin(firsts["trial_id"])]
    first = firsts[firsts["candidate"] == winner["candidate"]].iloc[0]
    return {
        "searcher_seed": searcher_seed,
        "pick": winner["candidate"],
        "finalists": [winner["candidate"], *winner.get("finalists", [])],
        "winner_val": float(first[f"{job.objective}_last"]),
        "trial_epochs": int(trained["epochs"].sum()),
        "distinct_trained": int(trained["candidate"].nunique()),
        "trial_seconds": float(trained["wall_s"].sum()),
        "search_wall_s": json.loads((run_dir / "bench-wall.json").read_text())["wall_s"]
        if (run_dir / "bench-wall.json").is_file()
        else None,
        "branch_test_top1": _branch_test_accuracy(regime, job, run_dir / f"trial_{first['trial_id']}", winner)
        if job.branch is not None
        else None,
        "trials": trials.drop(columns=["started_at", "ended_at"]).to_dict("records"),
        "epochs": epochs.to_dict("records"),
    }


def _check_cached_job(run_dir: Path, job: JobSpec) -> None:
    """Raise when ``run_dir`` holds a search of another job than ``job`` (say, of an earlier default selection),
    whose cached winner must not be read as this job's; the folder's name aside, every field is compared, the search
    space and a validation folder by their names."""
    import yaml

    path = run_dir / "job.yaml"
    if not path.is_file():
        return
    started, current = yaml.safe_load(path.read_text()), job.model_dump(mode="json")
    for fields in (started, current):  # the folder's name; paths by their last part (worktrees resolve them elsewhere)
        fields["name"], fields["search_space"] = None, Path(fields["search_space"]).name
        fields["data"]["val_pool"] = Path(fields["data"]["val_pool"]).name  # as _pool_label
    changed = [key for key in current if current[key] != started.get(key)]
    if changed:
        raise RuntimeError(f"{run_dir} holds a search of another job ({', '.join(changed)} differ); move it away")


def _winner(run_dir: Path) -> dict:
    """The search's ``winner.yaml`` as a mapping."""
    import yaml

    return yaml.safe_load((run_dir / "winner.yaml").read_text())


def _branch_test_accuracy(regime, job: JobSpec, trial_dir: Path, winner: dict) -> float | None:
    """Test top-1 of the winning branch's own student (the last checkpoint in its ``trial_dir``) on the regime's
    test set (:func:`bench.runs.test_set`), the model the search's final training reproduces; None when its
    checkpoint is gone. ``winner``: the search's winner.yaml."""
    from daq_search.student import build_student

    states = sorted(trial_dir.glob(f"checkpoint_*/{TRIAL_STATE_FILE}"))
    if not states:
        return None
    bundle = job.load_data()
    teacher = load_teacher(winner["teacher"]["checkpoint"], job.teacher, bundle)
    student = build_student(job.student, job.quant, bundle, teacher, seed=job.teacher.seed)
    student.load_state_dict(load_state(states[-1], "branch")["model"])
    accuracy, _ = evaluate(student, eval_loader(test_set(regime), bundle))
    return accuracy


def ground_truth(regime, candidates: list[str], work: Path, log, jobs: int = 2) -> dict[str, list[float]]:
    """Test top-1 (%) of each candidate trained alone to the full budget, one per ground-truth seed (cached in
    ``work/shipped-gt.json``)."""
    cache_file = work / "shipped-gt.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    todo = [Job("student", regime, c, s) for c in candidates for s in regime.seeds]
    todo = [job for job in todo if job.key() not in cache]
    if todo:
        log(f"ground truth: {len(todo)} full trainings")
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for key, result in pool.imap_unordered(_run_gt, [(job, str(work)) for job in todo]):
                cache[key] = result
                cache_file.write_text(json.dumps(cache))
                log(f"ground truth: {key}: {100 * result['test_top1']:.2f} %")
    return {c: [100 * cache[Job("student", regime, c, s).key()]["test_top1"] for s in regime.seeds] for c in candidates}


BASELINE = "baseline"
"""The entry of :func:`delivered_truth` for the final training's baseline, trained alone from scratch."""


def delivered_truth(
    regime, picks: list[str], work: Path, log, jobs: int = 2, trunk: str = DEFAULT_TRUNK
) -> dict[str, list[dict[str, float]]]:
    """Test and validation top-1 (%, ``test`` and ``val``; validation on the shipped job's pool) of each pick as the
    product's final training delivers it, one per ground-truth seed: a student trained under ``trunk`` to the
    branch epoch of the full recipe, then continued under the pick to the end; under :data:`BASELINE` the same for
    the job's baseline trained alone from scratch (cached in ``work/shipped-delivered.json``)."""
    cache_file = work / "shipped-delivered.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    wanted = [*picks, BASELINE]
    todo = [(s, [p for p in wanted if _delivered_key(regime, p, s, trunk) not in cache]) for s in regime.seeds]
    todo = [(regime.name, seed, missing, str(work), trunk) for seed, missing in todo if missing]
    if todo:
        log(f"delivered truth: {sum(len(t[2]) for t in todo)} trainings over {len(todo)} seeds")
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for results in pool.imap_unordered(_run_delivered, todo):
                cache.update(results)
                cache_file.write_text(json.dumps(cache))
                log(f"delivered truth: {json.dumps(results)}")
    return {p: [cache[_delivered_key(regime, p, s, trunk)] for s in regime.seeds] for p in wanted}


def _delivered_key(regime, pick: str, seed: int, trunk: str = DEFAULT_TRUNK) -> str:
    job = shipped_job(regime, 0, trunk)
    if pick == BASELINE:
        return _alone_key(regime, job.final.baseline, seed)
    return f"{regime.name}|{regime.key()}|{_pool_label(job)}|{job.branch.trunk}|{job.branch.at}|{pick}|{seed}"


def _alone_key(regime, candidate: str, seed: int) -> str:
    """The cache key of ``candidate`` trained alone from scratch on ground-truth ``seed`` and read on the shipped
    jobs' validation pool (the baseline's runs among them)."""
    return f"{regime.name}|{regime.key()}|{_pool_label(shipped_job(regime, 0))}|{candidate} alone|{seed}"


def alone_truth(regime, candidates: list[str], work: Path, log, jobs: int = 2) -> dict[str, list[dict[str, float]]]:
    """Test and validation top-1 (%, ``test`` and ``val``; validation on the shipped job's pool) of each candidate
    trained alone from scratch to the full budget, one per ground-truth seed, as the final training trains a
    finalist of independent trials (cached with the delivered runs, the baseline's shared)."""
    cache_file = work / "shipped-delivered.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    todo = [(s, [c for c in candidates if _alone_key(regime, c, s) not in cache]) for s in regime.seeds]
    todo = [(regime.name, seed, [c], str(work)) for seed, missing in todo for c in missing]
    if todo:
        log(f"alone truth: {len(todo)} trainings")
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for results in pool.imap_unordered(_run_alone, todo):
                cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
                cache.update(results)
                cache_file.write_text(json.dumps(cache))
                log(f"alone truth: {json.dumps(results)}")
    return {c: [cache[_alone_key(regime, c, s)] for s in regime.seeds] for c in candidates}


def _run_alone(args: tuple[str, int, list[str], str]) -> dict[str, dict[str, float]]:
    name, seed, candidates, work = args
    torch.set_num_threads(1)
    regime = build_regime(name)
    write_planted_validation(regime)
    val = shipped_job(regime, 0).load_data()
    results = {}
    for candidate in candidates:
        training = student_training(
            Job("student", regime, candidate, seed), Path(work), "cpu", regime.recipe.epochs, read=False
        )
        for epoch in range(1, regime.recipe.epochs + 1):
            training.train_epoch(epoch)
        results[_alone_key(regime, candidate, seed)] = _reading(regime, val, training.student)
    return results


def _reading(regime, val, student) -> dict[str, float]:
    """Test top-1 on the regime's test set and validation top-1 on the job's pool ``val`` (a DataBundle), in %."""
    test, _ = evaluate(student, eval_loader(test_set(regime), student_bundle(regime)))
    validation, _ = evaluate(student, eval_loader(val.val, val))
    return {"test": 100 * test, "val": 100 * validation}


def _run_delivered(args: tuple[str, int, list[str], str, str]) -> dict[str, dict[str, float]]:
    name, seed, wanted, work, trunk_policy = args
    torch.set_num_threads(1)
    regime = build_regime(name)
    write_planted_validation(regime)
    job = shipped_job(regime, 0, trunk_policy)
    val = job.load_data()
    epochs = regime.recipe.epochs

    def training(candidate: str):
        return student_training(Job("student", regime, candidate, seed), Path(work), "cpu", epochs, read=False)

    results = {}
    if BASELINE in wanted:
        baseline = training(job.final.baseline)
        for epoch in range(1, epochs + 1):
            baseline.train_epoch(epoch)
        results[_delivered_key(regime, BASELINE, seed, trunk_policy)] = _reading(regime, val, baseline.student)
    picks = [p for p in wanted if p != BASELINE]
    if not picks:
        return results
    trunk_end = branch_epoch(epochs, job.branch.at)
    trunk = training(job.branch.trunk)
    for epoch in range(1, trunk_end + 1):
        trunk.train_epoch(epoch)
    state = trunk.state_dict()
    for pick in picks:
        branch = training(pick)
        branch.load_state_dict(copy.deepcopy(state))  # the optimiser keeps the tensors it is given
        for epoch in range(trunk_end + 1, epochs + 1):
            branch.train_epoch(epoch)
        results[_delivered_key(regime, pick, seed, trunk_policy)] = _reading(regime, val, branch.student)
    return results


def _run_gt(args: tuple[Job, str]) -> tuple[str, dict]:
    job, work = args
    torch.set_num_threads(1)
    return job.key(), run_student(job, Path(work), "cpu")


def summarise(
    regime,
    searches: list[dict],
    truth: dict[str, list[float]],
    ladder_means: dict[str, float],
    delivered: dict[str, list[dict[str, float]]],
    trunk_policy: str = DEFAULT_TRUNK,
    elsewhere: tuple[dict[str, list[float]], list[float]] = ({}, []),
) -> dict:
    """``shipped_search`` of searches from a ``trunk_policy`` trunk: the rule, searcher seeds, picks, regret per
    seed (pp, against the best of the ladder's committed means, the picks' means and the other recorded searches'
    picks' means, each trained alone: ``elsewhere[0]``); the same for the picks as the final training delivers
    them (trunk continued under the pick) and for the model it ships (the delivered pick, or the baseline trained
    alone where its validation beats the winning branch's reading: :func:`_shipped_runs`), both against the best of
    every candidate alone, every pick delivered and every search's shipped mean (here, and elsewhere:
    ``elsewhere[1]``, means in %); and cost (trained branch epochs as a share of a full sweep of the ladder; see
    :func:`daq_search.selection.branching_cost`)."""
    alone_elsewhere, delivered_elsewhere = elsewhere
    means = {**ladder_means, **{c: float(np.mean(v)) for c, v in {**alone_elsewhere, **truth}.items()}}
    best = max(means.values())
    delivered_means = {c: _mean_test(runs) for c, runs in delivered.items()}
    shipped = [_shipped_runs(delivered[s["pick"]], delivered[BASELINE], s["winner_val"]) for s in searches]
    shipped_means = [_mean_test(runs) for runs in shipped]
    best_delivered = max([best, *delivered_means.values(), *shipped_means, *delivered_elsewhere])
    job = shipped_job(regime, 0, trunk_policy)
    epochs, at, ladder = job.final.recipe.epochs, job.branch.at, len(regime.candidates)
    trunk = branch_epoch(epochs, at)
    costs = [(s["distinct_trained"] * (epochs - trunk)) / (ladder * epochs) for s in searches]
    return {
        "rule": f"late-phase branching: {job.branch.trunk} trunk to {at:.0%}, then {job.objective} at each branch's "
        f"end on {_pool_label(job)} validation, {job.searcher.num_samples} samples",
        "trunk": job.branch.trunk,
        "branch_at": at,
        "objective": job.objective,
        "num_samples": job.searcher.num_samples,
        "searcher_seeds": [s["searcher_seed"] for s in searches],
        "picks": [s["pick"] for s in searches],
        "pick_true_pct": [means[s["pick"]] for s in searches],
        "regret_pp": [best - means[s["pick"]] for s in searches],
        "delivered_pct": [delivered_means[s["pick"]] for s in searches],
        "delivered_regret_pp": [best_delivered - delivered_means[s["pick"]] for s in searches],
        "shipped_pct": shipped_means,
        "shipped_regret_pp": [best_delivered - mean for mean in shipped_means],
        "baseline_shipped": [sum(run["run"] == BASELINE for run in runs) for runs in shipped],
        "baseline_alone_pct": delivered_means[BASELINE],
        "delivered_rule": "each pick as the final training delivers it (the trunk trained under "
        f"{job.branch.trunk} to {at:.0%}, then continued under the pick), on the ground-truth seeds; 'shipped': the "
        f"delivered pick, or the {job.final.baseline} baseline trained alone where its {_pool_label(job)} validation "
        "accuracy beats the winning branch's own reading in the search (the product's final winner is a near copy of "
        "that branch; baseline_shipped counts those seeds); regrets "
        "against the best of every candidate trained alone, every pick delivered and every search's shipped mean",
        "best": max(means, key=means.get),
        "best_pct": best,
        "none_pct": means.get("none"),
        "branch_test_pct": [None if s["branch_test_top1"] is None else 100 * s["branch_test_top1"] for s in searches],
        "cost": costs,
        "cost_rule": "branch epochs the search trained beyond the one final training (trunk + the winner's branch), "
        f"as a share of a sweep of the {ladder} ladder candidates at {epochs} epochs; repeats replay, reads not "
        "counted (see trial_seconds for wall time)",
        "cost_single_sample_bound": branching_cost(epochs, at, ladder),
        "trial_seconds": [s["trial_seconds"] for s in searches],
        "search_wall_s": [s["search_wall_s"] for s in searches],
        "ground_truth_seeds": list(regime.seeds),
    }


def summarise_finalists(
    regime,
    searches: list[dict],
    alone: dict[str, list[dict[str, float]]],
    ladder_means: dict[str, float],
    finalists: int,
    elsewhere: tuple[dict[str, list[float]], list[float]] = ({}, []),
    finalists_by: str = "screen",
) -> dict:
    """``shipped_search_finalists`` (``shipped_search_strength`` with ``finalists_by`` strength) of the finalists
    method's searches: the rule, searcher seeds, each search's
    finalists (winner first) and pick; per search the winner trained alone and what the final training ships (per
    ground-truth seed the finalist or baseline run with the highest validation reading,
    :func:`daq_search.finalists.shipped_index`), each with its regret (pp) against the best of every candidate alone
    (the ladder's means, these runs and ``elsewhere[0]``), and every recorded search's delivered and shipped means
    (``elsewhere[1]``); and cost: the screen's trial epochs plus the finalists' full trainings beyond the one final
    training (the baseline is trained anyway), as a share of a sweep of the ladder."""
    alone_elsewhere, finished_elsewhere = elsewhere
    job = shipped_job(regime, 0, finalists=finalists, finalists_by=finalists_by)
    baseline = job.final.baseline
    alone_means = {c: _mean_test(runs) for c, runs in alone.items()}
    means = {**ladder_means, **{c: float(np.mean(v)) for c, v in alone_elsewhere.items()}, **alone_means}
    shipped = []
    for search in searches:
        runs = [alone[c] for c in search["finalists"]] + [alone[baseline]]
        names = [*search["finalists"], BASELINE]
        per_seed = []
        for seed_runs in zip(*runs, strict=True):
            index = shipped_index([run["val"] / 100 for run in seed_runs])
            per_seed.append({**seed_runs[index], "run": names[index]})
        shipped.append(per_seed)
    shipped_means = [_mean_test(runs) for runs in shipped]
    best = max([*means.values(), *shipped_means, *finished_elsewhere])
    epochs, ladder = job.final.recipe.epochs, len(regime.candidates)
    costs = [(s["trial_epochs"] + (len(s["finalists"]) - 1) * epochs) / (ladder * epochs) for s in searches]
    named = (
        f"the {finalists} candidates at the golden points of the strength order (the readings do not choose)"
        if finalists_by == "strength"
        else f"the winner and the best of each other strength tier ({finalists} finalists)"
    )
    return {
        "rule": f"finalists: {job.searcher.num_samples} independent trials of {job.trial.epochs} epochs "
        f"({job.trial.epochs / epochs:.0%}), {job.objective} at their end on {_pool_label(job)} validation; "
        f"{named} trained alone to the end beside the {baseline} baseline; the best on validation ships",
        "finalists": finalists,
        "num_samples": job.searcher.num_samples,
        "trial_epochs": job.trial.epochs,
        "searcher_seeds": [s["searcher_seed"] for s in searches],
        "picks": [s["pick"] for s in searches],
        "finalist_candidates": [s["finalists"] for s in searches],
        "pick_true_pct": [means[s["pick"]] for s in searches],
        "regret_pp": [best - means[s["pick"]] for s in searches],
        "shipped_pct": shipped_means,
        "shipped_regret_pp": [best - mean for mean in shipped_means],
        "shipped_runs": [[run["run"] for run in runs] for runs in shipped],
        "baseline_shipped": [sum(run["run"] == BASELINE for run in runs) for runs in shipped],
        "best_pct": best,
        "cost": costs,
        "cost_rule": "trial epochs the screen trained plus a full training per finalist beyond the one final "
        f"training, as a share of a sweep of the {ladder} ladder candidates at {epochs} epochs; the baseline is "
        "trained anyway; repeats replay, reads not counted",
        "trial_seconds": [s["trial_seconds"] for s in searches],
        "ground_truth_seeds": list(regime.seeds),
    }


def _mean_test(runs: list[dict]) -> float:
    """The mean test top-1 (%) of ``runs``, one per ground-truth seed."""
    return float(np.mean([run["test"] for run in runs]))


def _shipped_runs(pick_runs: list[dict], baseline_runs: list[dict], winner_val: float) -> list[dict]:
    """Per ground-truth seed, the run the final training ships: the baseline's where its validation accuracy beats
    ``winner_val`` (fraction), the winning branch's own reading in the search, as the product's final winner is a
    near copy of that branch; else the pick's. The baseline trains even when the pick is its candidate, as the
    pick continues the trunk."""
    return [
        {**base, "run": BASELINE} if shipped_index([winner_val, base["val"] / 100]) else {**pick, "run": "pick"}
        for pick, base in zip(pick_runs, baseline_runs, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the shipped search of one regime for each searcher seed, its picks' ground truth, and record both."""
    parser = argparse.ArgumentParser(prog="python -m bench.shipped", description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", help="the regime to measure (required unless --report-only)")
    parser.add_argument("--report-only", action="store_true", help="rewrite shipped.md from results.json, run nothing")
    parser.add_argument("--searcher-seeds", default=",".join(map(str, SEARCHER_SEEDS)))
    parser.add_argument("--work", default="bench/work/full")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--finalists",
        type=int,
        default=1,
        help="above 1: measure the finalists method with that many finalists (recorded under "
        "shipped_search_finalists) instead of late-phase branching",
    )
    parser.add_argument(
        "--finalists-by",
        choices=("screen", "strength"),
        default="screen",
        help="with --finalists: how the search names them (strength: recorded under shipped_search_strength)",
    )
    parser.add_argument(
        "--trunk",
        default=DEFAULT_TRUNK,
        help="the trunk's policy (default: the package's); another one is recorded under shipped_search_trunks",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        (out / "shipped.md").write_text("\n".join(shipped_lines(results["regimes"])))
        return 0
    if args.regime is None:
        parser.error("--regime is required unless --report-only")
    args.trunk = parse_candidate(args.trunk).id  # one spelling per trunk, as a job's branch.trunk has
    regime = build_regime(args.regime)
    work = Path(args.work).resolve()

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    entry = _regime_entry(out, regime.name)
    ladder_means = dict(zip(entry["candidates"], entry["mean_pct"], strict=True))
    seeds = [int(s) for s in args.searcher_seeds.split(",")]
    if args.finalists > 1:
        return _measure_finalists(
            regime, seeds, work, out, log, args.finalists, args.jobs, ladder_means, args.finalists_by
        )
    searches = [run_one_search(regime, seed, work, log, args.trunk) for seed in seeds]
    picks = sorted({s["pick"] for s in searches} - set(ladder_means))
    truth = ground_truth(regime, picks, work, log, args.jobs)
    delivered = delivered_truth(regime, sorted({s["pick"] for s in searches}), work, log, args.jobs, args.trunk)
    name = _measured_name(regime.name, args.trunk)
    elsewhere = _recorded_elsewhere(out / "shipped", regime, name)
    summary = summarise(regime, searches, truth, ladder_means, delivered, args.trunk, elsewhere)
    results = json.loads((out / "results.json").read_text())  # read again: other benches write it meanwhile
    entry = next(r for r in results["regimes"] if r["regime"] == regime.name)
    if args.trunk == DEFAULT_TRUNK:
        entry["shipped_search"] = summary
    else:
        entry.setdefault("shipped_search_trunks", {})[args.trunk] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "shipped.md").write_text("\n".join(shipped_lines(results["regimes"])))
    records = out / "shipped" / f"{name}.json.gz"
    records.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(records, "wt") as handle:
        record = {"regime_key": regime.key(), "ground_truth_seeds": list(regime.seeds), "searches": searches}
        json.dump({**record, "ground_truth_pct": truth, "delivered_pct": delivered}, handle, default=_plain)
    log(f"{name}: {json.dumps(summary)[:400]}")
    return 0


def _measure_finalists(
    regime, seeds, work, out, log, finalists: int, jobs: int, ladder_means, finalists_by: str = "screen"
) -> int:
    """The finalists method on ``regime``: its searches, its finalists and baseline trained alone, the summary in
    ``results.json`` (``shipped_search_finalists``, or ``shipped_search_strength`` for finalists named by strength)
    and ``shipped.md``, the records beside the others'."""
    searches = [
        run_one_search(regime, seed, work, log, finalists=finalists, finalists_by=finalists_by) for seed in seeds
    ]
    baseline = shipped_job(regime, 0, finalists=finalists).final.baseline
    alone = alone_truth(regime, sorted({c for s in searches for c in s["finalists"]} | {baseline}), work, log, jobs)
    name = _measured_name(regime.name, DEFAULT_TRUNK, finalists, finalists_by)
    elsewhere = _recorded_elsewhere(out / "shipped", regime, name)
    summary = summarise_finalists(regime, searches, alone, ladder_means, finalists, elsewhere, finalists_by)
    results = json.loads((out / "results.json").read_text())  # read again: other benches write it meanwhile
    entry = next(r for r in results["regimes"] if r["regime"] == regime.name)
    entry["shipped_search_strength" if finalists_by == "strength" else "shipped_search_finalists"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "shipped.md").write_text("\n".join(shipped_lines(results["regimes"])))
    record = {"regime_key": regime.key(), "ground_truth_seeds": list(regime.seeds), "searches": searches}
    with gzip.open(out / "shipped" / f"{name}.json.gz", "wt") as handle:
        json.dump({**record, "alone_pct": alone}, handle, default=_plain)
    log(f"{name}: {json.dumps(summary)[:400]}")
    return 0


def shipped_lines(regimes: list[dict]) -> list[str]:
    """``shipped.md``: the default's measurement first (``shipped_search_finalists``: per regime and searcher seed
    the finalists, the winner's test top-1 trained alone and what ships, each with its regret in pp, whose model
    shipped on each ground-truth seed, and the cost), then late-phase branching's (``shipped_search``: its pick's
    test top-1 trained alone, as delivered and as shipped, and the cost) and its other trunks'
    (``shipped_search_trunks``), each with its worst regrets."""
    lines = [
        "# daq-search benchmark: the search as it ships, end to end",
        "",
        "Written by `python -m bench.shipped` from `results.json`; per-run records in `shipped/`. Test top-1 in %",
        "(mean of the ground-truth seeds), regret in pp against the best any record of the regime found.",
        "",
    ]
    lines += [
        "Cost: epochs is the share of a full sweep of the ladder in trained epochs (trial epochs, plus a full training",
        "per finalist beyond the one final training; reads not counted); time is measured wall seconds on this",
        "machine as a share of the sweep's wall seconds (`sweep_wall_seconds`), so it counts every read, the DA",
        "score, and each trial's start-up: the trials' own seconds plus, per extra finalist, a sweep candidate's mean",
        "(branching: the search's seconds less one candidate's full training, which its final training reuses).",
        "",
    ]
    lines += _finalists_section(
        regimes,
        "shipped_search_finalists",
        "Finalists (the default; `--finalists 2`, `shipped_search_finalists`)",
        [
            "Independent trials of 10 % of the epochs screen the candidates; the winner and the best of the other",
            "strength tier train alone from scratch beside the `none` baseline, and the best on validation ships",
            "(per ground-truth seed; the shipped runs column counts whose model shipped on the seeds).",
        ],
    )
    lines += _finalists_section(
        regimes,
        "shipped_search_strength",
        "Finalists named by strength (`--finalists 2 --finalists-by strength`, `shipped_search_strength`)",
        [
            "The same screen, but the finalists are the candidates at the golden points of the strength order",
            "(`final.finalists_by: strength`; the readings do not choose); trained alone beside `none`, the best on",
            "validation ships. The winner column is the first of them, the one the trials rank higher.",
        ],
    )
    lines += [
        "## Late-phase branching (the former default; `shipped_search`)",
        "",
        "Alone: the pick trained alone from scratch; delivered: the trunk continued under the pick, as the final",
        "training does; shipped: what the final training ships (the delivered pick, or the baseline where its",
        "validation is higher).",
        "",
        *_shipped_table([(r, r["shipped_search"]) for r in regimes if "shipped_search" in r]),
    ]
    others = [(r, record) for r in regimes for record in r.get("shipped_search_trunks", {}).values()]
    if others:
        lines += [
            "## Late-phase branching from other trunks (`--trunk`, `shipped_search_trunks`)",
            "",
            *_shipped_table(others),
        ]
    return lines + _out_of_sample_lines(regimes)


METHODS = (
    ("finalists", "shipped_search_finalists"),
    ("finalists by strength", "shipped_search_strength"),
    ("late-phase branching", "shipped_search"),
)
"""The selection methods measured end to end, by name and ``results.json`` key, in the order a tie goes."""


def leave_one_regime_out(regimes: list[dict]) -> list[dict]:
    """The choice among :data:`METHODS` judged out of sample: for each regime that holds every method, the method
    with the lowest worst shipped regret (pp) over the other such regimes (ties: the lower mean, then the order of
    :data:`METHODS`), and that method's shipped regrets on the held-out regime. Empty with fewer than 2 regimes."""
    complete = [r for r in regimes if all(key in r for _, key in METHODS)]
    if len(complete) < 2:
        return []
    folds = []
    for held_out in complete:
        scores = []
        for index, (_, key) in enumerate(METHODS):
            regrets = [x for r in complete if r is not held_out for x in r[key]["shipped_regret_pp"]]
            scores.append((max(regrets), float(np.mean(regrets)), index))
        worst, mean, index = min(scores)
        name, key = METHODS[index]
        folds.append(
            {
                "held_out": held_out["regime"],
                "method": name,
                "in_sample_worst_pp": worst,
                "in_sample_mean_pp": mean,
                "held_out_regret_pp": list(held_out[key]["shipped_regret_pp"]),
            }
        )
    return folds


def _out_of_sample_lines(regimes: list[dict]) -> list[str]:
    """The ``shipped.md`` section of :func:`leave_one_regime_out`: a row per held-out regime and the worst and mean
    of the held-out regrets; nothing without folds."""
    folds = leave_one_regime_out(regimes)
    if not folds:
        return []
    held_out = [x for fold in folds for x in fold["held_out_regret_pp"]]
    rows = [
        f"| {fold['held_out']} | {fold['method']} | {fold['in_sample_worst_pp']:.2f} / {fold['in_sample_mean_pp']:.2f} "
        f"| {', '.join(f'{x:.2f}' for x in fold['held_out_regret_pp'])} |"
        for fold in folds
    ]
    return [
        "## The choice of method, out of sample (leave one regime out)",
        "",
        "For each regime held out, the method with the lowest worst shipped regret on the other regimes (ties: the",
        "lower mean, then the order finalists, by strength, branching), and its shipped regret per searcher seed on",
        "the held-out regime, in pp.",
        "",
        "| held out | chosen on the others | their worst / mean | held-out regret per searcher seed |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Out of sample: worst {max(held_out):.2f} pp, mean {np.mean(held_out):.2f} pp over the "
        f"{len(held_out)} searches of the {len(folds)} held-out regimes.",
        "",
    ]


def time_cost(record: dict, regime: dict, i: int) -> float | None:
    """The measured wall seconds search ``i`` of a ``shipped_search*`` ``record`` of ``regime`` (its
    ``results.json`` entry) costs beyond the one final training, as a share of a full sweep's
    (``sweep_wall_seconds``): the trials' seconds plus, per finalist beyond the first, a sweep candidate's mean; for
    branching (no ``finalist_candidates``) the trials' seconds less that mean, the trunk and one branch being what
    its final training reuses. None where the regime has no sweep time."""
    sweep = regime.get("sweep_wall_seconds")
    if not sweep:
        return None
    per_candidate = sweep / len(regime["candidates"])
    if "finalist_candidates" in record:
        beyond_trials = (len(record["finalist_candidates"][i]) - 1) * per_candidate
    else:
        beyond_trials = -per_candidate
    return (record["trial_seconds"][i] + beyond_trials) / sweep


def _finalists_section(regimes: list[dict], key: str, title: str, intro: list[str]) -> list[str]:
    """The ``shipped.md`` section of a finalists method recorded under ``key``: its ``title`` heading, ``intro``
    lines and :func:`_finalists_table` of the regimes that hold it; nothing when none does."""
    rows = [(r, r[key]) for r in regimes if key in r]
    return [f"## {title}", "", *intro, "", *_finalists_table(rows)] if rows else []


def _finalists_table(records: list[tuple[dict, dict]]) -> list[str]:
    """The rows of the finalists section of :func:`shipped_lines` for ``(regime entry, shipped_search_finalists)``
    pairs, and their worst regrets."""

    def row(regime: dict, record: dict, i: int) -> str:
        return (
            f"| {regime['regime']} | {record['searcher_seeds'][i]} | {', '.join(record['finalist_candidates'][i])} "
            f"| {record['pick_true_pct'][i]:.2f} ({record['regret_pp'][i]:.2f}) "
            f"| {record['shipped_pct'][i]:.2f} ({record['shipped_regret_pp'][i]:.2f}) "
            f"| {_counted(record['shipped_runs'][i])} | {_costs(record, regime, i)} |"
        )

    header = (
        "| regime | searcher seed | finalists | winner alone (regret) | shipped (regret) | shipped runs "
        "| cost: epochs / time |"
    )
    worst = {"regret_pp": "winner alone", "shipped_regret_pp": "shipped"}
    return _regret_table(records, header, row, worst)


def _shipped_table(records: list[tuple[dict, dict]]) -> list[str]:
    """The rows of :func:`shipped_lines` for ``(regime entry, shipped_search)`` pairs, and their worst regrets."""
    if not records:
        return ["No regime has a measured shipped search yet.", ""]

    def row(regime: dict, record: dict, i: int) -> str:
        return (
            f"| {regime['regime']} | {record['trunk']} | {record['searcher_seeds'][i]} | {record['picks'][i]} "
            f"| {record['pick_true_pct'][i]:.2f} ({record['regret_pp'][i]:.2f}) "
            f"| {record['delivered_pct'][i]:.2f} ({record['delivered_regret_pp'][i]:.2f}) "
            f"| {record['shipped_pct'][i]:.2f} ({record['shipped_regret_pp'][i]:.2f}) "
            f"| {record['baseline_shipped'][i]} of {len(record['ground_truth_seeds'])} | {_costs(record, regime, i)} |"
        )

    header = (
        "| regime | trunk | searcher seed | pick | alone (regret) | delivered (regret) | shipped (regret) "
        "| baseline shipped | cost: epochs / time |"
    )
    worst = {"regret_pp": "alone", "delivered_regret_pp": "delivered", "shipped_regret_pp": "shipped"}
    return _regret_table(records, header, row, worst)


def _costs(record: dict, regime: dict, i: int) -> str:
    """The cost cell of search ``i``: its epochs cost and its :func:`time_cost` (``n/a`` without a sweep time)."""
    seconds = time_cost(record, regime, i)
    return f"{record['cost'][i]:.2f} / " + ("n/a" if seconds is None else f"{seconds:.2f}")


def _regret_table(records: list[tuple[dict, dict]], header: str, row, worst_labels: dict[str, str]) -> list[str]:
    """A markdown table: ``header``, its separator, ``row(regime entry, record, i)`` for each searcher seed ``i`` of
    each ``(regime entry, record)``, then one line with the worst of each regret field over them (``worst_labels``:
    field -> label, in order)."""
    lines = [header, "|---" * header.count(" | ") + "|---|"]
    worst = dict.fromkeys(worst_labels, 0.0)
    for regime, record in records:
        lines += [row(regime, record, i) for i in range(len(record["searcher_seeds"]))]
        for name in worst:
            worst[name] = max(worst[name], *record[name])
    regimes = _count(len({regime["regime"] for regime, _ in records}), "regime")
    measured = ", ".join(f"{label} {worst[name]:.2f} pp" for name, label in worst_labels.items())
    return [*lines, "", f"Worst regret over the {regimes} measured: {measured}.", ""]


def _recorded_elsewhere(folder: Path, regime, own: str) -> tuple[dict[str, list[float]], list[float]]:
    """From the records in ``folder`` of ``regime``'s searches other than ``own`` (other trunks' and the finalists
    method's), written for its current config and ground-truth seeds: each candidate's test top-1 alone (% per
    ground-truth seed), and the mean (%) of each delivered pick and of what each branching search shipped, so that
    every search of a regime is judged against the same best."""
    alone: dict[str, list[float]] = {}
    finished: list[float] = []
    for path in sorted(folder.glob(f"{regime.name}*.json.gz")):
        name = path.name.removesuffix(".json.gz")
        if name == own or not (name == regime.name or name.startswith(f"{regime.name}--")):
            continue
        with gzip.open(path, "rt") as handle:
            record = json.load(handle)
        if (record.get("regime_key"), record.get("ground_truth_seeds")) != (regime.key(), list(regime.seeds)):
            continue
        if "alone_pct" in record:  # the finalists method's: every finalist trained alone
            alone.update({c: [run["test"] for run in runs] for c, runs in record["alone_pct"].items()})
            continue
        alone.update(record["ground_truth_pct"])
        delivered = record["delivered_pct"]
        picks = [runs for pick, runs in delivered.items() if pick != BASELINE]
        shipped = [
            _shipped_runs(delivered[s["pick"]], delivered[BASELINE], s["winner_val"]) for s in record["searches"]
        ]
        finished += [_mean_test(runs) for runs in [*picks, *shipped]]
    return alone, finished


def _counted(names: list[str]) -> str:
    """``names`` as each distinct name with its count, in order of first appearance: ``a x2, b``."""
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _regime_entry(out: Path, name: str) -> dict:
    """The committed summary of regime ``name`` in ``out/results.json``."""
    results = json.loads((out / "results.json").read_text())
    return next(r for r in results["regimes"] if r["regime"] == name)


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
