"""A UDP endpoint on trio: one receive task per bound socket, feeding one datagram handler.

The task waits until the socket is readable and then takes every datagram already queued (up to a
batch), as the accept loop does for connections: one wake-up per datagram would leave a burst
queued behind other tasks. After each batch the handler hears `batch_done()`. `sendto` is
synchronous, straight on the non-blocking socket.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import logging
    import socket

    from multicorn.runtime.base import DatagramAddress, DatagramHandler, DatagramHandlerFactory
    from multicorn.runtime.trio.runtime import TrioRuntime

# The largest UDP payload over IPv4 or IPv6 (without jumbograms).
_MAX_DATAGRAM = 65535
_RECEIVE_BATCH = 64


class TrioDatagramEndpoint:
    """The receive task for one bound UDP socket, and the handler's `DatagramTransport`."""

    __slots__ = ("_closed", "_handler", "_logger", "_scope", "_sock")

    def __init__(self, sock: socket.socket, logger: logging.Logger) -> None:
        self._sock = sock
        self._logger = logger
        self._scope = trio.CancelScope()
        self._closed = False
        self._handler: DatagramHandler

    def start(
        self, factory: DatagramHandlerFactory, runtime: TrioRuntime, nursery: trio.Nursery
    ) -> None:
        """Make the handler now (as asyncio does before its endpoint call returns), then
        receive in a task of `nursery`."""
        self._sock.setblocking(False)
        self._handler = factory(self, runtime)
        nursery.start_soon(self._receive)

    async def _receive(self) -> None:
        sock = self._sock
        try:
            with self._scope:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    for _ in range(_RECEIVE_BATCH):
                        try:
                            data, addr = sock.recvfrom(_MAX_DATAGRAM)
                        except (BlockingIOError, InterruptedError):
                            break
                        except ConnectionResetError:
                            continue  # Windows reports an ICMP error of an earlier sendto here
                        try:
                            self._handler.datagram_received(data, addr)
                        except Exception:
                            # One bad datagram, or a bug, must not end the endpoint for everyone.
                            self._logger.exception("datagram handler failed on %r", addr)
                    try:
                        self._handler.batch_done()
                    except Exception:
                        self._logger.exception("datagram handler failed after a batch")
        except (trio.ClosedResourceError, OSError, ValueError) as exc:
            # The socket failed or was closed under us (fd -1 is a ValueError). close() ends
            # this task by cancellation instead, so whatever lands here stopped an endpoint
            # that was meant to go on serving: say so.
            self._logger.error("datagram endpoint stopped: %r", exc)
        finally:
            self._closed = True
            # Nobody waits on the fd any more, so trio needs no notice before it goes.
            sock.close()
            self._handler.connection_lost()

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
        # The receive task closes the socket once it has stopped waiting on it.
        self._scope.cancel()
