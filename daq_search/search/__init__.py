"""The augmentation search: Ray Tune trials of short QAT+KD trainings, sampled by Optuna TPE and pruned by ASHA.

:mod:`.plan` validates a job before any Ray work and holds what trials and ``daq-search score`` share;
:mod:`.trial` is the trial Tune runs (and the replay of a repeated candidate); :mod:`.watch` is the Tune callback
that records and prints trial events; :mod:`.run` runs a search and writes its winner; :mod:`.teacher_scores`
ranks a space by the teacher alone; :mod:`.submit` sends a search to a cluster's Jobs API.
"""

from .plan import (
    JOB_FILE,
    MIN_T_STDDEV_GROUPS,
    SearchPlan,
    knob_types,
    plan_search,
    scoring_subset,
    t_stddev_batch_size,
    teacher_metrics,
    torch_threads,
)
from .run import TOP_SHOWN, WINNER_FILE, SearchOutcome, run_search, top_table, trial_dirname, write_winner
from .submit import check_token_transport, project_root, submission_headers, submit_search
from .teacher_scores import SCORE_COLUMNS, TEACHER_SCORES_FILE, score_space
from .trial import CANDIDATE_KEY, REPEAT_KEY, RUN_DIR_KEY, TRIAL_STATE_FILE, CandidateSampler, replay_trial, run_trial
from .watch import SUMMARY_EVERY_S, SearchCallback, error_line

__all__ = [
    "CANDIDATE_KEY",
    "JOB_FILE",
    "MIN_T_STDDEV_GROUPS",
    "REPEAT_KEY",
    "RUN_DIR_KEY",
    "SCORE_COLUMNS",
    "SUMMARY_EVERY_S",
    "TEACHER_SCORES_FILE",
    "TOP_SHOWN",
    "TRIAL_STATE_FILE",
    "WINNER_FILE",
    "CandidateSampler",
    "SearchCallback",
    "SearchOutcome",
    "SearchPlan",
    "check_token_transport",
    "error_line",
    "knob_types",
    "plan_search",
    "project_root",
    "replay_trial",
    "run_search",
    "run_trial",
    "score_space",
    "scoring_subset",
    "submission_headers",
    "submit_search",
    "t_stddev_batch_size",
    "teacher_metrics",
    "top_table",
    "torch_threads",
    "trial_dirname",
    "write_winner",
]
