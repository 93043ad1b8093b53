"""Processes and the kernel's view of them: start, wait, sample, stop.

This module owns the server process's life in a run: starting it in its own process group
(pinned to a CPU with `taskset`), waiting until its port answers an HTTP request, reading the
memory and CPU time of every process in the group from /proc, and killing the whole group
afterwards. It also picks free ports and runs the load generators with a hard time limit. Only
127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.parsers import parse_proc_stat, parse_proc_status

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """`argv` run under `taskset -c CPUS` when CPUs are given and taskset exists."""
    if not cpus or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", ",".join(str(cpu) for cpu in cpus), *argv]


def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = parse_proc_stat(Path(f"/proc/{entry}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if stat["pgrp"] == pgid:
            pids.append(int(entry))
    return sorted(pids)


@dataclass
class GroupSample:
    """Memory (KiB) and CPU time (seconds) of a process group at one moment."""

    rss_kib: int = 0
    hwm_kib: int = 0
    cpu_seconds: float = 0.0
    per_process: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def largest_hwm_kib(self) -> int:
        """The peak RSS of the biggest single process (the worker, for master/worker servers)."""
        return max((values.get("VmHWM", 0) for values in self.per_process.values()), default=0)


def sample_group(pgid: int) -> GroupSample:
    """Sum VmRSS, VmHWM and utime+stime over the group's processes (threads are included)."""
    sample = GroupSample()
    for pid in group_pids(pgid):
        try:
            status = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
            stat = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        sample.rss_kib += status.get("VmRSS", 0)
        sample.hwm_kib += status.get("VmHWM", 0)
        sample.cpu_seconds += (stat["utime"] + stat["stime"]) / CLOCK_TICKS
        sample.per_process[pid] = {"VmRSS": status.get("VmRSS", 0), "VmHWM": status.get("VmHWM", 0)}
    return sample


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    pgid = proc.pid  # started with start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_pids(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def http_probe(port: int, path: str, tls: bool, timeout: float = 2.0) -> bytes:
    """One HTTP/1.1 GET on a fresh connection; returns the first bytes of the response."""
    raw = socket.create_connection((HOST, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            sock = context.wrap_socket(raw, server_hostname="localhost")
        request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        return sock.recv(4096)
    finally:
        sock.close()


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, tls: bool, timeout: float, path: str = "/small"
) -> str | None:
    """Wait until the server answers HTTP on `port`; returns None, or why it never did."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before answering"
        try:
            head = http_probe(port, path, tls)
        except (OSError, ssl.SSLError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if head.startswith(b"HTTP/1."):
                return None
            last_error = f"unexpected answer {head[:40]!r}"
        time.sleep(0.1)
    return f"did not answer within {timeout:g} s ({last_error})"


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or '' when it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Completed:
    """A load generator's outcome: its output, exit status, CPU time and whether it overran."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    cpu_seconds: float


def run_bounded(argv: Sequence[str], timeout: float, cwd: Path | None = None) -> Completed:
    """Run a load generator to completion or kill its process group after `timeout` seconds."""
    before = os.times()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return Completed(
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        proc.returncode,
        timed_out,
        cpu,
    )
