"""The selection rule: the defaults (objective, trial budget, early stopping), the line that explains a job's rule,
and the agreement of the defaults with the rule the committed benchmark recommends."""

import json
from pathlib import Path

import pytest

from bench.analysis import STUDENT_RULES, budget_label
from daq_search.config import JobSpec
from daq_search.selection import (
    DEFAULT_EARLY_STOPPING,
    DEFAULT_OBJECTIVE,
    DEFAULT_TRIAL_FRACTION,
    default_trial_epochs,
    describe_rule,
    is_default_rule,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("final", "trial"), [(320, 32), (30, 3), (25, 3), (5, 1), (4, 1), (1, 1), (1200, 120)])
def test_default_trial_is_a_tenth_of_the_final_epochs_rounded_half_up(final, trial):
    assert default_trial_epochs(final) == trial


def test_a_job_without_a_trial_section_runs_the_final_recipe_for_a_tenth_of_its_epochs():
    job = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320, "batch_size": 50, "lr": 0.002}}})
    assert job.trial.epochs == 32 and job.trial.batch_size == 50 and job.trial.lr == 0.002
    assert is_default_rule(job)
    given = JobSpec.model_validate({"name": "j", "trial": {"epochs": 7}})
    assert given.trial.epochs == 7 and not is_default_rule(given)


def test_describe_rule_says_what_ranks_the_trials_and_where_the_rule_comes_from():
    default = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320}}})
    line = describe_rule(default)
    assert line.startswith(
        "selection rule: val_acc (max) after each trial's own 32-epoch schedule (10 % of the final 320)"
    )
    assert "no early stopping; the default, from bench/results/summary.md" in line
    custom = default.model_copy(
        update={"objective": "score_ce", "scheduler": default.scheduler.model_copy(update={"enabled": True})}
    )
    line = describe_rule(custom)
    assert "score_ce (min)" in line and "ASHA early stopping (grace 1, reduction 2)" in line
    assert "set by the job (the default is val_acc after 10% of the final epochs, no early stopping)" in line


def test_package_defaults_are_the_rule_the_committed_benchmark_recommends():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    name = next(name for name, field, _ in STUDENT_RULES if field == DEFAULT_OBJECTIVE)
    assert results["cross_regime"]["recommended"] == f"{name} after {budget_label(DEFAULT_TRIAL_FRACTION)} training"
    assert DEFAULT_EARLY_STOPPING is False  # a student rule reads every candidate at the end of its own schedule
