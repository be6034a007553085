"""``daq-search``: the command line, a thin layer over :mod:`daq_search.search`, :mod:`daq_search.results` and
:mod:`daq_search.train`.

Sub-commands: ``search`` (run or resume a search), ``results`` (read a run's tables), ``score`` (teacher-only
ranking of a space), ``submit`` (send a search to a Ray cluster) and ``train`` (final training of a winner). Each
imports what it needs when it runs, so ``results`` starts without Ray or torch. Bad input prints one line,
``daq-search: error: <message>``, and exits with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import DaqSearchError
from .logs import show_progress

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Interrupted(Exception):
    """Ctrl-C, with the line that tells the user where things stand."""


def _search(args: argparse.Namespace) -> int:
    from .config import load_job
    from .results import TRIALS_FILE
    from .runtime import check_address
    from .search import plan_search, run_search, top_table
    from .selection import describe_rule

    plan = plan_search(args.job, storage=args.storage, name=args.name)
    check_address(args.address)
    print(describe_rule(plan.job), flush=True)
    interrupted = f"interrupted; rows so far are in {plan.run_dir / TRIALS_FILE}; continue with --resume"
    try:
        outcome = run_search(plan, address=args.address, resume=args.resume)
    except KeyboardInterrupt:
        raise _Interrupted(interrupted) from None
    if not outcome.finished:
        raise _Interrupted(interrupted)
    if outcome.winner_file is None:
        print(f"no trial completed or was pruned, so there is no winner; errors are in {plan.run_dir / TRIALS_FILE}")
        return 1
    job = plan.job
    print(f"\ntop trials by {job.objective} ({job.mode}; most epochs first, then the last epoch's value):")
    print(top_table(outcome.trials, job.objective, job.mode), end="")
    for line in chosen_lines(job, outcome.trials, load_job(outcome.winner_file)):
        print(line)
    print(f"winner: {outcome.winner_file}")
    print(f"train it with: daq-search train {outcome.winner_file}")
    return 0


def chosen_lines(job, trials, winner) -> list[str]:
    """The lines a finished search prints about its choice: ``chosen:`` (the winner file's ``candidate`` with its
    trial's reading), ``finalists:`` when the winner file names others, and, when the trials' readings chose, a
    ``note:`` when the winner is within two standard errors of the runner-up."""
    from .results import best_trial, rank_column, runner_up_note

    by_strength = job.final.finalists_by == "strength"
    best = best_trial(trials[trials["candidate"] == winner.candidate], job.objective, job.mode)
    how = (
        "at a golden point of the strength order"
        if by_strength
        else f"the best of {len(trials)} trials by the selection rule above"
    )
    lines = [
        f"chosen: {winner.candidate} ({job.objective} {best[rank_column(job.objective)]:.4g} after "
        f"{best['epochs']} epochs, {how})"
    ]
    if winner.finalists:
        why = "the other golden points of the strength order" if by_strength else "the best of the other strength tiers"
        lines.append(f"finalists: {', '.join(winner.finalists)} ({why}; the final training trains them)")
    note = None if by_strength else runner_up_note(trials, job.objective, job.mode)
    if note is not None:
        lines.append(f"note: {note}")
    return lines


def _results(args: argparse.Namespace) -> int:
    from .results import format_calibration, format_table, read_calibration, read_trials, sort_trials

    trials = read_trials(args.run_dir)
    calibration = read_calibration(args.run_dir)
    if calibration is not None and args.format in ("table", "markdown"):
        sys.stdout.write(format_calibration(calibration, args.format))
    if args.status is not None:
        trials = trials[trials["status"] == args.status]
    trials = sort_trials(trials, args.sort)
    if args.top is not None:
        trials = trials.head(args.top)
    sys.stdout.write(format_table(trials, args.format))
    if args.plot is not None:
        from .plots import plot_results

        for path in plot_results(args.run_dir, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from .results import format_table
    from .search import score_space

    table, path = score_space(args.job, space_path=args.space, storage=args.storage, name=args.name)
    sys.stdout.write(format_table(table, "table"))
    print(f"wrote {path}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from .search import submit_search

    _, status = submit_search(
        args.job,
        args.address,
        storage=args.storage,
        name=args.name,
        wait=args.wait,
        allow_plain_http=args.allow_plain_http,
    )
    return 0 if status in (None, "SUCCEEDED") else 1


def _train(args: argparse.Namespace) -> int:
    from .train import run_final

    options = {}
    if args.no_baseline:
        options["baseline"] = None
    elif args.baseline is not None:
        options["baseline"] = args.baseline
    run_final(
        args.spec,
        workers=args.workers,
        use_gpu=True if args.gpu else None,
        epochs=args.epochs,
        address=args.address,
        name=args.name,
        storage=args.storage,
        **options,
    )
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; allowed: an integer >= 1")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as ``DaqSearchError`` (one line, exit 2, like every other bad input)."""

    def error(self, message: str) -> None:
        raise DaqSearchError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``daq-search`` argument parser with its sub-commands."""
    from .results import FORMATS, STATUSES

    parser = _Parser(
        prog="daq-search",
        description="Search the data augmentation for quantization-aware knowledge distillation (Ray Tune + "
        "Optuna), then train the low-bit model with it (Ray Train).",
    )
    parser.add_argument("--version", action="version", version=f"daq-search {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = commands.add_parser("search", help="search the augmentation for QAT+KD with Ray Tune")
    search.add_argument("job", help="job file (jobs/*.yaml)")
    search.add_argument("--address", help="Ray cluster to run on ('auto' inside a cluster); default: embedded Ray")
    search.add_argument("--storage", help="folder for run folders and the teacher cache (default: the job's)")
    search.add_argument("--name", help="run name; RUN_DIR = STORAGE/NAME (default: the job's)")
    search.add_argument("--resume", action="store_true", help="continue the interrupted search in RUN_DIR")
    search.set_defaults(func=_search)

    results = commands.add_parser("results", help="show a run's trials table (reads only its Parquet files)")
    results.add_argument("run_dir", type=Path, help="RUN_DIR of a search")
    results.add_argument("--sort", help="column to sort by (default: the run's ranking)")
    results.add_argument("--top", type=_positive, help="show only the first N rows")
    results.add_argument("--status", choices=STATUSES, help="show only trials with this status")
    results.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    results.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw each candidate's selection value and the top 3's curves (and, after a final training, "
        "FILE-final.png: winner vs baseline)",
    )
    results.set_defaults(func=_results)

    score = commands.add_parser("score", help="rank a space's candidates by the teacher alone (no Ray, no student)")
    score.add_argument("job", help="job file")
    score.add_argument("--space", help="search space file (default: the job's)")
    score.add_argument("--storage", help="folder for the teacher cache and RUN_DIR (default: the job's)")
    score.add_argument("--name", help="run name; writes RUN_DIR/teacher_scores.parquet (default: the job's)")
    score.set_defaults(func=_score)

    submit = commands.add_parser("submit", help="submit a search to a Ray cluster's Jobs API")
    submit.add_argument("job", help="job file inside this project folder (the folder is uploaded)")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--storage", help="override the job's storage (a folder shared by all nodes)")
    submit.add_argument("--name", help="override the job's run name")
    submit.add_argument("--wait", action="store_true", help="wait for the job; exit 1 unless it succeeded")
    submit.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="send RAY_AUTH_TOKEN over plain http to a non-loopback host (only on a network you trust)",
    )
    submit.set_defaults(func=_submit)

    train = commands.add_parser("train", help="train the winner to the end with Ray Train")
    train.add_argument("spec", help="winner.yaml, or the RUN_DIR that holds it")
    train.add_argument("--workers", type=_positive, help="data-parallel workers (default: final.workers)")
    train.add_argument("--gpu", action="store_true", help="train on GPUs (default: final.use_gpu)")
    train.add_argument("--epochs", type=_positive, help="epochs (default: final.recipe.epochs)")
    train.add_argument("--address", help="Ray cluster to run on; default: embedded Ray")
    train.add_argument("--name", help="name of the training run (default: final)")
    baseline = train.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", metavar="CANDIDATE_ID", help="baseline augmentation (default: final.baseline)")
    baseline.add_argument("--no-baseline", action="store_true", help="train no baseline")
    train.add_argument("--storage", help="Ray Train storage path (default: RUN_DIR/final/ray)")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``daq-search`` with ``argv`` (default: the process's arguments); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        show_progress()
        return args.func(args)
    except DaqSearchError as err:
        print(f"daq-search: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except _Interrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
