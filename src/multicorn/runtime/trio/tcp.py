"""A TCP (or Unix) connection on trio: a reader, a writer and a timer in one nursery.

The handler's writes are synchronous (they append to a buffer and wake the writer task); the
handler's `pause_writing` is called when that buffer passes the high-water mark, exactly as
asyncio's transport would. Application tasks run in the same nursery, so a connection's scope
owns everything it started.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from multicorn.runtime.trio.runtime import TrioRuntime, TrioWaiter

if TYPE_CHECKING:
    import logging
    import ssl

    from multicorn.runtime.base import Handler, HandlerFactory

_HIGH_WATER = 64 * 1024
_READ_SIZE = 64 * 1024


class TrioConnection:
    closes_by_itself = False

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._nursery = nursery
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._has_output = TrioWaiter()
        self._can_read = TrioWaiter()
        self._can_read.set()
        self._closing = False
        self._lost = False
        self._timer_scope = trio.CancelScope()
        self._deadline = math.inf
        self._handler: Handler

    async def run(
        self, factory: HandlerFactory, peername: object, sockname: object, ssl_object: object
    ) -> None:
        self._handler = factory(self, TrioRuntime(self._nursery), peername, sockname, ssl_object)
        self._nursery.start_soon(self._writer)
        self._nursery.start_soon(self._timer)
        await self._reader()

    async def _reader(self) -> None:
        while not self._lost and not self._closing:
            if not self._can_read.is_set():
                await self._can_read.wait()
                continue
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._connection_lost()
                return
            if not data:
                self._handler.eof_received()
                return  # half-closed: the writer keeps going until the handler closes
            self._handler.data_received(data)  # type: ignore[arg-type]  # bytes at runtime

    async def _writer(self) -> None:
        while True:
            await self._has_output.wait()
            self._has_output.clear()
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._connection_lost()
                    return
                self._pending_size -= len(data)
                if self._pending_size <= _HIGH_WATER:
                    self._handler.resume_writing()
            if self._closing and not self._pending:
                await self._stream.aclose()
                self._connection_lost()
                return

    async def _timer(self) -> None:
        while not self._lost:
            with trio.CancelScope(deadline=self._deadline) as self._timer_scope:
                await trio.sleep_forever()
            if self._lost:
                return
            if trio.current_time() >= self._deadline:
                self._deadline = math.inf
                self._handler.deadline_reached()

    def _connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._timer_scope.cancel()
        self._can_read.set()
        self._handler.connection_lost()

    # ---- the Transport interface, for the handler -----------------------------------------

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        self._has_output.set()
        if self._pending_size > _HIGH_WATER:
            self._handler.pause_writing()

    def close(self) -> None:
        self._closing = True
        self._has_output.set()
        self._can_read.set()

    def abort(self) -> None:
        self._closing = True
        self._nursery.cancel_scope.cancel()
        self._connection_lost()

    def set_reading(self, enabled: bool) -> None:
        if enabled:
            self._can_read.set()
        else:
            self._can_read.clear()

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = math.inf if deadline is None else deadline
        self._timer_scope.deadline = self._deadline


async def serve_connection(
    stream: trio.SocketStream,
    factory: HandlerFactory,
    logger: logging.Logger,
    tls: tuple[ssl.SSLContext, float] | None,
) -> None:
    try:
        peername = stream.socket.getpeername()
        sockname = stream.socket.getsockname()
    except OSError:
        return  # already gone
    conn_stream: trio.abc.Stream = stream
    ssl_object = None
    if tls is not None:
        ssl_stream = trio.SSLStream(stream, tls[0], server_side=True)
        with trio.move_on_after(tls[1]) as handshake:
            try:
                await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.debug("TLS handshake with %s failed: %s", peername, exc.__cause__ or exc)
                await stream.aclose()
                return
        if handshake.cancelled_caught:
            logger.debug("TLS handshake with %s timed out", peername)
            await stream.aclose()
            return
        conn_stream = ssl_stream
        # The SSLObject itself: trio forwards only some of its methods (not the 3.13 chains).
        ssl_object = getattr(ssl_stream, "_ssl_object", None)
    try:
        async with trio.open_nursery() as nursery:
            await TrioConnection(conn_stream, nursery).run(factory, peername, sockname, ssl_object)
    except Exception:
        # A bug here must cost one connection, never the server's nursery and every other one.
        logger.exception("connection handler failed; connection dropped")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
