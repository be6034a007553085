"""A self-calibrating search: a few anchors trained to the end choose the rule (objective) and trial budget that the
search then runs with.

A job with a ``calibrate:`` section (:class:`~daq_search.config.CalibrateConfig`) runs, before the search, one Ray
Tune experiment in ``RUN_DIR/calibration/`` (same resources, concurrency, failure policy and storage as the
search; resumable). For every anchor it trains

- one *full* run: the final recipe (``final.recipe``) for ``calibrate.epochs`` epochs (default
  ``final.recipe.epochs``); the anchor's *final accuracy* is its validation accuracy after the last epoch;
- one *budget* run per distinct budget: the trial recipe (``trial``) for ``b`` epochs with its own complete schedule
  (the cosine decays to zero at ``b``, exactly as a search trial with ``trial.epochs = b`` would train; no value is
  read off a longer run). ``b = ceil(fraction * calibrate.epochs)``, at least 1, for each fraction of
  ``calibrate.rules.budgets``.

A *rule* is an objective read after a budget: its value on an anchor is the objective at the last epoch of that
anchor's budget run, the value the search ranks a trial by (:func:`daq_search.results.rank_column`). Every rule is read from the same
budget runs (each run reports every metric), so the cost is one run per anchor and budget, not per rule. Teacher-only
rules (``teacher_*``, ``t_stddev``) do not depend on the budget, so the cheapest budget wins their ties.

The choice (:func:`choose_rule`, a pure function of the table, also used by the benchmark): a rule's *agreement*
is Kendall's tau-b between its sign-corrected values (higher = predicted better) and the anchors' final accuracy. The
rule with the highest agreement wins; ties go to the cheaper budget, then to the job's own objective, then to the
order the rules are listed in. A rule whose values do not separate the anchors (all equal) has no agreement and
loses to every rule that separates them. With fewer than 2 anchors of distinct final accuracy, or no rule that
separates them, the search keeps the job's ``objective`` and ``trial.epochs`` and says so.

The evidence is ``RUN_DIR/calibration.parquet`` (one row per anchor and rule: :data:`CALIBRATION_SCHEMA`); the
choice goes into the search's job (``objective``, ``trial.epochs``, the anchors first in
``searcher.points_to_evaluate``, so an anchor can win the search) and thence into ``winner.yaml`` as
``calibration:`` (:class:`~daq_search.config.CalibrationRecord`). Each completed full run is also saved as a Ray
Train checkpoint (``RUN_DIR/calibration/reuse/<trial_id>/state.pt``) that ``daq-search train`` continues from, so a
winning anchor is not trained to the same budget a second time.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .candidates import Candidate, parse_candidate
from .config import CalibrateConfig, CalibrationRecord, JobSpec
from .errors import DaqSearchError
from .metric import METRIC_MODES
from .results import rank_column
from .spaces import SearchSpace

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .search.plan import SearchPlan

CALIBRATION_DIR = "calibration"
"""The calibration's Tune experiment folder inside RUN_DIR (its runs' ``trials.parquet`` is there too)."""
CALIBRATION_FILE = "calibration.parquet"
REUSE_DIR = "reuse"
FULL = "full"
"""The variant name of an anchor's full run; a budget run's is ``budget<epochs>``."""

POLICY_STRENGTH = (
    "none",
    "random_erasing",
    "random_affine",
    "augmix",
    "autoaugment",
    "randaugment",
    "trivialaugment",
)
"""Image policies from mild to strong (the default anchors' order): random erasing blanks one patch; random affine
moves the whole image without touching its colours; AugMix blends
augmented chains back into the original image; AutoAugment applies two tuned operations; RandAugment N operations
at one fixed magnitude; TrivialAugment one operation at a uniformly random magnitude up to the maximum."""
MIX_STRENGTH = (None, "mixup", "cutmix")
"""Batch mixes from mild to strong (no mix first)."""

CALIBRATION_SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("objective", pa.string(), nullable=False),
        pa.field("budget", pa.int64(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("final_acc", pa.float64()),
        pa.field("agreement", pa.float64()),
        pa.field("chosen", pa.bool_(), nullable=False),
    ]
)
"""Columns of ``calibration.parquet``: one row per anchor and rule. ``rule`` is ``<objective>@<budget>``;
``budget`` the rule's trial budget in epochs; ``value`` the objective at the last epoch of the anchor's budget run (null
when that run failed); ``final_acc`` the anchor's validation accuracy after its full run (null when it failed);
``agreement`` the rule's Kendall tau-b with the final accuracies (null when the rule does not separate the anchors);
``chosen`` marks the rows of the rule the search runs with. The file's metadata holds ``daq_search.fallback``."""


# --- the anchors and the rules, from the job alone -----------------------------------------------------------


def strength_key(candidate: Candidate) -> tuple:
    """How strong an augmentation is, as a sort key (mild first): how many parts it has (0: ``none``; 1: a policy
    or a mix; 2: both), the policy's place in :data:`POLICY_STRENGTH`, the mix's in :data:`MIX_STRENGTH`, its
    numeric knob values (higher = stronger: more operations, larger magnitude, severity, erasing probability,
    mixing alpha), and the id (a fixed order among equals)."""
    parts = (candidate.policy != "none") + (candidate.mix is not None)
    policy = POLICY_STRENGTH.index(candidate.policy) if candidate.policy in POLICY_STRENGTH else len(POLICY_STRENGTH)
    mix = MIX_STRENGTH.index(candidate.mix) if candidate.mix in MIX_STRENGTH else len(MIX_STRENGTH)
    knobs = tuple(
        float(value)
        for _, value in (*candidate.policy_args, *candidate.mix_args)
        if isinstance(value, int | float) and not isinstance(value, bool)
    )
    return (parts, policy, mix, knobs, candidate.id)


def default_anchors(space: SearchSpace) -> list[str]:
    """Three anchors spanning the space from mild to strong, from the space alone: its candidates
    (:meth:`SearchSpace.candidates`) sorted by :func:`strength_key`, then the first (mildest), the middle one
    (index ``n // 2``) and the last (strongest); every candidate when the space has 3 or fewer."""
    ordered = sorted(dict.fromkeys(space.candidates()), key=strength_key)
    if len(ordered) < 2:
        raise DaqSearchError(
            f"calibrate.anchors: the search space {space.name!r} has {len(ordered)} candidate(s), a ranking needs "
            "at least 2; allowed: a space with 2 or more candidates"
        )
    picked = ordered if len(ordered) <= 3 else [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
    return [candidate.id for candidate in picked]


def anchor_ids(job: JobSpec, space: SearchSpace) -> list[str]:
    """The job's anchors: ``calibrate.anchors`` as listed, else :func:`default_anchors` of its space."""
    if job.calibrate is None:
        raise DaqSearchError("calibrate: not set; the job has no calibration")
    return list(job.calibrate.anchors) if job.calibrate.anchors is not None else default_anchors(space)


def full_epochs(job: JobSpec) -> int:
    """The anchors' full budget in epochs: ``calibrate.epochs``, default ``final.recipe.epochs``."""
    calibrate = job.calibrate or CalibrateConfig()
    return calibrate.epochs or job.final.recipe.epochs


def budget_epochs(fraction: float, full: int) -> int:
    """A budget fraction of ``full`` epochs as whole epochs: ``ceil(fraction * full)``, at least 1."""
    return max(1, math.ceil(round(fraction * full, 9)))


@dataclass(frozen=True)
class Rule:
    """An objective read after a trial budget of ``budget`` epochs."""

    objective: str
    budget: int

    @property
    def name(self) -> str:
        """``<objective>@<budget>``."""
        return f"{self.objective}@{self.budget}"


def calibration_rules(job: JobSpec) -> list[Rule]:
    """Every (objective, budget) rule of the job's ``calibrate.rules``, objectives in their listed order (default:
    :data:`~daq_search.metric.METRIC_MODES`), each at every distinct budget, cheapest first."""
    calibrate = job.calibrate or CalibrateConfig()
    full = full_epochs(job)
    budgets = sorted({budget_epochs(fraction, full) for fraction in calibrate.rules.budgets})
    objectives = calibrate.rules.objectives or list(METRIC_MODES)
    return [Rule(objective, budget) for objective in objectives for budget in budgets]


# --- the choice: a pure function of the anchors' table --------------------------------------------------------


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long sequences: (concordant - discordant pairs) / sqrt((pairs - pairs tied in
    x) * (pairs - pairs tied in y)); None when either side has no untied pair (nothing to rank)."""
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    if pairs - tied_x == 0 or pairs - tied_y == 0:
        return None
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


@dataclass(frozen=True)
class Choice:
    """The calibration's choice: the search's objective and trial budget (epochs), the rule's agreement (None on a
    fallback) and, on a fallback, why the job's own objective and budget were kept."""

    objective: str
    budget: int
    agreement: float | None
    fallback: str | None = None


AGREEMENT_DIGITS = 12
"""Agreements are compared rounded to this many digits, so float noise does not break a tie."""


def rule_agreements(table: pd.DataFrame, modes: Mapping[str, str] = METRIC_MODES) -> pd.DataFrame:
    """One row per rule of ``table`` (columns ``anchor``, ``objective``, ``budget``, ``value``, ``final_acc``; one
    row per anchor and rule) with ``agreement``: Kendall's tau-b over the anchors that have both a value and a final
    accuracy, between the value in the direction that makes it better (``modes[objective]``: ``min`` values are
    negated) and the final accuracy; NaN when fewer than 2 such anchors or the rule's values are all equal. Rules
    keep their first-appearance order."""
    rows = []
    for (objective, budget), group in table.groupby(["objective", "budget"], sort=False):
        known = group.dropna(subset=["value", "final_acc"])
        sign = -1.0 if modes[objective] == "min" else 1.0
        agreement = None
        if len(known) >= 2:
            agreement = kendall_tau_b([sign * v for v in known["value"]], list(known["final_acc"]))
        rows.append({"objective": objective, "budget": int(budget), "agreement": agreement})
    return pd.DataFrame(rows, columns=["objective", "budget", "agreement"])


def choose_rule(
    table: pd.DataFrame, default: Rule, modes: Mapping[str, str] = METRIC_MODES
) -> tuple[Choice, pd.DataFrame]:
    """The rule the anchors support, from ``table`` (one row per anchor and rule: ``anchor``, ``objective``,
    ``budget`` (epochs), ``value``, ``final_acc``; rules in their preference order for full ties).

    The highest :func:`rule_agreements` wins; ties (to :data:`AGREEMENT_DIGITS` digits) go to the smaller budget,
    then to ``default.objective``, then to the earlier rule. A rule without agreement (it cannot separate the
    anchors) never wins. With fewer than 2 distinct final accuracies among the anchors, or no rule that separates
    them, the choice falls back to ``default`` with the reason in ``fallback``. Returns the choice and the per-rule
    agreements."""
    agreements = rule_agreements(table, modes)
    finals = table.drop_duplicates("anchor")["final_acc"].dropna()
    if finals.nunique() < 2:
        reason = f"fewer than 2 anchors with distinct final accuracy ({finals.nunique()} distinct of {len(finals)})"
        return Choice(default.objective, default.budget, None, reason), agreements
    ranked = agreements.dropna(subset=["agreement"]).assign(
        order=lambda df: range(len(df)),
        key=lambda df: -df["agreement"].astype(float).round(AGREEMENT_DIGITS),
        not_default=lambda df: df["objective"] != default.objective,
    )
    if ranked.empty:
        return Choice(default.objective, default.budget, None, "no rule separates the anchors"), agreements
    best = ranked.sort_values(["key", "budget", "not_default", "order"], kind="stable").iloc[0]
    return Choice(str(best["objective"]), int(best["budget"]), float(best["agreement"])), agreements


def calibration_table(values: pd.DataFrame, agreements: pd.DataFrame, choice: Choice) -> pa.Table:
    """``calibration.parquet``'s table: ``values`` (one row per anchor and rule) joined with the rules'
    agreements, ``rule`` and ``chosen`` added, in :data:`CALIBRATION_SCHEMA`."""
    merged = values.merge(agreements, on=["objective", "budget"], how="left", sort=False)
    merged["rule"] = [Rule(o, int(b)).name for o, b in zip(merged["objective"], merged["budget"], strict=True)]
    merged["chosen"] = (
        (merged["objective"] == choice.objective) & (merged["budget"] == choice.budget) & (choice.fallback is None)
    )
    merged["agreement"] = merged["agreement"].astype(float)
    columns = [field.name for field in CALIBRATION_SCHEMA]
    meta = {"daq_search.fallback": choice.fallback or ""}
    return pa.Table.from_pandas(
        merged[columns], schema=CALIBRATION_SCHEMA, preserve_index=False
    ).replace_schema_metadata(meta)


def anchor_values(runs: pd.DataFrame, anchors: Sequence[str], rules: Sequence[Rule]) -> pd.DataFrame:
    """The calibration's evidence from its runs table (``RUN_DIR/calibration/trials.parquet`` columns ``candidate``,
    ``variant``, ``budget``, ``status``, ``val_acc_last`` and ``<objective>_last``): one row per anchor and rule with
    ``value`` (the rule's objective at the last epoch of the anchor's completed budget run) and ``final_acc`` (the
    anchor's ``val_acc`` after its completed full run); None where the run did not complete."""
    done = runs[runs["status"] == "completed"]
    rows = []
    for anchor in anchors:
        mine = done[done["candidate"] == anchor]
        full = mine[mine["variant"] == FULL]
        final_acc = float(full["val_acc_last"].iloc[0]) if len(full) else None
        for rule in rules:
            run = mine[mine["variant"] == budget_variant(rule.budget)]
            value = run[rank_column(rule.objective)].iloc[0] if len(run) else None
            value = None if value is None or pd.isna(value) else float(value)
            rows.append(
                {"anchor": anchor, "objective": rule.objective, "budget": rule.budget, "value": value,
                 "final_acc": final_acc}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["anchor", "objective", "budget", "value", "final_acc"])


def budget_variant(budget: int) -> str:
    """The variant name of a budget run of ``budget`` epochs."""
    return f"budget{budget}"


# --- the runs: one Ray Tune experiment before the search ------------------------------------------------------


def run_variants(job: JobSpec, rules: Sequence[Rule]) -> dict[str, JobSpec]:
    """The job each calibration run trains with, by variant: :data:`FULL` (``trial`` = the final recipe for the
    full budget) and ``budget<b>`` per distinct budget (``trial`` with ``epochs = b``)."""
    variants = {
        FULL: job.model_copy(update={"trial": job.final.recipe.model_copy(update={"epochs": full_epochs(job)})})
    }
    for budget in sorted({rule.budget for rule in rules}):
        variants[budget_variant(budget)] = job.model_copy(
            update={"trial": job.trial.model_copy(update={"epochs": budget})}
        )
    return variants


def run_anchor(config: dict) -> None:
    """One calibration run (a Ray Tune trainable): :func:`daq_search.search.run_trial` of anchor ``candidate_id``
    with the job of its ``variant`` (``config["jobs"][variant]``)."""
    from .search.trial import CANDIDATE_KEY, run_trial

    run_trial(
        {
            "job": config["jobs"][config["variant"]],
            "teacher_checkpoint": config["teacher_checkpoint"],
            CANDIDATE_KEY: config[CANDIDATE_KEY],
        }
    )


def _run_classes():
    """The runs table and Tune callback of a calibration (defined on first use: they extend the search's)."""
    from .results import TrialTable
    from .search.trial import CANDIDATE_KEY
    from .search.watch import SearchCallback

    class RunTable(TrialTable):
        """The search's trial table, where each run's own ``budget`` column decides ``completed``."""

        def end(self, trial_id: str, error: str | None = None) -> dict:
            row = super().end(trial_id, error)
            if error is None:
                row["status"] = "completed" if row["epochs"] >= (row.get("budget") or self.max_epochs) else "pruned"
            return row

    class RunCallback(SearchCallback):
        """The search's callback, recording each run's variant and budget as its knob columns."""

        def __init__(self, table, epochs_of: dict[str, int], **kwargs):
            super().__init__(table, **kwargs)
            self.epochs_of = epochs_of

        def _start(self, trial) -> Candidate:
            candidate = parse_candidate(trial.config[CANDIDATE_KEY])
            variant = trial.config["variant"]
            self.table.start(trial.trial_id, candidate.id, {"variant": variant, "budget": self.epochs_of[variant]})
            return candidate

    return RunTable, RunCallback


def calibrate_search(
    plan: SearchPlan,
    teacher_path: Path,
    *,
    address: str | None = None,
    resume: bool = False,
) -> SearchPlan:
    """Run (or with ``resume`` continue) the calibration of a plan whose job has ``calibrate:`` (see the module
    docstring), write ``RUN_DIR/calibration.parquet`` and return the plan the search runs: the job with the chosen
    ``objective`` and ``trial.epochs``, the anchors first in ``searcher.points_to_evaluate`` and ``calibration``
    set. A plan without ``calibrate:`` is returned as is. Raises KeyboardInterrupt when interrupted (Ctrl-C), so
    no search starts on a partial calibration."""
    from ray import tune

    from .runtime import ray_session
    from .search.plan import SearchPlan, _save_job, check_resumable
    from .search.run import trial_dirname
    from .search.trial import CANDIDATE_KEY

    job = plan.job
    if job.calibrate is None:
        return plan
    folder = plan.run_dir / CALIBRATION_DIR
    restorable = check_resumable(plan, folder, resume)
    if not restorable:
        _save_job(plan)
    anchors, rules = anchor_ids(job, plan.space), calibration_rules(job)
    variants = run_variants(job, rules)
    epochs_of = {name: spec.trial.epochs for name, spec in variants.items()}
    run_table, run_callback = _run_classes()
    table = run_table(
        folder, max_epochs=full_epochs(job), knob_types={"variant": "str", "budget": "int"},
        objective=job.objective, mode=job.mode,
    )  # fmt: skip
    callback = run_callback(table, epochs_of, prefix="calibration: ", summary_every_s=1e9)
    resources = {"cpu": job.resources.cpus_per_trial, "gpu": job.resources.gpus_per_trial}
    trainable = tune.with_resources(run_anchor, resources)
    logger.info(
        f"calibration: {len(anchors)} anchors ({', '.join(anchors)}) trained {full_epochs(job)} epochs, and "
        f"{len(rules)} rules read after {', '.join(str(b) for b in sorted({rule.budget for rule in rules}))} epochs"
    )
    try:
        with ray_session(address):
            if restorable:
                tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=False)
                if tuner._local_tuner is not None:
                    tuner._local_tuner.get_run_config().callbacks = [callback]
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space={
                        "variant": tune.grid_search(list(variants)),
                        CANDIDATE_KEY: tune.grid_search(anchors),
                        "jobs": {name: spec.model_dump(mode="json") for name, spec in variants.items()},
                        "teacher_checkpoint": str(teacher_path),
                    },
                    tune_config=tune.TuneConfig(
                        max_concurrent_trials=job.max_concurrent_trials,
                        reuse_actors=True,
                        trial_dirname_creator=trial_dirname,
                    ),
                    run_config=tune.RunConfig(
                        name=CALIBRATION_DIR,
                        storage_path=str(plan.run_dir),
                        callbacks=[callback],
                        failure_config=tune.FailureConfig(max_failures=job.max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                        verbose=0,
                    ),
                )
            grid = tuner.fit()
    except ConnectionError as err:
        raise DaqSearchError(
            f"--address: cannot connect to the Ray cluster at {address} ({str(err).strip()}); check the address "
            "and, on a cluster with token authentication, RAY_AUTH_TOKEN"
        ) from None
    table.load()
    runs = table.frame()
    if len(runs) < len(variants) * len(anchors) or (runs["status"] == "running").any():
        raise KeyboardInterrupt("calibration interrupted")
    values = anchor_values(runs, anchors, rules)
    default = Rule(job.objective, job.trial.epochs)
    choice, agreements = choose_rule(values, default)
    _write_atomic(calibration_table(values, agreements, choice), plan.run_dir / CALIBRATION_FILE)
    checkpoints = _reusable_checkpoints(grid, runs, folder)
    for line in choice_lines(choice, values):
        logger.info(f"calibration: {line}")
    record = CalibrationRecord(
        rule=choice.objective,
        budget=choice.budget,
        agreement=choice.agreement,
        anchors=anchors,
        fallback=choice.fallback,
        anchor_epochs=full_epochs(job),
        checkpoints=checkpoints,
    )
    points = list(dict.fromkeys([*anchors, *job.searcher.points_to_evaluate]))
    calibrated = job.model_copy(
        update={
            "objective": choice.objective,
            "trial": job.trial.model_copy(update={"epochs": choice.budget}),
            "searcher": job.searcher.model_copy(update={"points_to_evaluate": points}),
            "calibration": record,
        }
    )
    return SearchPlan(calibrated, plan.space, plan.bundle, plan.storage, plan.name)


def choice_lines(choice: Choice, values: pd.DataFrame) -> list[str]:
    """What a calibration chose, in words: the anchors' final accuracy, then the rule or the fallback."""
    finals = values.drop_duplicates("anchor")
    accs = ", ".join(
        f"{anchor} {'failed' if pd.isna(acc) else f'{acc:.4f}'}"
        for anchor, acc in zip(finals["anchor"], finals["final_acc"], strict=True)
    )
    lines = [f"final val_acc of the anchors: {accs}"]
    if choice.fallback is not None:
        lines.append(
            f"{choice.fallback}: the search keeps the job's objective {choice.objective} and budget "
            f"{choice.budget} epochs"
        )
    else:
        lines.append(
            f"the search runs with {choice.objective} after {choice.budget} epochs "
            f"(Kendall agreement with the anchors' final accuracy {choice.agreement:+.2f})"
        )
    return lines


def _reusable_checkpoints(grid, runs: pd.DataFrame, folder: Path) -> dict[str, str]:
    """Each completed full run's last Tune checkpoint rewritten as a Ray Train checkpoint of the final training
    (``folder/reuse/<trial_id>/state.pt``: the keys :func:`daq_search.train.train_fn_per_worker` resumes from, with
    the run's epochs as history), by anchor id. Kept when already written (a resumed calibration)."""
    from .checkpoints import load_state, save_checkpoint
    from .results import read_epochs
    from .search.trial import CANDIDATE_KEY, TRIAL_STATE_FILE

    epochs = read_epochs(folder)
    done = set(runs.loc[(runs["status"] == "completed") & (runs["variant"] == FULL), "trial_id"])
    out: dict[str, str] = {}
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        if trial_id not in done or result.checkpoint is None:
            continue
        anchor = result.config[CANDIDATE_KEY]
        target = folder / REUSE_DIR / trial_id
        out[anchor] = str(target)
        if (target / "state.pt").is_file():
            continue
        with result.checkpoint.as_directory() as source:
            state = load_state(Path(source) / TRIAL_STATE_FILE, f"checkpoint of calibration run {trial_id}")
        mine = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        history = [
            {"epoch": int(row.epoch), "train_loss": row.train_loss, "val_acc": row.val_acc, "val_loss": row.val_loss,
             "images_per_s": row.images_per_s, "lr": math.nan, "candidate": anchor}
            for row in mine.itertuples()
        ]  # fmt: skip
        keys = ("model", "optimizer", "scheduler", "epoch")
        payload = {key: state[key] for key in keys} | {
            "epochs": state["epoch"],
            "candidate": anchor,
            "history": history,
        }
        save_checkpoint(target / "state.pt", payload)
    return out


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
