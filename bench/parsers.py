"""Parsers for what the load generators and the kernel print: wrk, h2load, gtlsclient, /proc, lscpu.

This module owns turning tool output into numbers. It runs nothing itself, so its functions are
unit-tested on captured texts (tests/test_bench.py). Latencies come out in milliseconds, rates
per second, sizes in KiB. A parser that cannot find a figure leaves it `None` rather than
guessing; the caller decides whether a run without it counts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

_TIME_UNITS_MS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def time_to_ms(text: str) -> float:
    """`'5.49ms'` -> 5.49; `'812us'` -> 0.812; `'1.02s'` -> 1020.0 (wrk and h2load units)."""
    match = re.fullmatch(_NUMBER + r"\s*(us|µs|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)]


def _count(text: str) -> float:
    """wrk's `Req/Sec` style counts: `'11.69k'` -> 11690.0, `'1.2M'` -> 1200000.0."""
    match = re.fullmatch(_NUMBER + r"([kKMG]?)", text.strip())
    if match is None:
        raise ValueError(f"not a count: {text!r}")
    scale = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def parse_wrk(text: str) -> dict[str, Any]:
    """Figures from `wrk --latency` output.

    Keys: `requests_per_s`, `requests`, `seconds`, `latency_avg_ms`, `latency_stdev_ms`,
    `latency_max_ms`, `latency_p50_ms`, `latency_p75_ms`, `latency_p90_ms`, `latency_p99_ms`,
    `non_2xx`, `socket_errors` (dict of connect/read/write/timeout), `errors` (their sum with
    non_2xx). Absent figures are `None` (errors default to 0: wrk prints those lines only when
    something went wrong).
    """
    result: dict[str, Any] = {
        "requests_per_s": None,
        "requests": None,
        "seconds": None,
        "latency_avg_ms": None,
        "latency_stdev_ms": None,
        "latency_max_ms": None,
        "latency_p50_ms": None,
        "latency_p75_ms": None,
        "latency_p90_ms": None,
        "latency_p99_ms": None,
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    time_token = r"([0-9.]+(?:us|µs|ms|s|m|h))"
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(
            r"Latency\s+" + time_token + r"\s+" + time_token + r"\s+" + time_token, stripped
        )
        if match:
            result["latency_avg_ms"] = time_to_ms(match.group(1))
            result["latency_stdev_ms"] = time_to_ms(match.group(2))
            result["latency_max_ms"] = time_to_ms(match.group(3))
            continue
        match = re.match(r"(50|75|90|99)(?:\.0+)?%\s+" + time_token + "$", stripped)
        if match:
            result[f"latency_p{match.group(1)}_ms"] = time_to_ms(match.group(2))
            continue
        match = re.match(r"([0-9]+) requests in " + time_token, stripped)
        if match:
            result["requests"] = int(match.group(1))
            result["seconds"] = time_to_ms(match.group(2)) / 1000.0
            continue
        match = re.match(r"Socket errors: (.*)", stripped)
        if match:
            for name, value in re.findall(r"(connect|read|write|timeout) ([0-9]+)", match.group(1)):
                result["socket_errors"][name] = int(value)
            continue
        match = re.match(r"Non-2xx or 3xx responses: ([0-9]+)", stripped)
        if match:
            result["non_2xx"] = int(match.group(1))
            continue
        match = re.match(r"Requests/sec:\s+" + _NUMBER, stripped)
        if match:
            result["requests_per_s"] = float(match.group(1))
    result["errors"] = result["non_2xx"] + sum(result["socket_errors"].values())
    return result


def parse_h2load(text: str) -> dict[str, Any]:
    """Figures from h2load's summary.

    Keys: `requests_per_s`, `seconds`, `requests` (done), `succeeded`, `failed`, `errored`,
    `timeout`, `status` (dict `2xx`..`5xx`), `latency_avg_ms`, `latency_max_ms` (from "time for
    request"), `protocol` (the "Application protocol" line: `h2`, `h2c`, `http/1.1`), and
    `errors` (h2load's `failed`, which counts errored requests and HTTP-level failures). p99
    is not in the summary: see `percentiles_from_h2load_log`.
    """
    result: dict[str, Any] = {
        "requests_per_s": None,
        "seconds": None,
        "requests": None,
        "succeeded": None,
        "failed": None,
        "errored": None,
        "timeout": None,
        "status": {},
        "latency_avg_ms": None,
        "latency_max_ms": None,
        "protocol": None,
    }
    time_token = r"([0-9.]+(?:us|µs|ms|s|m|h))"
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"finished in " + time_token + r", " + _NUMBER + r" req/s", stripped)
        if match:
            result["seconds"] = time_to_ms(match.group(1)) / 1000.0
            result["requests_per_s"] = float(match.group(2))
            continue
        match = re.match(r"requests: (.*)", stripped)
        if match:
            fields = dict(
                (name, int(value)) for value, name in re.findall(r"([0-9]+) (\w+)", match.group(1))
            )
            result["requests"] = fields.get("done")
            for name in ("succeeded", "failed", "errored", "timeout"):
                result[name] = fields.get(name)
            continue
        match = re.match(r"status codes: (.*)", stripped)
        if match:
            result["status"] = {
                name: int(value)
                for value, name in re.findall(r"([0-9]+) ([1-5]xx)", match.group(1))
            }
            continue
        match = re.match(r"time for request:\s+" + r"\s+".join([time_token] * 4), stripped)
        if match:
            result["latency_max_ms"] = time_to_ms(match.group(2))
            result["latency_avg_ms"] = time_to_ms(match.group(3))
            continue
        match = re.match(r"Application protocol: (\S+)", stripped)
        if match:
            result["protocol"] = match.group(1)
    # h2load's `failed` already holds `errored` (and timeouts) plus HTTP-level failures.
    status = result["status"]
    non_2xx = sum(count for name, count in status.items() if name != "2xx")
    if result["failed"] is not None:
        result["errors"] = max(result["failed"], non_2xx)
    else:
        result["errors"] = non_2xx
    return result


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (`fraction` 0.99 for p99)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def percentiles_from_h2load_log(lines: Iterable[str]) -> dict[str, float | None]:
    """Latency percentiles from `h2load --log-file` lines: start µs, status, duration µs (tabs).

    Returns `latency_p50_ms`, `latency_p90_ms`, `latency_p99_ms` and `latency_avg_ms` over
    the logged requests (all statuses), and `active_s`: from the first request's start to the
    last one's end (h2load does not reconnect, so a server that closes its connections early
    shows a span shorter than the run). Malformed lines are skipped.
    """
    durations: list[float] = []
    first_start: int | None = None
    last_end: int | None = None
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            start, micros = int(parts[0]), int(parts[2])
        except ValueError:
            continue
        durations.append(micros / 1000.0)
        first_start = start if first_start is None else min(first_start, start)
        last_end = start + micros if last_end is None else max(last_end, start + micros)
    durations.sort()
    active = None if first_start is None or last_end is None else (last_end - first_start) / 1e6
    return {
        "active_s": active,
        "latency_p50_ms": percentile(durations, 0.50),
        "latency_p90_ms": percentile(durations, 0.90),
        "latency_p99_ms": percentile(durations, 0.99),
        "latency_avg_ms": (sum(durations) / len(durations)) if durations else None,
    }


def parse_proc_status(text: str) -> dict[str, int]:
    """`/proc/PID/status` memory lines in KiB: `{'VmRSS': 51200, 'VmHWM': 60000, ...}`."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"(Vm\w+|Rss\w+):\s+([0-9]+) kB", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def parse_proc_stat(text: str) -> dict[str, int]:
    """`/proc/PID/stat`: `ppid`, `pgrp`, `utime`, `stime` (clock ticks); names may hold spaces."""
    rest = text[text.rindex(")") + 2 :].split()
    # Fields after the name, numbered from 3 (state) in proc(5).
    return {
        "ppid": int(rest[1]),
        "pgrp": int(rest[2]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
    }


def parse_lscpu(text: str) -> dict[str, str]:
    """`lscpu` key: value lines, e.g. `{'Model name': 'AMD EPYC', 'CPU(s)': '2', ...}`."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in values:
            values[key.strip()] = value.strip()
    return values


def parse_gtlsclient(text: str) -> dict[str, Any]:
    """What a non-quiet `gtlsclient` run printed (ngtcp2's example HTTP/3 client).

    Keys: `alpn` (the "Negotiated ALPN is ..." line, or None), `statuses` (`{'200': 8}`, one
    per `[:status: NNN]` response header line), `errors` (ngtcp2 error lines such as
    `ngtcp2_conn_handle_expiry: ERR_IDLE_CLOSE`, which it prints even when quiet).
    """
    alpn = None
    statuses: dict[str, int] = {}
    errors: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"Negotiated ALPN is (\S+)", stripped)
        if match:
            alpn = match.group(1)
            continue
        match = re.match(r"http: stream 0x[0-9a-f]+ \[:status: ([0-9]{3})\]$", stripped)
        if match:
            statuses[match.group(1)] = statuses.get(match.group(1), 0) + 1
            continue
        if re.search(r"\bERR_[A-Z_]+", stripped):
            errors.append(stripped)
    return {"alpn": alpn, "statuses": statuses, "errors": errors}


def gtlsclient_errors(text: str) -> list[str]:
    """The ngtcp2 error lines of a quiet `gtlsclient` (its only output when quiet)."""
    return [line.strip() for line in text.splitlines() if re.search(r"\bERR_[A-Z_]+", line)]


def parse_count_response(raw: bytes) -> dict[str, int]:
    """The JSON body of `bench/apps.py`'s `GET /count` (an HTTP/1.1 response, whole).

    Raises ValueError when the response is not a 200 with a JSON object of counts.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"unexpected answer to GET /count: {raw[:60]!r}")
    try:
        counts = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"GET /count answered no JSON: {body[:60]!r}") from exc
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        raise ValueError(f"GET /count answered no counts: {body[:60]!r}")
    return {str(key): value for key, value in counts.items()}
