"""``data.download``: CIFAR archives fetched from a local HTTP server on 127.0.0.1 (the URL base overridden), checked
against their MD5 and installed atomically: a right archive loads, a wrong checksum or a cut transfer is one error
line and leaves nothing in data.root."""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daq_search import download
from daq_search.data import DataSpec, load_data
from daq_search.errors import DaqSearchError
from tests.test_data import write_cifar10


def cifar10_archive(tmp_path: Path) -> bytes:
    """A small CIFAR-10 archive in torchvision's layout (10 classes x 30 training images, 4 test per class)."""
    source = tmp_path / "source"
    write_cifar10(source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


class ArchiveServer:
    """Serves ``payload`` at any path; with ``cut`` it announces the full length but sends only the first half."""

    def __init__(self, payload: bytes, cut: bool = False):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """The generated archive, registered as CIFAR-10's with its own MD5."""
    payload = cifar10_archive(tmp_path)
    real = download.ARCHIVES["cifar10"]
    monkeypatch.setitem(
        download.ARCHIVES,
        "cifar10",
        download.Archive(real.title, real.filename, hashlib.md5(payload).hexdigest(), real.folder, real.files),
    )
    return payload


def spec(root: Path) -> DataSpec:
    return DataSpec("cifar10", root=str(root), val_per_class=5, download=True)


def test_download_with_right_checksum_loads_and_is_not_fetched_again(archive, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with ArchiveServer(archive) as server:
        monkeypatch.setenv(download.BASE_URL_ENV, server.url)
        bundle = load_data(spec(root))
        again = load_data(spec(root))
    assert server.requests == 1
    assert len(bundle.train) + len(bundle.val) == 300 and len(bundle.test) == 40
    assert len(again.train) == len(bundle.train)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]


def test_download_with_wrong_checksum_is_one_line_and_leaves_nothing(archive, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with ArchiveServer(archive[:-1] + bytes([archive[-1] ^ 1])) as server:
        monkeypatch.setenv(download.BASE_URL_ENV, server.url)
        with pytest.raises(
            DaqSearchError,
            match=r"^data\.download: http://127\.0\.0\.1:\d+/mirror/cifar-10-python\.tar\.gz has MD5 [0-9a-f]{32}, expected ",
        ) as err:
            load_data(spec(root))
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []


def test_download_cut_off_midway_is_one_line_and_leaves_nothing(archive, tmp_path, monkeypatch):
    root = tmp_path / "data"
    with ArchiveServer(archive, cut=True) as server:
        monkeypatch.setenv(download.BASE_URL_ENV, server.url)
        with pytest.raises(DaqSearchError, match=r"^data\.download: ") as err:
            load_data(spec(root))
    assert "\n" not in str(err.value)
    assert list(root.iterdir()) == []
    with pytest.raises(DaqSearchError, match=r"has no cifar-10-batches-py/data_batch_1"):
        load_data(DataSpec("cifar10", root=str(root), val_per_class=5))


def test_download_offline_says_what_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, "http://127.0.0.1:9/nothing-listens-here")
    root = tmp_path / "data"
    with pytest.raises(
        DaqSearchError,
        match=r"^data\.download: cannot fetch .*; place cifar-10-python\.tar\.gz .* extracted as .*cifar-10-batches-py/",
    ) as err:
        load_data(spec(root))
    assert "\n" not in str(err.value)


def test_download_of_a_set_that_ships_is_refused():
    with pytest.raises(
        DaqSearchError, match=r"^data\.download: 'imagefolder' cannot be downloaded; allowed: cifar10, cifar100$"
    ):
        load_data(DataSpec("imagefolder", root="/nowhere", download=True))


def test_download_default_url_is_torchvisions(monkeypatch):
    monkeypatch.delenv(download.BASE_URL_ENV, raising=False)
    assert download.archive_url("cifar100") == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
