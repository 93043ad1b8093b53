"""The server's loggers and the access log line format.

Owns the "multicorn.error" and "multicorn.access" loggers (never the root logger), the TRACE
level, and the Gunicorn/Hypercorn-compatible access log atoms (%(h)s, %({user-agent}i)s, ...).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TextIO

from multicorn.config import ConfigError

if TYPE_CHECKING:
    from multicorn.config import Config

TRACE: Final = 5
ERROR_LOGGER: Final = "multicorn.error"
ACCESS_LOGGER: Final = "multicorn.access"

# Handlers we install carry this name so a second configure_logging() replaces, not duplicates.
_HANDLER_NAME: Final = "multicorn-managed"

_LEVELS: Final = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

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


def log_access(loggers: Loggers, rec: AccessRecord) -> None:
    """Write `rec` to the access log; costs nothing when access logging is off."""
    access = loggers.access
    if access is None or not access.isEnabledFor(logging.INFO):
        return
    access.info(format_access(loggers.access_format, rec))


def _open_handler(target: str, console: TextIO, key: str) -> logging.Handler:
    if target == "-":
        return logging.StreamHandler(console)
    try:
        return logging.FileHandler(target, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            key, f"cannot open log file {target!r}: {exc.strerror or exc}; fix the path"
        ) from exc


def _install(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
        old.close()
    handler.set_name(_HANDLER_NAME)
    logger.addHandler(handler)
    logger.setLevel(level)
    # The app's own logging setup (often on the root logger) must not re-print server lines.
    logger.propagate = False


def configure_logging(config: Config) -> Loggers:
    """Set up the error and access loggers from `config`; safe to call again to reconfigure."""
    if logging.getLevelName(TRACE) != "TRACE":
        logging.addLevelName(TRACE, "TRACE")

    error = logging.getLogger(ERROR_LOGGER)
    if config.error_logfile is None:
        # A logger with no handlers falls back to logging.lastResort; say "nowhere" explicitly.
        error_handler: logging.Handler = logging.NullHandler()
    else:
        error_handler = _open_handler(config.error_logfile, sys.stderr, "error_logfile")
    error_handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S %z",
        )
    )
    _install(error, error_handler, _LEVELS[config.log_level])

    access_logger = logging.getLogger(ACCESS_LOGGER)
    if config.access_logfile is None:
        _install(access_logger, logging.NullHandler(), logging.INFO)
        access: logging.Logger | None = None
    else:
        access_handler = _open_handler(config.access_logfile, sys.stdout, "access_logfile")
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        _install(access_logger, access_handler, logging.INFO)
        access = access_logger
    return Loggers(error=error, access=access, access_format=config.access_logformat)
