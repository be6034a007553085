"""Where Ray runs: an embedded single-machine Ray by default, or an existing cluster given by ``--address``."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
}
"""Environment set before Ray starts (inherited by its workers): no usage stats, no extra loggers or noise, and a
worker-group start timeout long enough for a busy 2-core machine (Ray's default is 60 s)."""


def local_temp_dir() -> Path:
    """A short folder for an embedded Ray's sessions (Ray's socket paths must stay under ~107 characters)."""
    path = Path(tempfile.gettempdir()) / f"daq-ray-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[None]:
    """Run the body with Ray up: connect to ``address`` (a cluster), or start an embedded loopback-only Ray.

    The embedded Ray binds 127.0.0.1, has token auth off (nothing else can reach it), no dashboard and no usage
    stats; its CPUs default to the machine's. With ``address``, Ray's own ``RAY_AUTH_TOKEN`` is honoured. Ray is
    shut down when the body ends, also on errors and Ctrl-C.
    """
    import ray

    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if ray.is_initialized():
        yield
        return
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _temp_dir=str(local_temp_dir()),
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
