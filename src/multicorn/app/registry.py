"""The set of live connections of one server, the count of streams they serve, and the
graceful-drain order over them.

Shutdown order (the same on every runtime): the backend closes its listeners first; then every
connection is told to finish what is in flight and close when idle; then we wait, up to the
graceful timeout, for all of them to end; what is left is aborted and its app tasks cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multicorn.app.connection import ConnectionHandler
    from multicorn.runtime.base import Runtime, Waiter


class ConnectionRegistry:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._handlers: set[ConnectionHandler] = set()
        self._empty: Waiter = runtime.waiter()
        self._empty.set()
        # True once drain() began: a connection that opens later (a QUIC handshake completing
        # on a socket still open for the drain) must go away at once.
        self.draining = False
        self.restarting = False  # the drain is for a restart: another process takes over
        # Streams (requests, WebSockets) being served by every connection of this server: what
        # `limit_concurrency` caps. Counted only while that limit is on. One plain int on an
        # object every handler already holds: no lock, as all connections run on one thread.
        self.streams = 0
        # Streams ever started (requests and WebSockets): what a worker's max_requests counts.
        self.served = 0

    def __len__(self) -> int:
        return len(self._handlers)

    def add(self, handler: ConnectionHandler) -> None:
        self._handlers.add(handler)
        self._empty.clear()

    def discard(self, handler: ConnectionHandler) -> None:
        self._handlers.discard(handler)
        if not self._handlers:
            self._empty.set()

    async def drain(self, timeout: float, *, restart: bool = False) -> bool:
        """Ask every connection to close gracefully; abort the rest after `timeout` seconds.
        `restart`: another process takes over the listeners (WebSockets get 1012, not 1001;
        idle HTTP/1.1 connections wait for one more request).

        Returns True when everything finished within the timeout.
        """
        self.draining = True
        self.restarting = restart
        for handler in list(self._handlers):
            handler.shutdown(restart)
        done = await self._runtime.wait_for(self._empty, timeout)
        if not done:
            for handler in list(self._handlers):
                handler.abort()
                handler.cancel_tasks()
            # Cancelled tasks still have to unwind; give them a moment, not forever.
            await self._runtime.wait_for(self._empty, 1.0)
        return done
