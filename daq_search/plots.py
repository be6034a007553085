"""Pictures of a run that answer "which augmentation won, by how much, and is the difference real?".

:func:`plot_run` draws a search: each candidate's selection value with its standard error, and the per-epoch
curves of the best three. :func:`plot_final` draws a final training: the winner's and the baseline's validation
accuracy per epoch, with their test accuracies. Like :mod:`daq_search.results`, this module imports neither Ray nor
torch; matplotlib is imported when a plot is drawn.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pandas as pd

from .errors import DaqSearchError
from .files import atomic_write
from .final_runs import run_role
from .results import REPORTED_METRICS, rank_column, rank_trials, read_epochs, read_parquet, read_trials

FINAL_DIR = "final"
"""The final training's folder inside a run folder (``daq-search train``'s default name)."""
FINAL_EPOCHS_FILE = "epochs.parquet"
FINAL_METRICS_FILE = "metrics.json"
NONE = "none"
TOP_CURVES = 3
TITLE_WIDTH = 80
"""Characters per line of the final training's title (longer titles wrap)."""


def plot_metric(trials: pd.DataFrame, metric: str | None = None) -> str:
    """The metric a plot of a run draws: ``metric`` when given, else the objective the run was searched by (from
    the files' metadata), else ``score`` for files written without one."""
    chosen = metric or trials.attrs.get("objective") or "score"
    if chosen not in REPORTED_METRICS:
        raise DaqSearchError(f"--plot: unknown metric {chosen!r}; allowed: {', '.join(REPORTED_METRICS)}")
    return chosen


def se_column(objective: str) -> str:
    """The trials-table column holding the standard error of ``objective`` at a trial's last epoch (for ``val_acc``
    the binomial SE of the validation accuracy, ``val_acc_se_last``)."""
    return f"{objective}_se_last"


def selection_rows(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The left panel of :func:`plot_run` as rows, in the order drawn (the winner first).

    One row per candidate that reported a value: its best-ranked trial by the search's own ranking
    (:func:`daq_search.results.rank_trials`: most epochs, then ``objective`` at the last epoch in the metric's
    direction; failed trials left out). Columns: ``candidate``, ``trial_id``, ``epochs``, ``value`` (the objective
    at the trial's last epoch), ``se`` (its standard error from :func:`se_column`, NaN where the table has none),
    ``is_none`` and ``label`` (the candidate id; ``none`` is labelled as the no-augmentation baseline).
    """
    ranked = rank_trials(trials, objective, REPORTED_METRICS[objective]).drop_duplicates("candidate")
    se = ranked[se_column(objective)] if se_column(objective) in ranked else math.nan
    rows = pd.DataFrame(
        {
            "candidate": ranked["candidate"],
            "trial_id": ranked["trial_id"],
            "epochs": ranked["epochs"],
            "value": ranked[rank_column(objective)].astype(float),
            "se": pd.Series(se, index=ranked.index, dtype=float),
        }
    ).reset_index(drop=True)
    rows["is_none"] = rows["candidate"] == NONE
    rows["label"] = [f"{c} (no augmentation)" if c == NONE else c for c in rows["candidate"]]
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out_png`` atomically as a PNG, close it; returns the path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    _pyplot().close(fig)
    return out_png


def plot_run(run_dir: str | Path, out_png: str | Path, metric: str | None = None) -> Path:
    """A PNG of a search: left, each candidate's selection value (``metric`` at its last epoch; default the run's
    objective, :func:`plot_metric`) with a +-1 standard-error bar where the table has one, the winner on top and
    ``none`` in red; right, ``metric`` per epoch for the top :data:`TOP_CURVES` candidates (epochs without a value
    are skipped), or, when no ``metric`` is given and the objective was read at one epoch only (a branch is read at
    its end), their training loss. Returns the path."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    trials, epochs = read_trials(run_dir), read_epochs(run_dir)
    chosen_metric = metric is not None
    metric = plot_metric(trials, metric)
    rows = selection_rows(trials, metric)
    fig, (values, curves) = plt.subplots(1, 2, figsize=(13, max(4.2, 1.6 + 0.32 * len(rows))))
    y = list(range(len(rows)))[::-1]
    for is_none, colour, name in ((False, "tab:blue", "candidate"), (True, "tab:red", "none (no augmentation)")):
        chosen = rows["is_none"] == is_none
        if chosen.any():
            xerr = rows.loc[chosen, "se"].fillna(0.0)
            ys = [y[i] for i in rows.index[chosen]]
            values.errorbar(rows.loc[chosen, "value"], ys, xerr=xerr, fmt="o", color=colour, capsize=3, label=name)
    if rows["is_none"].any():
        values.axvline(rows.loc[rows["is_none"], "value"].iloc[0], color="tab:red", linestyle=":", linewidth=1)
    values.set_yticks(y, rows["label"], fontsize=8)
    bars = ", bars +-1 SE" if rows["se"].notna().any() else ""
    direction = "higher" if REPORTED_METRICS[metric] == "max" else "lower"
    values.set_xlabel(f"{metric} at the last epoch ({direction} is better{bars})")
    values.set_title(f"selection: winner {rows['candidate'].iloc[0]}" if len(rows) else "no trial reported yet")
    if len(rows):
        values.legend(loc="best", fontsize=8)
    top = [
        epochs[epochs["trial_id"] == trial_id].sort_values("epoch") for trial_id in rows["trial_id"].head(TOP_CURVES)
    ]
    read_once = not any(curve[metric].notna().sum() > 1 for curve in top)
    curve_metric = "train_loss" if read_once and not chosen_metric else metric
    for curve, candidate in zip(top, rows["candidate"].head(TOP_CURVES), strict=True):
        curve = curve.dropna(subset=[curve_metric])
        curves.plot(curve["epoch"], curve[curve_metric], marker="o", markersize=3, label=candidate)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel(curve_metric)
    curves.set_title(f"{curve_metric} per epoch, top {min(TOP_CURVES, len(rows))}")
    if len(rows):
        curves.legend(loc="best", fontsize=8)
    return _save(fig, out_png)


def final_title(metrics: dict | None) -> str:
    """The title of :func:`plot_final` from a final training's ``metrics.json`` dict: the test top-1 (%) of the model
    that ships and of the baseline with their difference (pp) and, where a run other than the search's winner ships,
    the winner's test top-1 and difference too; or a note that there is no metrics.json yet."""
    if metrics is None:
        return "final training (no metrics.json yet)"
    winner = metrics.get("search_winner") or {"run": metrics.get("shipped_run")}
    shipped_other = winner["run"] != metrics.get("shipped_run")
    title = f"test top-1: {'shipped ' if shipped_other else ''}{_accuracy_and_gain(metrics)}"
    baseline = metrics.get("baseline")
    if baseline and "student_test_acc" in baseline:
        title += f", baseline {baseline['candidate']} {100 * baseline['student_test_acc']:.2f} %"
    if shipped_other:
        title += f"; search winner {_accuracy_and_gain(winner)}"
    return title


def _accuracy_and_gain(run: dict) -> str:
    """``<candidate> <test top-1> %`` of a metrics.json run entry, with its gain over the baseline in pp if known."""
    gain = run.get("difference_pp")
    return f"{run['candidate']} {100 * run['student_test_acc']:.2f} %" + ("" if gain is None else f" ({gain:+.2f} pp)")


def final_run_label(name: str, run: str, group: pd.DataFrame) -> str:
    """The legend label of ``run`` of the final training ``name`` (its ``epochs.parquet`` rows, sorted by epoch): the
    candidate of its last epoch, its role (:func:`daq_search.final_runs.run_role`) and, for a run that continued a
    search trunk (earlier epochs under another candidate), the trunk's candidate and last epoch."""
    own = group["candidate"].iloc[-1]
    role = run_role(name, run)
    trunk = group[group["candidate"] != own]
    if trunk.empty:
        return f"{own} ({role})"
    return f"{own} ({role}; epochs 1-{int(trunk['epoch'].max())}: trunk {trunk['candidate'].iloc[0]})"


def plot_final(final_dir: str | Path, out_png: str | Path) -> Path:
    """A PNG of a final training (``RUN_DIR/final``): validation accuracy (%) per epoch of the winner, the other
    finalists and the baseline, each labelled by :func:`final_run_label` (epochs not validated are skipped), titled by
    :func:`final_title`. Returns the path."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    final_dir = Path(final_dir)
    epochs = read_parquet(final_dir / FINAL_EPOCHS_FILE).to_pandas()
    metrics_path = final_dir / FINAL_METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    name = min(epochs["run"].unique(), key=len)  # the winner's run; the others add a suffix to its name
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, group in epochs.groupby("run", sort=False):
        group = group.sort_values("epoch")
        curve = group.dropna(subset=["val_acc"])
        ax.plot(curve["epoch"], 100 * curve["val_acc"], marker=".", label=final_run_label(name, str(run), group))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(textwrap.fill(final_title(metrics), TITLE_WIDTH), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)


def final_plot_path(out_png: str | Path) -> Path:
    """Where ``--plot FILE.png`` puts the final training's plot: ``FILE-final.png`` beside it."""
    out_png = Path(out_png)
    return out_png.with_name(f"{out_png.stem}-final{out_png.suffix or '.png'}")


def plot_results(run_dir: str | Path, out_png: str | Path) -> list[Path]:
    """``daq-search results RUN_DIR --plot FILE.png``: :func:`plot_run` to ``FILE.png`` and, when
    ``RUN_DIR/final/epochs.parquet`` exists, :func:`plot_final` to :func:`final_plot_path`. Returns the paths."""
    written = [plot_run(run_dir, out_png)]
    final_dir = Path(run_dir) / FINAL_DIR
    if (final_dir / FINAL_EPOCHS_FILE).is_file():
        written.append(plot_final(final_dir, final_plot_path(out_png)))
    return written
