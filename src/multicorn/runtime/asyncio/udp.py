"""A UDP endpoint on asyncio: an asyncio.DatagramProtocol that feeds one datagram handler.

As with TCP, everything is synchronous: `datagram_received` runs the handler in place, and
`sendto` goes straight to the loop's transport (which buffers if the kernel has no room).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.asyncio.runtime import AsyncioRuntime
    from multicorn.runtime.base import DatagramAddress, DatagramHandler, DatagramHandlerFactory


class AsyncioDatagramEndpoint(asyncio.DatagramProtocol):
    """The asyncio protocol for one bound UDP socket, and the handler's `DatagramTransport`."""

    __slots__ = ("_closed", "_factory", "_handler", "_logger", "_runtime", "_transport")

    def __init__(
        self, factory: DatagramHandlerFactory, runtime: AsyncioRuntime, logger: logging.Logger
    ) -> None:
        self._factory = factory
        self._runtime = runtime
        self._logger = logger
        self._closed = False
        self._transport: asyncio.DatagramTransport
        self._handler: DatagramHandler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.DatagramTransport without subclassing it.
        self._transport = cast("asyncio.DatagramTransport", transport)
        self._handler = self._factory(self, self._runtime)

    def datagram_received(self, data: bytes, addr: DatagramAddress) -> None:
        try:
            self._handler.datagram_received(data, addr)
        except Exception:
            # One bad datagram, or a bug, costs that datagram: logged as trio's endpoint does,
            # not left to the loop's exception handler.
            self._logger.exception("datagram handler failed on %r", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable after a peer went away) concern one peer, never the
        # endpoint; QUIC notices the silence through its own timers.
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.connection_lost()

    # ---- the DatagramTransport interface, for the handler ---------------------------------

    def sendto(self, data: bytes, addr: DatagramAddress) -> None:
        if not self._closed:
            self._transport.sendto(data, addr)

    def close(self) -> None:
        self._closed = True
        self._transport.close()
