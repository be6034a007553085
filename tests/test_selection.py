"""The selection rule: late-phase branching by default (its branch epoch and cost), the independent-trial rule a job
can ask for instead, the line that explains a job's rule, and the agreement of the defaults with the settings the
committed benchmark measured."""

import json
from pathlib import Path

import pytest

from daq_search.config import JobSpec
from daq_search.selection import (
    DEFAULT_BRANCH_AT,
    DEFAULT_FINALISTS,
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


def test_a_job_without_a_trial_section_screens_a_tenth_and_hedges_two_finalists():
    job = JobSpec.model_validate({"name": "j", "final": {"recipe": {"epochs": 320, "batch_size": 50, "lr": 0.002}}})
    assert job.branch is None and job.trial.epochs == 32 and job.trial.lr == 0.002
    assert job.final.finalists == DEFAULT_FINALISTS == 2 and job.searcher.num_samples == DEFAULT_NUM_SAMPLES
    assert is_default_rule(job)
    given = JobSpec.model_validate({"name": "j", "trial": {"epochs": 7}})
    assert given.branch is None and given.trial.epochs == 7 and not is_default_rule(given)
    branching = JobSpec.model_validate({"name": "j", "branch": {}, "final": {"recipe": {"epochs": 320}}})
    assert (branching.branch.trunk, branching.branch.at) == (DEFAULT_TRUNK, DEFAULT_BRANCH_AT)
    assert branching.trial == branching.final.recipe and not is_default_rule(branching)
    one_sample = JobSpec.model_validate({"name": "j", "searcher": {"num_samples": 1}})  # the default fits any search
    assert one_sample.final.finalists == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"branch": {}, "trial": {"epochs": 3}}, "trial: a branching search's trials continue the trunk"),
        ({"branch": {}, "scheduler": {"enabled": True}}, "branch: branches are read at their end"),
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
        "selection rule: val_acc (max) after each trial's own 32-epoch schedule (10 % of the final 320), no early "
        "stopping; the final training trains the winner and the best of each other strength tier (2 finalists) to "
        "the end and ships the best on validation; the default (docs/benchmark.md"
    )
    custom = JobSpec.model_validate(
        {"name": "j", "objective": "score_ce", "trial": {"epochs": 32}, "scheduler": {"enabled": True}}
    )
    line = describe_rule(custom)
    assert "score_ce (min) after each trial's own 32-epoch schedule" in line
    assert "ASHA early stopping (grace 1, reduction 2)" in line and "set by the job (the default is val_acc" in line
    branching = JobSpec.model_validate(
        {"name": "j", "branch": {}, "final": {"recipe": {"epochs": 320}, "finalists": 1}}
    )
    line = describe_rule(branching)
    assert line.startswith(
        "selection rule: val_acc (max) at the end of each branch: a trunk trains under "
        "randaugment(magnitude=9,num_ops=2) for 224 of the final 320 epochs, then each candidate continues it for "
        "the last 96; set by the job"
    )
    assert "finalists" not in line.split("; set by the job")[0]
    by_strength = JobSpec.model_validate(
        {"name": "j", "final": {"recipe": {"epochs": 320}, "finalists_by": "strength"}}
    )
    line = describe_rule(by_strength)
    assert not is_default_rule(by_strength) and "; set by the job" in line
    assert (
        "the readings do not choose: the final training trains the 2 candidates at the golden points of the strength "
        "order to the end and ships the best on validation" in line
    )
    assert "best of each other strength tier" not in line.split("; set by the job")[0]


def test_the_committed_default_measurement_ran_the_package_defaults():
    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    passing = [r for r in results["regimes"] if r["gate"]["passes"]]
    missing = [r["regime"] for r in passing if "shipped_search_finalists" not in r]
    assert passing and not missing, f"no shipped_search_finalists (python -m bench.shipped --finalists 2): {missing}"
    measured = [r["shipped_search_finalists"] for r in passing]
    for record in measured:
        assert (record["finalists"], record["num_samples"]) == (DEFAULT_FINALISTS, DEFAULT_NUM_SAMPLES)
        assert len(record["searcher_seeds"]) >= 3 and len(record["picks"]) == len(record["shipped_regret_pp"])
    for record in [r["shipped_search"] for r in passing if "shipped_search" in r]:  # the former default's
        assert (record["trunk"], record["branch_at"]) == (DEFAULT_TRUNK, DEFAULT_BRANCH_AT)
        assert (record["objective"], record["num_samples"]) == (DEFAULT_OBJECTIVE, DEFAULT_NUM_SAMPLES)


def test_the_default_has_the_lowest_worst_regret_measured_and_the_docstring_quotes_it():
    import daq_search.selection as selection
    from bench.shipped import METHODS

    results = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    passing = [r for r in results["regimes"] if r["gate"]["passes"]]
    regrets = {
        key: [x for r in passing for x in r[key]["shipped_regret_pp"]]
        for _, key in METHODS
        if all(key in r for r in passing)
    }
    default = regrets.pop("shipped_search_finalists")
    assert all(max(default) <= max(other) for other in regrets.values())
    mean = sum(default) / len(default)
    assert f"({max(default):.2f} pp, mean {mean:.2f} pp, at " in " ".join(selection.__doc__.split())
