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
    teacher = summary.get("teacher")
    if teacher:
        trained = (
            "loaded from an earlier run's cache" if teacher["cached"] else f"trained in {teacher['seconds']:.0f} CPU s"
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
        f"({summary['sweep_wall_seconds']:.0f} s wall on the shared machine).",
        "",
    ]
    if not gate["passes"]:
        lines += [
            "The ground truth of this regime is seed noise: its rule agreements are left out here (they are in "
            "results.json, flagged by the gate) and no ranking claim is made on it.",
            "",
        ]
    else:
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
        lines.append(
            f"| {rule['rule']} | {_fmt(rule['rho'])}{_interval(rule['rho_ci'])} | {_fmt(rule['tau'])}"
            f"{_interval(rule['tau_ci'])} | {rule['pick']} | {rule['regret_pp']:.2f} | {rule['seconds']:.1f} | "
            f"{rule['cost_fraction']:.3f} |"
        )
    lines += [
        "",
        "Spearman/Kendall are sign-corrected (positive: the rule ranks the candidates as full training does); the "
        "interval resamples seeds of the ground truth (for the 1-seed sweep: the range over left-out seeds). Costs "
        "are CPU seconds of one thread over one full sweep's CPU seconds (search: its wall seconds x 2 trial slots, "
        "an upper bound of its CPU seconds); the teacher's own training, shared by every rule, is not counted.",
        "",
    ]
    return lines


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
    speed = summary.get("throughput")
    if speed:
        lines += [
            "",
            f"Trial-loop training throughput (wall, two at a time; each measured under whatever else ran on the "
            f"machine then): plain PyTorch worker processes {speed['plain_median_images_per_s']:.0f} images/s, "
            f"inside Ray Tune trials {speed['ray_median_images_per_s']:.0f} images/s (medians).",
        ]
    for search in summary.get("searches", []):
        lines += [
            "",
            f"Search ({search['objective']}): {search['trials']} trials, {search['epochs_trained']} trial epochs "
            f"after ASHA, tried {len(search['candidates_tried'])} distinct candidates, winner {search['winner']}, "
            f"{search['wall_seconds']:.0f} s wall.",
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
    fig.suptitle(f"{summary['regime']}: rule value vs final quantized top-1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_regret_plot(summaries: list[dict], path: Path) -> None:
    """Every rule of every regime that passes the noise gate as a point: compute as a fraction of one full sweep (x, log) vs regret."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = "osD^v<>"
    floor = 1e-4
    for index, summary in enumerate(s for s in summaries if s.get("complete") and s["gate"]["passes"]):
        for rule in summary["rules"]:
            x = max(rule["cost_fraction"], floor)
            ax.scatter(x, rule["regret_pp"], marker=markers[index % len(markers)], s=30, label=None)
            ax.annotate(
                rule["rule"].replace(" (leave-one-out)", ""),
                (x, rule["regret_pp"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.scatter([], [], marker=markers[index % len(markers)], color="gray", label=summary["regime"])
    ax.set_xscale("log")
    ax.set_xlabel(f"compute / one full sweep (log; zero-cost rules drawn at {floor:g})")
    ax.set_ylabel("regret: best mean top-1 minus the pick's (pp)")
    ax.legend(fontsize=7)
    ax.set_title("cost vs regret of every rule", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
