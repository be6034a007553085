"""``python -m bench.run [--quick] [--out DIR]``: the daq-search benchmark.

For every regime: train the teacher once; train the quantized student with KD to completion under every candidate
and seed (the ground truth) and apply the noise gate; score every candidate with the teacher (zero-training rules,
one-pass vs two-pass cost); train the student for the trial budget and read the student-scored rules; then judge
every rule against the ground truth. Work runs in ``--workers`` processes of one torch thread each; every finished
job is cached in ``<work>/results.json`` so a re-run resumes. Writes ``results.md``, ``results.json`` and PNG plots
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .analysis import regime_summary
from .loop_ratio import record as record_loop_ratio
from .regimes import FULL_REGIMES, Regime, quick_regimes
from .report import cost_regret_plot, regime_tables, scatter_plot
from .runs import Job, execute
from .search_rule import SEARCH_OBJECTIVES, run_search_rule, search_key

TRIAL_SEED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (its numbers are not claims)")
    parser.add_argument("--out", default="bench/results", help="folder for results.md, results.json and plots")
    parser.add_argument("--work", default=None, help="cache folder (default bench/work/full or bench/work/quick)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each")
    parser.add_argument("--report-only", action="store_true", help="write the outputs from the cache, run nothing")
    return parser.parse_args(argv)


def plan_jobs(regimes: tuple[Regime, ...]) -> tuple[list[Job], list[Job]]:
    """(teacher jobs, every other job) in priority order: the teacher rules of every regime, then per regime its
    ground-truth runs (seed by seed, so a cut-short run still holds whole seeds) followed by its trial runs."""
    teachers = [Job("teacher", regime) for regime in regimes]
    jobs = [Job("teacher_rules", regime) for regime in regimes]
    for regime in regimes:
        jobs += [Job("full", regime, c, s) for s in regime.seeds for c in regime.candidates]
        jobs += [Job("trial", regime, c, TRIAL_SEED) for c in regime.candidates]
    return teachers, jobs


def _execute_safely(args: tuple[Job, str]) -> tuple[str, dict]:
    """``execute`` in a worker; an exception becomes ``{"error": traceback}`` (not cached) instead of stopping all."""
    job, work_dir = args
    start = time.perf_counter()
    try:
        key, result = execute(job, work_dir)
    except Exception:
        return job.key(), {"error": traceback.format_exc()}
    result["job_seconds"] = time.perf_counter() - start
    return key, result


def _save(results: dict, path: Path) -> None:
    """Write the cache atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _describe(job: Job, result: dict) -> str:
    if "error" in result:
        return f"FAILED: {result['error'].strip().splitlines()[-1]}"
    if job.kind in ("full", "teacher"):
        return f"test top-1 {100 * result['test_top1']:.2f}%"
    if job.kind == "trial":
        return f"score {result['score']:.4f}, val acc {100 * result['val_acc']:.1f}%"
    return f"{len(result['candidates'])} candidates scored"


def run_jobs(jobs: list[Job], results: dict, cache: Path, work_dir: Path, pool, log) -> None:
    """Run the jobs not yet in ``results`` (on ``pool``, or in this process when it is None), caching each result
    as it arrives."""
    todo = [job for job in jobs if job.key() not in results]
    if not todo:
        return
    by_key = {job.key(): job for job in todo}
    log(f"{len(todo)} jobs to run ({len(jobs) - len(todo)} cached)")
    args = [(job, str(work_dir)) for job in todo]
    outcomes = map(_execute_safely, args) if pool is None else pool.imap_unordered(_execute_safely, args)
    for done, (key, result) in enumerate(outcomes, 1):
        job = by_key[key]
        log(
            f"[{done}/{len(todo)}] {job.kind} {job.regime.name} {job.candidate} seed {job.seed}: "
            f"{_describe(job, result)} ({result.get('job_seconds', 0):.0f} s)"
        )
        if "error" not in result:
            results[key] = result
            _save(results, cache)


def run_searches(
    regimes: tuple[Regime, ...], objectives: tuple[str, ...], results: dict, cache: Path, work_dir: Path, log
) -> None:
    """The search rule for every regime and objective not yet cached: one Ray Tune search each, in this process
    (Ray starts its own two trial workers), as many trials as the regime has candidates."""
    for regime in regimes:
        for objective in objectives:
            key = search_key(regime, objective)
            if key in results:
                continue
            try:
                results[key] = run_search_rule(regime, objective, work_dir, len(regime.candidates), log)
            except Exception:
                log(f"search {regime.name} {objective} FAILED: {traceback.format_exc().strip().splitlines()[-1]}")
                continue
            _save(results, cache)


def write_outputs(summaries: list[dict], out: Path, quick: bool, wall_seconds: float) -> None:
    """results.json (every number), results.md (tables) and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"quick": quick, "wall_seconds": wall_seconds, "regimes": summaries}, indent=1)
    )
    lines = [
        "# daq-search benchmark: raw tables" + (" (QUICK SMOKE RUN: numbers are not claims)" if quick else ""),
        "",
        f"Written by `python -m bench.run{' --quick' if quick else ''}` from its job cache (this invocation ran "
        f"{wall_seconds / 60:.1f} min; cached jobs are not re-run). Accuracies in %, regrets in percentage points "
        "(pp).",
        "",
    ]
    for summary in summaries:
        lines += regime_tables(summary)
        if summary.get("complete"):
            scatter_plot(summary, out / f"scatter-{summary['regime']}.png")
            lines += [f"![scatter](scatter-{summary['regime']}.png)", ""]
    if any(summary.get("complete") and summary["gate"]["passes"] for summary in summaries):
        cost_regret_plot(summaries, out / "cost-regret.png")
        lines += ["![cost vs regret](cost-regret.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (resuming from the cache) and write its outputs; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    regimes = quick_regimes() if args.quick else FULL_REGIMES
    work_dir = Path(args.work or f"bench/work/{'quick' if args.quick else 'full'}")
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    teachers, jobs = plan_jobs(regimes)
    if args.report_only:
        teachers, jobs = [], []
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers > 1 and jobs else None
    try:
        run_jobs(teachers, results, cache, work_dir, pool, log)
        run_jobs(jobs, results, cache, work_dir, pool, log)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not args.report_only:
        run_searches(regimes, SEARCH_OBJECTIVES, results, cache, work_dir, log)
    summaries = [regime_summary(regime, results, TRIAL_SEED) for regime in regimes]
    write_outputs(summaries, Path(args.out), args.quick, time.perf_counter() - start)
    record_loop_ratio(Path(args.out) / "results.json", work_dir, log, quick=args.quick)
    log(f"wrote {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
