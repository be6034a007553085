"""Shared pytest set-up: one torch thread per test process, so parallel work on 2 cores stays fair.

``DAQ_TEST_DETERMINISTIC=1 pytest`` runs the whole suite with ``torch.use_deterministic_algorithms(True)``: in this
process, and, through ``tests/deterministic/sitecustomize.py`` put first on ``PYTHONPATH``, in every Python process
the tests start (Ray workers inherit the environment of the process that starts Ray; CLI subprocesses extend
:data:`PYTHONPATH` rather than replace it, see :func:`python_path`).
"""

import os
from pathlib import Path

import pytest
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


UNWATCHED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
"""Folders of the source tree that tools (not tests) write to; every other file is watched."""


def source_tree_files(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """Every file of the source tree outside :data:`UNWATCHED` and ``*.egg-info``: relative path -> (size, mtime ns)."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in UNWATCHED and not name.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            stat = path.lstat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


_files_at_start: dict[str, tuple[int, int]] = {}


def pytest_sessionstart(session):
    _files_at_start.update(source_tree_files())


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test created, changed or removed a file in the source tree (tests write under
    tmp_path)."""
    before, after = _files_at_start, source_tree_files()
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        session.config.get_terminal_writer().line(f"tests wrote into the source tree: {shown}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
