"""A TCP (or unix) connection on trio: a reader, a writer and a timer under one cancel scope.

The handler's writes are synchronous: they append to a queue and wake the writer task, which
takes the whole queue into one `send_all`. The handler's `pause_writing` is called when the queue
(what has not yet been handed to the socket) passes the high-water mark, and `resume_writing`
once a send has completed and the queue is back under it: paused means the kernel is not taking
our bytes as fast as they come, as with asyncio's transport. Counting the bytes of a send still in
progress would pause on every burst, since `send_all` always yields, even when the kernel takes
everything at once.

Two scopes, two lifetimes. The I/O scope holds the reader, writer and timer: it ends when the
socket is closed, broken or aborted, and then the handler hears `connection_lost()`. The
connection's nursery, around it, also holds the application tasks the handler spawned: they may
outlive the socket (an app finishing its cleanup after a disconnect) and end on their own or
when the handler cancels them; trio waits for them before the connection's task returns.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import trio

from multicorn.runtime.base import (
    LINGER_BYTES,
    LINGER_IDLE,
    LINGER_TIME,
    ConnectionDetails,
    PreambleReader,
    PreambleRefused,
)
from multicorn.runtime.trio.runtime import TrioRuntime, TrioWaiter

if TYPE_CHECKING:
    import logging
    import socket

    from multicorn.net.binds import SockName
    from multicorn.runtime.base import Handler, HandlerFactory, Preamble, ServerTLS

_HIGH_WATER = 64 * 1024
_READ_SIZE = 64 * 1024

# What a stream raises once its socket is closed, reset or otherwise unusable.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TrioConnection:
    """The I/O tasks of one connection, and the handler's `Transport` for it."""

    closes_by_itself = False

    def __init__(
        self, stream: trio.abc.Stream, sock: trio.socket.SocketType, runtime: TrioRuntime
    ) -> None:
        self._stream = stream
        self._sock = sock  # under `stream` (and under TLS): what abort() closes
        self._runtime = runtime
        self._queue: list[bytes] = []
        self._queued = 0
        self._paused = False
        self._has_output = TrioWaiter()
        self._can_read = TrioWaiter()
        self._can_read.set()
        self._closing = False
        self._lost = False
        self._peer_done = False  # the peer half-closed: nothing left to linger for
        self._lingered = TrioWaiter()
        # Only a plain socket stream can half-close (TLS has no way to end one direction).
        self._half_closable = stream if isinstance(stream, trio.SocketStream) else None
        self._lingers = self._half_closable is not None
        self._receiving = trio.CancelScope()
        # Created up front so an abort() from the handler factory is not missed.
        self._io = trio.CancelScope()
        self._timer_scope = trio.CancelScope()
        self._deadline = math.inf
        self._handler: Handler

    async def run(self, factory: HandlerFactory, details: ConnectionDetails) -> None:
        self._handler = factory(self, self._runtime, details)
        try:
            with self._io:
                async with trio.open_nursery() as io:
                    io.start_soon(self._writer)
                    io.start_soon(self._timer)
                    await self._reader()
        finally:
            # Also when the session's end cancels us: the handler always hears, exactly once.
            self._lost = True
            self._handler.connection_lost()

    async def _reader(self) -> None:
        while not self._closing:
            if not self._can_read.is_set():
                await self._can_read.wait()
                continue
            data: bytes | bytearray = b""
            # close() cancels a receive in progress, so lingering starts with its idle bound.
            with trio.CancelScope() as self._receiving:
                try:
                    data = await self._stream.receive_some(_READ_SIZE)
                except _BROKEN:
                    self._io.cancel()
                    return
            if self._closing:
                break  # close() ends the handler's input at once, as asyncio's does
            if not data:
                self._peer_done = True  # first: the handler may close() from eof_received()
                self._handler.eof_received()
                return  # half-closed: the writer keeps going until the handler closes
            self._handler.data_received(bytes(data))
        await self._linger()

    async def _linger(self) -> None:
        """After close(), read and discard what the peer still sends (see Transport.close)
        until it closes too or a bound is reached; then the writer may close the socket."""
        try:
            if not self._lingers:
                return
            discarded = 0
            with trio.move_on_after(LINGER_TIME):
                while discarded <= LINGER_BYTES:
                    with trio.move_on_after(LINGER_IDLE) as idle:
                        data = await self._stream.receive_some(_READ_SIZE)
                    if idle.cancelled_caught or not data:
                        return
                    discarded += len(data)
        except _BROKEN:
            return
        finally:
            self._lingered.set()

    async def _writer(self) -> None:
        while True:
            await self._has_output.wait()
            self._has_output.clear()
            if self._queue:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                try:
                    await self._stream.send_all(data)
                except _BROKEN:
                    self._io.cancel()
                    return
                if self._paused and self._queued <= _HIGH_WATER:
                    self._paused = False
                    self._handler.resume_writing()
            if self._closing and not self._queue:
                if self._half_closable is not None and self._lingers:
                    # Half-close, then let the reader discard the peer's input for a while.
                    try:
                        await self._half_closable.send_eof()
                    except _BROKEN:
                        pass
                    else:
                        # The reader's own bounds end it; this one only guards against a bug.
                        with trio.move_on_after(LINGER_TIME + LINGER_IDLE):
                            await self._lingered.wait()
                with contextlib.suppress(*_BROKEN):  # gone already: closed is what we wanted
                    await self._stream.aclose()
                self._io.cancel()  # the reader and the timer end with the socket
                return

    async def _timer(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline) as self._timer_scope:
                await trio.sleep_forever()
            # Only our own scope's deadline gets here: the I/O scope's cancel propagates.
            if trio.current_time() >= self._deadline:
                self._deadline = math.inf
                self._handler.deadline_reached()

    # ---- the Transport interface, for the handler -----------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        self._queue.append(data)
        self._queued += len(data)
        self._has_output.set()
        if not self._paused and self._queued > _HIGH_WATER:
            self._paused = True
            self._handler.pause_writing()

    def close(self) -> None:
        if self._peer_done:
            self._lingers = False
        self._closing = True
        self._receiving.cancel()
        self._has_output.set()
        self._can_read.set()

    def abort(self) -> None:
        # Drop the socket, stop our own I/O tasks, and nothing else: the application tasks live
        # in the connection's nursery, outside the I/O scope, and the handler decides their fate.
        self._closing = True
        self._queue.clear()
        self._io.cancel()
        # trio's close() tells tasks waiting on the fd first, so none of them is left hanging.
        self._sock.close()

    def set_reading(self, enabled: bool) -> None:
        if enabled:
            self._can_read.set()
        else:
            self._can_read.clear()

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = math.inf if deadline is None else deadline
        self._timer_scope.deadline = self._deadline


async def read_preamble(
    sock: socket.socket,
    preamble: Preamble,
    peername: SockName | None,
    pending: set[trio.CancelScope],
) -> bytes:
    """The connection's preamble (see runtime/base.py); raises PreambleRefused when it was
    refused, did not come in time, the peer left, or the listener stopped (it cancels the
    scopes in `pending`). `sock` is the stdlib socket under the connection's trio socket: the
    reader peeks at it without waiting (trio's own methods always yield)."""
    reader = PreambleReader(preamble, sock, peername)
    with trio.CancelScope(deadline=trio.current_time() + preamble.timeout) as scope:
        pending.add(scope)
        try:
            while (step := reader.step()) != PreambleReader.DONE:
                if step == PreambleReader.WAIT:
                    await trio.lowlevel.wait_readable(sock)
                else:
                    await trio.sleep(PreambleReader.POLL_INTERVAL)
            return reader.result
        finally:
            pending.discard(scope)
    raise PreambleRefused("no preamble in time, or the listener stopped")


async def serve_connection(
    stream: trio.SocketStream,
    factory: HandlerFactory,
    logger: logging.Logger,
    tls: ServerTLS | None,
    preamble: tuple[Preamble, socket.socket, set[trio.CancelScope]] | None = None,
) -> None:
    """Run one accepted connection to its end: its preamble (read from the stdlib socket
    under `stream`; the set holds the scopes stop_listeners() cancels), the TLS handshake, then
    the handler's I/O and the tasks it spawned. An exception costs this connection only, never
    the server."""
    try:
        peername = stream.socket.getpeername()
        sockname = stream.socket.getsockname()
    except OSError:
        return  # already gone
    taken = b""
    if preamble is not None:
        try:
            taken = await read_preamble(preamble[1], preamble[0], peername, preamble[2])
        except PreambleRefused as exc:
            logger.debug("connection from %s closed: %s", peername, exc)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
    conn_stream: trio.abc.Stream = stream
    ssl_stream: trio.SSLStream[trio.SocketStream] | None = None
    if tls is not None:
        ssl_stream = trio.SSLStream(stream, tls.context, server_side=True)
        with trio.move_on_after(tls.handshake_timeout) as handshake:
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
    try:
        details = ConnectionDetails(
            peername=peername,
            sockname=sockname,
            # The SSLObject itself: trio forwards only some of its methods (not 3.13's chains).
            tls=None if tls is None or ssl_stream is None else tls.describe(ssl_stream._ssl_object),
            preamble=taken,
        )
        async with trio.open_nursery() as nursery:
            connection = TrioConnection(conn_stream, stream.socket, TrioRuntime(nursery, logger))
            await connection.run(factory, details)
    except Exception:
        # A bug here must cost one connection, never the server's nursery and every other one.
        logger.exception("connection handler failed; connection dropped")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
