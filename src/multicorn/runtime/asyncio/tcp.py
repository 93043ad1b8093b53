"""A TCP (or unix) connection on asyncio: an asyncio.Protocol that feeds the shared handler.

Everything is synchronous here: `data_received` runs the protocol core in place, writes go
straight to the transport, and the one deadline is a `loop.call_at` handle.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from multicorn.runtime.base import LINGER_BYTES, LINGER_IDLE, LINGER_TIME, ConnectionDetails

if TYPE_CHECKING:
    from multicorn.runtime.asyncio.runtime import AsyncioRuntime
    from multicorn.runtime.base import Handler, HandlerFactory, ServerTLS

# asyncio's default high-water mark is 64 KiB; send() waits above it.
_HIGH_WATER = 64 * 1024


class AsyncioConnection(asyncio.Protocol):
    """The asyncio protocol for one connection, and the handler's `Transport` for it."""

    __slots__ = (
        "_factory",
        "_handler",
        "_linger",
        "_linger_end",
        "_lingered",
        "_loop",
        "_open",
        "_preamble",
        "_runtime",
        "_timer",
        "_tls",
        "_transport",
    )

    closes_by_itself = True

    def __init__(
        self,
        factory: HandlerFactory,
        runtime: AsyncioRuntime,
        tls: ServerTLS | None,
        open_connections: set[AsyncioConnection],
        preamble: bytes = b"",
    ) -> None:
        self._factory = factory
        self._preamble = preamble
        self._runtime = runtime
        self._tls = tls
        self._open = open_connections  # the backend's, so its session's end can abort us
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        # Lingering after close(): the timer that ends it, the input discarded, the deadline.
        self._linger: asyncio.TimerHandle | None = None
        self._lingered = 0
        self._linger_end = 0.0
        self._transport: asyncio.Transport
        self._handler: Handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)
        # asyncio calls this only once the TLS handshake has completed.
        ssl_object = transport.get_extra_info("ssl_object")
        details = ConnectionDetails(
            peername=transport.get_extra_info("peername"),
            sockname=transport.get_extra_info("sockname"),
            tls=None if self._tls is None or ssl_object is None else self._tls.describe(ssl_object),
            preamble=self._preamble,
        )
        self._handler = self._factory(self, self._runtime, details)
        self._open.add(self)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._discard(len(data))
            return
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._linger is not None:
            return False  # the peer is done too: asyncio closes the transport
        self._handler.eof_received()
        # Half-close: keep the transport open for the handler to close (TLS transports cannot
        # stay half-open, so there asyncio closes it).
        return self._tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
        self._handler.connection_lost()

    def _deadline_reached(self) -> None:
        self._timer = None
        self._handler.deadline_reached()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    # ---- the Transport interface, for the handler -----------------------------------------

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def close(self) -> None:
        transport = self._transport
        if self._linger is not None or transport.is_closing():
            return
        if self._tls is not None or not transport.can_write_eof():
            # TLS cannot half-close (a close_notify ends both directions).
            transport.close()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Lingering close (see Transport.close): FIN once the buffer is flushed, then discard.
        try:
            transport.write_eof()
        except OSError:
            transport.close()  # the peer is gone already (a reset): nothing to linger for
            return
        transport.resume_reading()
        self._linger_end = self._loop.time() + LINGER_TIME
        self._linger = self._loop.call_at(self._loop.time() + LINGER_IDLE, transport.close)

    def _discard(self, size: int) -> None:
        self._lingered += size
        assert self._linger is not None
        self._linger.cancel()
        if self._lingered > LINGER_BYTES:
            self._transport.close()
            return
        when = min(self._loop.time() + LINGER_IDLE, self._linger_end)
        self._linger = self._loop.call_at(when, self._transport.close)

    def abort(self) -> None:
        # asyncio's abort() only closes the socket; our tasks are the runtime's, not the
        # transport's, so they keep running, as the interface asks.
        self._transport.abort()

    def set_reading(self, enabled: bool) -> None:
        if self._linger is not None or self._transport.is_closing():
            return
        if enabled:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def set_deadline(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._deadline_reached)
