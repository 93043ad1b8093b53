"""The supervisor (`--workers N`) as a user runs it: real processes, signals and exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import anyio
import httpx
import psutil
import pytest

from .h3client import H3Client
from .process import ROOT, multicorn_process
from .supervision import APP, RUNTIMES, pids_answering, wait_for_workers, worker_pids
from .support import free_port


def start(worker: str, *extra: str):
    return multicorn_process(
        APP, "-b", "127.0.0.1:0", "-k", worker, "--graceful-timeout", "2", *extra
    )


def _ignore_errors(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the supervisor reaps its workers.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multicorn", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("worker", RUNTIMES)
def test_every_worker_serves_and_sigterm_stops_them_all(worker):
    with start(worker, "-w", "3") as (proc, url):
        pids = wait_for_workers(proc.pid, 3)
        assert proc.pid not in pids
        assert pids_answering(url, pids) == pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        for pid in pids:
            assert not _alive(pid)
        proc.output.wait_for("supervisor .* stopped")
    assert sum("worker" in line and "started" in line for line in proc.output.lines) == 3


@pytest.mark.parametrize("worker", RUNTIMES)
def test_a_killed_worker_is_replaced_and_the_reason_logged(worker):
    with start(worker, "-w", "2") as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        proc.output.wait_for(rf"worker {victim} died unexpectedly \(killed by SIGKILL\)")
        new = wait_for_workers(proc.pid, 2, exclude={victim})
        assert pids_answering(url, new) == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_sigterm_lets_the_request_in_flight_finish(worker):
    with start(worker, "-w", "2") as (proc, url):
        wait_for_workers(proc.pid, 2)
        result = {}

        def slow_request():
            result["response"] = httpx.get(url + "/slow", timeout=10)

        thread = threading.Thread(target=slow_request)
        thread.start()
        proc.output.wait_for("sleeping in /slow")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - started
        thread.join(timeout=10)
    assert result["response"].status_code == 200
    assert elapsed < 2 + 2  # within the graceful timeout (and a margin for the processes)


@pytest.mark.parametrize("worker", RUNTIMES)
def test_a_second_sigint_stops_at_once(worker):
    with multicorn_process(
        APP, "-b", "127.0.0.1:0", "-k", worker, "-w", "2", "--graceful-timeout", "30"
    ) as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        thread = threading.Thread(target=_ignore_errors, args=(url + "/stuck",), daemon=True)
        thread.start()
        proc.output.wait_for("sleeping in /stuck")
        proc.send_signal(signal.SIGINT)
        proc.output.wait_for("SIGINT: draining")
        time.sleep(0.3)
        assert proc.poll() is None  # the stuck request holds the graceful drain
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("worker", RUNTIMES)
def test_sigttin_and_sigttou_add_and_remove_a_worker(worker):
    with start(worker, "-w", "2") as (proc, url):
        first = wait_for_workers(proc.pid, 2)
        proc.send_signal(signal.SIGTTIN)
        three = wait_for_workers(proc.pid, 3)
        assert first < three
        assert pids_answering(url, three) == three
        proc.send_signal(signal.SIGTTOU)
        proc.output.wait_for("SIGTTOU: now 2 workers")  # signals of one kind do not queue
        proc.send_signal(signal.SIGTTOU)
        one = wait_for_workers(proc.pid, 1)
        assert one < three
        proc.output.wait_for("SIGTTOU: now 1 workers")
        proc.send_signal(signal.SIGTTOU)  # never below one
        proc.output.wait_for("SIGTTOU: now 1 workers")
        time.sleep(0.5)
        assert worker_pids(proc.pid) == one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_max_requests_replaces_the_worker(worker):
    # One worker is enough: recycling alone starts the supervisor.
    with start(worker, "--max-requests", "5", "--max-requests-jitter", "2") as (proc, url):
        [first] = wait_for_workers(proc.pid, 1)
        answered = [int(httpx.get(url + "/pid").text) for _ in range(8)]
        assert answered[:5] == [first] * 5
        proc.output.wait_for(f"worker {first} served [5-8] requests: replacing it")
        proc.output.wait_for(rf"worker {first} exited \(exit status 0; replaced by worker")
        [second] = wait_for_workers(proc.pid, 1, exclude={first})
        assert int(httpx.get(url + "/pid").text) == second
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_a_worker_with_a_blocked_loop_is_killed_and_replaced(worker):
    with start(worker, "-w", "2", "--worker-healthcheck-timeout", "2") as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        thread = threading.Thread(target=_ignore_errors, args=(url + "/block",), daemon=True)
        thread.start()
        hung = int(proc.output.wait_for(r"\[test-app\] (\d+) blocking its loop").group(1))
        assert hung in pids
        proc.output.wait_for(f"worker {hung} sent no heartbeat for", timeout=10)
        proc.output.wait_for(f"worker {hung} killed by SIGKILL \\(no heartbeat\\)")
        new = wait_for_workers(proc.pid, 2, exclude={hung})
        assert pids_answering(url, new) == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_workers_failing_at_startup_make_the_supervisor_give_up(worker):
    started = time.monotonic()
    result = run_cli(
        "tests.e2e.supervisor_apps:crash_at_startup", "-b", "127.0.0.1:0", "-k", worker, "-w", "2"
    )
    assert result.returncode == 3
    assert "database unreachable" in result.stderr
    assert "failed to start" in result.stderr and "Giving up" in result.stderr
    assert result.stderr.count("started") <= 4  # no restart loop
    assert time.monotonic() - started < 20


def test_reload_cannot_be_combined_with_workers():
    result = run_cli(APP, "--reload", "--workers", "2")
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert "--reload cannot be combined with --workers 2 > 1" in line


def test_web_concurrency_sets_the_worker_count():
    env = {**os.environ, "WEB_CONCURRENCY": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "multicorn", APP, "-b", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_workers(proc.pid, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


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
def test_max_worker_memory_replaces_the_worker(worker):
    with start(worker, "--max-worker-memory", "1") as (proc, url):  # every worker is past 1 MiB
        [first] = wait_for_workers(proc.pid, 1)
        proc.output.wait_for(rf"worker {first} uses \d+ MiB of memory: replacing it")
        proc.output.wait_for(rf"worker {first} exited \(exit status 0; replaced by")
        assert httpx.get(url + "/pid").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_workers_leave_when_their_supervisor_is_killed(worker):
    with start(worker, "-w", "2") as (proc, _):
        pids = wait_for_workers(proc.pid, 2)
        proc.kill()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)


def test_a_crash_loop_backs_off_instead_of_spinning():
    # --max-requests: one worker under the supervisor (recycling needs one).
    args = ("tests.e2e.supervisor_apps:crash_soon", "-b", "127.0.0.1:0", "--max-requests", "99")
    with multicorn_process(*args) as (proc, _):
        delays = []
        for _ in range(3):
            match = proc.output.wait_for(r"restarting in ([\d.]+) s \((\d+) failures in a row\)")
            delays.append(float(match.group(1)))
        assert delays == sorted(delays) and delays[-1] > delays[0] > 0, delays
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    started = [line for line in proc.output.lines if "started" in line and "worker" in line]
    assert len(started) <= 5  # about 4 s of crashing: 4 starts with the back-off, not dozens


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
