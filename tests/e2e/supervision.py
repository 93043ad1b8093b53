"""Helpers for the supervisor's subprocess tests: its workers, and which of them answer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx
import psutil

from .process import ROOT, multicorn_process

APP = "tests.e2e.supervisor_apps:app"
RUNTIMES = ["asyncio", "trio"]


def start(worker: str, *extra: str):
    """`multicorn APP` on a free port with `worker` and a 2 s graceful timeout, plus `extra`."""
    return multicorn_process(
        APP, "-b", "127.0.0.1:0", "-k", worker, "--graceful-timeout", "2", *extra
    )


def worker_pids(supervisor_pid: int) -> set[int]:
    """The live worker processes of the supervisor (its children)."""
    pids = set()
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def wait_for_workers(supervisor_pid: int, count: int, *, exclude=frozenset(), timeout=20.0):
    """Wait until the supervisor has exactly `count` workers, none of them in `exclude`, each
    of them answering; return their pids."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = worker_pids(supervisor_pid)
        if len(pids) == count and not pids & set(exclude):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"wanted {count} workers (not {sorted(exclude)}), have {sorted(pids)}")


def pids_answering(url: str, want: set[int], *, attempts: int = 300) -> set[int]:
    """Ask /pid on fresh connections until every pid in `want` answered (or `attempts` ran
    out); return the pids seen. Which worker accepts a connection is the kernel's choice."""
    seen: set[int] = set()
    for _ in range(attempts):
        response = httpx.get(url + "/pid", headers={"connection": "close"}, timeout=10)
        assert response.status_code == 200
        seen.add(int(response.text))
        if want <= seen:
            break
    return seen


def ignore_errors(url: str) -> None:
    """GET `url`, for a request meant to hang or be cut off."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=60)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
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
    """`python -m multicorn ARGS` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "multicorn", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
