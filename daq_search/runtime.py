"""Where Ray runs: an embedded single-machine Ray by default, or an existing cluster given by ``--address``."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .errors import DaqSearchError
from .files import clip

RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
    "RAY_worker_niceness": "0",
}
"""Environment set before Ray starts (inherited by its workers): no usage stats, no extra loggers or noise, a
worker-group start timeout long enough for a busy 2-core machine (Ray's default is 60 s), and workers at normal
CPU priority (Ray starts them at nice 15, so any other busy process on the machine starves the trials; Ray Jobs
does the same for its drivers)."""


TEMP_DIR_MODE = 0o700
RAY_FOLDER = "ray"
"""The folder inside :func:`local_temp_dir` that an embedded Ray is given as its temp folder: Ray makes that folder
and its session folders world-writable (mode 0777) when it starts, so they must sit inside one that Ray never
changes."""
PROBE_TIMEOUT_S = 5.0
"""How long ``--address`` may take to accept a TCP connection before the run fails (nothing is written before)."""


def local_temp_dir() -> Path:
    """A short private folder for an embedded Ray's sessions (Ray's socket paths must stay under ~107 characters).

    ``daq-ray-<uid>`` under the system temp folder, created mode 0700; a symlink there, a folder owned by another
    user is refused (a one-line DaqSearchError), since Ray keeps its session files and sockets in it; one of
    ours with a wider mode (made by an older version) is set back to 0700. Ray itself gets the folder
    :data:`RAY_FOLDER` inside it, so this one stays 0700 while Ray runs and after it stops.
    """
    path = Path(tempfile.gettempdir()) / f"daq-ray-{os.getuid()}"
    try:
        path.mkdir(mode=TEMP_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as err:
        raise DaqSearchError(f"Ray temp folder: {path}: cannot create ({err.strerror})") from None
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DaqSearchError(f"Ray temp folder: {path} is not a plain folder (a symlink or file); remove it")
    if info.st_uid != os.getuid():
        raise DaqSearchError(f"Ray temp folder: {path} belongs to uid {info.st_uid}, not to you; remove it")
    if stat.S_IMODE(info.st_mode) != TEMP_DIR_MODE:
        os.chmod(path, TEMP_DIR_MODE, follow_symlinks=False)
    return path


def check_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast (one line) when nothing accepts a TCP connection at ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``) within ``timeout_s`` seconds; Ray itself would retry for minutes. ``None`` (embedded Ray)
    and ``auto`` (Ray finds the local cluster) are not probed."""
    if address is None or address == "auto":
        return
    parsed = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise DaqSearchError(f"--address: {clip(address)} is not HOST:PORT; allowed: HOST:PORT, ray://HOST:PORT, auto")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise DaqSearchError(
            f"--address: nothing accepts connections at {host}:{port} ({reason}); start the cluster or fix the address"
        ) from None


@contextmanager
def _embedded_env() -> Iterator[None]:
    """Token authentication on (and the unauthenticated metrics server off) for an embedded Ray, with a fresh
    random token: set in this process's environment (inherited by Ray's processes, readable only by this user) and
    never written to a file; the previous values come back when the body ends."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {key: os.environ.get(key) for key in EMBEDDED_ENV}
    cluster_ip = ray_constants.ENABLE_RAY_CLUSTER
    # Ray turns a node address of 127.0.0.1 into the machine's routable one unless this is off; off, the node
    # address stays loopback, so its HTTP agents and metrics servers bind 127.0.0.1 (its gRPC servers bind every
    # interface whatever the address, and are covered by the token).
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_enable_metrics_collection"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_ip
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


EMBEDDED_ENV = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_enable_metrics_collection",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)
"""Set for an embedded Ray's session only: token auth with a fresh token, no Prometheus metrics server, and a
loopback node address."""


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[None]:
    """Run the body with Ray up: connect to ``address`` (a cluster), or start an embedded single-machine Ray.

    The embedded Ray has Ray's token authentication on with a fresh random 256-bit token per session (kept only
    in the environment of this process and Ray's own), asks Ray to bind 127.0.0.1, keeps its files inside the
    private :func:`local_temp_dir` (which stays mode 0700 for the whole session), and has no dashboard and no usage
    stats; its CPUs default to the machine's. With ``address``, that address is probed first (:func:`check_address`)
    and Ray's own ``RAY_AUTH_TOKEN`` is honoured. Ray is shut down when the body ends, also on errors and Ctrl-C.
    """
    import ray

    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if ray.is_initialized():
        yield
        return
    with ExitStack() as stack:
        if address is None:
            temp_dir = local_temp_dir() / RAY_FOLDER
            stack.enter_context(_embedded_env())
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _temp_dir=str(temp_dir),
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=True,
                configure_logging=True,
            )
        else:
            from ray.exceptions import AuthenticationError

            check_address(address)
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except AuthenticationError as err:
                reason = clip(" ".join(str(err).split()), 200)
                raise DaqSearchError(f"--address: {address}: the cluster refused the token: {reason}") from None
        try:
            yield
        finally:
            ray.shutdown()


def run_as_task(function, *args, cpus: float, use_gpu: bool):
    """``function(*args)`` as one Ray task reserving ``cpus`` CPUs and, with ``use_gpu``, one GPU, never retried
    (Ray must be up); returns its result, and a DaqSearchError it raised is raised here as it is."""
    import ray

    task = ray.remote(function).options(num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_retries=0)
    try:
        return ray.get(task.remote(*args))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, DaqSearchError):
            raise DaqSearchError(str(err.cause)) from None
        raise
