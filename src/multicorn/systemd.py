"""systemd integration without python-systemd: socket activation and `sd_notify`.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets starting at fd 3, and says
how many in LISTEN_FDS, for which process in LISTEN_PID, and their FileDescriptorName= values in
LISTEN_FDNAMES (colon-separated). `listen_fds` reads (and unsets) them; `activation_binds` maps
the sockets to bind settings:

- a stream socket (TCP or unix) becomes an `fd://N` entry of `bind`, which speaks TLS when a
  certificate is configured, unless its name is "insecure": then it goes to `insecure_bind`
  (cleartext next to TLS, as `--insecure-bind`);
- a datagram (UDP) socket becomes an `fd://N` entry of `quic_bind` (HTTP/3 needs a certificate).

Activated sockets replace the `bind`, `insecure_bind` and `quic_bind` settings: a unit that
passes sockets decides where the server listens.

`Notifier` sends sd_notify(3) states (READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1, STATUS=...)
as datagrams to NOTIFY_SOCKET (a path, or "@name" for an abstract socket). Sending never blocks
and never raises: systemd not listening must not hurt the server.

Everything here takes the environment and the pid as arguments; nothing happens at import.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ActivatedSocket",
    "Notifier",
    "activation_binds",
    "listen_fds",
    "watchdog_interval",
]

# sd_listen_fds(3): the first passed descriptor is always 3 (SD_LISTEN_FDS_START).
LISTEN_FDS_START: Final = 3
INSECURE_NAME: Final = "insecure"
_LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    """One socket systemd passed: its descriptor, FileDescriptorName= and kind."""

    fd: int
    name: str
    kind: Literal["stream", "datagram"]


class ActivationError(ValueError):
    """The LISTEN_* variables or the sockets they describe cannot be served."""


def _socket_kind(fd: int) -> Literal["stream", "datagram"]:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(
            f"LISTEN_FDS names descriptor {fd}, which is not an open socket ({exc.strerror or exc})"
            "; check the unit's Sockets= and ListenStream=/ListenDatagram= lines"
        ) from exc
    try:
        kind = sock.type
    finally:
        sock.detach()  # the descriptor stays ours to serve; only its type was wanted
    if kind == socket.SOCK_DGRAM:
        return "datagram"
    if kind == socket.SOCK_STREAM:
        return "stream"
    raise ActivationError(f"activated descriptor {fd} is neither a stream nor a datagram socket")


def listen_fds(environ: MutableMapping[str, str], pid: int) -> list[ActivatedSocket]:
    """The sockets systemd passed to process `pid`, or [] when none were.

    Like sd_listen_fds(unset_environment=1), the LISTEN_* variables are removed from `environ`
    (whether or not they were meant for `pid`) so child processes do not take them for theirs.
    Raises ActivationError when they are malformed or name a descriptor that is not a socket.
    """
    values = {name: environ.pop(name, None) for name in _LISTEN_VARIABLES}
    listen_pid, listen_count = values["LISTEN_PID"], values["LISTEN_FDS"]
    if listen_pid is None or listen_count is None:
        return []
    if not listen_pid.strip().isdigit() or int(listen_pid) != pid:
        return []  # meant for another process (the parent we were started by)
    if not listen_count.strip().isdigit():
        raise ActivationError(f"LISTEN_FDS={listen_count!r} is not a number of descriptors")
    count = int(listen_count)
    names_text = values["LISTEN_FDNAMES"]
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise ActivationError(
            f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS={count}; "
            "they must match (systemd sets both)"
        )
    return [
        ActivatedSocket(
            fd=fd,
            name=names[index] if names else "unknown",
            kind=_socket_kind(fd),
        )
        for index, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    ]


def activation_binds(sockets: list[ActivatedSocket], *, tls: bool) -> dict[str, list[str]]:
    """The `bind`, `insecure_bind` and `quic_bind` settings that serve `sockets` (see the
    module docstring for the mapping). `tls` says whether a certificate is configured.

    Raises ActivationError for a datagram socket without TLS (HTTP/3 needs a certificate) and
    when no stream socket is left to serve HTTP/1.1 and HTTP/2 on.
    """
    binds: dict[str, list[str]] = {"bind": [], "insecure_bind": [], "quic_bind": []}
    for sock in sockets:
        text = f"fd://{sock.fd}"
        if sock.kind == "datagram":
            if not tls:
                raise ActivationError(
                    f"activated UDP socket {text} ({sock.name}) is for HTTP/3, which needs a "
                    "certificate: set certfile and keyfile, or remove the ListenDatagram= line"
                )
            binds["quic_bind"].append(text)
        elif tls and sock.name == INSECURE_NAME:
            binds["insecure_bind"].append(text)
        else:
            binds["bind"].append(text)
    if not binds["bind"]:
        if not binds["insecure_bind"]:
            raise ActivationError(
                "systemd passed no stream (TCP or unix) socket; add a ListenStream= line"
            )
        # Only cleartext sockets: they are the server's binds; TLS has nowhere to listen.
        binds["bind"], binds["insecure_bind"] = binds["insecure_bind"], []
    return binds


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when the watchdog is off or meant for another process."""
    usec_text = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and (not watchdog_pid.isdigit() or int(watchdog_pid) != pid):
        return None
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    return int(usec_text) / 1_000_000 / 2


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify states to NOTIFY_SOCKET; does nothing when it is unset.

    ```python
    notifier = Notifier.from_environ(os.environ)
    notifier.ready("Serving on http://127.0.0.1:8000")
    ```
    """

    __slots__ = ("_address", "_logger")

    def __init__(self, address: str | bytes | None, logger: logging.Logger | None = None) -> None:
        self._address = address
        self._logger = logger if logger is not None else logging.getLogger("multicorn.error")

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], logger: logging.Logger | None = None
    ) -> Notifier:
        return cls(_address(environ.get("NOTIFY_SOCKET", "")), logger)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        """Send `states` ("READY=1", ...) as one datagram; True if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(states).encode("utf-8", "replace")
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self._logger.debug("sd_notify: no socket (%s)", exc)
            return False
        try:
            sock.setblocking(False)
            sock.sendto(message, self._address)
        except OSError as exc:
            self._logger.debug("sd_notify to %r failed: %s", self._address, exc)
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        return True

    def ready(self, status: str | None = None) -> bool:
        """The server accepts connections (also the end of a reload)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload starts; systemd expects READY=1 when it is over."""
        # MONOTONIC_USEC (systemd 253+) ties the notification to this reload request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """The event loop is alive."""
        return self.notify("WATCHDOG=1")


def _status(status: str | None) -> tuple[str, ...]:
    # One datagram, one line per state: a newline inside STATUS would start a new state.
    return () if status is None else (f"STATUS={status.replace(chr(10), ' ')}",)
