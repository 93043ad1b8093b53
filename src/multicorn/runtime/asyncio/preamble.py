"""An asyncio listener whose connections begin with a preamble (a PROXY protocol header) read
before TLS.

asyncio's own servers hand every byte they read to the protocol, and TLS cannot be started on
a transport with bytes already taken from under it. So this listener accepts the sockets
itself, reads each one's preamble by peeking (runtime/base.py `PreambleReader`), and only then
gives the socket to the loop (`connect_accepted_socket`, which does the TLS handshake).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multicorn.runtime.base import (
    ACCEPT_BATCH,
    ACCEPT_RESOURCE_ERRORS,
    PreambleReader,
    PreambleRefused,
)

if TYPE_CHECKING:
    import logging
    import socket
    from collections.abc import Callable

    from multicorn.net.binds import SockName
    from multicorn.runtime.base import Preamble, ServerTLS


class PreambleListener:
    """Accepts on one listening socket until `close()`; each connection's preamble is read in
    a task of its own, then `protocol_factory(preamble)` serves it."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[bytes], asyncio.Protocol],
        *,
        preamble: Preamble,
        tls: ServerTLS | None,
        logger: logging.Logger,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._preamble = preamble
        self._tls = tls
        self._logger = logger
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self, backlog: int) -> None:
        self._sock.listen(backlog)
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections still reading their preamble are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        for task in list(self._tasks):
            task.cancel()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peername = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in ACCEPT_RESOURCE_ERRORS:
                    self._logger.error("accept() failed: %s; retrying in 100 ms", exc)
                    self._loop.remove_reader(self._sock.fileno())
                    self._paused = self._loop.call_later(0.1, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn, peername))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        tls = self._tls
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(taken),
                conn,
                ssl=None if tls is None else tls.context,
                ssl_handshake_timeout=None if tls is None else tls.handshake_timeout,
            )
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            self._logger.debug("TLS handshake with %s failed: %s", peername, exc)
            conn.close()

    async def _read_preamble(self, conn: socket.socket, peername: SockName) -> bytes:
        reader = PreambleReader(self._preamble, conn, peername)
        deadline = self._loop.time() + self._preamble.timeout
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
