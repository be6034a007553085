"""The selection rule: late-phase branching by default (its branch epoch and cost), the independent-trial rule a job
can ask for instead, the line that explains a job's rule, and the agreement of the defaults with the settings the
committed benchmark measured."""

import json
from pathlib import Path

import pytest

from daq_search.config import JobSpec
from daq_search.selection import (
    DEFAULT_BRANCH_AT,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_OBJECTIVE,
    DEFAULT_TRUNK,
    branch_epoch,
    branching_cost,
    default_trial_epochs,
    describe_rule,
    is_default_rule,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("final", "trial"), [(320, 32), (30, 3), (25, 3), (5, 1), (4, 1), (1, 1), (1200, 120)])
def test_default_trial_is_a_tenth_of_the_final_epochs_rounded_half_up(final, trial):
    assert default_trial_epochs(final) == trial


@pytest.mark.parametrize(
    ("final", "at", "trunk"), [(320, 0.7, 224), (10, 0.7, 7), (3, 0.5, 2), (2, 0.7, 1), (2, 0.9, 1), (5, 0.05, 1)]
)
def test_branch_epoch_rounds_half_up_and_leaves_every_branch_an_epoch(final, at, trunk):
    assert branch_epoch(final, at) == trunk


def test_branching_cost_counts_the_trunk_once_and_each_branch_in_full():
    assert branching_cost(320, 0.7, 8) == pytest.approx((224 + 8 * 96) / (8 * 320))  # 0.3875
    assert branching_cost(10, 0.5, 1) == 1.0  # one candidate: trunk + its branch is one full training


def test_a_job_without_a_trial_section_branches_through_the_final_recipe():
    job = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320, "batch_size": 50, "lr": 0.002}}})
    assert job.branch is not None and (job.branch.trunk, job.branch.at) == (DEFAULT_TRUNK, DEFAULT_BRANCH_AT)
    assert job.trial == job.final.recipe and job.searcher.num_samples == DEFAULT_NUM_SAMPLES
    assert is_default_rule(job)
    given = JobSpec.model_validate({"name": "j", "trial": {"epochs": 7}})
    assert given.branch is None and given.trial.epochs == 7 and not is_default_rule(given)
    independent = JobSpec.model_validate({"name": "j", "branch": None, "final": {"recipe": {"epochs": 320}}})
    assert independent.trial.epochs == 32 and not is_default_rule(independent)
    one_epoch = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 1}}})  # no room for a trunk
    assert one_epoch.branch is None and one_epoch.trial.epochs == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"branch": {}, "trial": {"epochs": 3}}, "trial: a branching search's trials continue the trunk"),
        ({"scheduler": {"enabled": True}}, "branch: branches are read at their end"),
        ({"branch": {}, "final": {"recipe": {"epochs": 1}}}, "branch: needs final.recipe.epochs >= 2"),
        ({"branch": {"at": 1.0}}, "less than 1"),
    ],
)
def test_a_branching_job_refuses_what_a_branch_cannot_do(fields, message):
    with pytest.raises(ValueError, match=message):
        JobSpec.model_validate({"name": "j", **fields})


def test_describe_rule_says_what_ranks_the_trials_and_where_the_rule_comes_from():
    default = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320}}})
    line = describe_rule(default)
    assert line.startswith(
        "selection rule: val_acc (max) at the end of each branch: a trunk trains under "
        "randaugment(magnitude=9,num_ops=2) for 224 of the final 320 epochs, then each candidate continues it for "
        "the last 96; the default (docs/benchmark.md"
    )
    custom = JobSpec.model_validate(
        {"name": "j", "objective": "score_ce", "trial": {"epochs": 32}, "scheduler": {"enabled": True}}
    )
    line = describe_rule(custom)
    assert "score_ce (min) after each trial's own 32-epoch schedule" in line
    assert "ASHA early stopping (grace 1, reduction 2)" in line and "set by the job (the default is val_acc" in line
    hedged = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320}, "finalists": 2}})
    assert not is_default_rule(hedged)
    assert "the winner and the best of each other strength tier (2 finalists) to the end" in describe_rule(hedged)
    assert "set by the job" in describe_rule(hedged)


def test_the_committed_shipped_search_ran_the_package_defaults():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    shipped = [r["shipped_search"] for r in results["regimes"] if "shipped_search" in r]
    assert shipped, "bench/results/results.json holds no shipped_search (python -m bench.shipped)"
    for record in shipped:
        assert (record["trunk"], record["branch_at"]) == (DEFAULT_TRUNK, DEFAULT_BRANCH_AT)
        assert (record["objective"], record["num_samples"]) == (DEFAULT_OBJECTIVE, DEFAULT_NUM_SAMPLES)
        assert len(record["searcher_seeds"]) >= 3 and len(record["picks"]) == len(record["regret_pp"])
