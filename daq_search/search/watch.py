"""Watching a search from the driver: :class:`SearchCallback`, the Tune callback that records every trial event in
the run's tables and prints one progress line per event plus a periodic summary.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.result import NODE_IP

from ..candidates import Candidate, parse_candidate
from ..results import TrialTable, rank_column, rank_trials
from .trial import CANDIDATE_KEY, REPEAT_KEY

logger = logging.getLogger(__name__)

SUMMARY_EVERY_S = 30.0


def error_line(trial: Trial) -> str:
    """The last ``Type: message`` line of a failed trial's error (the exception the trial raised)."""
    path = trial.error_file  # written on the driver when the error arrives (storage gets it at the next sync)
    text = Path(path).read_text() if path is not None and Path(path).is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").replace("_", "").isalnum() and head[:1].isupper():
            return line
    return lines[-1] if lines else "trial failed (no error message recorded)"


class SearchCallback(tune.Callback):
    """Records every trial event in the run's :class:`~daq_search.results.TrialTable` (written to Parquet after
    each event) and prints one line per event, plus ``trials: ...; best so far: ...`` every ``summary_every_s``
    seconds and at the end, each logged with ``prefix`` in front."""

    def __init__(
        self,
        table: TrialTable,
        *,
        prefix: str = "",
        summary_every_s: float = SUMMARY_EVERY_S,
    ):
        self.table = table
        self.prefix = prefix
        self.summary_every_s = summary_every_s
        self._last_summary = 0.0
        self._attempts: dict[str, list[str]] = {}

    def setup(self, **info) -> None:
        """Load the rows of an earlier run of this search (a resume keeps them)."""
        self.table.load()
        self._last_summary = time.monotonic()

    def _say(self, line: str) -> None:
        logger.info(self.prefix + line)

    def _start(self, trial: Trial) -> Candidate:
        candidate = parse_candidate(trial.config[CANDIDATE_KEY])
        row = self.table.start(trial.trial_id, candidate.id, candidate.knobs())
        if self._attempts.get(trial.trial_id):
            row["error"] = self._attempt_errors(trial.trial_id)
        return candidate

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        resumed = trial.trial_id in self.table.trials
        candidate = self._start(trial)
        self.table.write()
        repeat = (
            " (proposed before: replays the first trial's epochs, no training)" if trial.config.get(REPEAT_KEY) else ""
        )
        self._say(f"trial {trial.trial_id} {'resumed' if resumed else 'started'}: {candidate.id}{repeat}")

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info) -> None:
        """Record the epoch whose checkpoint Tune has just registered: a row exists only once its checkpoint does,
        so a search interrupted at any moment resumes after its last recorded epoch and keeps every row."""
        result = trial.last_result
        if "epoch" not in result:
            return
        if trial.trial_id not in self.table.trials:
            self._start(trial)
        epoch = int(result["epoch"])
        self.table.add_epoch(
            trial.trial_id, epoch, result, seconds=result.get("time_total_s"), node=result.get(NODE_IP)
        )
        self.table.write()
        objective = self.table.objective
        if math.isnan(result.get(objective, math.nan)):
            return  # an epoch nothing reads: recorded, not printed
        accuracy = "" if objective == "val_acc" else f" val_acc={result.get('val_acc', math.nan):.3f}"
        self._say(
            f"trial {trial.trial_id} epoch {epoch}/{self.table.max_epochs}: "
            f"{objective}={result.get(objective, math.nan):.4f}{accuracy}"
        )

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A failed attempt that Tune retries (``max_failures``): its error is kept in the row's ``error``."""
        error = error_line(trial)
        self._attempts.setdefault(trial.trial_id, []).append(error)
        if trial.trial_id in self.table.trials:
            self.table.trials[trial.trial_id]["error"] = self._attempt_errors(trial.trial_id)
            self.table.write()
        attempt = len(self._attempts[trial.trial_id])
        self._say(f"trial {trial.trial_id} attempt {attempt} failed, retrying from its last checkpoint: {error}")

    def _attempt_errors(self, trial_id: str) -> str:
        """``attempt 1: <error>; attempt 2: <error>`` for the recorded failed attempts of a trial."""
        return "; ".join(f"attempt {n}: {error}" for n, error in enumerate(self._attempts[trial_id], start=1))

    def _ended(self, trial: Trial, error: str | None) -> None:
        if trial.trial_id not in self.table.trials:
            self._start(trial)
        if error is not None and self._attempts.get(trial.trial_id):
            self._attempts[trial.trial_id].append(error)
            error = self._attempt_errors(trial.trial_id)
        row = self.table.end(trial.trial_id, error)
        if error is None and self._attempts.get(trial.trial_id):
            row["error"] = self._attempt_errors(trial.trial_id)  # a retry succeeded: the failed attempts stay
        self.table.write()
        if error is not None:
            self._say(f"trial {trial.trial_id} failed: {row['candidate']}: {error}")
            return
        objective = self.table.objective
        self._say(
            f"trial {trial.trial_id} {row['status']} after {row['epochs']}/{self.table.max_epochs} epochs: "
            f"{row['candidate']} {objective}={_fmt(row.get(rank_column(objective)))}"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._ended(trial, error_line(trial))

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        if self.table.trials and time.monotonic() - self._last_summary >= self.summary_every_s:
            self._say(self.summary())
            self._last_summary = time.monotonic()

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self._say(self.summary())

    def summary(self) -> str:
        """``trials: N done, P pruned, R running, F failed; best so far: <candidate> <objective>=<value>``."""
        counts = {status: 0 for status in ("completed", "pruned", "running", "failed")}
        for row in self.table.trials.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        line = (
            f"trials: {counts['completed']} done, {counts['pruned']} pruned, {counts['running']} running, "
            f"{counts['failed']} failed"
        )
        if not self.table.trials:
            return line
        ranked = rank_trials(self.table.frame(), self.table.objective, self.table.mode)
        if ranked.empty:
            return line + "; best so far: none"
        best = ranked.iloc[0]
        objective = self.table.objective
        return f"{line}; best so far: {best['candidate']} {objective}={_fmt(best[rank_column(objective)])}"


def _fmt(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
