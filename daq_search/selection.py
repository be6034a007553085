"""How a search picks its winner, and why the defaults are what they are.

The default is **late-phase branching**. One trunk student trains under :data:`DEFAULT_TRUNK` for
:data:`DEFAULT_BRANCH_AT` of the final training's cosine schedule; then every trial continues the trunk's student,
optimiser and schedule under its own candidate through the rest (the learning-rate decay) and is read on validation
at its end. The winner is the best branch at the end of the schedule, the point the final model is judged at, and
the final training continues the trunk under it.

Why: short independent trials (10-25 % of the epochs, each its own complete schedule) rank candidates by how fast
they learn, not by how well they end. In the benchmark's 10-per-class ladder (seed 8, test accuracy of complete
schedules) the best candidate after 320 epochs, TrivialAugment+CutMix, is the worst after 32 epochs and second-worst
after 80, and the 10 % rule picked ``none`` in the demo. Augmentation matters most late in
training (Tian et al., NeurIPS 2020), so a branch through the decay sees the end of training at
``(at + (1 - at) * K) / K`` of a K-candidate sweep (0.39 for 8 candidates at 0.7). A job with a ``trial`` section
and ``branch: null`` runs independent short trials instead (:func:`default_trial_epochs`).

The final training trains the winner and the baseline (``none`` unless the job says otherwise) to the end, and
ships the one with the higher validation accuracy at its last epoch (:func:`daq_search.finalists.shipped_index`,
with any other finalists of ``final.finalists``): where no augmentation
is best, the trunk's policy can hold the branches below ``none`` trained alone (the benchmark's animals regime), and
the baseline, trained anyway to report the gain, is then the better model at no extra cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import JobSpec

DEFAULT_OBJECTIVE = "val_acc"
"""The objective a job reports and ranks trials by unless it names another."""
DEFAULT_TRUNK = "randaugment(magnitude=9,num_ops=2)"
"""The policy the shared trunk trains under before the branches (a middle-strength policy)."""
DEFAULT_BRANCH_AT = 0.7
"""Where the branches start, as a fraction of the final training's epochs."""
DEFAULT_NUM_SAMPLES = 8
"""Candidates the searcher proposes unless the job says otherwise: 8 branches of 30 % cost 0.3 of an 8-candidate
sweep beyond the final training, which continues the trunk."""
DEFAULT_TRIAL_FRACTION = 0.1
"""Without branching: a trial's epochs as a fraction of the final training's, unless the job gives a ``trial``
recipe."""
DEFAULT_FINALISTS = 1
"""Candidates the final training trains to the end unless the job says otherwise: the winner alone (beside the
baseline); more are hedged across strength (:mod:`daq_search.finalists`)."""
DEFAULT_EARLY_STOPPING = False
"""Whether ASHA stops trials early unless the job's ``scheduler`` says otherwise."""
EVIDENCE = "docs/benchmark.md, section 'The shipped search'; shipped_search in bench/results/results.json"
"""Where the measured regret and cost of the default stand."""


def default_trial_epochs(final_epochs: int) -> int:
    """A trial's default epochs without branching: :data:`DEFAULT_TRIAL_FRACTION` of ``final_epochs``, rounded half
    up, at least 1."""
    return max(1, int(DEFAULT_TRIAL_FRACTION * final_epochs + 0.5))


def branch_epoch(final_epochs: int, at: float) -> int:
    """The last trunk epoch: ``at`` of ``final_epochs`` rounded half up, at least 1 and at most ``final_epochs - 1``
    (each branch trains at least one epoch); 0 when ``final_epochs`` is 1 (no trunk)."""
    return min(max(1, int(at * final_epochs + 0.5)), final_epochs - 1)


def branching_cost(final_epochs: int, at: float, branches: int) -> float:
    """Epochs a branching search trains, as a share of a sweep that trains each of ``branches`` candidates for
    ``final_epochs``: ``(B + branches * (final_epochs - B)) / (branches * final_epochs)`` with ``B`` the branch
    epoch."""
    trunk = branch_epoch(final_epochs, at)
    return (trunk + branches * (final_epochs - trunk)) / (branches * final_epochs)


def is_default_rule(job: JobSpec) -> bool:
    """Whether ``job`` selects with the default rule: the default objective, branching from the default trunk at the
    default point, no early stopping, and the default number of finalists."""
    return (
        job.objective == DEFAULT_OBJECTIVE
        and job.scheduler.enabled == DEFAULT_EARLY_STOPPING
        and job.final.finalists == DEFAULT_FINALISTS
        and job.branch is not None
        and (job.branch.trunk, job.branch.at) == (DEFAULT_TRUNK, DEFAULT_BRANCH_AT)
    )


def describe_rule(job: JobSpec) -> str:
    """One line: how ``job``'s search ranks its trials and where that rule comes from."""
    final = job.final.recipe.epochs
    if job.branch is not None:
        trunk = branch_epoch(final, job.branch.at)
        rule = (
            f"{job.objective} ({job.mode}) at the end of each branch: a trunk trains under {job.branch.trunk} for "
            f"{trunk} of the final {final} epochs, then each candidate continues it for the last {final - trunk}"
        )
    else:
        share = f"{100 * job.trial.epochs / final:.0f} % of the final {final}"
        stopping = (
            f"ASHA early stopping (grace {job.scheduler.grace_period}, reduction {job.scheduler.reduction_factor:g})"
            if job.scheduler.enabled
            else "no early stopping"
        )
        rule = f"{job.objective} ({job.mode}) after each trial's own {job.trial.epochs}-epoch schedule ({share}), {stopping}"
    if job.final.finalists > 1:
        rule += (
            f"; the final training trains the winner and the best of each other strength tier "
            f"({job.final.finalists} finalists) to the end and ships the best on validation"
        )
    if job.calibrate is not None:
        return f"selection rule: chosen by the calibration below among the job's rules (the job's own: {rule})"
    if is_default_rule(job):
        return f"selection rule: {rule}; the default ({EVIDENCE})"
    default = f"{DEFAULT_OBJECTIVE} at the end of branches from a {DEFAULT_TRUNK} trunk at {DEFAULT_BRANCH_AT:.0%}"
    return f"selection rule: {rule}; set by the job (the default is {default})"
