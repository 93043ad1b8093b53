"""The typed interface between a runtime backend and everything above it.

app/ (the ASGI layer) reaches a runtime only through `Runtime`, `Transport` and `Waiter`;
serve.py drives a whole backend through `Backend`. Each backend (asyncio and uvloop, trio)
satisfies these `typing.Protocol` classes, and tests/runtime/ is the contract suite that checks
it behaves as documented here. Two kinds of endpoint exist side by side: stream connections
(TCP or unix, optionally TLS) driven through `Transport`/`Handler`, and datagram endpoints (UDP,
for QUIC) driven through `DatagramTransport`/`DatagramHandler`.

A backend only moves bytes and keeps time: it never interprets what it carries. The one thing it
learns about a connection beyond its addresses is the TLS handshake's outcome, and it hands that
over as a neutral `TLSInfo` (made by the `describe` function serve.py gives it), so nothing above
the runtime ever sees an `ssl.SSLObject`. Waiters have a synchronous `set()` so protocol
callbacks can wake an application task without being async themselves.

The dataclasses at the end are plain records, and `accept_pending` and `PreambleReader` the
logic every backend shares; everything else here is a Protocol, no code.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    import logging
    import ssl
    from contextlib import AbstractAsyncContextManager

    from multicorn.net.binds import SockName
    from multicorn.net.tls import TLSInfo

# Accepting (`accept_pending`): every pending connection per wake-up, at most this many (one
# accept per turn leaves a burst of new clients queued behind busy ones); out of descriptors or
# memory, the backend logs and backs off instead of spinning.
ACCEPT_BATCH = 1024
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACK_OFF_SECONDS = 0.1
ACCEPT_DRAINED, ACCEPT_BACK_OFF, ACCEPT_CLOSED = 0, 1, 2
# What accept() says of a listening socket closed under the loop (the listener stopping).
_ACCEPT_CLOSED_ERRORS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})

# Lingering close bounds (Transport.close): the same on every backend.
LINGER_TIME = 2.0  # seconds in all
LINGER_IDLE = 0.5  # seconds without input from the peer
LINGER_BYTES = 16 * 1024 * 1024  # discarded input

# A datagram peer as the socket module reports it: (host, port) for IPv4, (host, port, flowinfo,
# scope_id) for IPv6. `sendto` takes back exactly what `datagram_received` was given.
DatagramAddress: TypeAlias = tuple[Any, ...]

_T = TypeVar("_T")


class TaskHandle(Protocol):
    """A task started by `Runtime.spawn`; `cancel()` is the only way its lifetime is cut short."""

    def cancel(self) -> object: ...


class TimerHandle(Protocol):
    """A callback scheduled by `Runtime.call_at`."""

    def cancel(self) -> None:
        """Make sure the callback does not run (a no-op once it has run)."""


class Waiter(Protocol):
    """A resettable event."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


class Runtime(Protocol):
    """Clock, tasks, callbacks and waiters: what app/ (and a datagram handler) may use."""

    def now(self) -> float:
        """Monotonic seconds, the clock every deadline is measured on."""
        ...

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> TaskHandle:
        """Start `fn(*args)` as a task. It runs until it returns or is cancelled through the
        handle (or the backend's session ends); closing or aborting a connection never ends it."""
        ...

    def waiter(self) -> Waiter: ...

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run `fn` later in this loop, once the tasks ready now have run (to batch their
        writes into one). Never runs `fn` before returning."""

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        """Run `fn` once at `when` (the `now()` clock); a datagram protocol keeps one per
        connection. An exception from `fn` is logged and does not stop the runtime."""
        ...

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        """Wait until `waiter` is set or `timeout` passes; True if it was set."""
        ...

    async def run_sync(self, fn: Callable[[], _T]) -> _T:
        """Run `fn()` in a worker thread and return what it returns (or raise what it raises).

        Threads are reused and never keep the process from exiting. The runtime sets no bound
        on how many run at once: the caller does. Cancelling the waiting task abandons the call:
        the thread runs on to the end of `fn`, and its outcome is dropped."""
        ...

    def call_from_thread(self, fn: Callable[[], object]) -> None:
        """From another thread: run `fn()` in this runtime's loop soon, without waiting for it
        (what it raises is logged, as for `call_soon`). Calls made from one thread run in the
        order they were made. Raises RuntimeError once the loop has ended."""


class Transport(Protocol):
    """What a connection handler needs from the backend's socket for one stream connection."""

    # True when close() completes without any task of ours (asyncio's transports flush and
    # close inside the loop); False when the backend's own writer must still run (trio).
    @property
    def closes_by_itself(self) -> bool: ...

    def write(self, data: bytes) -> None:
        """Queue bytes; never blocks (above the high-water mark the backend calls the handler's
        `pause_writing`, and `resume_writing` once the buffer has drained below it)."""

    def close(self) -> None:
        """Close after everything written so far has been sent (TLS: with close_notify).

        The handler hears no more input (`data_received`, `eof_received`) and writes nothing
        after close() or abort(). Over TCP and unix sockets the backend lingers (RFC 9112
        9.6): it half-closes once the output is sent, then reads and discards what the peer
        still sends until the peer closes too, or `LINGER_IDLE` passes without input, or
        `LINGER_TIME` in all, or `LINGER_BYTES`; only then does the socket go, so that the
        peer's TCP stack does not answer its unread bytes with a reset that could destroy the
        response before the peer reads it."""

    def abort(self) -> None:
        """Drop the socket now, discarding unsent data; nothing else. Tasks spawned for the
        connection keep running: a handler that wants them gone cancels their `TaskHandle`s.
        The handler's `connection_lost()` follows, once, later in the loop."""

    def set_reading(self, enabled: bool) -> None:
        """Stop (False) or resume (True) calling `data_received`; the kernel buffers meanwhile."""

    def set_deadline(self, deadline: float | None) -> None:
        """Call the handler's `deadline_reached()` once at `deadline` (runtime clock),
        replacing any earlier deadline; None disarms."""


class Handler(Protocol):
    """The runtime-neutral stream connection handler, as a backend drives it (app.connection)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None:
        """The peer shut down its sending side; the transport stays writable until closed."""

    def deadline_reached(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

    def connection_lost(self) -> None:
        """The socket is gone (closed, aborted or broken); called exactly once."""


class DatagramTransport(Protocol):
    """One bound datagram (UDP) socket, shared by every peer that sends to it."""

    def sendto(self, data: bytes, addr: DatagramAddress) -> None:
        """Send one datagram; never blocks. If the kernel has no room it may be dropped, as
        the network may drop it (QUIC retransmits)."""

    def close(self) -> None:
        """Close the socket; the handler's `connection_lost()` follows, once."""


class DatagramHandler(Protocol):
    """What a backend drives for one datagram endpoint (the QUIC endpoint, later)."""

    def datagram_received(self, data: bytes, addr: DatagramAddress) -> None: ...

    def batch_done(self) -> None:
        """Every datagram the socket had ready was delivered (a batch of one or more): the
        moment to send what they called for, once for all of them."""

    def connection_lost(self) -> None:
        """The endpoint was closed (by `close()`, `close_datagram_endpoints()` or the
        session's end)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionDetails:
    """What a backend knows of a stream connection when it hands it to the handler factory.

    `peername` and `sockname` are what the socket reports (a (host, port, ...) tuple for TCP, a
    path for unix sockets); `tls` is None in cleartext; `preamble` holds the bytes a listener's
    `Preamble` took before anything else (b"" without one).
    """

    peername: SockName | None
    sockname: SockName | None
    tls: TLSInfo | None
    preamble: bytes = b""


class PreambleRefused(Exception):
    """A `Preamble.measure` verdict: the connection is closed without serving it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Preamble:
    """Bytes a listener reads from each connection before anything else, TLS included: a
    PROXY protocol header, which a load balancer writes ahead of the client's first byte.

    `measure(peername, first_bytes)` says how many of the connection's first bytes are the
    preamble (0: none), None while it cannot tell yet, or raises PreambleRefused. A backend
    peeks at the socket (nothing is read that the connection needs) until it can tell, then
    reads exactly that many bytes, within `timeout` seconds; only `max_size` bytes are ever
    looked at.
    """

    measure: Callable[[SockName | None, bytes], int | None]
    max_size: int
    timeout: float


def accept_pending(
    sock: socket.socket, logger: logging.Logger
) -> tuple[list[tuple[socket.socket, SockName]], int]:
    """The connections waiting on the non-blocking listening `sock` (at most `ACCEPT_BATCH`),
    each made non-blocking, and what the backend does next: ACCEPT_DRAINED, wait until the
    socket is readable again; ACCEPT_BACK_OFF, first wait `ACCEPT_BACK_OFF_SECONDS` (out of
    descriptors or memory: logged here); ACCEPT_CLOSED, stop (the socket was closed)."""
    accepted: list[tuple[socket.socket, SockName]] = []
    for _ in range(ACCEPT_BATCH):
        try:
            conn, peername = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRORS:
                logger.error("accept() failed: %s; retrying in 100 ms", exc)
                return accepted, ACCEPT_BACK_OFF
            if exc.errno in _ACCEPT_CLOSED_ERRORS:
                return accepted, ACCEPT_CLOSED
            # A connection that failed while queued (ECONNABORTED, or a network error Linux
            # reports from accept()): it is gone, the listener is not; the next wake-up goes on.
            logger.debug("accept() failed: %s", exc)
            break
        conn.setblocking(False)
        accepted.append((conn, peername))
    return accepted, ACCEPT_DRAINED


class PreambleReader:
    """The backend-neutral part of reading a `Preamble` from a non-blocking socket: a backend
    calls `step()` until it returns DONE, waiting for the socket to be readable after WAIT and
    sleeping POLL_INTERVAL after POLL (the peer sent part of what decides, and peeking again at
    the same bytes would spin), all within the preamble's timeout."""

    DONE, WAIT, POLL = 0, 1, 2
    POLL_INTERVAL = 0.005

    def __init__(self, preamble: Preamble, sock: socket.socket, peername: SockName | None) -> None:
        self._preamble = preamble
        self._sock = sock
        self._peer = peername
        self.result = b""

    def step(self) -> int:
        try:
            peeked = self._sock.recv(self._preamble.max_size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return self.WAIT
        except OSError as exc:
            raise PreambleRefused(f"connection failed before its preamble: {exc}") from None
        if not peeked:
            raise PreambleRefused("connection closed before its preamble ended")
        size = self._preamble.measure(self._peer, peeked)
        if size is None:
            if len(peeked) >= self._preamble.max_size:
                raise PreambleRefused("preamble longer than its limit")
            return self.POLL
        if size:
            # Peeked already, so this many are in the kernel's buffer: one recv takes them.
            self.result = self._sock.recv(size)
        return self.DONE


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLS:
    """TLS for one stream listener: the context, the handshake deadline, and the function that
    describes an established connection (the only place an `ssl.SSLObject` is read)."""

    context: ssl.SSLContext
    handshake_timeout: float
    describe: Callable[[ssl.SSLObject], TLSInfo]


# Called by a backend for each accepted connection, after the TLS handshake if there is one.
HandlerFactory: TypeAlias = Callable[[Transport, Runtime, ConnectionDetails], Handler]

# Called by a backend once for each datagram endpoint, when it starts.
DatagramHandlerFactory: TypeAlias = Callable[[DatagramTransport, Runtime], DatagramHandler]


class Backend(Protocol):
    """One runtime's listeners, signals and task primitives, as serve.py drives them.

    Everything happens inside `session()`. When it ends, whatever is still open is closed
    (listeners, datagram endpoints, connections: their handlers hear `connection_lost()`) and
    every task spawned in it is cancelled; serve.py drains connections gracefully before that.
    """

    @property
    def runtime(self) -> Runtime:
        """The runtime for server-wide work (lifespan, the registry); valid inside `session()`."""
        ...

    def session(self) -> AbstractAsyncContextManager[None]: ...

    async def start_listener(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        *,
        backlog: int,
        tls: ServerTLS | None,
        preamble: Preamble | None = None,
    ) -> None:
        """Accept stream connections on the listening `sock` until `stop_listeners()`; with a
        `preamble`, read it from each connection first (before TLS)."""

    async def start_datagram_endpoint(
        self, sock: socket.socket, factory: DatagramHandlerFactory
    ) -> None:
        """Deliver the datagrams arriving on the bound `sock` to `factory`'s handler until
        `close_datagram_endpoints()` or the session's end."""

    def stop_listeners(self) -> None:
        """Stop accepting stream connections; open connections stay. Datagram endpoints stay
        too: a QUIC connection lives on its endpoint's socket, so closing it would cut every
        connection mid-drain (the endpoint's handler refuses new connections itself)."""

    def close_datagram_endpoints(self) -> None:
        """Close every datagram endpoint (after the graceful drain); handlers hear
        `connection_lost()`."""

    def catch_signals(
        self, on_signal: Callable[[], object], on_hangup: Callable[[], object] | None = None
    ) -> None:
        """Until `release_signals()` or the session's end, SIGINT and SIGTERM call `on_signal()`
        (from the event loop, not inside the signal handler) instead of the process's handlers,
        even handlers that ignore them; with `on_hangup`, SIGHUP calls it (what a hangup means,
        a TLS reload, is the caller's business). Main thread only: elsewhere this does
        nothing."""

    def release_signals(self) -> None:
        """Give SIGINT, SIGTERM (and SIGHUP) back to the process's handlers (idempotent)."""
