"""When workers fail: killed, blocked, failing at startup or in a loop; when the supervisor
itself is killed; and the settings it refuses."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from .process import multicorn_process
from .supervision import (
    APP,
    RUNTIMES,
    alive,
    ignore_errors,
    pids_answering,
    run_cli,
    start,
    wait_for_workers,
)


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
def test_a_worker_with_a_blocked_loop_is_killed_and_replaced(worker):
    with start(worker, "-w", "2", "--worker-healthcheck-timeout", "2") as (proc, url):
        pids = wait_for_workers(proc.pid, 2)
        thread = threading.Thread(target=ignore_errors, args=(url + "/block",), daemon=True)
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


@pytest.mark.parametrize("worker", RUNTIMES)
def test_workers_leave_when_their_supervisor_is_killed(worker):
    with start(worker, "-w", "2") as (proc, _):
        pids = wait_for_workers(proc.pid, 2)
        proc.kill()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in pids)


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
