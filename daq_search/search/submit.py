"""Submitting a search to a Ray cluster's Jobs API (``daq-search submit``)."""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..config import load_job
from ..errors import DaqSearchError
from ..files import check_run_name, clip

logger = logging.getLogger(__name__)

UPLOAD_EXCLUDES = [".venv", "runs", ".git", "bench/work", "**/__pycache__", "*.egg-info", ".pytest_cache", "build"]
"""Left out of the working folder uploaded with a submitted search."""


def project_root() -> Path:
    """The source folder that holds the ``daq_search`` package; ``submit`` uploads it as the job's working folder."""
    root = Path(__file__).resolve().parent.parent.parent
    if not ((root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file()):
        raise DaqSearchError(
            f"submit: daq_search is installed at {root}, not in a source checkout; run submit from a checkout "
            "(pip install -e .), whose folder is uploaded to the cluster"
        )
    return root


def _inside(path: Path, root: Path, field: str) -> Path:
    """``path`` relative to ``root``; DaqSearchError naming ``field`` when it lies outside the uploaded folder."""
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        raise DaqSearchError(
            f"{field}: {path} is outside the project folder {root}, which is what gets uploaded; move it inside"
        ) from None


def submission_headers() -> dict[str, str]:
    """HTTP headers for the cluster's Jobs API: ``Authorization: Bearer $RAY_AUTH_TOKEN`` when that is set."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def check_token_transport(address: str, allow_plain_http: bool = False) -> None:
    """Refuse to send ``RAY_AUTH_TOKEN`` unencrypted: over ``http://`` to a host that is not this machine's
    loopback, unless ``allow_plain_http`` (``--allow-plain-http``) says the network between is trusted."""
    if not os.environ.get("RAY_AUTH_TOKEN") or allow_plain_http:
        return
    parsed = urlsplit(address if "://" in address else f"http://{address}")
    if parsed.scheme != "http" or (parsed.hostname or "") in LOOPBACK_HOSTS:
        return
    raise DaqSearchError(
        f"--address: {clip(address)} is plain http to another host, so RAY_AUTH_TOKEN would cross the network "
        "unencrypted; allowed: https://, a loopback address (e.g. an SSH tunnel), or --allow-plain-http"
    )


def submit_search(
    job_path: str | Path,
    address: str,
    *,
    storage: str | None = None,
    name: str | None = None,
    wait: bool = False,
    allow_plain_http: bool = False,
    poll_s: float = 2.0,
) -> tuple[str, str | None]:
    """Submit ``daq-search search`` of a job to a Ray cluster's Jobs API at ``address`` (``http://HEAD:8265``).

    The job file is validated here first (its data is not: it lives on the cluster); the project folder is
    uploaded as the job's working folder, so the job file and its search space must lie inside it. The search runs
    on the cluster with ``--address auto``. ``RAY_AUTH_TOKEN`` is sent only encrypted or to loopback unless
    ``allow_plain_http`` (:func:`check_token_transport`). Returns (submission id, final status with ``wait``, else None).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    check_token_transport(address, allow_plain_http)
    if name is not None:
        check_run_name(name, "--name")
    job_file = Path(job_path)
    job = load_job(job_file)
    root = project_root()
    relative = _inside(job_file, root, "job")
    _inside(Path(job.search_space), root, "search_space")
    if not Path(storage or job.storage).is_absolute():
        raise DaqSearchError(
            f"storage: {storage or job.storage!r} is relative, so the search would write into the job's temporary "
            "working folder on the head; give a folder shared by all nodes (an NFS mount) with --storage or in the job"
        )
    command = ["python", "-m", "daq_search", "search", relative.as_posix(), "--address", "auto"]
    if storage is not None:
        command += ["--storage", storage]
    if name is not None:
        command += ["--name", name]
    try:
        client = JobSubmissionClient(address, headers=submission_headers())
        submission_id = client.submit_job(
            entrypoint=shlex.join(command),
            runtime_env={"working_dir": str(root), "excludes": UPLOAD_EXCLUDES},
        )
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as err:
        reason = clip(str(err).strip().splitlines()[0], 200) if str(err).strip() else type(err).__name__
        raise DaqSearchError(f"--address: cannot submit to the Ray Jobs API at {address}: {reason}") from None
    logger.info(f"submitted {submission_id}: {shlex.join(command)}")
    logger.info(f"follow its logs with: ray job logs --follow --address {address} {submission_id}")
    if not wait:
        return submission_id, None
    status = client.get_job_status(submission_id)
    while not status.is_terminal():
        time.sleep(poll_s)
        status = client.get_job_status(submission_id)
    logger.info(f"{submission_id}: {status}")
    return submission_id, str(status)
