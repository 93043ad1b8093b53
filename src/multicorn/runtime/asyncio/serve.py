"""asyncio's `Backend`: listeners, datagram endpoints, signals and the session they live in."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from multicorn.runtime.asyncio.listener import Listener
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


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class AsyncioBackend:
    """The asyncio (and uvloop) backend; create it inside the running loop."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._runtime = AsyncioRuntime(asyncio.get_running_loop(), logger)
        # Kept after they stop, closed: their accepted connections may still be handshaking.
        self._listeners: list[Listener] = []
        self._endpoints: list[AsyncioDatagramEndpoint] = []
        self._connections: set[AsyncioConnection] = set()
        self._catching_signals = False
        self._hangup = False  # SIGHUP is caught too

    @property
    def runtime(self) -> AsyncioRuntime:
        return self._runtime

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.release_signals()
            for listener in self._listeners:
                listener.abort()  # closes it too
            self._listeners.clear()
            self.close_datagram_endpoints()
            # What serve.py's graceful drain left open goes now, as on trio: nothing else would
            # close those transports but the garbage collector.
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
        # Our own listener, not loop.create_server(): see listener.py for why.
        listener = Listener(
            sock,
            lambda taken: AsyncioConnection(
                factory, self._runtime, tls, self._connections, preamble=taken
            ),
            preamble=preamble,
            tls=tls,
            logger=self._logger,
        )
        listener.start(backlog)
        self._listeners.append(listener)

    async def start_datagram_endpoint(
        self, sock: socket.socket, factory: DatagramHandlerFactory
    ) -> None:
        endpoint = AsyncioDatagramEndpoint(sock, asyncio.get_running_loop(), self._logger)
        endpoint.start(factory, self._runtime)
        self._endpoints.append(endpoint)

    def stop_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()

    def close_datagram_endpoints(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()

    def catch_signals(
        self, on_signal: Callable[[], object], on_hangup: Callable[[], object] | None = None
    ) -> None:
        if self._catching_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        if on_hangup is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
            self._hangup = True
        self._catching_signals = True

    def release_signals(self) -> None:
        # The process's own handlers come back: a second SIGINT during the drain raises
        # KeyboardInterrupt and a second SIGTERM ends the process, stopping at once.
        if not self._catching_signals:
            return
        self._catching_signals = False
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
        if self._hangup:
            self._hangup = False
            loop.remove_signal_handler(signal.SIGHUP)
