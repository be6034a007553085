"""Shared pytest set-up: one torch thread per test process, so parallel work on 2 cores stays fair.

``DAQ_TEST_DETERMINISTIC=1 pytest`` runs the whole suite with ``torch.use_deterministic_algorithms(True)``: in this
process, and, through ``tests/deterministic/sitecustomize.py`` put first on ``PYTHONPATH``, in every Python process
the tests start (Ray workers inherit the environment of the process that starts Ray; CLI subprocesses extend
:data:`PYTHONPATH` rather than replace it, see :func:`python_path`).
"""

import os
from pathlib import Path

import torch

DETERMINISTIC = os.environ.get("DAQ_TEST_DETERMINISTIC") == "1"
ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)
if DETERMINISTIC:
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs on a GPU
    site = str(Path(__file__).resolve().parent / "deterministic")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)


def python_path(root: Path = ROOT) -> str:
    """``PYTHONPATH`` for a subprocess that must import the package from ``root``: ``root`` first, then the current
    ``PYTHONPATH`` (which carries the deterministic start-up hook when it is on)."""
    return os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
