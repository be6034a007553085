"""Fetching CIFAR-10/100 (``data.download: true``): torchvision's official archives and MD5 checksums, installed
atomically under ``data.root``.

The archive is streamed to a temporary file in ``data.root`` while its MD5 is computed; only a complete archive with
the published checksum is extracted, into a temporary folder, and its data folder is then renamed into place. A cut
or corrupted download therefore leaves nothing behind that could later pass for a complete data set. The URL base
defaults to the CIFAR home page and can be pointed at a mirror with the ``DAQ_SEARCH_DATA_URL`` environment variable.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DaqSearchError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz"
BASE_URL_ENV = "DAQ_SEARCH_DATA_URL"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Archive:
    """One downloadable data set: the archive's file name, its published MD5, and the folder (with the files) it
    unpacks to."""

    title: str
    filename: str
    md5: str
    folder: str
    files: tuple[str, ...]


ARCHIVES = {
    "cifar10": Archive(
        "CIFAR-10",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    ),
    "cifar100": Archive(
        "CIFAR-100",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train", "test"),
    ),
}
"""torchvision's CIFAR archives (``torchvision.datasets.CIFAR10/100``: ``filename``, ``tgz_md5``, ``base_folder``)."""


def archive_url(name: str) -> str:
    """The URL of data set ``name``'s archive: ``$DAQ_SEARCH_DATA_URL`` (or the CIFAR home page) + file name."""
    base = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{ARCHIVES[name].filename}"


def is_installed(name: str, root: Path) -> bool:
    """Whether ``root`` holds every data file of data set ``name``'s archive."""
    archive = ARCHIVES[name]
    return all((root / archive.folder / file).is_file() for file in archive.files)


def ensure_downloaded(name: str, root: str | Path) -> Path:
    """Install data set ``name`` under ``root`` unless it is there already; returns ``root/<folder>``.

    Raises DaqSearchError with one line when the archive cannot be fetched (saying what to place where), is cut
    short, has the wrong checksum, or lacks the expected files; nothing is left in ``root`` then.
    """
    archive, root = ARCHIVES[name], Path(root)
    target = root / archive.folder
    if is_installed(name, root):
        return target
    if target.exists():
        raise DaqSearchError(
            f"data.root: {target} exists but lacks some of {', '.join(archive.files)}; remove it to download again"
        )
    root.mkdir(parents=True, exist_ok=True)
    url = archive_url(name)
    logger.info(f"data: downloading {archive.title} from {url} into {root}")
    with tempfile.TemporaryDirectory(prefix=f".{archive.folder}-", dir=root) as scratch:
        tar_path = Path(scratch) / archive.filename
        _fetch(url, tar_path, archive, root)
        unpacked = Path(scratch) / "unpacked"
        _extract(tar_path, unpacked, archive)
        os.replace(unpacked / archive.folder, target)
    return target


def _offline_hint(archive: Archive, url: str, root: Path) -> str:
    return (
        f"place {archive.filename} (from {url}, MD5 {archive.md5}) extracted as {root / archive.folder}/, "
        f"or set {BASE_URL_ENV} to a mirror"
    )


def _fetch(url: str, path: Path, archive: Archive, root: Path) -> None:
    """Stream ``url`` to ``path``, checking the byte count against Content-Length and the MD5 against the
    published one."""
    digest, received = hashlib.md5(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or str(err) or type(err).__name__
        raise DaqSearchError(
            f"data.download: cannot fetch {url} ({reason}); {_offline_hint(archive, url, root)}"
        ) from None
    if expected is not None and received != int(expected):
        raise DaqSearchError(
            f"data.download: {url} stopped after {received} of {expected} bytes; run again, or "
            f"{_offline_hint(archive, url, root)}"
        )
    if digest.hexdigest() != archive.md5:
        raise DaqSearchError(
            f"data.download: {url} has MD5 {digest.hexdigest()}, expected {archive.md5} (a damaged or different "
            f"file); run again, or {_offline_hint(archive, url, root)}"
        )


def _extract(tar_path: Path, folder: Path, archive: Archive) -> None:
    """Unpack the archive into ``folder`` (tarfile's ``data`` filter: no paths outside it, no links out) and
    check that it holds every expected file."""
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise DaqSearchError(f"data.download: {tar_path.name} is not a readable archive ({err})") from None
    missing = [file for file in archive.files if not (folder / archive.folder / file).is_file()]
    if missing:
        raise DaqSearchError(
            f"data.download: {tar_path.name} lacks {archive.folder}/{', '.join(missing)}; "
            f"expected torchvision's {archive.title} python archive"
        )
