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
from .regimes import FULL_REGIMES, Regime, quick_regimes
from .report import cost_regret_plot, regime_tables, scatter_plot
from .runs import Job, execute

TRIAL_SEED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (its numbers are not claims)")
    parser.add_argument("--out", default="bench/results", help="folder for results.md, results.json and plots")
    parser.add_argument("--work", default=None, help="cache folder (default bench/work/full or bench/work/quick)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each")
    return parser.parse_args(argv)


def plan_jobs(regimes: tuple[Regime, ...]) -> tuple[list[Job], list[Job]]:
    """(teacher jobs, every other job): teacher rules first, then the ground-truth runs longest first, then trials."""
    teachers = [Job("teacher", regime) for regime in regimes]
    rules = [Job("teacher_rules", regime) for regime in regimes]
    full = [Job("full", r, c, s) for r in regimes for s in r.seeds for c in r.candidates]
    full.sort(key=lambda job: -job.regime.recipe.epochs * len(job.regime.candidates) * _pixels(job.regime))
    trials = [Job("trial", r, c, TRIAL_SEED) for r in regimes for c in r.candidates]
    return teachers, rules + full + trials


def _pixels(regime: Regime) -> float:
    """A relative cost of one training image of the regime (pixels times squared width)."""
    return (regime.data.image_size or 28) ** 2 * regime.student.width**2 * (regime.data.train_per_class or 100)


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


def run_jobs(jobs: list[Job], results: dict, cache: Path, work_dir: Path, workers: int, log) -> None:
    """Run the jobs not yet in ``results`` on ``workers`` processes, caching each result as it arrives."""
    todo = [job for job in jobs if job.key() not in results]
    by_key = {job.key(): job for job in todo}
    if not todo:
        return
    log(f"{len(todo)} jobs to run ({len(jobs) - len(todo)} cached)")
    args = [(job, str(work_dir)) for job in todo]
    if workers == 1:
        outcomes = map(_execute_safely, args)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        outcomes = pool.imap_unordered(_execute_safely, args)
    try:
        for done, (key, result) in enumerate(outcomes, 1):
            job = by_key[key]
            log(f"[{done}/{len(todo)}] {job.kind} {job.regime.name} {job.candidate} seed {job.seed}: "
                f"{_describe(job, result)} ({result.get('job_seconds', 0):.0f} s)")
            if "error" not in result:
                results[key] = result
                _save(results, cache)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def write_outputs(summaries: list[dict], out: Path, quick: bool, wall_seconds: float) -> None:
    """results.json (every number), results.md (tables) and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"quick": quick, "wall_seconds": wall_seconds, "regimes": summaries}, indent=1))
    lines = [
        "# daq-search benchmark: raw tables" + (" (QUICK SMOKE RUN: numbers are not claims)" if quick else ""),
        "",
        f"Written by `python -m bench.run{' --quick' if quick else ''}` in {wall_seconds / 60:.1f} min "
        f"(this invocation; cached jobs not re-run). Accuracies in %, regrets in percentage points (pp).",
        "",
    ]
    for summary in summaries:
        lines += regime_tables(summary)
        if summary.get("complete"):
            scatter_plot(summary, out / f"scatter-{summary['regime']}.png")
            lines += [f"![scatter](scatter-{summary['regime']}.png)", ""]
    if any(summary.get("complete") for summary in summaries):
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
    run_jobs(teachers, results, cache, work_dir, args.workers, log)
    run_jobs(jobs, results, cache, work_dir, args.workers, log)
    summaries = [regime_summary(regime, results, TRIAL_SEED) for regime in regimes]
    write_outputs(summaries, Path(args.out), args.quick, time.perf_counter() - start)
    log(f"wrote {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
