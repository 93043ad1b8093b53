"""What the ASGI layer logs through: the server's loggers and the access log line.

The access log speaks Gunicorn's and Hypercorn's format atoms (%(h)s, %({user-agent}i)s, ...).
Setting the loggers up from a Config is not done here but in multicorn.logging, so app/ never
depends on the configuration layer above it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip

# Request data is attacker-controlled; escaping control characters keeps one request on one
# log line and keeps terminal escape sequences out of log viewers.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

ATOMS: Final = ("h", "l", "u", "t", "r", "m", "U", "q", "H", "s", "S", "B", "b", "f", "a",
                "T", "D", "L", "p")  # fmt: skip


@dataclass
class Loggers:
    """What the server logs through. `access` is None when access logging is off."""

    error: logging.Logger
    access: logging.Logger | None
    access_format: str  # Config.access_logformat
    access_json: bool = False  # one JSON object per access line instead of access_format


@dataclass
class AccessRecord:
    """Everything an access log line can mention about one finished request."""

    client: tuple[str, int] | None  # None for unix sockets
    method: str
    path: str
    query_string: bytes
    http_version: str  # as in the ASGI scope: "1.0", "1.1", "2", "3"
    status: int
    response_bytes: int
    request_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    start_time: float = 0.0  # wall clock, seconds since the epoch
    duration: float = 0.0  # seconds


def _clean(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _header(headers: list[tuple[bytes, bytes]], name: str) -> str:
    wanted = name.lower().encode("latin-1", "replace")
    values = [value for key, value in headers if key.lower() == wanted]
    if not values:
        return "-"
    return _clean(b", ".join(values).decode("latin-1"))


def _timestamp(epoch: float) -> str:
    t = time.gmtime(epoch)
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"[{t.tm_mday:02d}/{month}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]"
    )


class AccessAtoms(Mapping[str, str]):
    """The atoms of one request, computed on lookup, for use as `fmt % AccessAtoms(record)`.

    Unknown atoms and missing values render as "-", as in Gunicorn.
    """

    def __init__(self, record: AccessRecord) -> None:
        self._rec = record

    def __getitem__(self, key: str) -> str:
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                return _header(self._rec.request_headers, name)
            if kind == "o":
                return _header(self._rec.response_headers, name)
            if kind == "e":
                return _clean(os.environ.get(name, "-"))
            return "-"
        value = self._atom(key)
        return "-" if value is None or value == "" else value

    def _atom(self, key: str) -> str | None:
        rec = self._rec
        if key == "h":
            return rec.client[0] if rec.client else None
        if key in ("l", "u"):
            return None
        if key == "t":
            return _timestamp(rec.start_time)
        if key == "r":
            return f"{self['m']} {self['U']}{self._query_suffix()} {self['H']}"
        if key == "m":
            return _clean(rec.method)
        if key == "U":
            return _clean(rec.path)
        if key == "q":
            return _clean(rec.query_string.decode("latin-1"))
        if key == "H":
            return f"HTTP/{rec.http_version}"
        if key in ("s", "S"):
            return str(rec.status)
        if key == "B":
            return str(rec.response_bytes)
        if key == "b":
            return str(rec.response_bytes) if rec.response_bytes else None
        if key == "f":
            return _header(rec.request_headers, "referer")
        if key == "a":
            return _header(rec.request_headers, "user-agent")
        if key == "T":
            return str(int(rec.duration))
        if key == "D":
            return str(int(rec.duration * 1_000_000))
        if key == "L":
            return f"{rec.duration:.6f}"
        if key == "p":
            return f"<{os.getpid()}>"
        return None

    def _query_suffix(self) -> str:
        return f"?{self['q']}" if self._rec.query_string else ""

    def __iter__(self) -> Iterator[str]:
        return iter(ATOMS)

    def __len__(self) -> int:
        return len(ATOMS)


def format_access(fmt: str, rec: AccessRecord) -> str:
    """One access log line for `rec` in Gunicorn's %-style format, e.g. '%(h)s "%(r)s" %(s)s'."""
    return fmt % AccessAtoms(rec)


def _optional_header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    value = _header(headers, name)
    return None if value == "-" else value


def access_fields(rec: AccessRecord) -> dict[str, object]:
    """`rec` as the fields of a JSON access log line (absent values are null)."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.start_time))
        + f".{int(rec.start_time * 1000) % 1000:03d}Z",
        "client": rec.client[0] if rec.client else None,
        "client_port": rec.client[1] if rec.client else None,
        "method": _clean(rec.method),
        "path": _clean(rec.path),
        "query": _clean(rec.query_string.decode("latin-1")),
        "protocol": f"HTTP/{rec.http_version}",
        "status": rec.status,
        "bytes": rec.response_bytes,
        "duration": round(rec.duration, 6),
        "user_agent": _optional_header(rec.request_headers, "user-agent"),
        "referer": _optional_header(rec.request_headers, "referer"),
        "pid": os.getpid(),
    }


def log_access(loggers: Loggers, rec: AccessRecord) -> None:
    """Write `rec` to the access log; costs nothing when access logging is off."""
    access = loggers.access
    if access is None or not access.isEnabledFor(logging.INFO):
        return
    if loggers.access_json:
        access.info(json.dumps(access_fields(rec), ensure_ascii=False))
        return
    access.info(format_access(loggers.access_format, rec))
