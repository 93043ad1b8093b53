"""Starting `multicorn` as a real subprocess and finding the address it bound."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_URL = re.compile(r"Running on (http://\S+)")


@contextlib.contextmanager
def multicorn_process(*args: str, timeout: float = 15.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start `python -m multicorn ARGS`, wait for its first bound URL, and kill it at the end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "multicorn", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = _wait_for_url(proc, timeout)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = _URL.search(line)
        if match:
            return match.group(1)
    raise AssertionError("multicorn did not report a bound address:\n" + "".join(lines))
