"""The supervisor (`--workers N`) as a user runs it: real processes, signals and exit codes."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from .process import launch, multicorn_process, stop
from .supervision import (
    APP,
    RUNTIMES,
    alive,
    ignore_errors,
    pids_answering,
    start,
    wait_for_workers,
    worker_pids,
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
            assert not alive(pid)
        proc.output.wait_for("supervisor .* stopped")
    assert sum("worker" in line and "started" in line for line in proc.output.lines) == 3


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
        thread = threading.Thread(target=ignore_errors, args=(url + "/stuck",), daemon=True)
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
        assert not any(alive(pid) for pid in pids)


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


def test_web_concurrency_sets_the_worker_count():
    proc = launch(APP, "-b", "127.0.0.1:0", env={"WEB_CONCURRENCY": "2"})
    try:
        wait_for_workers(proc.pid, 2)
    finally:
        stop(proc)


@pytest.mark.parametrize("worker", RUNTIMES)
def test_max_worker_memory_replaces_the_worker(worker):
    with start(worker, "--max-worker-memory", "1") as (proc, url):  # every worker is past 1 MiB
        [first] = wait_for_workers(proc.pid, 1)
        proc.output.wait_for(rf"worker {first} uses \d+ MiB of memory: replacing it")
        proc.output.wait_for(rf"worker {first} exited \(exit status 0; replaced by")
        assert httpx.get(url + "/pid").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
