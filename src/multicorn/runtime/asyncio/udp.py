"""A UDP endpoint on asyncio: the loop's reader callback on the bound socket, feeding one
datagram handler.

Each time the socket is readable the callback takes every datagram already queued (up to a
batch) and then calls the handler's `batch_done()`, as trio's endpoint does. asyncio's own
datagram transport reads one datagram per loop turn, so a handler could only send after each
one; QUIC's packet building costs the same whether it answers one datagram or ten.
`sendto` goes straight to the non-blocking socket: a datagram the kernel has no room for is
dropped, as the network may drop it (QUIC retransmits).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    import logging
    import socket

    from multicorn.runtime.asyncio.runtime import AsyncioRuntime
    from multicorn.runtime.base import DatagramAddress, DatagramHandler, DatagramHandlerFactory

# The largest UDP payload over IPv4 or IPv6 (without jumbograms).
_MAX_DATAGRAM = 65535
_RECEIVE_BATCH = 64


class AsyncioDatagramEndpoint:
    """The reader callback for one bound UDP socket, and the handler's `DatagramTransport`."""

    __slots__ = ("_closed", "_fd", "_handler", "_logger", "_loop", "_sock")

    def __init__(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop, logger: logging.Logger
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()  # kept: the reader must be removed even if sock was closed
        self._loop = loop
        self._logger = logger
        self._closed = False
        self._handler: DatagramHandler

    def start(self, factory: DatagramHandlerFactory, runtime: AsyncioRuntime) -> None:
        """Make the handler now, then deliver datagrams from the loop's reader callback."""
        self._sock.setblocking(False)
        self._handler = factory(self, runtime)
        self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        sock = self._sock
        handler = self._handler
        for _ in range(_RECEIVE_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                # An ICMP error about an earlier sendto (a peer went away): one peer's concern,
                # never the endpoint's; QUIC notices the silence through its own timers.
                continue
            except OSError as exc:
                self._logger.error("datagram endpoint stopped: %r", exc)
                self.close()
                return
            try:
                handler.datagram_received(data, addr)
            except Exception:
                # One bad datagram, or a bug, costs that datagram, not the endpoint.
                self._logger.exception("datagram handler failed on %r", addr)
        try:
            handler.batch_done()
        except Exception:
            self._logger.exception("datagram handler failed after a batch")

    # ---- the DatagramTransport interface, for the handler ---------------------------------

    def sendto(self, data: bytes, addr: DatagramAddress) -> None:
        if self._closed:
            return
        # A full send buffer (BlockingIOError) drops the datagram as the network might, and an
        # ICMP error reported here concerns one peer: neither may stop the endpoint.
        with contextlib.suppress(OSError):
            self._sock.sendto(data, addr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._sock.close()
        # connection_lost() comes later in the loop, as from asyncio's own transports.
        self._loop.call_soon(self._handler.connection_lost)
