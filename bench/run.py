"""``python -m bench.run [--quick] [--regimes A,B] [--device cuda] [--jobs N] [--work DIR] [--out DIR]``: the
daq-search benchmark.

For every regime: train the teacher once; train the quantized student with KD to completion under every candidate
and seed (the ground truth) and apply the noise gate; score every candidate with the teacher; train the student at
10, 25 and 50 % of the full epochs (each its own cosine schedule) and read the student-scored rules; replay the
searches on the recorded per-epoch curves; then judge every rule against the ground truth, per regime and across
the passing regimes. Work runs in ``--jobs`` processes of one torch thread each (sharing the GPU with
``--device cuda``); every finished job is cached in ``<work>/results.json`` so a re-run resumes; ``--budget-s``
stops starting jobs when time runs out. Writes ``results.json``, ``summary.md``, ``results.md`` and PNG plots to
``--out`` whatever the gate says (``--no-report`` only fills the cache, for a sweep reported elsewhere).
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

from daq_search.teacher import teacher_key

from .analysis import cross_regime, passing, regime_summary, rejudge
from .loop_ratio import CACHE_FILE as LOOP_RATIO_FILE
from .loop_ratio import FINAL_CACHE_FILE as FINAL_LOOP_RATIO_FILE
from .loop_ratio import record as record_loop_ratio
from .loop_ratio import record_final as record_final_loop_ratio
from .regimes import BUDGETS, FULL_REGIMES, QUICK_REGIMES, Regime, build_regime, parse_seeds
from .report import cost_regret_plot, cross_regime_lines, recommendation_sentence, regime_tables, scatter_plot
from .runs import Job, execute, teacher_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run (its numbers are not claims)")
    parser.add_argument("--regimes", default=None, help="comma-separated regime names (default: all full regimes)")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds replacing every regime's (or $DAQ_BENCH_SEEDS)"
    )
    parser.add_argument("--device", default="cpu", help="where students and teachers train: cpu or cuda")
    parser.add_argument("--jobs", "--workers", dest="jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", default="bench/results", help="folder for the outputs")
    parser.add_argument("--work", default=None, help="cache folder (default bench/work/full or bench/work/quick)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no job after this many seconds")
    parser.add_argument(
        "--grace-s", type=float, default=60.0, help="with --budget-s: then wait this long for running jobs"
    )
    parser.add_argument("--report-only", action="store_true", help="write the outputs from the cache, run nothing")
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="judge the rules in --out's results.json again from what it recorded (no cache needed; see "
        "bench.analysis.rejudge) and rewrite the outputs, run nothing",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="run the jobs into the cache and write no outputs (a sweep reported later with --report-only)",
    )
    return parser.parse_args(argv)


def plan_jobs(regimes: tuple[Regime, ...]) -> tuple[list[Job], list[Job]]:
    """(teacher jobs, every other job) in priority order, regime by regime: the CPU probe and teacher rules, the
    curve seed's full runs, the budget runs, then the other seeds' full runs seed by seed (so a cut-short run holds
    whole seeds). Regimes that share a teacher train it once: only the first of them has a teacher job that trains
    it; the others' teacher jobs (which load it and measure it) wait for its checkpoint, like every other job."""
    teachers, jobs, seen = [], [], set()
    for regime in regimes:
        checkpoint = teacher_key(regime.teacher_data or regime.data, regime.teacher)
        (jobs if checkpoint in seen else teachers).append(Job("teacher", regime))
        seen.add(checkpoint)
    for regime in regimes:
        jobs += [Job("cpu_probe", regime), Job("teacher_rules", regime)]
        first, *others = regime.seeds
        jobs += [Job("student", regime, c, first) for c in regime.candidates]
        jobs += [Job("student", regime, c, first, f) for f in BUDGETS for c in regime.candidates]
        jobs += [Job("student", regime, c, s) for s in others for c in regime.candidates]
    unique = {job.key(): job for job in reversed(jobs)}
    jobs = [job for job in jobs if unique[job.key()] is job]
    return teachers, jobs


def _execute_safely(args: tuple[Job, str, str]) -> tuple[str, dict]:
    """``execute`` in a worker; an exception becomes ``{"error": traceback}`` (not cached) instead of stopping all."""
    job, work_dir, device = args
    start = time.perf_counter()
    try:
        key, result = execute(job, work_dir, device)
    except Exception:
        return job.key(), {"error": traceback.format_exc()}
    result["job_seconds"] = time.perf_counter() - start
    return key, result


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _describe(job: Job, result: dict) -> str:
    if "error" in result:
        return f"FAILED: {result['error'].strip().splitlines()[-1]}"
    if job.kind in ("student", "teacher"):
        return f"test top-1 {100 * result['test_top1']:.2f}%"
    return "done"


def run_jobs(jobs, results, cache, work_dir, device, pool, slots, deadline, grace_s, log) -> bool:
    """Run the jobs not yet in ``results`` (on ``pool``, at most ``slots`` at once, or in this process when it is
    None, in order), caching each result as it arrives; on the pool a job starts once its regime's teacher
    checkpoint exists (teacher jobs, which train it, start at once); no job starts after ``deadline`` (a ``time.monotonic`` value, or None) and running ones are given
    ``grace_s`` more. Returns False when the deadline cut the run short."""
    todo = [job for job in jobs if job.key() not in results]
    if not todo:
        return True
    log(f"{len(todo)} jobs to run ({len(jobs) - len(todo)} cached)")
    done = 0

    def record(job: Job, key: str, result: dict) -> None:
        nonlocal done
        done += 1
        log(
            f"[{done}/{len(todo)}] {job.kind} {job.regime.name} {job.candidate} seed {job.seed} "
            f"{job.fraction:g}: {_describe(job, result)} ({result.get('job_seconds', 0):.0f} s)"
        )
        if "error" not in result:
            results[key] = result
            write_atomic(cache, json.dumps(results, indent=1, sort_keys=True))

    if pool is None:
        for job in todo:
            if deadline is not None and time.monotonic() > deadline:
                return False
            record(job, *_execute_safely((job, str(work_dir), device)))
        return True
    pending, running, trainers, trained = list(todo), {}, set(), set()
    for job in todo:
        checkpoint = teacher_checkpoint(job.regime, work_dir)
        if job.kind == "teacher" and checkpoint not in trained:
            trainers.add(job.key())
            trained.add(checkpoint)
    while pending or running:
        out_of_time = deadline is not None and time.monotonic() > deadline
        startable = [
            job for job in pending if job.key() in trainers or teacher_checkpoint(job.regime, work_dir).is_file()
        ]
        while startable and len(running) < slots and not out_of_time:
            job = startable.pop(0)
            pending.remove(job)
            running[job.key()] = (job, pool.apply_async(_execute_safely, ((job, str(work_dir), device),)))
        if not running and pending and not startable and not out_of_time:
            log(f"{len(pending)} jobs wait for a teacher that failed to train; giving up on them")
            return False
        for key, (job, handle) in list(running.items()):
            if handle.ready():
                del running[key]
                record(job, *handle.get())
        if out_of_time and (not running or time.monotonic() > deadline + grace_s):
            return not pending and not running
        time.sleep(0.05)
    return True


def write_outputs(summaries: list[dict], out: Path, quick: bool, meta: dict) -> None:
    """results.json (every number), summary.md (regimes, gates, cross-regime table, default), results.md (per-regime
    tables) and the plots (a scatter per complete regime and the cost-regret plot), whatever the gates say."""
    out.mkdir(parents=True, exist_ok=True)
    table = cross_regime(summaries)
    summaries = with_shipped_search(summaries, out / "results.json")
    write_atomic(
        out / "results.json",
        json.dumps({"quick": quick, **meta, "regimes": summaries, "cross_regime": table}, indent=1),
    )
    smoke = " (QUICK SMOKE RUN: numbers are not claims)" if quick else ""
    lines = [
        f"# daq-search benchmark: raw tables{smoke}",
        "",
        "Accuracies in %, regrets in percentage points (pp).",
        "",
    ]
    for summary in summaries:
        lines += regime_tables(summary)
        if summary.get("complete"):
            scatter_plot(summary, out / f"scatter-{summary['regime']}.png")
            lines += [f"![scatter](scatter-{summary['regime']}.png)", ""]
    cost_regret_plot(summaries, out / "cost-regret.png")
    write_atomic(out / "results.md", "\n".join(lines))
    write_atomic(out / "summary.md", "\n".join(summary_lines(summaries, table, quick, meta)))


SHIPPED_KEYS = ("shipped_search", "shipped_search_trunks", "shipped_search_finalists", "shipped_search_strength")
"""What ``bench.shipped`` writes into a regime's entry (the default's search, and searches from other trunks)."""


def with_shipped_search(summaries: list[dict], previous: Path) -> list[dict]:
    """``summaries`` with each regime's :data:`SHIPPED_KEYS` carried over from the ``previous`` results.json
    (written by ``bench.shipped``, which this benchmark does not rerun), where the regime's config, seeds and
    candidates are unchanged."""
    if not previous.is_file():
        return summaries
    regimes = json.loads(previous.read_text()).get("regimes", [])
    kept = {_regime_identity(r): {k: r[k] for k in SHIPPED_KEYS if k in r} for r in regimes}
    return [{**s, **kept.get(_regime_identity(s), {})} for s in summaries]


def _regime_identity(summary: dict) -> str:
    return json.dumps([summary["regime"], *(summary.get(k) for k in ("config", "seeds", "candidates"))], sort_keys=True)


def summary_lines(summaries: list[dict], table: dict, quick: bool, meta: dict) -> list[str]:
    """The summary: every regime's gate and verdict, the cross-regime table and the recommended default."""
    lines = [
        "# daq-search benchmark: summary" + (" (QUICK SMOKE RUN: numbers are not claims)" if quick else ""),
        "",
        f"This invocation: device {meta['device']}, {meta['jobs']} worker processes, {meta['wall_seconds'] / 60:.1f} "
        f"min{' (stopped early by --budget-s: unfinished regimes are marked)' if meta['cut_short'] else ''}. "
        "Cached runs are reused, so a regime's runs may come from an earlier invocation: 'ran on' says where its "
        "students trained. Raw tables: results.md; every number: results.json; plots: scatter-*.png and "
        "cost-regret.png.",
        "",
        "| regime | ran on | seeds done | gate (split-half rho) | verdict | best strong vs none (pp) "
        "| est. wall, 2 idle cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        estimate = s.get("wall_estimate")
        wall = f"{estimate['wall_seconds_2_cores'] / 60:.0f} min" if estimate else "n/a"
        ran_on = ", ".join(s.get("devices", [])) or "-"
        if not s.get("complete"):
            done = len(s.get("completed_seeds", []))
            lines.append(f"| {s['regime']} | {ran_on} | {done} of {len(s['seeds'])} | - | incomplete | - | {wall} |")
            continue
        gate, strong = s["gate"], s["strong_vs_none"]
        margin = (
            "-"
            if strong["candidate"] is None
            else (
                f"{strong['candidate']} {strong['margin_pp']:+.2f} (2 sd {strong['two_seed_sd_pp']:.2f})"
                f"{': beats none' if strong['beats_none'] else ''}"
            )
        )
        verdict = "passes" if gate["passes"] else "fails (seed noise)"
        lines.append(
            f"| {s['regime']} | {ran_on} | {len(s['seeds'])} of {len(s['seeds'])} | {gate['split_half_rho']:+.2f} "
            f"| {verdict} | "
            f"{margin} | {wall} |"
        )
    lines += ["", "## Every rule across the passing regimes", ""]
    lines += cross_regime_lines(table)
    lines += [
        "Searches marked (replayed) are not real Ray searches: the first seed's runs at 25 % and 100 % of the full epochs "
        "record every metric after every epoch, and bench/schedulers.py replays TPE (Optuna's own sampler) with "
        "Ray Tune's ASHA rule, or Hyperband, over those curves one trial at a time; the former default search was TPE + "
        "ASHA grace 1 on `score_ce` with a 25 % trial budget. Student rules at 10/25/50 % read a student trained "
        "with its own complete cosine schedule over that budget. " + recommendation_sentence(table),
        "",
    ]
    for s in passing(summaries):
        lines += [f"![scatter](scatter-{s['regime']}.png)", ""]
    lines += ["![cost vs regret](cost-regret.png)", ""]
    return lines


def rejudge_outputs(out: Path) -> None:
    """Rewrite ``out``'s outputs with every complete regime's rules judged again (:func:`bench.analysis.rejudge`)
    from ``out/results.json`` alone, keeping everything else it recorded."""
    recorded = json.loads((out / "results.json").read_text())
    summaries = [rejudge(summary) if summary.get("complete") else summary for summary in recorded["regimes"]]
    meta = {key: value for key, value in recorded.items() if key not in ("quick", "regimes", "cross_regime")}
    write_outputs(summaries, out, recorded["quick"], meta)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (resuming from the cache) and write its outputs; returns the exit status."""
    args = parse_args(argv)
    if args.rejudge:
        rejudge_outputs(Path(args.out))
        return 0
    torch.set_num_threads(1)
    start = time.perf_counter()
    names = args.regimes.split(",") if args.regimes else (QUICK_REGIMES if args.quick else FULL_REGIMES)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    try:
        regimes = tuple(build_regime(name.strip(), seeds) for name in names)
    except ValueError as error:
        print(f"python -m bench.run: error: {error}", file=sys.stderr)
        return 2
    work_dir = Path(args.work or f"bench/work/{'quick' if args.quick else 'full'}")
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    teachers, jobs = plan_jobs(regimes)
    if args.report_only:
        teachers, jobs = [], []
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    pool = None
    if args.jobs > 1 and any(job.key() not in results for job in teachers + jobs):
        pool = multiprocessing.get_context("spawn").Pool(args.jobs)
    finished = False
    try:
        finished = run_jobs(
            teachers + jobs, results, cache, work_dir, args.device, pool, args.jobs, deadline, args.grace_s, log
        )
    finally:
        if pool is not None:
            pool.terminate() if not finished else pool.close()
            pool.join()
    if args.no_report:
        log(f"--no-report: {len(results)} results cached in {cache}")
        return 0 if finished else 1
    summaries = [regime_summary(regime, results) for regime in regimes]
    meta = {
        "device": args.device,
        "jobs": args.jobs,
        "wall_seconds": time.perf_counter() - start,
        "cut_short": not finished,
    }
    write_outputs(summaries, Path(args.out), args.quick, meta)
    for cache_file, record, what in (
        (LOOP_RATIO_FILE, record_loop_ratio, "trial-loop"),
        (FINAL_LOOP_RATIO_FILE, record_final_loop_ratio, "final-loop"),
    ):
        if args.report_only and not (work_dir / cache_file).is_file():
            log(f"--report-only: {work_dir / cache_file} not cached, so no {what} ratio (nothing is measured)")
        else:
            record(Path(args.out) / "results.json", work_dir, log, quick=args.quick)
    log(f"wrote {args.out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
