"""Replacing workers without losing a request: SIGHUP's rolling restart and max-requests
recycling, under steady load from wrk (HTTP/1.1) and h2load (HTTP/2), on asyncio and trio."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import websockets.exceptions
import websockets.sync.client

from . import h2retry
from .process import multicorn_process
from .supervision import APP, RUNTIMES, pids_answering, wait_for_workers

LOAD_SECONDS = 5


def start(worker: str, *extra: str):
    return multicorn_process(
        APP, "-b", "127.0.0.1:0", "-k", worker, "-w", "2", "--graceful-timeout", "5", *extra
    )


@pytest.mark.parametrize("worker", RUNTIMES)
def test_sighup_replaces_every_worker_one_at_a_time(worker):
    with start(worker) as (proc, url):
        old = wait_for_workers(proc.pid, 2)
        proc.send_signal(signal.SIGHUP)
        proc.output.wait_for("SIGHUP: replacing 2 workers one at a time")
        proc.output.wait_for(r"exited \(exit status 0; replaced by")
        proc.output.wait_for(r"exited \(exit status 0; replaced by")
        lines = proc.output.lines
        for pid in old:
            [exited] = [i for i, line in enumerate(lines) if f"worker {pid} exited" in line]
            successor = re.search(r"replaced by worker (\d+)", lines[exited]).group(1)
            # The old one drained only once its replacement was serving.
            [serving] = [i for i, line in enumerate(lines) if f"[{successor}]" in line]
            assert serving < exited
        new = wait_for_workers(proc.pid, 2, exclude=old)
        assert pids_answering(url, new) == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", RUNTIMES)
def test_a_websocket_is_closed_with_1012_on_a_restart_and_1001_on_shutdown(worker):
    with start(worker, "-w", "1", "--max-requests", "1000") as (proc, url):
        wait_for_workers(proc.pid, 1)
        ws_url = url.replace("http://", "ws://") + "/ws"
        with websockets.sync.client.connect(ws_url) as ws:
            ws.recv(timeout=5)
            proc.send_signal(signal.SIGHUP)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        with websockets.sync.client.connect(ws_url) as ws:
            ws.recv(timeout=5)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert proc.wait(timeout=10) == 0


def _restart_during_load(proc) -> None:
    """A SIGHUP a second into the load; max-requests recycles workers all along."""
    time.sleep(1.5)
    proc.send_signal(signal.SIGHUP)


def _check_both_paths_ran(proc) -> None:
    proc.output.wait_for("SIGHUP: replacing 2 workers")
    for _ in range(2):
        proc.output.wait_for(r"exited \(exit status 0; replaced by")
    text = "".join(proc.output.lines)
    assert re.search(r"worker \d+ served \d+ requests: replacing it", text), text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
@pytest.mark.parametrize("worker", RUNTIMES)
def test_http11_load_loses_no_request_to_restarts_and_recycling(worker):
    with start(worker, "--max-requests", "1500", "--max-requests-jitter", "500") as (proc, url):
        wait_for_workers(proc.pid, 2)
        trigger = threading.Thread(target=_restart_during_load, args=(proc,))
        trigger.start()
        wrk = subprocess.run(
            ["wrk", "-t1", "-c16", f"-d{LOAD_SECONDS}s", "--timeout", "4s", url + "/"],
            capture_output=True,
            text=True,
            timeout=LOAD_SECONDS + 30,
        )
        trigger.join()
        _check_both_paths_ran(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert wrk.returncode == 0, wrk.stderr
    done = re.search(r"(\d+) requests in", wrk.stdout)
    assert done and int(done.group(1)) > 0, wrk.stdout
    # wrk prints these lines only when something went wrong.
    assert "Socket errors" not in wrk.stdout, wrk.stdout
    assert "Non-2xx" not in wrk.stdout, wrk.stdout


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load")
@pytest.mark.parametrize("worker", RUNTIMES)
def test_http2_load_loses_no_request_to_restarts_and_recycling(worker):
    """h2load makes the load; h2retry.run checks every request by RFC 9113's rules (h2load
    counts requests it queued behind a GOAWAY, which the server never saw, as failed)."""
    with start(worker, "--max-requests", "1500", "--max-requests-jitter", "500") as (proc, url):
        wait_for_workers(proc.pid, 2)
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        trigger = threading.Thread(target=_restart_during_load, args=(proc,))
        checked: dict[str, h2retry.Tally] = {}
        checker = threading.Thread(
            target=lambda: checked.update(
                tally=h2retry.run(host, int(port), seconds=LOAD_SECONDS, concurrency=4)
            )
        )
        trigger.start()
        checker.start()
        h2load = subprocess.run(
            ["h2load", "-c8", "-m8", "-D", str(LOAD_SECONDS), "-T", "4", url + "/"],
            capture_output=True,
            text=True,
            timeout=LOAD_SECONDS + 30,
        )
        trigger.join()
        checker.join(timeout=30)
        _check_both_paths_ran(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    tally = checked["tally"]
    assert tally.lost == [], tally
    assert tally.goaways >= 1 and tally.answered > 0, tally
    assert tally.statuses == {200}, tally
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", h2load.stdout)
    assert codes and int(codes.group(1)) > 0, h2load.stdout
    assert codes.groups()[1:] == ("0", "0", "0"), h2load.stdout
    assert re.search(r", 0 timeout", h2load.stdout), h2load.stdout
