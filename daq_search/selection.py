"""How a search picks its winner, and why the defaults are what they are.

A selection rule is three settings of a job: the ``objective`` a trial reports, the trial budget (``trial.epochs``,
each trial a complete schedule of its own over that budget) and early stopping (``scheduler``). The defaults are the
rule the benchmark (``make bench``; ``bench/results/summary.md``) found with the lowest worst-case regret over its
passing regimes among the rules costing at most 30 % of a full sweep: validation accuracy after a trial of 10 % of
the final training's epochs, with no early stopping. Rules that read the student's or the teacher's DA score, and
ASHA on any objective at grace 1, picked the mildest candidate where a strong one wins by 2-8 pp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import JobSpec

DEFAULT_OBJECTIVE = "val_acc"
"""The objective a job reports and ranks trials by unless it names another."""
DEFAULT_TRIAL_FRACTION = 0.1
"""A trial's epochs as a fraction of the final training's, unless the job gives a ``trial`` recipe."""
DEFAULT_EARLY_STOPPING = False
"""Whether ASHA stops trials early unless the job's ``scheduler`` says otherwise."""
EVIDENCE = (
    "bench/results/summary.md: the lowest worst-case regret (2.93 pp; 0 in 2 of its 4 passing regimes) among the "
    "rules costing at most 30 % of a full sweep"
)
"""Where the defaults come from, in one line."""


def default_trial_epochs(final_epochs: int) -> int:
    """A trial's default epochs: :data:`DEFAULT_TRIAL_FRACTION` of ``final_epochs``, rounded half up, at least 1."""
    return max(1, int(DEFAULT_TRIAL_FRACTION * final_epochs + 0.5))


def is_default_rule(job: JobSpec) -> bool:
    """Whether ``job`` selects with the default rule: its objective, early stopping, and a trial budget of
    :func:`default_trial_epochs` of its final epochs."""
    return (
        job.objective == DEFAULT_OBJECTIVE
        and job.scheduler.enabled == DEFAULT_EARLY_STOPPING
        and job.trial.epochs == default_trial_epochs(job.final.recipe.epochs)
    )


def describe_rule(job: JobSpec) -> str:
    """One line: how ``job``'s search ranks its trials (objective, trial budget as a share of the final epochs,
    early stopping) and where that rule comes from."""
    share = f"{100 * job.trial.epochs / job.final.recipe.epochs:.0f} % of the final {job.final.recipe.epochs}"
    stopping = (
        f"ASHA early stopping (grace {job.scheduler.grace_period}, reduction {job.scheduler.reduction_factor:g})"
        if job.scheduler.enabled
        else "no early stopping"
    )
    rule = (
        f"{job.objective} ({job.mode}) after each trial's own {job.trial.epochs}-epoch schedule ({share}), {stopping}"
    )
    if job.calibrate is not None:
        return f"selection rule: chosen by the calibration below among the job's rules (the job's own: {rule})"
    if is_default_rule(job):
        return f"selection rule: {rule}; the default, from {EVIDENCE}"
    default = f"{DEFAULT_OBJECTIVE} after {DEFAULT_TRIAL_FRACTION:.0%} of the final epochs, no early stopping"
    return f"selection rule: {rule}; set by the job (the default is {default})"
