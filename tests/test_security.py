"""The embedded Ray accepts no unauthenticated work from the network, and its temp folder is private."""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daq_search import runtime
from daq_search.errors import DaqSearchError

GRPC_TIMEOUT_S = 5.0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str, v6: bool) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if v6:
        return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))), int(port, 16)
    return ipaddress.IPv4Address(raw[::-1]), int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold, from /proc/net/tcp and tcp6."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in owner:  # 0A: TCP_LISTEN
                address, port = _address(fields[1], v6)
                found.append((owner[int(fields[9])], address, port))
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def connect_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """How to reach a listening address from here: loopback for 0.0.0.0 / ::, IPv4 for an IPv4-mapped one."""
    if address.is_unspecified:
        return "127.0.0.1"
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return str(mapped)
    return f"[{address}]" if address.version == 6 else str(address)


def all_rpc_methods() -> list[str]:
    """Every gRPC method of every Ray service (``/package.Service/Method``), from Ray's generated protobufs."""
    import importlib
    import pkgutil

    import ray.core.generated as generated

    methods = set()
    for module in pkgutil.iter_modules(generated.__path__):
        if not module.name.endswith("_pb2"):
            continue
        try:
            descriptor = importlib.import_module(f"ray.core.generated.{module.name}").DESCRIPTOR
        except Exception:  # a module needing an optional dependency describes no service we start
            continue
        for service in descriptor.services_by_name.values():
            methods.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    return sorted(methods | set(CPP_ONLY_METHODS))


CPP_ONLY_METHODS = (
    "/ray.rpc.ObjectManagerService/Push",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.ObjectManagerService/FreeObjects",
)
"""The raylet's object manager service (src/ray/protobuf/object_manager.proto), which Python has no module for."""


def grpc_codes(host: str, port: int, methods: list[str], metadata=None) -> dict[str, str]:
    """The status code of an empty-request call to each method (``OK`` when it ran)."""
    import grpc

    codes = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in methods:
            try:
                channel.unary_unary(method)(b"", timeout=GRPC_TIMEOUT_S, metadata=metadata)
                codes[method] = "OK"
            except grpc.RpcError as err:
                codes[method] = err.code().name
    return codes


NOT_SERVED = ("UNAUTHENTICATED", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED")
"""gRPC codes of a call that did not run: refused, unknown method, the server gone (a process that ended during the
probe) or no answer in time."""


def holds(path: Path, secret: bytes) -> bool:
    """Whether the file ``path`` (under 50 MB) contains ``secret``; False for a file Ray removed meanwhile."""
    try:
        return path.is_file() and path.stat().st_size < 50_000_000 and secret in path.read_bytes()
    except FileNotFoundError:
        return False


def http_status(url: str) -> int | None:
    """The HTTP status of an unauthenticated POST to ``url``; None when the port does not speak HTTP."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError, http.client.HTTPException):
        return None


@pytest.mark.slow
def test_embedded_ray_accepts_no_unauthenticated_work(tmp_path):
    import ray

    marker = tmp_path / "ran"

    @ray.remote
    def work(path: str) -> str:
        Path(path).write_text("ran")
        return os.environ.get("RAY_AUTH_MODE", "")

    with runtime.ray_session(num_cpus=1):
        token = os.environ["RAY_AUTH_TOKEN"]
        assert ray.get(work.remote(str(marker))) == "token"  # the session itself works, with auth on
        marker.unlink()
        node = ray._private.worker.global_worker.node
        sockets = listening_sockets(_descendants(os.getpid()))
        methods = all_rpc_methods()
        gcs_host, gcs_port = node.gcs_address.rsplit(":", 1)
        # Control: the GCS refuses a call without the token and serves it with the token, so the checks below can fail.
        probe = ["/ray.rpc.NodeInfoGcsService/GetAllNodeInfo"]
        assert grpc_codes(gcs_host, int(gcs_port), probe) == {probe[0]: "UNAUTHENTICATED"}
        assert grpc_codes(gcs_host, int(gcs_port), probe, [("authorization", f"Bearer {token}")]) == {probe[0]: "OK"}
        # Every listening socket, loopback included (other users of the machine reach loopback too).
        for pid, address, port in sockets:
            host = connect_host(address)
            http = http_status(f"http://{host}:{port}/api/job_agent/jobs/")
            if http is not None:
                # 401: the token is required; 405: a read-only server (Ray's Prometheus metrics), on loopback only
                allowed = (401, 405) if is_loopback(address) else (401,)
                assert http in allowed, f"pid {pid} {address}:{port} answers an unauthenticated POST with {http}"
                continue
            codes = grpc_codes(host, port, methods)
            ran = {m: c for m, c in codes.items() if c not in NOT_SERVED}
            assert not ran, f"pid {pid} {address}:{port} served unauthenticated calls: {ran}"
            if not Path(f"/proc/{pid}").exists():
                continue  # the process ended during the probe (an idle worker reaped): nothing left to refuse
            assert "UNAUTHENTICATED" in codes.values(), f"pid {pid} {address}:{port}: no call was refused"
        leaked = [path for path in Path(node.get_session_dir_path()).rglob("*") if holds(path, token.encode())]
        assert leaked == []
    assert sockets, "no listening socket found: the socket table was not read"
    assert not marker.exists()
    assert os.environ.get("RAY_AUTH_TOKEN") != token  # the session's token does not outlive it


def test_temp_dir_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.tempfile, "gettempdir", lambda: str(tmp_path))
    path = runtime.local_temp_dir()
    assert stat.S_IMODE(path.lstat().st_mode) == 0o700
    path.chmod(0o777)  # one an older version made world-writable is made private again
    assert stat.S_IMODE(runtime.local_temp_dir().lstat().st_mode) == 0o700


def test_temp_dir_refuses_a_planted_symlink(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.tempfile, "gettempdir", lambda: str(tmp_path))
    target = tmp_path / "attacker"
    target.mkdir()
    target.chmod(0o777)
    (tmp_path / f"daq-ray-{os.getuid()}").symlink_to(target)
    with pytest.raises(DaqSearchError, match=r"is not a plain folder \(a symlink or file\); remove it$"):
        runtime.local_temp_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o777  # the symlink's target was not touched


def test_temp_dir_refuses_a_folder_of_another_user(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"daq-ray-{os.getuid()}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    real_lstat = Path.lstat
    other = os.getuid() + 1

    def foreign_lstat(self):  # as if another user had created the folder first (chown needs root)
        info = real_lstat(self)
        if self == folder:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev, info.st_nlink, other, *info[5:]))
        return info

    monkeypatch.setattr(Path, "lstat", foreign_lstat)
    with pytest.raises(DaqSearchError, match=rf"belongs to uid {other}, not to you; remove it$"):
        runtime.local_temp_dir()
    assert stat.S_IMODE(real_lstat(folder).st_mode) == 0o777


@pytest.mark.slow
def test_embedded_ray_temp_folder_stays_private_while_ray_runs_and_after(monkeypatch):
    import ray

    base = Path(tempfile.mkdtemp(prefix="dq", dir="/tmp"))  # short: Ray's socket paths must stay under 107 characters
    monkeypatch.setattr(runtime.tempfile, "gettempdir", lambda: str(base))
    try:
        folder = runtime.local_temp_dir()
        with runtime.ray_session(num_cpus=1):
            session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
            during = stat.S_IMODE(folder.lstat().st_mode)
        after = stat.S_IMODE(folder.lstat().st_mode)
        assert folder in session.parents  # every file of the session lies inside the private folder
        assert stat.S_IMODE(session.lstat().st_mode) == 0o777  # control: Ray made its own folders world-writable
        assert (during, after) == (0o700, 0o700)
    finally:
        shutil.rmtree(base, ignore_errors=True)
