"""asyncio's `Backend`: listeners, datagram endpoints, signals and the session they live in."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from multicorn.runtime.asyncio.preamble import PreambleListener
from multicorn.runtime.asyncio.runtime import AsyncioRuntime
from multicorn.runtime.asyncio.tcp import AsyncioConnection
from multicorn.runtime.asyncio.udp import AsyncioDatagramEndpoint

if TYPE_CHECKING:
    import logging
    import socket
    from collections.abc import AsyncIterator, Callable

    from multicorn.runtime.base import (
        DatagramHandlerFactory,
        HandlerFactory,
        Preamble,
        ServerTLS,
    )


class AsyncioBackend:
    """The asyncio (and uvloop) backend; create it inside the running loop."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._runtime = AsyncioRuntime(asyncio.get_running_loop(), logger)
        self._servers: list[asyncio.Server] = []
        self._preamble_listeners: list[PreambleListener] = []
        self._endpoints: list[AsyncioDatagramEndpoint] = []
        self._connections: set[AsyncioConnection] = set()

    @property
    def runtime(self) -> AsyncioRuntime:
        return self._runtime

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.stop_listeners()
            self.close_datagram_endpoints()
            # What serve.py's graceful drain left open goes now, as on trio: asyncio.Server
            # would otherwise leave the sockets to the garbage collector.
            for connection in list(self._connections):
                connection.abort()
            await self._runtime.cancel_all()
            await asyncio.sleep(0)  # let the loop deliver the connection_lost() calls

    async def start_listener(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        *,
        backlog: int,
        tls: ServerTLS | None,
        preamble: Preamble | None = None,
    ) -> None:
        if preamble is not None:
            listener = PreambleListener(
                sock,
                lambda taken: AsyncioConnection(
                    factory, self._runtime, tls, self._connections, preamble=taken
                ),
                preamble=preamble,
                tls=tls,
                logger=self._logger,
            )
            listener.start(backlog)
            self._preamble_listeners.append(listener)
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AsyncioConnection(factory, self._runtime, tls, self._connections),
            sock=sock,
            backlog=backlog,
            ssl=None if tls is None else tls.context,
            # A failed or slow handshake is logged by asyncio at debug level only.
            ssl_handshake_timeout=None if tls is None else tls.handshake_timeout,
        )
        self._servers.append(server)

    async def start_datagram_endpoint(
        self, sock: socket.socket, factory: DatagramHandlerFactory
    ) -> None:
        endpoint = AsyncioDatagramEndpoint(sock, asyncio.get_running_loop(), self._logger)
        endpoint.start(factory, self._runtime)
        self._endpoints.append(endpoint)

    def stop_listeners(self) -> None:
        # Server.close() stops accepting; its wait_closed() is not awaited because on 3.12+ it
        # also waits for every open connection, which would defeat the graceful timeout.
        for server in self._servers:
            server.close()
        self._servers.clear()
        for listener in self._preamble_listeners:
            listener.close()
        self._preamble_listeners.clear()

    def close_datagram_endpoints(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()

    async def wait_for_signal(self, on_hangup: Callable[[], object] | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if threading.current_thread() is not threading.main_thread():
            await stop.wait()  # no signals off the main thread: wait to be cancelled
            return
        signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if on_hangup is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
            signals += (signal.SIGHUP,)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
