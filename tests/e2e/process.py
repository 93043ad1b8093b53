"""Starting `multicorn` as a real subprocess and finding the address it bound."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_URL = re.compile(r"Running on (https?://\S+)")


class Output:
    """The lines a subprocess prints, read by a thread so waiting for one can time out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 15.0) -> re.Match[str]:
        """The first line from now on matching `pattern`; AssertionError after `timeout`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match
        raise AssertionError(f"no line matching {regex.pattern!r}:\n" + "".join(self.lines))


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m multicorn ARGS` (with `env` added to the environment), its output
    merged into `proc.output`, an `Output`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "multicorn", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.output = Output(proc)  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM `proc`, which must then exit 0 (a drained shutdown) within 10 s."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout is not None
    proc.stdout.close()


@contextlib.contextmanager
def multicorn_process(*args: str, timeout: float = 15.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start `python -m multicorn ARGS`, wait for its first bound URL, and kill it at the end.

    `proc.output` (an `Output`) lets a test wait for a line the server or its app prints."""
    proc = launch(*args)
    try:
        url = proc.output.wait_for(_URL, timeout).group(1)
        yield proc, url
    finally:
        reap(proc)


def reap(proc: subprocess.Popen) -> None:
    """Kill `proc` if it still runs, wait for it and close its output."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()
