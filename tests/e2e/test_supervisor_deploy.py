"""The supervisor in deployment: HTTP/3 on every worker, --reuse-port, uvloop workers, systemd
(socket activation, sd_notify from the supervisor only, the pid file) and --user."""

from __future__ import annotations

import os
import signal
import time

import anyio
import psutil
import pytest

from .h3client import H3Client
from .process import multicorn_process
from .supervision import APP, RUNTIMES, pids_answering, start, wait_for_workers
from .support import free_port


@pytest.mark.parametrize("worker", RUNTIMES)
def test_http3_is_served_by_every_worker_with_one_retry_secret(certs, worker):
    port = free_port()
    args = ("--certfile", certs.cert_path, "-b", f"127.0.0.1:{port}")
    args += ("--quic-bind", f"127.0.0.1:{port}", "--quic-retry", "-w", "2", "-k", worker)
    with multicorn_process(APP, *args) as (proc, _):
        pids = wait_for_workers(proc.pid, 2)
        proc.output.wait_for("Running HTTP/3")
        proc.output.wait_for("Running HTTP/3")

        async def ask() -> int:
            # A new UDP socket each time: the kernel picks the worker by the 4-tuple's hash.
            async with H3Client.connect("127.0.0.1", port, cafile=certs.ca_path) as client:
                stream = await client.request("/pid")
                assert stream.status == 200
                return int(stream.body)

        seen: set[int] = set()
        for _ in range(40):
            seen.add(anyio.run(ask))
            if seen == pids:
                break
        assert seen == pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_uvloop_workers_serve_and_drain():
    pytest.importorskip("uvloop")
    with start("uvloop", "-w", "2") as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        assert pids_answering(url, pids) == pids
        proc.send_signal(signal.SIGHUP)
        new = wait_for_workers(proc.pid, 2, exclude=pids)
        assert pids_answering(url, new) == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_reuse_port_workers_each_bind_the_port(worker):
    with start(worker, "-w", "2", "--reuse-port") as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        assert pids_answering(url, pids) == pids
        port = int(url.rsplit(":", 1)[1])
        for pid in pids:
            listening = [
                c
                for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            ]
            assert len(listening) == 1  # its own socket, not the supervisor's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_systemd_hears_the_supervisor_only(worker, tmp_path, monkeypatch):
    from .test_systemd import _notify_socket, _receive_until

    notify = _notify_socket(tmp_path)
    pid_path = tmp_path / "multicorn.pid"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    with notify, start(worker, "-w", "2", "--pid", str(pid_path)) as (proc, url):
        [ready] = [m for m in _receive_until(notify, "READY=1") if "READY=1" in m]
        assert "2 workers serving" in ready
        assert pid_path.read_text() == f"{proc.pid}\n"
        pids = wait_for_workers(proc.pid, 2)
        assert pids_answering(url, pids) == pids
        assert "WATCHDOG=1" in _receive_until(notify, "WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        heard = _receive_until(notify, "READY=1")
        states = [line for m in heard for line in m.split("\n") if line != "WATCHDOG=1"]
        # One RELOADING=1 and one READY=1 once both are replaced; no worker's READY or
        # STOPPING (a recycled worker stops while the service goes on).
        assert [s for s in states if "=1" in s] == ["RELOADING=1", "READY=1"], heard
        wait_for_workers(proc.pid, 2, exclude=pids)
        proc.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in m for m in _receive_until(notify, "STOPPING=1"))
        assert proc.wait(timeout=10) == 0
        assert not pid_path.exists()


@pytest.mark.parametrize("worker", RUNTIMES)
def test_workers_share_a_socket_systemd_passed(worker):
    from .test_systemd import _tcp_listener, started

    listener = _tcp_listener()
    port = listener.getsockname()[1]
    with listener, started(APP, "-k", worker, "-w", "2", sockets=[listener]) as (proc, url):
        assert url == f"http://127.0.0.1:{port}"
        pids = wait_for_workers(proc.pid, 2)
        assert pids_answering(url, pids) == pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.parametrize("worker", RUNTIMES)
def test_workers_serve_as_the_configured_user(worker, tmp_path):
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs the user nobody")
    path = tmp_path / "app.sock"
    with start(worker, "-w", "2", "--bind", f"unix:{path}", "--user", "nobody") as (proc, _):
        pids = wait_for_workers(proc.pid, 2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # each drops its rights once it holds its sockets
            uids = {psutil.Process(pid).uids().effective for pid in pids}
            if uids == {nobody.pw_uid}:
                break
            time.sleep(0.1)
        assert uids == {nobody.pw_uid}
        assert os.stat(path).st_uid == nobody.pw_uid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not path.exists()  # the supervisor removes the socket file
