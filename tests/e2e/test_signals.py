"""SIGINT and SIGTERM stop a single-process server within its graceful timeout wherever they
land: during startup, or at any point while a burst of requests (HTTP/1.1, h2c, malformed,
half-sent, idle keep-alive, a body still arriving) is being served.

Each case is one process; the points are a bounded list, not a search."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import h2.config
import h2.connection
import pytest

from .process import ROOT, Output

WORKERS = ["asyncio", "uvloop", "trio"]
GRACEFUL = 1.0
# Startup of the interpreter and a loaded machine on top of the graceful timeout.
BOUND = GRACEFUL + 4.0
_URL = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


def _ignore_sigint() -> None:
    # What a shell does to a command it starts in the background (without job control).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(app: str, worker: str, *, sigint_ignored: bool = False) -> subprocess.Popen:
    args = [app, "-b", "127.0.0.1:0", "-k", worker, "--graceful-timeout", str(GRACEFUL)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "multicorn", *args],
        preexec_fn=_ignore_sigint if sigint_ignored else None,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.output = Output(proc)
    return proc


def _connect(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def _h2c_get() -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, headers, end_stream=True)
    return conn.data_to_send()


def _burst(port: int) -> list[socket.socket]:
    """Requests of every kind, none of them read back: the server answers while the signal
    comes."""
    return [
        _connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        _connect(port, _h2c_get()),
        _connect(port, b"GARBAGE \x00\x01\r\n\r\n"),
        _connect(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: "),  # a head never finished
        _connect(port, b""),  # connected, idle
        _connect(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc"),
    ]


def _stops_in_time(proc: subprocess.Popen, sig: signal.Signals, what: str) -> None:
    proc.send_signal(sig)
    start = time.monotonic()
    try:
        proc.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(
            f"{sig.name} {what}: still running after {BOUND} s\n" + "".join(proc.output.lines)
        ) from None
    assert time.monotonic() - start < BOUND


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


# (signal, seconds after the burst starts, SIGINT inherited as ignored): each signal early and
# late, and the points between split between them to keep the run short (the body still
# arriving holds each stop for the graceful timeout).
_POINTS = [
    (signal.SIGINT, 0.0, False),
    (signal.SIGTERM, 0.0, False),
    (signal.SIGINT, 0.0, True),
    (signal.SIGINT, 0.001, False),
    (signal.SIGTERM, 0.005, False),
    (signal.SIGINT, 0.02, True),
    (signal.SIGTERM, 0.05, False),
    (signal.SIGINT, 0.05, False),
]


@pytest.mark.parametrize("worker", WORKERS)
def test_a_signal_during_a_burst_stops_the_server(worker):
    for sig, delay, sigint_ignored in _POINTS:
        proc = _start("examples.hello:app", worker, sigint_ignored=sigint_ignored)
        try:
            port = int(proc.output.wait_for(_URL).group(1))
            start = time.monotonic()
            sockets = _burst(port)
            time.sleep(max(0.0, delay - (time.monotonic() - start)))
            _stops_in_time(proc, sig, f"{delay * 1000:g} ms after a burst")
            assert proc.returncode == 0, "".join(proc.output.lines)
            for sock in sockets:
                sock.close()
        finally:
            _end(proc)


@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize(
    ("sig", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-inherited-ignored"],
)
def test_a_signal_during_startup_stops_the_server(worker, sig, sigint_ignored):
    # Not left to the process's handlers, which would ignore it (inherited SIG_IGN) or end the
    # process undrained (SIGTERM); not held until the app's startup completes either.
    proc = _start("tests.e2e.apps:slow_startup", worker, sigint_ignored=sigint_ignored)
    try:
        proc.output.wait_for("starting up")
        _stops_in_time(proc, sig, "during lifespan startup")
        proc.output.wait_for("a signal interrupted the application's startup; stopped", 5)
        output = "".join(proc.output.lines)
        assert proc.returncode == 0, output
        assert "Running on" not in output
    finally:
        _end(proc)
