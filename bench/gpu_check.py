"""``python3 -m bench.gpu_check --out DIR``: does daq-search use one GPU as intended? (``make gpu-check``)

Stages, each recorded as passed or failed in ``DIR/gpu_check.json`` as soon as it ends (a failed stage does not
hide the ones before it; stages after a failed prerequisite are marked skipped):

1. ``cuda``: torch sees a GPU (name, bf16 support).
2. ``placement``: one training epoch with the package's helpers on ``cuda``: parameters and batches on the GPU, in
   ``channels_last``, forward passes in bf16 where supported; training images/s.
3. ``search``: a 4-trial search of the digits job with ``gpus_per_trial: 0.5`` (two trials share the GPU), the
   teacher trained as a Ray task; all 4 trials finish; trial images/s (mean over trials of the last epoch).
4. ``final``: the winner trained by 1 Ray Train worker with ``use_gpu``: the NCCL backend, parameters on ``cuda``;
   final-training images/s.

Runs from the repository root without installing the package (the data is scikit-learn's bundled digits). The
whole check is bounded by ``--budget-s`` (default 280 s): a stage still running then fails with a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml

from daq_search.logs import show_progress

RESULT_FILE = "gpu_check.json"
BUDGET_S = 280


class OutOfTime(Exception):
    """The check's time budget ran out."""


def log(message: str) -> None:
    """A progress line with a UTC timestamp."""
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} gpu-check: {message}", flush=True)


def write_report(report: dict, out: Path) -> None:
    """Write the report atomically."""
    path = out / RESULT_FILE
    tmp = path.with_name(f".{RESULT_FILE}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def check_cuda() -> dict:
    """The GPU torch sees."""
    assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
    return {
        "device": torch.cuda.get_device_name(0),
        "bf16": torch.cuda.is_bf16_supported(),
        "torch": torch.__version__,
        "gpus": torch.cuda.device_count(),
    }


def precision() -> str:
    """bf16 where a GPU supports it, else fp32."""
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def check_placement() -> dict:
    """One KD epoch on ``cuda`` with the package's loader, placement and autocast."""
    from daq_search.candidates import parse_candidate
    from daq_search.config import DataConfig, KDConfig, QuantConfig, StudentConfig
    from daq_search.data import load_data
    from daq_search.kd import place, run_epoch, train_loader
    from daq_search.models import create_for
    from daq_search.student import build_student

    bundle = load_data(DataConfig(name="digits").spec())
    teacher = create_for("resnet8", 1.0, bundle)
    student = place(build_student(StudentConfig(), QuantConfig(), bundle, teacher), "cuda")
    place(teacher, "cuda")
    seen: list[tuple[str, bool, torch.dtype]] = []

    def record(module, args, output):
        x = args[0]
        seen.append((x.device.type, x.is_contiguous(memory_format=torch.channels_last), output.dtype))

    student.register_forward_hook(record)
    loader = train_loader(bundle.train, parse_candidate("trivialaugment"), bundle, 128, 0, workers=2, pin_memory=True)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    stats = run_epoch(student, loader, optimizer, teacher=teacher, kd=KDConfig(), device="cuda", precision=precision())
    devices = {p.device.type for p in student.parameters()}
    assert devices == {"cuda"}, f"student parameters on {devices}"
    assert {d for d, _, _ in seen} == {"cuda"}, "a batch was not on the GPU"
    assert all(cl for _, cl, _ in seen), "a batch was not channels_last"
    expected = torch.bfloat16 if precision() == "bf16" else torch.float32
    assert {dt for _, _, dt in seen} == {expected}, f"logits dtypes { ({dt for _, _, dt in seen}) }"
    assert {p.dtype for p in student.parameters()} == {torch.float32}, "a parameter is not fp32"
    return {"images_per_s": stats.images_per_s, "precision": precision(), "batches": len(seen)}


def check_search(work: Path, gpus_per_trial: float = 0.5, teacher_epochs: int = 15) -> dict:
    """A 4-trial search with ``gpus_per_trial`` (0.5: two trials per GPU)."""
    from daq_search.results import read_trials
    from daq_search.search import plan_search, run_search

    job = {
        "name": "gpu-check",
        "data": {"name": "digits"},
        "teacher": {"model": "resnet8", "recipe": {"epochs": teacher_epochs, "batch_size": 128, "lr": 0.003}},
        "student": {"model": "resnet8"},
        "search_space": str(Path("search_spaces/default.yaml").resolve()),
        "scorer": {"subset": 500},
        "trial": {"epochs": 3, "batch_size": 128, "precision": precision()},
        "searcher": {"num_samples": 4},
        "scheduler": {"enabled": False},
        "resources": {"cpus_per_trial": 4, "gpus_per_trial": gpus_per_trial},
        "max_concurrent_trials": 4,
        "objective": "score_ce",
        "storage": str(work / "runs"),
        "final": {
            "recipe": {"epochs": 3, "batch_size": 128, "precision": precision()},
            "workers": 1,
            "cpus_per_worker": 4,
        },
    }
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(job))
    outcome = run_search(plan_search(path), summary_every_s=30.0)
    trials = read_trials(outcome.run_dir)
    assert outcome.finished and len(trials) == 4, f"{len(trials)} trials, finished={outcome.finished}"
    assert (trials["status"] == "completed").all(), f"statuses {trials['status'].tolist()}"
    (teacher,) = (work / "runs" / "teachers").glob("teacher-*.pt")
    trained_by = torch.load(teacher, weights_only=True)["trained_by"]
    assert trained_by["pid"] != os.getpid(), "the teacher was trained in the driver"
    return {
        "images_per_s": float(trials["images_per_s_last"].mean()),
        "winner": str(outcome.winner_file),
        "teacher_trained_by": trained_by,
    }


def check_final(winner: str, use_gpu: bool = True) -> dict:
    """The winner's final training on one GPU worker (``use_gpu``) or one CPU worker."""
    import pandas as pd

    from daq_search.train import run_final

    metrics = run_final(winner, workers=1, use_gpu=use_gpu, baseline=None)
    expected_backend, expected_device = ("nccl", "cuda") if use_gpu else ("gloo", "cpu")
    assert metrics["backend"] == expected_backend, f"backend {metrics['backend']}"
    assert str(metrics["device"]).startswith(expected_device), f"student on {metrics['device']}"
    epochs = pd.read_parquet(Path(winner).parent / "final" / "epochs.parquet")
    return {
        "images_per_s": float(epochs["images_per_s"].iloc[-1]),
        "backend": metrics["backend"],
        "device": metrics["device"],
        "student_test_acc": metrics["student_test_acc"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the stages and write the report; exit status 0 when every stage passed."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and the check's runs")
    parser.add_argument("--budget-s", type=int, default=BUDGET_S, help="time limit of the whole check, seconds")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}

    def out_of_time(signum, frame):
        raise OutOfTime(f"the {args.budget_s} s budget ran out")

    signal.signal(signal.SIGALRM, out_of_time)
    show_progress()  # the search's and the final training's progress lines
    signal.alarm(args.budget_s)
    stages = [
        ("cuda", check_cuda),
        ("placement", check_placement),
        ("search", lambda: check_search(work)),
        ("final", lambda: check_final(report["stages"]["search"]["winner"])),
    ]
    needs = {"placement": "cuda", "search": "cuda", "final": "search"}
    try:
        for name, stage in stages:
            if name in needs and not report["stages"].get(needs[name], {}).get("passed"):
                report["stages"][name] = {"passed": False, "skipped": f"needs stage {needs[name]}"}
                log(f"{name}: skipped (needs {needs[name]})")
                continue
            log(f"{name}: start")
            stage_start = time.perf_counter()
            try:
                result = {"passed": True, **stage()}
            except Exception as err:
                traceback.print_exc()
                result = {"passed": False, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
            result["seconds"] = round(time.perf_counter() - stage_start, 1)
            report["stages"][name] = result
            log(f"{name}: {'passed' if result['passed'] else 'FAILED: ' + result['error']} ({result['seconds']} s)")
            report["total_s"] = round(time.perf_counter() - start, 1)
            write_report(report, out)
    finally:
        signal.alarm(0)
    stages_done = report["stages"]
    report["device"] = stages_done.get("cuda", {}).get("device")
    report["trials_images_per_s"] = stages_done.get("search", {}).get("images_per_s")
    report["final_images_per_s"] = stages_done.get("final", {}).get("images_per_s")
    report["passed"] = all(stage.get("passed") for stage in stages_done.values())
    report["total_s"] = round(time.perf_counter() - start, 1)
    write_report(report, out)
    log(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['total_s']} s; wrote {out / RESULT_FILE}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
