"""How a search picks its winner, and why the defaults are what they are.

The default is **finalists hedged across strength**. Every candidate the searcher proposes trains in an independent
trial of :data:`DEFAULT_TRIAL_FRACTION` of the final training's epochs (its own complete schedule) and is read on
validation at its end. That screen ranks candidates by how fast they learn, and strong augmentation learns slowly and
ends best, so the search does not trust its top trial alone: it cuts the candidates into :data:`DEFAULT_FINALISTS`
tiers by strength (the teacher's class-alignment term under each augmentation, :mod:`daq_search.finalists`) and names
the best of each tier. The final training trains every finalist and the baseline (``none`` unless the job says
otherwise) to the end, and ships the one with the highest validation accuracy at its last epoch
(:func:`daq_search.finalists.shipped_index`): the choice among a mild, a strong and no augmentation is made where
the final model is judged.

Why: in the benchmark (:data:`EVIDENCE`), run end to end as a user's job on the four gated regimes, what this ships
has the lowest worst-case regret measured (2.01 pp, mean 0.96 pp, at 0.18-0.30 of a sweep's epochs), against
4.59 pp (mean 1.48 pp) for late-phase branching, the former default; the short trials' own winner, trained alone,
lost up to 3.8 pp. Judged leave one regime out, the choice of method loses at most 2.12 pp (mean 0.97 pp).

**Finalists named by strength** (``final.finalists_by: strength``) keep the screen but ignore its readings: the
finalists are the candidates at the golden points of the strength order
(:func:`daq_search.finalists.strength_finalists`). Measured the same way on the four regimes, what it ships lost
up to 2.12 pp against the default's 2.01 pp (mean 0.97 pp against 0.96 pp), so it is not the default.

**Late-phase branching** (``branch: {}``) is another alternative: one trunk student trains under :data:`DEFAULT_TRUNK`
for :data:`DEFAULT_BRANCH_AT` of the final schedule, then every trial continues the trunk's student, optimiser and
schedule under its own candidate through the rest (the learning-rate decay) and is read at its end, at
``(at + (1 - at) * K) / K`` of a K-candidate sweep (0.39 for 8 candidates at 0.7); the final training continues the
trunk under the winner. It reads each candidate at the end of training, but every branch inherits the trunk's
policy: where no augmentation is best, the branches end below ``none`` trained alone.
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
"""Candidates the searcher proposes unless the job says otherwise: 8 trials of 10 % cost 0.1 of an 8-candidate sweep,
and the second finalist 0.125 more."""
DEFAULT_TRIAL_FRACTION = 0.1
"""Without branching: a trial's epochs as a fraction of the final training's, unless the job gives a ``trial``
recipe."""
DEFAULT_FINALISTS = 2
"""Candidates the final training trains to the end unless the job says otherwise: the winner and the best of the
other strength tier (:mod:`daq_search.finalists`), beside the baseline; at most as many as the search trained."""
DEFAULT_FINALISTS_BY = "screen"
"""How the search names the finalists unless the job says otherwise (``final.finalists_by``): the trials' winner and
the best of each other strength tier."""
DEFAULT_EARLY_STOPPING = False
"""Whether ASHA stops trials early unless the job's ``scheduler`` says otherwise."""
EVIDENCE = "docs/benchmark.md, section 'Finalists'; shipped_search_finalists in bench/results/results.json"
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
    """Whether ``job`` selects with the default rule: the default objective, independent trials of the default
    length (:func:`default_trial_epochs`), no early stopping, and the default number of finalists."""
    return (
        job.objective == DEFAULT_OBJECTIVE
        and job.scheduler.enabled == DEFAULT_EARLY_STOPPING
        and job.final.finalists == DEFAULT_FINALISTS
        and job.final.finalists_by == DEFAULT_FINALISTS_BY
        and job.branch is None
        and job.calibrate is None
        and job.trial.epochs == default_trial_epochs(job.final.recipe.epochs)
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
    if job.final.finalists_by == "strength":
        rule += (
            f"; the readings do not choose: the final training trains the {job.final.finalists} candidates at the "
            "golden points of the strength order to the end and ships the best on validation"
        )
    elif job.final.finalists > 1:
        rule += (
            f"; the final training trains the winner and the best of each other strength tier "
            f"({job.final.finalists} finalists) to the end and ships the best on validation"
        )
    if job.calibrate is not None:
        return f"selection rule: chosen by the calibration below among the job's rules (the job's own: {rule})"
    if is_default_rule(job):
        return f"selection rule: {rule}; the default ({EVIDENCE})"
    default = (
        f"{DEFAULT_OBJECTIVE} after trials of {DEFAULT_TRIAL_FRACTION:.0%} of the final epochs, then "
        f"{DEFAULT_FINALISTS} finalists hedged across strength"
    )
    return f"selection rule: {rule}; set by the job (the default is {default})"
