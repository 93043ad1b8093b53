"""A TCP (or unix) connection on trio: one task that reads, keeps the deadline and closes, and a
writer task only while output waits for the socket.

Memory is what decides the shape: an idle keep-alive connection is one task (this one, parked in
a read under a cancel scope whose deadline is the handler's timer) and nothing else. Writes are
synchronous for the handler. In cleartext they go straight to the socket (`send` on the
non-blocking stdlib socket, as asyncio's transports do), and only what the kernel does not take
is queued for a writer task, started then and ending once the queue is empty; over TLS every
write goes through that writer, since trio's SSLStream is async. The handler's `pause_writing`
is called when the queue passes the high-water mark, and `resume_writing` once a send has brought
it back under: paused means the kernel is not taking our bytes as fast as they come.

Lifetimes. The reading task ends when the socket is closed, broken or aborted, and then the
handler hears `connection_lost()`. The writer and the application tasks the handler spawns run in
the server's session nursery, as asyncio's tasks run in its loop, not in a nursery of the
connection's own (a nursery, its scope and the set of its children were a kilobyte per idle
connection): they may outlive the socket (an app finishing its cleanup after a disconnect) and
end on their own, when the handler cancels them, or when the session ends. Nothing they raise
reaches that nursery: the bridges catch what applications raise, and the writer logs its own.
"""

from __future__ import annotations

import contextlib
import math
import socket
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

if TYPE_CHECKING:
    import logging

    from multicorn.net.binds import SockName
    from multicorn.runtime.base import Handler, HandlerFactory, Preamble, ServerTLS
    from multicorn.runtime.trio.runtime import TrioRuntime

_HIGH_WATER = 64 * 1024
_READ_SIZE = 64 * 1024

# What a socket or stream raises once it is closed, reset or otherwise unusable.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TrioConnection:
    """One connection's I/O, and the handler's `Transport` for it. `raw` is the stdlib socket
    for a cleartext connection, read and written directly; `tls` the SSLStream over `sock`
    otherwise. `nursery` (the session's) runs the writer."""

    __slots__ = (
        "_closing",
        "_deadline",
        "_failed",
        "_flushed",
        "_handler",
        "_io",
        "_lingers",
        "_logger",
        "_lost",
        "_nursery",
        "_parked",
        "_paused",
        "_peer_done",
        "_queue",
        "_queued",
        "_raw",
        "_reading",
        "_receiving",
        "_runtime",
        "_sock",
        "_tls",
        "_writer_scope",
        "_writing",
    )

    closes_by_itself = False

    def __init__(
        self,
        *,
        raw: socket.socket | None,
        tls: trio.SSLStream[trio.SocketStream] | None,
        sock: socket.socket | trio.socket.SocketType,
        nursery: trio.Nursery,
        runtime: TrioRuntime,
        logger: logging.Logger,
    ) -> None:
        self._raw = raw
        self._tls = tls
        self._sock = sock  # under everything: what abort() closes
        self._nursery = nursery
        self._runtime = runtime
        self._logger = logger
        self._queue: list[bytes] = []
        self._queued = 0
        self._paused = False
        self._writing = False  # a writer task is running
        self._writer_scope: trio.CancelScope | None = None
        self._flushed: trio.Event | None = None  # made when closing waits for the writer
        self._reading = True
        self._parked = False  # the reading task waits for set_reading (or the peer is done)
        self._closing = False
        self._lost = False
        self._peer_done = False  # the peer half-closed: nothing left to linger for
        # Only a plain socket can half-close (TLS has no way to end one direction).
        self._lingers = raw is not None
        self._receiving: trio.CancelScope | None = None  # the read or wait in progress
        self._io: trio.CancelScope | None = None  # the closing sequence, once it runs
        self._failed = False  # broken or aborted: nothing more is read, written or flushed
        self._deadline = math.inf
        self._handler: Handler

    async def run(self, factory: HandlerFactory, details: ConnectionDetails) -> None:
        self._handler = factory(self, self._runtime, details)
        try:
            await self._read_loop()
            if not self._failed:
                with trio.CancelScope() as self._io:
                    await self._finish()
        finally:
            # Also when the session's end cancels us: the handler always hears, exactly once.
            self._lost = True
            self._stop_writer()
            self._handler.connection_lost()

    async def _read_loop(self) -> None:
        """Deliver input until close(); fire the handler's deadline meanwhile."""
        handler = self._handler
        while not self._closing:
            data: bytes | bytearray = b""
            eof = False
            with trio.CancelScope(deadline=self._deadline) as self._receiving:
                try:
                    if self._peer_done or not self._reading:
                        self._parked = True
                        try:
                            await trio.sleep_forever()  # until set_reading, close, deadline
                        finally:
                            self._parked = False
                    else:
                        data = await self._read()
                        eof = not data
                except _BROKEN:
                    self._fail()
                    return
            self._receiving = None
            if self._closing:
                return  # close() ends the handler's input at once, as asyncio's does
            if data:
                handler.data_received(bytes(data))
            elif eof:
                self._peer_done = True  # first: the handler may close() from eof_received()
                handler.eof_received()
            elif trio.current_time() >= self._deadline:
                self._deadline = math.inf
                handler.deadline_reached()

    async def _read(self) -> bytes | bytearray:
        raw = self._raw
        if raw is None:
            assert self._tls is not None
            return await self._tls.receive_some(_READ_SIZE)
        while True:
            try:
                return raw.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_readable(raw)

    async def _finish(self) -> None:
        """After close(): flush, half-close and linger (RFC 9112 9.6), then close."""
        if self._writing:
            self._flushed = trio.Event()
            await self._flushed.wait()
        raw = self._raw
        if raw is not None:
            if self._lingers:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_WR)
                    await self._linger()
            return  # serve_connection closes the socket
        assert self._tls is not None
        with contextlib.suppress(*_BROKEN):  # gone already: closed is what we wanted
            await self._tls.aclose()

    async def _linger(self) -> None:
        """Read and discard what the peer still sends (see Transport.close) until it closes
        too or a bound is reached."""
        discarded = 0
        with trio.move_on_after(LINGER_TIME):
            while discarded <= LINGER_BYTES:
                with trio.move_on_after(LINGER_IDLE) as idle:
                    data = await self._read()
                if idle.cancelled_caught or not data:
                    return
                discarded += len(data)

    def _start_writer(self) -> None:
        self._writing = True
        self._nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        try:
            await self._write_queue()
        except Exception:
            # A bug of ours: it costs this connection, never the session's nursery.
            self._logger.exception("connection writer failed; connection dropped")
            self._fail()
            _close(self._sock)

    async def _write_queue(self) -> None:
        try:
            with trio.CancelScope() as self._writer_scope:
                while self._queue:
                    data = b"".join(self._queue)
                    self._queue.clear()
                    self._queued = 0
                    try:
                        await self._send_all(data)
                    except _BROKEN:
                        self._fail()
                        return
                    if self._paused and self._queued <= _HIGH_WATER:
                        self._paused = False
                        self._handler.resume_writing()
        finally:
            self._writing = False
            self._writer_scope = None
            if self._flushed is not None:
                self._flushed.set()

    async def _send_all(self, data: bytes) -> None:
        raw = self._raw
        if raw is None:
            assert self._tls is not None
            await self._tls.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[raw.send(view) :]
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_writable(raw)

    def _stop_writer(self) -> None:
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    def _fail(self) -> None:
        """The socket is broken or aborted: end every wait of ours (the reading task then
        reports the loss)."""
        self._failed = self._closing = True
        self._queue.clear()
        for scope in (self._receiving, self._io, self._writer_scope):
            if scope is not None:
                scope.cancel()

    # ---- the Transport interface, for the handler -----------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing or self._lost or not data:
            return
        raw = self._raw
        if raw is not None and not self._writing:
            try:
                sent = raw.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._fail()  # broken: the reading task ends and reports the loss
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._queue.append(data)
        self._queued += len(data)
        if not self._writing:
            self._start_writer()
        if not self._paused and self._queued > _HIGH_WATER:
            self._paused = True
            self._handler.pause_writing()

    def close(self) -> None:
        if self._closing:
            return
        if self._peer_done:
            self._lingers = False
        self._closing = True
        if self._receiving is not None:
            self._receiving.cancel()

    def abort(self) -> None:
        # Drop the socket, stop our own I/O, and nothing else: the application tasks are the
        # handler's, and it decides their fate.
        self._fail()
        _close(self._sock)

    def set_reading(self, enabled: bool) -> None:
        if enabled == self._reading:
            return
        self._reading = enabled
        # Parked for want of reading: go back to it. A read in progress is never cancelled
        # for this (a cancelled TLS read may have taken bytes from the socket).
        if enabled and self._parked and self._receiving is not None:
            self._receiving.cancel()

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = math.inf if deadline is None else deadline
        if self._receiving is not None:
            self._receiving.deadline = self._deadline


async def read_preamble(
    sock: socket.socket,
    preamble: Preamble,
    peername: SockName | None,
    pending: set[trio.CancelScope],
) -> bytes:
    """The connection's preamble (see runtime/base.py); raises PreambleRefused when it was
    refused, did not come in time, the peer left, or the listener stopped (it cancels the
    scopes in `pending`). `sock` is the connection's stdlib socket: the reader peeks at it
    without waiting."""
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
    conn: socket.socket,
    factory: HandlerFactory,
    runtime: TrioRuntime,
    nursery: trio.Nursery,
    tls: ServerTLS | None,
    preamble: tuple[Preamble, set[trio.CancelScope]] | None = None,
) -> None:
    """Run one accepted connection (`conn`, non-blocking) to its end: its preamble (the set
    holds the scopes stop_listeners() cancels), the TLS handshake, then the handler's I/O.
    `runtime` and `nursery` are the session's. An exception costs this connection only, never
    the server."""
    logger = runtime.logger
    try:
        peername = conn.getpeername()
        sockname = conn.getsockname()
    except OSError:
        conn.close()
        return
    sock: socket.socket | trio.socket.SocketType = conn
    try:
        taken = b""
        if preamble is not None:
            try:
                taken = await read_preamble(conn, preamble[0], peername, preamble[1])
            except PreambleRefused as exc:
                logger.debug("connection from %s closed: %s", peername, exc)
                return
        ssl_stream: trio.SSLStream[trio.SocketStream] | None = None
        if tls is not None:
            trio_sock = trio.socket.from_stdlib_socket(conn)
            sock = trio_sock
            ssl_stream = trio.SSLStream(trio.SocketStream(trio_sock), tls.context, server_side=True)
            with trio.move_on_after(tls.handshake_timeout) as handshake:
                try:
                    await ssl_stream.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    logger.debug("TLS handshake with %s failed: %s", peername, exc.__cause__ or exc)
                    return
            if handshake.cancelled_caught:
                logger.debug("TLS handshake with %s timed out", peername)
                return
        details = ConnectionDetails(
            peername=peername,
            sockname=sockname,
            # The SSLObject itself: trio forwards only some of its methods (not 3.13's chains).
            tls=None if tls is None or ssl_stream is None else tls.describe(ssl_stream._ssl_object),
            preamble=taken,
        )
        connection = TrioConnection(
            raw=conn if ssl_stream is None else None,
            tls=ssl_stream,
            sock=sock,
            nursery=nursery,
            runtime=runtime,
            logger=logger,
        )
        await connection.run(factory, details)
    except Exception:
        # A bug here must cost one connection, never the server's nursery and every other one.
        logger.exception("connection handler failed; connection dropped")
    finally:
        _close(sock)


def _close(sock: socket.socket | trio.socket.SocketType) -> None:
    """Close the connection's socket, telling trio first when it is the stdlib one (a task
    waiting on the fd must wake, not hang)."""
    if isinstance(sock, socket.socket):
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
        sock.close()
    else:
        sock.close()
