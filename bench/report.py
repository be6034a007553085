"""The benchmark's outputs: a markdown report of tables, a scatter plot per regime (each rule's value against the
final top-1, one panel per rule) and one cost-regret plot with every rule of every passing regime as a point."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .regimes import SHORT_NAMES  # noqa: E402


def _short(candidate: str) -> str:
    return SHORT_NAMES.get(candidate, candidate)


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def _interval(ci) -> str:
    low, high = ci
    return "" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"


def regime_tables(summary: dict) -> list[str]:
    """Markdown lines for one regime: teacher, ground truth per candidate, noise gate, and the rules table."""
    lines = [f"### {summary['regime']}", "", summary["description"], ""]
    estimate = summary.get("wall_estimate")
    if estimate:
        lines += [
            f"Estimated wall time on 2 idle cores: {estimate['wall_seconds_2_cores'] / 60:.0f} min "
            f"({estimate['cpu_seconds']:.0f} CPU s from the CPU probe's measured seconds per epoch and read).",
            "",
        ]
    teacher = summary.get("teacher")
    if teacher:
        trained = (
            "loaded from an earlier run's cache"
            if teacher["cached"] or teacher["seconds"] is None
            else f"trained in {teacher['seconds']:.0f} CPU s"
        )
        lines.append(f"Teacher (full precision): test top-1 {100 * teacher['test_top1']:.2f}%, {trained}.")
        lines.append("")
    if not summary.get("complete"):
        done = summary.get("completed_seeds", [])
        lines += [
            f"Ground truth INCOMPLETE: {len(done)} of {len(summary['seeds'])} seeds finished for every candidate "
            "when the run stopped. No noise gate, no rule judged, no ranking claim.",
            "",
        ]
        if done:
            lines += [
                "| candidate | " + " | ".join(f"seed {s}" for s in done) + " |",
                "|---|" + "---|" * len(done),
            ]
            for candidate, row in zip(summary["candidates"], summary["partial_top1_pct"], strict=False):
                lines.append(f"| {candidate} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
            lines.append("")
        return lines
    seeds = summary["seeds"]
    lines += [
        f"Ground truth: final test top-1 (%) of the quantized student, {len(seeds)} seeds.",
        "",
        "| candidate | mean | sd | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|" + "---|" * len(seeds),
    ]
    order = sorted(range(len(summary["candidates"])), key=lambda i: -summary["mean_pct"][i])
    for i in order:
        per_seed = " | ".join(f"{v:.2f}" for v in summary["top1_pct"][i])
        lines.append(
            f"| {summary['candidates'][i]} | {summary['mean_pct'][i]:.2f} | {summary['sd_pct'][i]:.2f} | {per_seed} |"
        )
    gate = summary["gate"]
    verdict = "passes" if gate["passes"] else "NOISE (no ranking claim)"
    lines += [
        "",
        f"Noise gate: split-half Spearman {gate['split_half_rho']:+.2f} over {gate['n_splits']} balanced splits; "
        f"between-candidate sd {gate['between_candidate_sd']:.2f} pp, seed sd {gate['seed_sd']:.2f} pp: **{verdict}**. "
        f"One full sweep ({len(summary['candidates'])} candidates x 1 seed): {summary['sweep_seconds']:.0f} CPU s "
        f"({summary['sweep_wall_seconds']:.0f} s wall).",
        "",
    ]
    strong = summary["strong_vs_none"]
    if strong["candidate"] is not None:
        lines += [
            f"Best strong candidate vs `none`: {strong['candidate']} {strong['margin_pp']:+.2f} pp (2 x seed sd = "
            f"{strong['two_seed_sd_pp']:.2f} pp): {'beats none' if strong['beats_none'] else 'does not beat none'} "
            "by the bar (>= 1 pp and >= 2 seed sd).",
            "",
        ]
    if not gate["passes"]:
        lines += [
            "The gate FAILS: the ground truth of this regime is not separable from seed noise, so the rules below "
            "are shown for the record only and no ranking claim is made on it.",
            "",
        ]
    lines += rules_table(summary["rules"])
    lines += scoring_lines(summary)
    return lines


def rules_table(rules: list[dict]) -> list[str]:
    """Markdown lines of the rules table of a passing regime."""
    lines = [
        "| rule | Spearman [95% CI] | Kendall [95% CI] | pick | regret (pp) | CPU s | cost / sweep |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        name = f"{rule['rule']}: {rule['chosen_rule']}" if rule.get("chosen_rule") else rule["rule"]
        lines.append(
            f"| {name} | {_fmt(rule['rho'])}{_interval(rule['rho_ci'])} | {_fmt(rule['tau'])}"
            f"{_interval(rule['tau_ci'])} | {rule['pick']} | {rule['regret_pp']:.2f} | {rule['seconds']:.1f} | "
            f"{rule['cost_fraction']:.3f} |"
        )
    lines += [
        "",
        "A rule picks the candidate with its best value; ties go to the lower validation loss of the same runs "
        "where the rule has them, then to a seeded random draw (bench/stats.py `pick`), never to the first listed. "
        "Spearman/Kendall are sign-corrected (positive: the rule ranks the candidates as full training does); the "
        "interval resamples seeds of the ground truth (for the 1-seed sweep: the range over left-out seeds). Costs "
        "are CPU seconds over one full sweep's CPU seconds (teacher rules: one thread on CPU; trainings and replayed "
        "searches: the worker's CPU seconds on the run's device); the teacher's own training, shared by every rule, "
        "is not counted. Searches marked (replayed) replay the recorded per-epoch curves of the first seed's runs through "
        "the scheduler's rules (bench/schedulers.py), not real Ray searches.",
        "",
    ]
    if any(rule.get("chosen_rule") for rule in rules):
        lines += [CALIBRATED_NOTE, ""]
    return lines


CALIBRATED_NOTE = (
    "The calibrated search replays daq_search/calibrate.py on the first seed's runs: 3 anchors (the package's default "
    "rule: mildest, middle and strongest of the candidates by its strength order, chosen without the ground truth) "
    "with their full run's final validation accuracy; every student objective (score, score_ce, cmi, align, "
    "sample_ce, val_acc, val_loss) after 10, 25 and 50 % of the epochs (each run its own schedule; the value is "
    "read after the run's last epoch, as the package ranks trials) is a rule; the rule whose "
    "ranking of the anchors agrees best (Kendall) with their final accuracy picks among all candidates by their "
    "runs at its budget. Its cost: the anchors' full and budget runs plus every candidate's run at the chosen "
    "budget, training and reads, over one full sweep."
)


def scoring_lines(summary: dict) -> list[str]:
    """Markdown lines on scoring costs, trial-loop throughput and the searches of one regime."""
    lines: list[str] = []
    costs = summary.get("scoring_costs")
    if costs:
        lines += [
            f"Scoring cost per candidate ({costs['scoring_images']} training images, teacher, CPU s, 1 thread): "
            f"floor (one plain forward epoch) {costs['floor_seconds']:.3f} s; one-pass score "
            f"{costs['one_pass_seconds']:.3f} s ({costs['one_pass_over_floor']:.1f}x floor); two-pass score "
            f"{costs['two_pass_seconds']:.3f} s ({costs['two_pass_over_floor']:.1f}x floor, "
            f"{costs['two_pass_over_one_pass']:.2f}x one-pass); T-stddev {costs['t_stddev_seconds']:.3f} s "
            f"({costs['t_stddev_over_floor']:.1f}x floor). Largest |one-pass - two-pass| over the score terms: "
            f"{costs['max_abs_diff_one_vs_two_pass']:.1e}.",
        ]
    return lines + [""]


def scatter_plot(summary: dict, path: Path) -> None:
    """One panel per rule with values: rule value (x) against mean final top-1 with seed-sd bars (y)."""
    rules = [rule for rule in summary["rules"] if rule["values"] and not rule["rule"].startswith("1-seed")]
    cols = 3
    rows = max(1, math.ceil(len(rules) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    names = [_short(c) for c in summary["candidates"]]
    for ax, rule in zip(axes.flat, rules, strict=False):
        ax.errorbar(rule["values"], summary["mean_pct"], yerr=summary["sd_pct"], fmt="o", ms=4, capsize=2)
        for x, y, name in zip(rule["values"], summary["mean_pct"], names, strict=False):
            ax.annotate(name, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        better = "lower is better" if rule["mode"] == "min" else "higher is better"
        ax.set_title(f"{rule['rule']}\nrho {rule['rho']:+.2f} ({better})", fontsize=8)
        ax.set_ylabel("final test top-1 (%)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rules) :]:
        ax.axis("off")
    fig.suptitle(f"{summary['regime']}: rule value vs final quantized top-1 ({verdict(summary)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(summary: dict) -> str:
    """The regime's gate verdict in words, for plot titles."""
    gate = summary["gate"]
    word = "gate passes" if gate["passes"] else "gate FAILS: seed noise, no ranking claim"
    return f"split-half rho {gate['split_half_rho']:+.2f}, {word}"


def cost_regret_plot(summaries: list[dict], path: Path) -> None:
    """Every rule of every complete regime as a point: compute as a fraction of one full sweep (x, log) vs regret;
    filled markers for regimes that pass the noise gate, hollow for those that fail it (no claim)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^v<>"
    floor = 1e-4
    complete = [s for s in summaries if s.get("complete")]
    for index, summary in enumerate(complete):
        passes = summary["gate"]["passes"]
        marker = markers[index % len(markers)]
        for rule in summary["rules"]:
            x = max(rule["cost_fraction"], floor)
            ax.scatter(
                x,
                rule["regret_pp"],
                marker=marker,
                s=28,
                facecolors=None if passes else "none",
                edgecolors="C0" if passes else "C3",
            )
            if passes:
                ax.annotate(
                    rule["rule"].replace(" (leave-one-out)", "").replace(" (replayed)", ""),
                    (x, rule["regret_pp"]),
                    fontsize=5,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.scatter(
            [], [], marker=marker, color="C0" if passes else "C3", label=f"{summary['regime']} ({verdict(summary)})"
        )
    if not complete:
        ax.text(0.5, 0.5, "no regime has a complete ground truth yet", transform=ax.transAxes, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel(f"compute / one full sweep (log; zero-cost rules drawn at {floor:g})")
    ax.set_ylabel("regret: best mean top-1 minus the pick's (pp)")
    ax.legend(fontsize=6)
    n_pass = sum(1 for s in complete if s["gate"]["passes"])
    ax.set_title(
        f"cost vs regret of every rule ({n_pass} of {len(complete)} complete regimes pass the gate)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cross_regime_lines(table: dict) -> list[str]:
    """Markdown lines of the cross-regime table and the recommended default."""
    regimes = table["passing_regimes"]
    if not regimes:
        return ["No regime passes the noise gate: no cross-regime table and no recommended default.", ""]
    lines = [
        "| rule | " + " | ".join(f"{r}: rho / regret pp / cost" for r in regimes) + " | worst regret (pp) | max cost |",
        "|---|" + "---|" * len(regimes) + "---|---|",
    ]
    for row in sorted(table["rules"], key=lambda r: (r["worst_regret_pp"], r["max_cost_fraction"])):
        cells = []
        for regime in regimes:
            cell = row["per_regime"].get(regime)
            cells.append(
                "-" if cell is None else f"{_fmt(cell['rho'])} / {cell['regret_pp']:.2f} / {cell['cost_fraction']:.3f}"
            )
        name = f"**{row['rule']}**" if row["rule"] == table["recommended"] else row["rule"]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {row['worst_regret_pp']:.2f} | {row['max_cost_fraction']:.3f} |"
        )
    calibrated = [row for row in table["rules"] if any(cell.get("chosen_rule") for cell in row["per_regime"].values())]
    for row in calibrated:
        lines += ["", f"{row['rule']}, per regime:", ""]
        for regime in regimes:
            cell = row["per_regime"].get(regime)
            if cell is not None:
                lines.append(
                    f"- {regime}: {cell['chosen_rule']}; pick {cell['pick']}, regret {cell['regret_pp']:.2f} pp, "
                    f"cost {cell['cost_fraction']:.3f} of a full sweep"
                )
    recommended = table["recommended"] or "none (no rule within the cost limit is judged on every passing regime)"
    lines += [
        "",
        f"**Recommended screen** (lowest worst-case regret over the {len(regimes)} passing regime(s) among rules "
        f"costing <= {table['cost_limit']:.0%} of a full sweep in each): {recommended}. The package's default "
        "screens with it and then trains finalists to the end; that search is measured end to end in shipped.md.",
        "",
    ]
    return lines


def recommendation_sentence(table: dict) -> str:
    """The recommended rule of a cross-regime ``table`` (:func:`bench.analysis.cross_regime`) in one sentence: its
    name, worst-case regret (pp), in how many passing regimes its regret is 0, and its largest cost (share of one
    full sweep); or that no rule is recommended, and why."""
    regimes = table["passing_regimes"]
    if not regimes:
        return "No rule is recommended: no regime passes the noise gate."
    if table["recommended"] is None:
        return (
            f"No rule is recommended: none costing at most {table['cost_limit']:.0%} of a full sweep is judged on "
            f"every one of the {len(regimes)} passing regimes."
        )
    row = next(r for r in table["rules"] if r["rule"] == table["recommended"])
    exact = sum(1 for cell in row["per_regime"].values() if cell["regret_pp"] == 0)
    return (
        f"The rule recommended by these results is {row['rule']}: worst-case regret {row['worst_regret_pp']:.2f} pp "
        f"(0 in {exact} of the {len(regimes)} passing regimes), at most {row['max_cost_fraction']:.2f} of a full "
        f"sweep's compute."
    )
