"""Listening addresses as text: parsing `--bind` values and formatting bound sockets as URLs.

Pure string work; creating sockets lives in `multicorn.net.sockets`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

DEFAULT_PORT: Final = 8000

ACCEPTED_FORMS: Final = (
    "HOST:PORT (e.g. 127.0.0.1:8000), [IPV6]:PORT (e.g. [::1]:8000), HOST alone (port 8000), "
    "unix:PATH (e.g. unix:/run/app.sock) or fd://N (an inherited file descriptor)"
)

# Hostname labels per RFC 1123, plus "_" which real-world resolvers accept.
_HOSTNAME: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$"
)

BindKind: TypeAlias = Literal["tcp", "unix", "fd"]

SockName: TypeAlias = tuple[object, ...] | str | bytes


class BindError(ValueError):
    """A bind address could not be parsed; the message lists the accepted forms."""

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        self.problem = problem
        super().__init__(f"invalid bind address {text!r}: {problem}; use {ACCEPTED_FORMS}")


@dataclass(frozen=True, slots=True)
class Bind:
    """One place to listen. Only the fields for `kind` are meaningful; others keep defaults."""

    kind: BindKind
    host: str = ""  # tcp: hostname or IP literal, without IPv6 brackets
    port: int = 0  # tcp: 0 asks the OS for a free port
    path: str = ""  # unix: filesystem path of the socket
    fd: int = -1  # fd: inherited descriptor number

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"{_bracket(self.host)}:{self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not port_text.isascii():
        raise BindError(text, f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise BindError(text, f"port {port} is out of range 0-65535")
    return port


def _check_ipv6(text: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise BindError(text, f"{host!r} inside brackets is not an IPv6 address") from None


def parse_bind(text: str) -> Bind:
    """Parse HOST:PORT, [IPV6]:PORT, HOST (port 8000), unix:PATH or fd://N into a Bind.

    Raises BindError for anything else.
    """
    stripped = text.strip()
    if not stripped:
        raise BindError(text, "it is empty")
    if stripped.startswith("unix:"):
        path = stripped[len("unix:") :]
        if not path:
            raise BindError(text, "the unix socket path is missing")
        return Bind("unix", path=path)
    if stripped.startswith("fd://"):
        fd_text = stripped[len("fd://") :]
        if not fd_text.isdigit() or not fd_text.isascii():
            raise BindError(text, f"file descriptor {fd_text!r} is not a non-negative number")
        return Bind("fd", fd=int(fd_text))
    if "://" in stripped:
        raise BindError(text, "only the unix: and fd:// prefixes are understood")
    if stripped.startswith("["):
        host, sep, rest = stripped[1:].partition("]")
        if not sep:
            raise BindError(text, "the closing ']' is missing")
        _check_ipv6(text, host)
        if not rest:
            return Bind("tcp", host=host, port=DEFAULT_PORT)
        if not rest.startswith(":"):
            raise BindError(text, "expected ':PORT' after ']'")
        return Bind("tcp", host=host, port=_parse_port(text, rest[1:]))
    if stripped.count(":") > 1:
        raise BindError(text, "IPv6 addresses need brackets, e.g. [::1]:8000")
    host, sep, port_text = stripped.partition(":")
    if not host:
        raise BindError(text, "the host is missing (use 0.0.0.0 for every IPv4 interface)")
    if not _HOSTNAME.match(host):
        raise BindError(text, f"{host!r} is not a valid hostname or IP address")
    port = _parse_port(text, port_text) if sep else DEFAULT_PORT
    return Bind("tcp", host=host, port=port)


def format_url(sockname: SockName, *, kind: BindKind, scheme: str = "http") -> str:
    """Render a socket's address for humans: http://127.0.0.1:8000, http://[::1]:8000, unix:/p.

    `sockname` is what `socket.getsockname()` returns. For kind "fd" the address decides:
    an inherited TCP socket gets a URL, an inherited unix socket gets unix:PATH.
    """
    if isinstance(sockname, tuple):
        host, port = sockname[0], sockname[1]
        return f"{scheme}://{_bracket(str(host))}:{port}"
    path = sockname.decode("utf-8", "backslashreplace") if isinstance(sockname, bytes) else sockname
    if kind == "tcp":
        raise ValueError(f"a tcp socket name must be a (host, port) tuple, got {sockname!r}")
    # Linux abstract sockets start with a NUL byte; show it the way `ss` does.
    if path.startswith("\0"):
        path = "@" + path[1:]
    return f"unix:{path}"
