"""The Ray runs of a final training named ``name``: the winner's run is ``name``, the other finalists' are
``name-finalist-<i>`` (from 1) and the baseline's is ``name-baseline``. The one place these names are made and read
(the training, its metrics and its plot); no torch or Ray needed."""

from __future__ import annotations

from typing import Literal

BASELINE_SUFFIX = "-baseline"
FINALIST_INFIX = "-finalist-"

Role = Literal["winner", "finalist", "baseline"]


def baseline_run(name: str) -> str:
    """The run name of the baseline of the final training ``name``."""
    return f"{name}{BASELINE_SUFFIX}"


def finalist_run(name: str, index: int) -> str:
    """The run name of the ``index``-th other finalist (from 1) of the final training ``name``."""
    return f"{name}{FINALIST_INFIX}{index}"


def run_role(name: str, run: str) -> Role:
    """What ``run`` is in the final training ``name``: ``winner`` (``name`` itself), ``baseline`` or ``finalist``;
    ValueError for a run of another training."""
    if run == name:
        return "winner"
    if run == baseline_run(name):
        return "baseline"
    index = run.removeprefix(f"{name}{FINALIST_INFIX}")
    if index != run and index.isdigit():
        return "finalist"
    raise ValueError(f"{run!r} is not a run of the final training {name!r}")
