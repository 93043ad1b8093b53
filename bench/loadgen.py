"""Load generators: run one scenario's load against a running server and return its figures.

This module owns driving the clients: wrk (HTTP/1.1, with `--latency` for percentiles),
h2load (HTTP/2 cleartext or TLS, with `--log-file` for percentiles), the idle-connection memory
probes for keep-alive HTTP connections and for WebSockets (asyncio clients in this process), and
the WebSocket echo client (`wsclient.py`, in one or more processes). Every client is pinned to
the load CPUs, talks to 127.0.0.1 only, and is killed if it outlives its duration by more than
`TIMEOUT_SLACK` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.parsers import parse_h2load, parse_wrk, percentiles_from_h2load_log
from bench.procutil import HOST, pinned, run_bounded
from bench.scenarios import Scenario
from bench.wsclient import client_frame, handshake_problem, handshake_request

BENCH = Path(__file__).resolve().parent
TIMEOUT_SLACK = 30.0
# A run whose errors exceed this share of its requests does not count (its figure is recorded).
MAX_ERROR_SHARE = 0.05


class LoadError(Exception):
    """The load generator could not produce a figure for this run."""


@dataclass(frozen=True)
class LoadContext:
    """Where and how to send the load."""

    port: int
    cpus: list[int] | None
    threads: int
    workdir: Path
    ws_python: str
    ws_processes: int = 1
    idle_connections: int = 1000


def _url(scenario: Scenario, port: int) -> str:
    scheme = "https" if scenario.tls else "http"
    return f"{scheme}://{HOST}:{port}{scenario.path}"


def _whole_seconds(duration: float) -> int:
    # wrk and h2load take whole seconds.
    return max(1, round(duration))


def _check_errors(result: dict[str, Any]) -> None:
    requests = result.get("requests") or 0
    errors = result.get("errors") or 0
    if errors and errors > MAX_ERROR_SHARE * max(requests, 1):
        raise LoadError(f"{errors} errors in {requests} requests")


def run_wrk(scenario: Scenario, ctx: LoadContext, duration: float) -> dict[str, Any]:
    """wrk -t THREADS -c CONNECTIONS -d DURATION --latency [-s SCRIPT] URL."""
    argv = ["wrk", "-t", str(min(ctx.threads, scenario.connections))]
    argv += ["-c", str(scenario.connections), "-d", f"{_whole_seconds(duration)}s"]
    argv += ["--latency", "--timeout", "10s"]
    if scenario.script:
        argv += ["-s", str(BENCH / scenario.script)]
    argv.append(_url(scenario, ctx.port))
    argv = pinned(argv, ctx.cpus)
    completed = run_bounded(argv, _whole_seconds(duration) + TIMEOUT_SLACK)
    result = parse_wrk(completed.stdout)
    result["load_command"] = shlex.join(argv)
    if completed.timed_out:
        raise LoadError(f"wrk overran its duration and was killed: {completed.stderr[-300:]}")
    if result["requests_per_s"] is None:
        raise LoadError(f"wrk printed no result: {(completed.stderr or completed.stdout)[-300:]}")
    result["client_cpu_percent"] = 100.0 * completed.cpu_seconds / (result["seconds"] or duration)
    _check_errors(result)
    return result


def run_h2load(scenario: Scenario, ctx: LoadContext, duration: float) -> dict[str, Any]:
    """h2load -t THREADS -c CLIENTS -m STREAMS -D DURATION --log-file LOG URL."""
    log = ctx.workdir / f"h2load-{ctx.port}-{time.monotonic_ns()}.log"
    argv = ["h2load", "-t", str(min(ctx.threads, scenario.connections))]
    argv += ["-c", str(scenario.connections), "-m", str(scenario.streams)]
    argv += ["-D", str(_whole_seconds(duration)), f"--log-file={log}", _url(scenario, ctx.port)]
    argv = pinned(argv, ctx.cpus)
    completed = run_bounded(argv, _whole_seconds(duration) + TIMEOUT_SLACK)
    result = parse_h2load(completed.stdout)
    result["load_command"] = shlex.join(argv)
    try:
        with log.open() as lines:
            percentiles = percentiles_from_h2load_log(lines)
        log.unlink()
    except OSError:
        percentiles = {}
    for key, value in percentiles.items():
        if key != "latency_avg_ms" or result.get(key) is None:
            result[key] = value  # h2load's own mean is kept; the log fills in the rest
    if completed.timed_out:
        raise LoadError(f"h2load overran its duration and was killed: {completed.stderr[-300:]}")
    if not result["requests_per_s"]:
        detail = (completed.stderr or completed.stdout)[-300:]
        raise LoadError(f"h2load completed no request: {detail}")
    active = result.get("active_s")
    if active is not None and active < 0.8 * _whole_seconds(duration):
        raise LoadError(
            f"requests stopped after {active:.1f} s of {_whole_seconds(duration)} s: the server "
            "closed the connections early and h2load does not reconnect"
        )
    wanted = "h2" if scenario.tls else "h2c"
    if result["protocol"] != wanted:
        raise LoadError(f"h2load negotiated {result['protocol']!r}, not {wanted}")
    result["client_cpu_percent"] = 100.0 * completed.cpu_seconds / (result["seconds"] or duration)
    _check_errors(result)
    return result


def run_ws(scenario: Scenario, ctx: LoadContext, duration: float) -> dict[str, Any]:
    """`wsclient.py` in `ws_processes` processes, connections split between them."""
    processes = max(1, min(ctx.ws_processes, scenario.connections))
    per_process = [scenario.connections // processes] * processes
    for index in range(scenario.connections % processes):
        per_process[index] += 1
    commands = []
    for connections in per_process:
        argv = [ctx.ws_python, str(BENCH / "wsclient.py"), "--port", str(ctx.port)]
        argv += ["--duration", str(duration), "--connections", str(connections)]
        argv += ["--window", str(scenario.streams), "--size", str(scenario.message_size)]
        if scenario.binary:
            argv.append("--binary")
        commands.append(pinned(argv, ctx.cpus))
    procs = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for argv in commands
    ]
    deadline = time.monotonic() + duration + TIMEOUT_SLACK
    outputs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise LoadError("the WebSocket client overran its duration and was killed") from None
        try:
            outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            raise LoadError(f"the WebSocket client failed: {stderr.decode()[-300:]}") from None
    upgraded = sum(out["upgraded"] for out in outputs)
    if not upgraded:
        failures = sorted({failure for out in outputs for failure in out["failures"]})
        raise LoadError(f"no WebSocket connection opened: {'; '.join(failures)[:300]}")
    seconds = max(out["seconds"] for out in outputs)
    messages = sum(out["messages"] for out in outputs)
    result: dict[str, Any] = {
        "messages_per_s": sum(
            out["messages"] / out["seconds"] for out in outputs if out["seconds"]
        ),
        # Echoed payload, one way (as much went to the server): MiB = 2**20 bytes.
        "mib_per_s": sum(out["bytes"] / out["seconds"] for out in outputs if out["seconds"])
        / (1 << 20),
        "messages": messages,
        "message_bytes": scenario.message_size,
        "requests": messages,
        "seconds": seconds,
        "errors": sum(out["errors"] for out in outputs),
        "connections_open": upgraded,
        "client_cpu_percent": 100.0 * sum(out["cpu_seconds"] for out in outputs) / seconds,
        "client_processes": processes,
        "client_loop": outputs[0].get("loop"),
        "load_command": " & ".join(shlex.join(argv) for argv in commands),
    }
    _check_errors(result)
    return result


async def _one_request(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a keep-alive connection, make one GET and read the whole response."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode("ascii"))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        writer.close()
        raise LoadError(f"unexpected response {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return reader, writer


async def _one_websocket(
    port: int, path: str, size: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket, echo one text message of `size` bytes, and leave it open."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        request, accept = handshake_request(port, path)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        problem = handshake_problem(head[:-4], accept)
        if problem is not None:
            raise LoadError(problem)
        writer.write(client_frame(b"x" * size, 0x1, os.urandom(4)))
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8), "big")
        await reader.readexactly(length)
        if first != 0x81 or length != size:  # one final text frame of the size sent
            raise LoadError(f"unexpected echo: first byte {first:#x}, {length} bytes")
    except BaseException:
        writer.close()
        raise
    return reader, writer


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _idle(
    open_one: Opener, count: int, sample_rss: Callable[[], int], batch: int = 50
) -> dict[str, Any]:
    """Open `count` connections with `open_one` (50 at a time), idle them, measure RSS growth."""
    for _ in range(10):  # warm the server's code paths before the baseline
        _, writer = await asyncio.wait_for(open_one(), 10)
        writer.close()
    await asyncio.sleep(0.5)
    before = sample_rss()
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: list[str] = []
    try:
        for start in range(0, count, batch):
            results = await asyncio.gather(
                *(asyncio.wait_for(open_one(), 10) for _ in range(min(batch, count - start))),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    failures.append(f"{type(result).__name__}: {result}")
                else:
                    connections.append(result)
        await asyncio.sleep(1.0)  # let the server settle into idle
        after = sample_rss()
        alive = sum(1 for reader, _ in connections if not reader.at_eof())
    finally:
        for _, writer in connections:
            with contextlib.suppress(Exception):
                writer.close()
    if not alive:
        raise LoadError(f"no idle connection stayed open: {'; '.join(sorted(set(failures)))[:300]}")
    return {
        "kib_per_connection": (after - before) / alive,
        "connections_open": alive,
        "connections_failed": len(failures),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "errors": len(failures) + len(connections) - alive,
        "requests": count,
    }


def run_idle(
    scenario: Scenario, ctx: LoadContext, sample_rss: Callable[[], int], timeout: float = 120.0
) -> dict[str, Any]:
    """Open `idle_connections` connections, leave them idle, and measure the RSS growth.

    `idle`: keep-alive HTTP/1.1 connections after one GET each; `ws-idle`: WebSockets after
    one echo each (so the app's receive loop runs on every one of them).
    """
    port, path, count = ctx.port, scenario.path, ctx.idle_connections
    if scenario.tool == "ws-idle":
        size = scenario.message_size

        def open_one() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return _one_websocket(port, path, size)

        what = f"{count} WebSockets to {path}, one {size}-byte text echo each"
    else:

        def open_one() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return _one_request(port, path)

        what = f"{count} connections, one GET {path} each"

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(_idle(open_one, count, sample_rss), timeout)

    try:
        result = asyncio.run(bounded())
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        raise LoadError(f"idle-connection client failed: {type(exc).__name__}: {exc}") from None
    result["load_command"] = f"(in-process asyncio client: {what})"
    return result


def run_load(
    scenario: Scenario, ctx: LoadContext, duration: float, sample_rss: Callable[[], int]
) -> dict[str, Any]:
    """Run the scenario's load generator once; raises LoadError when it yields no figure."""
    if scenario.tool == "wrk":
        return run_wrk(scenario, ctx, duration)
    if scenario.tool == "h2load":
        return run_h2load(scenario, ctx, duration)
    if scenario.tool == "ws":
        return run_ws(scenario, ctx, duration)
    if scenario.measures_idle_memory:
        return run_idle(scenario, ctx, sample_rss)
    raise ValueError(f"unknown load generator {scenario.tool!r}")
