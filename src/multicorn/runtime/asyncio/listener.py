"""asyncio's listener: accepts on one listening socket and gives each connection to the loop.

It accepts every pending connection per wake-up (runtime/base.py `accept_pending`). uvloop's
own servers take one per loop turn (libuv accepts once per poll), so under load a burst of new
clients waits behind the busy ones for whole seconds, as with trio's `SocketListener`. One
listener on every asyncio loop keeps the behaviour the same on each.

A listener with a preamble (a PROXY protocol header, read before TLS) reads each connection's
preamble by peeking (runtime/base.py `PreambleReader`) before giving the socket to the loop:
asyncio's servers hand every byte they read to the protocol, and TLS cannot be started on a
transport with bytes already taken from under it. `connect_accepted_socket` does the TLS
handshake either way.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multicorn.runtime.base import (
    ACCEPT_BACK_OFF,
    ACCEPT_BACK_OFF_SECONDS,
    PreambleReader,
    PreambleRefused,
    accept_pending,
)

if TYPE_CHECKING:
    import logging
    import socket
    from collections.abc import Callable

    from multicorn.net.binds import SockName
    from multicorn.runtime.base import Preamble, ServerTLS


class Listener:
    """Accepts on one listening socket until `close()`; `protocol_factory(preamble)` serves
    each connection once the loop has it (after its preamble, if the listener has one, and its
    TLS handshake), each in a short task of its own."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[bytes], asyncio.Protocol],
        *,
        preamble: Preamble | None,
        tls: ServerTLS | None,
        logger: logging.Logger,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._preamble = preamble
        self._tls = tls
        self._logger = logger
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()  # until the loop has the connection
        self._reading: set[asyncio.Task[None]] = set()  # the ones still reading a preamble
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self, backlog: int) -> None:
        self._sock.listen(backlog)
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting. Connections still reading their preamble are dropped (not yet
        connections: they go with their listener); accepted ones, in their TLS handshake
        included, go on to be served and drained like any other."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        for task in list(self._reading):
            task.cancel()

    def abort(self) -> None:
        """The session's end: drop the connections the loop does not have yet (a handshake
        still under way)."""
        self.close()
        for task in list(self._tasks):
            task.cancel()

    def _accept(self) -> None:
        accepted, then = accept_pending(self._sock, self._logger)
        for conn, peername in accepted:
            if self._preamble is None:
                task = self._loop.create_task(self._connect(conn, peername, b""))
            else:
                task = self._loop.create_task(self._serve(conn, peername))
                self._reading.add(task)
            self._tasks.add(task)
            task.add_done_callback(self._forget)
        if then == ACCEPT_BACK_OFF:
            self._loop.remove_reader(self._sock.fileno())
            self._paused = self._loop.call_later(ACCEPT_BACK_OFF_SECONDS, self._resume)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._reading.discard(task)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket, peername: SockName) -> None:
        try:
            taken = await self._read_preamble(conn, peername)
        except PreambleRefused as exc:
            self._logger.debug("connection from %s closed: %s", peername, exc)
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        task = asyncio.current_task()
        assert task is not None
        self._reading.discard(task)  # a connection now: close() leaves it be
        await self._connect(conn, peername, taken)

    async def _connect(self, conn: socket.socket, peername: SockName, taken: bytes) -> None:
        tls = self._tls
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(taken),
                conn,
                ssl=None if tls is None else tls.context,
                ssl_handshake_timeout=None if tls is None else tls.handshake_timeout,
            )
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            if tls is None:
                self._logger.debug(
                    "connection from %s lost before it was served: %s", peername, exc
                )
            else:
                self._logger.debug("TLS handshake with %s failed: %s", peername, exc)
            conn.close()
        except Exception:
            # Ours (the protocol factory, say): it costs this connection, not the listener, and
            # is logged here rather than as a task exception nobody retrieves.
            self._logger.exception("Exception while taking a connection from %s", peername)
            conn.close()

    async def _read_preamble(self, conn: socket.socket, peername: SockName) -> bytes:
        preamble = self._preamble
        assert preamble is not None
        reader = PreambleReader(preamble, conn, peername)
        deadline = self._loop.time() + preamble.timeout
        while (step := reader.step()) != PreambleReader.DONE:
            left = deadline - self._loop.time()
            if left <= 0:
                raise PreambleRefused("no preamble in time")
            if step == PreambleReader.WAIT:
                await self._readable(conn, left)
            else:
                await asyncio.sleep(min(PreambleReader.POLL_INTERVAL, left))
        return reader.result

    async def _readable(self, conn: socket.socket, timeout: float) -> None:
        """Wait until `conn` has input, or `timeout` seconds."""
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = conn.fileno()
        self._loop.add_reader(fd, wake)
        timer = self._loop.call_later(timeout, wake)
        try:
            await ready
        finally:
            timer.cancel()
            self._loop.remove_reader(fd)
