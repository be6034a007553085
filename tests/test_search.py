"""Searches end to end on a real loopback Ray: ASHA prunes and completes trials, the Parquet tables and the winner
file come out right, a diverging trial is recorded as failed, a finished search resumes to itself, and the
teacher-only ranking."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from daq_search.config import load_job
from daq_search.errors import DaqSearchError
from daq_search.finalists import choose_finalists
from daq_search.logs import PACKAGE_LOGGER
from daq_search.results import EPOCHS_SCHEMA, best_trial, read_epochs, read_trials, trials_schema
from daq_search.runtime import ray_session
from daq_search.search import knob_types, plan_search, run_search, score_space, t_stddev_batch_size


class _Lines(logging.Handler):
    """Collects the messages of the package's progress records."""

    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def progress_lines() -> Iterator[list[str]]:
    """The progress lines the package logs while the body runs (for module-scoped fixtures, where ``caplog`` is
    not available)."""
    lines: list[str] = []
    logger, handler = logging.getLogger(PACKAGE_LOGGER), _Lines(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


MILD = "none"
HARSH = ["autoaugment(policy=svhn)+cutmix(alpha=1.0)", "randaugment(magnitude=20,num_ops=3)+mixup(alpha=1.0)"]


def write_space(folder: Path) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "candidates": [MILD, *HARSH]}))
    return path


def write_job(folder: Path, **changes) -> Path:
    """A search ASHA can prune: one trial at a time, the mild candidate first, and an objective known from the first
    epoch on (the teacher's cross-entropy on the augmented images), from which a test recomputes ASHA's decisions."""
    job = {
        "name": "tiny",
        "data": {"name": "digits", "train_per_class": 20, "val_per_class": 5},
        "teacher": {"model": "tiny_cnn", "recipe": {"epochs": 40, "batch_size": 50, "lr": 0.01}},
        "student": {"model": "tiny_cnn"},
        "search_space": str(write_space(folder)),
        "scorer": {"subset": 60, "batch_size": 60},
        "trial": {"epochs": 2, "batch_size": 50},
        "searcher": {"num_samples": 3, "points_to_evaluate": [MILD, *HARSH]},
        "scheduler": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "objective": "teacher_sample_ce",
        "storage": str(folder / "runs"),
    }
    for key, value in changes.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) else value
    path = folder / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def ray_up():
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def finished_search(ray_up, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    plan = plan_search(write_job(folder))
    with progress_lines() as lines:
        outcome = run_search(plan, summary_every_s=0.0)
    return plan, outcome, lines


def asha_statuses(trials: pd.DataFrame, epochs: pd.DataFrame, objective: str) -> dict[str, str]:
    """What ASHA (grace period 1, reduction factor 2, 2 epochs, mode min) must decide for trials run one at a time
    in start order, from the epoch-1 values the run recorded: a trial stops at epoch 1 when its value is worse than
    the median of the epoch-1 values before it (Ray's ``_Bracket.cutoff``, rewards negated for min)."""
    first = epochs[epochs["epoch"] == 1].set_index("trial_id")[objective]
    recorded, statuses = [], {}
    for trial_id in trials.sort_values("started_at")["trial_id"]:
        reward = -first[trial_id]
        stop = bool(recorded) and reward < np.nanpercentile(recorded, 50)
        statuses[trial_id] = "pruned" if stop else "completed"
        recorded.append(reward)
    return statuses


@pytest.mark.slow
def test_search_completes_and_prunes(finished_search):
    plan, outcome, lines = finished_search
    assert outcome.finished and outcome.run_dir == plan.storage / "tiny"
    trials, epochs = read_trials(outcome.run_dir), read_epochs(outcome.run_dir)
    assert len(trials) == 3 and sorted(trials["candidate"]) == sorted([MILD, *HARSH])
    # which trials ASHA stops depends on the teacher's numbers; that it applies its rule to them does not
    expected = asha_statuses(trials, epochs, "teacher_sample_ce")
    assert dict(zip(trials["trial_id"], trials["status"], strict=True)) == expected
    assert trials.sort_values("started_at")["candidate"].iloc[0] == MILD  # points_to_evaluate go first
    assert (trials["epochs"] == trials["status"].map({"pruned": 1, "completed": 2})).all()
    harsh = trials[trials["candidate"] == HARSH[0]].iloc[0]
    mild = trials[trials["candidate"] == MILD].iloc[0]
    assert harsh["policy"] == "autoaugment" and harsh["autoaugment.policy"] == "svhn" and harsh["cutmix.alpha"] == 1.0
    assert pd.isna(mild["cutmix.alpha"]) and mild["mix"] == "none"
    for column in ("score_last", "cmi_best", "val_acc_last", "t_stddev_last", "images_per_s_last", "wall_s"):
        assert trials[column].notna().all(), column
    assert ((trials["val_acc_best"] >= 0) & (trials["val_acc_best"] <= 1)).all()
    assert trials["error"].isna().all() and (trials["ended_at"] >= trials["started_at"]).all()
    best = best_trial(trials, "teacher_sample_ce", "min")
    assert any(
        line.startswith("trials: ") and f"best so far: {best['candidate']} teacher_sample_ce=" in line for line in lines
    )
    for _, row in trials.iterrows():
        assert any(f" {row['status']} after {row['epochs']}/2 epochs: {row['candidate']} " in line for line in lines)


@pytest.mark.slow
def test_tables_match_their_schemas_and_each_other(finished_search):
    plan, outcome, _ = finished_search
    schema = pq.read_schema(outcome.run_dir / "trials.parquet").remove_metadata()
    assert schema == trials_schema(knob_types(plan.space)).remove_metadata()
    assert {"autoaugment.policy", "randaugment.num_ops", "mixup.alpha"} <= set(schema.names)
    assert pq.read_schema(outcome.run_dir / "trial_epochs.parquet").remove_metadata() == EPOCHS_SCHEMA
    trials, epochs = read_trials(outcome.run_dir), read_epochs(outcome.run_dir)
    counted = epochs.groupby("trial_id")["epoch"].max()
    assert counted.to_dict() == dict(zip(trials["trial_id"], trials["epochs"], strict=False))
    last = epochs.sort_values("epoch").groupby("trial_id").last()
    for _, row in trials.iterrows():
        assert last.loc[row["trial_id"], "score"] == pytest.approx(row["score_last"])
        assert epochs[epochs["trial_id"] == row["trial_id"]]["score"].min() == pytest.approx(row["score_best"])


@pytest.mark.slow
def test_winner_file_is_a_trainable_job(finished_search):
    plan, outcome, _ = finished_search
    winner = load_job(outcome.winner_file)
    assert outcome.winner_file == outcome.run_dir / "winner.yaml"
    assert winner.candidate == best_trial(read_trials(outcome.run_dir), "teacher_sample_ce", "min")["candidate"]
    assert Path(winner.teacher.checkpoint).is_file()
    assert Path(winner.teacher.checkpoint).parent == plan.storage / "teachers"
    same = {"candidate", "teacher", "finalists"}
    assert winner.model_dump(exclude=same) == plan.job.model_dump(exclude=same)
    trials = read_trials(outcome.run_dir)
    expected = choose_finalists(trials, "teacher_sample_ce", "min", plan.job.final.finalists, [plan.job.final.baseline])
    assert [winner.candidate, *winner.finalists] == expected and len(expected) == 2  # the default: two finalists


@pytest.mark.slow
def test_rerun_refused_and_resume_of_a_finished_search_reruns_nothing(finished_search):
    plan, outcome, _ = finished_search
    before = read_trials(outcome.run_dir)
    with pytest.raises(DaqSearchError, match="a search already ran here; continue it with --resume"):
        run_search(plan)
    with progress_lines() as lines:
        again = run_search(plan, resume=True)
    assert again.finished
    after = read_trials(outcome.run_dir)
    pd.testing.assert_frame_equal(before, after)
    assert not any(" started: " in line or " resumed: " in line for line in lines)


@pytest.mark.slow
def test_resume_with_a_changed_job_is_refused(finished_search):
    plan, outcome, _ = finished_search
    before = read_trials(outcome.run_dir)
    changed = plan_search(write_job(plan.storage.parent, trial={"epochs": 3}))
    assert changed.run_dir == outcome.run_dir
    with pytest.raises(DaqSearchError, match=r"--resume: the job's trial differ from the search started in "):
        run_search(changed, resume=True)
    pd.testing.assert_frame_equal(before, read_trials(outcome.run_dir))  # nothing ran, nothing was rewritten


@pytest.mark.slow
def test_a_repeated_candidate_replays_the_first_trial_instead_of_training(ray_up, tmp_path, caplog):
    space = tmp_path / "one.yaml"
    space.write_text(yaml.safe_dump({"name": "one", "candidates": [MILD]}))
    path = write_job(
        tmp_path,
        name="repeat",
        search_space=str(space),
        searcher={"num_samples": 3, "points_to_evaluate": []},
        scheduler={"enabled": False},
        max_concurrent_trials=2,  # the second trial starts while the first trains, and waits for it
    )
    caplog.set_level(logging.INFO, logger=PACKAGE_LOGGER)
    outcome = run_search(plan_search(path))
    lines = [record.getMessage() for record in caplog.records if record.name.startswith(PACKAGE_LOGGER)]
    trials = read_trials(outcome.run_dir).sort_values("started_at")
    epochs = read_epochs(outcome.run_dir)
    assert outcome.finished and list(trials["candidate"]) == [MILD] * 3
    assert (trials["status"] == "completed").all() and (trials["epochs"] == 2).all()
    proposed_before = {
        trial_id
        for trial_id in trials["trial_id"]
        if any(f"trial {trial_id} started: {MILD} (proposed before" in line for line in lines)
    }
    (first,) = set(trials["trial_id"]) - proposed_before  # whichever of them Ray happened to start first
    repeats = sorted(proposed_before)
    assert len(repeats) == 2
    trained = epochs[epochs["trial_id"] == first].drop(columns="trial_id").reset_index(drop=True)
    for repeat in repeats:  # the same rows, measured throughput included: nothing was trained again
        replayed = epochs[epochs["trial_id"] == repeat].drop(columns="trial_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(trained, replayed)
        assert any(f"trial {repeat} started: {MILD} (proposed before: replays" in line for line in lines)


@pytest.mark.slow
def test_max_failures_retries_a_failed_trial_once_and_records_both_attempts(ray_up, tmp_path, caplog):
    diverging = {"epochs": 1, "optimizer": "sgd", "lr": 1.0e30}
    path = write_job(tmp_path, name="retry", trial=diverging, searcher={"num_samples": 1}, max_failures=1)
    caplog.set_level(logging.INFO, logger=PACKAGE_LOGGER)
    outcome = run_search(plan_search(path))
    lines = [record.getMessage() for record in caplog.records if record.name.startswith(PACKAGE_LOGGER)]
    trials = read_trials(outcome.run_dir)
    assert list(trials["status"]) == ["failed"]
    loss = r"FloatingPointError: training loss became (nan|inf)[^;]*"
    assert trials["error"].str.fullmatch(rf"attempt 1: {loss}; attempt 2: {loss}").all(), trials["error"].iloc[0]
    trial_id = trials["trial_id"].iloc[0]
    assert sum(f"trial {trial_id} attempt 1 failed, retrying from its last checkpoint: " in line for line in lines) == 1
    assert sum(f"trial {trial_id} failed: " in line for line in lines) == 1


@pytest.mark.slow
def test_diverging_trials_are_recorded_as_failed(ray_up, tmp_path, caplog):
    diverging = {"epochs": 1, "optimizer": "sgd", "lr": 1.0e30}  # the first SGD step overflows the weights
    path = write_job(tmp_path, name="diverge", trial=diverging, searcher={"num_samples": 2})
    caplog.set_level(logging.INFO, logger=PACKAGE_LOGGER)
    outcome = run_search(plan_search(path))
    lines = [record.getMessage() for record in caplog.records if record.name.startswith(PACKAGE_LOGGER)]
    assert outcome.finished and outcome.winner_file is None
    trials = read_trials(outcome.run_dir)
    assert list(trials["status"]) == ["failed", "failed"]
    assert trials["error"].str.match(r"FloatingPointError: training loss became (nan|inf)").all()
    assert (trials["epochs"] == 0).all()
    assert sum(" failed: " in line for line in lines) == 2


def test_t_stddev_batch_gives_enough_groups():
    from daq_search.config import ScorerConfig

    scorer = ScorerConfig(subset=512, batch_size=256, t_stddev_group=5, t_stddev_epochs=2)
    batch = t_stddev_batch_size(512, scorer)
    assert batch == 20 and 2 * -(-512 // batch) // 5 >= 10
    assert t_stddev_batch_size(100_000, scorer) == 256


@pytest.mark.slow
def test_teacher_only_ranking(tmp_path):
    path = write_job(tmp_path, name="score", objective="score")
    table, parquet = score_space(path)
    assert list(table.columns) == ["candidate", "score", "score_ce", "cmi", "align", "sample_ce", "t_stddev"]
    assert sorted(table["candidate"]) == sorted([MILD, *HARSH])
    assert table["score"].is_monotonic_increasing
    assert parquet == tmp_path / "runs" / "score" / "teacher_scores.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), table)
    by_ce = write_job(tmp_path, name="score", objective="teacher_sample_ce")
    ranked, _ = score_space(by_ce)
    assert ranked["sample_ce"].is_monotonic_increasing and sorted(ranked["candidate"]) == sorted([MILD, *HARSH])


@pytest.mark.slow
def test_teacher_on_a_larger_split_is_trained_on_it_and_cached_under_its_key(tmp_path):
    from daq_search.data import load_data
    from daq_search.teacher import teacher_cache_path

    path = write_job(
        tmp_path, name="bigger", teacher={"recipe": {"epochs": 2, "batch_size": 50}, "train_per_class": 60}
    )
    job = load_job(path)
    score_space(path)
    teachers = tmp_path / "runs" / "teachers"
    assert sorted(teachers.iterdir()) == [teacher_cache_path(job.teacher_data(), job.teacher, teachers)]
    assert not teacher_cache_path(job.data, job.teacher, teachers).exists()
    plan = plan_search(path)
    assert plan.bundle.mean == load_data(job.teacher_data().spec()).mean  # the teacher split's normalisation
    assert len(plan.bundle.train) == 10 * 20


@pytest.mark.slow
def test_score_cli_ranks_the_space_given_with_space(tmp_path, capsys):
    from daq_search.cli import main

    other = tmp_path / "other.yaml"
    listed = ["trivialaugment", "random_erasing(p=0.3)", "none+mixup(alpha=0.4)"]
    other.write_text(yaml.safe_dump({"name": "other", "candidates": listed}))
    path = write_job(tmp_path, name="scored", teacher={"recipe": {"epochs": 2, "batch_size": 50, "lr": 0.01}})
    assert main(["score", str(path), "--space", str(other), "--name", "by-cli"]) == 0
    out = capsys.readouterr().out
    written = pd.read_parquet(tmp_path / "runs" / "by-cli" / "teacher_scores.parquet")
    assert sorted(written["candidate"]) == sorted(listed)  # the --space file's candidates, not the job's
    assert written["sample_ce"].is_monotonic_increasing  # the job's objective, teacher_sample_ce, sorts them
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["candidate", "score"])  # after the log
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == list(written["candidate"])
    assert f"wrote {tmp_path / 'runs' / 'by-cli' / 'teacher_scores.parquet'}" in out


def test_candidate_sampler_hands_trials_the_candidate_id():
    import optuna

    from daq_search.candidates import parse_candidate
    from daq_search.search import CANDIDATE_KEY, REPEAT_KEY, CandidateSampler
    from daq_search.spaces import load_search_space

    space = load_search_space(Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml")
    sampler = CandidateSampler(space)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    wanted = parse_candidate("randaugment(magnitude=12,num_ops=3)+cutmix(alpha=0.5)")
    study.enqueue_trial(space.params_of(wanted))
    assert sampler(study.ask()) == {CANDIDATE_KEY: wanted.id, REPEAT_KEY: False}
    study.enqueue_trial(space.params_of(wanted))
    assert sampler(study.ask()) == {CANDIDATE_KEY: wanted.id, REPEAT_KEY: True}
    seen = {wanted.id}
    for _ in range(20):
        config = sampler(study.ask())
        candidate = parse_candidate(config[CANDIDATE_KEY])
        assert candidate in space and config[REPEAT_KEY] == (candidate.id in seen)
        seen.add(candidate.id)


def distinct_searcher(space_path: Path, points: list[str]):
    import optuna

    from daq_search.candidates import parse_candidate
    from daq_search.search.trial import CandidateSampler, DistinctOptunaSearch
    from daq_search.spaces import load_search_space

    space = load_search_space(space_path)
    return DistinctOptunaSearch(
        space=CandidateSampler(space),
        metric="val_acc",
        mode="max",
        points_to_evaluate=[space.params_of(parse_candidate(p)) for p in points],
        sampler=optuna.samplers.TPESampler(seed=0),
    )


def test_a_repeated_proposal_is_drawn_again_and_does_not_use_up_a_sample():
    import optuna

    from daq_search.search import CANDIDATE_KEY, REPEAT_KEY

    searcher = distinct_searcher(
        Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml", ["none"] * 2
    )
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert (first[CANDIDATE_KEY], first[REPEAT_KEY]) == ("none", False)
    assert second[CANDIDATE_KEY] != "none" and not second[REPEAT_KEY]  # the enqueued repeat was told failed, redrawn
    states = [trial.state for trial in searcher._ot_study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and set(searcher._ot_trials) == {"a", "b"}


def test_in_an_exhausted_space_the_repeat_is_run_after_the_redraws(tmp_path):
    import optuna

    from daq_search.search import CANDIDATE_KEY, REPEAT_KEY
    from daq_search.search.trial import MAX_REDRAWS

    (tmp_path / "one.yaml").write_text(yaml.safe_dump({"name": "one", "candidates": ["none"]}))
    searcher = distinct_searcher(tmp_path / "one.yaml", [])
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert (first[CANDIDATE_KEY], first[REPEAT_KEY], second[CANDIDATE_KEY], second[REPEAT_KEY]) == (
        "none",
        False,
        "none",
        True,
    )
    states = [trial.state for trial in searcher._ot_study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == MAX_REDRAWS


def test_torch_threads_is_the_trial_share_and_is_restored():
    import torch

    from daq_search.search import torch_threads

    before = torch.get_num_threads()
    with torch_threads(2.5):
        assert torch.get_num_threads() == 2
    with torch_threads(0.5):  # a fractional CPU share still gets one thread
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
