"""Progress lines: each module logs them at INFO through ``logging.getLogger(__name__)``, under the ``daq_search``
logger; :func:`show_progress` prints them (the CLI, and Ray workers whose lines the terminal shows, call it).
:func:`quiet_worker_shutdown` keeps the traceback of Ray stopping a trial's worker off the terminal."""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "daq_search"


class _StdoutHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stdout`` is at the time of each record, flushed per record."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress() -> None:
    """Print the package's progress records (INFO and above) to standard output, the message alone, flushed at once
    (also when stdout is a pipe, as under ``ray job submit``). Calling it again adds nothing."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def quiet_worker_shutdown() -> None:
    """In a Ray worker process: drop the "Exception ignored" traceback Python prints when Ray's SIGTERM handler
    raises ``SystemExit`` inside a garbage-collection callback while Ray stops the worker (an ordinary end of a
    trial's actor, not an error); every other unraisable exception is printed as before."""
    if getattr(sys.unraisablehook, "_daq_quiet", False):
        return

    def hook(unraisable, previous=sys.unraisablehook):
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook._daq_quiet = True
    sys.unraisablehook = hook
