"""Opening listening (TCP, unix) and bound datagram (UDP) sockets for `Bind`s, and naming them.

Owns socket options (SO_REUSEADDR, IPV6_V6ONLY), stale unix socket cleanup, adopting
inherited descriptors, and turning OS errors into `BindFailed` messages a user can act on.
Sockets come back non-blocking (and stream sockets listening), ready for any event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import Any

from multicorn.net.binds import Bind, format_url


class BindFailed(OSError):
    """A listening socket could not be created; `bind` is what was asked for."""

    def __init__(self, bind: Bind, reason: str, *, errno_code: int | None = None) -> None:
        self.bind = bind
        self.reason = reason
        verb = "use" if bind.kind == "fd" else "bind"
        super().__init__(f"could not {verb} {bind}: {reason}")
        self.errno = errno_code


_IN_USE = "address already in use (is another server running there?)"


def _reason(exc: OSError) -> str:
    code = exc.errno
    if code == errno.EADDRINUSE:
        return _IN_USE
    if code == errno.EADDRNOTAVAIL:
        return "address not available (it does not belong to this machine)"
    if code == errno.EACCES:
        return "permission denied (ports below 1024 and some paths need privileges)"
    if code == errno.EBADF:
        return "bad file descriptor (was it passed down by the parent process?)"
    if code == errno.ENOTSOCK:
        return "the file descriptor is not a socket"
    if code == errno.ENOENT:
        return "no such file or directory (does the parent directory exist?)"
    return exc.strerror or str(exc)


def create_socket(
    bind: Bind, *, backlog: int, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """Return a listening, non-blocking socket for `bind`, or raise BindFailed.

    `reuse_port` (TCP only) sets SO_REUSEPORT: several processes then bind the same port and
    the kernel spreads new connections over them. `listen=False` only binds (TCP): a port
    held for such processes without taking a share of their connections."""
    if bind.kind == "unix":
        return _unix_socket(bind, backlog)
    if bind.kind == "fd":
        return _fd_socket(bind, backlog)
    return _tcp_socket(bind, backlog, reuse_port=reuse_port, listen=listen)


def _reuse_port(sock: socket.socket, bind: Bind) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        sock.close()
        raise BindFailed(bind, "SO_REUSEPORT is not available on this platform")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def create_datagram_socket(bind: Bind, *, reuse_port: bool = False) -> socket.socket:
    """Return a bound, non-blocking UDP socket for `bind` (HOST:PORT or an inherited UDP
    fd://N), or raise BindFailed. Port 0 asks the OS for a free port. `reuse_port` sets
    SO_REUSEPORT, for one socket per worker process on one port."""
    if bind.kind == "unix":
        raise BindFailed(
            bind, "datagram (UDP, QUIC) binds need HOST:PORT, e.g. 0.0.0.0:443, not unix:PATH"
        )
    if bind.kind == "fd":
        return _fd_datagram_socket(bind)
    family, type_, proto, sockaddr = _resolve(bind, socket.SOCK_DGRAM)
    sock = socket.socket(family, type_, proto)
    if reuse_port:
        _reuse_port(sock, bind)
    try:
        # No SO_REUSEADDR: on UDP it would let a second server bind the same port and
        # silently take a share of its datagrams, instead of failing with "in use".
        _ipv6_only(sock, family)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    return sock


def _resolve(
    bind: Bind, type_: socket.SocketKind
) -> tuple[socket.AddressFamily, socket.SocketKind, int, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=type_, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindFailed(bind, f"cannot resolve host {bind.host!r} ({exc.strerror})") from exc
    family, kind, proto, _, sockaddr = infos[0]
    return family, kind, proto, sockaddr


def _ipv6_only(sock: socket.socket, family: socket.AddressFamily) -> None:
    if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
        # "[::]" should mean IPv6 only, so a separate 0.0.0.0 bind does not collide.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def _tcp_socket(bind: Bind, backlog: int, *, reuse_port: bool, listen: bool) -> socket.socket:
    family, type_, proto, sockaddr = _resolve(bind, socket.SOCK_STREAM)
    sock = socket.socket(family, type_, proto)
    if reuse_port:
        _reuse_port(sock, bind)
    try:
        if os.name != "nt":
            # Lets a restarted server reuse the port while old connections sit in TIME_WAIT.
            # On Windows the same option would let two servers share a port, so skip it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _ipv6_only(sock, family)
        sock.bind(sockaddr)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    return sock


def _remove_stale_unix_socket(bind: Bind) -> None:
    try:
        mode = os.lstat(bind.path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    if not stat.S_ISSOCK(mode):
        raise BindFailed(
            bind,
            "a file that is not a socket is in the way; remove it or choose another path",
            errno_code=errno.EEXIST,
        )
    # Only a socket nobody answers on is stale; unlinking a live one would steal it silently.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        result = probe.connect_ex(bind.path)
    finally:
        probe.close()
    if result == errno.ENOENT:
        return  # vanished since lstat; nothing to remove
    if result in (0, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
        raise BindFailed(bind, _IN_USE, errno_code=errno.EADDRINUSE)
    if result != errno.ECONNREFUSED:
        raise BindFailed(bind, _reason(OSError(result, os.strerror(result))), errno_code=result)
    # Another process may have cleaned it up first; that is fine.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(bind.path)


def _unix_socket(bind: Bind, backlog: int) -> socket.socket:
    if not hasattr(socket, "AF_UNIX"):
        raise BindFailed(bind, "unix sockets are not supported on this platform")
    _remove_stale_unix_socket(bind)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(bind.path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    return sock


def _fd_socket(bind: Bind, backlog: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=bind.fd)
    except OSError as exc:
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    try:
        if sock.type != socket.SOCK_STREAM:
            raise BindFailed(bind, "the file descriptor is not a stream (TCP or unix) socket")
        # Harmless if the parent already listened; required if it only bound.
        sock.listen(backlog)
        sock.setblocking(False)
    except BindFailed:
        sock.detach()  # the descriptor belongs to whoever passed it; do not close it
        raise
    except OSError as exc:
        sock.detach()
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    return sock


def _fd_datagram_socket(bind: Bind) -> socket.socket:
    try:
        sock = socket.socket(fileno=bind.fd)
    except OSError as exc:
        raise BindFailed(bind, _reason(exc), errno_code=exc.errno) from exc
    if sock.type != socket.SOCK_DGRAM:
        sock.detach()  # the descriptor belongs to whoever passed it; do not close it
        raise BindFailed(bind, "the file descriptor is not a datagram (UDP) socket")
    sock.setblocking(False)
    return sock


def bound_url(sock: socket.socket, bind: Bind, *, scheme: str = "http") -> str:
    """The URL `sock` actually listens on (port 0 binds show the port the OS picked)."""
    return format_url(sock.getsockname(), kind=bind.kind, scheme=scheme)
