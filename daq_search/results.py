"""A search's results as open tables: ``RUN_DIR/trials.parquet`` (one row per trial) and
``RUN_DIR/trial_epochs.parquet`` (one row per reported epoch), plus reading and formatting them (plots:
:mod:`daq_search.plots`).

The tables are written while the search runs (:class:`TrialTable`, driven by the search's Tune callback); every
write goes to a temporary file that then replaces the old one, so a killed run keeps every row written so far and a
reader never sees half a file. This module imports neither Ray nor torch: ``daq-search results`` reads the files
alone.

Statuses: ``running`` (in flight), ``completed`` (trained its full budget), ``pruned`` (ASHA stopped it before its
budget, without error), ``failed`` (raised; ``error`` holds the exception's last line).

Ranking (the winner and "best so far"): trials that did not fail are ranked first by how many epochs they trained,
then by the objective's value at their last epoch (:func:`rank_column`), in the objective's direction. A completed
trial's last epoch ends its own schedule, which is what the benchmark's default rule reads (the best of many noisy
epochs would favour noisy trials); ASHA too compares the last value reported at a rung, and a pruned trial lost at a
rung against the trials ASHA let go on, so a trial that got further is preferred to one that stopped earlier (as in
Tune's ``get_best_result(scope="last")``).
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DaqSearchError
from .files import atomic_write, remove_stale_temps

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "trial_epochs.parquet"
STATUSES = ("running", "completed", "pruned", "failed")

REPORTED_METRICS: dict[str, str] = {
    "score": "min",
    "score_ce": "min",
    "cmi": "max",
    "align": "min",
    "sample_ce": "min",
    "teacher_score": "min",
    "teacher_score_ce": "min",
    "teacher_cmi": "max",
    "teacher_align": "min",
    "teacher_sample_ce": "min",
    "t_stddev": "min",
    "val_acc": "max",
    "val_acc_se": "min",
    "val_loss": "min",
    "train_loss": "min",
    "images_per_s": "max",
}
"""Every metric a trial reports per epoch, with the direction in which it improves (``min`` or ``max``);
``val_acc_se`` is the binomial standard error of ``val_acc``, ``sqrt(p (1 - p) / n)`` over ``n`` validation images,
and a metric not read at an epoch is NaN there (see :func:`daq_search.search.trial.reading_epochs`). Defined
here, where reading results needs no torch; :data:`daq_search.metric.METRIC_MODES` takes the search objectives
from it."""

KNOB_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
"""Arrow type of a knob column, by the knob's value type name."""

_TIME = pa.timestamp("ms", tz="UTC")

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("candidate", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("epochs", pa.int64(), nullable=False),
        *(pa.field(f"{metric}_{which}", pa.float64()) for metric in REPORTED_METRICS for which in ("last", "best")),
        pa.field("error", pa.string()),
        pa.field("started_at", _TIME),
        pa.field("ended_at", _TIME),
        pa.field("wall_s", pa.float64()),
        pa.field("node", pa.string()),
        pa.field("attempts", pa.int64()),
    ]
)
"""Columns of ``trials.parquet`` other than the knobs. A run's file also has one column per knob of its search space
(``policy``, ``mix``, ``<policy>.<knob>``, ``<mix>.<knob>``; null where the trial's candidate lacks the knob),
placed after ``candidate``: see :func:`trials_schema`. ``wall_s`` is the seconds the trial trained (Tune's
``time_total_s``, summed over resumes), or start to end for a trial that never reported. ``node`` is the address of
the Ray node that ran the trial's last recorded epoch (Tune's ``node_ip``); ``attempts`` is how many times the trial
was started: 1, plus one per retry after a failure (``max_failures``) and per ``--resume`` that continued it."""

EPOCHS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("candidate", pa.string()),
        pa.field("epoch", pa.int64(), nullable=False),
        *(pa.field(metric, pa.float64()) for metric in REPORTED_METRICS),
    ]
)
"""Columns of ``trial_epochs.parquet``: one row per (trial, epoch)."""

_META_KEYS = ("objective", "mode", "max_epochs")


def trials_schema(knob_types: dict[str, str]) -> pa.Schema:
    """The full ``trials.parquet`` schema: :data:`TRIALS_SCHEMA` with one column per knob (``{column: "int" |
    "float" | "str"}``, in the given order) inserted after ``candidate``."""
    fields = list(TRIALS_SCHEMA)
    at = TRIALS_SCHEMA.get_field_index("candidate") + 1
    knob_fields = [pa.field(column, KNOB_TYPES[kind]) for column, kind in knob_types.items()]
    return pa.schema(fields[:at] + knob_fields + fields[at:])


def _now() -> datetime:
    return datetime.now(UTC)


def _better(mode: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` in direction ``mode`` (NaN never does)."""
    if new is None or math.isnan(new):
        return False
    return old is None or math.isnan(old) or (new < old if mode == "min" else new > old)


class TrialTable:
    """The rows of one search, kept in memory and flushed to the two Parquet files after every change.

    ``max_epochs`` is the trial budget (a trial that ends earlier without error is ``pruned``); ``knob_types`` names
    the knob columns of the search space; ``objective`` and ``mode`` are stored in the files' metadata so a reader
    can rank the trials without the job file.
    """

    def __init__(self, run_dir: str | Path, *, max_epochs: int, knob_types: dict[str, str], objective: str, mode: str):
        self.run_dir = Path(run_dir)
        self.max_epochs = max_epochs
        self.knob_types = dict(knob_types)
        self.objective = objective
        self.mode = mode
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}

    @property
    def schema(self) -> pa.Schema:
        """The trials schema with this run's knob columns and its objective in the metadata."""
        meta = {"objective": self.objective, "mode": self.mode, "max_epochs": str(self.max_epochs)}
        return trials_schema(self.knob_types).with_metadata({f"daq_search.{k}": v for k, v in meta.items()})

    def load(self) -> None:
        """Read the rows already on disk (a resumed search keeps them); nothing happens when there are none.

        Temp files a killed writer left are removed. The epochs file is written first (:meth:`write`), so it is
        never behind the trials file; each trial's epoch columns (``epochs``, ``<metric>_last``/``_best``) are
        re-derived from its epoch rows, so the two agree even after a kill between the two writes.
        """
        trials_path, epochs_path = self.run_dir / TRIALS_FILE, self.run_dir / EPOCHS_FILE
        remove_stale_temps(trials_path)
        remove_stale_temps(epochs_path)
        if trials_path.is_file():
            for row in _read_file(trials_path, TRIALS_SCHEMA).to_pylist():
                self.trials[row["trial_id"]] = row
        if epochs_path.is_file():
            for row in _read_file(epochs_path, EPOCHS_SCHEMA).to_pylist():
                if row["trial_id"] in self.trials:
                    self.epochs[(row["trial_id"], row["epoch"])] = row
        for trial_id in self.trials:
            self._derive(trial_id)

    def start(self, trial_id: str, candidate: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """Mark a trial as running and count the start in ``attempts`` (a resumed or retried trial keeps its first
        start time and its epochs); returns its row."""
        row = self.trials.get(trial_id)
        if row is None:
            row = {"trial_id": trial_id, "candidate": candidate, "epochs": 0, "started_at": _now()}
            row.update({column: knobs.get(column) for column in self.knob_types})
            self.trials[trial_id] = row
        row.update(status="running", ended_at=None, error=None, attempts=(row.get("attempts") or 0) + 1)
        return row

    def add_epoch(
        self,
        trial_id: str,
        epoch: int,
        metrics: dict[str, Any],
        seconds: float | None = None,
        node: str | None = None,
    ) -> dict:
        """Record one reported epoch (a re-reported epoch after a resume replaces the old one); updates the trial's
        ``<metric>_last`` / ``<metric>_best``, ``epochs``, ``wall_s`` (``seconds`` trained so far) and ``node`` (the
        address of the node the epoch ran on)."""
        row = self.trials[trial_id]
        values = {metric: _float(metrics.get(metric)) for metric in REPORTED_METRICS}
        self.epochs[(trial_id, epoch)] = {"trial_id": trial_id, "candidate": row["candidate"], "epoch": epoch, **values}
        self._derive(trial_id)
        if seconds is not None:
            row["wall_s"] = float(seconds)
        if node is not None:
            row["node"] = node
        return row

    def _derive(self, trial_id: str) -> None:
        """Set a trial's ``epochs`` and ``<metric>_last`` / ``_best`` from its epoch rows (none: 0 and nulls)."""
        row = self.trials[trial_id]
        history = sorted(e for (t, e) in self.epochs if t == trial_id)
        row["epochs"] = history[-1] if history else 0
        for metric, mode in REPORTED_METRICS.items():
            series = [self.epochs[(trial_id, e)][metric] for e in history]
            row[f"{metric}_last"] = series[-1] if series else None
            best = None
            for value in series:
                if _better(mode, value, best):
                    best = value
            row[f"{metric}_best"] = best

    def end(self, trial_id: str, error: str | None = None) -> dict[str, Any]:
        """Mark a trial ended: ``failed`` with ``error``, else ``pruned`` before its budget or ``completed``."""
        row = self.trials[trial_id]
        if error is not None:
            row["status"] = "failed"
        else:
            row["status"] = "completed" if row["epochs"] >= self.max_epochs else "pruned"
        row["error"] = error
        row["ended_at"] = _now()
        if row.get("wall_s") is None and row.get("started_at") is not None:
            row["wall_s"] = (row["ended_at"] - row["started_at"]).total_seconds()
        return row

    def write(self) -> None:
        """Write both files atomically (temp file, then ``os.replace``), the epochs first: a kill between the two
        leaves the trials file behind, which :meth:`load` brings level again."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        trials = pa.Table.from_pylist(list(self.trials.values()), schema=self.schema)
        epoch_rows = [self.epochs[key] for key in sorted(self.epochs)]
        epochs = pa.Table.from_pylist(epoch_rows, schema=EPOCHS_SCHEMA.with_metadata(self.schema.metadata))
        _write_parquet(epochs, self.run_dir / EPOCHS_FILE)
        _write_parquet(trials, self.run_dir / TRIALS_FILE)

    def frame(self) -> pd.DataFrame:
        """The trials as a DataFrame (as :func:`read_trials` would return them)."""
        return pa.Table.from_pylist(list(self.trials.values()), schema=self.schema).to_pandas()


def _float(value: Any) -> float | None:
    """A metric value as a float; None stays None."""
    return None if value is None else float(value)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically, with a CRC per page so a flipped bit is found on reading."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))


ADDED_COLUMNS = frozenset({"node", "attempts", "val_acc_se", "val_acc_se_last", "val_acc_se_best"})
"""Columns added after the first release: a file written before them reads with nulls there (and resumes)."""


def read_parquet(path: Path, **options: Any) -> pa.Table:
    """The Parquet file ``path`` as one table, read through a single open file: a running search replaces its
    results files whole (``os.replace``), and a reader that opened ``path`` twice could take the old file's footer
    with the new file's pages. One handle reads either the old file or the new one, never a mix."""
    with open(path, "rb") as file:
        return pq.read_table(file, **options)


def _read_file(path: Path, schema: pa.Schema) -> pa.Table:
    """A results file, page checksums verified and ``schema``'s columns checked; one-line DaqSearchError when it
    is truncated, empty, damaged or not a daq-search results file."""
    try:
        table = read_parquet(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise DaqSearchError(
            f"{path}: not a readable Parquet file ({reason}); allowed: a results file a search wrote"
        ) from None
    for field in schema:
        if field.name not in table.schema.names and field.name in ADDED_COLUMNS:
            table = table.append_column(field, pa.nulls(len(table), field.type))
        if field.name not in table.schema.names:
            raise DaqSearchError(
                f"{path}: no column {field.name!r}, so not a daq-search results file; allowed: a results file a "
                "search wrote"
            )
        found = table.schema.field(field.name).type
        if found != field.type:
            raise DaqSearchError(
                f"{path}: column {field.name!r} is {found}, expected {field.type}; allowed: a results file a search "
                "wrote"
            )
    return table


def _read(run_dir: str | Path, file_name: str) -> pa.Table:
    path = Path(run_dir) / file_name
    if not path.is_file():
        raise DaqSearchError(f"{run_dir}: no {file_name} (not a daq-search run folder, or no trial has started yet)")
    return _read_file(path, TRIALS_SCHEMA if file_name == TRIALS_FILE else EPOCHS_SCHEMA)


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/trials.parquet`` as a DataFrame; ``df.attrs`` holds the run's ``objective``, ``mode`` and
    ``max_epochs`` where the file records them."""
    table = _read(run_dir, TRIALS_FILE)
    df = table.to_pandas()
    df.attrs.update(run_metadata(table.schema, Path(run_dir) / TRIALS_FILE))
    return df


def read_epochs(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/trial_epochs.parquet`` as a DataFrame, one row per (trial, epoch), sorted by trial and epoch."""
    return _read(run_dir, EPOCHS_FILE).to_pandas()


def run_metadata(schema: pa.Schema, path: Path) -> dict[str, Any]:
    """The ``objective``, ``mode`` and ``max_epochs`` the results file ``path`` was written with (empty when
    absent); DaqSearchError naming the file when one is not what a search writes (a damaged file): an objective
    that is not a reported metric, a mode other than ``min`` or ``max``, epochs that are not a whole number."""
    meta = schema.metadata or {}
    out: dict[str, Any] = {}
    for key in _META_KEYS:
        raw = meta.get(f"daq_search.{key}".encode())
        if raw is None:
            continue
        text = raw.decode(errors="replace")
        valid = {"objective": text in REPORTED_METRICS, "mode": text in ("min", "max"), "max_epochs": text.isdigit()}
        if not valid[key]:
            raise DaqSearchError(
                f"{path}: damaged metadata daq_search.{key} = {text!r}; allowed: a results file a search wrote"
            )
        out[key] = int(text) if key == "max_epochs" else text
    return out


TIE_BREAK = "val_loss_last"
"""The column that orders trials whose objective ties (lower first)."""


def rank_column(objective: str) -> str:
    """The trials-table column trials are ranked by: ``objective`` at each trial's last epoch."""
    return f"{objective}_last"


def rank_trials(df: pd.DataFrame, objective: str, mode: str) -> pd.DataFrame:
    """The trials that did not fail and reported at least once, best first: most epochs trained, then ``objective``
    at their last epoch (in direction ``mode``), then the lower ``val_loss`` at their last epoch (ties in accuracy
    on a few hundred images are common; the loss tells them apart without favouring any candidate), then the
    earlier trial id."""
    column = rank_column(objective)
    ok = df[(df["status"] != "failed") & (df["epochs"] > 0) & df[column].notna()]
    tie = [TIE_BREAK] if column != TIE_BREAK and TIE_BREAK in ok else []
    return ok.sort_values(
        ["epochs", column, *tie, "trial_id"],
        ascending=[False, mode == "min", *[True] * len(tie), True],
        kind="stable",
        na_position="last",
    )


def best_trial(df: pd.DataFrame, objective: str, mode: str) -> dict[str, Any] | None:
    """The winning trial's row (see :func:`rank_trials`) among ``completed`` and ``pruned`` trials, or None."""
    ranked = rank_trials(df[df["status"].isin(["completed", "pruned"])], objective, mode)
    return None if ranked.empty else ranked.iloc[0].to_dict()


def runner_up_note(df: pd.DataFrame, objective: str, mode: str) -> str | None:
    """When the objective is ``val_acc``: a sentence saying the winner lies within two standard errors of the
    difference, ``2 sqrt(se_1^2 + se_2^2)``, of the best trial of another candidate (the runner-up), or None when it
    is clear of it (or there is no runner-up, or no standard error)."""
    if objective != "val_acc" or "val_acc_se_last" not in df:
        return None
    ranked = rank_trials(df[df["status"].isin(["completed", "pruned"])], objective, mode)
    if ranked.empty:
        return None
    best = ranked.iloc[0]
    others = ranked[ranked["candidate"] != best["candidate"]]
    if others.empty or pd.isna(best["val_acc_se_last"]) or pd.isna(others.iloc[0]["val_acc_se_last"]):
        return None
    second = others.iloc[0]
    se = math.hypot(best["val_acc_se_last"], second["val_acc_se_last"])
    gap = best["val_acc_last"] - second["val_acc_last"]
    if gap >= 2 * se:
        return None
    return (
        f"the winner is within two standard errors of the runner-up {second['candidate']} "
        f"({best['val_acc_last']:.4f} vs {second['val_acc_last']:.4f}, standard error of the difference {se:.4f}): "
        "the validation images cannot tell them apart"
    )


def sort_trials(df: pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """Trials sorted by ``column`` in its metric's direction (``<metric>_last/_best`` columns; other columns
    ascending), nulls last; without a column, by the run's ranking (failed and unreported trials last)."""
    if column is None:
        objective, mode = df.attrs.get("objective"), df.attrs.get("mode")
        if objective is None or rank_column(objective) not in df:
            return df.sort_values("trial_id", kind="stable")
        ranked = rank_trials(df, objective, mode)
        return pd.concat([ranked, df.drop(ranked.index).sort_values("trial_id", kind="stable")])
    if column not in df:
        raise DaqSearchError(f"--sort: unknown column {column!r}; allowed: {', '.join(df.columns)}")
    metric = column.rsplit("_", 1)[0]
    descending = column.endswith(("_last", "_best")) and REPORTED_METRICS.get(metric) == "max"
    return df.sort_values(column, ascending=not descending, na_position="last", kind="stable")


TABLE_COLUMNS = ("trial_id", "candidate", "status", "epochs")
TABLE_METRICS = ("score_last", "score_ce_last", "val_acc_last", "val_acc_best", "teacher_score_last", "t_stddev_last")
FORMATS = ("table", "csv", "json", "markdown")


def display_columns(df: pd.DataFrame) -> list[str]:
    """The columns shown by the ``table`` and ``markdown`` formats: identity, status, the ranking column, a few key
    metrics, wall time and error (csv and json carry every column)."""
    columns = list(TABLE_COLUMNS)
    objective = df.attrs.get("objective")
    if objective is not None and rank_column(objective) in df:
        columns.append(rank_column(objective))
    columns += [c for c in TABLE_METRICS if c not in columns] + ["wall_s", "error"]
    return [c for c in columns if c in df]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """``df`` as text: ``table`` (aligned columns), ``csv``, ``json`` (a list of records, nulls as null) or
    ``markdown`` (a GitHub table). ``table`` and ``markdown`` show :func:`display_columns` when ``df`` has the
    trials columns, all columns otherwise."""
    if fmt not in FORMATS:
        raise DaqSearchError(f"--format: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=1) + "\n"
    columns = display_columns(df) if "status" in df else list(df.columns)
    rows = [[_cell(value) for value in record] for record in df[columns].itertuples(index=False)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    out = io.StringIO()
    for row in [columns] + rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() + "\n")
    return out.getvalue()


CALIBRATION_FILE = "calibration.parquet"


def read_calibration(run_dir: str | Path) -> pd.DataFrame | None:
    """``RUN_DIR/calibration.parquet`` (see :data:`daq_search.calibrate.CALIBRATION_SCHEMA`) as a DataFrame, with
    the fallback reason (empty when a rule was chosen) in ``df.attrs["fallback"]``; None for a run without
    calibration."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    table = read_parquet(path)
    df = table.to_pandas()
    df.attrs["fallback"] = (table.schema.metadata or {}).get(b"daq_search.fallback", b"").decode(errors="replace")
    return df


def calibration_rules_view(df: pd.DataFrame) -> pd.DataFrame:
    """The calibration as one row per rule: ``rule``, ``agreement``, ``chosen`` (``*``) and the rule's value on
    each anchor (a column per anchor), best agreement first (rules that do not separate the anchors last), then the
    smaller budget."""
    view = df.pivot_table(index=["rule", "budget"], columns="anchor", values="value", sort=False, dropna=False)
    view = view.reindex(columns=list(dict.fromkeys(df["anchor"])))
    rules = df.drop_duplicates("rule").set_index(["rule", "budget"])[["agreement", "chosen"]]
    view = rules.join(view).reset_index()
    view["chosen"] = view["chosen"].map({True: "*", False: ""})
    view = view.sort_values(["agreement", "budget"], ascending=[False, True], na_position="last", kind="stable")
    return view.reset_index(drop=True)


def format_calibration(df: pd.DataFrame, fmt: str = "table") -> str:
    """The calibration in words and as a table (``table`` or ``markdown``): the anchors' final accuracy, what was
    chosen (or why the job's objective was kept), then :func:`calibration_rules_view`."""
    finals = df.drop_duplicates("anchor")
    accs = ", ".join(
        f"{a} {_cell(acc) or 'failed'}" for a, acc in zip(finals["anchor"], finals["final_acc"], strict=True)
    )
    chosen = df[df["chosen"]]
    if len(chosen):
        row = chosen.iloc[0]
        verdict = f"chose {row['rule']} (Kendall agreement {row['agreement']:+.2f})"
    else:
        verdict = f"kept the job's objective: {df.attrs.get('fallback') or 'no rule chosen'}"
    head = f"calibration: anchors' final val_acc: {accs}; {verdict}\n"
    return head + format_table(calibration_rules_view(df), fmt) + "\n"
