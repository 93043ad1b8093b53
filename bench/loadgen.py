"""Load generators: run one scenario's load against a running server and return its figures.

This module owns driving the clients: wrk (HTTP/1.1, with `--latency` for percentiles),
h2load (HTTP/2 cleartext or TLS, with `--log-file` for percentiles), gtlsclient (HTTP/3, several
processes, counted by the app: see `run_h3`), the idle-connection memory
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
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.parsers import (
    gtlsclient_errors,
    parse_count_response,
    parse_gtlsclient,
    parse_h2load,
    parse_proc_stat,
    parse_wrk,
    percentiles_from_h2load_log,
)
from bench.procutil import CLOCK_TICKS, HOST, pinned, run_bounded
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


# HTTP/3: requests each gtlsclient process is asked for. More than a run can complete, so every
# client is still loading the server when the measured window closes (and is then killed); one
# that exits before has lost its connection, which fails the run.
H3_REQUESTS_PER_CONNECTION = 100_000_000
H3_PROBE_REQUESTS = 8  # the non-quiet check before and after the load: all must be 200 over h3
H3_IDLE_TIMEOUT = 5  # seconds of silence after which a gtlsclient gives up (QUIC idle timeout)
H3_START_TIMEOUT = 10.0  # seconds for the first HTTP/3 response of the load to be counted


def _gtlsclient(scenario: Scenario, ctx: LoadContext, requests: int, quiet: bool) -> list[str]:
    """`gtlsclient [-q] -n REQUESTS 127.0.0.1 PORT URL`: one QUIC connection, REQUESTS GETs.

    It keeps as many requests in flight as the server's MAX_STREAMS allows (it opens a stream
    per request whenever the limit lets it: 128 at a time against aioquic's default), and
    exits when all of them are closed.
    """
    argv = ["gtlsclient"] + (["-q"] if quiet else [])
    argv += ["--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close"]
    argv += [f"--timeout={H3_IDLE_TIMEOUT}s", "-n", str(requests)]
    argv += [HOST, str(ctx.port), _url(scenario, ctx.port)]
    return pinned(argv, ctx.cpus)


def _h3_probe(scenario: Scenario, ctx: LoadContext, when: str) -> None:
    """`H3_PROBE_REQUESTS` GETs by a non-quiet gtlsclient: ALPN h3, and every status 200.

    The load runs quiet (gtlsclient then prints nothing per request, and its exit status is 0
    even when no server answers), so this is where a server's HTTP/3 is seen to work at all.
    Tried three times before the load (the UDP listener may open after the TCP one answers).
    """
    problem = ""
    for _ in range(3 if when == "before" else 1):
        argv = _gtlsclient(scenario, ctx, H3_PROBE_REQUESTS, quiet=False)
        completed = run_bounded(argv, 3 * H3_IDLE_TIMEOUT)
        seen = parse_gtlsclient(completed.stdout + completed.stderr)
        if seen["alpn"] == "h3" and seen["statuses"] == {"200": H3_PROBE_REQUESTS}:
            return
        problem = (
            f"ALPN {seen['alpn']!r}, statuses {seen['statuses']} of {H3_PROBE_REQUESTS} "
            f"requests{', killed' if completed.timed_out else ''}"
            + (f", {seen['errors'][-1]}" if seen["errors"] else "")
        )
    raise LoadError(f"HTTP/3 probe {when} the load failed: {problem}")


def _h3_count(port: int, timeout: float = 10.0) -> tuple[float, int]:
    """(when, count): `GET /count` over the server's TCP listener (TLS, HTTP/1.1), and the
    number of GET /10k responses the app has sent over HTTP/3; `when` is halfway through the
    exchange."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    started = time.monotonic()
    chunks: list[bytes] = []
    try:
        with (
            socket.create_connection((HOST, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(b"GET /count HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            for _ in range(64):  # the answer is a few hundred bytes; read to the close
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        counts = parse_count_response(b"".join(chunks))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise LoadError(f"could not read the app's count: {type(exc).__name__}: {exc}") from None
    return (started + time.monotonic()) / 2, counts.get("3", 0)


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state, utime+stime seconds) of a process from /proc; None once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            text = stat_file.read()
        stat = parse_proc_stat(text)
    except (OSError, ValueError, IndexError):
        return None
    state = text[text.rindex(")") + 2 :].split()[0]
    return state, (stat["utime"] + stat["stime"]) / CLOCK_TICKS


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters (`/proc/net/snmp`): `RcvbufErrors` are datagrams dropped
    because a socket's receive buffer was full; {} when unreadable."""
    try:
        with open("/proc/net/snmp") as snmp:
            rows = [line.split() for line in snmp if line.startswith("Udp:")]
        return dict(zip(rows[0][1:], (int(value) for value in rows[1][1:]), strict=True))
    except (OSError, IndexError, ValueError):
        return {}


class _H3Clients:
    """The quiet gtlsclient processes of one run, each one QUIC connection.

    A client whose connection ends during the run (gtlsclient gives up after `H3_IDLE_TIMEOUT`
    s without a packet: under overload the server's UDP receive buffer overflows, and loss
    recovery between aioquic and ngtcp2 can stall a connection for seconds) is replaced, so
    the server keeps `count` connections loading it; each replacement counts as one error.
    CPU time is summed per process over the measured window, replaced ones included.
    """

    def __init__(self, argv: list[str], count: int, workdir: Path, port: int) -> None:
        self.argv = argv
        self.workdir = workdir
        self.port = port
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stderr_paths: list[Path] = []
        self.cpu_at_start: dict[int, float] = {}  # pid -> CPU seconds when the window opened
        self.cpu_done = 0.0  # CPU seconds in the window of the processes that ended
        self.lost = 0
        for _ in range(count):
            self.procs.append(self._start())

    def _start(self) -> subprocess.Popen[bytes]:
        path = self.workdir / f"gtlsclient-{self.port}-{time.monotonic_ns()}.err"
        self.stderr_paths.append(path)
        with path.open("wb") as err:
            return subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def open_window(self) -> None:
        for proc in self.procs:
            seen = _proc_stat(proc.pid)
            self.cpu_at_start[proc.pid] = seen[1] if seen else 0.0

    def cpu_seconds(self) -> float:
        total = self.cpu_done
        for proc in self.procs:
            seen = _proc_stat(proc.pid)
            if seen is not None:
                total += seen[1] - self.cpu_at_start.get(proc.pid, 0.0)
        return total

    def replace_ended(self) -> None:
        """Restart every client that has exited (read its CPU before reaping it)."""
        for index, proc in enumerate(self.procs):
            seen = _proc_stat(proc.pid)
            if seen is not None and seen[0] != "Z":
                continue
            if seen is not None:
                self.cpu_done += seen[1] - self.cpu_at_start.get(proc.pid, seen[1])
            proc.wait(timeout=5)
            self.lost += 1
            replacement = self._start()
            self.procs[index] = replacement
            self.cpu_at_start[replacement.pid] = 0.0

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def stderr_lines(self) -> list[str]:
        lines = [line for path in self.stderr_paths for line in _read_lines(path)]
        for path in self.stderr_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        return lines


def run_h3(scenario: Scenario, ctx: LoadContext, duration: float) -> dict[str, Any]:
    """`scenario.connections` quiet gtlsclient processes, one QUIC connection each.

    gtlsclient prints no per-request result when quiet, so the figure is the app's own count
    (`GET /count` of bench/apps.py, over the TCP listener): the GET /10k responses it sent over
    HTTP/3 between two readings `duration` seconds apart, the first taken once the load is
    flowing. Its correctness is checked around it: a non-quiet probe before and after the load
    must see `:status: 200` for every request over ALPN h3. A client whose connection ends
    during the window is replaced and counted as an error (`_H3Clients`); more than
    `10 x connections` of them fail the run. The clients' CPU time is read from /proc over the
    same window, and the UDP datagrams the kernel dropped for full receive buffers are kept.
    """
    _h3_probe(scenario, ctx, "before")
    _, baseline = _h3_count(ctx.port)
    argv = _gtlsclient(scenario, ctx, H3_REQUESTS_PER_CONNECTION, quiet=True)
    clients = _H3Clients(argv, scenario.connections, ctx.workdir, ctx.port)
    try:
        deadline = time.monotonic() + H3_START_TIMEOUT
        while True:  # until the load is flowing: the count moves
            started, first = _h3_count(ctx.port)
            if first > baseline:
                break
            if time.monotonic() > deadline:
                raise LoadError(
                    f"no HTTP/3 response counted within {H3_START_TIMEOUT:g} s of starting "
                    f"the clients: {_tail(clients.stderr_lines())}"
                )
            time.sleep(0.05)
        clients.open_window()
        udp_before = udp_counters()
        window_end = time.monotonic() + duration
        while (left := window_end - time.monotonic()) > 0:
            time.sleep(min(0.1, left))
            clients.replace_ended()
            if clients.lost > 10 * scenario.connections:
                raise LoadError(
                    f"{clients.lost} gtlsclient connections ended during the run: "
                    f"{_tail(clients.stderr_lines())}"
                )
        cpu = clients.cpu_seconds()
        udp_after = udp_counters()
        ended, last = _h3_count(ctx.port)
    finally:
        clients.stop()
    errors = gtlsclient_errors("\n".join(clients.stderr_lines()))
    _h3_probe(scenario, ctx, "after")
    seconds = ended - started
    requests = last - first
    result: dict[str, Any] = {
        "requests_per_s": requests / seconds,
        "requests": requests,
        "seconds": seconds,
        "errors": clients.lost,
        "connections_lost": clients.lost,
        "client_errors": errors[-5:],
        "client_cpu_percent": 100.0 * cpu / seconds,
        "client_processes": scenario.connections,
        "connections_open": scenario.connections,
        "udp_rcvbuf_errors": udp_after.get("RcvbufErrors", 0) - udp_before.get("RcvbufErrors", 0),
        "udp_in_datagrams": udp_after.get("InDatagrams", 0) - udp_before.get("InDatagrams", 0),
        "load_command": f"{scenario.connections} x {shlex.join(argv)}",
    }
    _check_errors(result)
    return result


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def _tail(lines: list[str]) -> str:
    return "; ".join(lines[-3:])[:300] or "no output"


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
    if scenario.tool == "gtlsclient":
        return run_h3(scenario, ctx, duration)
    if scenario.tool == "ws":
        return run_ws(scenario, ctx, duration)
    if scenario.measures_idle_memory:
        return run_idle(scenario, ctx, sample_rss)
    raise ValueError(f"unknown load generator {scenario.tool!r}")
