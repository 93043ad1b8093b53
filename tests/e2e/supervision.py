"""Helpers for the supervisor's subprocess tests: its workers, and which of them answer."""

from __future__ import annotations

import time

import httpx
import psutil

APP = "tests.e2e.supervisor_apps:app"
RUNTIMES = ["asyncio", "trio"]


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
