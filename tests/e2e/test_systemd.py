"""systemd integration as systemd drives it: socket activation (LISTEN_*), sd_notify
(NOTIFY_SOCKET, WATCHDOG_USEC), the pid file, the umask and dropping privileges; each test sets
the variables itself and runs `python -m multicorn` as a subprocess."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from .h3client import H3Client
from .process import ROOT, Output, reap

WORKERS = ["asyncio", "trio"]
_URL = re.compile(r"Running on (https?://\S+|unix:\S+)")

# Moves the inherited sockets to fds 3.. and sets LISTEN_PID to its own pid (which exec keeps),
# as systemd does for the process it starts.
_WRAPPER = """
import os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
for index, fd in enumerate(fds):
    os.dup2(fd, 3 + index)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(sys.executable, [sys.executable, "-m", "multicorn", *sys.argv[2:]])
"""


@contextlib.contextmanager
def started(
    *args: str,
    env: dict[str, str] | None = None,
    sockets: list[socket.socket] = (),  # type: ignore[assignment]
    names: str | None = None,
    wait_url: bool = True,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start the server (through the activation wrapper when `sockets` are given), wait for
    its first URL, and kill it at the end."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # Far above 3..3+n, so dup2 onto 3.. never overwrites a socket still to be moved.
    high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 50) for sock in sockets]
    if sockets:
        if names is not None:
            environ["LISTEN_FDNAMES"] = names
        command = [sys.executable, "-c", _WRAPPER, ",".join(map(str, high)), *args]
    else:
        command = [sys.executable, "-m", "multicorn", *args]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        pass_fds=high,
    )
    for fd in high:
        os.close(fd)
    try:
        proc.output = Output(proc)  # type: ignore[attr-defined]
        url = proc.output.wait_for(_URL).group(1) if wait_url else ""  # type: ignore[attr-defined]
        yield proc, url
    finally:
        reap(proc)


def _tcp_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.mark.parametrize("worker", WORKERS)
def test_socket_activation_serves_the_passed_socket(worker):
    listener = _tcp_listener()
    port = listener.getsockname()[1]
    with (
        listener,
        started("tests.e2e.apps:identity", "-k", worker, sockets=[listener]) as (
            proc,
            url,
        ),
    ):
        assert url == f"http://127.0.0.1:{port}"
        listener.close()  # only the server holds it now
        response = httpx.get(f"http://127.0.0.1:{port}/")
        assert response.status_code == 200
        # Read and unset, so processes the app starts do not take the sockets for theirs.
        assert response.json()["listen"] == {}
        # The default bind (127.0.0.1:8000) was replaced, not added.
        assert not any("8000" in line for line in proc.output.lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", WORKERS)
def test_socket_activation_maps_names_to_tls_cleartext_and_quic(worker, certs):
    secure, insecure = _tcp_listener(), _tcp_listener()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in (secure, insecure, udp)]
    args = ("tests.e2e.apps:identity", "-k", worker, "--certfile", certs.cert_path)
    with (
        secure,
        insecure,
        udp,
        started(*args, sockets=[secure, insecure, udp], names="web:insecure:quic") as (proc, _),
    ):
        proc.output.wait_for(rf"Running HTTP/3 \(QUIC\) on https://127\.0\.0\.1:{ports[2]}")
        tls = httpx.get(f"https://localhost:{ports[0]}/", verify=certs.verify())
        assert tls.status_code == 200
        clear = httpx.get(f"http://127.0.0.1:{ports[1]}/")
        assert clear.status_code == 200
        assert anyio.run(_h3_status, ports[2], certs.ca_path) == 200


async def _h3_status(port: int, cafile: str) -> int:
    async with H3Client.connect("127.0.0.1", port, cafile=cafile) as client:
        stream = await client.request("/")
    return stream.status


def test_socket_activation_for_another_process_is_ignored():
    # LISTEN_PID names someone else: the variables are not ours, and the usual bind is used.
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    args = ("tests.e2e.apps:identity", "--bind", "127.0.0.1:0")
    with started(*args, env=env) as (_, url):
        assert httpx.get(url).json()["listen"] == {}


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    return sock


def _receive_until(sock: socket.socket, state: str, limit: float = 10.0) -> list[str]:
    """Messages until one holding `state` (inclusive)."""
    seen: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        message = sock.recv(4096).decode()
        seen.append(message)
        if state in message.split("\n"):
            return seen
    raise AssertionError(f"no {state} in {seen}")


@pytest.mark.parametrize("worker", WORKERS)
def test_sd_notify_ready_watchdog_reloading_stopping(worker, tmp_path, certs):
    notify = _notify_socket(tmp_path)
    port = _tcp_listener()
    port_number = port.getsockname()[1]
    port.close()
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", f"127.0.0.1:{port_number}")
    args += ("--certfile", certs.cert_path, "--graceful-timeout", "1")
    with notify, started(*args, env=env, wait_url=False) as (proc, _):
        ready = _receive_until(notify, "READY=1")[-1]
        # READY=1 comes once the port accepts.
        with socket.create_connection(("127.0.0.1", port_number), timeout=2):
            pass
        assert f"https://127.0.0.1:{port_number}" in ready
        # The watchdog pings every WATCHDOG_USEC / 2 = 0.1 s.
        pings = [m for m in _receive_until(notify, "WATCHDOG=1") if m == "WATCHDOG=1"]
        pings += [m for m in _receive_until(notify, "WATCHDOG=1") if m == "WATCHDOG=1"]
        assert len(pings) >= 2
        proc.send_signal(signal.SIGHUP)
        reloading = [m for m in _receive_until(notify, "READY=1") if "RELOADING=1" in m]
        assert reloading and re.search(r"^MONOTONIC_USEC=\d+$", reloading[0], re.M)
        proc.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in m for m in _receive_until(notify, "STOPPING=1"))
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", WORKERS)
def test_pid_file_written_and_removed(worker, tmp_path):
    pid_path = tmp_path / "multicorn.pid"
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    with started(*args, "--pid", str(pid_path)) as (proc, url):
        assert pid_path.read_text() == f"{proc.pid}\n"
        httpx.get(url)  # serving: the signal handlers are in place
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not pid_path.exists()


@pytest.mark.parametrize(("umask", "mode"), [("077", 0o700), ("002", 0o775)])
def test_umask_decides_the_unix_socket_mode(umask, mode, tmp_path):
    path = tmp_path / "app.sock"
    args = ("tests.e2e.apps:identity", "--bind", f"unix:{path}", "--umask", umask)
    with started(*args):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


def _nobody() -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root and `nobody`")
@pytest.mark.parametrize("worker", WORKERS)
def test_user_and_group_drop_privileges_after_binding(worker, tmp_path):
    uid, gid = _nobody()  # type: ignore[misc]
    path = tmp_path / "app.sock"
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    args += ("--bind", f"unix:{path}", "--user", "nobody", "--group", str(gid))
    with started(*args) as (_, url):
        seen = httpx.get(url).json()
        assert (seen["euid"], seen["egid"]) == (uid, gid)
        # The socket file belongs to the user the server now runs as.
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (uid, gid)


def test_user_without_root_is_one_clear_error(monkeypatch, capsys):
    # The tests run as root in CI, where the switch would succeed: the kernel's refusal is
    # played by os.setuid, and the rest is the real command path (exit status 3, one line).
    from multicorn import __main__ as command
    from multicorn import daemon

    def refuse(uid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(daemon.os, "setuid", refuse)
    monkeypatch.setattr(daemon.os, "initgroups", lambda name, gid: None)
    monkeypatch.setattr(daemon.os, "setgroups", lambda groups: None)
    monkeypatch.setattr(command, "_freeze_startup_heap", lambda *modules: None)  # not in pytest
    code = command.main(["tests.e2e.apps:identity", "--bind", "127.0.0.1:0", "--user", "0"])
    assert code == 3
    err = capsys.readouterr().err
    assert "need the server to start as root" in err
    assert "Traceback" not in err
